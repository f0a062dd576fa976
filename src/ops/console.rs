//! What the web console shows, as JSON for `/api/…`.
//!
//! The pipeline's figures are read from this process's own metrics, the same numbers Prometheus
//! scrapes and Grafana draws, sampled once a second into a few minutes of history. The sales
//! come from the OLAP store through a [`SalesSource`] (the stores implement it; this layer
//! knows only plain rows). The last dead letters are kept here as they are published. Nothing
//! here holds a payload, a secret or SQL text.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::{json, Value};

use super::health::{locked, Health};
use super::telemetry;

/// Samples kept: one a second for five minutes.
const HISTORY: usize = 300;
/// Dead letters remembered for the console.
const RECENT_DEAD_LETTERS: usize = 20;
/// How long the console waits for the OLAP store before showing it unreachable.
const SALES_TIMEOUT: Duration = Duration::from_secs(3);

/// Today's sales of one category on one platform.
#[derive(Debug, Clone, Serialize)]
pub struct SalesRow {
    pub category: String,
    pub platform: String,
    pub orders: f64,
    pub sales: f64,
    pub profit: f64,
}

/// The sales of one UTC minute.
#[derive(Debug, Clone, Serialize)]
pub struct MinuteRow {
    /// Unix seconds of the minute's start.
    pub minute: i64,
    pub orders: f64,
    pub sales: f64,
    pub profit: f64,
}

/// What the console asks the OLAP store.
pub type SalesFuture<'a> =
    Pin<Box<dyn Future<Output = Result<(Vec<SalesRow>, Vec<MinuteRow>), String>> + Send + 'a>>;

/// A store that can say today's sales: by category and platform, and per minute for the last
/// `minutes` minutes.
pub trait SalesSource: Send + Sync {
    fn sales(&self, minutes: u32) -> SalesFuture<'_>;
}

/// A dead letter as the console lists it: never the payload.
#[derive(Debug, Clone, Serialize)]
struct SeenDeadLetter {
    reason: &'static str,
    partition: i32,
    offset: i64,
    unix_ms: i64,
}

static RECENT: Mutex<VecDeque<SeenDeadLetter>> = Mutex::new(VecDeque::new());

/// Remembers a published dead letter for the console.
pub(crate) fn remember_dead_letter(reason: &'static str, partition: i32, offset: i64) {
    let mut recent = locked(&RECENT);
    if recent.len() == RECENT_DEAD_LETTERS {
        recent.pop_front();
    }
    recent.push_back(SeenDeadLetter {
        reason,
        partition,
        offset,
        unix_ms: chrono::Utc::now().timestamp_millis(),
    });
}

/// One scrape of this process's metrics: (name, labels, value) per series.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    fn parse(text: &str) -> Self {
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value: f64 = value.parse().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, labels_of(rest.trim_end_matches('}'))),
                    None => (series, BTreeMap::new()),
                };
                Some((name.to_owned(), labels, value))
            })
            .collect();
        Self(series)
    }

    fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| v)
            .sum()
    }

    /// The series of `name` by the value of `label`.
    fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (n, labels, v) in &self.0 {
            if n == name {
                if let Some(key) = labels.get(label) {
                    *out.entry(key.clone()).or_default() += v;
                }
            }
        }
        out
    }
}

/// `a="x",b="y"` → {a: x, b: y}. Label values here never hold quotes or commas.
fn labels_of(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect()
}

/// The counters the pipeline section draws, at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    unix_s: f64,
    produced: f64,
    consumed: f64,
    stored: f64,
    applied: f64,
    dead_lettered: f64,
    lag: f64,
    cpu_seconds: f64,
}

impl Sample {
    fn of(scrape: &Scrape) -> Self {
        Self {
            unix_s: chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
            produced: scrape.sum(telemetry::PRODUCER_ORDERS),
            consumed: scrape.sum(telemetry::CONSUMER_RECORDS),
            stored: scrape.sum(telemetry::CASSANDRA_ROWS),
            applied: scrape.sum(telemetry::MYSQL_ORDERS),
            dead_lettered: scrape.sum(telemetry::DEAD_LETTERS),
            lag: scrape.sum(telemetry::PARTITION_LAG),
            cpu_seconds: scrape.sum("orderstream_process_cpu_seconds_total"),
        }
    }
}

/// The console's state: the metrics handle, health, the history and the sales source.
pub struct Console {
    handle: PrometheusHandle,
    health: Arc<Health>,
    sales: Option<Arc<dyn SalesSource>>,
    /// Where the sales queries run: the process's main runtime, whose pools they use.
    runtime: tokio::runtime::Handle,
    max_in_flight: usize,
    history: Mutex<VecDeque<Sample>>,
}

impl Console {
    pub(crate) fn new(
        handle: PrometheusHandle,
        health: Arc<Health>,
        sales: Option<Arc<dyn SalesSource>>,
        max_in_flight: usize,
    ) -> Self {
        Self {
            handle,
            health,
            sales,
            runtime: tokio::runtime::Handle::current(),
            max_in_flight,
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
        }
    }

    /// Takes one sample a second, for as long as the process runs.
    pub(crate) async fn sample_forever(self: Arc<Self>) {
        loop {
            let sample = Sample::of(&Scrape::parse(&self.handle.render()));
            {
                let mut history = locked(&self.history);
                if history.len() == HISTORY {
                    history.pop_front();
                }
                history.push_back(sample);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// `/api/pipeline`: the actor chain with each stage's rate, flow control, partitions,
    /// latency, restarts, stores and the process.
    pub(crate) fn pipeline(&self) -> Value {
        let scrape = Scrape::parse(&self.handle.render());
        let history: Vec<Sample> = locked(&self.history).iter().copied().collect();
        let rate = |f: fn(&Sample) -> f64| rate_over(&history, f, 5);
        let stages = json!([
            {"stage": "produced", "total": scrape.sum(telemetry::PRODUCER_ORDERS), "per_second": rate(|s| s.produced)},
            {"stage": "consumed", "total": scrape.sum(telemetry::CONSUMER_RECORDS), "per_second": rate(|s| s.consumed)},
            {"stage": "stored in Cassandra", "total": scrape.sum(telemetry::CASSANDRA_ROWS), "per_second": rate(|s| s.stored)},
            {"stage": "applied to the OLAP store", "total": scrape.sum(telemetry::MYSQL_ORDERS), "per_second": rate(|s| s.applied)},
            {"stage": "dead-lettered", "total": scrape.sum(telemetry::DEAD_LETTERS), "per_second": rate(|s| s.dead_lettered)},
        ]);
        let lag = scrape.by(telemetry::PARTITION_LAG, "partition");
        let progress = scrape.by(telemetry::PARTITION_PROGRESS, "partition");
        let stuck = scrape.by(telemetry::PARTITION_STUCK, "partition");
        let held = self.health.held();
        let mut partitions: Vec<Value> = lag
            .iter()
            .map(|(p, lag)| {
                json!({
                    "partition": p.parse::<i32>().unwrap_or(-1),
                    "lag": lag,
                    "last_progress_unix_s": progress.get(p).copied().unwrap_or(0.0),
                    "stuck": stuck.get(p).copied().unwrap_or(0.0) > 0.0,
                    "held_here": p.parse::<i32>().is_ok_and(|p| held.contains(&p)),
                })
            })
            .collect();
        partitions.sort_by_key(|v| v["partition"].as_i64());
        let (p50, p99) = latency_quantiles(&scrape);
        let readiness = self.health.readiness();
        json!({
            "ready": readiness.is_ok(),
            "not_ready_because": readiness.err(),
            "stages": stages,
            "in_flight_batches": scrape.sum(telemetry::IN_FLIGHT),
            "max_in_flight_batches": self.max_in_flight,
            "paused_partitions": scrape.sum(telemetry::CONSUMER_PAUSED),
            "partitions": partitions,
            "latency_seconds": {"p50": p50, "p99": p99},
            "restarts": scrape.sum(telemetry::RESTARTS),
            "last_failure": self.health.last_failure(),
            "stores": scrape.by(telemetry::DEPENDENCY_UP, "dependency")
                .into_iter()
                .map(|(store, up)| json!({"store": store, "reachable": up > 0.0}))
                .collect::<Vec<_>>(),
            "memory_bytes": scrape.sum("orderstream_process_resident_memory_bytes"),
            "cpu_cores": rate(|s| s.cpu_seconds),
            "history": history_json(&history),
        })
    }

    /// `/api/sales`: today's figures from the OLAP store, or `reachable: false`.
    pub(crate) async fn sales(&self) -> Value {
        let Some(source) = self.sales.clone() else {
            return json!({"reachable": false, "error": "no OLAP store in this process"});
        };
        let query = self
            .runtime
            .spawn(async move { tokio::time::timeout(SALES_TIMEOUT, source.sales(30)).await });
        match query.await {
            Ok(Ok(Ok((rows, minutes)))) => sales_json(&rows, &minutes),
            Ok(Ok(Err(error))) => json!({"reachable": false, "error": error}),
            Ok(Err(_)) => json!({"reachable": false, "error": "the store did not answer in time"}),
            Err(_) => json!({"reachable": false, "error": "the query task failed"}),
        }
    }

    /// `/api/dead-letters`: counts by reason and the most recent few.
    pub(crate) fn dead_letters(&self) -> Value {
        let scrape = Scrape::parse(&self.handle.render());
        let recent: Vec<SeenDeadLetter> = locked(&RECENT).iter().rev().cloned().collect();
        json!({
            "by_reason": scrape.by(telemetry::DEAD_LETTERS, "reason"),
            "recent": recent,
        })
    }
}

/// Per-second rate of a counter over the last `seconds` samples.
fn rate_over(history: &[Sample], f: fn(&Sample) -> f64, seconds: usize) -> f64 {
    let (Some(last), Some(first)) = (
        history.last(),
        history.get(history.len().saturating_sub(seconds + 1)),
    ) else {
        return 0.0;
    };
    let dt = last.unix_s - first.unix_s;
    if dt <= 0.0 {
        return 0.0;
    }
    ((f(last) - f(first)) / dt).max(0.0)
}

/// The rate series of the last minutes: one point a second.
fn history_json(history: &[Sample]) -> Value {
    let pairs = history.windows(2);
    let per_second = |f: fn(&Sample) -> f64| -> Vec<f64> {
        history
            .windows(2)
            .map(|w| {
                let dt = (w[1].unix_s - w[0].unix_s).max(0.001);
                ((f(&w[1]) - f(&w[0])) / dt).max(0.0)
            })
            .collect()
    };
    json!({
        "unix_s": pairs.map(|w| w[1].unix_s).collect::<Vec<_>>(),
        "produced": per_second(|s| s.produced),
        "consumed": per_second(|s| s.consumed),
        "stored": per_second(|s| s.stored),
        "applied": per_second(|s| s.applied),
        "dead_lettered": per_second(|s| s.dead_lettered),
        "lag": history.iter().skip(1).map(|s| s.lag).collect::<Vec<_>>(),
    })
}

/// p50 and p99 of the end-to-end latency since start, interpolated in its buckets (seconds).
fn latency_quantiles(scrape: &Scrape) -> (Option<f64>, Option<f64>) {
    let bucket = format!("{}_bucket", telemetry::END_TO_END);
    let mut buckets: Vec<(f64, f64)> = scrape
        .0
        .iter()
        .filter(|(n, _, _)| *n == bucket)
        .filter_map(|(_, labels, count)| {
            let le = labels.get("le")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, *count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total <= 0.0 {
        return (None, None);
    }
    let quantile = |q: f64| {
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let share = (rank - lower.1) / (count - lower.1).max(1e-9);
                return Some(lower.0 + (le - lower.0) * share);
            }
            lower = (le, count);
        }
        None
    };
    (quantile(0.5), quantile(0.99))
}

/// Totals, by category, by platform, the category × platform table and the minutes.
fn sales_json(rows: &[SalesRow], minutes: &[MinuteRow]) -> Value {
    let sum = |f: fn(&SalesRow) -> f64| rows.iter().map(f).sum::<f64>();
    let (sales, profit, orders) = (sum(|r| r.sales), sum(|r| r.profit), sum(|r| r.orders));
    let group = |key: fn(&SalesRow) -> &str| {
        let mut out: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new();
        for r in rows {
            let e = out.entry(key(r)).or_default();
            e.0 += r.orders;
            e.1 += r.sales;
            e.2 += r.profit;
        }
        out.into_iter()
            .map(|(k, (o, s, p))| json!({"name": k, "orders": o, "sales": round2(s), "profit": round2(p)}))
            .collect::<Vec<_>>()
    };
    json!({
        "reachable": true,
        "today": {
            "sales": round2(sales),
            "profit": round2(profit),
            "orders": orders,
            "margin": if sales > 0.0 { profit / sales } else { 0.0 },
        },
        "by_category": group(|r| r.category.as_str()),
        "by_platform": group(|r| r.platform.as_str()),
        "table": rows,
        "per_minute": minutes,
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_is_read_by_name_and_label() {
        let text = "# HELP a x\na_total{reason=\"x\"} 2\na_total{reason=\"y\"} 3\nb 1.5\n";
        let scrape = Scrape::parse(text);
        assert_eq!(scrape.sum("a_total"), 5.0);
        assert_eq!(scrape.sum("b"), 1.5);
        assert_eq!(scrape.by("a_total", "reason")["y"], 3.0);
    }

    #[test]
    fn latency_quantiles_interpolate_in_the_buckets() {
        let name = telemetry::END_TO_END;
        let text = format!(
            "{name}_bucket{{le=\"0.1\"}} 50\n{name}_bucket{{le=\"0.2\"}} 100\n{name}_bucket{{le=\"+Inf\"}} 100\n"
        );
        let (p50, p99) = latency_quantiles(&Scrape::parse(&text));
        assert!((p50.unwrap() - 0.1).abs() < 1e-9, "{p50:?}");
        assert!((p99.unwrap() - 0.198).abs() < 1e-9, "{p99:?}");
    }

    #[test]
    fn sales_are_totalled_and_grouped() {
        let row = |c: &str, p: &str, s: f64| SalesRow {
            category: c.into(),
            platform: p.into(),
            orders: 1.0,
            sales: s,
            profit: s / 4.0,
        };
        let v = sales_json(
            &[
                row("a", "web", 10.0),
                row("a", "app", 30.0),
                row("b", "web", 60.0),
            ],
            &[],
        );
        assert_eq!(v["today"]["sales"], 100.0);
        assert_eq!(v["today"]["orders"], 3.0);
        assert_eq!(v["today"]["margin"], 0.25);
        assert_eq!(v["by_category"][0]["sales"], 40.0);
        assert_eq!(v["by_platform"][1]["sales"], 70.0);
    }
}
