//! The stores: Kafka, Cassandra and the OLAP store, each behind the few calls the pipeline and
//! the tools make, with errors that say whether a retry can help.
//!
//! - `kafka`        — client settings, topic admin, the rebalance hook
//! - `cassandra`    — CQL session, schema, idempotent insert, paged read-back
//! - `olap`         — the OLAP store: one transaction path, a dialect for MySQL/MariaDB and SQLite
//! - `topic_reader` — reads a topic back up to given offsets (the audit, the watchdog, tests)
//! - `tls`          — the TLS connector the stores share, and which TLS failures are final
//! - `schema/`      — the schema files

mod cassandra;
mod kafka;
mod olap;
mod tls;
mod topic_reader;

pub(crate) use cassandra::migrate as migrate_cassandra;
pub use cassandra::{
    connect_session as connect_cassandra_session, table_exists as cassandra_table_exists,
    CassandraError, CassandraStore,
};
pub(crate) use kafka::{
    client_config, create_topics, partition_count, partitions, AssignmentChange, LedgerContext,
};
pub use kafka::{consumer_config, producer_config, KafkaError};
pub(crate) use olap::{check_mysql_migrated, with_mysql_migrate_lock};
pub use olap::{
    connect_mysql, connect_sqlite, migrate_mysql, migrate_sqlite, within, OlapError, OlapStore,
};
pub(crate) use topic_reader::read_topic_within;
pub use topic_reader::{read_topic, watermarks, TopicRecord};

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
