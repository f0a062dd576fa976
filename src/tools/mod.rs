//! The tools around the pipeline.
//!
//! - `demo`       — `orderstream demo`: the whole system in one process, nothing installed
//! - `reconcile`  — the independent audit: topic vs Cassandra vs the OLAP store below the ledger
//! - `producer`   — the simulated shop: an actor publishing orders at a steady rate
//! - `simulation` — simulated orders and unique order ids
//! - `node_lease` — leases of id nodes in MySQL, so concurrent producers never collide

pub mod demo;
pub mod node_lease;
pub mod producer;
pub mod reconcile;
pub mod simulation;
