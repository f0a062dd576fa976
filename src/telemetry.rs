//! Telemetry: every metric name in one place, the Prometheus recorder and the operations HTTP
//! port (`/metrics`, `/healthz`, `/readyz`).
//!
//! Names follow `orderstream_<subsystem>_<name>_<unit>[_total]`; labels stay low-cardinality.
//! Every counter is registered at zero for its known labels at startup, so dashboards see a
//! series before the first event.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::kafka::AssignmentChange;
use crate::order::Reason;

pub const CONSUMER_RECORDS: &str = "orderstream_consumer_records_total";
pub const CONSUMER_REBALANCES: &str = "orderstream_consumer_rebalances_total";
pub const CONSUMER_PAUSED: &str = "orderstream_consumer_paused_partitions";
pub const CONSUMER_COMMIT_FAILURES: &str = "orderstream_consumer_commit_failures_total";
pub const BATCHES: &str = "orderstream_batcher_batches_total";
pub const BATCH_SIZE: &str = "orderstream_batcher_batch_size_records";
pub const IN_FLIGHT: &str = "orderstream_pipeline_batches_in_flight";
pub const CASSANDRA_ROWS: &str = "orderstream_cassandra_rows_written_total";
pub const CASSANDRA_RETRIES: &str = "orderstream_cassandra_retries_total";
pub const CASSANDRA_LATENCY: &str = "orderstream_cassandra_batch_write_seconds";
pub const MYSQL_TXNS: &str = "orderstream_mysql_transactions_total";
pub const MYSQL_RETRIES: &str = "orderstream_mysql_retries_total";
pub const MYSQL_LATENCY: &str = "orderstream_mysql_transaction_seconds";
pub const MYSQL_ORDERS: &str = "orderstream_mysql_orders_applied_total";
pub const MYSQL_REPLAYED: &str = "orderstream_mysql_records_replayed_total";
pub const MYSQL_FENCED: &str = "orderstream_mysql_fenced_batches_total";
pub const DEAD_LETTERS: &str = "orderstream_deadletter_records_total";
pub const PRODUCER_ORDERS: &str = "orderstream_producer_orders_total";
pub const PRODUCER_ERRORS: &str = "orderstream_producer_errors_total";
pub const END_TO_END: &str = "orderstream_pipeline_end_to_end_latency_seconds";
pub const RESTARTS: &str = "orderstream_supervisor_restarts_total";
pub const ACTOR_UP: &str = "orderstream_actor_up";
pub const DEPENDENCY_UP: &str = "orderstream_dependency_up";
pub const CONSUMER_REJOINS: &str = "orderstream_consumer_rejoins_total";
pub const CONSUMER_RELEASED: &str = "orderstream_consumer_released_partitions_total";
pub const PARTITION_LAG: &str = "orderstream_partition_lag_records";
pub const PARTITION_PROGRESS: &str = "orderstream_partition_last_progress_timestamp_seconds";
pub const PARTITION_STUCK: &str = "orderstream_partition_stuck";
pub const WATCHDOG_STUCK: &str = "orderstream_watchdog_stuck_partitions_total";
pub const PROCESS_MEMORY: &str = "orderstream_process_resident_memory_bytes";
pub const PROCESS_CPU: &str = "orderstream_process_cpu_seconds_total";

/// The data-path actors, as the `actor` label spells them.
pub const ACTORS: [&str; 6] = [
    "consumer",
    "batcher",
    "cassandra_writer",
    "mysql_aggregator",
    "dead_letters",
    "producer",
];

const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const SIZE_BUCKETS: [f64; 10] = [
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// Installs the recorder and describes every metric. Call once per process.
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_records".into()), &SIZE_BUCKETS))
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    Ok(handle)
}

fn describe() {
    describe_counter!(CONSUMER_RECORDS, "Records read from the orders topic.");
    describe_counter!(
        CONSUMER_REBALANCES,
        "Assignment changes seen by this member, by kind."
    );
    describe_gauge!(
        CONSUMER_PAUSED,
        "Partitions currently paused (backpressure or claim pending)."
    );
    describe_counter!(
        CONSUMER_COMMIT_FAILURES,
        "Failed Kafka offset commits (a hint only; the ledger is the truth)."
    );
    describe_counter!(BATCHES, "Micro-batches cut, by trigger.");
    describe_histogram!(BATCH_SIZE, "Records per micro-batch.");
    describe_gauge!(IN_FLIGHT, "Batches cut but not yet committed to MySQL.");
    describe_counter!(
        CASSANDRA_ROWS,
        "Orders written to Cassandra (replays included)."
    );
    describe_counter!(
        CASSANDRA_RETRIES,
        "Cassandra inserts retried after an error."
    );
    describe_histogram!(
        CASSANDRA_LATENCY,
        Unit::Seconds,
        "Time to write one batch's rows to Cassandra."
    );
    describe_counter!(MYSQL_TXNS, "Batch transactions, by outcome.");
    describe_counter!(
        MYSQL_RETRIES,
        "Batch transactions retried after a transient error."
    );
    describe_histogram!(
        MYSQL_LATENCY,
        Unit::Seconds,
        "Time of one batch transaction, retries included."
    );
    describe_counter!(MYSQL_ORDERS, "Orders folded into the aggregates.");
    describe_counter!(
        MYSQL_REPLAYED,
        "Records skipped because the ledger was past them."
    );
    describe_counter!(
        MYSQL_FENCED,
        "Batches with records of a partition this instance no longer owns."
    );
    describe_counter!(
        DEAD_LETTERS,
        "Records published to the dead-letter topic, by reason."
    );
    describe_counter!(
        PRODUCER_ORDERS,
        "Simulated orders acknowledged by the broker."
    );
    describe_counter!(
        PRODUCER_ERRORS,
        "Simulated orders the broker failed to acknowledge."
    );
    describe_histogram!(
        END_TO_END,
        Unit::Seconds,
        "From an order's created_at to its MySQL commit."
    );
    describe_counter!(
        RESTARTS,
        "Data-path restarts after an unexpected failure, by actor."
    );
    describe_gauge!(ACTOR_UP, "1 while the actor runs, by actor.");
    describe_gauge!(
        DEPENDENCY_UP,
        "1 while the store answered its last probe (every 2 s), by dependency."
    );
    describe_counter!(
        CONSUMER_REJOINS,
        "Times this instance left the consumer group and joined again as a new member, by reason."
    );
    describe_counter!(
        CONSUMER_RELEASED,
        "Partitions released because another member claimed them in the ledger."
    );
    describe_gauge!(
        PARTITION_LAG,
        "Records waiting between the ledger and the log end, by partition (every partition of \
         the topic, whoever holds it)."
    );
    describe_gauge!(
        PARTITION_PROGRESS,
        Unit::Seconds,
        "Unix time the partition's ledger last advanced or was last seen at the log end."
    );
    describe_gauge!(
        PARTITION_STUCK,
        "1 while records wait on the partition and its ledger has not moved for \
         pipeline.stuck_after_ms."
    );
    describe_counter!(
        WATCHDOG_STUCK,
        "Times the watchdog found a partition stuck."
    );
    describe_gauge!(
        PROCESS_MEMORY,
        Unit::Bytes,
        "Resident memory of this process."
    );
    describe_counter!(
        PROCESS_CPU,
        Unit::Seconds,
        "CPU time (user + system) used by this process."
    );

    for reason in Reason::ALL {
        counter!(DEAD_LETTERS, "reason" => reason.as_str()).absolute(0);
    }
    counter!(CONSUMER_REJOINS, "reason" => REJOIN_STUCK).absolute(0);
    for kind in ["assign", "revoke"] {
        counter!(CONSUMER_REBALANCES, "kind" => kind).absolute(0);
    }
    for trigger in ["count", "bytes", "time", "drain"] {
        counter!(BATCHES, "trigger" => trigger).absolute(0);
    }
    for outcome in ["committed", "empty"] {
        counter!(MYSQL_TXNS, "outcome" => outcome).absolute(0);
    }
    for actor in ACTORS {
        counter!(RESTARTS, "actor" => actor).absolute(0);
    }
    for name in [
        CASSANDRA_ROWS,
        CASSANDRA_RETRIES,
        MYSQL_RETRIES,
        MYSQL_ORDERS,
        MYSQL_REPLAYED,
        MYSQL_FENCED,
        PRODUCER_ORDERS,
        PRODUCER_ERRORS,
        CONSUMER_COMMIT_FAILURES,
        CONSUMER_RECORDS,
        CONSUMER_RELEASED,
        WATCHDOG_STUCK,
    ] {
        counter!(name).absolute(0);
    }
}

pub fn rebalance(change: &AssignmentChange) {
    let kind = match change {
        AssignmentChange::Assigned(_) => "assign",
        AssignmentChange::Revoked(_) => "revoke",
    };
    counter!(CONSUMER_REBALANCES, "kind" => kind).increment(1);
}

/// The `reason` of a rejoin for stuck partitions that this instance did not hold.
pub const REJOIN_STUCK: &str = "stuck_unheld";

/// One partition as the watchdog last saw it.
pub fn partition_progress(partition: i32, lag: i64, progressed_unix: f64, stuck: bool) {
    let label = partition.to_string();
    gauge!(PARTITION_LAG, "partition" => label.clone()).set(lag as f64);
    gauge!(PARTITION_PROGRESS, "partition" => label.clone()).set(progressed_unix);
    gauge!(PARTITION_STUCK, "partition" => label).set(if stuck { 1.0 } else { 0.0 });
}

/// Every few seconds: samples resident memory and CPU time from /proc (Linux only; elsewhere
/// the series stay absent), and runs the recorder's upkeep. The upkeep folds histogram samples
/// into their buckets; without it every sample is kept until the next scrape, so an instance
/// nobody scrapes would grow by 8 bytes per order, without bound.
pub async fn sample_process(handle: PrometheusHandle) {
    loop {
        handle.run_upkeep();
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
            if let Some(pages) = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
            {
                gauge!(PROCESS_MEMORY).set(pages * 4096.0);
            }
        }
        if let Some(seconds) = cpu_seconds("self") {
            counter!(PROCESS_CPU).absolute(seconds as u64);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// CPU time (user + system, seconds) a process has used, from `/proc/<pid>/stat`; `pid` may be
/// `self`. None off Linux or when the process is gone. (The benchmark uses it for the servers.)
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): utime is the 14th field
    // overall, stime the 15th, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    Some(ticks as f64 / 100.0)
}

pub fn batch_cut(trigger: &'static str, records: usize) {
    counter!(BATCHES, "trigger" => trigger).increment(1);
    histogram!(BATCH_SIZE).record(records as f64);
}

pub fn dead_letter(reason: Reason) {
    counter!(DEAD_LETTERS, "reason" => reason.as_str()).increment(1);
}

pub fn in_flight(n: usize) {
    gauge!(IN_FLIGHT).set(n as f64);
}

pub fn dependency_up(dependency: &'static str, up: bool) {
    gauge!(DEPENDENCY_UP, "dependency" => dependency).set(if up { 1.0 } else { 0.0 });
}

pub fn actor_up(actor: &'static str, up: bool) {
    gauge!(ACTOR_UP, "actor" => actor).set(if up { 1.0 } else { 0.0 });
}

pub fn seconds(name: &'static str, d: Duration) {
    histogram!(name).record(d.as_secs_f64());
}

/// Health shared between the actors and the HTTP port.
#[derive(Debug, Default)]
pub struct Health {
    /// Unix ms of the last sign of progress (a poll, a commit); `/healthz` fails when stale.
    pub last_progress_ms: AtomicI64,
    /// The data path runs: the group is joined and every assigned partition is claimed.
    pub ready: AtomicBool,
    /// Both stores answered their last probe.
    pub stores_reachable: AtomicBool,
    /// Why the progress watchdog holds readiness back (see `watchdog.rs`).
    stuck: Mutex<Option<String>>,
    /// The partitions this instance's consumer holds (assigned and claimed, or being claimed).
    held: Mutex<BTreeSet<i32>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: a panic elsewhere cannot leave it half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Health {
    pub fn progress(&self) {
        self.last_progress_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
    pub fn set_stores_reachable(&self, reachable: bool) {
        self.stores_reachable.store(reachable, Ordering::Relaxed);
    }
    pub fn set_stuck(&self, reason: Option<String>) {
        *locked(&self.stuck) = reason;
    }
    pub fn set_held(&self, partitions: impl IntoIterator<Item = i32>) {
        *locked(&self.held) = partitions.into_iter().collect();
    }
    pub fn held(&self) -> BTreeSet<i32> {
        locked(&self.held).clone()
    }
    /// What `/readyz` answers: the data path runs, both stores answer and no partition this
    /// instance should serve is stuck; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("the consumer is joining the group or claiming its partitions".into());
        }
        if !self.stores_reachable.load(Ordering::Relaxed) {
            return Err("a store does not answer (see orderstream_dependency_up)".into());
        }
        match locked(&self.stuck).as_ref() {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }
    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }
    fn alive(&self, stale_after: Duration) -> bool {
        let last = self.last_progress_ms.load(Ordering::Relaxed);
        chrono::Utc::now().timestamp_millis() - last <= stale_after.as_millis() as i64
    }
}

/// Serves the operations port until the process ends. A deliberately tiny HTTP/1.0 responder:
/// three GET routes do not justify a web framework.
pub async fn serve_http(listener: TcpListener, handle: PrometheusHandle, health: Arc<Health>) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: keep serving once it passes.
                tracing::warn!(error = %e, "operations port: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
            {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, content_type, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", handle.render()),
                "/healthz" if health.alive(Duration::from_secs(30)) => {
                    ("200 OK", "text/plain", "ok\n".into())
                }
                "/healthz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "no progress\n".into(),
                ),
                "/readyz" => match health.readiness() {
                    Ok(()) => ("200 OK", "text/plain", "ready\n".into()),
                    Err(reason) => (
                        "503 Service Unavailable",
                        "text/plain",
                        format!("not ready: {reason}\n"),
                    ),
                },
                _ => ("404 Not Found", "text/plain", "not found\n".into()),
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}

/// The sum of every series of metric `name` in a rendered scrape (the demo's summary reads its
/// own counters this way, exactly as Prometheus would see them).
pub fn total(rendered: &str, name: &str) -> f64 {
    rendered
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod total_tests {
    #[test]
    fn sums_every_series_of_one_metric_only() {
        let text = "# HELP a_total x\n# TYPE a_total counter\na_total{reason=\"x\"} 2\n\
                    a_total{reason=\"y\"} 3\na_total_other 7\nb 1\n";
        assert_eq!(super::total(text, "a_total"), 5.0);
        assert_eq!(super::total(text, "b"), 1.0);
        assert_eq!(super::total(text, "c"), 0.0);
    }
}
