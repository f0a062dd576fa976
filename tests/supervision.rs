//! Supervision at the top: what happens when restarting the data path cannot help.
//!
//! - An unexpected failure that comes back on every restart spends the restart budget, and the
//!   process exits with code 3 and a message naming the actor and its last error, so that the
//!   container's restart policy (the supervisor above us) takes over. Nothing is lost: once the
//!   cause is fixed, a new run stores everything exactly.
//! - A panic in an actor never leaves a zombie: the process exits (code 70).
//!
//! The failure for the budget is a real one: a table the aggregator writes is renamed away on
//! the real MariaDB, so every transaction fails with "table doesn't exist" (errno 1146, neither
//! an outage nor a data rejection).

use std::time::{Duration, Instant};

use crate::common::{self, Env};

const PARTITIONS: i32 = 2;

#[tokio::test(flavor = "multi_thread")]
async fn a_spent_restart_budget_exits_3_naming_the_actor_and_its_error() {
    let _heavy = common::heavy();
    let env = Env::start();
    env.migrate(PARTITIONS);
    env.produce(PARTITIONS, 3_000);
    let pool = env.mysql(PARTITIONS).await;
    sqlx::raw_sql("RENAME TABLE sales_per_minute TO sales_per_minute_away")
        .execute(&pool)
        .await
        .unwrap();

    let started = Instant::now();
    let (code, log) = env.run_to_end(
        PARTITIONS,
        &[
            "run",
            "--set",
            "supervision.restart_budget=3",
            "--set",
            "supervision.restart_window_ms=60000",
        ],
        Duration::from_secs(120),
    );
    let took = started.elapsed();
    assert_eq!(code, Some(3), "exit code after a spent budget; log:\n{log}");
    let last = log
        .lines()
        .find(|l| l.starts_with("orderstream: restart budget spent"))
        .unwrap_or_else(|| panic!("no budget message in:\n{log}"));
    assert!(
        last.contains("last failure in mysql_aggregator") && last.contains("doesn't exist"),
        "the message names the actor and its last error: {last}"
    );
    assert_eq!(
        log.matches("restarting the data path").count(),
        3,
        "three restarts, then the exit"
    );
    let ledger = orderstream::stores::OlapStore::Mysql(pool.clone())
        .read_ledger(&env.names.topic)
        .await
        .unwrap();
    assert_eq!(ledger.values().sum::<i64>(), 0, "nothing committed");

    // The cause fixed, a new run stores every order exactly once.
    sqlx::raw_sql("RENAME TABLE sales_per_minute_away TO sales_per_minute")
        .execute(&pool)
        .await
        .unwrap();
    let at_exit = common::ledger(&env, PARTITIONS).await;
    let mut run = env.spawn(PARTITIONS, &["run"]);
    common::resumes(&env, PARTITIONS, &at_exit, "the cause fixed and a restart").await;
    let ends = common::log_ends(&env.broker.addr(), &env.names.topic);
    common::ledger_reaches(&pool, &env.names.topic, &ends).await;
    assert_eq!(run.terminate(Duration::from_secs(30)), Some(0));
    common::assert_stores_exact(&env, PARTITIONS, 3_000).await;
    println!(
        "FIGURES budget: exit 3 after 3 restarts in {:.1} s; {last}",
        took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_an_actor_exits_the_process() {
    let _heavy = common::heavy();
    let env = Env::start();
    env.migrate(PARTITIONS);
    env.produce(PARTITIONS, 3_000);
    let mut run = env.spawn_with(
        PARTITIONS,
        &["run", "--set", "pipeline.max_orders=500"],
        &[("ORDERSTREAM_FAILPOINTS", "before_mysql_commit=panic@3")],
    );
    assert_eq!(
        run.wait(Duration::from_secs(60)),
        Some(70),
        "a panic ends the process"
    );

    let pool = env.mysql(PARTITIONS).await;
    let at_exit = common::ledger(&env, PARTITIONS).await;
    // Started again at once, as a container's restart policy does.
    let mut again = env.spawn(PARTITIONS, &["run"]);
    common::resumes(
        &env,
        PARTITIONS,
        &at_exit,
        "a panic and an immediate restart",
    )
    .await;
    let ends = common::log_ends(&env.broker.addr(), &env.names.topic);
    common::ledger_reaches(&pool, &env.names.topic, &ends).await;
    assert_eq!(again.terminate(Duration::from_secs(30)), Some(0));
    common::assert_stores_exact(&env, PARTITIONS, 3_000).await;
}
