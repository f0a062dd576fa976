//! Every metric name in one place, the Prometheus recorder, and the events that move them.
//!
//! Names follow `orderstream_<subsystem>_<name>_<unit>[_total]`; labels stay low-cardinality.
//! Every counter is registered at zero for its known labels at startup, so dashboards see a
//! series before the first event.

use std::time::Duration;

use metrics::{counter, gauge, histogram, KeyName, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub(crate) const CONSUMER_RECORDS: &str = "orderstream_consumer_records_total";
const CONSUMER_REBALANCES: &str = "orderstream_consumer_rebalances_total";
pub(crate) const CONSUMER_PAUSED: &str = "orderstream_consumer_paused_partitions";
const CONSUMER_COMMIT_FAILURES: &str = "orderstream_consumer_commit_failures_total";
const BATCHES: &str = "orderstream_batcher_batches_total";
const BATCH_SIZE: &str = "orderstream_batcher_batch_size_records";
pub(crate) const IN_FLIGHT: &str = "orderstream_pipeline_batches_in_flight";
pub(crate) const CASSANDRA_ROWS: &str = "orderstream_cassandra_rows_written_total";
const CASSANDRA_RETRIES: &str = "orderstream_cassandra_retries_total";
pub(crate) const CASSANDRA_LATENCY: &str = "orderstream_cassandra_batch_write_seconds";
pub(crate) const MYSQL_TXNS: &str = "orderstream_mysql_transactions_total";
const MYSQL_RETRIES: &str = "orderstream_mysql_retries_total";
pub(crate) const MYSQL_LATENCY: &str = "orderstream_mysql_transaction_seconds";
pub(crate) const MYSQL_ORDERS: &str = "orderstream_mysql_orders_applied_total";
pub(crate) const MYSQL_REPLAYED: &str = "orderstream_mysql_records_replayed_total";
pub(crate) const MYSQL_FENCED: &str = "orderstream_mysql_fenced_batches_total";
pub(crate) const DEAD_LETTERS: &str = "orderstream_deadletter_records_total";
pub(crate) const PRODUCER_ORDERS: &str = "orderstream_producer_orders_total";
pub(crate) const PRODUCER_ERRORS: &str = "orderstream_producer_errors_total";
pub(crate) const END_TO_END: &str = "orderstream_pipeline_end_to_end_latency_seconds";
pub(crate) const RESTARTS: &str = "orderstream_supervisor_restarts_total";
const ACTOR_UP: &str = "orderstream_actor_up";
pub(crate) const DEPENDENCY_UP: &str = "orderstream_dependency_up";
const CONSUMER_REJOINS: &str = "orderstream_consumer_rejoins_total";
const CONSUMER_RELEASED: &str = "orderstream_consumer_released_partitions_total";
pub(crate) const PARTITION_LAG: &str = "orderstream_partition_lag_records";
pub(crate) const PARTITION_PROGRESS: &str = "orderstream_partition_last_progress_timestamp_seconds";
pub(crate) const PARTITION_STUCK: &str = "orderstream_partition_stuck";
const WATCHDOG_STUCK: &str = "orderstream_watchdog_stuck_partitions_total";

/// The data-path actors, as the `actor` label spells them.
const ACTORS: [&str; 6] = [
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

/// Buckets of the end-to-end latency, fine enough to state a p99 between 5 ms and 0.5 s within
/// a few milliseconds: 5 ms steps to 0.1 s, 20 ms steps to 0.5 s, then coarser.
fn end_to_end_buckets() -> Vec<f64> {
    let fine = (1..=20).map(|i| f64::from(i) * 0.005);
    let medium = (1..=20).map(|i| 0.1 + f64::from(i) * 0.02);
    let coarse = [0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0];
    // Rounded to the microsecond, so that the `le` labels read as written.
    fine.chain(medium)
        .map(|b| (b * 1e6).round() / 1e6)
        .chain(coarse)
        .collect()
}

/// Installs the recorder and describes every metric. Call once per process, then register the
/// dead-letter reasons ([`dead_letter_reasons`]).
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(END_TO_END.into()), &end_to_end_buckets())
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        })
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_records".into()), &SIZE_BUCKETS))
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    Ok(handle)
}

/// Every metric: name, kind, unit and help text (what `# HELP` says).
const DESCRIBED: &[(&str, Kind, Option<Unit>, &str)] = &[
    (CONSUMER_RECORDS, Kind::Counter, None, "Records read from the orders topic."),
    (CONSUMER_REBALANCES, Kind::Counter, None, "Assignment changes seen by this member, by kind."),
    (CONSUMER_PAUSED, Kind::Gauge, None, "Partitions currently paused (backpressure or claim pending)."),
    (CONSUMER_COMMIT_FAILURES, Kind::Counter, None, "Failed Kafka offset commits (a hint only; the ledger is the truth)."),
    (BATCHES, Kind::Counter, None, "Micro-batches cut, by trigger."),
    (BATCH_SIZE, Kind::Histogram, None, "Records per micro-batch."),
    (IN_FLIGHT, Kind::Gauge, None, "Batches cut but not yet committed to MySQL."),
    (CASSANDRA_ROWS, Kind::Counter, None, "Orders written to Cassandra (replays included)."),
    (CASSANDRA_RETRIES, Kind::Counter, None, "Cassandra inserts retried after an error."),
    (CASSANDRA_LATENCY, Kind::Histogram, Some(Unit::Seconds), "Time to write one batch's rows to Cassandra."),
    (MYSQL_TXNS, Kind::Counter, None, "Batch transactions, by outcome."),
    (MYSQL_RETRIES, Kind::Counter, None, "Batch transactions retried after a transient error."),
    (MYSQL_LATENCY, Kind::Histogram, Some(Unit::Seconds), "Time of one batch transaction, retries included."),
    (MYSQL_ORDERS, Kind::Counter, None, "Orders folded into the aggregates."),
    (MYSQL_REPLAYED, Kind::Counter, None, "Records skipped because the ledger was past them."),
    (MYSQL_FENCED, Kind::Counter, None, "Batches with records of a partition this instance no longer owns."),
    (DEAD_LETTERS, Kind::Counter, None, "Records published to the dead-letter topic, by reason."),
    (PRODUCER_ORDERS, Kind::Counter, None, "Simulated orders acknowledged by the broker."),
    (PRODUCER_ERRORS, Kind::Counter, None, "Simulated orders the broker failed to acknowledge."),
    (END_TO_END, Kind::Histogram, Some(Unit::Seconds), "From an order's created_at to its MySQL commit."),
    (RESTARTS, Kind::Counter, None, "Data-path restarts after an unexpected failure, by actor."),
    (ACTOR_UP, Kind::Gauge, None, "1 while the actor runs, by actor."),
    (DEPENDENCY_UP, Kind::Gauge, None, "1 while the dependency (kafka, cassandra, mysql) answered its last probe (every 2 s), by dependency."),
    (CONSUMER_REJOINS, Kind::Counter, None, "Times this instance left the consumer group and joined again as a new member, by reason."),
    (CONSUMER_RELEASED, Kind::Counter, None, "Partitions released because another member claimed them in the ledger."),
    (PARTITION_LAG, Kind::Gauge, None, "Records waiting between the ledger and the log end, by partition (every partition of the topic, whoever holds it)."),
    (PARTITION_PROGRESS, Kind::Gauge, Some(Unit::Seconds), "Unix time the partition's ledger last advanced or was last seen at the log end."),
    (PARTITION_STUCK, Kind::Gauge, None, "1 while records wait on the partition and its ledger has not moved for pipeline.stuck_after_ms."),
    (WATCHDOG_STUCK, Kind::Counter, None, "Times the watchdog found a partition stuck."),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

fn describe() {
    metrics::with_recorder(|recorder| {
        for &(name, kind, unit, help) in DESCRIBED {
            let (name, help) = (KeyName::from(name), SharedString::from(help));
            match kind {
                Kind::Counter => recorder.describe_counter(name, unit, help),
                Kind::Gauge => recorder.describe_gauge(name, unit, help),
                Kind::Histogram => recorder.describe_histogram(name, unit, help),
            }
        }
    });
    register_at_zero();
}

/// Every counter at zero for its known labels, so dashboards see a series before the first
/// event.
fn register_at_zero() {
    counter!(CONSUMER_REJOINS, "reason" => REJOIN_STUCK).absolute(0);
    for kind in ["assign", "revoke"] {
        counter!(CONSUMER_REBALANCES, "kind" => kind).absolute(0);
    }
    for trigger in ["count", "bytes", "demand", "time", "drain"] {
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

/// `kind` is "assign" or "revoke".
pub fn rebalance(kind: &'static str) {
    counter!(CONSUMER_REBALANCES, "kind" => kind).increment(1);
}

/// The `reason` of a rejoin for stuck partitions that this instance did not hold.
const REJOIN_STUCK: &str = "stuck_unheld";

/// The watchdog found a partition stuck: records wait above `ledger_offset` and it has not
/// moved for `waiting`.
pub(crate) fn partition_stuck(
    partition: i32,
    ledger_offset: i64,
    log_end: i64,
    owner: &str,
    waiting: Duration,
) {
    counter!(WATCHDOG_STUCK).increment(1);
    tracing::warn!(
        partition,
        ledger_offset,
        log_end,
        owner,
        waiting_s = waiting.as_secs(),
        "partition stuck: records wait and the ledger has not moved"
    );
}

/// This instance leaves the group to join again, for stuck partitions it does not hold.
pub(crate) fn rejoin_for_stuck(reason: &str) {
    counter!(CONSUMER_REJOINS, "reason" => REJOIN_STUCK).increment(1);
    tracing::warn!(%reason, "leaving the consumer group to join again as a new member");
}

/// A partition this member held was claimed by another member (its batch was fenced).
pub(crate) fn partition_released(partition: i32, epoch: i64) {
    counter!(CONSUMER_RELEASED).increment(1);
    tracing::warn!(
        partition,
        epoch,
        "partition released: another member claimed it in the ledger (fenced batch)"
    );
}

/// A Kafka offset commit (a hint for lag tools; the ledger rules) failed.
pub(crate) fn commit_hint_failed(error: &dyn std::fmt::Display) {
    counter!(CONSUMER_COMMIT_FAILURES).increment(1);
    tracing::warn!(%error, "kafka offset commit failed");
}

/// A Cassandra insert failed and is retried (debug: a node restart makes thousands).
pub(crate) fn cassandra_retry(error: &dyn std::fmt::Display) {
    counter!(CASSANDRA_RETRIES).increment(1);
    tracing::debug!(%error, "cassandra insert failed, retrying");
}

/// An OLAP store request failed and is retried.
pub(crate) fn olap_retry(error: &dyn std::fmt::Display) {
    counter!(MYSQL_RETRIES).increment(1);
    tracing::warn!(%error, "mysql request failed, retrying");
}

/// One partition as the watchdog last saw it.
pub(crate) fn partition_progress(partition: i32, lag: i64, progressed_unix: f64, stuck: bool) {
    let label = partition.to_string();
    gauge!(PARTITION_LAG, "partition" => label.clone()).set(lag as f64);
    gauge!(PARTITION_PROGRESS, "partition" => label.clone()).set(progressed_unix);
    gauge!(PARTITION_STUCK, "partition" => label).set(if stuck { 1.0 } else { 0.0 });
}

pub(crate) fn batch_cut(trigger: &'static str, records: usize) {
    counter!(BATCHES, "trigger" => trigger).increment(1);
    histogram!(BATCH_SIZE).record(records as f64);
}

/// `reason` is one of the event contract's reasons (the caller registers each at zero with
/// [`dead_letter_reasons`] at startup).
pub(crate) fn dead_letter(reason: &'static str, partition: i32, offset: i64) {
    counter!(DEAD_LETTERS, "reason" => reason).increment(1);
    super::console::remember_dead_letter(reason, partition, offset);
}

/// Registers the dead-letter counter at zero for every reason.
pub(crate) fn dead_letter_reasons(reasons: impl IntoIterator<Item = &'static str>) {
    for reason in reasons {
        counter!(DEAD_LETTERS, "reason" => reason).absolute(0);
    }
}

pub fn in_flight(n: usize) {
    gauge!(IN_FLIGHT).set(n as f64);
}

pub(crate) fn dependency_up(dependency: &'static str, up: bool) {
    gauge!(DEPENDENCY_UP, "dependency" => dependency).set(if up { 1.0 } else { 0.0 });
}

pub(crate) fn actor_up(actor: &'static str, up: bool) {
    gauge!(ACTOR_UP, "actor" => actor).set(if up { 1.0 } else { 0.0 });
}

pub fn seconds(name: &'static str, d: Duration) {
    histogram!(name).record(d.as_secs_f64());
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
