//! SQLite, the demo's OLAP store: its dialect of the ledger protocol, opening and migrating.
//!
//! Locking is the one real difference from MySQL. SQLite has no row locks: a write transaction
//! starts with `BEGIN IMMEDIATE`, which takes the database's write lock up front, so a claim and a
//! batch transaction never interleave (stronger than MySQL's `FOR UPDATE` on the ledger rows, and
//! enough for one process). A busy database is a transient error and the caller retries, as with
//! a MySQL lock wait.
//!
//! An in-memory database lives as long as its one connection: the pool holds exactly one and
//! never closes it. A file database uses WAL, so readers (the audit's snapshot, the demo's
//! summary) never block the writer.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::error::DatabaseError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Sqlite;

use super::protocol::{Dialect, Protocol};
use super::OlapError;

impl Dialect for Sqlite {
    const STORE: &'static str = "sqlite";
    const SCHEMA: &'static str = include_str!("../schema/sqlite.sql");
    const SCHEMA_VERSION: i32 = 1;
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const LOCK_ROWS: &'static str = "";
    const INSERT_IGNORE: &'static str = "INSERT OR IGNORE INTO";
    const NOW: &'static str = "strftime('%Y-%m-%d %H:%M:%f', 'now')";
    const SNAPSHOT_PREPARE: &'static [&'static str] = &[];
    // Reads within one transaction are snapshot-isolated.
    const BEGIN_SNAPSHOT: &'static str = "BEGIN";
    const SALES_TODAY_BY_CATEGORY: &'static str =
        "SELECT category, CAST(SUM(total_sales) AS REAL), CAST(SUM(total_profit) AS REAL) \
         FROM sales_and_profit_today GROUP BY category ORDER BY category";
    const SALES_TODAY: &'static str = "SELECT category, platform, CAST(orders AS REAL), \
         CAST(total_sales AS REAL), CAST(total_profit AS REAL) FROM sales_and_profit_today \
         ORDER BY category, platform";
    const SALES_PER_MINUTE_SINCE: &'static str = "SELECT minute_start, CAST(orders AS REAL), \
         CAST(total_sales AS REAL), CAST(total_profit AS REAL) FROM sales_per_minute_amounts \
         WHERE minute_start >= ? ORDER BY minute_start";
    const RECORD_VERSION: &'static str =
        "INSERT INTO schema_version (component, version) VALUES ('sqlite', ?) \
         ON CONFLICT (component) DO UPDATE SET version = excluded.version";

    fn add_on_conflict(time_column: &str) -> String {
        format!(
            " ON CONFLICT ({time_column}, platform_id, product_id) DO UPDATE SET \
             order_count = order_count + excluded.order_count, \
             total_quantity = total_quantity + excluded.total_quantity"
        )
    }

    fn is_missing_schema(err: &sqlx::Error) -> bool {
        matches!(err, sqlx::Error::Database(db) if db.message().contains("no such table"))
    }
}

/// SQLite's primary result code (sqlx reports the extended code; its low byte is the primary).
fn primary_code(db: &dyn DatabaseError) -> Option<i32> {
    db.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    db.code()
        .and_then(|c| c.parse::<i32>().ok())
        .map(|c| c & 0xff)
}

/// The database is busy or locked, or its file could not be read or written.
pub(super) fn is_transient(db: &dyn DatabaseError) -> bool {
    // 5 SQLITE_BUSY, 6 SQLITE_LOCKED, 10 SQLITE_IOERR.
    matches!(primary_code(db), Some(5 | 6 | 10))
}

/// SQLite refused the data itself.
pub(super) fn is_data_rejection(db: &dyn DatabaseError) -> bool {
    // 18 SQLITE_TOOBIG, 19 SQLITE_CONSTRAINT (CHECK, NOT NULL, ...), 20 SQLITE_MISMATCH.
    matches!(primary_code(db), Some(18..=20))
}

/// Opens a store: in memory when `path` is None (gone when the process ends), else the file,
/// created if missing.
pub async fn connect(path: Option<&Path>) -> Result<SqlitePool, OlapError> {
    let tuned = |options: SqliteConnectOptions| {
        options
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(false)
    };
    let pool = match path {
        None => {
            // One connection, never recycled: it is the database.
            let options = tuned(SqliteConnectOptions::from_str("sqlite::memory:")?);
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await?
        }
        Some(path) => {
            let options = tuned(SqliteConnectOptions::new())
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full);
            SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await?
        }
    };
    Ok(pool)
}

/// Creates the tables, views and seeds and records the schema version, in one write
/// transaction. Idempotent.
pub async fn migrate(pool: &SqlitePool) -> Result<(), OlapError> {
    let mut tx = pool.begin_with(Sqlite::BEGIN_WRITE).await?;
    Protocol::<Sqlite>::install_schema(&mut tx).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod schema_tests {
    /// Table and view names created by a schema file.
    fn objects(schema: &str) -> std::collections::BTreeSet<String> {
        schema
            .lines()
            .filter_map(|line| {
                let upper = line.to_ascii_uppercase();
                let at = upper
                    .find(" TABLE IF NOT EXISTS ")
                    .map(|i| i + 21)
                    .or_else(|| upper.find(" VIEW ").map(|i| i + 6))?;
                line.starts_with("CREATE")
                    .then(|| {
                        line[at..]
                            .split(|c: char| !c.is_alphanumeric() && c != '_')
                            .next()
                    })
                    .flatten()
                    .map(str::to_owned)
            })
            .collect()
    }

    #[test]
    fn the_demo_store_has_every_table_and_view_of_mysql_but_the_producer_leases() {
        let mut mysql = objects(include_str!("../schema/mysql.sql"));
        assert!(mysql.remove("producer_leases"));
        assert_eq!(objects(<sqlx::Sqlite as super::Dialect>::SCHEMA), mysql);
        assert_eq!(mysql.len(), 9, "{mysql:?}");
    }
}
