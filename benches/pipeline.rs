//! The end-to-end benchmark: every measurement under the same conditions (the same servers,
//! started here on this machine, in one run), printed as one table.
//!
//!   cargo bench --bench pipeline
//!
//! Per broker (the tansu broker, then librdkafka's in-process mock cluster):
//! - a backlog of ORDERSTREAM_BENCH_ORDERS orders (default 1,000,000) published by
//!   `orderstream produce`;
//! - raw limits: a bare rdkafka consumer reading the backlog; the scylla driver inserting the
//!   same rows (prepared, idempotent, token-aware, like the pipeline): its best concurrency
//!   found with bursts of 50,000, then the whole backlog at that concurrency, timed like the
//!   pipeline's drain; MySQL ledger transactions per second × the configured batch size;
//! - the baseline: a bare sequential loop doing the pipeline's job with the same clients
//!   (consume a batch, write its rows to Cassandra one by one, one MySQL transaction of
//!   aggregates plus offsets, commit to Kafka) and nothing else; and, for reference, the same
//!   loop with the pipeline's insert concurrency (what overlap inside one batch gives alone);
//! - the pipeline (`orderstream run`, release build) draining the backlog: sustained throughput
//!   (orders stored in both stores with the ledger, from 5% to 100% of the backlog) and peak RSS;
//! - the bare consumer, the whole-backlog inserts and the drain run three rounds in turn, and the
//!   table gives their medians (each round's figure beside it); every measurement that writes
//!   to CQL starts on an empty emulator (it keeps all rows in memory and slows as it fills);
//! - the latency–throughput curve (`pipeline/curve.rs`): at steady rates of 100, 1,000, 5,000
//!   and 20,000 orders/s and up a ladder to the highest rate the pipeline sustains, p50/p99/p99.9
//!   of the pipeline (order created → its offset applied in the MySQL ledger, exact per-order
//!   samples) and of the broker alone (created → read by a bare consumer), with the pipeline's
//!   own histogram beside them; drawn as an SVG (ORDERSTREAM_BENCH_CHART, default
//!   docs/latency-curve.svg);
//! - with ORDERSTREAM_BENCH_BEFORE_BIN=<another build of orderstream>, each round also drains
//!   with that binary, the two alternating, and the table compares their medians;
//! - ORDERSTREAM_BENCH_REDRAW=<a saved standard output of this benchmark> only draws the chart
//!   again from that run's curve tables.
//! - the CPU floor: each part of the job measured alone (the bare consumer with the broker, the
//!   driver with the emulator, the ledger with MariaDB) costs some CPU per order over every
//!   process involved; their sum is what the machine spends on an order whatever program does
//!   the job, and the cores ÷ that sum is the most the machine allows with every core busy. On
//!   two cores shared by the servers this can be below the smallest raw limit (each raw limit
//!   is measured with the machine to itself), and the table gives the pipeline's ratio to both.
//!
//! The CQL server is the kassandra emulator in every row (no Cassandra or ScyllaDB runs on these
//! machines): its figures are the emulator's, not a real cluster's. MySQL is a private MariaDB.
//! Set ORDERSTREAM_BENCH_BROKERS=tansu (or mock) to run one broker only, and
//! ORDERSTREAM_BENCH_RATES=100,5000 to measure only these points of the curve (no ladder), and
//! ORDERSTREAM_BENCH_GROUP_CONSUMER=1 to measure the pipeline's consumer settings alone beside them.
//!
//! Knobs for development (the table above uses none of them):
//! - ORDERSTREAM_BENCH_DRAINS_ONLY=N: publish the backlog, then only drain it N times with the
//!   pipeline, printing each rate (to compare changes quickly; the machine is noisy, so use
//!   N ≥ 3 and alternate the variants). Pipeline settings pass through the environment, e.g.
//!   ORDERSTREAM__CASSANDRA__CONCURRENCY=64.
//! - ORDERSTREAM_BENCH_PARTITIONS: the topic's partitions (6 on tansu, 64 on the mock cluster,
//!   which keeps 5 MiB per partition: the backlog is capped at 16,000 orders per partition).
//! - ORDERSTREAM_BENCH_LOGS=dir: keep the pipeline's log of each curve point there; with
//!   ORDERSTREAM_TEST_LOG=info,orderstream=debug it has each batch's timings ("batch applied":
//!   its oldest order's age on reaching MySQL, the time before MySQL and the transaction), and
//!   with sqlx=debug every statement's.

#[path = "../tests/common/mod.rs"]
#[allow(dead_code, clippy::all)]
mod common;
#[path = "pipeline/curve.rs"]
mod curve;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use orderstream::config::Config;
use orderstream::model::{decode, Batch, Content, Order, Record};
use orderstream::stores::CassandraStore;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use common::{Env, Names};

/// Partitions of the topic of the broker being measured (see `main`).
static PARTITIONS: AtomicI32 = AtomicI32::new(6);

fn partitions() -> i32 {
    PARTITIONS.load(Ordering::Relaxed)
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.replace('_', "").parse().ok()
}
const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Orders used by the raw MySQL measurement.
const SAMPLE: usize = 200_000;
/// Rounds of the sustained measurements (bare consumer, whole-backlog inserts, drain).
const ROUNDS: usize = 3;
/// Rows per concurrency in the raw CQL probe.
const CQL_PROBE: usize = 50_000;
/// Orders through the sequential baseline (one request at a time is slow).
const BASELINE_ORDERS: u64 = 50_000;
/// The largest backlog measured on the mock cluster (see `main`).
/// The mock cluster keeps at most 5 MiB per partition (rdkafka_mock.c) and drops the oldest
/// records beyond it: 16,000 orders (about 3.7 MiB) per partition leave room.
const MOCK_MAX_ORDERS_PER_PARTITION: u64 = 16_000;

#[derive(Default)]
struct Figures {
    orders: u64,
    partitions: i32,
    produced_per_s: f64,
    kafka_raw: f64,
    /// Each round's bare consumer; `kafka_raw` is their median.
    kafka_rounds: Vec<f64>,
    /// CPU per record of the bare consumer and the broker (µs), each round that only read.
    kafka_cpu_rounds: Vec<f64>,
    /// The best burst of CQL_PROBE inserts.
    cql_burst: f64,
    /// The whole backlog at the burst's best concurrency, each round; `cql_raw` is the median.
    cql_rounds: Vec<f64>,
    cql_raw: f64,
    cql_best_concurrency: usize,
    /// CPU per insert (driver + emulator) at the best concurrency, in µs.
    cql_raw_cpu_us: f64,
    mysql_txn_per_s: f64,
    /// CPU per order of the ledger transactions (this process and MariaDB), in µs.
    mysql_cpu_us: f64,
    batch_size: usize,
    baseline: f64,
    /// The baseline's loop with the pipeline's insert concurrency, over the whole backlog.
    loop_concurrent: f64,
    /// Its CPU per order over every process (this one, the servers), in µs.
    loop_cpu_us: f64,
    /// Each round's drain; `pipeline` is their median.
    drain_rounds: Vec<f64>,
    pipeline: f64,
    /// The highest of the rounds.
    peak_rss_mib: f64,
    /// CPU used during the median drain, in % of one core: (process, share).
    drain_cpu: Vec<(&'static str, f64)>,
    /// The latency–throughput curve.
    curve: Vec<curve::Point>,
    /// (drain rate, peak RSS MiB) of each round with ORDERSTREAM_BENCH_BEFORE_BIN.
    before_rounds: Vec<(f64, f64)>,
    /// Peak RSS of each of this build's drains, MiB.
    rss_rounds: Vec<f64>,
}

impl Figures {
    /// CPU per order of the job's parts, each measured alone at its own limit (the bare
    /// consumer and the broker, the driver and the emulator, the ledger and MariaDB), in µs:
    /// what the machine must spend on an order whatever program does the job.
    fn cpu_floor_us(&self) -> f64 {
        median(&self.kafka_cpu_rounds) + self.cql_raw_cpu_us + self.mysql_cpu_us
    }
    /// The rate the machine's cores allow at that floor, every core busy.
    fn cpu_ceiling(&self) -> f64 {
        cores() as f64 * 1e6 / self.cpu_floor_us()
    }
    fn mysql_raw(&self) -> f64 {
        self.mysql_txn_per_s * self.batch_size as f64
    }
    fn smallest_raw(&self) -> f64 {
        self.kafka_raw.min(self.cql_raw).min(self.mysql_raw())
    }
}

fn main() {
    if let Ok(table) = std::env::var("ORDERSTREAM_BENCH_REDRAW") {
        let text = std::fs::read_to_string(&table).unwrap();
        let curves = curve::from_table(&text);
        let curves: Vec<(&str, &[curve::Point])> = curves
            .iter()
            .map(|(n, p)| (n.as_str(), p.as_slice()))
            .collect();
        curve::draw(std::path::Path::new(&chart_path()), &curves).unwrap();
        return;
    }
    let orders = env_number("ORDERSTREAM_BENCH_ORDERS").unwrap_or(1_000_000);
    let which = std::env::var("ORDERSTREAM_BENCH_BROKERS").unwrap_or_else(|_| "tansu,mock".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut columns: Vec<(&str, Figures)> = Vec::new();
    for broker in which.split(',').map(str::trim) {
        let figures = match broker {
            "tansu" => {
                PARTITIONS.store(
                    env_number("ORDERSTREAM_BENCH_PARTITIONS").unwrap_or(6) as i32,
                    Ordering::Relaxed,
                );
                eprintln!("== tansu broker");
                runtime.block_on(measure(Env::start(), None, orders))
            }
            "mock" => {
                // The mock cluster keeps only the newest 5 MiB of a partition (a 1,000,000
                // backlog in 6 partitions lost its head: the bare consumer stalled at 162,392),
                // so it gets 64 partitions, which hold the whole backlog.
                PARTITIONS.store(
                    env_number("ORDERSTREAM_BENCH_PARTITIONS").unwrap_or(64) as i32,
                    Ordering::Relaxed,
                );
                let orders = orders.min(partitions() as u64 * MOCK_MAX_ORDERS_PER_PARTITION);
                eprintln!("== librdkafka mock cluster ({orders} orders)");
                let mock = MockCluster::new(1).expect("mock cluster");
                let env = Env::with_external_kafka(&mock.bootstrap_servers());
                runtime.block_on(measure(env, Some(&mock), orders))
            }
            other => panic!("unknown broker {other} (tansu, mock)"),
        };
        columns.push((
            if broker == "tansu" {
                "tansu 0.6 broker"
            } else {
                "librdkafka mock cluster"
            },
            figures,
        ));
    }
    if env_number("ORDERSTREAM_BENCH_DRAINS_ONLY").is_some() {
        return;
    }
    print_table(&columns);
}

/// ORDERSTREAM_BENCH_DRAINS_ONLY: `rounds` drains of the backlog with this build and, given
/// ORDERSTREAM_BENCH_BEFORE_BIN, as many with the build before, the order alternating between
/// rounds; each drain's figures, then the medians.
async fn drains(
    env: &mut Env,
    mock: Option<&MockCluster<'_, rdkafka::producer::DefaultProducerContext>>,
    orders: u64,
    rounds: u64,
) {
    let before = std::env::var_os("ORDERSTREAM_BENCH_BEFORE_BIN").map(std::path::PathBuf::from);
    let this = env.bin.clone();
    let mut figures: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for round in 0..rounds {
        let mut builds = vec![("this build", this.clone())];
        if let Some(b) = &before {
            builds.push(("the build before", b.clone()));
            if round % 2 == 1 {
                builds.reverse();
            }
        }
        for (name, bin) in builds {
            renew(env, mock, true);
            env.bin = bin;
            let (rate, rss, cpu) = pipeline_drain(env, orders).await;
            env.bin = this.clone();
            eprintln!(
                "round {}: {name}: {rate:.0}/s, peak RSS {rss:.1} MiB, cpu {cpu:?}",
                round + 1
            );
            let entry = figures.entry(name).or_default();
            entry.0.push(rate);
            entry.1.push(rss);
        }
    }
    for (name, (rates, rss)) in figures {
        eprintln!(
            "{name}: drain median {:.0}/s (rounds {}), peak RSS median {:.1} MiB",
            median(&rates),
            rates
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            median(&rss)
        );
    }
}

/// An empty CQL emulator (it keeps every row in memory, and its cost per insert grows with
/// its heap: three drains in a row into one emulator ran at 71k, 66k and 55k/s), a fresh
/// keyspace, database and group; the topic kept (`keep_topic`) or new. Migrated.
fn renew(
    env: &mut Env,
    mock: Option<&MockCluster<'_, rdkafka::producer::DefaultProducerContext>>,
    keep_topic: bool,
) {
    let old = env.names.clone();
    env.names = Names::fresh();
    if keep_topic {
        env.names.topic = old.topic;
        env.names.dlq = old.dlq;
    } else if let Some(mock) = mock {
        // The mock cluster has no CreateTopics: its topics are made here.
        mock.create_topic(&env.names.topic, partitions(), 1)
            .unwrap();
        mock.create_topic(&env.names.dlq, 3, 1).unwrap();
    }
    env.cql.restart_empty();
    env.migrate(partitions());
}

async fn measure(
    mut env: Env,
    mock: Option<&MockCluster<'_, rdkafka::producer::DefaultProducerContext>>,
    orders: u64,
) -> Figures {
    let mut f = Figures {
        orders,
        partitions: partitions(),
        ..Figures::default()
    };
    if partitions() > 16 {
        // The default prefetch (16 MiB, counted per partition) would not fit the memory budget.
        env.extra_vars
            .push(("KAFKA__QUEUED_MAX_MESSAGES_KBYTES".into(), "1024".into()));
    }
    renew(&mut env, mock, false);
    let cfg = env.config(partitions());
    f.batch_size = cfg.pipeline.max_orders;
    let drains_only = env_number("ORDERSTREAM_BENCH_DRAINS_ONLY").unwrap_or(0);

    // The backlog.
    let started = Instant::now();
    let (code, err) = env.run_to_end(
        partitions(),
        &[
            "produce",
            "--count",
            &orders.to_string(),
            "--rate",
            "10000000",
        ],
        Duration::from_secs(3600),
    );
    assert_eq!(code, Some(0), "produce: {err}");
    f.produced_per_s = orders as f64 / started.elapsed().as_secs_f64();
    eprintln!("backlog of {orders} published at {:.0}/s", f.produced_per_s);
    if env_number("ORDERSTREAM_BENCH_LATENCY_ONLY").is_some() {
        f.curve = curve::curve(&mut env, mock).await;
        return f;
    }
    // A development knob: only the pipeline's drain, N times (for comparing changes quickly),
    // alternating with the build before when one is given.
    if drains_only > 0 {
        drains(&mut env, mock, orders, drains_only).await;
        return f;
    }

    // Raw: a bare consumer reads the whole backlog and keeps every order.
    let (rate, rows, _) = read_backlog(&env, orders, true).await;
    let mut kafka_rounds = vec![rate];

    // Raw: the scylla driver over the same rows. A burst of CQL_PROBE rows at each concurrency
    // finds the best one; the raw limit is then the whole backlog at that concurrency (below).
    {
        let store = Arc::new(CassandraStore::connect(&cfg.cassandra).await.unwrap());
        let probe = &rows[..CQL_PROBE.min(rows.len())];
        for concurrency in [16, 64, 256, 512, 1024] {
            let started = Instant::now();
            insert_all(&store, probe, concurrency).await;
            let rate = probe.len() as f64 / started.elapsed().as_secs_f64();
            eprintln!("raw cql, burst at concurrency {concurrency}: {rate:.0}/s");
            if rate > f.cql_burst {
                f.cql_burst = rate;
                f.cql_best_concurrency = concurrency;
            }
        }
    }

    // The three sustained measurements, ROUNDS times in turn (the machine is noisy; the table
    // gives medians): the bare consumer, the driver inserting the whole backlog, the pipeline's
    // drain. Each writer starts on an empty emulator, in its own keyspace and database.
    let (mut cql_rounds, mut drain_rounds) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        if round > 0 {
            let (rate, _, cpu_us) = read_backlog(&env, orders, false).await;
            kafka_rounds.push(rate);
            f.kafka_cpu_rounds.push(cpu_us);
        }
        renew(&mut env, mock, true);
        cql_rounds.push(cql_whole_backlog(&env, &rows, f.cql_best_concurrency).await);
        // This build and the one before it (when given) in alternating order, so that a drift of
        // the machine during the round favours neither.
        let before = std::env::var_os("ORDERSTREAM_BENCH_BEFORE_BIN").map(std::path::PathBuf::from);
        let this = env.bin.clone();
        let order: Vec<Option<std::path::PathBuf>> = match (&before, round % 2) {
            (None, _) => vec![None],
            (Some(b), 0) => vec![None, Some(b.clone())],
            (Some(b), _) => vec![Some(b.clone()), None],
        };
        for bin in order {
            renew(&mut env, mock, true);
            env.bin = bin.clone().unwrap_or_else(|| this.clone());
            let drain = pipeline_drain(&env, orders).await;
            env.bin = this.clone();
            match bin {
                Some(_) => {
                    eprintln!(
                        "round {}: the build before: {:.0}/s, peak RSS {:.1} MiB",
                        round + 1,
                        drain.0,
                        drain.1
                    );
                    f.before_rounds.push((drain.0, drain.1));
                }
                None => drain_rounds.push(drain),
            }
        }
        let (cql, drain) = (cql_rounds[round], &drain_rounds[round]);
        eprintln!(
            "round {}: bare consumer {:.0}/s, raw cql {:.0}/s ({:.1} µs CPU each), \
             pipeline {:.0}/s (peak RSS {:.1} MiB, CPU {:?})",
            round + 1,
            kafka_rounds[round],
            cql.0,
            cql.1,
            drain.0,
            drain.1,
            drain.2
        );
    }
    f.kafka_raw = median(&kafka_rounds);
    f.kafka_rounds = kafka_rounds;
    f.cql_rounds = cql_rounds.iter().map(|c| c.0).collect();
    let cql = cql_rounds[median_index(&f.cql_rounds)];
    (f.cql_raw, f.cql_raw_cpu_us) = cql;
    f.drain_rounds = drain_rounds.iter().map(|d| d.0).collect();
    let drain = &drain_rounds[median_index(&f.drain_rounds)];
    f.pipeline = drain.0;
    f.drain_cpu = drain.2.clone();
    f.peak_rss_mib = drain_rounds.iter().map(|d| d.1).fold(0.0, f64::max);
    f.rss_rounds = drain_rounds.iter().map(|d| d.1).collect();
    let sample = &rows[..SAMPLE.min(rows.len())];

    // Raw: MySQL ledger transactions, sequential as the aggregator runs them.
    let pool = env.mysql(partitions()).await;
    let mysql_pids: Vec<u32> = std::iter::once(std::process::id())
        .chain(env.mariadb.proc.as_ref().map(|p| p.child.id()))
        .collect();
    let cpu0 = cpu_of(&mysql_pids);
    f.mysql_txn_per_s = raw_mysql(&pool, sample, f.batch_size).await;
    f.mysql_cpu_us = 1e6 * (cpu_of(&mysql_pids) - cpu0) / sample.len() as f64;
    eprintln!(
        "raw mysql: {:.1} txn/s × {} = {:.0}/s",
        f.mysql_txn_per_s,
        f.batch_size,
        f.mysql_raw()
    );

    // The sequential baseline, in its own keyspace and database: every request awaited before
    // the next one is sent.
    renew(&mut env, mock, true);
    f.baseline = baseline(&env.config(partitions()), orders.min(BASELINE_ORDERS), 1).await;
    eprintln!("baseline: {:.0}/s", f.baseline);
    // The same loop with the pipeline's insert concurrency: what pipelining adds on top of it.
    renew(&mut env, mock, true);
    let cfg = env.config(partitions());
    // It reads the whole backlog, as the drain does (the emulator's cost grows with its table),
    // and its CPU over every process is counted as the drain's is.
    let pids: Vec<u32> = std::iter::once(std::process::id())
        .chain(env.broker.proc.as_ref().map(|p| p.child.id()))
        .chain(env.cql.proc.as_ref().map(|p| p.child.id()))
        .chain(env.mariadb.proc.as_ref().map(|p| p.child.id()))
        .collect();
    let cpu0 = cpu_of(&pids);
    f.loop_concurrent = baseline(&cfg, orders, cfg.cassandra.concurrency).await;
    f.loop_cpu_us = 1e6 * (cpu_of(&pids) - cpu0) / orders as f64;
    eprintln!(
        "loop with concurrent inserts: {:.0}/s, {:.1} µs CPU per order",
        f.loop_concurrent, f.loop_cpu_us
    );

    f.curve = curve::curve(&mut env, mock).await;
    f
}

/// A consumer outside any group, assigned every partition of `topic` from its start, with the
/// pipeline's fetch wait (src/stores/kafka.rs): tansu holds every fetch for the whole wait, data or
/// not, so librdkafka's default (500 ms) would understate the broker.
fn bare_consumer_from_start(brokers: &str, topic: &str, group: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions() {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    consumer
}

/// Reads `count` records with a bare consumer (no group); returns the rate and, when `keep`,
/// every order (the rows the raw CQL measurement writes).
fn bare_consumer(brokers: &str, topic: &str, count: u64, keep: bool) -> (f64, Vec<Order>) {
    let consumer = bare_consumer_from_start(brokers, topic, "bench-bare");
    let mut rows = Vec::with_capacity(if keep { count as usize } else { 0 });
    let mut seen = 0u64;
    let started = Instant::now();
    while seen < count {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                seen += 1;
                if keep {
                    if let Ok(o) = decode(m.payload().unwrap_or_default(), MAX_RECORD_BYTES) {
                        rows.push(o);
                    }
                }
            }
            Some(Err(e)) => panic!("bare consumer: {e}"),
            None => panic!("bare consumer: nothing for 10 s at {seen}/{count}"),
        }
    }
    (count as f64 / started.elapsed().as_secs_f64(), rows)
}

/// The bare consumer on a blocking thread: (rate, every order when `keep`, CPU µs per record
/// of this process and the broker's).
async fn read_backlog(env: &Env, orders: u64, keep: bool) -> (f64, Vec<Order>, f64) {
    let (brokers, topic) = (env.broker.addr(), env.names.topic.clone());
    let pids: Vec<u32> = std::iter::once(std::process::id())
        .chain(env.broker.proc.as_ref().map(|p| p.child.id()))
        .collect();
    let cpu0 = cpu_of(&pids);
    let (rate, rows) =
        tokio::task::spawn_blocking(move || bare_consumer(&brokers, &topic, orders, keep))
            .await
            .unwrap();
    (rate, rows, 1e6 * (cpu_of(&pids) - cpu0) / orders as f64)
}

/// The scylla driver inserts every row at `concurrency`, timed from 5% to 100% as the
/// pipeline's drain is; returns (rows/s, CPU µs per insert of the driver and the emulator).
/// (A burst of 50,000 into a small table is not the pipeline's job: during a drain the
/// emulator's table grows to the whole backlog.)
async fn cql_whole_backlog(env: &Env, rows: &[Order], concurrency: usize) -> (f64, f64) {
    let store = Arc::new(
        CassandraStore::connect(&env.config(partitions()).cassandra)
            .await
            .unwrap(),
    );
    // CPU of the driver (this process) and the emulator, to compare with the pipeline's.
    let pids: Vec<u32> = std::iter::once(std::process::id())
        .chain(env.cql.proc.as_ref().map(|p| p.child.id()))
        .collect();
    let (warm, timed) = rows.split_at(rows.len() / 20);
    insert_all(&store, warm, concurrency).await;
    let (started, cpu0) = (Instant::now(), cpu_of(&pids));
    insert_all(&store, timed, concurrency).await;
    let rate = timed.len() as f64 / started.elapsed().as_secs_f64();
    (rate, 1e6 * (cpu_of(&pids) - cpu0) / timed.len() as f64)
}

/// The index of the median of `values` (the upper one of an even count).
fn median_index(values: &[f64]) -> usize {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|a, b| values[*a].total_cmp(&values[*b]));
    order[values.len() / 2]
}

/// The median; NaN when nothing was measured (a partial run, see the knobs above).
fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values[median_index(values)]
}

/// Inserts `rows`, `concurrency` at a time, in a task on the runtime's workers as the pipeline
/// does (run from `block_on`'s thread, every completion was a wake-up across threads).
async fn insert_all(store: &Arc<CassandraStore>, rows: &[Order], concurrency: usize) {
    let (store, rows) = (store.clone(), rows.to_vec());
    tokio::spawn(async move {
        futures::stream::iter(rows)
            .map(|o| {
                let store = store.clone();
                async move { store.insert(&o).await }
            })
            .buffer_unordered(concurrency)
            .try_collect::<Vec<()>>()
            .await
            .unwrap();
    })
    .await
    .unwrap();
}

/// Batches of `size` orders spread over the partitions, with contiguous offsets from `next`.
fn make_batch(
    seq: u64,
    orders: &[Order],
    next: &mut BTreeMap<i32, i64>,
    epochs: &BTreeMap<i32, i64>,
) -> Batch {
    let mut records: Vec<Record> = orders
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let partition = i as i32 % partitions();
            let offset = next.entry(partition).or_insert(0);
            let record = Record {
                partition,
                offset: *offset,
                epoch: epochs[&partition],
                bytes: 150,
                content: Content::Valid(o.clone()),
            };
            *offset += 1;
            record
        })
        .collect();
    // Each partition's records in offset order, as the batcher cuts them.
    records.sort_by_key(|r| (r.partition, r.offset));
    Batch {
        seq,
        bytes: records.len() * 150,
        records,
        opened_at: Instant::now(),
    }
}

async fn claim_all(pool: &sqlx::MySqlPool, topic: &str, owner: &str) -> BTreeMap<i32, i64> {
    let mut epochs = BTreeMap::new();
    for p in 0..partitions() {
        let claim = orderstream::stores::OlapStore::Mysql(pool.clone())
            .claim(topic, p, owner, 0)
            .await
            .unwrap();
        epochs.insert(p, claim.epoch);
    }
    epochs
}

/// Sequential ledger transactions of `size` orders; returns transactions per second.
async fn raw_mysql(pool: &sqlx::MySqlPool, sample: &[Order], size: usize) -> f64 {
    let topic = "bench_raw_mysql";
    let epochs = claim_all(pool, topic, "bench").await;
    let mut next = BTreeMap::new();
    let batches: Vec<Batch> = sample
        .chunks(size)
        .enumerate()
        .map(|(i, c)| make_batch(i as u64, c, &mut next, &epochs))
        .collect();
    let started = Instant::now();
    for b in &batches {
        orderstream::stores::OlapStore::Mysql(pool.clone())
            .apply_batch(topic, b)
            .await
            .unwrap();
    }
    batches.len() as f64 / started.elapsed().as_secs_f64()
}

/// The bare sequential loop; returns orders per second over `count` orders.
async fn baseline(cfg: &Config, count: u64, insert_concurrency: usize) -> f64 {
    let store = Arc::new(CassandraStore::connect(&cfg.cassandra).await.unwrap());
    let pool = orderstream::stores::connect_mysql(&cfg.mysql)
        .await
        .unwrap();
    let topic = &cfg.kafka.topic;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.brokers)
        .set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let epochs = claim_all(&pool, topic, "baseline").await;
    let ledger = orderstream::stores::OlapStore::Mysql(pool.clone())
        .read_ledger(topic)
        .await
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (p, next) in &ledger {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*next))
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let max_wait = Duration::from_millis(cfg.pipeline.max_wait_ms);
    let mut done = 0u64;
    let mut seq = 0;
    let started = Instant::now();
    while done < count {
        // Consume one batch.
        let mut records = Vec::with_capacity(cfg.pipeline.max_orders);
        let deadline = Instant::now() + max_wait;
        while records.len() < cfg.pipeline.max_orders {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(next) = tokio::time::timeout(left, consumer.recv()).await else {
                break;
            };
            let m = next.unwrap();
            let payload = m.payload().unwrap_or_default();
            let order = decode(payload, MAX_RECORD_BYTES).unwrap();
            records.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                epoch: epochs[&m.partition()],
                bytes: payload.len(),
                content: Content::Valid(order),
            });
        }
        if records.is_empty() {
            continue;
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        let batch = Batch {
            seq,
            bytes: records.iter().map(|r| r.bytes).sum(),
            records,
            opened_at: Instant::now(),
        };
        seq += 1;
        // Write its rows, then one transaction, then the Kafka commit.
        let orders: Vec<Order> = batch
            .records
            .iter()
            .filter_map(|r| r.order().cloned())
            .collect();
        insert_all(&store, &orders, insert_concurrency).await;
        let report = orderstream::stores::OlapStore::Mysql(pool.clone())
            .apply_batch(topic, &batch)
            .await
            .unwrap();
        let mut commit = TopicPartitionList::new();
        for (p, next) in &report.committed {
            commit
                .add_partition_offset(topic, *p, Offset::Offset(*next))
                .unwrap();
        }
        consumer.commit(&commit, CommitMode::Sync).unwrap();
        done += batch.records.len() as u64;
    }
    done as f64 / started.elapsed().as_secs_f64()
}

/// CPU seconds a process has used so far; 0 once it is gone.
fn cpu(pid: u32) -> f64 {
    cpu_seconds(pid).unwrap_or(0.0)
}

/// CPU seconds these processes have used so far.
/// CPU time (user + system, seconds) a process has used, from `/proc/<pid>/stat`; None off
/// Linux or when the process is gone.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): utime is the 14th field
    // overall, stime the 15th, in clock ticks.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / per_second.max(1) as f64)
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|pid| cpu(*pid)).sum()
}

/// The machine's cores.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Every process that works during a drain: the pipeline, the servers, and this process (which
/// hosts the mock cluster when it is the broker).
fn drain_processes(env: &Env, run: &common::Proc) -> Vec<(&'static str, u32)> {
    let mut procs = vec![("pipeline", run.child.id())];
    if let Some(p) = &env.broker.proc {
        procs.push(("broker (tansu)", p.child.id()));
    } else {
        procs.push(("bench process (mock cluster)", std::process::id()));
    }
    if let Some(p) = &env.cql.proc {
        procs.push(("CQL emulator", p.child.id()));
    }
    if let Some(p) = &env.mariadb.proc {
        procs.push(("MariaDB", p.child.id()));
    }
    procs
}

/// `orderstream run` drains the backlog; returns (orders/s from 5% to 100%, peak RSS MiB, CPU
/// per process over the same span in % of one core).
async fn pipeline_drain(env: &Env, orders: u64) -> (f64, f64, Vec<(&'static str, f64)>) {
    let pool = env.mysql(partitions()).await;
    let topic = env.names.topic.clone();
    let mut run = env.spawn(partitions(), &["run"]);
    let from = (orders / 20) as i64;
    let procs = drain_processes(env, &run);
    let mut cpu0 = Vec::new();
    let mut t0 = None;
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let n = common::applied(&pool, &topic).await;
        if t0.is_none() && n >= from {
            t0 = Some((Instant::now(), n));
            cpu0 = procs.iter().map(|(_, pid)| cpu(*pid)).collect();
        }
        if n >= orders as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "the pipeline is stuck at {n}");
        assert!(
            run.child.try_wait().unwrap().is_none(),
            "the pipeline exited during the drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (t0, n0) = t0.unwrap();
    let elapsed = t0.elapsed().as_secs_f64();
    let rate = (orders as i64 - n0) as f64 / elapsed;
    let cpu = procs
        .iter()
        .zip(&cpu0)
        .map(|((name, pid), before)| (*name, 100.0 * (cpu(*pid) - before) / elapsed))
        .collect();
    let rss = common::peak_rss(&run) as f64 / (1024.0 * 1024.0);
    // How the drain was cut: batches by trigger (a build without the counter prints nothing).
    let metrics = common::scrape(env.http_port);
    let cuts: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("orderstream_batcher_batches_total"))
        .collect();
    eprintln!("batches cut: {}", cuts.join("; "));
    assert_eq!(run.terminate(Duration::from_secs(60)), Some(0));
    (rate, rss, cpu)
}

fn print_table(columns: &[(&str, Figures)]) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cores = cores();
    println!();
    println!(
        "orderstream end-to-end benchmark: {cpu}, {cores} cores; every server on this machine. \
         CQL: the kassandra emulator (figures are the emulator's). MySQL: MariaDB."
    );
    println!();
    print!("| measurement |");
    for (name, _) in columns {
        print!(" {name} |");
    }
    println!();
    print!("|---|");
    for _ in columns {
        print!("---:|");
    }
    println!();
    let row = |label: &str, value: &dyn Fn(&Figures) -> String| {
        print!("| {label} |");
        for (_, f) in columns {
            print!(" {} |", value(f));
        }
        println!();
    };
    let per_s = |v: f64| format!("{:.0}/s", v);
    row("backlog published (`orderstream produce`)", &|f| {
        format!(
            "{} orders in {} partitions at {}",
            f.orders,
            f.partitions,
            per_s(f.produced_per_s)
        )
    });
    let rounds = |v: &[f64]| {
        let each: Vec<String> = v.iter().map(|r| format!("{r:.0}")).collect();
        format!("rounds {}", each.join(", "))
    };
    row(
        &format!("raw: bare rdkafka consumer, median of {ROUNDS} rounds"),
        &|f| format!("{} ({})", per_s(f.kafka_raw), rounds(&f.kafka_rounds)),
    );
    row(
        &format!("raw: scylla driver inserts (emulator), best burst of {CQL_PROBE}"),
        &|f| format!("{} (at {})", per_s(f.cql_burst), f.cql_best_concurrency),
    );
    row(
        &format!(
            "raw: scylla driver inserts (emulator), the whole backlog at that concurrency, median of {ROUNDS}"
        ),
        &|f| format!("{} ({})", per_s(f.cql_raw), rounds(&f.cql_rounds)),
    );
    row("raw: MySQL ledger transactions × batch size", &|f| {
        format!(
            "{:.1} txn/s × {} = {}",
            f.mysql_txn_per_s,
            f.batch_size,
            per_s(f.mysql_raw())
        )
    });
    row(
        "baseline: sequential loop (consume, insert one by one, ledger txn, commit)",
        &|f| per_s(f.baseline),
    );
    row(
        "reference: the same loop, inserts `cassandra.concurrency` in flight, whole backlog",
        &|f| per_s(f.loop_concurrent),
    );
    row(
        &format!("**pipeline: sustained throughput**, median of {ROUNDS} drains"),
        &|f| format!("{} ({})", per_s(f.pipeline), rounds(&f.drain_rounds)),
    );
    row("pipeline ÷ baseline (target ≥ 3×)", &|f| {
        format!("{:.2}×", f.pipeline / f.baseline)
    });
    row("pipeline ÷ the loop with concurrent inserts", &|f| {
        format!("{:.2}×", f.pipeline / f.loop_concurrent)
    });
    row("pipeline ÷ smallest raw limit (target ≥ 80%)", &|f| {
        format!("{:.0}%", 100.0 * f.pipeline / f.smallest_raw())
    });
    row(
        &format!(
            "CPU floor per order: bare consumer + broker, driver + emulator, ledger + MariaDB, each alone → what {cores} cores allow"
        ),
        &|f| {
            format!(
                "{:.1} + {:.1} + {:.1} = {:.1} µs → {}",
                median(&f.kafka_cpu_rounds),
                f.cql_raw_cpu_us,
                f.mysql_cpu_us,
                f.cpu_floor_us(),
                per_s(f.cpu_ceiling())
            )
        },
    );
    row(
        "pipeline ÷ the smaller of that and the smallest raw limit",
        &|f| {
            format!(
                "{:.0}%",
                100.0 * f.pipeline / f.cpu_ceiling().min(f.smallest_raw())
            )
        },
    );
    row(
        "CPU per order, µs: the raw CQL inserts alone (driver + emulator) / the loop with concurrent inserts / the pipeline's drain (every process)",
        &|f| {
            let drain: f64 = f.drain_cpu.iter().map(|(_, s)| s).sum();
            format!(
                "{:.1} / {:.1} / {:.1}",
                f.cql_raw_cpu_us,
                f.loop_cpu_us,
                1e6 * drain / 100.0 / f.pipeline
            )
        },
    );
    row(
        "peak RSS draining the backlog, highest of the drains (target < 256 MiB)",
        &|f| format!("{:.1} MiB", f.peak_rss_mib),
    );
    row(
        &format!(
            "CPU during the median drain, % of one core ({cores} cores = {}%)",
            cores * 100
        ),
        &|f| {
            let parts: Vec<String> = f
                .drain_cpu
                .iter()
                .map(|(name, share)| format!("{name} {share:.0}%"))
                .collect();
            let total: f64 = f.drain_cpu.iter().map(|(_, s)| s).sum();
            format!("{} = {total:.0}%", parts.join(" + "))
        },
    );
    if columns.iter().any(|(_, f)| !f.before_rounds.is_empty()) {
        row(
            "the build before (ORDERSTREAM_BENCH_BEFORE_BIN), alternated with this one: drain median (rounds)",
            &|f| {
                let rates: Vec<f64> = f.before_rounds.iter().map(|r| r.0).collect();
                format!("{} ({})", per_s(median(&rates)), rounds(&rates))
            },
        );
        row("drain median: this build ÷ the build before", &|f| {
            let rates: Vec<f64> = f.before_rounds.iter().map(|r| r.0).collect();
            format!("{:.2}×", f.pipeline / median(&rates))
        });
        row(
            "peak RSS median of the drains: this build / the build before",
            &|f| {
                let before: Vec<f64> = f.before_rounds.iter().map(|r| r.1).collect();
                format!(
                    "{:.1} MiB / {:.1} MiB",
                    median(&f.rss_rounds),
                    median(&before)
                )
            },
        );
    }
    print_curves(columns);
}

/// The latency–throughput curve of each broker, the targets on it, and the chart.
fn print_curves(columns: &[(&str, Figures)]) {
    for (name, f) in columns {
        println!();
        println!(
            "Latency at a steady rate, {name}: ms, steady state (the first {} s left out); \
             pipeline = order created → its offset applied in the MySQL ledger (polled every 5 ms), \
             broker alone = created → read by a bare consumer.",
            curve::WARMUP.as_secs()
        );
        println!();
        println!(
            "| orders/s | produced at | orders measured | pipeline p50 / p99 / p99.9 (exact) | pipeline, its histogram | \
             broker alone p50 / p99 / p99.9 | pipeline p99 − broker p99 | whole run p99 | caught up after | sustained: pipeline / broker |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for p in &f.curve {
            println!(
                "| {} | {:.0}/s | {} | {} | {} | {} | {} | {:.0} | {:.2} s | {} / {} |",
                p.rate,
                p.produced,
                p.pipeline.samples,
                p.pipeline.cell(),
                p.histogram.cell(),
                p.broker.cell(),
                excess_cell(p),
                p.pipeline_p99_all,
                p.catch_up.as_secs_f64(),
                yes_no(p.pipeline_sustains()),
                yes_no(p.broker_sustains())
            );
        }
        println!();
        print_targets(name, f);
    }
    let chart = chart_path();
    let curves: Vec<(&str, &[curve::Point])> = columns
        .iter()
        .map(|(name, f)| (*name, f.curve.as_slice()))
        .collect();
    match curve::draw(std::path::Path::new(&chart), &curves) {
        Ok(()) => println!("\nThe curve: {chart}"),
        Err(e) => eprintln!("drawing {chart}: {e}"),
    }
}

/// The pipeline's p99 above the broker alone's; at a target rate (alternated pairs, the median
/// one reported) every pair's, in the order measured.
fn excess_cell(p: &curve::Point) -> String {
    let mut cell = format!("{:+.0}", p.pipeline.p99 - p.broker.p99);
    if !p.rounds.is_empty() {
        let rounds: Vec<String> = p
            .rounds
            .iter()
            .map(|(pipeline, broker)| format!("{:+.0}", pipeline - broker))
            .collect();
        cell.push_str(&format!(" (pairs {})", rounds.join(", ")));
    }
    cell
}

/// Where the curve is drawn: ORDERSTREAM_BENCH_CHART, or docs/latency-curve.svg.
fn chart_path() -> String {
    std::env::var("ORDERSTREAM_BENCH_CHART")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/docs/latency-curve.svg").into())
}

fn yes_no(v: bool) -> &'static str {
    if v {
        "yes"
    } else {
        "no"
    }
}

/// The latency targets, each with its figures and whether this run met it.
fn print_targets(name: &str, f: &Figures) {
    let at = |rate: u32| f.curve.iter().find(|p| p.rate == rate);
    let met = |ok: bool| if ok { "met" } else { "**missed**" };
    for rate in [100, 5_000] {
        if let Some(p) = at(rate) {
            let bound = p.broker.p99 + 100.0;
            println!(
                "- {name}, {rate}/s: pipeline p99 {:.0} ms ≤ broker-alone p99 {:.0} + 100 ms = {bound:.0} ms (the median of {} alternated pairs, excess {}): {}",
                p.pipeline.p99,
                p.broker.p99,
                p.rounds.len().max(1),
                excess_cell(p),
                met(p.pipeline.p99 <= bound)
            );
        }
    }
    if let Some(p) = at(20_000) {
        if p.broker_sustains() {
            println!(
                "- {name}, 20000/s: pipeline p99 {:.0} ms < 500 ms: {}",
                p.pipeline.p99,
                met(p.pipeline.p99 < 500.0)
            );
        } else {
            println!(
                "- {name}, 20000/s: the broker alone does not sustain it (produced at {:.0}/s, p99 {:.0} ms); pipeline p99 {:.0} ms",
                p.broker_produced, p.broker.p99, p.pipeline.p99
            );
        }
    }
    match curve::highest_sustained(&f.curve) {
        Some(p) => println!(
            "- {name}: the highest rate sustained {} orders/s (p99 {:.0} ms); drain throughput {:.0}/s",
            p.rate, p.pipeline.p99, f.pipeline
        ),
        None => println!("- {name}: no rate of the curve was sustained"),
    }
}
