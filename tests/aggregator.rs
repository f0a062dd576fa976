//! The OLAP side of the protocol, on both stores behind `OlapStore`: a real MariaDB (production)
//! and SQLite (the demo). Strict per-partition order when Cassandra writes finish out of order,
//! replays, gaps and fencing; every scenario runs once per store, with the same assertions.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use orderstream::model::{Batch, Content, Deltas, Order, PaymentMethod, Record};
use orderstream::ops::Health;
use orderstream::pipeline::DeadLetters;
use orderstream::pipeline::{ActorFailed, Flow};
use orderstream::pipeline::{
    AggregatorWiring, BatchCommitted, BatchWritten, NotifyConsumer, OlapAggregator, Rejections,
};
use orderstream::stores::OlapStore;

use crate::common::{self, Backend, Env};

fn order(id: i64) -> Order {
    Order {
        order_id: id,
        created_at_ms: 1_714_558_830_000 + id * 1_000,
        platform_id: (id % 4) as i32 + 1,
        product_id: (id % 20) as i32 + 1,
        quantity: (id % 5) as i32 + 1,
        customer_id: 7,
        payment_method: PaymentMethod::CreditCard,
    }
}

fn batch(seq: u64, partition: i32, epoch: i64, offsets: std::ops::Range<i64>) -> Batch {
    let records: Vec<Record> = offsets
        .map(|o| Record {
            partition,
            offset: o,
            epoch,
            bytes: 100,
            content: Content::Valid(order(1_000 * i64::from(partition) + o)),
        })
        .collect();
    Batch {
        seq,
        bytes: records.len() * 100,
        records,
        opened_at: Instant::now(),
    }
}

/// Collects commit notices and failures in arrival order.
#[derive(Default)]
struct Recorder {
    commits: Arc<Mutex<Vec<BatchCommitted>>>,
    failures: Arc<Mutex<Vec<String>>>,
}
impl Actor for Recorder {
    type Context = Context<Self>;
}
impl Handler<BatchCommitted> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: BatchCommitted, _: &mut Self::Context) {
        self.commits.lock().unwrap().push(msg);
    }
}
impl Handler<ActorFailed> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: ActorFailed, _: &mut Self::Context) {
        self.failures.lock().unwrap().push(msg.failure.to_string());
    }
}

/// The real dead-letter topic and Cassandra, for orders MySQL refuses (none do here).
async fn rejections(cfg: &orderstream::config::Config) -> Rejections {
    let producer = orderstream::stores::producer_config(&cfg.kafka, "test-dlq")
        .create()
        .unwrap();
    Rejections {
        dead_letters: DeadLetters::new(
            producer,
            cfg.kafka.dead_letter_topic.clone(),
            cfg.kafka.topic.clone(),
            cfg.pipeline.max_record_bytes,
            orderstream::pipeline::retry_backoff(cfg),
        )
        .start(),
        cassandra: Arc::new(
            orderstream::stores::CassandraStore::connect(&cfg.cassandra)
                .await
                .unwrap(),
        ),
    }
}

#[actix::test]
async fn out_of_order_writes_commit_in_offset_order_on_mariadb() {
    out_of_order_writes_commit_in_offset_order(Backend::Mariadb).await;
}

#[actix::test]
async fn out_of_order_writes_commit_in_offset_order_on_sqlite() {
    out_of_order_writes_commit_in_offset_order(Backend::Sqlite).await;
}

async fn out_of_order_writes_commit_in_offset_order(backend: Backend) {
    let _heavy = common::heavy();
    let env = Env::start();
    env.migrate(1);
    let cfg = env.config(1);
    let store = env.olap(1, backend).await;
    let topic = env.names.topic.clone();
    let claim = store.claim(&topic, 0, "test", 0).await.unwrap();
    assert_eq!(
        (claim.epoch, claim.next_offset, claim.created),
        (1, 0, true)
    );

    let commits = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let recorder = Recorder {
        commits: commits.clone(),
        failures: failures.clone(),
    }
    .start();
    let flow = Arc::new(Flow::new(8));
    for _ in 0..3 {
        flow.started();
    }
    let aggregator = OlapAggregator::new(AggregatorWiring {
        store: store.clone(),
        rejections: rejections(&cfg).await,
        topic: topic.clone(),
        flow: flow.clone(),
        supervisor: recorder.clone().recipient(),
        health: Arc::new(Health::default()),
        backoff: orderstream::pipeline::retry_backoff(&cfg),
        statement_timeout: Duration::from_millis(cfg.mysql.timeout_ms),
    })
    .start();
    aggregator
        .send(NotifyConsumer(recorder.clone().recipient()))
        .await
        .unwrap();

    let batches = [
        batch(0, 0, 1, 0..10),
        batch(1, 0, 1, 10..25),
        batch(2, 0, 1, 25..30),
    ];
    // Cassandra finished batch 2 first, then 1: nothing may commit before batch 0.
    aggregator
        .send(BatchWritten(batches[2].clone()))
        .await
        .unwrap();
    aggregator
        .send(BatchWritten(batches[1].clone()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(commits.lock().unwrap().is_empty());
    assert_eq!(store.read_ledger(&topic).await.unwrap()[&0], 0);

    aggregator
        .send(BatchWritten(batches[0].clone()))
        .await
        .unwrap();
    common::eventually(Duration::from_secs(20), "three commits", || {
        let n = commits.lock().unwrap().len();
        async move { n == 3 }
    })
    .await;
    let order_of_commits: Vec<Vec<(i32, i64)>> = commits
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.committed.clone())
        .collect();
    assert_eq!(
        order_of_commits,
        vec![vec![(0, 10)], vec![(0, 25)], vec![(0, 30)]]
    );
    assert_eq!(flow.in_flight(), 0);
    assert!(failures.lock().unwrap().is_empty());

    let all: Vec<Order> = batches
        .iter()
        .flat_map(|b| b.records.iter().filter_map(|r| r.order().cloned()))
        .collect();
    assert_eq!(store.read_aggregates().await.unwrap(), Deltas::fold(&all));
    assert_eq!(store.read_ledger(&topic).await.unwrap()[&0], 30);
}

#[actix::test]
async fn replays_gaps_and_fencing_change_nothing_on_mariadb() {
    replays_gaps_and_fencing_change_nothing(Backend::Mariadb).await;
}

#[actix::test]
async fn replays_gaps_and_fencing_change_nothing_on_sqlite() {
    replays_gaps_and_fencing_change_nothing(Backend::Sqlite).await;
}

async fn replays_gaps_and_fencing_change_nothing(backend: Backend) {
    let _heavy = common::heavy();
    let env = Env::start();
    env.migrate(2);
    let store: OlapStore = env.olap(2, backend).await;
    let topic = env.names.topic.clone();
    store.claim(&topic, 0, "a", 0).await.unwrap();
    store.claim(&topic, 1, "a", 0).await.unwrap();

    // A two-partition batch applies both.
    let mut first = batch(0, 0, 1, 0..10);
    first.records.extend(batch(0, 1, 1, 0..5).records);
    let report = store.apply_batch(&topic, &first).await.unwrap();
    assert_eq!(report.committed, vec![(0, 10), (1, 5)]);
    assert_eq!(report.applied_orders, 15);
    let after_first = store.read_aggregates().await.unwrap();

    // The same batch again (a replay after a crash): nothing changes.
    let report = store.apply_batch(&topic, &first).await.unwrap();
    assert_eq!((report.applied_orders, report.replayed), (0, 15));
    assert_eq!(store.read_aggregates().await.unwrap(), after_first);

    // A batch overlapping the ledger applies only its new part.
    let report = store
        .apply_batch(&topic, &batch(1, 0, 1, 5..15))
        .await
        .unwrap();
    assert_eq!((report.applied_orders, report.replayed), (5, 5));
    assert_eq!(report.committed, vec![(0, 15)]);

    // A gap (ledger at 15, batch starts at 20): refused, reported, nothing applied.
    let before = store.read_aggregates().await.unwrap();
    let report = store
        .apply_batch(&topic, &batch(2, 0, 1, 20..30))
        .await
        .unwrap();
    assert_eq!(report.gaps, vec![(0, 1)]);
    assert!(report.committed.is_empty());
    assert_eq!(store.read_aggregates().await.unwrap(), before);
    assert_eq!(store.read_ledger(&topic).await.unwrap()[&0], 15);

    // Another owner claims partition 1 (epoch 2): our epoch-1 records are fenced, while
    // partition 0 in the same batch still applies.
    let claim = store.claim(&topic, 1, "b", 0).await.unwrap();
    assert_eq!(
        (claim.epoch, claim.next_offset, claim.created),
        (2, 5, false)
    );
    let mut mixed = batch(3, 0, 1, 15..18);
    mixed.records.extend(batch(3, 1, 1, 5..9).records);
    let report = store.apply_batch(&topic, &mixed).await.unwrap();
    assert_eq!(report.fenced, vec![(1, 1)]);
    assert_eq!(report.committed, vec![(0, 18)]);
    assert_eq!(report.applied_orders, 3);
    let ledger = store.read_ledger(&topic).await.unwrap();
    assert_eq!((ledger[&0], ledger[&1]), (18, 5));

    // Totals equal exactly the orders at offsets 0..18 of p0 and 0..5 of p1.
    let expected: Vec<Order> = (0..18)
        .map(order)
        .chain((0..5).map(|o| order(1_000 + o)))
        .collect();
    assert_eq!(
        store.read_aggregates().await.unwrap(),
        Deltas::fold(&expected)
    );
}

/// docs/DESIGN.md, rule 10, at the store level, on both stores: a trigger (standing in for a constraint a
/// DBA added) refuses every order of product 13. The batch transaction fails as a data
/// rejection, bisection names exactly the refused orders, and without them the batch applies.
#[actix::test]
async fn refused_orders_are_found_by_bisection_on_mariadb() {
    refused_orders_are_found_by_bisection(Backend::Mariadb).await;
}

#[actix::test]
async fn refused_orders_are_found_by_bisection_on_sqlite() {
    refused_orders_are_found_by_bisection(Backend::Sqlite).await;
}

async fn refused_orders_are_found_by_bisection(backend: Backend) {
    let _heavy = common::heavy();
    let env = Env::start();
    env.migrate(1);
    let store = env.olap(1, backend).await;
    let topic = env.names.topic.clone();
    match &store {
        OlapStore::Mysql(pool) => {
            sqlx::raw_sql(
                "CREATE TRIGGER refuse_13 BEFORE INSERT ON aggregated_sales FOR EACH ROW \
                 BEGIN IF NEW.product_id = 13 THEN \
                 SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'product 13 refused'; END IF; END",
            )
            .execute(pool)
            .await
            .unwrap();
        }
        OlapStore::Sqlite(pool) => {
            sqlx::raw_sql(
                "CREATE TRIGGER refuse_13 BEFORE INSERT ON aggregated_sales \
                 WHEN NEW.product_id = 13 BEGIN SELECT RAISE(ABORT, 'product 13 refused'); END",
            )
            .execute(pool)
            .await
            .unwrap();
        }
    }
    store.claim(&topic, 0, "test", 0).await.unwrap();
    // Orders 0..60: product = id % 20 + 1, so ids 12, 32 and 52 are product 13.
    let mut b = batch(0, 0, 1, 0..60);
    let err = store.apply_batch(&topic, &b).await.unwrap_err();
    assert!(err.is_data_rejection(), "{err}");
    assert!(!err.is_transient(), "{err}");
    assert!(store.read_aggregates().await.unwrap().is_empty());

    let refused = store.find_rejected(&topic, &b).await.unwrap();
    let indices: Vec<usize> = refused.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, vec![12, 32, 52]);
    assert!(
        refused
            .iter()
            .all(|(_, m)| m.contains("product 13 refused")),
        "{refused:?}"
    );
    // The probes changed nothing.
    assert!(store.read_aggregates().await.unwrap().is_empty());
    assert_eq!(store.read_ledger(&topic).await.unwrap()[&0], 0);

    // Set aside (the aggregator dead-letters them), the rest applies and the ledger passes all.
    for i in &indices {
        b.records[*i].reject(orderstream::model::Reason::StoreRejected, "refused".into());
    }
    let report = store.apply_batch(&topic, &b).await.unwrap();
    assert_eq!(
        (report.applied_orders, report.committed.clone()),
        (57, vec![(0, 60)])
    );
    let kept: Vec<Order> = (0..60).filter(|i| i % 20 != 12).map(order).collect();
    assert_eq!(store.read_aggregates().await.unwrap(), Deltas::fold(&kept));
}

/// Batches of a topic with many partitions, each spanning another subset of them with another
/// number of aggregate rows, apply exactly on both stores; on MariaDB, once every statement
/// shape has been seen, they close no prepared statement (the driver keeps 100 per connection:
/// statement texts that followed each batch exactly churned that cache, and every eviction
/// stalled the next statement for the server's delayed ACK).
#[actix::test]
async fn many_partition_batches_apply_exactly_and_keep_their_statements_on_mariadb() {
    many_partition_batches(Backend::Mariadb).await;
}

#[actix::test]
async fn many_partition_batches_apply_exactly_and_keep_their_statements_on_sqlite() {
    many_partition_batches(Backend::Sqlite).await;
}

async fn many_partition_batches(backend: Backend) {
    const PARTITIONS: i32 = 64;
    let _heavy = common::heavy();
    let env = Env::start();
    env.migrate(1);
    let store: OlapStore = env.olap(1, backend).await;
    let topic = env.names.topic.clone();
    for p in 0..PARTITIONS {
        store.claim(&topic, p, "test", 0).await.unwrap();
    }
    let env_ref = &env;
    let stmt_closes = move || async move {
        let pool = env_ref.mysql(1).await;
        let (_, value): (String, String) =
            sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com_stmt_close'")
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;
        value.parse::<u64>().unwrap()
    };

    // A fixed pseudo-random sequence (an LCG), so that a failure repeats.
    let mut state: u64 = 0x5eed;
    let mut next = move |bound: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    };
    let mut next_offset = vec![0i64; PARTITIONS as usize];
    let mut applied: Vec<Order> = Vec::new();
    let mut closes_after_warmup = None;
    for seq in 0..300u64 {
        if seq == 100 && matches!(backend, Backend::Mariadb) {
            closes_after_warmup = Some(stmt_closes().await);
        }
        let mut batch = batch(seq, 0, 1, 0..0);
        let spanned = 1 + next(PARTITIONS as u64) as usize;
        for p in 0..PARTITIONS {
            if next(PARTITIONS as u64) as usize >= spanned {
                continue;
            }
            let count = 1 + next(12) as i64;
            let from = next_offset[p as usize];
            let part = batch_of(seq, p, from..from + count);
            applied.extend(part.records.iter().filter_map(|r| r.order().cloned()));
            batch.records.extend(part.records);
            next_offset[p as usize] = from + count;
        }
        let report = store.apply_batch(&topic, &batch).await.unwrap();
        assert_eq!(report.applied_orders, batch.records.len(), "batch {seq}");
    }
    let ledger = store.read_ledger(&topic).await.unwrap();
    for p in 0..PARTITIONS {
        assert_eq!(ledger[&p], next_offset[p as usize], "partition {p}");
    }
    assert_eq!(
        store.read_aggregates().await.unwrap(),
        Deltas::fold(&applied)
    );
    if let Some(before) = closes_after_warmup {
        assert_eq!(
            stmt_closes().await - before,
            0,
            "prepared statements were closed after the warm-up"
        );
    }
}

/// Records of one partition whose orders are unique across partitions of 100,000 offsets each.
fn batch_of(seq: u64, partition: i32, offsets: std::ops::Range<i64>) -> Batch {
    let mut b = batch(seq, partition, 1, offsets);
    for r in &mut b.records {
        if let Content::Valid(o) = &mut r.content {
            *o = order(100_000 * i64::from(partition) + r.offset);
        }
    }
    b
}
