//! orderstream: a long-running, actor-based, fault-tolerant stream processor.
//!
//! ```text
//!  OrderProducer ──► Kafka `orders` ──► KafkaConsumer ──► Batcher ──► CassandraWriter ──► OlapAggregator
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
//! been applied (see `stores/olap/protocol.rs` and docs/DESIGN.md, "Delivery guarantee").
//!
//! Map of the crate, one folder per layer; arrows point down only (`tools` and `cli` use
//! `pipeline`, `stores` and `model`; `pipeline` uses `stores` and `model`; `stores` use `model`;
//! `config` and `ops` are used by all and use none of them):
//! - `cli`       — the commands (run, produce, migrate, config, healthcheck), each a call below
//! - `config/`   — the layered, documented, validated configuration
//! - `model/`    — the order and its contract, batches, aggregates, the ledger's rules (no I/O)
//! - `stores/`   — Kafka, Cassandra, the OLAP store (one transaction path, a dialect each for
//!   MySQL/MariaDB and SQLite), the topic reader, the schema files
//! - `pipeline/` — the data path: the actors (consumer, batcher, cassandra_writer,
//!   olap_aggregator, dead_letters), their supervisor and the progress watchdog
//! - `ops/`      — metric names and events, health, the operations HTTP port, process metrics,
//!   signals
//! - `tools/`    — around the pipeline: the demo, the audit (`reconcile`), the simulated
//!   producer with its order ids and id-node leases
//!
//! Inside a layer every file is a private module; the layer's `mod.rs` re-exports (`pub use`)
//! what the other layers, the binary, the tests and the benches need, and nothing else, so the
//! compiler reports what nobody uses.
//!
//! The demo's CQL server is the workspace crate `cql-emulator` (crates/cql-emulator); only the
//! demo and the `cql-emulator` command use it.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod cli;
pub mod config;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod stores;
pub mod tools;
