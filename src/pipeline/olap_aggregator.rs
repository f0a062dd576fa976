//! OlapAggregator: applies batches to the OLAP store (MySQL; SQLite in the demo, see
//! `stores/olap/`) strictly in the order they were cut.
//!
//! Cassandra writes of several batches may finish in any order; this actor holds early arrivals
//! in a reorder buffer and runs one transaction at a time in `seq` order, so each partition's
//! ledger advances in offset order (docs/DESIGN.md, rule 3). A transient error (connection lost,
//! deadlock, lock wait, unknown COMMIT outcome) retries the whole transaction, which re-reads the
//! ledger and so can never apply a record twice (rules 4 and 9). When MySQL refuses the data itself
//! (rule 10), the offending orders are found by bisection, dead-lettered, removed from Cassandra
//! and the rest of the batch is applied. Any other error fails the actor and the data path
//! restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use backoff::ExponentialBackoff;
use metrics::counter;

use crate::model::{ApplyReport, Batch, Reason};
use crate::ops::{telemetry, Health};
use crate::pipeline::dead_letters::{DeadLetter, DeadLetters, PublishDeadLetters};
use crate::pipeline::{ActorFailed, Failure, Flow, Halt};
use crate::stores::{within, CassandraStore, OlapError, OlapStore};

/// A batch whose rows are in Cassandra and whose dead letters are acknowledged.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BatchWritten(pub Batch);

/// Sent to the consumer after each transaction: the new ledger positions (to commit to Kafka as
/// a hint) and the partitions that need a fresh claim (a gap was found).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct BatchCommitted {
    pub committed: Vec<(i32, i64)>,
    pub gaps: Vec<(i32, i64)>,
    pub fenced: Vec<(i32, i64)>,
}

/// Where orders that MySQL refuses go (docs/DESIGN.md, rule 10): the dead-letter topic, and out of
/// Cassandra, which stored them before MySQL saw them.
#[derive(Clone)]
pub struct Rejections {
    pub dead_letters: Addr<DeadLetters>,
    pub cassandra: Arc<CassandraStore>,
}

pub struct OlapAggregator {
    store: OlapStore,
    rejections: Rejections,
    topic: String,
    pending: BTreeMap<u64, Batch>,
    next_seq: u64,
    busy: bool,
    flow: Arc<Flow>,
    consumer: Option<Recipient<BatchCommitted>>,
    supervisor: Recipient<ActorFailed>,
    health: Arc<Health>,
    backoff: ExponentialBackoff,
    statement_timeout: Duration,
}

/// What an aggregator is built from.
pub struct AggregatorWiring {
    pub store: OlapStore,
    /// Where refused orders go: the dead letters, and Cassandra to remove them from.
    pub rejections: Rejections,
    pub topic: String,
    pub flow: Arc<Flow>,
    pub supervisor: Recipient<ActorFailed>,
    pub health: Arc<Health>,
    pub backoff: ExponentialBackoff,
    /// How long one store call may take (`mysql.timeout_ms`) before it is retried.
    pub statement_timeout: Duration,
}

impl OlapAggregator {
    pub fn new(w: AggregatorWiring) -> Self {
        Self {
            store: w.store,
            rejections: w.rejections,
            topic: w.topic,
            pending: BTreeMap::new(),
            next_seq: 0,
            busy: false,
            flow: w.flow,
            consumer: None,
            supervisor: w.supervisor,
            health: w.health,
            backoff: w.backoff,
            statement_timeout: w.statement_timeout,
        }
    }

    fn drive(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        let Some(batch) = self.pending.remove(&self.next_seq) else {
            return;
        };
        self.busy = true;
        let store = self.store.clone();
        let rejections = self.rejections.clone();
        let topic = self.topic.clone();
        let backoff = self.backoff.clone();
        let limit = self.statement_timeout;
        let (seq, records, opened_at) = (batch.seq, batch.records.len(), batch.opened_at);
        // Only for the debug line below: a pass over the batch nobody would read otherwise.
        let oldest_created_ms = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| {
                batch
                    .records
                    .iter()
                    .filter_map(|r| r.order().map(|o| o.created_at_ms))
                    .min()
            })
            .flatten();
        let work = async move {
            let started = Instant::now();
            let oldest_age_ms = oldest_created_ms.map_or(0, |c| {
                (chrono::Utc::now().timestamp_millis() - c).max(0) as u64
            });
            let report = apply(&store, &rejections, &topic, batch, backoff, limit).await;
            telemetry::seconds(telemetry::MYSQL_LATENCY, started.elapsed());
            // Where a batch's time went, for latency work: its oldest order's age when the batch
            // reached MySQL, opened → its turn in MySQL (linger, the Cassandra leg and the
            // queues) and the transaction itself.
            tracing::debug!(
                seq,
                records,
                oldest_age_ms,
                before_mysql_ms = started.duration_since(opened_at).as_millis() as u64,
                mysql_ms = started.elapsed().as_millis() as u64,
                "batch applied"
            );
            report
        };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            act.busy = false;
            match result {
                Ok(report) => {
                    act.next_seq += 1;
                    act.flow.finished();
                    act.health.progress();
                    record(&report);
                    if let Some(consumer) = &act.consumer {
                        consumer.do_send(BatchCommitted {
                            committed: report.committed,
                            gaps: report.gaps,
                            fenced: report.fenced,
                        });
                    }
                    act.drive(ctx);
                }
                Err(failure) => {
                    act.supervisor.do_send(ActorFailed {
                        actor: "mysql_aggregator",
                        failure,
                    });
                    ctx.stop();
                }
            }
        }));
    }
}

fn record(report: &ApplyReport) {
    let outcome = if report.committed.is_empty() {
        "empty"
    } else {
        "committed"
    };
    counter!(telemetry::MYSQL_TXNS, "outcome" => outcome).increment(1);
    counter!(telemetry::MYSQL_ORDERS).increment(report.applied_orders as u64);
    counter!(telemetry::MYSQL_REPLAYED).increment(report.replayed as u64);
    if !report.fenced.is_empty() {
        counter!(telemetry::MYSQL_FENCED).increment(1);
    }
    let now = chrono::Utc::now().timestamp_millis();
    for created in &report.applied_created_at_ms {
        metrics::histogram!(telemetry::END_TO_END).record((now - created).max(0) as f64 / 1000.0);
    }
}

/// Applies a batch; orders MySQL refuses are dead-lettered and the rest applied (rule 10).
///
/// Each round turns at least one valid order into a dead letter, so the loop ends. The dead
/// letters are acknowledged and the Cassandra rows removed before the transaction that moves
/// the ledger past them; a crash in between replays the batch, which finds the same offenders
/// again (dead letters are at-least-once, the deletes idempotent).
async fn apply(
    store: &OlapStore,
    rejections: &Rejections,
    topic: &str,
    mut batch: Batch,
    backoff: ExponentialBackoff,
    limit: Duration,
) -> Result<ApplyReport, Failure> {
    loop {
        let error = match apply_with_retry(store, topic, &batch, backoff.clone(), limit).await {
            Ok(report) => return Ok(report),
            Err(e) if e.is_data_rejection() => e,
            Err(e) => return Err(Failure::olap(format!("applying batch {}", batch.seq), e)),
        };
        let rejected = retry_transient(backoff.clone(), limit, || {
            store.find_rejected(topic, &batch)
        })
        .await
        .map_err(|e| Failure::olap("finding the refused orders", e))?;
        if rejected.is_empty() {
            // Refused as a whole, yet no order is refused on its own: not a data problem.
            return Err(Failure::olap(
                format!("applying batch {}", batch.seq),
                error,
            ));
        }
        let mut letters = Vec::with_capacity(rejected.len());
        for (i, detail) in rejected {
            let Some(record) = batch.records.get_mut(i) else {
                continue;
            };
            let Some(order_id) = record.order().map(|o| o.order_id) else {
                continue;
            };
            tracing::warn!(
                partition = record.partition,
                offset = record.offset,
                order_id,
                %detail,
                "mysql refused an order; dead-lettering it"
            );
            record.reject(Reason::StoreRejected, detail);
            letters.extend(DeadLetter::of(record));
            backoff::future::retry(backoff.clone(), || async {
                rejections.cassandra.delete(order_id).await.map_err(|e| {
                    tracing::warn!(order_id, error = %e, "cassandra delete failed, retrying");
                    backoff::Error::transient(e)
                })
            })
            .await?;
        }
        rejections
            .dead_letters
            .send(PublishDeadLetters(letters))
            .await
            .map_err(|e| Failure::gone("dead_letters", e))??;
    }
}

/// Retries an operation while its errors are transient; an attempt that takes longer than
/// `limit` counts as one (see `within`).
async fn retry_transient<T, F, Fut>(
    backoff: ExponentialBackoff,
    limit: Duration,
    op: F,
) -> Result<T, OlapError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, OlapError>>,
{
    backoff::future::retry(backoff, || async {
        within(limit, op()).await.map_err(|e| {
            if e.is_transient() {
                telemetry::olap_retry(&e);
                backoff::Error::transient(e)
            } else {
                backoff::Error::permanent(e)
            }
        })
    })
    .await
}

async fn apply_with_retry(
    store: &OlapStore,
    topic: &str,
    batch: &Batch,
    backoff: ExponentialBackoff,
    limit: Duration,
) -> Result<ApplyReport, OlapError> {
    retry_transient(backoff, limit, || async {
        #[cfg(feature = "failpoints")]
        crate::pipeline::failpoints::hit("before_mysql_commit");
        store.apply_batch(topic, batch).await
    })
    .await
}

impl Actor for OlapAggregator {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(256);
        telemetry::actor_up("mysql_aggregator", true);
    }
    fn stopped(&mut self, _: &mut Self::Context) {
        telemetry::actor_up("mysql_aggregator", false);
    }
}

impl Handler<BatchWritten> for OlapAggregator {
    type Result = ();
    fn handle(&mut self, BatchWritten(batch): BatchWritten, ctx: &mut Self::Context) {
        self.pending.insert(batch.seq, batch);
        self.drive(ctx);
    }
}

/// Tells the aggregator where to send commit notices (the consumer starts after it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct NotifyConsumer(pub Recipient<BatchCommitted>);

impl Handler<NotifyConsumer> for OlapAggregator {
    type Result = ();
    fn handle(&mut self, NotifyConsumer(r): NotifyConsumer, _: &mut Self::Context) {
        self.consumer = Some(r);
    }
}

impl Handler<Halt> for OlapAggregator {
    type Result = ();
    fn handle(&mut self, _: Halt, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
