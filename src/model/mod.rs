//! The model: what an order is and what the pipeline may do with it. Pure: no I/O.
//!
//! - `order`     — the event contract: decode and validate one record, the dead-letter reasons
//! - `batch`     — records, micro-batches and the rule that cuts them
//! - `aggregate` — folding orders into aggregate deltas
//! - `ledger`    — the protocol's rules: what a batch may change, given the ledger

pub mod aggregate;
pub mod batch;
pub mod ledger;
pub mod order;
