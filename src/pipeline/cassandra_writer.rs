//! CassandraWriter: stores a batch's valid orders in Cassandra, dead-letters its invalid
//! records, then hands the batch to the OlapAggregator.
//!
//! Several batches may be written at once; one semaphore bounds the inserts in flight across
//! all of them. The inserts run as a tokio task on the worker threads, not on the actor's
//! thread: that thread also decodes records and drives MySQL, and insert completions queued
//! behind it would leave the CQL connection idle. Inserts are idempotent upserts, retried with
//! backoff while the store is down or slow (never skipped). A row the store refuses for its data
//! is turned into a dead letter (docs/DESIGN.md, rule 10) instead of blocking the partition
//! forever.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;
use futures::stream::FuturesUnordered;
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

/// One future at a time in one heap block, reused for the next.
///
/// An insert's future is the driver's request, about 4 KiB. A block that size does not come
/// from glibc's per-thread cache: allocated and freed for every insert, it would take malloc's
/// slow path, which first merges the small free blocks. A block reused per worker pays for it
/// once per batch (at full drain, malloc and free cost 13% of the pipeline's CPU this way
/// against 17% with a block per insert).
struct Reused<F>(Option<Pin<Box<F>>>);

impl<F: Future> Reused<F> {
    fn new() -> Self {
        Self(None)
    }

    /// Puts `future` in the block (dropping the one before) and returns it, to be awaited.
    fn run(&mut self, future: F) -> Pin<&mut F> {
        let block = match self.0.take() {
            Some(mut block) => {
                block.set(future);
                block
            }
            None => Box::pin(future),
        };
        self.0.insert(block).as_mut()
    }
}

/// Runs `insert` until it succeeds; while the store is down or slow, waits out the backoff and
/// tries again, without end. A refusal of the data itself comes back at once.
///
/// The backoff is copied and started only after a failure: almost every insert succeeds at the
/// first attempt, and this runs once per order.
async fn insert_with_retry<F>(
    mut insert: impl FnMut() -> F,
    block: &mut Reused<F>,
    backoff: &ExponentialBackoff,
) -> Result<(), CassandraError>
where
    F: Future<Output = Result<(), CassandraError>>,
{
    let mut waits: Option<ExponentialBackoff> = None;
    loop {
        let err = match block.run(insert()).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_rejection() => return Err(e),
            Err(e) => e,
        };
        telemetry::cassandra_retry(&err);
        let waits = waits.get_or_insert_with(|| {
            let mut waits = backoff.clone();
            waits.reset();
            waits
        });
        match waits.next_backoff() {
            Some(wait) => tokio::time::sleep(wait).await,
            // Only a backoff with a deadline ends; the pipeline's has none.
            None => return Err(err),
        }
    }
}

/// What the inserts of one batch did: how many orders were written, and the orders the store
/// refused for their data, by record index.
#[derive(Default)]
struct Inserted {
    written: u64,
    refused: Vec<(usize, CassandraError)>,
}

impl Inserted {
    fn merge(mut self, other: Inserted) -> Inserted {
        self.written += other.written;
        self.refused.extend(other.refused);
        self
    }
}

/// Inserts the valid orders of `batch` with at most `concurrency` in flight, within the permits
/// shared by every batch, and gives the batch back.
///
/// Up to `concurrency` workers take the next order in turn, each holding one permit while it
/// has orders left: the workers' futures are made once per batch, not once per order, and the
/// batches take the permits in the order they arrive. A worker keeps its inserts' futures in one
/// reused block (`Reused`), made once it holds a permit.
async fn insert_all(
    store: Arc<CassandraStore>,
    permits: Arc<Semaphore>,
    backoff: ExponentialBackoff,
    concurrency: usize,
    batch: Batch,
) -> (Batch, Inserted) {
    let inserted = {
        let next = AtomicUsize::new(0);
        let records = &batch.records;
        let worker = || async {
            let mut done = Inserted::default();
            let mut block = Reused::new();
            // The semaphore is never closed, so acquire cannot fail.
            let _permit = permits.acquire().await;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(record) = records.get(i) else {
                    return done;
                };
                let Some(order) = record.order() else {
                    continue;
                };
                match insert_with_retry(|| store.insert(order), &mut block, &backoff).await {
                    Ok(()) => done.written += 1,
                    Err(e) => done.refused.push((i, e)),
                }
            }
        };
        let valid = records.iter().filter(|r| r.order().is_some()).count();
        (0..concurrency.min(valid))
            .map(|_| worker())
            .collect::<FuturesUnordered<_>>()
            .fold(Inserted::default(), |all, done| async { all.merge(done) })
            .await
    };
    (batch, inserted)
}

impl Handler<WriteBatch> for CassandraWriter {
    type Result = ();

    fn handle(&mut self, WriteBatch(batch): WriteBatch, ctx: &mut Self::Context) {
        let store = self.store.clone();
        let permits = self.permits.clone();
        let concurrency = self.concurrency;
        let aggregator = self.aggregator.clone();
        let dead_letters = self.dead_letters.clone();
        let backoff = self.backoff.clone();
        let table = store.clone();
        let work = async move {
            let started = Instant::now();
            // Cancelled if this future is dropped: a data-path restart drops the actor's futures,
            // and the inserts of a dropped batch must stop with them (the replay writes them
            // again).
            let task = AbortOnDropHandle::new(tokio::spawn(insert_all(
                store,
                permits,
                backoff.clone(),
                concurrency,
                batch,
            )));
            let (
                mut batch,
                Inserted {
                    mut written,
                    refused,
                },
            ) = task.await.map_err(|source| Failure::Task {
                task: "cassandra inserts",
                source,
            })?;
            let mut still_refused = Vec::with_capacity(refused.len());
            if !refused.is_empty() {
                // Without its table the store refuses every order, and the data is not at
                // fault: nothing is dead-lettered and the ledger stays; the data path restarts
                // and reports the missing table until it is migrated again.
                table.check_table().await?;
                // The table is on every node now, but a refusal may come from a node that did
                // not have it yet: each refused order is written once more, and only a second
                // refusal is the data's.
                let mut block = Reused::new();
                for (i, _) in refused {
                    let Some(order) = batch.records.get(i).and_then(|r| r.order()) else {
                        continue;
                    };
                    match insert_with_retry(|| table.insert(order), &mut block, &backoff).await {
                        Ok(()) => written += 1,
                        Err(e) => still_refused.push((i, e)),
                    }
                }
            }
            let refused = still_refused;
            for (i, e) in refused {
                // Refused for its data: from now on it is a dead letter, not an order.
                if let Some(record) = batch.records.get_mut(i) {
                    record.reject(Reason::StoreRejected, e.to_string());
                }
            }
            counter!(telemetry::CASSANDRA_ROWS).increment(written);
            telemetry::seconds(telemetry::CASSANDRA_LATENCY, started.elapsed());

            let letters: Vec<DeadLetter> =
                batch.records.iter().filter_map(DeadLetter::of).collect();
            if !letters.is_empty() {
                dead_letters
                    .send(PublishDeadLetters(letters))
                    .await
                    .map_err(|e| Failure::gone("dead_letters", e))??;
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
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use backoff::ExponentialBackoff;
    use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
    use tokio_util::task::AbortOnDropHandle;

    use super::{insert_with_retry, Reused};
    use crate::stores::CassandraError;

    fn quick_backoff() -> ExponentialBackoff {
        ExponentialBackoff {
            initial_interval: Duration::from_millis(1),
            max_interval: Duration::from_millis(2),
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        }
    }

    fn store_down() -> CassandraError {
        CassandraError::Request("connection refused".into())
    }

    fn refused() -> CassandraError {
        CassandraError::Rejected(Box::new(ExecutionError::LastAttemptError(
            RequestAttemptError::DbError(DbError::Invalid, "quantity out of range".into()),
        )))
    }

    #[tokio::test]
    async fn one_block_holds_every_future_in_turn() {
        let mut block = Reused::new();
        let make = |n: u32| async move { n * 2 };
        let first = block.run(make(1));
        let address = &*first as *const _;
        assert_eq!(first.await, 2);
        let second = block.run(make(5));
        assert_eq!(&*second as *const _, address, "a new block was allocated");
        assert_eq!(second.await, 10);
    }

    #[tokio::test]
    async fn an_insert_is_tried_again_until_the_store_takes_it() {
        let attempts = AtomicUsize::new(0);
        let insert = || {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 | 1 => Err(store_down()),
                    _ => Ok(()),
                }
            }
        };
        let outcome = insert_with_retry(insert, &mut Reused::new(), &quick_backoff()).await;
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(attempts.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_row_refused_for_its_data_is_not_tried_again() {
        let attempts = AtomicUsize::new(0);
        let insert = || {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err(refused()) }
        };
        let outcome = insert_with_retry(insert, &mut Reused::new(), &quick_backoff()).await;
        assert!(
            matches!(outcome, Err(ref e) if e.is_rejection()),
            "{outcome:?}"
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 1);
    }

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
