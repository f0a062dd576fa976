//! MySQL / MariaDB: its dialect of the ledger protocol, connecting, and `migrate` (the database,
//! the schema under a server-wide lock).

use std::str::FromStr;
use std::time::Duration;

use sqlx::error::DatabaseError;
use sqlx::mysql::{
    MySqlConnectOptions, MySqlDatabaseError, MySqlPool, MySqlPoolOptions, MySqlSslMode,
};
use sqlx::{AssertSqlSafe, Connection as _, Executor, MySql, MySqlConnection};

use super::protocol::{Dialect, Protocol};
use super::OlapError;
use crate::config::MysqlConfig;

const MIGRATE_LOCK: &str = "orderstream_migrate";

impl Dialect for MySql {
    const STORE: &'static str = "mysql";
    const SCHEMA: &'static str = include_str!("../schema/mysql.sql");
    const SCHEMA_VERSION: i32 = 2;
    const BEGIN_WRITE: &'static str = "BEGIN";
    const LOCK_ROWS: &'static str = " FOR UPDATE";
    const INSERT_IGNORE: &'static str = "INSERT IGNORE INTO";
    const NOW: &'static str = "CURRENT_TIMESTAMP(3)";
    // The pool's sessions read committed; the snapshot transaction needs repeatable read.
    const SNAPSHOT_PREPARE: &'static [&'static str] =
        &["SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"];
    const BEGIN_SNAPSHOT: &'static str = "START TRANSACTION WITH CONSISTENT SNAPSHOT";
    const SALES_TODAY_BY_CATEGORY: &'static str =
        "SELECT category, CAST(SUM(total_sales) AS DOUBLE), CAST(SUM(total_profit) AS DOUBLE) \
         FROM sales_and_profit_today GROUP BY category ORDER BY category";
    const SALES_TODAY: &'static str = "SELECT category, platform, CAST(orders AS DOUBLE), \
         CAST(total_sales AS DOUBLE), CAST(total_profit AS DOUBLE) FROM sales_and_profit_today \
         ORDER BY category, platform";
    const SALES_PER_MINUTE_SINCE: &'static str = "SELECT minute_start, CAST(orders AS DOUBLE), \
         CAST(total_sales AS DOUBLE), CAST(total_profit AS DOUBLE) FROM sales_per_minute_amounts \
         WHERE minute_start >= ? ORDER BY minute_start";
    const RECORD_VERSION: &'static str =
        "INSERT INTO schema_version (component, version) VALUES ('mysql', ?) \
         ON DUPLICATE KEY UPDATE version = VALUES(version)";

    fn add_on_conflict(_time_column: &str) -> String {
        " ON DUPLICATE KEY UPDATE order_count = order_count + VALUES(order_count), \
         total_quantity = total_quantity + VALUES(total_quantity)"
            .to_owned()
    }

    fn is_missing_schema(err: &sqlx::Error) -> bool {
        // 1146: table does not exist; 1049: unknown database.
        matches!(errno(err), Some(1146 | 1049))
    }
}

/// The server's error number (`db.code()` is the SQLSTATE, which is too coarse).
pub fn errno(err: &sqlx::Error) -> Option<u16> {
    err.as_database_error().and_then(number)
}

fn number(db: &dyn DatabaseError) -> Option<u16> {
    db.try_downcast_ref::<MySqlDatabaseError>()
        .map(|e| e.number())
}

/// A MySQL error worth retrying: a lock wait or deadlock, the connection lost or killed, the
/// server shutting down, overloaded, or read-only during a failover.
pub(super) fn is_transient(db: &dyn DatabaseError) -> bool {
    // 1205 lock wait timeout, 1213 deadlock, 2006/2013 server gone / lost, 1927 connection
    // killed, 1053 server shutdown, 1040 too many connections, 1290 read-only.
    match number(db) {
        Some(n) => {
            matches!(n, 1205 | 1213 | 2006 | 2013 | 1927 | 1053 | 1040 | 1290)
                || db.message().contains("try restarting transaction")
        }
        None => false,
    }
}

/// MySQL refused the data itself.
pub(super) fn is_data_rejection(db: &dyn DatabaseError) -> bool {
    // 1048 NULL in NOT NULL, 1264 out of range, 1292 bad datetime, 1366 bad value, 1406 too
    // long, 1452 foreign key, 1644 SIGNAL from a trigger, 1690 arithmetic out of range,
    // 3819 CHECK violated (MySQL), 4025 CONSTRAINT failed (MariaDB).
    matches!(
        number(db),
        Some(1048 | 1264 | 1292 | 1366 | 1406 | 1452 | 1644 | 1690 | 3819 | 4025)
    )
}

fn options(cfg: &MysqlConfig, with_database: bool) -> Result<MySqlConnectOptions, OlapError> {
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
    // `validate` refused any other mode.
    options = options.ssl_mode(cfg.ssl_mode().unwrap_or(MySqlSslMode::VerifyIdentity));
    if !cfg.ssl_ca_file.is_empty() {
        options = options.ssl_ca(&cfg.ssl_ca_file);
    }
    if !cfg.ssl_certificate_file.is_empty() {
        options = options
            .ssl_client_cert(&cfg.ssl_certificate_file)
            .ssl_client_key(&cfg.ssl_key_file);
    }
    Ok(options)
}

/// Opens the pipeline's pool on the configured database (lazily: no connection yet).
pub async fn connect(cfg: &MysqlConfig) -> Result<MySqlPool, OlapError> {
    let limit = Duration::from_millis(cfg.timeout_ms);
    let idle = server_idle_limit(limit);
    let pool = MySqlPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(limit)
        // Closed here before the server closes them (see `server_idle_limit`).
        .idle_timeout(idle / 2)
        // A connection comes back to the pool after every use, and the pool then pings it
        // with no time limit. One whose server vanished without a reset (a call given up by
        // `within`) would never answer and hold its place in the pool for good; answering
        // false within the limit closes it instead.
        .after_release(move |conn, _| {
            Box::pin(async move {
                Ok(tokio::time::timeout(limit, conn.ping())
                    .await
                    .is_ok_and(|pinged| pinged.is_ok()))
            })
        })
        .after_connect(move |conn, _| {
            Box::pin(async move {
                // Aggregates are keyed by UTC dates; the ledger's timestamps too.
                conn.execute("SET time_zone = '+00:00'").await?;
                conn.execute(AssertSqlSafe(format!(
                    "SET SESSION wait_timeout = {}",
                    idle.as_secs()
                )))
                .await?;
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    .await?;
                Ok(())
            })
        })
        .connect_lazy_with(options(cfg, true)?);
    Ok(pool)
}

/// How long the server keeps one of the pool's sessions that sends nothing: twice
/// `mysql.timeout_ms`, at least 10 s. The pipeline never leaves a session idle inside a
/// transaction for longer than `mysql.timeout_ms` (it gives the call up), so a session idle
/// longer is one whose client is gone or gave up, and the row locks its transaction holds would
/// block every later batch of the same partitions until the server's default of 8 hours. Idle
/// pooled sessions are closed by the pool first.
fn server_idle_limit(limit: Duration) -> Duration {
    Duration::from_secs((limit * 2).as_secs().max(10))
}

/// Fails with `NotMigrated` unless the schema version matches this binary.
pub(crate) async fn check_migrated(pool: &MySqlPool, cfg: &MysqlConfig) -> Result<(), OlapError> {
    Protocol::<MySql>::check_migrated(pool, &cfg.database).await
}

/// Runs `f` while holding the server-wide migration lock, so concurrent `migrate` runs
/// serialize instead of racing.
pub(crate) async fn with_migrate_lock<F, Fut, T>(
    cfg: &MysqlConfig,
    f: F,
) -> Result<T, anyhow::Error>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, anyhow::Error>>,
{
    let mut conn = MySqlConnection::connect_with(&options(cfg, false)?).await?;
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 120)")
        .bind(MIGRATE_LOCK)
        .fetch_one(&mut conn)
        .await?;
    if got != Some(1) {
        return Err(OlapError::LockTimeout.into());
    }
    let result = f().await;
    let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(MIGRATE_LOCK)
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    result
}

/// Creates the database, tables, views, seeds and the producer leases; records the schema
/// version. Idempotent.
pub async fn migrate(cfg: &MysqlConfig) -> Result<(), OlapError> {
    let mut conn = MySqlConnection::connect_with(&options(cfg, false)?).await?;
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
    Protocol::<MySql>::install_schema(&mut conn).await?;
    conn.close().await?;
    Ok(())
}
