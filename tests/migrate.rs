//! `migrate` is idempotent and safe to run concurrently.

use std::time::Duration;

use sqlx::Row;

use crate::common::{self, Env};

async fn schema_snapshot(pool: &sqlx::MySqlPool, db: &str) -> Vec<String> {
    let mut out = Vec::new();
    for row in sqlx::query("SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = ? ORDER BY table_name")
        .bind(db)
        .fetch_all(pool)
        .await
        .unwrap()
    {
        out.push(format!("{}:{}", row.get::<String, _>(0), row.get::<String, _>(1)));
    }
    for table in [
        "platforms",
        "categories",
        "products",
        "aggregated_sales",
        "consumer_offsets",
        "schema_version",
    ] {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(pool)
                .await
                .unwrap();
        out.push(format!("{table}={n}"));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_twice_and_concurrently_changes_nothing() {
    let _heavy = common::heavy();
    let env = Env::start();
    env.migrate(3);
    let pool = env.mysql(3).await;
    // Data written between migrations must survive them.
    sqlx::query("INSERT INTO aggregated_sales VALUES ('2024-01-01', 1, 1, 5, 7)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO consumer_offsets (topic, partition_id, next_offset) VALUES ('t', 0, 42)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let before = schema_snapshot(&pool, &env.names.database).await;
    assert!(before.contains(&"platforms=4".to_string()), "{before:?}");
    assert!(before.contains(&"categories=4".to_string()), "{before:?}");
    assert!(before.contains(&"products=20".to_string()), "{before:?}");
    assert!(
        before.iter().any(|t| t == "sales_and_profit_today:VIEW"),
        "{before:?}"
    );

    env.migrate(3);
    assert_eq!(schema_snapshot(&pool, &env.names.database).await, before);

    // Two at once: both succeed, nothing changes.
    let mut a = env.spawn(3, &["migrate"]);
    let mut b = env.spawn(3, &["migrate"]);
    assert_eq!(a.wait(Duration::from_secs(120)), Some(0));
    assert_eq!(b.wait(Duration::from_secs(120)), Some(0));
    assert_eq!(schema_snapshot(&pool, &env.names.database).await, before);

    // Topics exist with the configured partitions; the Cassandra table exists.
    assert_eq!(
        common::log_ends(&env.broker.addr(), &env.names.topic).len(),
        3
    );
    assert!(!common::log_ends(&env.broker.addr(), &env.names.dlq).is_empty());
    let cfg = env.config(3);
    let session = orderstream::stores::connect_cassandra_session(&cfg.cassandra)
        .await
        .unwrap();
    assert!(
        orderstream::stores::cassandra_table_exists(&session, &env.names.keyspace, "orders")
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_refuses_an_unmigrated_store() {
    let _heavy = common::heavy();
    let env = Env::start();
    let (code, err) = env.run_to_end(3, &["run"], Duration::from_secs(60));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("orderstream migrate"), "{err}");
}

#[test]
fn invalid_config_names_the_key() {
    let out = std::process::Command::new(common::BIN)
        .arg("config")
        .env("ORDERSTREAM__PIPELINE__MAX_WAIT_MS", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pipeline.max_wait_ms"), "{err}");

    let out = std::process::Command::new(common::BIN)
        .arg("config")
        .env("ORDERSTREAM__MYSQL__PASSWORD", "s3cret-value")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("[mysql]") && !text.contains("s3cret-value"),
        "{text}"
    );
}
