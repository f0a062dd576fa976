//! MysqlAggregator: applies batches to MySQL strictly in the order they were cut.
//!
//! Cassandra writes of several batches may finish in any order; this actor holds early arrivals
//! in a reorder buffer and runs one transaction at a time in `seq` order, so each partition's
//! ledger advances in offset order (DESIGN rule 3). A transient error (connection lost, deadlock,
//! lock wait, unknown COMMIT outcome) retries the whole transaction, which re-reads the ledger
//! and so can never apply a record twice (rules 4 and 9). Any other error fails the actor and
//! the data path restarts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use backoff::ExponentialBackoff;
use metrics::counter;
use sqlx::MySqlPool;

use crate::actors::{ActorFailed, Flow, Halt};
use crate::batch::Batch;
use crate::mysql::{self, ApplyReport, MysqlError};
use crate::telemetry::{self, Health};

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

pub struct MysqlAggregator {
    pool: MySqlPool,
    topic: String,
    pending: BTreeMap<u64, Batch>,
    next_seq: u64,
    busy: bool,
    flow: Arc<Flow>,
    consumer: Option<Recipient<BatchCommitted>>,
    supervisor: Recipient<ActorFailed>,
    health: Arc<Health>,
    backoff: ExponentialBackoff,
}

impl MysqlAggregator {
    pub fn new(
        pool: MySqlPool,
        topic: String,
        flow: Arc<Flow>,
        supervisor: Recipient<ActorFailed>,
        health: Arc<Health>,
        backoff: ExponentialBackoff,
    ) -> Self {
        Self {
            pool,
            topic,
            pending: BTreeMap::new(),
            next_seq: 0,
            busy: false,
            flow,
            consumer: None,
            supervisor,
            health,
            backoff,
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
        let pool = self.pool.clone();
        let topic = self.topic.clone();
        let backoff = self.backoff.clone();
        let work = async move {
            let started = Instant::now();
            let report = apply_with_retry(&pool, &topic, &batch, backoff).await;
            telemetry::seconds(telemetry::MYSQL_LATENCY, started.elapsed());
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
                Err(e) => {
                    act.supervisor.do_send(ActorFailed {
                        actor: "mysql_aggregator",
                        error: e.to_string(),
                        fatal: false,
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

async fn apply_with_retry(
    pool: &MySqlPool,
    topic: &str,
    batch: &Batch,
    backoff: ExponentialBackoff,
) -> Result<ApplyReport, MysqlError> {
    backoff::future::retry(backoff, || async {
        #[cfg(feature = "failpoints")]
        crate::failpoints::hit("before_mysql_commit");
        mysql::apply_batch(pool, topic, batch).await.map_err(|e| {
            if e.is_transient() {
                counter!(telemetry::MYSQL_RETRIES).increment(1);
                tracing::warn!(error = %e, "batch transaction failed, retrying");
                backoff::Error::transient(e)
            } else {
                backoff::Error::permanent(e)
            }
        })
    })
    .await
}

impl Actor for MysqlAggregator {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(256);
        telemetry::actor_up("mysql_aggregator", true);
    }
    fn stopped(&mut self, _: &mut Self::Context) {
        telemetry::actor_up("mysql_aggregator", false);
    }
}

impl Handler<BatchWritten> for MysqlAggregator {
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

impl Handler<NotifyConsumer> for MysqlAggregator {
    type Result = ();
    fn handle(&mut self, NotifyConsumer(r): NotifyConsumer, _: &mut Self::Context) {
        self.consumer = Some(r);
    }
}

impl Handler<Halt> for MysqlAggregator {
    type Result = ();
    fn handle(&mut self, _: Halt, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
