//! The OLAP store: aggregates and the offset ledger, in MySQL/MariaDB in production or in
//! SQLite in the demo.
//!
//! The ledger protocol is written once (`protocol.rs`) over `sqlx`; each backend contributes a
//! [`protocol::Dialect`] (its SQL spelling, locking and error codes), a schema file, and how to
//! connect and migrate (`mysql.rs`, `sqlite.rs`). The actors, the supervisor and the audit see
//! only [`OlapStore`] and [`OlapError`].

mod mysql;
mod protocol;
mod sqlite;

pub(crate) use mysql::{
    check_migrated as check_mysql_migrated, with_migrate_lock as with_mysql_migrate_lock,
};
pub use mysql::{connect as connect_mysql, migrate as migrate_mysql};
pub use sqlite::{connect as connect_sqlite, migrate as migrate_sqlite};

use std::collections::BTreeMap;

use sqlx::{MySql, MySqlPool, Sqlite, SqlitePool};

use crate::model::{ApplyReport, Claim};
use crate::model::{Batch, Deltas};
use crate::ops::{MinuteRow, SalesFuture, SalesRow, SalesSource};
use protocol::Protocol;

const SEEDS: &str = include_str!("../schema/seeds.sql");

/// The dimension seeds as statements, each opening with `insert_ignore` (the dialect's
/// insert-if-absent, e.g. `INSERT IGNORE INTO`) instead of `INSERT INTO`.
fn seed_statements(insert_ignore: &str) -> Vec<String> {
    crate::stores::split_statements(SEEDS)
        .into_iter()
        .map(|s| s.replacen("INSERT INTO", insert_ignore, 1))
        .collect()
}

/// A connected OLAP store. Cloning is cheap (a pool handle).
#[derive(Debug, Clone)]
pub enum OlapStore {
    Mysql(MySqlPool),
    Sqlite(SqlitePool),
}

/// Errors of the OLAP store, whichever backend.
#[derive(Debug, thiserror::Error)]
pub enum OlapError {
    #[error("{}: {}", backend_of(.0), .0)]
    Sql(#[from] sqlx::Error),
    #[error("{store} database {database} is not migrated (schema version {found:?}, expected {expected}): run `orderstream migrate` first")]
    NotMigrated {
        store: &'static str,
        database: String,
        found: Option<i32>,
        expected: i32,
    },
    #[error("could not take the migration lock within 120 s")]
    LockTimeout,
    #[error("the olap store did not answer within {0:?}")]
    TimedOut(std::time::Duration),
}

/// Runs one store call, giving up after `limit` (`mysql.timeout_ms`). A connection whose server
/// went away without closing it (a host gone, a failover) never answers, and only the client
/// can end that wait; the call is then retried like any outage, on another connection. A
/// COMMIT given up this way has an unknown outcome, which the ledger resolves (rule 4).
pub async fn within<T>(
    limit: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, OlapError>>,
) -> Result<T, OlapError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(OlapError::TimedOut(limit)))
}

/// The backend an error came from, for messages.
fn backend_of(err: &sqlx::Error) -> &'static str {
    match err.as_database_error() {
        Some(db) if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() => "sqlite",
        Some(_) => "mysql",
        None => "olap store",
    }
}

impl OlapError {
    /// Retry (the store is unreachable, busy, deadlocked or waiting on a lock) or not (a bug, or
    /// refused data).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Sql(sqlx::Error::Database(db)) => {
                mysql::is_transient(db.as_ref()) || sqlite::is_transient(db.as_ref())
            }
            Self::Sql(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_),
            ) => true,
            // A handshake that failed on the certificate, or sqlx's own refusal (a server
            // without TLS where TLS is required), is the configuration's to fix; a connection
            // broken during it is not.
            Self::Sql(sqlx::Error::Tls(e)) => {
                super::tls::handshake(e.as_ref()) == super::tls::Handshake::Broken
            }
            Self::TimedOut(_) => true,
            Self::Sql(_) | Self::NotMigrated { .. } | Self::LockTimeout => false,
        }
    }

    /// The store refused the data itself (a value out of a column's range, a constraint):
    /// retrying cannot help, the offending record is dead-lettered instead (docs/DESIGN.md,
    /// rule 10).
    pub fn is_data_rejection(&self) -> bool {
        match self {
            Self::Sql(sqlx::Error::Database(db)) => {
                mysql::is_data_rejection(db.as_ref()) || sqlite::is_data_rejection(db.as_ref())
            }
            _ => false,
        }
    }
}

/// Runs the same protocol call on whichever backend `$store` is.
macro_rules! on_backend {
    ($store:expr, $call:ident ( $($arg:expr),* )) => {
        match $store {
            OlapStore::Mysql(pool) => Protocol::<MySql>::$call(pool $(, $arg)*).await,
            OlapStore::Sqlite(pool) => Protocol::<Sqlite>::$call(pool $(, $arg)*).await,
        }
    };
}

impl OlapStore {
    /// Claims a partition in the ledger (docs/DESIGN.md, rule 2).
    pub async fn claim(
        &self,
        topic: &str,
        partition: i32,
        owner: &str,
        start_offset: i64,
    ) -> Result<Claim, OlapError> {
        on_backend!(self, claim(topic, partition, owner, start_offset))
    }

    /// Applies a batch in one transaction (docs/DESIGN.md, rule 4).
    pub async fn apply_batch(&self, topic: &str, batch: &Batch) -> Result<ApplyReport, OlapError> {
        on_backend!(self, apply_batch(topic, batch))
    }

    /// The orders of a batch the store refuses for their data (docs/DESIGN.md, rule 10):
    /// (record index, the server's message).
    pub async fn find_rejected(
        &self,
        topic: &str,
        batch: &Batch,
    ) -> Result<Vec<(usize, String)>, OlapError> {
        on_backend!(self, find_rejected(topic, batch))
    }

    /// The ledger of a topic: partition → next offset.
    pub async fn read_ledger(&self, topic: &str) -> Result<BTreeMap<i32, i64>, OlapError> {
        on_backend!(self, read_ledger(topic))
    }

    /// The ledger of a topic with each row's owner: partition → (next offset, owner).
    pub async fn read_ledger_owners(
        &self,
        topic: &str,
    ) -> Result<BTreeMap<i32, (i64, String)>, OlapError> {
        on_backend!(self, read_ledger_owners(topic))
    }

    /// Both aggregate tables, as stored.
    pub async fn read_aggregates(&self) -> Result<Deltas, OlapError> {
        on_backend!(self, read_aggregates())
    }

    /// The ledger and the aggregates as of one instant (the audit).
    pub(crate) async fn snapshot(
        &self,
        topic: &str,
    ) -> Result<(BTreeMap<i32, i64>, Deltas), OlapError> {
        on_backend!(self, snapshot(topic))
    }

    /// Today's (UTC) sales and profit by category: (category, sales, profit).
    pub(crate) async fn sales_today_by_category(
        &self,
    ) -> Result<Vec<(String, f64, f64)>, OlapError> {
        on_backend!(self, sales_today_by_category())
    }

    /// Today's sales by category and platform, and per minute since `since`.
    pub(crate) async fn sales(
        &self,
        since: chrono::NaiveDateTime,
    ) -> Result<(Vec<SalesRow>, Vec<MinuteRow>), OlapError> {
        on_backend!(self, sales(since))
    }

    /// Whether the store answers (readiness probe).
    pub(crate) async fn ping(&self) -> bool {
        on_backend!(self, ping())
    }
}

/// The console's sales come from the OLAP store, with the dashboard's definitions (its views).
impl SalesSource for OlapStore {
    fn sales(&self, minutes: u32) -> SalesFuture<'_> {
        let since = chrono::Utc::now().naive_utc() - chrono::Duration::minutes(i64::from(minutes));
        Box::pin(async move {
            OlapStore::sales(self, since)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
