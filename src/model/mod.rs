//! The model: what an order is and what the pipeline may do with it. Pure: no I/O.
//!
//! - `order`     — the event contract: decode and validate one record, the dead-letter reasons
//! - `batch`     — records, micro-batches and the rule that cuts them
//! - `aggregate` — folding orders into aggregate deltas
//! - `ledger`    — the protocol's rules: what a batch may change, given the ledger

mod aggregate;
mod batch;
mod ledger;
mod order;

pub use aggregate::{DailyKey, Deltas, MinuteKey, Totals};
pub use batch::{Batch, BatchCutter, BatchLimits, Content, Record};
pub(crate) use ledger::{fold, plan, Bisection, LedgerRow, Plan};
pub use ledger::{ApplyReport, Claim};
pub use order::{decode, Order, PaymentMethod, Reason, Rejection};
