//! The whole data path end to end on real servers, with exact assertions.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use orderstream::model::Deltas;
use orderstream::stores::CassandraStore;

use crate::common::{self, Env};

/// Bucket upper bounds and cumulative counts of a Prometheus histogram in a /metrics text.
fn buckets(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let mut b: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((
                if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                },
                count,
            ))
        })
        .collect();
    b.sort_by(|a, b| a.0.total_cmp(&b.0));
    b
}

/// The q-quantile (as the upper bound of its bucket) of what was observed between two scrapes.
fn quantile_between(before: &str, after: &str, name: &str, q: f64) -> Option<f64> {
    let b0 = buckets(before, name);
    let b1 = buckets(after, name);
    let diff: Vec<(f64, f64)> = b1
        .iter()
        .map(|(le, c)| {
            (
                *le,
                c - b0.iter().find(|(l, _)| l == le).map_or(0.0, |(_, c0)| *c0),
            )
        })
        .collect();
    let total = diff.last()?.1;
    if total <= 0.0 {
        return None;
    }
    diff.into_iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| le)
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_thousand_orders_are_stored_exactly_once() {
    let _heavy = common::heavy();
    const PARTITIONS: i32 = 4;
    const COUNT: usize = 20_000;
    let env = Env::start();
    env.migrate(PARTITIONS);
    let cfg = env.config(PARTITIONS);

    // Phase 1, throughput: 15,000 orders wait in the topic before the pipeline starts. The
    // producer runs as its own process; "the produced orders" are what the topic holds.
    let (code, err) = env.run_to_end(
        PARTITIONS,
        &["produce", "--count", "15000", "--rate", "20000"],
        Duration::from_secs(180),
    );
    assert_eq!(code, Some(0), "produce failed: {err}");
    let pool = env.mysql(PARTITIONS).await;
    let started = Instant::now();
    let mut run = env.spawn(PARTITIONS, &["run"]);
    let backlog_ends = common::log_ends(&env.broker.addr(), &env.names.topic);
    common::ledger_reaches(&pool, &env.names.topic, &backlog_ends).await;
    let drain = started.elapsed();

    // Phase 2, latency: 5,000 more at 2,500 orders/s while the pipeline runs.
    let before = common::scrape(env.http_port);
    let (code, err) = env.run_to_end(
        PARTITIONS,
        &["produce", "--count", "5000", "--rate", "2500"],
        Duration::from_secs(180),
    );
    assert_eq!(code, Some(0), "produce failed: {err}");
    let ends = common::log_ends(&env.broker.addr(), &env.names.topic);
    common::ledger_reaches(&pool, &env.names.topic, &ends).await;
    let after = common::scrape(env.http_port);
    let e2e = "orderstream_pipeline_end_to_end_latency_seconds";
    println!(
        "FIGURES: backlog of 15000 drained in {:.2} s = {:.0} orders/s (process start and group join included); \
         live at 2500/s: end-to-end latency p50<={:?} s p99<={:?} s (bucket upper bounds); mysql txn p99<={:?} s",
        drain.as_secs_f64(),
        15_000.0 / drain.as_secs_f64(),
        quantile_between(&before, &after, e2e, 0.5),
        quantile_between(&before, &after, e2e, 0.99),
        quantile_between("", &after, "orderstream_mysql_transaction_seconds", 0.99),
    );

    let records = common::read_topic(&env.broker.addr(), &env.names.topic);
    assert_eq!(records.len(), COUNT);
    let produced = common::valid_orders(&records);
    assert_eq!(produced.len(), COUNT, "every produced record is valid");
    assert_eq!(ends.len(), PARTITIONS as usize);
    assert!(
        ends.values().all(|e| *e > 0),
        "orders spread over every partition: {ends:?}"
    );

    // Graceful stop, then check everything at rest.
    assert_eq!(
        run.terminate(Duration::from_secs(30)),
        Some(0),
        "run must exit 0 on SIGTERM"
    );

    // Cassandra holds exactly the produced orders, field for field.
    let store = CassandraStore::connect(&cfg.cassandra).await.unwrap();
    let mut stored = store.read_all().await.unwrap();
    stored.sort_by_key(|o| o.order_id);
    let mut expected = produced.clone();
    expected.sort_by_key(|o| o.order_id);
    assert_eq!(stored.len(), COUNT);
    assert!(
        stored == expected,
        "cassandra rows differ from the produced orders"
    );

    // Aggregates equal the sums recomputed from the orders, key by key.
    let aggregates = orderstream::stores::OlapStore::Mysql(pool.clone())
        .read_aggregates()
        .await
        .unwrap();
    let recomputed = Deltas::fold(&produced);
    assert_eq!(aggregates.daily, recomputed.daily);
    assert_eq!(aggregates.per_minute, recomputed.per_minute);

    // The ledger is at the log end, and Kafka's committed offsets agree with it.
    let ledger = orderstream::stores::OlapStore::Mysql(pool.clone())
        .read_ledger(&env.names.topic)
        .await
        .unwrap();
    assert_eq!(ledger, ends);
    // (The consumer sends them as hints once a second.)
    let partitions: Vec<i32> = ends.keys().copied().collect();
    common::eventually(
        Duration::from_secs(10),
        "Kafka's committed offsets to reach the ledger",
        || async {
            common::committed(
                &env.broker.addr(),
                &env.names.group,
                &env.names.topic,
                &partitions,
            ) == ledger
        },
    )
    .await;

    // Nothing was dead-lettered.
    let dlq: BTreeMap<i32, i64> = common::log_ends(&env.broker.addr(), &env.names.dlq);
    assert!(
        dlq.values().all(|e| *e == 0),
        "unexpected dead letters: {dlq:?}"
    );

    // The sales view sums to the recomputed totals of today's orders.
    let today = chrono::Utc::now().date_naive();
    let expected_orders: i64 = recomputed
        .daily
        .iter()
        .filter(|((d, _, _), _)| *d == today)
        .map(|(_, t)| t.order_count)
        .sum();
    let viewed: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(orders), 0) AS SIGNED) FROM sales_and_profit_today",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(viewed, expected_orders);

    // `reconcile` agrees; then it catches a lost row, a changed row and a miscounted key.
    let (code, report) = common::reconcile(&env, PARTITIONS);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("records below it") && report.contains("verdict: EXACT"));
    let lost = expected[0].clone();
    store.delete(lost.order_id).await.unwrap();
    let mut changed = expected[1].clone();
    changed.quantity = changed.quantity % 10 + 1;
    store.insert(&changed).await.unwrap();
    sqlx::raw_sql(
        "UPDATE aggregated_sales SET order_count = order_count + 1 ORDER BY order_date LIMIT 1",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (code, report) = common::reconcile(&env, PARTITIONS);
    assert_eq!(code, Some(4), "{report}");
    assert!(report.contains("missing orders: 1"), "{report}");
    assert!(report.contains(&lost.order_id.to_string()), "{report}");
    assert!(report.contains("mismatched orders: 1"), "{report}");
    assert!(report.contains("differing aggregate keys: 1"), "{report}");
    assert!(report.contains("verdict: DIFFERENCES FOUND"), "{report}");
}
