//! The latency–throughput curve: at each steady rate, on a new topic, the pipeline's end-to-end
//! latency (order created → its offset applied in the MySQL ledger) and the broker's alone
//! (order created → read by a bare consumer), as exact per-order quantiles; the pipeline's own
//! histogram beside them; then the highest rate the pipeline sustains, found by climbing a
//! ladder of rates above the last fixed one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orderstream::model::decode;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;

use super::common::{self, Env};
use super::{bare_consumer_from_start, partitions, renew, MAX_RECORD_BYTES};

/// The fixed steady rates of the curve, orders/s: a quiet shop, two ordinary loads, a busy one.
pub const RATES: [u32; 4] = [100, 1_000, 5_000, 20_000];
/// The rates with a target against the broker alone (pipeline p99 ≤ broker-alone p99 + 100 ms).
/// Each is measured in TARGET_ROUNDS alternated pairs (broker alone first, then the pipeline
/// first, ...) and the pair with the median excess is reported, with every pair's excess: on
/// these shared machines a single stall of a few hundred milliseconds, in either run, moves the
/// p99 of a 15 s window by as much as the target's whole margin.
pub const TARGET_RATES: [u32; 2] = [100, 5_000];
const TARGET_ROUNDS: usize = 3;
/// Each step of the ladder above the last fixed rate multiplies the rate by this.
const LADDER_STEP: f64 = 1.25;
/// The ladder stops here whatever happens (far above what these machines do).
const LADDER_TOP: u32 = 400_000;

/// The first seconds of a run at a steady rate: the producer's and the clients' start-up. The
/// orders created then wait for connections and the idempotent producer's id (with tansu, up to
/// 1.3 s). The quantiles are about the steady state; the whole run's p99 is shown too.
pub const WARMUP: Duration = Duration::from_secs(5);

/// Seconds of steady production measured at `rate`: at 100/s, 30 s give 3,000 orders (p99.9 is
/// then the third-slowest); at 1,000/s and above, 15 s give at least 15,000.
fn steady_seconds(rate: u32) -> u64 {
    if rate <= 100 {
        30
    } else {
        15
    }
}

/// How often the ledger is polled for commits. An order counts as committed at the end of the
/// first poll that shows its offset applied: at most one interval plus one query (about a
/// millisecond on loopback) after the commit, never before it.
const LEDGER_POLL: Duration = Duration::from_millis(5);

/// Quantiles of one latency distribution, in ms.
#[derive(Default, Clone, Copy, Debug)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub samples: usize,
}

impl Latency {
    /// Exact quantiles (nearest rank) of every sample.
    fn of(mut samples: Vec<f64>) -> Latency {
        if samples.is_empty() {
            return Latency {
                p50: f64::NAN,
                p99: f64::NAN,
                p999: f64::NAN,
                samples: 0,
            };
        }
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| {
            samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
        };
        Latency {
            p50: at(0.5),
            p99: at(0.99),
            p999: at(0.999),
            samples: samples.len(),
        }
    }

    /// Interpolated inside the buckets of a histogram, as Prometheus' `histogram_quantile`.
    fn of_histogram(buckets: &[(f64, f64)]) -> Latency {
        Latency {
            p50: quantile(buckets, 0.5) * 1000.0,
            p99: quantile(buckets, 0.99) * 1000.0,
            p999: quantile(buckets, 0.999) * 1000.0,
            samples: buckets.last().map_or(0.0, |b| b.1) as usize,
        }
    }

    pub fn cell(&self) -> String {
        format!("{:.0} / {:.0} / {:.0}", self.p50, self.p99, self.p999)
    }
}

/// One steady rate: the pipeline and the broker alone, each on its own new topic.
#[derive(Default, Clone, Debug)]
pub struct Point {
    pub rate: u32,
    /// The rate the producer held, from the first to the last order's `created_at`.
    pub produced: f64,
    /// Exact, from each order's commit in the ledger; steady state.
    pub pipeline: Latency,
    /// The same orders through the pipeline's own histogram (the difference of two scrapes).
    pub histogram: Latency,
    /// The whole run's p99, start-up included.
    pub pipeline_p99_all: f64,
    /// From the producer's exit to the last commit.
    pub catch_up: Duration,
    pub broker: Latency,
    pub broker_produced: f64,
    /// At a target rate, every alternated pair's (pipeline p99, broker-alone p99); this point
    /// is the pair with the median excess.
    pub rounds: Vec<(f64, f64)>,
}

impl Point {
    /// The producer held the rate (within 5%), the steady p99 stayed under a second, and the
    /// ledger caught up within a second of the last order: the lag did not grow.
    pub fn pipeline_sustains(&self) -> bool {
        held(self.produced, self.rate)
            && self.pipeline.p99 < 1000.0
            && self.catch_up < Duration::from_secs(1)
    }

    /// The same for the broker alone (a bare consumer keeps up with the producer).
    pub fn broker_sustains(&self) -> bool {
        held(self.broker_produced, self.rate) && self.broker.p99 < 1000.0
    }
}

fn held(produced: f64, rate: u32) -> bool {
    produced >= 0.95 * f64::from(rate)
}

/// Orders published at `rate`: the warm-up and the steady seconds, capped at what the mock
/// cluster keeps (it drops a partition's oldest records beyond 5 MiB).
fn orders_at(rate: u32, mock: bool) -> u64 {
    let orders = u64::from(rate) * (WARMUP.as_secs() + steady_seconds(rate));
    if mock {
        orders.min(partitions() as u64 * super::MOCK_MAX_ORDERS_PER_PARTITION)
    } else {
        orders
    }
}

/// The curve: every fixed rate, then up the ladder while the pipeline sustains the rate. The
/// last point is the first rate it did not sustain (or the top of the ladder).
pub async fn curve(
    env: &mut Env,
    mock: Option<&MockCluster<'_, rdkafka::producer::DefaultProducerContext>>,
) -> Vec<Point> {
    let mut points = Vec::new();
    // ORDERSTREAM_BENCH_RATES=100,5000: only these rates, no ladder (a quick look at one point).
    if let Ok(only) = std::env::var("ORDERSTREAM_BENCH_RATES") {
        for rate in only.split(',').filter_map(|r| r.trim().parse::<u32>().ok()) {
            points.push(point(env, mock, rate).await);
        }
        return points;
    }
    for rate in RATES {
        points.push(point(env, mock, rate).await);
    }
    let mut rate = RATES[RATES.len() - 1];
    while points.last().is_some_and(Point::pipeline_sustains) && rate < LADDER_TOP {
        rate = ((f64::from(rate) * LADDER_STEP / 1000.0).round() * 1000.0) as u32;
        points.push(point(env, mock, rate).await);
    }
    points
}

/// The highest rate of the curve the pipeline sustained.
pub fn highest_sustained(points: &[Point]) -> Option<&Point> {
    points
        .iter()
        .filter(|p| p.pipeline_sustains())
        .max_by_key(|p| p.rate)
}

async fn point(
    env: &mut Env,
    mock: Option<&MockCluster<'_, rdkafka::producer::DefaultProducerContext>>,
    rate: u32,
) -> Point {
    if !TARGET_RATES.contains(&rate) {
        return pair(env, mock, rate, true).await;
    }
    let mut pairs = Vec::new();
    for round in 0..TARGET_ROUNDS {
        pairs.push(pair(env, mock, rate, round % 2 == 0).await);
    }
    let excess = |p: &Point| p.pipeline.p99 - p.broker.p99;
    let rounds: Vec<(f64, f64)> = pairs
        .iter()
        .map(|p| (p.pipeline.p99, p.broker.p99))
        .collect();
    pairs.sort_by(|a, b| excess(a).total_cmp(&excess(b)));
    let mut median = pairs.swap_remove(pairs.len() / 2);
    eprintln!(
        "curve at {rate}/s: excess of each pair {:?} ms; the median pair reported",
        rounds
            .iter()
            .map(|(p, b)| (p - b).round())
            .collect::<Vec<_>>()
    );
    median.rounds = rounds;
    median
}

/// The broker alone and the pipeline at `rate`, each on a new topic, the broker alone first
/// when `broker_first`.
async fn pair(
    env: &mut Env,
    mock: Option<&MockCluster<'_, rdkafka::producer::DefaultProducerContext>>,
    rate: u32,
    broker_first: bool,
) -> Point {
    let orders = orders_at(rate, mock.is_some());
    let mut broker = None;
    if broker_first {
        renew(env, mock, false);
        broker = Some(broker_alone(env, rate, orders).await);
    }
    // ORDERSTREAM_BENCH_GROUP_CONSUMER=1: also the pipeline's consumer settings alone (a group
    // member, its prefetch and fetch settings, no stores), to tell what the consumer's settings
    // add to the broker from what the stages behind it add.
    if std::env::var_os("ORDERSTREAM_BENCH_GROUP_CONSUMER").is_some() {
        renew(env, mock, false);
        let (group, _) = group_consumer_alone(env, rate, orders).await;
        eprintln!(
            "curve at {rate}/s: the pipeline's consumer settings alone p50/p99/p99.9 {} ms",
            group.cell()
        );
    }
    renew(env, mock, false);
    let mut p = pipeline(env, rate, orders).await;
    let (broker, broker_produced) = match broker {
        Some(measured) => measured,
        None => {
            renew(env, mock, false);
            broker_alone(env, rate, orders).await
        }
    };
    p.broker = broker;
    p.broker_produced = broker_produced;
    eprintln!(
        "curve at {rate}/s ({orders} orders): pipeline p50/p99/p99.9 {} ms (histogram {} ms), \
         produced at {:.0}/s, caught up {:.2} s after the producer; broker alone {} ms, produced at {:.0}/s",
        p.pipeline.cell(),
        p.histogram.cell(),
        p.produced,
        p.catch_up.as_secs_f64(),
        p.broker.cell(),
        p.broker_produced
    );
    p
}

fn produce_args(rate: u32, orders: u64) -> Vec<String> {
    [
        "produce",
        "--count",
        &orders.to_string(),
        "--rate",
        &rate.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// The steady-state samples: orders created at least WARMUP after the first one.
fn steady(created_and_latency: &[(i64, f64)]) -> Vec<f64> {
    let first = created_and_latency.iter().map(|s| s.0).min().unwrap_or(0);
    let warm_ms = WARMUP.as_millis() as i64;
    created_and_latency
        .iter()
        .filter(|s| s.0 >= first + warm_ms)
        .map(|s| s.1)
        .collect()
}

/// Orders per second between the first and the last `created_at`.
fn produced_rate(created: impl Iterator<Item = i64> + Clone) -> f64 {
    let (first, last) = (
        created.clone().min().unwrap_or(0),
        created.clone().max().unwrap_or(0),
    );
    let n = created.count();
    if last > first {
        (n - 1) as f64 * 1000.0 / (last - first) as f64
    } else {
        f64::NAN
    }
}

/// The broker alone: a bare consumer reads each order as soon as the broker delivers it.
/// Returns the steady latency (created → read) and the rate the producer held.
async fn broker_alone(env: &Env, rate: u32, orders: u64) -> (Latency, f64) {
    let args = produce_args(rate, orders);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut producer = env.spawn(partitions(), &args);
    let (brokers, topic) = (env.broker.addr(), env.names.topic.clone());
    let samples: Vec<(i64, f64)> = tokio::task::spawn_blocking(move || {
        let consumer = bare_consumer_from_start(&brokers, &topic, "bench-broker-latency");
        let mut samples = Vec::with_capacity(orders as usize);
        while (samples.len() as u64) < orders {
            match consumer.poll(Duration::from_secs(30)) {
                Some(Ok(m)) => {
                    let now = chrono::Utc::now().timestamp_millis();
                    if let Ok(o) = decode(m.payload().unwrap_or_default(), MAX_RECORD_BYTES) {
                        samples.push((o.created_at_ms, (now - o.created_at_ms) as f64));
                    }
                }
                Some(Err(e)) => panic!("broker latency consumer: {e}"),
                None => panic!("broker latency consumer: nothing for 30 s"),
            }
        }
        consumer.unassign().ok();
        samples
    })
    .await
    .unwrap();
    assert_eq!(producer.wait(Duration::from_secs(600)), Some(0), "produce");
    (
        Latency::of(steady(&samples)),
        produced_rate(samples.iter().map(|s| s.0)),
    )
}

/// Like `broker_alone`, with the pipeline's consumer settings: a group member (subscribed, its
/// prefetch, fetch wait and queue settings), read through the same stream the pipeline's poll
/// loop reads.
async fn group_consumer_alone(env: &Env, rate: u32, orders: u64) -> (Latency, f64) {
    use rdkafka::consumer::StreamConsumer;
    let args = produce_args(rate, orders);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut producer = env.spawn(partitions(), &args);
    let cfg = env.config(partitions());
    let mut settings = orderstream::stores::consumer_config(&cfg.kafka, "bench-group-latency");
    settings.set("group.id", format!("bench-group-{}", rand::random::<u32>()));
    let consumer: StreamConsumer = settings.create().unwrap();
    consumer.subscribe(&[&cfg.kafka.topic]).unwrap();
    let mut samples = Vec::with_capacity(orders as usize);
    while (samples.len() as u64) < orders {
        match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
            Ok(Ok(m)) => {
                let now = chrono::Utc::now().timestamp_millis();
                if let Ok(o) = decode(m.payload().unwrap_or_default(), MAX_RECORD_BYTES) {
                    samples.push((o.created_at_ms, (now - o.created_at_ms) as f64));
                }
            }
            Ok(Err(e)) => panic!("group latency consumer: {e}"),
            Err(_) => panic!("group latency consumer: nothing for 30 s"),
        }
    }
    drop(consumer);
    assert_eq!(producer.wait(Duration::from_secs(600)), Some(0), "produce");
    (
        Latency::of(steady(&samples)),
        produced_rate(samples.iter().map(|s| s.0)),
    )
}

/// Polls the ledger every LEDGER_POLL: partition → (next offset, when it was first seen, Unix
/// ms), in order.
struct LedgerPoller {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<BTreeMap<i32, Vec<(i64, i64)>>>,
}

impl LedgerPoller {
    fn start(pool: sqlx::MySqlPool, topic: String) -> LedgerPoller {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
            let mut tick = tokio::time::interval(LEDGER_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !stopped.load(Ordering::Relaxed) {
                tick.tick().await;
                let rows: Vec<(i32, i64)> = sqlx::query_as(
                    "SELECT partition_id, next_offset FROM consumer_offsets WHERE topic = ?",
                )
                .bind(&topic)
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                let now = chrono::Utc::now().timestamp_millis();
                for (partition, next) in rows {
                    let history = seen.entry(partition).or_default();
                    if history.last().is_none_or(|last| last.0 != next) {
                        history.push((next, now));
                    }
                }
            }
            seen
        });
        LedgerPoller { stop, task }
    }

    async fn stop(self) -> BTreeMap<i32, Vec<(i64, i64)>> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// `orderstream run` at a steady `rate`: each order's latency from its `created_at` to the
/// first ledger poll that shows its offset applied, and the pipeline's own histogram.
async fn pipeline(env: &Env, rate: u32, orders: u64) -> Point {
    let pool = env.mysql(partitions()).await;
    let topic = env.names.topic.clone();
    // ORDERSTREAM_BENCH_LOGS=dir keeps the pipeline's log of each point there (with
    // ORDERSTREAM_TEST_LOG=orderstream=debug, each batch's timings: "batch applied").
    let mut run = match std::env::var_os("ORDERSTREAM_BENCH_LOGS") {
        Some(dir) => {
            let log =
                std::path::PathBuf::from(dir).join(format!("run-{rate}-{}.log", partitions()));
            env.spawn_logged(partitions(), &["run"], &log, &[])
        }
        None => env.spawn(partitions(), &["run"]),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while common::http_status(env.http_port, "/readyz") != Some(200) {
        assert!(
            Instant::now() < deadline,
            "the pipeline did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let poller = LedgerPoller::start(pool.clone(), topic.clone());
    let args = produce_args(rate, orders);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut producer = env.spawn(partitions(), &args);
    tokio::time::sleep(WARMUP).await;
    let name = "orderstream_pipeline_end_to_end_latency_seconds";
    let warm = histogram(&common::scrape(env.http_port), name);
    assert_eq!(producer.wait(Duration::from_secs(600)), Some(0), "produce");
    let produced_at = Instant::now();
    let deadline = produced_at + Duration::from_secs(600);
    while common::applied(&pool, &topic).await < orders as i64 {
        assert!(Instant::now() < deadline, "the pipeline did not catch up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let catch_up = produced_at.elapsed();
    let all = histogram(&common::scrape(env.http_port), name);
    let commits = poller.stop().await;
    assert_eq!(run.terminate(Duration::from_secs(60)), Some(0));

    let records = common::read_topic(&env.broker.addr(), &topic);
    let samples: Vec<(i64, f64)> = records
        .iter()
        .filter_map(|r| {
            let created = decode(&r.payload, MAX_RECORD_BYTES).ok()?.created_at_ms;
            let history = commits.get(&r.partition)?;
            // The first poll whose next offset is past this record's offset.
            let i = history.partition_point(|(next, _)| *next <= r.offset);
            let (_, seen) = history.get(i)?;
            Some((created, (seen - created) as f64))
        })
        .collect();
    assert_eq!(
        samples.len(),
        records.len(),
        "every order's commit was seen"
    );
    let steady_histogram: Vec<(f64, f64)> = all
        .iter()
        .map(|&(le, count)| {
            let before = warm.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            (le, count - before)
        })
        .collect();
    Point {
        rate,
        produced: produced_rate(samples.iter().map(|s| s.0)),
        pipeline: Latency::of(steady(&samples)),
        histogram: Latency::of_histogram(&steady_histogram),
        pipeline_p99_all: Latency::of(samples.iter().map(|s| s.1).collect()).p99,
        catch_up,
        ..Point::default()
    }
}

/// (upper bound, cumulative count) of a histogram's buckets, +Inf last.
fn histogram(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, value) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.trim().parse().ok()?))
        })
        .collect()
}

/// Linear interpolation inside the bucket, as Prometheus' histogram_quantile does.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    let rank = q * total;
    let mut previous = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return previous.0;
            }
            let within = if count > previous.1 {
                (rank - previous.1) / (count - previous.1)
            } else {
                0.0
            };
            return previous.0 + (le - previous.0) * within;
        }
        previous = (le, count);
    }
    f64::NAN
}

/// Draws p99 against the rate, the pipeline and the broker alone for each broker, as an SVG.
pub fn draw(
    path: &std::path::Path,
    curves: &[(&str, &[Point])],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let top_rate = curves
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| f64::from(p.rate)))
        .fold(1_000.0, f64::max);
    let top_ms = curves
        .iter()
        .flat_map(|(_, points)| points.iter().flat_map(|p| [p.pipeline.p99, p.broker.p99]))
        .filter(|v| v.is_finite())
        .fold(100.0, f64::max);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "End-to-end p99 against a steady rate (exact per-order samples)",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (50.0..top_rate * 1.5).log_scale(),
            (10.0..top_ms * 1.5).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("orders/s (log scale)")
        .y_desc("p99, ms (log scale)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let colours = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
    for ((broker, points), colour) in curves.iter().zip(colours) {
        let series = |f: fn(&Point) -> f64| -> Vec<(f64, f64)> {
            points
                .iter()
                .map(|p| (f64::from(p.rate), f(p)))
                .filter(|v| v.1.is_finite())
                .collect()
        };
        let pipeline = series(|p| p.pipeline.p99);
        let alone = series(|p| p.broker.p99);
        chart
            .draw_series(LineSeries::new(pipeline.clone(), colour.stroke_width(2)))?
            .label(format!("pipeline, {broker}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(pipeline.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
        let dashed = colour.mix(0.5).stroke_width(2);
        chart
            .draw_series(LineSeries::new(alone.clone(), dashed))?
            .label(format!("broker alone, {broker}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], dashed));
        chart.draw_series(
            alone
                .iter()
                .map(|&p| TriangleMarker::new(p, 5, colour.mix(0.5).filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The curves in a table this benchmark printed (its standard output, saved): for drawing the
/// chart again from a run's own figures (`ORDERSTREAM_BENCH_REDRAW`).
pub fn from_table(text: &str) -> Vec<(String, Vec<Point>)> {
    let mut curves: Vec<(String, Vec<Point>)> = Vec::new();
    let p99 = |cell: &str| {
        cell.split('/')
            .nth(1)
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("Latency at a steady rate, ") {
            let name = rest.split(':').next().unwrap_or(rest).to_owned();
            curves.push((name, Vec::new()));
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | rate | produced | measured | pipeline | histogram | broker | ...
        let (Some((_, points)), Some(rate)) = (
            curves.last_mut(),
            cells.get(1).and_then(|c| c.parse::<u32>().ok()),
        ) else {
            continue;
        };
        let (Some(pipeline), Some(broker)) = (
            cells.get(4).and_then(|c| p99(c)),
            cells.get(6).and_then(|c| p99(c)),
        ) else {
            continue;
        };
        let mut point = Point {
            rate,
            ..Point::default()
        };
        point.pipeline.p99 = pipeline;
        point.broker.p99 = broker;
        points.push(point);
    }
    curves
}
