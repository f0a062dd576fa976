//! The tools around the pipeline.
//!
//! - `demo`       — `orderstream demo`: the whole system in one process, nothing installed
//! - `reconcile`  — the independent audit: topic vs Cassandra vs the OLAP store below the ledger
//! - `producer`   — the simulated shop: an actor publishing orders at a steady rate
//! - `simulation` — simulated orders and unique order ids
//! - `node_lease` — leases of id nodes in MySQL, so concurrent producers never collide

mod demo;
mod node_lease;
mod producer;
mod reconcile;
mod simulation;

pub use demo::{run as run_demo, DemoOptions, DEFAULTS as DEMO_DEFAULTS};
pub use node_lease::{LeaseError, LeaseKeeper, NodeLease};
pub use producer::{OrderProducer, ProducerSettings};
pub use reconcile::{reconcile, Report};
pub use simulation::OrderGenerator;
