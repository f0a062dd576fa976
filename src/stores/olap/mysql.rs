//! The MySQL / MariaDB side: schema, the offset ledger and the batch transaction.
//!
//! The ledger (`consumer_offsets`) is the source of truth for what has been applied. A batch is
//! applied in ONE transaction that locks its partitions' ledger rows, drops replays and fenced
//! records, folds the rest into the aggregates with `x = x + delta` upserts and advances the
//! ledger (docs/DESIGN.md, rule 4). Retrying the whole transaction after any error is always safe:
//! it re-reads the ledger, so a COMMIT whose outcome was unknown (rule 9) is either seen as applied
//! (its records are now below `next_offset`) or applied again exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Executor, MySql, QueryBuilder, Row};

use crate::config::MysqlConfig;
use crate::model::aggregate::{Deltas, Totals};
use crate::model::batch::Batch;
use crate::model::ledger::{bisect_rejected, fold, plan, LedgerRow, Plan, Probe};
pub use crate::model::ledger::{ApplyReport, Claim};

const SCHEMA: &str = include_str!("../schema/mysql.sql");
/// Version of the MySQL schema this binary expects; `migrate` writes it, `run` checks it.
pub const SCHEMA_VERSION: i32 = 2;
const MIGRATE_LOCK: &str = "orderstream_migrate";
/// Rows per multi-row upsert statement.
const UPSERT_CHUNK: usize = 500;

/// Errors of the MySQL store.
#[derive(Debug, thiserror::Error)]
pub enum MysqlError {
    #[error("mysql: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("mysql database {database} is not migrated (schema version {found:?}, expected {expected}): run `orderstream migrate` first")]
    NotMigrated {
        database: String,
        found: Option<i32>,
        expected: i32,
    },
    #[error("could not take the migration lock within 120 s")]
    LockTimeout,
}

impl MysqlError {
    /// Retry (connection trouble, deadlock, lock wait) or not (a bug or refused data).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Sql(e @ sqlx::Error::Database(db)) => {
                // 1205 lock wait timeout, 1213 deadlock, 2006/2013 server gone / lost,
                // 1927 connection killed, 1053 server shutdown, 1040 too many connections,
                // 1290 read-only (a failover in progress).
                matches!(
                    errno(e),
                    Some(1205 | 1213 | 2006 | 2013 | 1927 | 1053 | 1040 | 1290)
                ) || db.message().contains("try restarting transaction")
            }
            Self::Sql(
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_),
            ) => true,
            Self::Sql(_) => false,
            Self::NotMigrated { .. } | Self::LockTimeout => false,
        }
    }

    /// The server refused the data itself (a value out of a column's range, a constraint):
    /// retrying cannot help, the offending record is dead-lettered instead
    /// (docs/DESIGN.md, rule 10).
    pub fn is_data_rejection(&self) -> bool {
        // 1048 NULL in NOT NULL, 1264 out of range, 1292 bad datetime, 1366 bad value,
        // 1406 too long, 1452 foreign key, 1644 SIGNAL from a trigger, 1690 arithmetic out of
        // range, 3819 CHECK violated (MySQL), 4025 CONSTRAINT failed (MariaDB).
        match self {
            Self::Sql(e) => matches!(
                errno(e),
                Some(1048 | 1264 | 1292 | 1366 | 1406 | 1452 | 1644 | 1690 | 3819 | 4025)
            ),
            _ => false,
        }
    }
}

/// The server's error number (`db.code()` is the SQLSTATE, which is too coarse).
pub fn errno(err: &sqlx::Error) -> Option<u16> {
    match err {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|e| e.number()),
        _ => None,
    }
}

fn options(cfg: &MysqlConfig, with_database: bool) -> Result<MySqlConnectOptions, MysqlError> {
    let mut options = MySqlConnectOptions::from_str("mysql://localhost")?
        .host(&cfg.host)
        .port(cfg.port)
        .username(&cfg.user)
        .charset("utf8mb4");
    if !cfg.password.expose().is_empty() {
        options = options.password(cfg.password.expose());
    }
    if with_database {
        options = options.database(&cfg.database);
    }
    Ok(options)
}

/// Opens the pipeline's pool on the configured database.
pub async fn connect(cfg: &MysqlConfig) -> Result<MySqlPool, MysqlError> {
    let pool = MySqlPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(Duration::from_millis(cfg.timeout_ms))
        .after_connect(|conn, _| {
            Box::pin(async move {
                // Aggregates are keyed by UTC dates; the ledger's timestamps too.
                conn.execute("SET time_zone = '+00:00'").await?;
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                Ok(())
            })
        })
        .connect_lazy_with(options(cfg, true)?);
    Ok(pool)
}

/// Fails with `NotMigrated` unless the schema version matches this binary.
pub async fn check_migrated(pool: &MySqlPool, cfg: &MysqlConfig) -> Result<(), MysqlError> {
    let found: Option<i32> =
        match sqlx::query_scalar("SELECT version FROM schema_version WHERE component = 'mysql'")
            .fetch_optional(pool)
            .await
        {
            Ok(v) => v,
            // 1146: table does not exist; 1049: unknown database.
            Err(e) if matches!(errno(&e), Some(1146 | 1049)) => None,
            Err(e) => return Err(e.into()),
        };
    if found != Some(SCHEMA_VERSION) {
        return Err(MysqlError::NotMigrated {
            database: cfg.database.clone(),
            found,
            expected: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Runs `f` while holding the server-wide migration lock, so concurrent `migrate` runs
/// serialize instead of racing.
pub async fn with_migrate_lock<F, Fut, T>(cfg: &MysqlConfig, f: F) -> Result<T, anyhow::Error>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, anyhow::Error>>,
{
    use sqlx::Connection;
    let mut conn = sqlx::mysql::MySqlConnection::connect_with(&options(cfg, false)?).await?;
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 120)")
        .bind(MIGRATE_LOCK)
        .fetch_one(&mut conn)
        .await?;
    if got != Some(1) {
        return Err(MysqlError::LockTimeout.into());
    }
    let result = f().await;
    let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(MIGRATE_LOCK)
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    result
}

/// Creates the database, tables, views and seeds; records the schema version. Idempotent.
pub async fn migrate(cfg: &MysqlConfig) -> Result<(), MysqlError> {
    use sqlx::Connection;
    let mut conn = sqlx::mysql::MySqlConnection::connect_with(&options(cfg, false)?).await?;
    // The database name was validated as an identifier, so it is safe to splice.
    let create = format!(
        "CREATE DATABASE IF NOT EXISTS `{}` CHARACTER SET utf8mb4",
        cfg.database
    );
    sqlx::raw_sql(AssertSqlSafe(create))
        .execute(&mut conn)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(format!("USE `{}`", cfg.database)))
        .execute(&mut conn)
        .await?;
    // The schema files are ours, not user input.
    let seeds = crate::stores::olap::seed_statements("INSERT IGNORE INTO");
    for statement in crate::stores::split_statements(SCHEMA)
        .into_iter()
        .chain(seeds)
    {
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut conn)
            .await?;
    }
    crate::tools::node_lease::seed(&mut conn).await?;
    sqlx::query(
        "INSERT INTO schema_version (component, version) VALUES ('mysql', ?) \
         ON DUPLICATE KEY UPDATE version = VALUES(version)",
    )
    .bind(SCHEMA_VERSION)
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}

/// Claims a partition: one transaction that creates the ledger row if missing (at
/// `start_offset`, the reset position), increments the owner epoch and reads the position.
pub async fn claim(
    pool: &MySqlPool,
    topic: &str,
    partition: i32,
    owner: &str,
    start_offset: i64,
) -> Result<Claim, MysqlError> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT IGNORE INTO consumer_offsets (topic, partition_id, next_offset, owner_epoch, owner) \
         VALUES (?, ?, ?, 0, '')",
    )
    .bind(topic)
    .bind(partition)
    .bind(start_offset)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let row = sqlx::query(
        "SELECT next_offset, owner_epoch FROM consumer_offsets \
         WHERE topic = ? AND partition_id = ? FOR UPDATE",
    )
    .bind(topic)
    .bind(partition)
    .fetch_one(&mut *tx)
    .await?;
    let next_offset: i64 = row.try_get(0)?;
    let epoch: i64 = row.try_get::<i64, _>(1)? + 1;
    sqlx::query(
        "UPDATE consumer_offsets SET owner_epoch = ?, owner = ?, updated_at = CURRENT_TIMESTAMP(3) \
         WHERE topic = ? AND partition_id = ?",
    )
    .bind(epoch)
    .bind(owner)
    .bind(topic)
    .bind(partition)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Claim {
        partition,
        epoch,
        next_offset,
        created: inserted == 1,
    })
}

/// Locks the ledger rows of `partitions` in partition order (the PK scan order of IN).
async fn lock_ledger(
    tx: &mut sqlx::Transaction<'_, MySql>,
    topic: &str,
    partitions: &BTreeSet<i32>,
) -> Result<BTreeMap<i32, LedgerRow>, MysqlError> {
    let mut select = QueryBuilder::<MySql>::new(
        "SELECT partition_id, next_offset, owner_epoch FROM consumer_offsets WHERE topic = ",
    );
    select.push_bind(topic).push(" AND partition_id IN (");
    let mut list = select.separated(", ");
    for p in partitions {
        list.push_bind(*p);
    }
    select.push(") ORDER BY partition_id FOR UPDATE");
    let mut ledger = BTreeMap::new();
    for row in select.build().fetch_all(&mut **tx).await? {
        let p: i32 = row.try_get(0)?;
        ledger.insert(
            p,
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
    pool: &MySqlPool,
    topic: &str,
    batch: &Batch,
) -> Result<ApplyReport, MysqlError> {
    let partitions: BTreeSet<i32> = batch.records.iter().map(|r| r.partition).collect();
    if partitions.is_empty() {
        return Ok(ApplyReport::default());
    }
    let mut tx = pool.begin().await?;
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
            "UPDATE consumer_offsets SET next_offset = ?, updated_at = CURRENT_TIMESTAMP(3) \
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

/// Finds the orders of a batch that MySQL refuses for their data (docs/DESIGN.md, rule 10), after
/// `apply_batch` failed with a data rejection. Returns (record index, the server's message).
///
/// Works in one transaction that changes nothing: under the ledger locks, each probe writes the
/// deltas of some of the applicable orders inside a savepoint and rolls back to it (the search
/// itself is `ledger::bisect_rejected`).
pub async fn find_rejected(
    pool: &MySqlPool,
    topic: &str,
    batch: &Batch,
) -> Result<Vec<(usize, String)>, MysqlError> {
    let partitions: BTreeSet<i32> = batch.records.iter().map(|r| r.partition).collect();
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    let ledger = lock_ledger(&mut tx, topic, &partitions).await?;
    let candidates = plan(&ledger, batch).applicable;
    let rejected = bisect_rejected(candidates, &mut Prober { tx: &mut tx, batch }).await?;
    tx.rollback().await?;
    Ok(rejected)
}

struct Prober<'a, 'c> {
    tx: &'a mut sqlx::Transaction<'c, MySql>,
    batch: &'a Batch,
}

impl Probe for Prober<'_, '_> {
    type Error = MysqlError;
    async fn probe(&mut self, indices: &[usize]) -> Result<Option<String>, MysqlError> {
        sqlx::raw_sql("SAVEPOINT probe")
            .execute(&mut **self.tx)
            .await?;
        let outcome = write_deltas(self.tx, &fold(self.batch, indices)).await;
        // A failed statement is rolled back on its own; the savepoint undoes the ones before it.
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

/// Adds the deltas to both aggregate tables with sorted multi-row `x = x + VALUES(x)` upserts.
async fn write_deltas(
    tx: &mut sqlx::Transaction<'_, MySql>,
    deltas: &Deltas,
) -> Result<(), MysqlError> {
    upsert(tx, "aggregated_sales", "order_date", &deltas.daily).await?;
    upsert(tx, "sales_per_minute", "minute_start", &deltas.per_minute).await
}

/// Upserts rows keyed by (time, platform, product) into one aggregate table.
async fn upsert<T>(
    tx: &mut sqlx::Transaction<'_, MySql>,
    table: &str,
    time_column: &str,
    rows: &BTreeMap<(T, i32, i32), Totals>,
) -> Result<(), MysqlError>
where
    T: Copy + Send + Sync + 'static + for<'q> sqlx::Encode<'q, MySql> + sqlx::Type<MySql>,
{
    let rows: Vec<_> = rows.iter().collect();
    for chunk in rows.chunks(UPSERT_CHUNK) {
        let mut q = QueryBuilder::<MySql>::new(format!(
            "INSERT INTO {table} ({time_column}, platform_id, product_id, order_count, total_quantity) "
        ));
        q.push_values(chunk, |mut b, ((time, platform, product), t)| {
            b.push_bind(*time)
                .push_bind(*platform)
                .push_bind(*product)
                .push_bind(t.order_count)
                .push_bind(t.total_quantity);
        });
        q.push(
            " ON DUPLICATE KEY UPDATE order_count = order_count + VALUES(order_count), \
             total_quantity = total_quantity + VALUES(total_quantity)",
        );
        q.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// The ledger of a topic: partition → next offset (audits and tests).
pub async fn read_ledger(pool: &MySqlPool, topic: &str) -> Result<BTreeMap<i32, i64>, MysqlError> {
    ledger_on(&mut *pool.acquire().await?, topic).await
}

/// The ledger of a topic with the owner of each row: partition → (next offset, owner).
pub async fn read_ledger_owners(
    pool: &MySqlPool,
    topic: &str,
) -> Result<BTreeMap<i32, (i64, String)>, MysqlError> {
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

/// Both aggregate tables, as stored (audits and tests).
pub async fn read_aggregates(pool: &MySqlPool) -> Result<Deltas, MysqlError> {
    aggregates_on(&mut *pool.acquire().await?).await
}

/// The ledger and the aggregates as of one instant (a consistent read snapshot), so that the
/// aggregates are exactly the fold of every record below the ledger, even while the pipeline
/// keeps committing (`reconcile`).
pub async fn snapshot(
    pool: &MySqlPool,
    topic: &str,
) -> Result<(BTreeMap<i32, i64>, Deltas), MysqlError> {
    let mut conn = pool.acquire().await?;
    // The pool's sessions read committed; this one transaction needs repeatable read.
    sqlx::raw_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *conn)
        .await?;
    sqlx::raw_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        .execute(&mut *conn)
        .await?;
    let ledger = ledger_on(&mut conn, topic).await?;
    let aggregates = aggregates_on(&mut conn).await?;
    sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
    Ok((ledger, aggregates))
}

async fn ledger_on(
    conn: &mut sqlx::MySqlConnection,
    topic: &str,
) -> Result<BTreeMap<i32, i64>, MysqlError> {
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

async fn aggregates_on(conn: &mut sqlx::MySqlConnection) -> Result<Deltas, MysqlError> {
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
    pool: &MySqlPool,
) -> Result<Vec<(String, f64, f64)>, MysqlError> {
    let rows = sqlx::query(
        "SELECT category, CAST(SUM(total_sales) AS DOUBLE), CAST(SUM(total_profit) AS DOUBLE) \
         FROM sales_and_profit_today GROUP BY category ORDER BY category",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}
