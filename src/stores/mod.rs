//! The stores: Kafka, Cassandra and the OLAP store, each behind the few calls the pipeline and
//! the tools make, with errors that say whether a retry can help.
//!
//! - `kafka`        — client settings, topic admin, the rebalance hook
//! - `cassandra`    — CQL session, schema, idempotent insert, paged read-back
//! - `olap`         — the OLAP store: one transaction path, a dialect for MySQL/MariaDB and SQLite
//! - `topic_reader` — reads a topic back up to given offsets (the audit, the watchdog, tests)
//! - `schema/`      — the schema files

pub mod cassandra;
pub mod kafka;
pub mod olap;
pub mod topic_reader;

/// Splits a schema file into statements: `;`-terminated, `--` comment lines dropped.
pub(crate) fn split_statements(text: &str) -> Vec<String> {
    let without_comments: String = text
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}
