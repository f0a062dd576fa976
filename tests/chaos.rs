//! The chaos suite: processes killed, frozen and restarted on loopback, real servers throughout.
//!
//! Every scenario ends with the same checks (`Chaos::finish`): the ledger reaches the log end;
//! `orderstream reconcile` finds every valid order in Cassandra once with its fields and the
//! aggregates equal to the sums recomputed from the topic; the dead letters are exactly the
//! invalid records (by source partition and offset); and the pipeline's peak RSS stayed within
//! the budget.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::common::fault_proxy::FaultProxy;
use crate::common::{self, Env, Proc};

/// The pipeline's memory budget for these runs.
const RSS_BUDGET: u64 = 256 * 1024 * 1024;

struct Chaos {
    env: Env,
    partitions: i32,
    started: Instant,
    /// Peak RSS (VmHWM) of every pipeline process, sampled before it ends.
    peak_rss: u64,
}

impl Chaos {
    /// Fresh servers and names, migrated; `backlog` valid orders with one of each kind of
    /// invalid record after every third of them.
    async fn start(partitions: i32, backlog: u64) -> Chaos {
        Self::start_on(Env::start(), partitions, backlog).await
    }

    /// `start` with servers chosen by the caller.
    async fn start_on(env: Env, partitions: i32, backlog: u64) -> Chaos {
        env.migrate(partitions);
        let chaos = Chaos {
            env,
            partitions,
            started: Instant::now(),
            peak_rss: 0,
        };
        for _ in 0..3 {
            chaos.env.produce(partitions, backlog / 3);
            chaos.send_invalid().await;
        }
        chaos
    }

    async fn send_invalid(&self) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", self.env.broker.addr())
            .create()
            .unwrap();
        for (i, (payload, _)) in common::invalid_payloads().iter().enumerate() {
            producer
                .send(
                    FutureRecord::to(&self.env.names.topic)
                        .key(&format!("bad-{i}-{}", rand::random::<u32>()))
                        .payload(payload),
                    Duration::from_secs(30),
                )
                .await
                .unwrap();
        }
    }

    /// `orderstream run` with small batches (many transactions, many chances to be hit).
    fn run(&self) -> Proc {
        self.env.spawn(
            self.partitions,
            &["run", "--set", "pipeline.max_orders=500"],
        )
    }

    /// `run` with extra environment variables.
    fn run_with(&self, extra: &[(&str, &str)]) -> Proc {
        self.env.spawn_with(
            self.partitions,
            &["run", "--set", "pipeline.max_orders=500"],
            extra,
        )
    }

    /// A fault proxy in front of each store: (Cassandra's, MySQL's).
    async fn store_proxies(&self) -> (FaultProxy, FaultProxy) {
        (
            FaultProxy::start(self.env.cql.port).await,
            FaultProxy::start(self.env.mariadb.port).await,
        )
    }

    /// `run` reaching the stores through the proxies, with extra environment variables.
    fn run_through(&self, cql: &FaultProxy, sql: &FaultProxy, extra: &[(&str, &str)]) -> Proc {
        let contact = format!("[\"127.0.0.1:{}\"]", cql.port);
        let sql_port = sql.port.to_string();
        let mut vars = vec![
            ("ORDERSTREAM__CASSANDRA__CONTACT_POINTS", contact.as_str()),
            ("ORDERSTREAM__MYSQL__PORT", sql_port.as_str()),
        ];
        vars.extend_from_slice(extra);
        self.run_with(&vars)
    }

    /// A second instance in the same group, on its own operations port.
    fn run_second(&self, port: u16) -> Proc {
        let listen = format!("127.0.0.1:{port}");
        self.run_with(&[("ORDERSTREAM__HTTP__LISTEN", &listen)])
    }

    async fn applied_async(&self) -> i64 {
        let pool = self.env.mysql(self.partitions).await;
        common::applied(&pool, &self.env.names.topic).await
    }

    /// Outages are waited out inside the actors: they must count no restart.
    fn assert_no_restarts(&self, fault: &str) {
        let restarts = common::metric_sum(
            &common::scrape(self.env.http_port),
            "orderstream_supervisor_restarts_total",
        );
        assert_eq!(restarts, 0.0, "{fault} is an outage, not a restart");
    }

    /// Asserts that the ledger moves past `from` within the suite's bound (see `common::resumes`).
    async fn resumes(&self, from: &BTreeMap<i32, i64>, after: &str) -> Duration {
        common::resumes(&self.env, self.partitions, from, after).await
    }

    async fn ledger(&self) -> BTreeMap<i32, i64> {
        common::ledger(&self.env, self.partitions).await
    }

    async fn wait_applied(&self, at_least: i64) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while self.applied_async().await < at_least {
            assert!(Instant::now() < deadline, "stuck below {at_least} applied");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn total(&self) -> i64 {
        common::log_ends(&self.env.broker.addr(), &self.env.names.topic)
            .values()
            .sum()
    }

    fn sample_rss(&mut self, proc: &Proc) {
        self.peak_rss = self.peak_rss.max(common::peak_rss(proc));
    }

    /// Waits for the ledger to reach the log end, stops `run` and checks everything.
    async fn finish(mut self, mut run: Proc, scenario: &str) {
        let pool = self.env.mysql(self.partitions).await;
        let ends = common::log_ends(&self.env.broker.addr(), &self.env.names.topic);
        common::ledger_reaches(&pool, &self.env.names.topic, &ends).await;
        self.sample_rss(&run);
        assert_eq!(
            run.terminate(Duration::from_secs(60)),
            Some(0),
            "clean stop"
        );

        let (code, report) = common::reconcile(&self.env, self.partitions);
        assert_eq!(code, Some(0), "reconcile after {scenario}: {report}");

        // Dead letters: exactly the invalid records, by source coordinates.
        let records = common::read_topic(&self.env.broker.addr(), &self.env.names.topic);
        let invalid: BTreeSet<(i32, i64)> = records
            .iter()
            .filter(|r| orderstream::model::decode(&r.payload, 64 * 1024).is_err())
            .map(|r| (r.partition, r.offset))
            .collect();
        let dead = common::read_topic(&self.env.broker.addr(), &self.env.names.dlq);
        let letters: BTreeSet<(i32, i64)> = dead
            .iter()
            .map(|d| {
                (
                    d.headers["source_partition"].parse().unwrap(),
                    d.headers["source_offset"].parse().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            letters, invalid,
            "dead letters are exactly the invalid records"
        );
        assert!(
            self.peak_rss > 0 && self.peak_rss < RSS_BUDGET,
            "peak RSS {}",
            self.peak_rss
        );
        println!(
            "FIGURES {scenario}: {} records ({} invalid, {} dead letters incl. {} republished), \
             reconcile exact, peak RSS {:.1} MiB, {:.1} s",
            records.len(),
            invalid.len(),
            dead.len(),
            dead.len() - letters.len(),
            self.peak_rss as f64 / (1024.0 * 1024.0),
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// The instance reports not ready at some point within `within`.
async fn becomes_unready(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if common::http_status(port, "/readyz") == Some(503) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_five_random_moments_of_a_50k_run() {
    let _heavy = common::heavy();
    let mut chaos = Chaos::start(4, 50_000).await;
    let total = chaos.total();
    let mut rng = rand::rng();
    let mut moments: Vec<i64> = (0..5)
        .map(|_| rng.random_range(total / 10..total * 9 / 10))
        .collect();
    moments.sort();
    let mut run = chaos.run();
    let mut killed_at = Vec::new();
    let mut resumed_after = Vec::new();
    for moment in moments {
        chaos.wait_applied(moment).await;
        chaos.sample_rss(&run);
        run.kill();
        let at_kill = chaos.ledger().await;
        killed_at.push(at_kill.values().sum::<i64>());
        // Started again at once, as a container's restart policy does.
        run = chaos.run();
        let took = chaos
            .resumes(&at_kill, "a SIGKILL and an immediate restart")
            .await;
        resumed_after.push(format!("{:.1}", took.as_secs_f64()));
    }
    println!(
        "FIGURES sigkill: killed at {killed_at:?} of {total} applied; resumed after {resumed_after:?} s"
    );
    chaos.finish(run, "sigkill x5").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crashes_in_the_narrow_windows() {
    let _heavy = common::heavy();
    let mut chaos = Chaos::start(3, 20_000).await;
    // Each failpoint ends the process abruptly (exit 137, no drain) at its N-th hit.
    for failpoint in [
        // After the Cassandra write, before the MySQL commit.
        "before_mysql_commit=exit@7",
        // After the MySQL commit, before the Kafka commit.
        "after_mysql_commit=exit@5",
        // In the assignment: the claim committed, the seek not yet done.
        "after_claim=exit@2",
    ] {
        let mut run = chaos.env.spawn_with(
            chaos.partitions,
            &["run", "--set", "pipeline.max_orders=500"],
            &[("ORDERSTREAM_FAILPOINTS", failpoint)],
        );
        let code = run.wait(Duration::from_secs(120));
        chaos.sample_rss(&run);
        assert_eq!(code, Some(137), "{failpoint} was reached");
        println!(
            "FIGURES window {failpoint}: crashed with {} applied",
            chaos.applied_async().await
        );
    }
    let at_crash = chaos.ledger().await;
    let run = chaos.run();
    chaos
        .resumes(&at_crash, "the last crash and an immediate restart")
        .await;
    chaos.finish(run, "narrow windows").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_killed_mid_run_and_restarted_10s_later() {
    let _heavy = common::heavy();
    let mut chaos = Chaos::start(3, 30_000).await;
    let run = chaos.run();
    chaos.wait_applied(5_000).await;
    chaos.env.mariadb.proc.as_mut().unwrap().kill();
    assert!(
        becomes_unready(chaos.env.http_port, Duration::from_secs(8)).await,
        "readiness drops while MySQL is down"
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    chaos.env.mariadb.restart();
    let at_restart = chaos.ledger().await;
    chaos.resumes(&at_restart, "MariaDB started again").await;
    chaos.wait_applied(chaos.total()).await;
    chaos.assert_no_restarts("MariaDB down");
    chaos.finish(run, "mariadb sigkill + 10 s").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cql_frozen_30s_then_resumed_and_restarted() {
    let _heavy = common::heavy();
    let mut chaos = Chaos::start(3, 30_000).await;
    chaos.env.driver_errors_expected = true;
    let run = chaos.run();
    chaos.wait_applied(5_000).await;
    let cql = chaos.env.cql.proc.as_ref().unwrap();
    cql.signal("STOP");
    let frozen_at = chaos.applied_async().await;
    assert!(
        becomes_unready(chaos.env.http_port, Duration::from_secs(10)).await,
        "readiness drops while Cassandra is frozen"
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    let ledger_frozen = chaos.ledger().await;
    let still: i64 = ledger_frozen.values().sum();
    chaos.env.cql.proc.as_ref().unwrap().signal("CONT");
    chaos.resumes(&ledger_frozen, "the CQL server thawed").await;
    // At most the batches already past Cassandra could commit while it was frozen.
    let in_flight = chaos.env.config(3).pipeline.max_in_flight_batches as i64;
    assert!(
        still - frozen_at <= in_flight * 500,
        "{frozen_at} → {still} while frozen"
    );
    chaos.wait_applied(15_000).await;

    // A restart: SIGTERM (the emulator saves its state), then start it again.
    let mut old = chaos.env.cql.proc.take().unwrap();
    assert!(old.terminate(Duration::from_secs(30)).is_some());
    chaos.env.cql.restart();
    let at_restart = chaos.ledger().await;
    chaos
        .resumes(&at_restart, "the CQL server started again")
        .await;
    chaos.wait_applied(chaos.total()).await;
    chaos.assert_no_restarts("the CQL server frozen or restarted");
    chaos.finish(run, "cql frozen 30 s + restarted").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_killed_and_restarted_10s_later() {
    let _heavy = common::heavy();
    let mut chaos = Chaos::start(3, 30_000).await;
    let run = chaos.run();
    chaos.wait_applied(5_000).await;
    chaos.env.broker.proc.as_mut().unwrap().kill();
    let killed = Instant::now();
    // While the broker is gone the instance says so: not ready, the broker down.
    let port = chaos.env.http_port;
    let kafka_up = "orderstream_dependency_up{dependency=\"kafka\"}";
    common::eventually(
        Duration::from_secs(9),
        "the broker reported down",
        || async move {
            let unready = matches!(common::http_get(port, "/readyz"),
            Some((status, body)) if status != 200 && body.contains("broker"));
            unready && common::metric_sum(&common::scrape(port), kafka_up) == 0.0
        },
    )
    .await;
    println!(
        "FIGURES broker killed: reported down after {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(killed.elapsed())).await;
    chaos.env.broker.restart();
    let at_restart = chaos.ledger().await;
    chaos.resumes(&at_restart, "the broker started again").await;
    common::eventually(
        Duration::from_secs(30),
        "the broker reported up",
        || async move { common::metric_sum(&common::scrape(port), kafka_up) == 1.0 },
    )
    .await;
    chaos.wait_applied(chaos.total()).await;
    chaos.finish(run, "broker sigkill + 10 s").await;
}

/// The broker frozen longer than the session timeout (10 s against 6 s): nothing answers, the
/// member's session lapses, the consumer rejoins and claims its partitions again.
///
/// This scenario runs against librdkafka's mock cluster (in this test process), not tansu:
/// after a freeze, tansu 0.6 keeps the old member as a ghost that never expires and assigns it
/// partitions nobody consumes (seen with `kafka.debug=cgrp`: "range assignment for 2
/// member(s)" with one consumer running), where a real broker expires it after the session
/// timeout, as the mock cluster does. The freeze is the mock's round-trip delay: every answer
/// held back for 10 s. The other servers are real, as everywhere.
#[tokio::test(flavor = "multi_thread")]
async fn broker_frozen_past_the_session_timeout() {
    let _heavy = common::heavy();
    let mock = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    let env = Env::with_external_kafka(&mock.bootstrap_servers());
    // The mock cluster has no CreateTopics; migrate finds the topics made here.
    mock.create_topic(&env.names.topic, 3, 1).unwrap();
    mock.create_topic(&env.names.dlq, 3, 1).unwrap();
    let chaos = Chaos::start_on(env, 3, 30_000).await;
    let run = chaos.run();
    chaos.wait_applied(5_000).await;
    let frozen_at = chaos.applied_async().await;
    mock.broker_round_trip_time(1, Duration::from_secs(10))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    mock.broker_round_trip_time(1, Duration::ZERO).unwrap();
    let thawed = Instant::now();
    let at_thaw = chaos.ledger().await;
    chaos.resumes(&at_thaw, "the broker thawed").await;
    chaos.wait_applied(chaos.total()).await;
    let log = std::fs::read_dir(chaos.env.root.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("run-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    let claims = log.matches("partition claimed").count();
    assert!(
        claims > 3,
        "the partitions were claimed again after the freeze ({claims} claims)"
    );
    println!(
        "FIGURES broker frozen: {frozen_at} applied at the freeze; {claims} claims in all; \
         the rest drained {:.1} s after the thaw",
        thawed.elapsed().as_secs_f64()
    );
    chaos.finish(run, "broker frozen 10 s (mock cluster)").await;
}

/// Two instances in one group. `b` is SIGKILLed and started again at once, as a restart policy
/// does: every partition moves again within the bound. Then `a` freezes past the session
/// timeout, so its partitions move to `b`; when `a` resumes, whatever it still had in flight is
/// fenced.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_one_killed_and_restarted_then_one_frozen_while_its_partitions_move() {
    let _heavy = common::heavy();
    let mut chaos = Chaos::start(4, 40_000).await;
    let second_port = common::free_port();
    let mut a = chaos.run();
    let mut b = chaos.run_second(second_port);
    chaos.wait_applied(8_000).await;
    chaos.sample_rss(&b);
    b.kill();
    let at_kill = chaos.ledger().await;
    let b = chaos.run_second(second_port);
    chaos
        .resumes(
            &at_kill,
            "one of two instances SIGKILLed and restarted at once",
        )
        .await;

    chaos.wait_applied(20_000).await;
    a.signal("STOP");
    tokio::time::sleep(Duration::from_secs(12)).await;
    a.signal("CONT");
    let at_thaw = chaos.ledger().await;
    chaos.resumes(&at_thaw, "the frozen instance thawed").await;
    chaos.wait_applied(chaos.total()).await;
    chaos.sample_rss(&a);
    assert_eq!(a.terminate(Duration::from_secs(60)), Some(0));
    chaos
        .finish(b, "two instances: kill and restart, freeze")
        .await;
}

/// Backpressure: the CQL server frozen for 60 s under a producer at 5,000 orders/s. Partitions
/// pause while polling goes on, the pipeline's memory stays bounded, and the lag drains after.
///
/// With a 30 s session timeout, not the suite's 6 s: draining the 300,000 orders after the
/// thaw loads tansu enough that it answered heartbeats more than 6 s late (twice, in CI and
/// here), and tansu 0.6 then never re-forms the group (docs/OPERATIONS.md, *Tests*). That is the broker's
/// liveness, not this test's subject; the broker-freeze scenario covers the member's side.
#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_bounded_while_cql_is_frozen_under_5000_per_s() {
    let _heavy = common::heavy();
    let mut chaos = Chaos::start(3, 3_000).await;
    chaos.env.driver_errors_expected = true;
    chaos.env.extra_vars.extend([
        ("KAFKA__SESSION_TIMEOUT_MS".into(), "30000".into()),
        ("KAFKA__MAX_POLL_INTERVAL_MS".into(), "30000".into()),
        // The shortest the watchdog allows with these timeouts.
        ("PIPELINE__STUCK_AFTER_MS".into(), "90000".into()),
    ]);
    let run = chaos.run();
    chaos.wait_applied(1_000).await;
    let mut producer = chaos.env.spawn(
        chaos.partitions,
        &["produce", "--count", "300000", "--rate", "5000"],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    chaos.env.cql.proc.as_ref().unwrap().signal("STOP");
    let frozen = Instant::now();
    let mut paused_seen = 0.0f64;
    while frozen.elapsed() < Duration::from_secs(60) {
        let metrics = common::scrape(chaos.env.http_port);
        paused_seen = paused_seen.max(common::metric_sum(
            &metrics,
            "orderstream_consumer_paused_partitions",
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    chaos.sample_rss(&run);
    let during = chaos.peak_rss;
    chaos.env.cql.proc.as_ref().unwrap().signal("CONT");
    let resumed = Instant::now();
    let at_thaw = chaos.ledger().await;
    chaos.resumes(&at_thaw, "the CQL server thawed").await;
    assert!(
        paused_seen > 0.0,
        "partitions paused while Cassandra was frozen"
    );
    assert_eq!(producer.wait(Duration::from_secs(180)), Some(0));
    chaos.wait_applied(chaos.total()).await;
    println!(
        "FIGURES backpressure: peak RSS {:.1} MiB over 60 s frozen at 5,000/s; {} records drained {:.1} s after resume",
        during as f64 / (1024.0 * 1024.0),
        chaos.total(),
        resumed.elapsed().as_secs_f64()
    );
    chaos.finish(run, "cql frozen 60 s at 5,000/s").await;
}

/// A store's host gone without a word, under a steady 2,000 orders/s: every open connection to
/// it stops answering and no reset ever comes (the fault proxy's `silence`), while new
/// connections work, as after a failover to the same address. Each call is given up after the
/// store's timeout (`mysql.timeout_ms`, `cassandra.request_timeout_ms`: 3 s here) and retried on
/// another connection: every partition moves again within the bound, nothing restarts, and the
/// stores are exact. Cassandra, then MySQL.
#[tokio::test(flavor = "multi_thread")]
async fn connections_gone_silent_are_given_up_and_replaced() {
    let _heavy = common::heavy();
    let mut chaos = Chaos::start(3, 3_000).await;
    // The driver complains, rightly, about the requests that time out.
    chaos.env.driver_errors_expected = true;
    let (cql, sql) = chaos.store_proxies().await;
    let run = chaos.run_through(
        &cql,
        &sql,
        &[
            ("ORDERSTREAM__CASSANDRA__REQUEST_TIMEOUT_MS", "3000"),
            ("ORDERSTREAM__MYSQL__TIMEOUT_MS", "3000"),
        ],
    );
    chaos.wait_applied(3_000).await;
    let mut producer = chaos.env.spawn(
        chaos.partitions,
        &["produce", "--count", "40000", "--rate", "2000"],
    );
    for (store, proxy) in [("cassandra", &cql), ("mysql", &sql)] {
        let before = chaos.applied_async().await;
        chaos.wait_applied(before + 4_000).await;
        let silenced = proxy.silence();
        assert!(silenced > 0, "the pipeline had connections to {store} open");
        let at_silence = chaos.ledger().await;
        let took = chaos
            .resumes(
                &at_silence,
                &format!("every {store} connection went silent"),
            )
            .await;
        println!(
            "FIGURES {store} silent: {silenced} open connections silenced; every partition \
             moved again within {:.1} s",
            took.as_secs_f64()
        );
    }
    assert_eq!(producer.wait(Duration::from_secs(120)), Some(0));
    chaos.wait_applied(chaos.total()).await;
    chaos.assert_no_restarts("a silent connection");
    chaos.finish(run, "store connections silenced").await;
    drop((cql, sql));
}

/// Latency and dropped connections between the pipeline and each store, through the fault
/// proxy (tests/common/fault_proxy.rs), under a steady 1,000 orders/s. For each store in turn:
/// 50 ms added each way, then every connection reset three times, then 5 s in which every new
/// connection is reset too. These are outages, so no restart may be counted.
#[tokio::test(flavor = "multi_thread")]
async fn latency_and_dropped_connections_to_each_store() {
    let _heavy = common::heavy();
    let mut chaos = Chaos::start(3, 3_000).await;
    chaos.env.driver_errors_expected = true;
    let (cql, sql) = chaos.store_proxies().await;
    let run = chaos.run_through(&cql, &sql, &[]);
    chaos.wait_applied(3_000).await;
    let mut producer = chaos.env.spawn(
        chaos.partitions,
        &["produce", "--count", "40000", "--rate", "1000"],
    );

    for (store, proxy) in [("cassandra", &cql), ("mysql", &sql)] {
        proxy.set_latency(Duration::from_millis(50));
        let slow = Instant::now();
        let before = chaos.applied_async().await;
        chaos.wait_applied(before + 2_000).await;
        let slow_rate = 2_000.0 / slow.elapsed().as_secs_f64();

        let mut cut = 0;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cut += proxy.cut();
        }
        proxy.refuse(true);
        cut += proxy.cut();
        tokio::time::sleep(Duration::from_secs(5)).await;
        proxy.refuse(false);
        proxy.set_latency(Duration::ZERO);
        let healed = Instant::now();
        // Every partition moves again within the bound, not only the total.
        let at_heal = common::ledger(&chaos.env, chaos.partitions).await;
        common::resumes(
            &chaos.env,
            chaos.partitions,
            &at_heal,
            &format!("the {store} proxy healed"),
        )
        .await;
        let after = chaos.applied_async().await;
        chaos.wait_applied(after + 2_000).await;
        println!(
            "FIGURES proxy {store}: {slow_rate:.0} orders/s applied with 50 ms each way; \
             {cut} open connections reset, {:?} (accepted, reset) in all; \
             2,000 more applied {:.1} s after healing",
            proxy.counts(),
            healed.elapsed().as_secs_f64()
        );
    }
    assert_eq!(producer.wait(Duration::from_secs(120)), Some(0));
    chaos.wait_applied(chaos.total()).await;
    chaos.assert_no_restarts("latency or a dropped connection");
    chaos.finish(run, "fault proxy: latency + resets").await;
}
