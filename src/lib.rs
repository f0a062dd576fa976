//! orderstream: a long-running, actor-based, fault-tolerant stream processor.
//!
//! ```text
//!  OrderProducer ──► Kafka `orders` ──► KafkaConsumer ──► Batcher ──► CassandraWriter ──► MysqlAggregator
//!  (simulated)       (keyed by id)      (group member,     (size/time   (raw orders,        (aggregates + offset
//!                                        pause/resume)      batches)     idempotent upsert)   ledger, one txn)
//!                                             │                               │                    │
//!                                             │                 DeadLetters ◄─┘                    │
//!                                             │                 (`orders.dlq`, reason headers)     │
//!                                             └◄──────────── BatchCommitted (Kafka commit hint) ◄──┘
//! ```
//!
//! Every valid record is stored once in Cassandra and counted once in MySQL, whatever crashes:
//! the MySQL offset ledger, advanced in the same transaction as the aggregates, says what has
//! been applied (see `mysql.rs` and docs/DESIGN.md, "Delivery guarantee").
//!
//! Map of the crate:
//! - `config`      — layered, documented, validated configuration
//! - `order`       — the event contract: decode and validate one record
//! - `batch`       — records, micro-batches and the rule that cuts them
//! - `aggregate`   — folding orders into aggregate deltas
//! - `kafka`       — client settings, topic admin, the rebalance hook
//! - `cassandra`   — CQL session, schema, idempotent insert, paged read-back
//! - `olap`        — the OLAP store behind one interface: MySQL, or SQLite in the demo
//! - `ledger`      — the dialect-free half of the batch transaction (what a batch may change)
//! - `mysql`       — MySQL schema, the offset ledger, the batch transaction
//! - `sqlite`      — the same in SQLite's spelling (the demo's store)
//! - `actors/`     — one file per actor: consumer, batcher, cassandra_writer,
//!   mysql_aggregator, dead_letters, producer
//! - `supervisor`  — builds the data path, restarts it as a unit, drains on shutdown
//! - `watchdog`    — lag and progress of every partition; when the instance is stuck or must rejoin
//! - `simulation`  — simulated orders and unique order ids
//! - `node_lease`  — MySQL leases of id nodes, so concurrent producers never collide
//! - `reconcile`   — the independent audit: topic vs Cassandra vs MySQL below the ledger
//! - `topic_reader` — reads a topic back up to given offsets (reconcile, tests)
//! - `telemetry`   — metric names, the Prometheus recorder, /metrics /healthz /readyz
//! - `app`         — the commands (run, produce, migrate, config, healthcheck)
//! - `emulator`    — a CQL server around the kassandra emulator, for tests and demos
//! - `emulator_system` — the emulator's answers to the driver's system and schema queries
//! - `demo`        — `orderstream demo`: the whole system in one process, nothing installed
//! - `failpoints`  — fault injection for the chaos tests (feature `failpoints`)

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod actors;
pub mod aggregate;
pub mod app;
pub mod batch;
pub mod cassandra;
pub mod config;
pub mod demo;
pub mod emulator;
mod emulator_system;
#[cfg(feature = "failpoints")]
pub mod failpoints;
pub mod kafka;
pub mod ledger;
pub mod mysql;
pub mod node_lease;
pub mod olap;
pub mod order;
pub mod reconcile;
pub mod simulation;
pub mod sqlite;
pub mod supervisor;
pub mod telemetry;
pub mod topic_reader;
pub mod watchdog;

/// SIGTERM and SIGINT, caught from the moment [`Shutdown::listen`] is called.
///
/// Listen first thing: a signal that arrives before any handler exists kills the process with
/// the default action (exit by signal, not 0), e.g. a SIGTERM sent to an instance that is still
/// connecting to its stores. One listener for the whole run also means a signal that arrives
/// between two waits is not lost.
pub struct Shutdown {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Shutdown {
    /// Installs the handlers now. Must run inside the tokio runtime.
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signals = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => None,
            };
            Self { signals }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves when a signal has arrived (at once if one arrived since `listen`).
    pub async fn requested(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.signals {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Resolves on SIGTERM or SIGINT (listening from the first poll; see [`Shutdown`]).
pub async fn shutdown_signal() {
    Shutdown::listen().requested().await
}
