//! About 1% invalid records mixed into the topic: each lands in the dead-letter topic with its
//! reason and source coordinates, the valid ones are exact, and no actor restarts.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::common::{self, Env};

#[tokio::test(flavor = "multi_thread")]
async fn invalid_records_are_dead_lettered_and_valid_ones_stay_exact() {
    let _heavy = common::heavy();
    const PARTITIONS: i32 = 3;
    let env = Env::start();
    env.migrate(PARTITIONS);

    env.produce(PARTITIONS, 5000);
    // ~1%: every kind of invalid record, several times, spread over the partitions.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env.broker.addr())
        .create()
        .unwrap();
    let kinds = common::invalid_payloads();
    for round in 0..4 {
        for (i, (payload, _)) in kinds.iter().enumerate() {
            let key = format!("bad-{round}-{i}");
            producer
                .send(
                    FutureRecord::to(&env.names.topic)
                        .key(&key)
                        .payload(payload),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    }
    env.produce(PARTITIONS, 5000);

    let records = common::read_topic(&env.broker.addr(), &env.names.topic);
    let ends = common::log_ends(&env.broker.addr(), &env.names.topic);
    let mut expected_dead: BTreeMap<(i32, i64), &'static str> = BTreeMap::new();
    for r in &records {
        if let Err(rejection) = orderstream::model::decode(&r.payload, 64 * 1024) {
            expected_dead.insert((r.partition, r.offset), rejection.reason.as_str());
        }
    }
    assert_eq!(expected_dead.len(), 4 * kinds.len());
    // The test's own labels agree with the contract's classification.
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for reason in expected_dead.values() {
        *by_reason.entry(reason).or_default() += 1;
    }
    let mut labelled: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, reason) in &kinds {
        *labelled.entry(reason).or_default() += 4;
    }
    assert_eq!(by_reason, labelled);

    let pool = env.mysql(PARTITIONS).await;
    let mut run = env.spawn(PARTITIONS, &["run"]);
    common::ledger_reaches(&pool, &env.names.topic, &ends).await;
    let metrics = common::scrape_when(
        env.http_port,
        "orderstream_mysql_orders_applied_total",
        10_000.0,
    )
    .await;
    assert_eq!(run.terminate(Duration::from_secs(30)), Some(0));

    // Dead letters: exactly the invalid records, by source partition and offset, with reasons.
    let dead = common::read_topic(&env.broker.addr(), &env.names.dlq);
    let mut got: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for d in &dead {
        let p: i32 = d.headers["source_partition"].parse().unwrap();
        let o: i64 = d.headers["source_offset"].parse().unwrap();
        assert_eq!(d.headers["source_topic"], env.names.topic);
        assert!(!d.headers["error_detail"].is_empty());
        if d.headers["error"] == "too_large" {
            assert_eq!(d.payload.len(), 64 * 1024, "truncated to the limit");
            assert!(d.headers["original_length"].parse::<usize>().unwrap() > 64 * 1024);
            assert_eq!(d.headers["original_fnv1a64"].len(), 16);
        } else {
            let source = records
                .iter()
                .find(|r| r.partition == p && r.offset == o)
                .unwrap();
            assert_eq!(d.payload, source.payload, "payload carried unchanged");
        }
        got.insert((p, o), d.headers["error"].clone());
    }
    let expected: BTreeMap<(i32, i64), String> = expected_dead
        .iter()
        .map(|(k, v)| (*k, v.to_string()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        dead.len(),
        expected.len(),
        "each invalid record dead-lettered once"
    );

    // The valid orders are exact in both stores; the ledger is at the log end.
    common::assert_stores_exact(&env, PARTITIONS, 10_000).await;

    // No actor restarted because of bad input.
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("orderstream_supervisor_restarts_total"))
    {
        assert!(line.ends_with(" 0"), "unexpected restart: {line}");
    }
    assert!(
        metrics.contains("orderstream_deadletter_records_total{reason=\"not_json\"} 4"),
        "{metrics}"
    );

    // The scrape is valid Prometheus text, and every data-path counter has moved.
    common::promtool_check(&metrics);
    for name in [
        "orderstream_consumer_records_total",
        "orderstream_batcher_batches_total",
        "orderstream_cassandra_rows_written_total",
        "orderstream_mysql_transactions_total",
        "orderstream_mysql_orders_applied_total",
        "orderstream_deadletter_records_total",
        "orderstream_consumer_rebalances_total",
    ] {
        assert!(
            common::metric_sum(&metrics, name) > 0.0,
            "{name} did not move"
        );
    }
    assert_eq!(
        common::metric_sum(&metrics, "orderstream_mysql_orders_applied_total"),
        10_000.0
    );
    assert_eq!(
        common::metric_sum(&metrics, "orderstream_deadletter_records_total"),
        expected.len() as f64
    );
}

/// docs/DESIGN.md, rule 10: MySQL refuses some orders for their data (here a CHECK constraint a DBA
/// added, a real refusal by the real server). The batch is bisected: exactly those orders are
/// dead-lettered (and taken out of Cassandra), the rest of each batch is applied, and no actor
/// restarts.
#[tokio::test(flavor = "multi_thread")]
async fn orders_mysql_refuses_are_bisected_out_and_dead_lettered() {
    let _heavy = common::heavy();
    const PARTITIONS: i32 = 3;
    let env = Env::start();
    env.migrate(PARTITIONS);
    let pool = env.mysql(PARTITIONS).await;
    sqlx::raw_sql(
        "ALTER TABLE aggregated_sales ADD CONSTRAINT no_platform2_product7 \
         CHECK (NOT (platform_id = 2 AND product_id = 7))",
    )
    .execute(&pool)
    .await
    .unwrap();

    env.produce(PARTITIONS, 4000);
    let records = common::read_topic(&env.broker.addr(), &env.names.topic);
    let ends = common::log_ends(&env.broker.addr(), &env.names.topic);
    let mut refused = BTreeMap::new();
    let mut kept = Vec::new();
    for r in &records {
        let order = orderstream::model::decode(&r.payload, 64 * 1024).unwrap();
        if order.platform_id == 2 && order.product_id == 7 {
            refused.insert((r.partition, r.offset), order.order_id);
        } else {
            kept.push(order);
        }
    }
    assert!(
        refused.len() > 10,
        "the constraint must bite: {}",
        refused.len()
    );

    let mut run = env.spawn(PARTITIONS, &["run"]);
    common::ledger_reaches(&pool, &env.names.topic, &ends).await;
    let metrics = common::scrape(env.http_port);
    assert_eq!(run.terminate(Duration::from_secs(30)), Some(0));

    let dead = common::read_topic(&env.broker.addr(), &env.names.dlq);
    let mut got = BTreeMap::new();
    for d in &dead {
        assert_eq!(d.headers["error"], "store_rejected");
        assert!(
            d.headers["error_detail"].contains("no_platform2_product7"),
            "{:?}",
            d.headers
        );
        let order = orderstream::model::decode(&d.payload, 64 * 1024).unwrap();
        let key = (
            d.headers["source_partition"].parse::<i32>().unwrap(),
            d.headers["source_offset"].parse::<i64>().unwrap(),
        );
        got.insert(key, order.order_id);
    }
    assert_eq!(got, refused, "dead letters are exactly the refused orders");
    assert_eq!(
        dead.len(),
        refused.len(),
        "each refused order dead-lettered once"
    );

    common::assert_stores_hold(&env, PARTITIONS, &kept).await;
    assert_eq!(
        common::metric_sum(&metrics, "orderstream_supervisor_restarts_total"),
        0.0
    );
    assert!(
        metrics.contains(&format!(
            "orderstream_deadletter_records_total{{reason=\"store_rejected\"}} {}",
            refused.len()
        )),
        "{metrics}"
    );
}

/// 1,000 valid orders, then one record that is not JSON, then 1,000 more; the invalid record's
/// offset.
async fn one_invalid_between_valid_orders(env: &Env, partitions: i32) -> i64 {
    env.produce(partitions, 1000);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env.broker.addr())
        .create()
        .unwrap();
    let offset = producer
        .send(
            FutureRecord::to(&env.names.topic)
                .key("bad")
                .payload("not json at all"),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .offset;
    env.produce(partitions, 1000);
    offset
}

/// The dead-letter topic holds exactly one letter: the `not_json` record at partition 0, `offset`.
fn assert_one_letter_for(env: &Env, offset: i64) {
    let dead = common::read_topic(&env.broker.addr(), &env.names.dlq);
    let coordinates: Vec<(String, String)> = dead
        .iter()
        .map(|d| {
            (
                d.headers["source_partition"].clone(),
                d.headers["source_offset"].clone(),
            )
        })
        .collect();
    assert_eq!(coordinates, vec![("0".to_string(), offset.to_string())]);
    assert_eq!(dead[0].headers["error"], "not_json");
}

/// docs/DESIGN.md, rule 7: while the dead-letter topic is unreachable, the batch holding an invalid
/// record waits: the ledger never moves past that record, nothing restarts, and the watchdog
/// reports the held partition on `/readyz`. Once the topic is back, the dead letter is
/// published, the partition moves again within the bound and everything completes exactly.
///
/// The outage is injected at the publish call (failpoint `dead_letter_publish`): tansu 0.6
/// loses every topic's metadata when one topic is deleted, so the real broker cannot produce
/// this fault on one topic alone.
#[tokio::test(flavor = "multi_thread")]
async fn partition_is_held_while_the_dead_letter_topic_is_unreachable() {
    let _heavy = common::heavy();
    const PARTITIONS: i32 = 1;
    let env = Env::start();
    env.migrate(PARTITIONS);
    let pool = env.mysql(PARTITIONS).await;
    let outage = env.root.path().join("dlq-outage");
    std::fs::write(&outage, b"").unwrap();

    let bad_offset = one_invalid_between_valid_orders(&env, PARTITIONS).await;

    let failpoint = format!("dead_letter_publish=fail_while:{}", outage.display());
    // Small batches, so the ones before the invalid record are not held with it.
    let mut run = env.spawn_with(
        PARTITIONS,
        &["run", "--set", "pipeline.max_orders=100"],
        &[("ORDERSTREAM_FAILPOINTS", &failpoint)],
    );
    // Held: the ledger reaches the invalid record at most, nothing restarts, and once the
    // partition has waited `pipeline.stuck_after_ms` the watchdog reports it: `/readyz` stops
    // answering 200, so the instance is never idle while it says all is well.
    let port = env.http_port;
    let held_since = std::time::Instant::now();
    let within = Duration::from_millis(common::STUCK_AFTER_MS) + Duration::from_secs(20);
    let mut highest;
    let unready = loop {
        highest = orderstream::stores::OlapStore::Mysql(pool.clone())
            .read_ledger(&env.names.topic)
            .await
            .unwrap()
            .get(&0)
            .copied()
            .unwrap_or(0);
        assert!(
            highest <= bad_offset,
            "ledger {highest} moved past the undelivered dead letter at {bad_offset}"
        );
        match common::http_get(port, "/readyz") {
            Some((status, body)) if status != 200 => break body,
            _ => {}
        }
        assert!(
            held_since.elapsed() < within,
            "the held partition was not reported within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!(
        "held partition reported after {:.1} s: {unready}",
        held_since.elapsed().as_secs_f64()
    );
    assert!(unready.contains("partition 0 is stuck"), "{unready}");
    assert!(highest > 0, "the valid orders before it were applied");
    let metrics = common::scrape(env.http_port);
    assert_eq!(
        common::metric_sum(&metrics, "orderstream_supervisor_restarts_total"),
        0.0
    );
    assert_eq!(
        common::metric_sum(&metrics, "orderstream_deadletter_records_total"),
        0.0
    );

    // The topic comes back: the dead letter goes out, the partition moves again within the
    // bound, catches up, and the instance is ready again.
    let held = common::ledger(&env, PARTITIONS).await;
    std::fs::remove_file(&outage).unwrap();
    common::resumes(&env, PARTITIONS, &held, "the dead-letter topic came back").await;
    let ends = common::log_ends(&env.broker.addr(), &env.names.topic);
    common::ledger_reaches(&pool, &env.names.topic, &ends).await;
    common::eventually(Duration::from_secs(30), "ready again", || async move {
        matches!(common::http_get(port, "/readyz"), Some((200, _)))
    })
    .await;
    assert_eq!(run.terminate(Duration::from_secs(30)), Some(0));

    assert_one_letter_for(&env, bad_offset);
    common::assert_stores_exact(&env, PARTITIONS, 2000).await;
}

/// An invalid record larger than the dead-letter producer may send (1,000,000 bytes) while
/// `pipeline.max_record_bytes` allows it: its dead letter carries as much of it as the producer
/// may send, with its length and hash, instead of being refused for its size again and again.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_record_larger_than_a_dead_letter_may_be_is_truncated_not_held() {
    let _heavy = common::heavy();
    const PARTITIONS: i32 = 1;
    const LARGE: usize = 1_200_000;
    let mut env = Env::start();
    // For the pipeline and for the audit alike.
    env.extra_vars
        .push(("PIPELINE__MAX_RECORD_BYTES".into(), "2097152".into()));
    env.migrate(PARTITIONS);
    let pool = env.mysql(PARTITIONS).await;
    env.produce(PARTITIONS, 100);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env.broker.addr())
        .set("message.max.bytes", "3000000")
        .create()
        .unwrap();
    let large_offset = producer
        .send(
            FutureRecord::to(&env.names.topic)
                .key("large")
                .payload(&vec![b'x'; LARGE]),
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .offset;
    env.produce(PARTITIONS, 100);

    let mut run = env.spawn(PARTITIONS, &["run"]);
    let ends = common::log_ends(&env.broker.addr(), &env.names.topic);
    common::ledger_reaches(&pool, &env.names.topic, &ends).await;
    assert_eq!(run.terminate(Duration::from_secs(30)), Some(0));

    let dead = common::read_topic(&env.broker.addr(), &env.names.dlq);
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(letter.headers["source_offset"], large_offset.to_string());
    assert_eq!(letter.headers["error"], "not_json");
    assert_eq!(letter.payload.len(), 1_000_000 - 16 * 1024);
    assert_eq!(letter.headers["original_length"], LARGE.to_string());
    assert_eq!(letter.headers["original_fnv1a64"].len(), 16);
    common::assert_stores_exact(&env, PARTITIONS, 200).await;
}

/// The dead-letter producer is idempotent, and librdkafka ends such a producer with a fatal
/// error when the broker lost its sequence numbers; every send fails from then on. The data path
/// restarts with a new producer, by itself and within the bound, and the letter goes out once.
///
/// The fatal error is injected with librdkafka's own test hook (failpoint `dead_letter_fatal`):
/// no test broker raises it at will.
#[tokio::test(flavor = "multi_thread")]
async fn a_fatal_error_of_the_dead_letter_producer_restarts_the_data_path() {
    let _heavy = common::heavy();
    const PARTITIONS: i32 = 1;
    let env = Env::start();
    env.migrate(PARTITIONS);
    let pool = env.mysql(PARTITIONS).await;
    let bad_offset = one_invalid_between_valid_orders(&env, PARTITIONS).await;

    let log = env.root.path().join("run-fatal.log");
    let mut run = env.spawn_logged(
        PARTITIONS,
        &["run", "--set", "pipeline.max_orders=100"],
        &log,
        &[("ORDERSTREAM_FAILPOINTS", "dead_letter_fatal=once@1")],
    );
    let restarts = "orderstream_supervisor_restarts_total{actor=\"cassandra_writer\"}";
    let port = env.http_port;
    common::eventually(
        Duration::from_secs(60),
        "the data path restarted",
        || async move {
            common::http_get(port, "/metrics")
                .is_some_and(|(_, metrics)| common::metric_sum(&metrics, restarts) >= 1.0)
        },
    )
    .await;
    let at_restart = common::ledger(&env, PARTITIONS).await;
    common::resumes(
        &env,
        PARTITIONS,
        &at_restart,
        "the dead-letter producer failed fatally",
    )
    .await;
    let ends = common::log_ends(&env.broker.addr(), &env.names.topic);
    common::ledger_reaches(&pool, &env.names.topic, &ends).await;
    assert_eq!(run.terminate(Duration::from_secs(30)), Some(0));

    assert_one_letter_for(&env, bad_offset);
    common::assert_stores_exact(&env, PARTITIONS, 2000).await;
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        log.matches("failpoint: fatal error raised").count(),
        1,
        "{log}"
    );
    assert!(log.contains("publishing a dead letter"), "{log}");
}

/// Cassandra answers a write to a table it does not have as it answers a value it refuses. A
/// node that lost the keyspace (wiped, dropped by mistake) is an outage: no order is
/// dead-lettered, the ledger stays where it is, and once the table is back the pipeline goes on
/// by itself.
#[tokio::test(flavor = "multi_thread")]
async fn orders_are_not_dead_lettered_when_cassandra_lost_its_table() {
    let _heavy = common::heavy();
    const PARTITIONS: i32 = 3;
    let mut env = Env::start();
    // The driver complains, rightly, while the node restarts.
    env.driver_errors_expected = true;
    env.migrate(PARTITIONS);
    let pool = env.mysql(PARTITIONS).await;
    env.produce(PARTITIONS, 1000);
    let mut run = env.spawn(PARTITIONS, &["run"]);
    let before = common::log_ends(&env.broker.addr(), &env.names.topic);
    common::ledger_reaches(&pool, &env.names.topic, &before).await;

    // The node comes back empty: no keyspace, no table.
    env.cql.restart_empty();
    env.produce(PARTITIONS, 1000);
    let topic = common::read_topic(&env.broker.addr(), &env.names.topic);
    let second: Vec<_> = topic
        .iter()
        .filter(|r| r.offset >= before[&r.partition])
        .collect();
    assert_eq!(second.len(), 1000);
    let restarts = "orderstream_supervisor_restarts_total{actor=\"cassandra_writer\"}";
    let metrics = common::scrape_when(env.http_port, restarts, 1.0).await;
    assert!(common::metric_sum(&metrics, restarts) >= 1.0, "{metrics}");
    assert!(common::read_topic(&env.broker.addr(), &env.names.dlq).is_empty());
    assert_eq!(common::ledger(&env, PARTITIONS).await, before);
    // Once the store probe (every 2 s) has seen the table gone: Cassandra is reported down and
    // the instance not ready, between the data path's restarts too.
    let port = env.http_port;
    let cassandra_up = "orderstream_dependency_up{dependency=\"cassandra\"}";
    common::eventually(
        Duration::from_secs(10),
        "cassandra reported down",
        || async move { common::metric_sum(&common::scrape(port), cassandra_up) == 0.0 },
    )
    .await;
    for _ in 0..12 {
        let (status, body) = common::http_get(port, "/readyz").unwrap();
        assert_ne!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Migrated again, within the restart budget: the same process goes on, every partition
    // within the bound.
    env.migrate(PARTITIONS);
    common::resumes(&env, PARTITIONS, &before, "the orders table migrated again").await;
    let ends = common::log_ends(&env.broker.addr(), &env.names.topic);
    common::ledger_reaches(&pool, &env.names.topic, &ends).await;
    assert_eq!(run.terminate(Duration::from_secs(30)), Some(0));

    assert!(
        common::read_topic(&env.broker.addr(), &env.names.dlq).is_empty(),
        "nothing is dead-lettered"
    );
    let store = orderstream::stores::CassandraStore::connect(&env.config(PARTITIONS).cassandra)
        .await
        .unwrap();
    let mut stored = store.read_all().await.unwrap();
    stored.sort_by_key(|o| o.order_id);
    let mut want = common::valid_orders(&second.into_iter().cloned().collect::<Vec<_>>());
    want.sort_by_key(|o| o.order_id);
    assert_eq!(stored, want, "the orders since the wipe, exactly");
    let aggregates = orderstream::stores::OlapStore::Mysql(pool.clone())
        .read_aggregates()
        .await
        .unwrap();
    let all = orderstream::model::Deltas::fold(&common::valid_orders(&topic));
    assert_eq!(aggregates.daily, all.daily);
    assert_eq!(aggregates.per_minute, all.per_minute);
}
