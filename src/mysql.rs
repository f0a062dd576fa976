//! The MySQL / MariaDB side: schema, the offset ledger and the batch transaction.
//!
//! The ledger (`consumer_offsets`) is the source of truth for what has been applied. A batch is
//! applied in ONE transaction that locks its partitions' ledger rows, drops replays and fenced
//! records, folds the rest into the aggregates with `x = x + delta` upserts and advances the
//! ledger (DESIGN rule 4). Retrying the whole transaction after any error is always safe: it
//! re-reads the ledger, so a COMMIT whose outcome was unknown (rule 9) is either seen as applied
//! (its records are now below `next_offset`) or applied again exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::{AssertSqlSafe, Executor, MySql, QueryBuilder, Row};

use crate::aggregate::{Deltas, Totals};
use crate::batch::Batch;
use crate::config::MysqlConfig;

const SCHEMA: &str = include_str!("schema/mysql.sql");
/// Version of the MySQL schema this binary expects; `migrate` writes it, `run` checks it.
pub const SCHEMA_VERSION: i32 = 1;
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
            Self::Sql(sqlx::Error::Database(db)) => {
                // 1205 lock wait timeout, 1213 deadlock, 2006/2013 server gone / lost,
                // 1927 connection killed, 1053 server shutdown, 1040 too many connections.
                let code = db.code().map(|c| c.to_string()).unwrap_or_default();
                matches!(
                    code.as_str(),
                    "1205" | "1213" | "2006" | "2013" | "1927" | "1053" | "1040"
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
    // The schema file is ours, not user input.
    for statement in crate::cassandra::split_statements(SCHEMA) {
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut conn)
            .await?;
    }
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

/// A partition's ledger position after its owner claimed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub partition: i32,
    pub epoch: i64,
    pub next_offset: i64,
    /// Whether the ledger row was created by this claim (no position was recorded before).
    pub created: bool,
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

/// What one batch transaction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Partitions whose ledger advanced, with their new next offset.
    pub committed: Vec<(i32, i64)>,
    /// Valid orders folded into the aggregates.
    pub applied_orders: usize,
    /// Records skipped because the ledger was already past them (replays).
    pub replayed: usize,
    /// Partitions whose records carried an epoch other than the ledger's: this instance lost
    /// them (or re-claimed them since), so those records changed nothing.
    pub fenced: Vec<(i32, i64)>,
    /// Partitions whose records started above the ledger: (partition, epoch) to re-seek.
    pub gaps: Vec<(i32, i64)>,
    /// created_at of every applied order, for the end-to-end latency histogram.
    pub applied_created_at_ms: Vec<i64>,
}

#[derive(Debug, Clone, Copy)]
struct LedgerRow {
    next_offset: i64,
    epoch: i64,
}

/// Applies a batch in one transaction (DESIGN rule 4). The caller retries transient errors.
pub async fn apply_batch(
    pool: &MySqlPool,
    topic: &str,
    batch: &Batch,
) -> Result<ApplyReport, MysqlError> {
    let partitions: BTreeSet<i32> = batch.records.iter().map(|r| r.partition).collect();
    let mut report = ApplyReport::default();
    if partitions.is_empty() {
        return Ok(report);
    }
    let mut tx = pool.begin().await?;

    // Lock the ledger rows in partition order (the PK scan order of IN).
    let mut select = QueryBuilder::<MySql>::new(
        "SELECT partition_id, next_offset, owner_epoch FROM consumer_offsets WHERE topic = ",
    );
    select.push_bind(topic).push(" AND partition_id IN (");
    let mut list = select.separated(", ");
    for p in &partitions {
        list.push_bind(*p);
    }
    select.push(") ORDER BY partition_id FOR UPDATE");
    let mut ledger = BTreeMap::new();
    for row in select.build().fetch_all(&mut *tx).await? {
        let p: i32 = row.try_get(0)?;
        ledger.insert(
            p,
            LedgerRow {
                next_offset: row.try_get(1)?,
                epoch: row.try_get(2)?,
            },
        );
    }

    // Pass 1: per partition, how far this batch continues the ledger without a hole.
    let mut advance: BTreeMap<i32, i64> = BTreeMap::new();
    let mut blocked: BTreeSet<i32> = BTreeSet::new();
    for record in &batch.records {
        let p = record.partition;
        if blocked.contains(&p) {
            continue;
        }
        let Some(row) = ledger.get(&p) else {
            // No claim was ever recorded: we cannot own it.
            blocked.insert(p);
            report.fenced.push((p, record.epoch));
            continue;
        };
        if record.epoch != row.epoch {
            if !report.fenced.iter().any(|(fp, _)| *fp == p) {
                report.fenced.push((p, record.epoch));
            }
            continue;
        }
        let expected = advance.get(&p).copied().unwrap_or(row.next_offset);
        if record.offset < expected {
            report.replayed += 1;
        } else if record.offset == expected {
            advance.insert(p, record.offset + 1);
        } else {
            // A hole between what is applied and what we hold: never skip, re-seek instead.
            blocked.insert(p);
            advance.remove(&p);
            report.gaps.push((p, record.epoch));
        }
    }
    // Pass 2: fold exactly the records between the ledger and the new position.
    let mut deltas = Deltas::default();
    for record in &batch.records {
        let (Some(row), Some(next)) = (
            ledger.get(&record.partition),
            advance.get(&record.partition),
        ) else {
            continue;
        };
        if record.epoch == row.epoch && (row.next_offset..*next).contains(&record.offset) {
            if let Some(order) = record.order() {
                deltas.add(order);
                report.applied_created_at_ms.push(order.created_at_ms);
            }
        }
    }
    report.applied_orders = report.applied_created_at_ms.len();

    upsert_daily(&mut tx, &deltas.daily).await?;
    upsert_minutes(&mut tx, &deltas.per_minute).await?;
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

async fn upsert_daily(
    tx: &mut sqlx::Transaction<'_, MySql>,
    rows: &BTreeMap<crate::aggregate::DailyKey, Totals>,
) -> Result<(), MysqlError> {
    let rows: Vec<_> = rows.iter().collect();
    for chunk in rows.chunks(UPSERT_CHUNK) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO aggregated_sales (order_date, platform_id, product_id, order_count, total_quantity) ",
        );
        q.push_values(chunk, |mut b, ((date, platform, product), t)| {
            b.push_bind(*date)
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

async fn upsert_minutes(
    tx: &mut sqlx::Transaction<'_, MySql>,
    rows: &BTreeMap<crate::aggregate::MinuteKey, Totals>,
) -> Result<(), MysqlError> {
    let rows: Vec<_> = rows.iter().collect();
    for chunk in rows.chunks(UPSERT_CHUNK) {
        let mut q = QueryBuilder::<MySql>::new(
            "INSERT INTO sales_per_minute (minute_start, platform_id, product_id, order_count, total_quantity) ",
        );
        q.push_values(chunk, |mut b, ((minute, platform, product), t)| {
            b.push_bind(*minute)
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
    let rows =
        sqlx::query("SELECT partition_id, next_offset FROM consumer_offsets WHERE topic = ?")
            .bind(topic)
            .fetch_all(pool)
            .await?;
    let mut ledger = BTreeMap::new();
    for row in rows {
        ledger.insert(row.try_get::<i32, _>(0)?, row.try_get::<i64, _>(1)?);
    }
    Ok(ledger)
}

/// Both aggregate tables, as stored (audits and tests).
pub async fn read_aggregates(pool: &MySqlPool) -> Result<Deltas, MysqlError> {
    let mut stored = Deltas::default();
    for row in sqlx::query("SELECT order_date, platform_id, product_id, order_count, total_quantity FROM aggregated_sales")
        .fetch_all(pool)
        .await?
    {
        stored.daily.insert(
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?),
            Totals { order_count: row.try_get(3)?, total_quantity: row.try_get(4)? },
        );
    }
    for row in sqlx::query("SELECT minute_start, platform_id, product_id, order_count, total_quantity FROM sales_per_minute")
        .fetch_all(pool)
        .await?
    {
        stored.per_minute.insert(
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?),
            Totals { order_count: row.try_get(3)?, total_quantity: row.try_get(4)? },
        );
    }
    Ok(stored)
}
