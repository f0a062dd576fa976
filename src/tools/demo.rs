//! `orderstream demo`: the whole system in one process, with nothing installed.
//!
//! The same actors, the same exactly-once protocol and the same metrics endpoint as production,
//! with embedded stand-ins for the servers:
//! - Kafka: librdkafka's mock cluster, in this process, reached over loopback TCP like a broker;
//! - Cassandra: the CQL emulator (the `cql-emulator` crate), served from this process;
//! - MySQL: SQLite through sqlx (`stores/olap/sqlite.rs`), in memory or in a file given with `--sqlite`.
//!
//! A simulated producer publishes at a fixed rate, with a few invalid records mixed in so the
//! dead-letter path has something to show. Every few seconds a summary is printed, read from the
//! process's own metrics and stores. On Ctrl-C (or after `--seconds`) the producer stops, the
//! pipeline catches up and drains, and `reconcile` audits the topic against both stores: the
//! exit code is 0 when the verdict is exact and 4 when it is not.
//!
//! The mock broker keeps at most 5 MiB per partition and drops the oldest records beyond that;
//! the final audit reads the whole topic, so the producer stops at a cap sized to fit
//! ([`ORDERS_PER_PARTITION`] per partition) and says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::{bail, Context as _};
use metrics_exporter_prometheus::PrometheusHandle;
use rdkafka::mocking::MockCluster;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::ops::{telemetry, Health};
use crate::pipeline::{Drain, Halt, Pipeline, Stores};
use crate::stores::{
    connect_sqlite, migrate_sqlite, producer_config, watermarks, CassandraStore, OlapStore,
};
use crate::tools::node_lease::LeaseWindow;
use crate::tools::producer::{OrderProducer, ProducerSettings};
use crate::tools::reconcile;

/// Settings the demo uses unless `--set` says otherwise: more partitions than the default, so
/// the in-memory topic holds more orders (see [`ORDERS_PER_PARTITION`]), a smaller prefetch so
/// the worst-case memory still fits the budget, and 2,000 orders per second.
pub const DEFAULTS: [(&str, &str); 3] = [
    ("kafka.partitions", "16"),
    ("kafka.queued_max_messages_kbytes", "4096"),
    ("producer.rate_per_sec", "2000"),
];

/// Orders the producer publishes per partition at most. The mock broker keeps 5 MiB per
/// partition (librdkafka's rdkafka_mock.c) and an order takes 250–300 bytes there: 15,000 of
/// them stay below 4.5 MB, so the final audit can still read every record.
const ORDERS_PER_PARTITION: u64 = 15_000;

/// What the command line chose.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Orders per second.
    pub rate_per_sec: u32,
    /// Stop by itself after this long (otherwise on Ctrl-C).
    pub seconds: Option<u64>,
    /// Keep the OLAP store in this SQLite file instead of in memory.
    pub sqlite: Option<PathBuf>,
    /// How often to print the summary.
    pub summary_every: Duration,
    /// Every this many records is invalid on purpose (0: none).
    pub invalid_every: u64,
    /// How long to wait for the pipeline to catch up after the producer stopped.
    pub catch_up: Duration,
}

/// Runs the demo. Returns the process exit code: 0 exact, 4 differences, or the supervisor's.
pub async fn run(mut cfg: Config, opts: DemoOptions) -> anyhow::Result<i32> {
    let mut shutdown = crate::ops::Shutdown::listen();
    let olap = open_olap(opts.sqlite.as_deref(), &cfg.kafka.topic).await?;
    // Kept alive until the demo ends: dropping it stops the in-memory broker.
    let _mock = start_kafka(&mut cfg)?;
    let cassandra = start_cassandra(&mut cfg).await?;
    let cap = ORDERS_PER_PARTITION * cfg.kafka.partitions.max(1) as u64;
    print_banner(&cfg, &opts, cap);

    let health = Arc::new(Health::default());
    health.progress();
    let metrics = crate::ops::start(crate::ops::OpsSettings {
        listen: cfg.http.listen.clone(),
        health: health.clone(),
        sales: Some(Arc::new(olap.clone())),
        max_in_flight: cfg.pipeline.max_in_flight_batches,
    })
    .await?;
    let cfg = Arc::new(cfg);
    let (exit_tx, mut exit_rx) = mpsc::channel(1);
    let stores = Stores {
        cassandra,
        olap: olap.clone(),
    };
    let owner = crate::pipeline::instance_name();
    let pipeline = Pipeline::new(cfg.clone(), stores, health, owner, exit_tx).start();

    let (done_tx, mut done_rx) = oneshot::channel();
    let producer = start_producer(&cfg, &opts, cap, done_tx)?;

    let summary = Summary {
        cfg: cfg.clone(),
        olap: olap.clone(),
        metrics,
        started: Instant::now(),
    };
    let deadline = opts
        .seconds
        .map(|s| summary.started + Duration::from_secs(s));
    let mut ticker = tokio::time::interval(opts.summary_every);
    ticker.tick().await;
    let mut producing = true;
    let failed = loop {
        tokio::select! {
            _ = ticker.tick() => summary.print().await,
            _ = shutdown.requested() => break None,
            _ = sleep_until(deadline) => break None,
            code = exit_rx.recv() => break code,
            acked = &mut done_rx, if producing => {
                producing = false;
                println!(
                    "producer: stopped at its cap of {} orders (the in-memory broker keeps 5 MiB \
                     per partition); the pipeline keeps running",
                    acked.unwrap_or(cap)
                );
            }
        }
    };
    let _ = producer.send(Halt).await;
    if let Some(code) = failed {
        // The supervisor has halted the data path and said why.
        eprintln!("demo: the pipeline stopped (exit {code})");
        return Ok(code);
    }
    finish(
        &cfg,
        &olap,
        &summary,
        pipeline,
        &mut shutdown,
        opts.catch_up,
    )
    .await
}

/// The simulated shop: `cap` orders at the demo's rate, a few invalid on purpose; it says how
/// many were acknowledged on `done` when it reaches the cap.
fn start_producer(
    cfg: &Config,
    opts: &DemoOptions,
    cap: u64,
    done: oneshot::Sender<u64>,
) -> anyhow::Result<Addr<OrderProducer>> {
    Ok(OrderProducer::new(ProducerSettings {
        producer: producer_config(&cfg.kafka, "orderstream-demo-producer").create()?,
        topic: cfg.kafka.topic.clone(),
        rate_per_sec: opts.rate_per_sec,
        count: cap,
        lease: LeaseWindow::exclusive(0),
        done: Some(done),
        health: None,
    })
    .with_invalid_every(opts.invalid_every)
    .start())
}

/// Kafka: librdkafka's mock cluster in this process, with the topics (the mock cluster has no
/// CreateTopics). Points `cfg` at it.
fn start_kafka(
    cfg: &mut Config,
) -> anyhow::Result<MockCluster<'static, rdkafka::producer::DefaultProducerContext>> {
    let mock = MockCluster::new(1).context("starting the in-process Kafka (mock cluster)")?;
    let partitions = cfg.kafka.partitions;
    mock.create_topic(&cfg.kafka.topic, partitions, 1)?;
    mock.create_topic(&cfg.kafka.dead_letter_topic, partitions.clamp(1, 3), 1)?;
    // The mock cluster speaks plaintext: a real cluster's security settings and pass-through
    // properties stay behind.
    let defaults = crate::config::KafkaConfig::default();
    cfg.kafka = crate::config::KafkaConfig {
        brokers: mock.bootstrap_servers(),
        security_protocol: defaults.security_protocol,
        sasl_mechanism: defaults.sasl_mechanism,
        sasl_username: defaults.sasl_username,
        sasl_password: defaults.sasl_password,
        ssl_ca_file: defaults.ssl_ca_file,
        ssl_certificate_file: defaults.ssl_certificate_file,
        ssl_key_file: defaults.ssl_key_file,
        ssl_key_password: defaults.ssl_key_password,
        librdkafka_options: defaults.librdkafka_options,
        ..cfg.kafka.clone()
    };
    Ok(mock)
}

/// Cassandra: the CQL emulator, served from this process, migrated. Points `cfg` at it.
async fn start_cassandra(cfg: &mut Config) -> anyhow::Result<Arc<CassandraStore>> {
    let cql = cql_emulator::start_in_process().await?;
    cfg.cassandra.contact_points = vec![cql.to_string()];
    // The emulator speaks plaintext, without users.
    cfg.cassandra.ssl = false;
    cfg.cassandra.user.clear();
    crate::stores::migrate_cassandra(&cfg.cassandra)
        .await
        .context("cassandra schema")?;
    Ok(Arc::new(CassandraStore::connect(&cfg.cassandra).await?))
}

/// After the producer stopped: lets the pipeline catch up, drains it, prints the last summary
/// and audits both stores. Returns 0 when exact, 4 otherwise.
async fn finish(
    cfg: &Config,
    olap: &OlapStore,
    summary: &Summary,
    pipeline: Addr<Pipeline>,
    shutdown: &mut crate::ops::Shutdown,
    catch_up: Duration,
) -> anyhow::Result<i32> {
    println!("\nstopping: producer stopped; letting the pipeline catch up (Ctrl-C to skip)");
    tokio::select! {
        _ = summary.caught_up(catch_up) => {}
        _ = shutdown.requested() => println!("catching up skipped"),
    }
    let drained = pipeline.send(Drain).await.unwrap_or(false);
    println!(
        "pipeline drained {}",
        if drained {
            "cleanly"
        } else {
            "with batches abandoned at the drain timeout (they replay from the ledger)"
        }
    );
    summary.print().await;

    println!("\nfinal audit (orderstream reconcile: topic vs Cassandra vs SQLite):");
    let report = reconcile::reconcile_with(cfg, olap, reconcile::DEFAULT_READ_TIME).await?;
    print!("{report}");
    Ok(if report.is_exact() { 0 } else { 4 })
}

/// Opens the SQLite store, migrates it and refuses one that holds another run's data.
async fn open_olap(path: Option<&Path>, topic: &str) -> anyhow::Result<OlapStore> {
    if let Some(dir) = path.and_then(Path::parent) {
        if !dir.as_os_str().is_empty() && !dir.is_dir() {
            return Err(crate::config::UsageError(format!(
                "--sqlite {}: the directory {} does not exist",
                path.map(Path::display)
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                dir.display()
            ))
            .into());
        }
    }
    let pool = connect_sqlite(path).await.with_context(|| match path {
        Some(p) => format!("opening sqlite file {}", p.display()),
        None => "opening the in-memory sqlite database".into(),
    })?;
    migrate_sqlite(&pool).await?;
    let olap = OlapStore::Sqlite(pool);
    if let Some(path) = path {
        refuse_foreign_ledger(&olap, topic, path).await?;
    }
    Ok(olap)
}

/// The demo's topic starts empty every run. A file whose ledger is past offset 0, or that holds
/// aggregates, was filled from another topic: applying this run on top would count orders the
/// audit cannot see, so it is refused.
async fn refuse_foreign_ledger(olap: &OlapStore, topic: &str, path: &Path) -> anyhow::Result<()> {
    let (ledger, aggregates) = olap.snapshot(topic).await?;
    let applied: i64 = ledger.values().sum();
    if applied > 0 || !aggregates.is_empty() {
        bail!(
            "sqlite file {} holds another run's data: its ledger has {applied} records of topic \
             `{topic}` applied ({} partitions) and {} daily aggregate rows, but the demo's \
             in-memory topic starts empty, so they cannot match. Give a new file, or delete this one",
            path.display(),
            ledger.len(),
            aggregates.daily.len()
        );
    }
    Ok(())
}

fn print_banner(cfg: &Config, opts: &DemoOptions, cap: u64) {
    let olap = match &opts.sqlite {
        Some(p) => format!("SQLite file {} (kept after the demo)", p.display()),
        None => "SQLite in memory".into(),
    };
    println!("orderstream demo: the whole pipeline in one process, nothing installed");
    println!(
        "  Kafka      librdkafka mock cluster at {} (in memory; {} partitions)",
        cfg.kafka.brokers, cfg.kafka.partitions
    );
    println!(
        "  Cassandra  CQL emulator at {} (in memory)",
        cfg.cassandra.contact_points.join(",")
    );
    println!("  MySQL      {olap}");
    println!("  Everything except a --sqlite file is gone when the demo ends.");
    if !cfg.http.listen.is_empty() {
        println!(
            "  console    http://{}/ (the pipeline, the sales, the dead letters; live until \
             the demo ends)",
            cfg.http.listen
        );
        println!(
            "  metrics    http://{}/metrics (also /healthz, /readyz)",
            cfg.http.listen
        );
    }
    let invalid = match opts.invalid_every {
        0 => "none".to_string(),
        n => format!("1 in {n}"),
    };
    println!(
        "  producer   {} orders/s, at most {cap} orders (the mock broker keeps 5 MiB per \
         partition); invalid on purpose: {invalid}",
        opts.rate_per_sec
    );
    match opts.seconds {
        Some(s) => println!("  runs for {s} s, then audits both stores (Ctrl-C stops sooner)\n"),
        None => println!("  Ctrl-C stops it and audits both stores\n"),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// What the periodic summary reads.
struct Summary {
    cfg: Arc<Config>,
    olap: OlapStore,
    metrics: PrometheusHandle,
    started: Instant,
}

impl Summary {
    /// Records in the topic not yet applied: the high watermarks above the ledger.
    async fn lag(&self) -> Option<i64> {
        let (brokers, topic) = (self.cfg.kafka.brokers.clone(), self.cfg.kafka.topic.clone());
        let marks = tokio::task::spawn_blocking(move || {
            watermarks(&brokers, &topic, Duration::from_secs(5))
        })
        .await
        .ok()?
        .ok()?;
        let ledger = self.olap.read_ledger(&self.cfg.kafka.topic).await.ok()?;
        Some(lag(&marks, &ledger))
    }

    async fn print(&self) {
        let text = self.metrics.render();
        let count = |name| telemetry::total(&text, name) as u64;
        let lag = match self.lag().await {
            Some(n) => grouped(n.max(0) as u64),
            None => "?".into(),
        };
        println!(
            "[{:>4} s] produced {} | stored in Cassandra {} | applied to SQLite {} | dead-lettered {} | lag {lag}",
            self.started.elapsed().as_secs(),
            grouped(count(telemetry::PRODUCER_ORDERS)),
            grouped(count(telemetry::CASSANDRA_ROWS)),
            grouped(count(telemetry::MYSQL_ORDERS)),
            grouped(count(telemetry::DEAD_LETTERS)),
        );
        match self.olap.sales_today_by_category().await {
            Ok(rows) if !rows.is_empty() => {
                let parts: Vec<String> = rows
                    .iter()
                    .map(|(category, sales, profit)| {
                        format!("{category} {} / {}", money(*sales), money(*profit))
                    })
                    .collect();
                println!("         today, sales / profit: {}", parts.join(" | "));
            }
            Ok(_) => {}
            Err(e) => println!("         today: unavailable ({e})"),
        }
    }

    /// Waits until every record in the topic is applied (lag 0), at most `limit`.
    async fn caught_up(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if self.lag().await == Some(0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        println!("catch-up limit of {} s reached", limit.as_secs());
    }
}

/// 1234567 → "1,234,567".
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 1234567.891 → "1,234,567.89".
fn money(amount: f64) -> String {
    let cents = (amount.max(0.0) * 100.0).round() as u64;
    format!("{}.{:02}", grouped(cents / 100), cents % 100)
}

/// Σ over partitions of (high watermark − ledger); a partition without a ledger row counts from
/// its log start.
fn lag(marks: &BTreeMap<i32, (i64, i64)>, ledger: &BTreeMap<i32, i64>) -> i64 {
    marks
        .iter()
        .map(|(p, (low, high))| high - ledger.get(p).copied().unwrap_or(*low).min(*high))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(money(1_234_567.891), "1,234,567.89");
        assert_eq!(money(0.5), "0.50");
    }

    #[test]
    fn lag_counts_what_is_above_the_ledger() {
        let marks = BTreeMap::from([(0, (0, 100)), (1, (0, 50)), (2, (10, 20))]);
        let ledger = BTreeMap::from([(0, 100), (1, 20)]);
        assert_eq!(lag(&marks, &ledger), 30 + 10);
    }

    #[test]
    fn the_demo_defaults_pass_validation_and_fit_the_memory_budget() {
        let overrides: Vec<(String, String)> = DEFAULTS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cfg = Config::load(None, std::iter::empty(), &overrides).unwrap();
        assert_eq!(cfg.kafka.partitions, 16);
        assert!(cfg.worst_case_memory_bytes() <= cfg.pipeline.memory_budget_bytes);
    }

    #[tokio::test]
    async fn a_sqlite_file_from_another_run_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.sqlite");
        let olap = open_olap(Some(&path), "orders").await.unwrap();
        // A fresh file, opened again, is fine.
        drop(olap);
        let olap = open_olap(Some(&path), "orders").await.unwrap();
        olap.claim("orders", 3, "earlier-run", 0).await.unwrap();
        if let OlapStore::Sqlite(pool) = &olap {
            sqlx::query("UPDATE consumer_offsets SET next_offset = 42")
                .execute(pool)
                .await
                .unwrap();
        }
        drop(olap);
        let err = open_olap(Some(&path), "orders").await.unwrap_err();
        let message = err.to_string();
        assert!(message.contains("holds another run's data"), "{message}");
        assert!(
            message.contains("42 records of topic `orders`"),
            "{message}"
        );
    }
}
