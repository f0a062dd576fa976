//! `orderstream reconcile`: an independent audit of a deployment, safe while it runs.
//!
//! 1. Snapshot the MySQL ledger and aggregates in one consistent read: what is below the
//!    ledger is, by the protocol, final in every store.
//! 2. Read the orders topic (all of it; only records below the ledger are judged) and the
//!    dead-letter topic.
//! 3. Page through Cassandra.
//!
//! Then every record below the ledger must be accounted for: a valid order is in Cassandra
//! with its fields and counted in MySQL, unless MySQL refused it (a `store_rejected` dead letter
//! at its coordinates, in which case it is in neither store); an invalid record has a dead
//! letter with its reason at its coordinates. The aggregates must equal the fold of the
//! accounted orders. Rows in Cassandra above the ledger are work in flight, not errors.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use crate::config::Config;
use crate::model::{decode, Deltas, Order, Reason, Totals};
use crate::stores::{client_config, read_topic_within, CassandraStore, OlapStore, TopicRecord};

/// Kafka coordinates of a record.
pub type Coordinates = (i32, i64);

/// What the audit found. Empty lists everywhere mean exact.
#[derive(Debug, Default)]
pub struct Report {
    pub ledger: BTreeMap<i32, i64>,
    pub records_below_ledger: usize,
    pub valid_below_ledger: usize,
    pub invalid_below_ledger: usize,
    pub store_rejected: usize,
    pub cassandra_rows: usize,
    /// Valid orders below the ledger that Cassandra does not hold.
    pub missing: Vec<(Coordinates, i64)>,
    /// Orders whose Cassandra row differs from the topic.
    pub mismatched: Vec<(Coordinates, i64)>,
    /// Cassandra rows whose id is in no valid record of the topic.
    pub unexpected_rows: Vec<i64>,
    /// Order ids that occur more than once in the topic (below the ledger), with their count.
    pub duplicate_ids: Vec<(i64, usize)>,
    /// Invalid records below the ledger without a dead letter carrying their reason.
    pub missing_dead_letters: Vec<(Coordinates, &'static str)>,
    /// Dead letters below the ledger for records that are valid and not refused by a store.
    pub unexpected_dead_letters: Vec<(Coordinates, String)>,
    /// Aggregate keys whose stored totals differ from the recomputed ones: (table, key,
    /// expected, stored).
    pub aggregate_differences: Vec<(&'static str, String, Totals, Totals)>,
    /// Records the broker did not deliver within the read time: (topic, partition, first
    /// offset not read, log end). The audit judges only what it read, so it cannot be exact.
    pub unreadable: Vec<(String, i32, i64, i64)>,
    /// Checks left out because records they depend on could not be read.
    pub not_judged: Vec<&'static str>,
}

impl Report {
    pub fn is_exact(&self) -> bool {
        self.unreadable.is_empty() && self.is_consistent()
    }

    /// No difference in what was read (the verdict when records were unreadable).
    fn is_consistent(&self) -> bool {
        self.missing.is_empty()
            && self.mismatched.is_empty()
            && self.unexpected_rows.is_empty()
            && self.duplicate_ids.is_empty()
            && self.missing_dead_letters.is_empty()
            && self.unexpected_dead_letters.is_empty()
            && self.aggregate_differences.is_empty()
    }
}

/// How long `reconcile` reads each topic by default before it names what it could not read.
pub(crate) const DEFAULT_READ_TIME: Duration = Duration::from_secs(120);

/// Runs the audit against the configured deployment, reading each topic for `read_time` at most.
pub async fn reconcile(cfg: &Config, read_time: Duration) -> anyhow::Result<Report> {
    let pool = crate::stores::connect_mysql(&cfg.mysql).await?;
    crate::stores::check_mysql_migrated(&pool, &cfg.mysql).await?;
    reconcile_with(cfg, &OlapStore::Mysql(pool), read_time).await
}

/// Runs the audit with the given OLAP store (the demo's SQLite) and the configured topic and
/// Cassandra.
pub(crate) async fn reconcile_with(
    cfg: &Config,
    olap: &OlapStore,
    read_time: Duration,
) -> anyhow::Result<Report> {
    let (mut ledger, stored) = olap.snapshot(&cfg.kafka.topic).await?;
    let read = |topic: String| {
        let client = client_config(&cfg.kafka);
        tokio::task::spawn_blocking(move || read_topic_within(&client, &topic, None, read_time))
    };
    let orders = read(cfg.kafka.topic.clone()).await??;
    let dead = read(cfg.kafka.dead_letter_topic.clone()).await??;
    let mut unreadable = Vec::new();
    for (name, read) in [
        (&cfg.kafka.topic, &orders),
        (&cfg.kafka.dead_letter_topic, &dead),
    ] {
        for (partition, (from, end)) in &read.unread {
            unreadable.push((name.clone(), *partition, *from, *end));
        }
    }
    // Records that could not be read are not judged: the ledger is taken to stop before them.
    // Where the ledger had passed them, the stores hold orders the audit cannot see, so the
    // checks over whole stores (aggregates, rows of no record) say nothing.
    let mut applied_unread = false;
    for (partition, (from, _)) in &orders.unread {
        if let Some(next) = ledger.get_mut(partition) {
            applied_unread |= *next > *from;
            *next = (*next).min(*from);
        }
    }
    let cassandra = CassandraStore::connect(&cfg.cassandra).await?;
    let rows = cassandra.read_all().await?;
    let mut report = audit(
        &cfg.kafka.topic,
        cfg.pipeline.max_record_bytes,
        ledger,
        &orders.records,
        &dead.records,
        &rows,
        &stored,
    );
    report.unreadable = unreadable;
    if applied_unread {
        report.aggregate_differences.clear();
        report.unexpected_rows.clear();
        report
            .not_judged
            .extend(["aggregates", "unexpected cassandra rows"]);
    }
    if !dead.unread.is_empty() {
        report.missing_dead_letters.clear();
        report.not_judged.push("missing dead letters");
    }
    Ok(report)
}

/// The comparison itself, on data already read.
pub fn audit(
    topic: &str,
    max_record_bytes: usize,
    ledger: BTreeMap<i32, i64>,
    records: &[TopicRecord],
    dead: &[TopicRecord],
    rows: &[Order],
    stored: &Deltas,
) -> Report {
    let mut report = Report {
        cassandra_rows: rows.len(),
        ..Report::default()
    };
    let letters = letters_by_source(topic, dead);
    let (accounted, ids_in_topic) =
        account(&ledger, records, &letters, max_record_bytes, &mut report);
    compare_rows(&accounted, &ids_in_topic, rows, &mut report);

    // MySQL counts every accounted record, duplicates included.
    let expected = Deltas::fold(accounted.iter().map(|(_, o)| o));
    diff(
        "aggregated_sales",
        &expected.daily,
        &stored.daily,
        &mut report.aggregate_differences,
    );
    diff(
        "sales_per_minute",
        &expected.per_minute,
        &stored.per_minute,
        &mut report.aggregate_differences,
    );
    report.ledger = ledger;
    report
}

/// The dead letters of `topic`, by the coordinates of their source record: the reason.
fn letters_by_source(topic: &str, dead: &[TopicRecord]) -> BTreeMap<Coordinates, String> {
    let mut letters = BTreeMap::new();
    for d in dead {
        let source = (
            d.headers.get("source_topic").map(String::as_str),
            d.headers
                .get("source_partition")
                .and_then(|v| v.parse().ok()),
            d.headers.get("source_offset").and_then(|v| v.parse().ok()),
        );
        if let (Some(t), Some(p), Some(o)) = source {
            if t == topic {
                let reason = d.headers.get("error").cloned().unwrap_or_default();
                letters.insert((p, o), reason);
            }
        }
    }
    letters
}

/// Classifies every record below the ledger: a valid order the stores must hold (returned with
/// its coordinates), a valid order the store refused, or an invalid record that must have its
/// dead letter. Also returns every valid order id in the topic, below the ledger or not.
fn account(
    ledger: &BTreeMap<i32, i64>,
    records: &[TopicRecord],
    letters: &BTreeMap<Coordinates, String>,
    max_record_bytes: usize,
    report: &mut Report,
) -> (Vec<(Coordinates, Order)>, BTreeSet<i64>) {
    let below = |p: i32, o: i64| ledger.get(&p).is_some_and(|next| o < *next);
    let mut accounted = Vec::new();
    let mut ids_in_topic = BTreeSet::new();
    for r in records {
        let at = (r.partition, r.offset);
        let decoded = decode(&r.payload, max_record_bytes);
        if let Ok(o) = &decoded {
            ids_in_topic.insert(o.order_id);
        }
        if !below(r.partition, r.offset) {
            continue;
        }
        report.records_below_ledger += 1;
        let letter = letters.get(&at).map(String::as_str);
        match decoded {
            Ok(o) => {
                report.valid_below_ledger += 1;
                match letter {
                    Some(reason) if reason == Reason::StoreRejected.as_str() => {
                        report.store_rejected += 1;
                    }
                    Some(other) => {
                        report.unexpected_dead_letters.push((at, other.to_owned()));
                        accounted.push((at, o));
                    }
                    None => accounted.push((at, o)),
                }
            }
            Err(rejection) => {
                report.invalid_below_ledger += 1;
                if letter != Some(rejection.reason.as_str()) {
                    report
                        .missing_dead_letters
                        .push((at, rejection.reason.as_str()));
                }
            }
        }
    }
    (accounted, ids_in_topic)
}

/// Cassandra against the accounted orders: duplicates, missing and different rows, and rows no
/// record of the topic explains.
fn compare_rows(
    accounted: &[(Coordinates, Order)],
    ids_in_topic: &BTreeSet<i64>,
    rows: &[Order],
    report: &mut Report,
) {
    let mut per_id: BTreeMap<i64, usize> = BTreeMap::new();
    for (_, o) in accounted {
        *per_id.entry(o.order_id).or_default() += 1;
    }
    report.duplicate_ids = per_id.into_iter().filter(|(_, n)| *n > 1).collect();

    let by_id: BTreeMap<i64, &Order> = rows.iter().map(|o| (o.order_id, o)).collect();
    for (at, o) in accounted {
        match by_id.get(&o.order_id) {
            None => report.missing.push((*at, o.order_id)),
            Some(row) if *row != o => report.mismatched.push((*at, o.order_id)),
            Some(_) => {}
        }
    }
    report.unexpected_rows = by_id
        .keys()
        .filter(|id| !ids_in_topic.contains(id))
        .copied()
        .collect();
}

fn diff<K: Ord + fmt::Debug>(
    table: &'static str,
    expected: &BTreeMap<K, Totals>,
    stored: &BTreeMap<K, Totals>,
    out: &mut Vec<(&'static str, String, Totals, Totals)>,
) {
    let keys: BTreeSet<&K> = expected.keys().chain(stored.keys()).collect();
    for key in keys {
        let want = expected.get(key).copied().unwrap_or_default();
        let got = stored.get(key).copied().unwrap_or_default();
        if want != got {
            out.push((table, format!("{key:?}"), want, got));
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 10;
        fn list<T: fmt::Debug>(f: &mut fmt::Formatter<'_>, name: &str, items: &[T]) -> fmt::Result {
            write!(f, "{name}: {}", items.len())?;
            if !items.is_empty() {
                let shown: Vec<_> = items.iter().take(SHOWN).collect();
                write!(f, " (first: {shown:?})")?;
            }
            writeln!(f)
        }
        writeln!(
            f,
            "ledger: {} partitions, {} records below it {:?}",
            self.ledger.len(),
            self.records_below_ledger,
            self.ledger
        )?;
        writeln!(
            f,
            "topic below the ledger: {} valid orders ({} refused by a store), {} invalid records",
            self.valid_below_ledger, self.store_rejected, self.invalid_below_ledger
        )?;
        writeln!(f, "cassandra rows: {}", self.cassandra_rows)?;
        list(f, "missing orders", &self.missing)?;
        list(f, "mismatched orders", &self.mismatched)?;
        list(f, "unexpected cassandra rows", &self.unexpected_rows)?;
        list(f, "duplicate order ids in the topic", &self.duplicate_ids)?;
        list(f, "missing dead letters", &self.missing_dead_letters)?;
        list(f, "unexpected dead letters", &self.unexpected_dead_letters)?;
        list(f, "differing aggregate keys", &self.aggregate_differences)?;
        for (topic, partition, from, end) in &self.unreadable {
            writeln!(
                f,
                "unreadable: {topic} partition {partition} from offset {from} to the log end \
                 {end}: the broker did not deliver these records within the read time"
            )?;
        }
        if !self.not_judged.is_empty() {
            writeln!(
                f,
                "not judged (they depend on unreadable records): {}",
                self.not_judged.join(", ")
            )?;
        }
        let verdict = if !self.unreadable.is_empty() {
            "INCOMPLETE (unreadable records; see above)"
        } else if self.is_exact() {
            "EXACT"
        } else {
            "DIFFERENCES FOUND"
        };
        writeln!(f, "verdict: {verdict}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PaymentMethod;

    const TOPIC: &str = "orders";

    fn order(id: i64) -> Order {
        Order {
            order_id: id,
            created_at_ms: 1_714_558_830_000 + id * 61_000,
            platform_id: (id % 4) as i32 + 1,
            product_id: (id % 20) as i32 + 1,
            quantity: (id % 5) as i32 + 1,
            customer_id: 7,
            payment_method: PaymentMethod::Paypal,
        }
    }

    fn record(partition: i32, offset: i64, payload: Vec<u8>) -> TopicRecord {
        TopicRecord {
            partition,
            offset,
            payload,
            headers: BTreeMap::new(),
        }
    }

    fn letter(partition: i32, offset: i64, reason: &str) -> TopicRecord {
        let mut r = record(0, 0, Vec::new());
        for (k, v) in [
            ("source_topic", TOPIC.to_string()),
            ("source_partition", partition.to_string()),
            ("source_offset", offset.to_string()),
            ("error", reason.to_string()),
        ] {
            r.headers.insert(k.to_string(), v);
        }
        r
    }

    /// Ten valid orders on partition 0, one invalid record at offset 10, ledger at 11.
    fn world() -> (Vec<TopicRecord>, Vec<TopicRecord>, Vec<Order>, Deltas) {
        let mut records: Vec<_> = (0..10)
            .map(|i| record(0, i, order(i + 1).to_json()))
            .collect();
        records.push(record(0, 10, b"not json".to_vec()));
        let dead = vec![letter(0, 10, "not_json")];
        let rows: Vec<_> = (1..=10).map(order).collect();
        let stored = Deltas::fold(&rows);
        (records, dead, rows, stored)
    }

    fn run(
        records: &[TopicRecord],
        dead: &[TopicRecord],
        rows: &[Order],
        stored: &Deltas,
    ) -> Report {
        audit(
            TOPIC,
            65_536,
            BTreeMap::from([(0, 11)]),
            records,
            dead,
            rows,
            stored,
        )
    }

    #[test]
    fn an_exact_deployment_is_exact() {
        let (records, dead, rows, stored) = world();
        let report = run(&records, &dead, &rows, &stored);
        assert!(report.is_exact(), "{report}");
        assert_eq!(
            (report.valid_below_ledger, report.invalid_below_ledger),
            (10, 1)
        );
    }

    #[test]
    fn every_kind_of_difference_is_reported() {
        let (mut records, dead, mut rows, mut stored) = world();
        rows.remove(0); // order 1 missing
        rows[0].quantity += 1; // order 2 mismatched
        rows.push(order(999)); // in no record
        records.push(record(0, 11, order(1).to_json())); // above the ledger: not judged
        let key = *stored.daily.keys().next().unwrap();
        stored.daily.get_mut(&key).unwrap().order_count += 1;
        let report = run(&records, &[], &rows, &stored);
        assert_eq!(report.missing, vec![((0, 0), 1)]);
        assert_eq!(report.mismatched, vec![((0, 1), 2)]);
        assert_eq!(report.unexpected_rows, vec![999]);
        assert_eq!(report.missing_dead_letters, vec![((0, 10), "not_json")]);
        assert_eq!(report.aggregate_differences.len(), 1);
        assert!(!report.is_exact());
        assert!(report.to_string().contains("verdict: DIFFERENCES FOUND"));
        let _ = dead;
    }

    #[test]
    fn duplicates_and_store_rejections_are_told_apart() {
        let (mut records, mut dead, rows, _) = world();
        // Offset 3 was refused by MySQL: in neither store, and not counted.
        dead.push(letter(0, 3, "store_rejected"));
        let kept: Vec<_> = rows.iter().filter(|o| o.order_id != 4).cloned().collect();
        // A duplicate id above the ledger is not judged; below it, it is.
        records[5] = record(0, 5, order(5).to_json());
        let mut counted = kept.clone();
        counted.retain(|o| o.order_id != 6);
        counted.push(order(5));
        let report = run(&records, &dead, &kept, &Deltas::fold(&counted));
        assert_eq!(report.store_rejected, 1);
        assert_eq!(report.duplicate_ids, vec![(5, 2)]);
        assert!(report.aggregate_differences.is_empty(), "{report}");
        assert!(report.missing.is_empty() && report.mismatched.is_empty());
        // Order 6 is no longer in the topic, so its row is unexpected.
        assert_eq!(report.unexpected_rows, vec![6]);
    }
}
