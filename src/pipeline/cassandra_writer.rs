//! CassandraWriter: stores a batch's valid orders in Cassandra, dead-letters its invalid
//! records, then hands the batch to the OlapAggregator.
//!
//! Several batches may be written at once; one semaphore bounds the inserts in flight across
//! all of them. The inserts run as a tokio task on the worker threads, not on the actor's
//! thread: that thread also decodes records and drives MySQL, and insert completions queued
//! behind it would leave the CQL connection idle. Inserts are idempotent upserts, retried with
//! backoff while the store is down or slow (never skipped). A row the store refuses for its data is turned into a dead letter
//! (docs/DESIGN.md, rule 10) instead of blocking the partition forever.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use backoff::ExponentialBackoff;
use futures::StreamExt;
use metrics::counter;
use tokio::sync::Semaphore;

use crate::model::{Batch, Reason};
use crate::ops::telemetry;
use crate::pipeline::dead_letters::{DeadLetter, DeadLetters, PublishDeadLetters};
use crate::pipeline::olap_aggregator::{BatchWritten, OlapAggregator};
use crate::pipeline::{ActorFailed, Failure, Halt};
use crate::stores::{CassandraError, CassandraStore};
use tokio_util::task::AbortOnDropHandle;

/// Write this batch.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriteBatch(pub Batch);

pub struct CassandraWriter {
    store: Arc<CassandraStore>,
    permits: Arc<Semaphore>,
    concurrency: usize,
    aggregator: Addr<OlapAggregator>,
    dead_letters: Addr<DeadLetters>,
    supervisor: Recipient<ActorFailed>,
    backoff: ExponentialBackoff,
}

impl CassandraWriter {
    pub fn new(
        store: Arc<CassandraStore>,
        concurrency: usize,
        aggregator: Addr<OlapAggregator>,
        dead_letters: Addr<DeadLetters>,
        supervisor: Recipient<ActorFailed>,
        backoff: ExponentialBackoff,
    ) -> Self {
        Self {
            store,
            permits: Arc::new(Semaphore::new(concurrency)),
            concurrency,
            aggregator,
            dead_letters,
            supervisor,
            backoff,
        }
    }
}

impl Actor for CassandraWriter {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        telemetry::actor_up("cassandra_writer", true);
    }
    fn stopped(&mut self, _: &mut Self::Context) {
        telemetry::actor_up("cassandra_writer", false);
    }
}

impl Handler<Halt> for CassandraWriter {
    type Result = ();
    fn handle(&mut self, _: Halt, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Inserts one order, retrying everything but a rejection of the data itself.
async fn insert_with_retry(
    store: &CassandraStore,
    order: &crate::model::Order,
    backoff: ExponentialBackoff,
) -> Result<(), CassandraError> {
    backoff::future::retry(backoff, || async {
        store.insert(order).await.map_err(|e| {
            if e.is_rejection() {
                backoff::Error::permanent(e)
            } else {
                telemetry::cassandra_retry(&e);
                backoff::Error::transient(e)
            }
        })
    })
    .await
}

/// Inserts a batch's orders, at most `concurrency` at once and within the shared permits;
/// returns how many were written and the refusals, by the order's index in the batch.
///
/// An insert's future exists only once it holds a permit. With up to 16 batches in flight,
/// each with `concurrency` inserts created up front and waiting on the semaphore, 8,192
/// futures of about 4 KiB each (the driver's request future) sat in memory: tens of MiB
/// touched for every few hundred inserts actually running.
async fn insert_all(
    store: Arc<CassandraStore>,
    permits: Arc<Semaphore>,
    backoff: ExponentialBackoff,
    concurrency: usize,
    orders: Vec<(usize, crate::model::Order)>,
) -> (u64, Vec<(usize, CassandraError)>) {
    futures::stream::iter(orders)
        .then(move |(i, order)| {
            let permits = permits.clone();
            // The semaphore is never closed, so acquire cannot fail.
            async move { (i, order, permits.acquire_owned().await) }
        })
        .map(move |(i, order, permit)| {
            let store = store.clone();
            let backoff = backoff.clone();
            async move {
                let outcome = insert_with_retry(&store, &order, backoff).await;
                drop(permit);
                (i, outcome)
            }
        })
        .buffer_unordered(concurrency)
        .fold(
            (0, Vec::new()),
            |(mut written, mut refused), (i, outcome)| async move {
                match outcome {
                    Ok(()) => written += 1,
                    Err(e) => refused.push((i, e)),
                }
                (written, refused)
            },
        )
        .await
}

impl Handler<WriteBatch> for CassandraWriter {
    type Result = ();

    fn handle(&mut self, WriteBatch(mut batch): WriteBatch, ctx: &mut Self::Context) {
        let store = self.store.clone();
        let permits = self.permits.clone();
        let concurrency = self.concurrency;
        let aggregator = self.aggregator.clone();
        let dead_letters = self.dead_letters.clone();
        let backoff = self.backoff.clone();
        let work = async move {
            let started = Instant::now();
            let mut orders = Vec::with_capacity(batch.records.len());
            orders.extend(
                (batch.records.iter().enumerate())
                    .filter_map(|(i, r)| r.order().map(|o| (i, o.clone()))),
            );
            // Cancelled if this future is dropped: a data-path restart drops the actor's futures,
            // and the inserts of a dropped batch must stop with them (the replay writes them
            // again).
            let task = AbortOnDropHandle::new(tokio::spawn(insert_all(
                store,
                permits,
                backoff,
                concurrency,
                orders,
            )));
            let (written, refused) = task.await.map_err(|source| Failure::Task {
                task: "cassandra inserts",
                source,
            })?;
            for (i, e) in refused {
                // Refused for its data: from now on it is a dead letter, not an order.
                batch.records[i].reject(Reason::StoreRejected, e.to_string());
            }
            counter!(telemetry::CASSANDRA_ROWS).increment(written);
            telemetry::seconds(telemetry::CASSANDRA_LATENCY, started.elapsed());

            let letters: Vec<DeadLetter> =
                batch.records.iter().filter_map(DeadLetter::of).collect();
            if !letters.is_empty() {
                dead_letters
                    .send(PublishDeadLetters(letters))
                    .await
                    .map_err(|e| Failure::gone("dead_letters", e))?;
            }
            aggregator
                .send(BatchWritten(batch))
                .await
                .map_err(|e| Failure::gone("olap_aggregator", e))
        };
        ctx.spawn(work.into_actor(self).map(|result, act, ctx| {
            if let Err(failure) = result {
                act.supervisor.do_send(ActorFailed {
                    actor: "cassandra_writer",
                    failure,
                });
                ctx.stop();
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio_util::task::AbortOnDropHandle;

    #[tokio::test]
    async fn a_dropped_batch_stops_its_inserts() {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let task = AbortOnDropHandle::new(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            flag.store(true, Ordering::SeqCst);
        }));
        drop(task);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!ran.load(Ordering::SeqCst), "the task outlived its batch");

        let done = AbortOnDropHandle::new(tokio::spawn(async { 7 }));
        assert_eq!(done.await.ok(), Some(7));
    }
}
