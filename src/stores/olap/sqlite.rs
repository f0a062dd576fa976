//! The SQLite side: the OLAP store of `orderstream demo`, with the same ledger protocol as
//! MySQL (`mysql.rs`) in SQLite's spelling.
//!
//! Locking is the one real difference. SQLite has no row locks: a write transaction starts with
//! `BEGIN IMMEDIATE`, which takes the database's write lock up front, so a claim and a batch
//! transaction never interleave (stronger than MySQL's `FOR UPDATE` on the ledger rows, and
//! enough for one process). The decision about what a batch may change is shared
//! (`ledger::plan`), so both stores apply exactly the same rules. A busy database is a transient
//! error and the caller retries, as with a MySQL lock wait.
//!
//! An in-memory database lives as long as its one connection: the pool holds exactly one and
//! never closes it. A file database uses WAL, so readers (the audit's snapshot, the demo's
//! summary) never block the writer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite};

use crate::model::aggregate::{Deltas, Totals};
use crate::model::batch::Batch;
use crate::model::ledger::{
    bisect_rejected, fold, plan, ApplyReport, Claim, LedgerRow, Plan, Probe,
};

const SCHEMA: &str = include_str!("../schema/sqlite.sql");
/// Version of the SQLite schema this binary expects.
pub const SCHEMA_VERSION: i32 = 1;
/// Rows per multi-row upsert (5 binds each, under SQLite's 32,766 bind limit).
const UPSERT_CHUNK: usize = 500;
/// Statement that opens every write transaction (see the module comment).
const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// Errors of the SQLite store.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error("sqlite: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("sqlite database is not migrated (schema version {found:?}, expected {expected})")]
    NotMigrated { found: Option<i32>, expected: i32 },
}

impl SqliteError {
    /// Retry (the database is busy or locked, the connection broke) or not.
    pub fn is_transient(&self) -> bool {
        match self {
            // 5 SQLITE_BUSY, 6 SQLITE_LOCKED, 10 SQLITE_IOERR (primary codes).
            Self::Sql(e @ sqlx::Error::Database(_)) => matches!(primary_code(e), Some(5 | 6 | 10)),
            Self::Sql(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed,
            ) => true,
            Self::Sql(_) | Self::NotMigrated { .. } => false,
        }
    }

    /// The database refused the data itself (docs/DESIGN.md, rule 10).
    pub fn is_data_rejection(&self) -> bool {
        // 18 SQLITE_TOOBIG, 19 SQLITE_CONSTRAINT (CHECK, NOT NULL, ...), 20 SQLITE_MISMATCH.
        match self {
            Self::Sql(e) => matches!(primary_code(e), Some(18..=20)),
            Self::NotMigrated { .. } => false,
        }
    }
}

/// SQLite's primary result code (sqlx reports the extended code; its low byte is the primary).
fn primary_code(err: &sqlx::Error) -> Option<i32> {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| c & 0xff),
        _ => None,
    }
}

/// Opens a store: in memory when `path` is None (gone when the process ends), else the file,
/// created if missing.
pub async fn connect(path: Option<&Path>) -> Result<SqlitePool, SqliteError> {
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

/// Creates the tables, views and seeds; records the schema version. Idempotent.
pub async fn migrate(pool: &SqlitePool) -> Result<(), SqliteError> {
    let mut tx = pool.begin_with(BEGIN_WRITE).await?;
    // The schema files are ours, not user input.
    let seeds = crate::stores::olap::seed_statements("INSERT OR IGNORE INTO");
    for statement in crate::stores::split_statements(SCHEMA)
        .into_iter()
        .chain(seeds)
    {
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO schema_version (component, version) VALUES ('sqlite', ?) \
         ON CONFLICT (component) DO UPDATE SET version = excluded.version",
    )
    .bind(SCHEMA_VERSION)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Fails with `NotMigrated` unless the schema version matches this binary.
pub async fn check_migrated(pool: &SqlitePool) -> Result<(), SqliteError> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT version FROM schema_version WHERE component = 'sqlite'")
            .fetch_optional(pool)
            .await
            .or_else(|e| match e {
                sqlx::Error::Database(db) if db.message().contains("no such table") => Ok(None),
                e => Err(e),
            })?;
    if found != Some(SCHEMA_VERSION) {
        return Err(SqliteError::NotMigrated {
            found,
            expected: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Claims a partition: creates the ledger row if missing (at `start_offset`), increments the
/// owner epoch and reads the position, in one write transaction.
pub async fn claim(
    pool: &SqlitePool,
    topic: &str,
    partition: i32,
    owner: &str,
    start_offset: i64,
) -> Result<Claim, SqliteError> {
    let mut tx = pool.begin_with(BEGIN_WRITE).await?;
    let inserted = sqlx::query(
        "INSERT OR IGNORE INTO consumer_offsets (topic, partition_id, next_offset, owner_epoch, owner) \
         VALUES (?, ?, ?, 0, '')",
    )
    .bind(topic)
    .bind(partition)
    .bind(start_offset)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let row = sqlx::query(
        "UPDATE consumer_offsets SET owner_epoch = owner_epoch + 1, owner = ?, \
         updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') \
         WHERE topic = ? AND partition_id = ? RETURNING next_offset, owner_epoch",
    )
    .bind(owner)
    .bind(topic)
    .bind(partition)
    .fetch_one(&mut *tx)
    .await?;
    let claim = Claim {
        partition,
        epoch: row.try_get(1)?,
        next_offset: row.try_get(0)?,
        created: inserted == 1,
    };
    tx.commit().await?;
    Ok(claim)
}

/// Reads the ledger rows of `partitions` inside a write transaction (which holds the lock).
async fn lock_ledger(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    topic: &str,
    partitions: &BTreeSet<i32>,
) -> Result<BTreeMap<i32, LedgerRow>, SqliteError> {
    let mut select = QueryBuilder::<Sqlite>::new(
        "SELECT partition_id, next_offset, owner_epoch FROM consumer_offsets WHERE topic = ",
    );
    select.push_bind(topic).push(" AND partition_id IN (");
    let mut list = select.separated(", ");
    for p in partitions {
        list.push_bind(*p);
    }
    select.push(")");
    let mut ledger = BTreeMap::new();
    for row in select.build().fetch_all(&mut **tx).await? {
        ledger.insert(
            row.try_get::<i32, _>(0)?,
            LedgerRow {
                next_offset: row.try_get(1)?,
                epoch: row.try_get(2)?,
            },
        );
    }
    Ok(ledger)
}

/// Applies a batch in one transaction (docs/DESIGN.md, rule 4). The caller retries transient
/// errors.
pub async fn apply_batch(
    pool: &SqlitePool,
    topic: &str,
    batch: &Batch,
) -> Result<ApplyReport, SqliteError> {
    let partitions: BTreeSet<i32> = batch.records.iter().map(|r| r.partition).collect();
    if partitions.is_empty() {
        return Ok(ApplyReport::default());
    }
    let mut tx = pool.begin_with(BEGIN_WRITE).await?;
    let ledger = lock_ledger(&mut tx, topic, &partitions).await?;
    let Plan {
        advance,
        applicable,
        mut report,
    } = plan(&ledger, batch);
    report.applied_created_at_ms = applicable
        .iter()
        .filter_map(|i| batch.records[*i].order())
        .map(|o| o.created_at_ms)
        .collect();
    report.applied_orders = applicable.len();

    write_deltas(&mut tx, &fold(batch, &applicable)).await?;
    for (p, next) in &advance {
        sqlx::query(
            "UPDATE consumer_offsets SET next_offset = ?, \
             updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') \
             WHERE topic = ? AND partition_id = ?",
        )
        .bind(next)
        .bind(topic)
        .bind(p)
        .execute(&mut *tx)
        .await?;
        report.committed.push((*p, *next));
    }
    tx.commit().await?;
    Ok(report)
}

/// Finds the orders SQLite refuses for their data (docs/DESIGN.md, rule 10); see
/// `mysql::find_rejected`.
pub async fn find_rejected(
    pool: &SqlitePool,
    topic: &str,
    batch: &Batch,
) -> Result<Vec<(usize, String)>, SqliteError> {
    let partitions: BTreeSet<i32> = batch.records.iter().map(|r| r.partition).collect();
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin_with(BEGIN_WRITE).await?;
    let ledger = lock_ledger(&mut tx, topic, &partitions).await?;
    let candidates = plan(&ledger, batch).applicable;
    let rejected = bisect_rejected(candidates, &mut Prober { tx: &mut tx, batch }).await?;
    tx.rollback().await?;
    Ok(rejected)
}

struct Prober<'a, 'c> {
    tx: &'a mut sqlx::Transaction<'c, Sqlite>,
    batch: &'a Batch,
}

impl Probe for Prober<'_, '_> {
    type Error = SqliteError;
    async fn probe(&mut self, indices: &[usize]) -> Result<Option<String>, SqliteError> {
        sqlx::raw_sql("SAVEPOINT probe")
            .execute(&mut **self.tx)
            .await?;
        let outcome = write_deltas(self.tx, &fold(self.batch, indices)).await;
        sqlx::raw_sql("ROLLBACK TO SAVEPOINT probe")
            .execute(&mut **self.tx)
            .await?;
        match outcome {
            Ok(()) => Ok(None),
            Err(e) if e.is_data_rejection() => Ok(Some(e.to_string())),
            Err(e) => Err(e),
        }
    }
}

/// Adds the deltas to both aggregate tables with sorted multi-row `x = x + excluded.x` upserts.
async fn write_deltas(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    deltas: &Deltas,
) -> Result<(), SqliteError> {
    upsert(tx, "aggregated_sales", "order_date", &deltas.daily).await?;
    upsert(tx, "sales_per_minute", "minute_start", &deltas.per_minute).await
}

async fn upsert<T>(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    table: &str,
    time_column: &str,
    rows: &BTreeMap<(T, i32, i32), Totals>,
) -> Result<(), SqliteError>
where
    T: Copy + Send + Sync + 'static + for<'q> sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite>,
{
    let rows: Vec<_> = rows.iter().collect();
    for chunk in rows.chunks(UPSERT_CHUNK) {
        let mut q = QueryBuilder::<Sqlite>::new(format!(
            "INSERT INTO {table} ({time_column}, platform_id, product_id, order_count, total_quantity) "
        ));
        q.push_values(chunk, |mut b, ((time, platform, product), t)| {
            b.push_bind(*time)
                .push_bind(*platform)
                .push_bind(*product)
                .push_bind(t.order_count)
                .push_bind(t.total_quantity);
        });
        q.push(format!(
            " ON CONFLICT ({time_column}, platform_id, product_id) DO UPDATE SET \
             order_count = order_count + excluded.order_count, \
             total_quantity = total_quantity + excluded.total_quantity"
        ));
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// The ledger of a topic: partition → next offset.
pub async fn read_ledger(
    pool: &SqlitePool,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, SqliteError> {
    ledger_on(&mut *pool.acquire().await?, topic).await
}

/// The ledger of a topic with the owner of each row: partition → (next offset, owner).
pub async fn read_ledger_owners(
    pool: &SqlitePool,
    topic: &str,
) -> Result<BTreeMap<i32, (i64, String)>, SqliteError> {
    let rows = sqlx::query(
        "SELECT partition_id, next_offset, owner FROM consumer_offsets WHERE topic = ?",
    )
    .bind(topic)
    .fetch_all(pool)
    .await?;
    let mut ledger = BTreeMap::new();
    for row in rows {
        ledger.insert(
            row.try_get::<i32, _>(0)?,
            (row.try_get::<i64, _>(1)?, row.try_get::<String, _>(2)?),
        );
    }
    Ok(ledger)
}

/// Both aggregate tables, as stored.
pub async fn read_aggregates(pool: &SqlitePool) -> Result<Deltas, SqliteError> {
    aggregates_on(&mut *pool.acquire().await?).await
}

/// The ledger and the aggregates as of one instant (one read transaction: SQLite's reads are
/// snapshot-isolated within it).
pub async fn snapshot(
    pool: &SqlitePool,
    topic: &str,
) -> Result<(BTreeMap<i32, i64>, Deltas), SqliteError> {
    let mut tx = pool.begin().await?;
    let ledger = ledger_on(&mut tx, topic).await?;
    let aggregates = aggregates_on(&mut tx).await?;
    tx.commit().await?;
    Ok((ledger, aggregates))
}

async fn ledger_on(
    conn: &mut sqlx::SqliteConnection,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, SqliteError> {
    let rows =
        sqlx::query("SELECT partition_id, next_offset FROM consumer_offsets WHERE topic = ?")
            .bind(topic)
            .fetch_all(&mut *conn)
            .await?;
    let mut ledger = BTreeMap::new();
    for row in rows {
        ledger.insert(row.try_get::<i32, _>(0)?, row.try_get::<i64, _>(1)?);
    }
    Ok(ledger)
}

async fn aggregates_on(conn: &mut sqlx::SqliteConnection) -> Result<Deltas, SqliteError> {
    let mut stored = Deltas::default();
    for row in sqlx::query("SELECT order_date, platform_id, product_id, order_count, total_quantity FROM aggregated_sales")
        .fetch_all(&mut *conn)
        .await?
    {
        stored.daily.insert(
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?),
            Totals { order_count: row.try_get(3)?, total_quantity: row.try_get(4)? },
        );
    }
    for row in sqlx::query("SELECT minute_start, platform_id, product_id, order_count, total_quantity FROM sales_per_minute")
        .fetch_all(&mut *conn)
        .await?
    {
        stored.per_minute.insert(
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?),
            Totals { order_count: row.try_get(3)?, total_quantity: row.try_get(4)? },
        );
    }
    Ok(stored)
}

/// Today's (UTC) sales and profit by category, from the dashboard's view.
pub async fn sales_today_by_category(
    pool: &SqlitePool,
) -> Result<Vec<(String, f64, f64)>, SqliteError> {
    let rows = sqlx::query(
        "SELECT category, CAST(SUM(total_sales) AS REAL), CAST(SUM(total_profit) AS REAL) \
         FROM sales_and_profit_today GROUP BY category ORDER BY category",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
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
        assert_eq!(objects(super::SCHEMA), mysql);
        assert_eq!(mysql.len(), 9, "{mysql:?}");
    }
}
