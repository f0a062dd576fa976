//! The OLAP store behind one interface: MySQL/MariaDB in production, SQLite in the demo.
//!
//! Both hold the same tables (aggregates, the offset ledger) and run the same protocol: the
//! decision about what a batch may change is shared (`ledger.rs`); the dialect and the locking
//! are the only differences (`mysql.rs`, `sqlite.rs`). The actors, the supervisor and the audit
//! see only [`OlapStore`] and [`OlapError`].

use std::collections::BTreeMap;

use sqlx::{MySqlPool, SqlitePool};

use crate::model::aggregate::Deltas;
use crate::model::batch::Batch;
use crate::model::ledger::{ApplyReport, Claim};
pub mod mysql;
pub mod sqlite;

use mysql::MysqlError;
use sqlite::SqliteError;

const SEEDS: &str = include_str!("../schema/seeds.sql");

/// The dimension seeds as statements, each opening with `insert_ignore` (the dialect's
/// insert-if-absent, e.g. `INSERT IGNORE INTO`) instead of `INSERT INTO`.
pub fn seed_statements(insert_ignore: &str) -> Vec<String> {
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

/// Errors of either store, classified the same way.
#[derive(Debug, thiserror::Error)]
pub enum OlapError {
    #[error(transparent)]
    Mysql(#[from] MysqlError),
    #[error(transparent)]
    Sqlite(#[from] SqliteError),
}

impl OlapError {
    /// Retry (the store is unreachable, busy or deadlocked) or not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Mysql(e) => e.is_transient(),
            Self::Sqlite(e) => e.is_transient(),
        }
    }

    /// The store refused the data itself: dead-letter the record (docs/DESIGN.md, rule 10).
    pub fn is_data_rejection(&self) -> bool {
        match self {
            Self::Mysql(e) => e.is_data_rejection(),
            Self::Sqlite(e) => e.is_data_rejection(),
        }
    }
}

impl OlapStore {
    /// Which store this is, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Mysql(_) => "mysql",
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Claims a partition in the ledger (docs/DESIGN.md, rule 2).
    pub async fn claim(
        &self,
        topic: &str,
        partition: i32,
        owner: &str,
        start_offset: i64,
    ) -> Result<Claim, OlapError> {
        Ok(match self {
            Self::Mysql(p) => mysql::claim(p, topic, partition, owner, start_offset).await?,
            Self::Sqlite(p) => sqlite::claim(p, topic, partition, owner, start_offset).await?,
        })
    }

    /// Applies a batch in one transaction (docs/DESIGN.md, rule 4).
    pub async fn apply_batch(&self, topic: &str, batch: &Batch) -> Result<ApplyReport, OlapError> {
        Ok(match self {
            Self::Mysql(p) => mysql::apply_batch(p, topic, batch).await?,
            Self::Sqlite(p) => sqlite::apply_batch(p, topic, batch).await?,
        })
    }

    /// The orders of a batch the store refuses for their data (docs/DESIGN.md, rule 10).
    pub async fn find_rejected(
        &self,
        topic: &str,
        batch: &Batch,
    ) -> Result<Vec<(usize, String)>, OlapError> {
        Ok(match self {
            Self::Mysql(p) => mysql::find_rejected(p, topic, batch).await?,
            Self::Sqlite(p) => sqlite::find_rejected(p, topic, batch).await?,
        })
    }

    /// The ledger of a topic: partition → next offset.
    pub async fn read_ledger(&self, topic: &str) -> Result<BTreeMap<i32, i64>, OlapError> {
        Ok(match self {
            Self::Mysql(p) => mysql::read_ledger(p, topic).await?,
            Self::Sqlite(p) => sqlite::read_ledger(p, topic).await?,
        })
    }

    /// The ledger of a topic with each row's owner: partition → (next offset, owner).
    pub async fn read_ledger_owners(
        &self,
        topic: &str,
    ) -> Result<BTreeMap<i32, (i64, String)>, OlapError> {
        Ok(match self {
            Self::Mysql(p) => mysql::read_ledger_owners(p, topic).await?,
            Self::Sqlite(p) => sqlite::read_ledger_owners(p, topic).await?,
        })
    }

    /// Both aggregate tables, as stored.
    pub async fn read_aggregates(&self) -> Result<Deltas, OlapError> {
        Ok(match self {
            Self::Mysql(p) => mysql::read_aggregates(p).await?,
            Self::Sqlite(p) => sqlite::read_aggregates(p).await?,
        })
    }

    /// The ledger and the aggregates as of one instant (the audit).
    pub async fn snapshot(&self, topic: &str) -> Result<(BTreeMap<i32, i64>, Deltas), OlapError> {
        Ok(match self {
            Self::Mysql(p) => mysql::snapshot(p, topic).await?,
            Self::Sqlite(p) => sqlite::snapshot(p, topic).await?,
        })
    }

    /// Today's (UTC) sales and profit by category: (category, sales, profit).
    pub async fn sales_today_by_category(&self) -> Result<Vec<(String, f64, f64)>, OlapError> {
        Ok(match self {
            Self::Mysql(p) => mysql::sales_today_by_category(p).await?,
            Self::Sqlite(p) => sqlite::sales_today_by_category(p).await?,
        })
    }

    /// Whether the store answers (readiness probe).
    pub async fn ping(&self) -> bool {
        match self {
            Self::Mysql(p) => sqlx::query("SELECT 1").execute(p).await.is_ok(),
            Self::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.is_ok(),
        }
    }
}
