//! Liveness: the pipeline never sits idle while records wait, and says so when it cannot move.
//!
//! Each scenario runs five times in a row on the same servers, and the stores are exact
//! (`orderstream reconcile`) after every repetition. The processes are killed the way a
//! container's restart policy sees it: SIGKILL, and the new process starts at once. tansu 0.6
//! keeps a SIGKILLed member in the group and can hand it every partition; the instance must
//! get itself moving again without an operator (see `watchdog.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::common::prometheus::Prometheus;
use crate::common::{self, Env, Names, Proc};

const REPETITIONS: usize = 5;

/// The servers, with the group timeouts and the watchdog at their defaults (session 10 s,
/// rebalance 30 s, stuck after 60 s): with these, tansu 0.6 hands a member started right after
/// a SIGKILL an empty assignment (the harness's shorter timeouts let tansu expire the dead
/// member first).
fn env_with_default_timeouts() -> Env {
    let mut env = Env::start();
    let defaults = orderstream::config::Config::default();
    for (key, value) in [
        (
            "KAFKA__SESSION_TIMEOUT_MS",
            defaults.kafka.session_timeout_ms.to_string(),
        ),
        (
            "KAFKA__MAX_POLL_INTERVAL_MS",
            defaults.kafka.max_poll_interval_ms.to_string(),
        ),
        (
            "PIPELINE__STUCK_AFTER_MS",
            defaults.pipeline.stuck_after_ms.to_string(),
        ),
    ] {
        env.extra_vars.push((key.to_owned(), value));
    }
    env
}

async fn applied(env: &Env, partitions: i32) -> i64 {
    common::applied(&env.mysql(partitions).await, &env.names.topic).await
}

/// Waits until `check` holds; returns how long that took, or panics after `within`.
async fn within<F, Fut>(within: Duration, what: &str, check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    common::eventually(within, what, check).await;
    started.elapsed()
}

async fn ledger(env: &Env, partitions: i32) -> BTreeMap<i32, i64> {
    orderstream::stores::OlapStore::Mysql(env.mysql(partitions).await)
        .read_ledger(&env.names.topic)
        .await
        .unwrap_or_default()
}

/// partition → (ledger offset, the owner that claimed it last)
async fn ledger_owners(
    env: &Env,
    partitions: i32,
) -> Result<BTreeMap<i32, (i64, String)>, orderstream::stores::OlapError> {
    orderstream::stores::OlapStore::Mysql(env.mysql(partitions).await)
        .read_ledger_owners(&env.names.topic)
        .await
}

fn assert_reconcile_exact(env: &Env, partitions: i32, rep: usize) {
    let (code, report) = common::reconcile(env, partitions);
    assert_eq!(code, Some(0), "repetition {rep}: reconcile: {report}");
    assert!(report.contains("verdict: EXACT"), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_only_instance_sigkilled_and_restarted_at_once_resumes_by_itself() {
    let _heavy = common::heavy();
    const PARTITIONS: i32 = 4;
    let env = env_with_default_timeouts();
    env.migrate(PARTITIONS);
    let mut run = env.spawn(PARTITIONS, &["run", "--set", "pipeline.max_orders=500"]);
    let mut figures = Vec::new();
    for rep in 1..=REPETITIONS {
        env.produce(PARTITIONS, 20_000);
        let before = applied(&env, PARTITIONS).await;
        let deadline = Instant::now() + Duration::from_secs(120);
        while applied(&env, PARTITIONS).await < before + 2_000 {
            assert!(
                Instant::now() < deadline,
                "repetition {rep}: no progress before the kill"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        run.kill();
        let at_kill = applied(&env, PARTITIONS).await;
        run = env.spawn(PARTITIONS, &["run", "--set", "pipeline.max_orders=500"]);
        let resumed = within(
            common::RESUME_WITHIN,
            "consumption to resume after the kill",
            || async { applied(&env, PARTITIONS).await > at_kill },
        )
        .await;
        let ends = common::log_ends(&env.broker.addr(), &env.names.topic);
        let drained = within(
            Duration::from_secs(300),
            "the ledger to reach the log end",
            || {
                let ends = ends.clone();
                let env = &env;
                async move { ledger(env, PARTITIONS).await == ends }
            },
        )
        .await;
        assert_reconcile_exact(&env, PARTITIONS, rep);
        let metrics = common::scrape(env.http_port);
        let rejoins = common::metric_sum(&metrics, "orderstream_consumer_rejoins_total");
        println!(
            "FIGURES liveness sigkill-restart #{rep}: killed at {at_kill} applied, resumed after \
             {:.1} s, drained {:.1} s later, {rejoins} rejoin(s)",
            resumed.as_secs_f64(),
            drained.as_secs_f64()
        );
        figures.push(resumed.as_secs_f64());
    }
    assert_eq!(
        run.terminate(Duration::from_secs(60)),
        Some(0),
        "clean stop"
    );
    common::assert_stores_exact(&env, PARTITIONS, REPETITIONS * 20_000).await;
    figures.sort_by(f64::total_cmp);
    println!("FIGURES liveness sigkill-restart: resume times (s, sorted) {figures:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_one_sigkilled_the_survivor_takes_every_partition() {
    let _heavy = common::heavy();
    const PARTITIONS: i32 = 4;
    let env = env_with_default_timeouts();
    env.migrate(PARTITIONS);
    let port_b = common::free_port();
    let listen_b = format!("127.0.0.1:{port_b}");
    let args = ["run", "--set", "pipeline.max_orders=500"];
    let survivor = env.spawn(PARTITIONS, &args);
    let survivor_pid = format!("-{}-", survivor.child.id());
    let second = |env: &Env| -> Proc {
        env.spawn_with(
            PARTITIONS,
            &args,
            &[("ORDERSTREAM__HTTP__LISTEN", &listen_b)],
        )
    };
    let mut b = second(&env);
    let mut figures = Vec::new();
    let mut produced = 0;
    for rep in 1..=REPETITIONS {
        // The second instance holds partitions before the orders come: the survivor alone
        // drains 20,000 orders within the few seconds the other takes to start and join, and
        // would leave it nothing to consume.
        let b_pid = format!("-{}-", b.child.id());
        within(
            Duration::from_secs(120),
            "the second instance to claim a partition",
            || {
                let (env, b_pid) = (&env, b_pid.clone());
                async move {
                    ledger_owners(env, PARTITIONS)
                        .await
                        .is_ok_and(|owners| owners.values().any(|(_, o)| o.contains(&b_pid)))
                }
            },
        )
        .await;
        env.produce(PARTITIONS, 20_000);
        produced += 20_000;
        // Both members consume before one of them dies.
        within(
            Duration::from_secs(120),
            "the second instance to consume",
            || async {
                common::http_get(port_b, "/metrics").is_some_and(|(_, m)| {
                    common::metric_sum(&m, "orderstream_consumer_records_total") > 0.0
                })
            },
        )
        .await;
        let fenced_before = common::metric_sum(
            &common::scrape(env.http_port),
            "orderstream_mysql_fenced_batches_total",
        );
        b.kill();
        // Records for every partition after the kill: the dead member's too.
        env.produce(PARTITIONS, 5_000);
        produced += 5_000;
        let ends = common::log_ends(&env.broker.addr(), &env.names.topic);
        let recovered = within(
            common::RESUME_WITHIN,
            "the survivor to drain every partition",
            || {
                let ends = ends.clone();
                let env = &env;
                async move { ledger(env, PARTITIONS).await == ends }
            },
        )
        .await;
        // Every partition was last claimed by the survivor.
        let owners = ledger_owners(&env, PARTITIONS).await.unwrap();
        assert_eq!(owners.len(), PARTITIONS as usize);
        for (partition, (_, owner)) in &owners {
            assert!(
                owner.contains(&survivor_pid),
                "repetition {rep}: partition {partition} last claimed by {owner}, not the survivor"
            );
        }
        let metrics = common::scrape(env.http_port);
        let fenced =
            common::metric_sum(&metrics, "orderstream_mysql_fenced_batches_total") - fenced_before;
        // A partition lost in a rebalance fences at most the batches then in flight (16).
        assert!(
            fenced <= 16.0,
            "repetition {rep}: {fenced} batches fenced: a partition stayed fenced"
        );
        assert_reconcile_exact(&env, PARTITIONS, rep);
        println!(
            "FIGURES liveness two-instances #{rep}: survivor drained every partition {:.1} s after \
             the kill; {fenced} fenced batch(es); survivor's rejoins so far {}; released {}",
            recovered.as_secs_f64(),
            common::metric_sum(&metrics, "orderstream_consumer_rejoins_total"),
            common::metric_sum(&metrics, "orderstream_consumer_released_partitions_total"),
        );
        figures.push(recovered.as_secs_f64());
        b = second(&env);
    }
    b.kill();
    let mut survivor = survivor;
    assert_eq!(
        survivor.terminate(Duration::from_secs(60)),
        Some(0),
        "clean stop"
    );
    common::assert_stores_exact(&env, PARTITIONS, produced).await;
    figures.sort_by(f64::total_cmp);
    println!("FIGURES liveness two-instances: recovery times (s, sorted) {figures:?}");
}

/// A record above tansu 0.6's delivery limit (about 5 MiB): acknowledged, never delivered.
const UNDELIVERABLE_BYTES: usize = 6 * 1024 * 1024;

/// Sends an undeliverable record to `partition`; returns its offset.
async fn send_undeliverable(env: &Env, partition: i32) -> i64 {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env.broker.addr())
        .set("message.max.bytes", "10000000")
        .create()
        .unwrap();
    let payload = vec![b'x'; UNDELIVERABLE_BYTES];
    let delivery = producer
        .send(
            FutureRecord::<(), _>::to(&env.names.topic)
                .partition(partition)
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("the broker refused the large record: {e}"));
    delivery.offset
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_that_cannot_advance_is_reported_everywhere() {
    let _heavy = common::heavy();
    const PARTITIONS: i32 = 3;
    const BLOCKED: i32 = 1;
    let mut env = Env::start();
    let prometheus = Prometheus::start(env.root.path(), env.http_port);
    let rules: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/prometheus/alerts.yml"
        ))
        .unwrap(),
    )
    .unwrap();
    let alert = rules["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| r["alert"].as_str() == Some("OrderstreamPartitionStuck"))
        .expect("the alert OrderstreamPartitionStuck");
    let expr = alert["expr"].as_str().unwrap();
    assert!(expr.contains(" > 120 "), "{expr}");
    // The alert's own expression, with its 2-minute threshold at the test's stuck_after.
    let expr = expr.replace(" > 120 ", &format!(" > {} ", common::STUCK_AFTER_MS / 1000));
    for rep in 1..=REPETITIONS {
        env.names = Names::fresh();
        env.migrate(PARTITIONS);
        env.produce(PARTITIONS, 2_000);
        let blocked_at = send_undeliverable(&env, BLOCKED).await;
        env.produce(PARTITIONS, 2_000);
        let log = env.root.path().join(format!("run-stuck-{rep}.log"));
        let mut run = env.spawn_logged(PARTITIONS, &["run"], &log, &[]);
        let started = Instant::now();

        // Every other partition reaches its log end; the blocked one stops at the record.
        let ends = common::log_ends(&env.broker.addr(), &env.names.topic);
        within(
            Duration::from_secs(120),
            "every partition but the blocked one drained",
            || {
                let ends = ends.clone();
                let env = &env;
                async move {
                    let l = ledger(env, PARTITIONS).await;
                    ends.iter().all(|(p, end)| {
                        let want = if *p == BLOCKED { blocked_at } else { *end };
                        l.get(p) == Some(&want)
                    })
                }
            },
        )
        .await;

        // /readyz names the partition and the offset.
        let reason = format!("partition {BLOCKED} is stuck at offset {blocked_at}");
        within(
            Duration::from_secs(90),
            "/readyz to report the stuck partition",
            || async {
                common::http_get(env.http_port, "/readyz")
                    .is_some_and(|(status, body)| status == 503 && body.contains(&reason))
            },
        )
        .await;
        let noticed = started.elapsed();
        // The metric, for this partition only.
        let metrics = common::scrape(env.http_port);
        for p in 0..PARTITIONS {
            let line = format!("orderstream_partition_stuck{{partition=\"{p}\"}} ");
            let value = if p == BLOCKED { "1" } else { "0" };
            assert!(
                metrics.contains(&format!("{line}{value}")),
                "repetition {rep}: partition {p} should be stuck={value}:\n{metrics}"
            );
        }
        assert_eq!(
            common::metric_sum(&metrics, "orderstream_watchdog_stuck_partitions_total"),
            1.0
        );
        // One WARN line naming partition, ledger offset, log end and owner.
        let text = std::fs::read_to_string(&log).unwrap();
        let warnings: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("partition stuck"))
            .collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        for field in [
            format!("partition={BLOCKED}"),
            format!("ledger_offset={blocked_at}"),
            format!("log_end={}", ends[&BLOCKED]),
            "owner=".to_string(),
        ] {
            assert!(warnings[0].contains(&field), "{field} in {}", warnings[0]);
        }
        // The alert's expression, evaluated by Prometheus on what it scraped.
        let series = within(
            Duration::from_secs(30),
            "the alert expression to hold",
            || async { prometheus.query(&expr).is_ok_and(|s| !s.is_empty()) },
        )
        .await;
        let firing = prometheus.query(&expr).unwrap();
        let partitions: Vec<&str> = firing
            .iter()
            .map(|s| s["metric"]["partition"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(partitions, vec![BLOCKED.to_string().as_str()]);
        // reconcile names the unreadable records and gives a verdict within its read time.
        let reconcile_started = Instant::now();
        let (code, report) = env.run_to_end(
            PARTITIONS,
            &["reconcile", "--read-timeout-secs", "15"],
            Duration::from_secs(120),
        );
        let reconcile_took = reconcile_started.elapsed();
        assert_eq!(code, Some(5), "{report}");
        assert!(
            report.contains(&format!(
                "unreadable: {} partition {BLOCKED} from offset {blocked_at} to the log end {}",
                env.names.topic, ends[&BLOCKED]
            )),
            "{report}"
        );
        assert!(report.contains("verdict: INCOMPLETE"), "{report}");
        // What could be read is exact: the blocked record and those behind it wait, unstored.
        for clean in [
            "missing orders: 0",
            "mismatched orders: 0",
            "unexpected cassandra rows: 0",
            "missing dead letters: 0",
            "differing aggregate keys: 0",
        ] {
            assert!(
                report.contains(clean),
                "repetition {rep}: {clean}\n{report}"
            );
        }
        assert_eq!(
            run.terminate(Duration::from_secs(60)),
            Some(0),
            "clean stop"
        );
        println!(
            "FIGURES liveness undeliverable #{rep}: /readyz said stuck {:.1} s after start \
             (stuck_after {} s), alert expression held {:.1} s later, reconcile verdict in {:.1} s",
            noticed.as_secs_f64(),
            common::STUCK_AFTER_MS / 1000,
            series.as_secs_f64(),
            reconcile_took.as_secs_f64()
        );
    }
}
