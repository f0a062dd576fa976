//! KafkaConsumer: the consumer-group member that feeds the pipeline.
//!
//! A poll task reads records, decodes and validates them (order.rs) and hands them to the
//! Batcher. Newly assigned partitions start paused; the actor claims each one in the MySQL
//! ledger (epoch + 1), seeks to the ledger's position, commits that offset to Kafka as a hint
//! and resumes it (docs/DESIGN.md, rule 2). Until then, records of the partition are discarded by
//! the gate. Polling never waits on MySQL, so a slow database cannot get the member evicted. When
//! too many batches are in flight, the poll loop first holds back (librdkafka's bounded queue keeps
//! what it prefetched); if that lasts, every partition is paused and polling goes on.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use backoff::ExponentialBackoff;
use futures::FutureExt;
use metrics::{counter, gauge};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::model::{Claim, Content, Record};
use crate::ops::{telemetry, Health};
use crate::pipeline::batcher::{Batcher, Ingest};
use crate::pipeline::olap_aggregator::BatchCommitted;
use crate::pipeline::{ActorFailed, Failure, Flow, Halt, Remedy};
use crate::stores::{within, AssignmentChange, LedgerContext, OlapStore};

type Client = StreamConsumer<LedgerContext>;

/// Per-partition state shared by the actor and the poll task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartitionState {
    /// Assigned, claim in progress: records are discarded.
    Claiming { token: u64 },
    /// Claimed under `epoch`; records below `next` are stale and discarded.
    Active { epoch: i64, next: i64 },
}

#[derive(Debug, Default)]
struct Gate {
    partitions: HashMap<i32, PartitionState>,
    /// Paused because too many batches are in flight.
    backpressure: bool,
    next_token: u64,
}

impl Gate {
    /// The epoch to tag a record with, or None to discard it.
    fn admit(&mut self, partition: i32, offset: i64) -> Option<i64> {
        match self.partitions.get_mut(&partition) {
            Some(PartitionState::Active { epoch, next }) if offset >= *next => {
                *next = offset + 1;
                Some(*epoch)
            }
            _ => None,
        }
    }

    fn active(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(_, s)| matches!(s, PartitionState::Active { .. }))
            .map(|(p, _)| *p)
            .collect();
        v.sort_unstable();
        v
    }
}

fn lock(gate: &Mutex<Gate>) -> std::sync::MutexGuard<'_, Gate> {
    // A poisoned gate only means a panic elsewhere; its data is still consistent (plain writes).
    gate.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often the applied positions go to Kafka as committed offsets. They are hints for lag
/// tools (the ledger is the truth), and a broker writes every commit: one per batch would be a
/// write per order or two in a quiet shop, where batches are cut as soon as records wait.
const COMMIT_HINT_EVERY: Duration = Duration::from_secs(1);

/// `(partition, next offset)` pairs of `topic` as a list to commit.
fn offsets(topic: &str, positions: &BTreeMap<i32, i64>) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for (p, next) in positions {
        let _ = list.add_partition_offset(topic, *p, Offset::Offset(*next));
    }
    list
}

fn tpl(topic: &str, partitions: &[i32]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for p in partitions {
        list.add_partition(topic, *p);
    }
    list
}

/// Settings the consumer needs.
#[derive(Clone)]
pub struct ConsumerSettings {
    pub topic: String,
    pub owner: String,
    pub max_record_bytes: usize,
    pub request_timeout: Duration,
    /// How long one ledger call may take (`mysql.timeout_ms`) before it is retried.
    pub store_timeout: Duration,
}

/// What a consumer is built from.
pub struct ConsumerWiring {
    pub settings: ConsumerSettings,
    pub client: Client,
    /// Assignment changes from the client's rebalance callback.
    pub changes: mpsc::Receiver<AssignmentChange>,
    pub store: OlapStore,
    pub batcher: Addr<Batcher>,
    pub flow: Arc<Flow>,
    pub health: Arc<Health>,
    pub supervisor: Recipient<ActorFailed>,
    /// Set when the data path is torn down; the poll loop stops on it.
    pub stop: Arc<AtomicBool>,
    pub backoff: ExponentialBackoff,
    /// Fired once the client is closed, that is once this member has left the group.
    pub left: tokio::sync::oneshot::Sender<()>,
}

pub struct KafkaConsumer {
    settings: ConsumerSettings,
    client: Arc<Client>,
    gate: Arc<Mutex<Gate>>,
    store: OlapStore,
    batcher: Addr<Batcher>,
    flow: Arc<Flow>,
    health: Arc<Health>,
    supervisor: Recipient<ActorFailed>,
    changes: Option<mpsc::Receiver<AssignmentChange>>,
    stop: Arc<AtomicBool>,
    backoff: ExponentialBackoff,
    /// Fired once this member's client is closed, that is once it has left the group: the
    /// supervisor starts the next member after it (see `stopped`).
    left: Option<tokio::sync::oneshot::Sender<()>>,
    /// Positions applied since the last commit hint, sent every `COMMIT_HINT_EVERY`.
    hints: BTreeMap<i32, i64>,
    /// The claims under way, by partition: a revoke cancels its partition's claim, so that a
    /// claim retrying through a MySQL outage cannot take the ledger from the member the
    /// partition went to.
    claims: HashMap<i32, SpawnHandle>,
}

impl KafkaConsumer {
    pub fn new(w: ConsumerWiring) -> Self {
        Self {
            settings: w.settings,
            client: Arc::new(w.client),
            gate: Arc::default(),
            store: w.store,
            batcher: w.batcher,
            flow: w.flow,
            health: w.health,
            supervisor: w.supervisor,
            changes: Some(w.changes),
            stop: w.stop,
            backoff: w.backoff,
            left: Some(w.left),
            hints: BTreeMap::new(),
            claims: HashMap::new(),
        }
    }

    /// Commits the positions applied since the last hint.
    fn send_hints(&mut self) {
        if self.hints.is_empty() {
            return;
        }
        let list = offsets(&self.settings.topic, &std::mem::take(&mut self.hints));
        // A failed commit (a zombie's generation error, say) is a warning: the ledger rules.
        if let Err(e) = self.client.commit(&list, CommitMode::Async) {
            telemetry::commit_hint_failed(&e);
        }
    }

    fn fail(&self, ctx: &mut Context<Self>, failure: Failure) {
        self.supervisor.do_send(ActorFailed {
            actor: "consumer",
            failure,
        });
        ctx.stop();
    }

    /// Claims a partition in the ledger, seeks there and resumes it.
    fn claim(&mut self, partition: i32, ctx: &mut Context<Self>) {
        let token = {
            let mut gate = lock(&self.gate);
            gate.next_token += 1;
            let token = gate.next_token;
            gate.partitions
                .insert(partition, PartitionState::Claiming { token });
            token
        };
        let job = claim_partition(
            self.client.clone(),
            self.store.clone(),
            self.settings.clone(),
            partition,
            self.backoff.clone(),
        );
        let handle = ctx.spawn(job.into_actor(self).map(move |result, act, ctx| {
            act.claims.remove(&partition);
            match result {
                Ok(claim) => act.claimed(partition, token, claim),
                Err(failure) => act.claim_failed(partition, token, failure, ctx),
            }
        }));
        if let Some(earlier) = self.claims.insert(partition, handle) {
            ctx.cancel_future(earlier);
        }
    }

    /// The claim of `partition` (attempt `token`) went through: start consuming it.
    fn claimed(&mut self, partition: i32, token: u64, claim: Claim) {
        let mut gate = lock(&self.gate);
        if gate.partitions.get(&partition) != Some(&PartitionState::Claiming { token }) {
            return; // revoked or re-claimed meanwhile
        }
        gate.partitions.insert(
            partition,
            PartitionState::Active {
                epoch: claim.epoch,
                next: claim.next_offset,
            },
        );
        let resume = !gate.backpressure;
        drop(gate);
        let list = tpl(&self.settings.topic, &[partition]);
        if resume {
            if let Err(e) = self.client.resume(&list) {
                tracing::warn!(partition, error = %e, "resume failed");
            }
        }
        // A hint for lag tools; the ledger stays the truth.
        self.hints.insert(partition, claim.next_offset);
        tracing::info!(
            partition,
            epoch = claim.epoch,
            next_offset = claim.next_offset,
            "partition claimed"
        );
        self.update_paused_gauge();
        self.update_readiness();
    }

    fn claim_failed(
        &mut self,
        partition: i32,
        token: u64,
        failure: Failure,
        ctx: &mut Context<Self>,
    ) {
        // A partition revoked while its claim ran cannot be sought any more ("erroneous
        // state"): that is the rebalance, not a failure.
        let still_ours = lock(&self.gate).partitions.get(&partition)
            == Some(&PartitionState::Claiming { token });
        if still_ours || failure.remedy() == Remedy::StopProcess {
            self.fail(ctx, failure);
        } else {
            tracing::info!(partition, error = %failure, "claim abandoned: partition revoked");
        }
    }

    /// Ready when every assigned partition is claimed (an empty assignment is ready too: the
    /// member has joined, there is just nothing for it).
    fn update_readiness(&self) {
        let claiming = lock(&self.gate)
            .partitions
            .values()
            .any(|s| matches!(s, PartitionState::Claiming { .. }));
        self.health.set_ready(!claiming);
    }

    /// Tells the watchdog (through `Health`) which partitions this member holds.
    fn publish_held(&self) {
        let held: Vec<i32> = lock(&self.gate).partitions.keys().copied().collect();
        self.health.set_held(held);
    }

    /// Stops consuming a partition that another member has claimed in the ledger since this
    /// member claimed it: the broker handed it to both (or this member has not yet heard of a
    /// rebalance). Every batch of it would be fenced, so it is paused and dropped from the gate
    /// instead of being retried; a later assignment claims it again, and should the other member
    /// die meanwhile, the watchdog sees the partition stuck and this instance rejoins the group.
    fn release(&mut self, partition: i32, epoch: i64) {
        let mut gate = lock(&self.gate);
        let claimed_in_that_epoch = matches!(
            gate.partitions.get(&partition),
            Some(PartitionState::Active { epoch: e, .. }) if *e == epoch
        );
        if !claimed_in_that_epoch {
            return; // revoked, re-claimed or released already
        }
        gate.partitions.remove(&partition);
        drop(gate);
        if let Err(e) = self.client.pause(&tpl(&self.settings.topic, &[partition])) {
            tracing::warn!(partition, error = %e, "pause of a released partition failed");
        }
        telemetry::partition_released(partition, epoch);
        self.publish_held();
        self.update_paused_gauge();
    }

    fn update_paused_gauge(&self) {
        let gate = lock(&self.gate);
        let claiming = gate
            .partitions
            .values()
            .filter(|s| matches!(s, PartitionState::Claiming { .. }))
            .count();
        let paused = if gate.backpressure {
            gate.partitions.len()
        } else {
            claiming
        };
        gauge!(telemetry::CONSUMER_PAUSED).set(paused as f64);
    }
}

/// Seeks a newly claimed partition to the ledger's position. Right after an assignment
/// librdkafka may not have started the partition's fetcher yet and answers "erroneous state";
/// that passes within milliseconds, so it is retried for up to the request timeout. (Claims on
/// SQLite are fast enough to meet it; failing there would restart the data path and cost a
/// rejoin.)
async fn seek(
    client: &Arc<Client>,
    settings: &ConsumerSettings,
    partition: i32,
    next: i64,
) -> Result<(), Failure> {
    let deadline = std::time::Instant::now() + settings.request_timeout;
    loop {
        let (client, topic, timeout) = (
            client.clone(),
            settings.topic.clone(),
            settings.request_timeout,
        );
        let result = tokio::task::spawn_blocking(move || {
            client.seek(&topic, partition, Offset::Offset(next), timeout)
        })
        .await
        .map_err(|source| Failure::Task {
            task: "seek",
            source,
        })?;
        match result {
            Ok(()) => return Ok(()),
            Err(e)
                if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::State)
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(Failure::kafka(format!("seek {partition} to {next}"), e)),
        }
    }
}

/// Reads the partition's watermarks, claims it in the ledger at the low watermark if it has no
/// row yet, checks that the ledger lies within the log and seeks there.
async fn claim_partition(
    client: Arc<Client>,
    store: OlapStore,
    settings: ConsumerSettings,
    partition: i32,
    backoff: ExponentialBackoff,
) -> Result<Claim, Failure> {
    let (low, mut high) = watermarks(&client, &settings, partition, backoff.clone()).await?;
    let claim = backoff::future::retry(backoff.clone(), || async {
        within(
            settings.store_timeout,
            store.claim(&settings.topic, partition, &settings.owner, low),
        )
        .await
        .map_err(|e| {
            if e.is_transient() {
                backoff::Error::transient(e)
            } else {
                backoff::Error::permanent(e)
            }
        })
    })
    .await
    .map_err(|e| Failure::olap(format!("claiming partition {partition}"), e))?;
    #[cfg(feature = "failpoints")]
    crate::pipeline::failpoints::hit("after_claim");
    let (topic, ledger) = (settings.topic.clone(), claim.next_offset);
    if ledger > high {
        // The log end was read before the claim: a member that held the partition until then
        // may have applied records written since. Only a ledger still ahead of the log now
        // means the topic was recreated.
        high = watermarks(&client, &settings, partition, backoff).await?.1;
    }
    if ledger > high {
        return Err(Failure::LedgerAheadOfLog {
            topic,
            partition,
            ledger,
            log_end: high,
        });
    }
    if ledger < low {
        return Err(Failure::LedgerBehindLog {
            topic,
            partition,
            ledger,
            log_start: low,
        });
    }
    seek(&client, &settings, partition, ledger).await?;
    Ok(claim)
}

/// The partition's low and high watermarks, retried while the broker does not answer.
async fn watermarks(
    client: &Arc<Client>,
    settings: &ConsumerSettings,
    partition: i32,
    backoff: ExponentialBackoff,
) -> Result<(i64, i64), Failure> {
    let timeout = settings.request_timeout;
    backoff::future::retry(backoff, || {
        let client = client.clone();
        let topic = settings.topic.clone();
        async move {
            tokio::task::spawn_blocking(move || client.fetch_watermarks(&topic, partition, timeout))
                .await
                .map_err(|source| {
                    backoff::Error::permanent(Failure::Task {
                        task: "watermarks",
                        source,
                    })
                })?
                .map_err(|e| {
                    backoff::Error::transient(Failure::kafka(
                        format!("watermarks of partition {partition}"),
                        e,
                    ))
                })
        }
    })
    .await
}

/// Pauses the active partitions when the in-flight count is at the limit (the poll loop calls
/// this once holding back has lasted `HOLD_BACK_MAX`), resumes them once it is below.
fn apply_backpressure(client: &Client, gate: &Mutex<Gate>, flow: &Flow, topic: &str) {
    let saturated = flow.saturated();
    let mut gate = lock(gate);
    if saturated == gate.backpressure {
        return;
    }
    let list = tpl(topic, &gate.active());
    let result = if saturated {
        client.pause(&list)
    } else {
        client.resume(&list)
    };
    match result {
        Ok(()) => {
            gate.backpressure = saturated;
            let paused = if saturated { gate.partitions.len() } else { 0 };
            gauge!(telemetry::CONSUMER_PAUSED).set(paused as f64);
        }
        Err(e) => tracing::warn!(error = %e, "pause/resume failed"),
    }
}

/// Records handed to the batcher in one message at most (see `batcher::Ingest`).
const INGEST_CHUNK: usize = 256;

/// How long the poll loop holds back while too many batches are in flight (it stops taking
/// records, and librdkafka stops fetching once its bounded queue is full) before it pauses the
/// partitions instead. A pause throws librdkafka's prefetched records away, so every resume
/// fetches them again: pausing at once would, under a steady drain, pause and resume at every
/// batch and wait on the broker each time. Holding back keeps them;
/// pausing, past this, keeps the member polling through a real outage, so rebalances are still
/// served and `max.poll.interval.ms` is never at risk.
const HOLD_BACK_MAX: Duration = Duration::from_secs(2);

#[allow(clippy::too_many_arguments)]
async fn poll_loop(
    client: Arc<Client>,
    gate: Arc<Mutex<Gate>>,
    batcher: Addr<Batcher>,
    flow: Arc<Flow>,
    health: Arc<Health>,
    stop: Arc<AtomicBool>,
    topic: String,
    max_record_bytes: usize,
) -> Result<(), Failure> {
    let mut saturated_since: Option<std::time::Instant> = None;
    while !stop.load(Ordering::Acquire) {
        if flow.saturated() {
            let since = *saturated_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() < HOLD_BACK_MAX && !lock(&gate).backpressure {
                health.progress();
                tokio::time::sleep(Duration::from_millis(2)).await;
                continue;
            }
        } else {
            saturated_since = None;
        }
        apply_backpressure(&client, &gate, &flow, &topic);
        let message = match tokio::time::timeout(Duration::from_millis(100), client.recv()).await {
            Err(_) => {
                health.progress();
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "kafka poll error");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Ok(Ok(message)) => message,
        };
        health.progress();
        let mut records = Vec::with_capacity(INGEST_CHUNK);
        records.extend(admit(&gate, &message, max_record_bytes));
        drop(message);
        // Then what librdkafka has already fetched, without waiting (recv is cancel-safe: a
        // poll that finds nothing takes nothing).
        while records.len() < INGEST_CHUNK {
            match client.recv().now_or_never() {
                Some(Ok(message)) => records.extend(admit(&gate, &message, max_record_bytes)),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka poll error");
                    break;
                }
                None => break,
            }
        }
        if records.is_empty() {
            continue;
        }
        counter!(telemetry::CONSUMER_RECORDS).increment(records.len() as u64);
        if tracing::enabled!(tracing::Level::TRACE) {
            let now = chrono::Utc::now().timestamp_millis();
            let ages: Vec<i64> = records
                .iter()
                .filter_map(|r| r.order().map(|o| now - o.created_at_ms))
                .collect();
            tracing::trace!(
                records = records.len(),
                oldest_ms = ages.iter().max().copied().unwrap_or(0),
                newest_ms = ages.iter().min().copied().unwrap_or(0),
                "polled"
            );
        }
        let handed = std::time::Instant::now();
        batcher
            .send(Ingest(records))
            .await
            .map_err(|e| Failure::gone("batcher", e))?;
        tracing::trace!(send_us = handed.elapsed().as_micros() as u64, "handed over");
    }
    Ok(())
}

/// Longest wait for the other holders of a stopping consumer's client (the actor, its poll loop,
/// a metadata request in flight) to let go of it.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// Closes the client on this (blocking) thread: the last holder's drop closes it, and closing
/// blocks until the member has left the group. The actor and its futures still hold clones
/// while it stops; had one of them been the last, the close would have blocked the actors'
/// thread, and the next member would have joined while this one was still in the group (one
/// more rebalance).
fn close(mut client: Arc<Client>) {
    let deadline = std::time::Instant::now() + CLOSE_WAIT;
    loop {
        match Arc::try_unwrap(client) {
            Ok(last) => return drop(last),
            Err(shared) if std::time::Instant::now() < deadline => {
                client = shared;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => {
                tracing::warn!("the stopped consumer's client is still in use; not waiting for it");
                return;
            }
        }
    }
}

/// Decodes and validates a polled message into a record, or None when the gate discards it
/// (its partition is being claimed, or it is below the claimed position).
fn admit(
    gate: &Mutex<Gate>,
    message: &rdkafka::message::BorrowedMessage<'_>,
    max_record_bytes: usize,
) -> Option<Record> {
    let (partition, offset) = (message.partition(), message.offset());
    let epoch = lock(gate).admit(partition, offset)?;
    let payload = message.payload().unwrap_or_default();
    let content = match crate::model::decode(payload, max_record_bytes) {
        Ok(order) => Content::Valid(order),
        Err(rejection) => Content::Invalid {
            rejection,
            payload: payload.to_vec(),
        },
    };
    Some(Record {
        partition,
        offset,
        epoch,
        bytes: payload.len(),
        content,
    })
}

impl Actor for KafkaConsumer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(256);
        telemetry::actor_up("consumer", true);
        if let Err(e) = self.client.subscribe(&[&self.settings.topic]) {
            return self.fail(ctx, Failure::kafka("subscribing", e));
        }
        if let Some(changes) = self.changes.take() {
            ctx.add_stream(tokio_stream::wrappers::ReceiverStream::new(changes));
        }
        ctx.run_interval(COMMIT_HINT_EVERY, |act, _| act.send_hints());
        let poll = poll_loop(
            self.client.clone(),
            self.gate.clone(),
            self.batcher.clone(),
            self.flow.clone(),
            self.health.clone(),
            self.stop.clone(),
            self.settings.topic.clone(),
            self.settings.max_record_bytes,
        );
        ctx.spawn(poll.into_actor(self).map(|result, act, ctx| match result {
            Ok(()) => tracing::info!("consumer stopped polling"),
            Err(failure) => act.fail(ctx, failure),
        }));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stop.store(true, Ordering::Release);
        self.send_hints();
        telemetry::actor_up("consumer", false);
        self.health.set_held([]);
        // Leaving the group blocks; do it off the actor thread.
        let (client, left) = (self.client.clone(), self.left.take());
        tokio::task::spawn_blocking(move || {
            client.unsubscribe();
            close(client);
            if let Some(left) = left {
                let _ = left.send(());
            }
        });
    }
}

impl StreamHandler<AssignmentChange> for KafkaConsumer {
    fn handle(&mut self, change: AssignmentChange, ctx: &mut Self::Context) {
        match change {
            AssignmentChange::Assigned(partitions) => {
                for p in partitions {
                    self.claim(p, ctx);
                }
            }
            AssignmentChange::Revoked(partitions) => {
                let mut gate = lock(&self.gate);
                for p in partitions {
                    gate.partitions.remove(&p);
                    if let Some(claim) = self.claims.remove(&p) {
                        ctx.cancel_future(claim);
                    }
                }
            }
        }
        self.publish_held();
        self.update_paused_gauge();
        self.update_readiness();
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

impl Handler<BatchCommitted> for KafkaConsumer {
    type Result = ();

    fn handle(&mut self, msg: BatchCommitted, ctx: &mut Self::Context) {
        for (p, next) in &msg.committed {
            let hint = self.hints.entry(*p).or_insert(*next);
            *hint = (*hint).max(*next);
        }
        #[cfg(feature = "failpoints")]
        crate::pipeline::failpoints::hit("after_mysql_commit");
        for (p, epoch) in msg.gaps {
            let current = lock(&self.gate).partitions.get(&p).copied();
            if let Some(PartitionState::Active { epoch: e, .. }) = current {
                if e == epoch {
                    tracing::warn!(partition = p, "gap between ledger and batch: re-claiming");
                    if let Err(err) = self.client.pause(&tpl(&self.settings.topic, &[p])) {
                        tracing::warn!(error = %err, "pause failed");
                    }
                    self.claim(p, ctx);
                }
            }
        }
        for (p, epoch) in msg.fenced {
            tracing::debug!(
                partition = p,
                epoch,
                "records of a lost or re-claimed partition were fenced"
            );
            self.release(p, epoch);
        }
    }
}

/// Stops polling and waits for the in-flight batches to reach MySQL (graceful drain).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopPolling;

impl Handler<StopPolling> for KafkaConsumer {
    type Result = ();
    fn handle(&mut self, _: StopPolling, _: &mut Self::Context) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Handler<Halt> for KafkaConsumer {
    type Result = ();
    fn handle(&mut self, _: Halt, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_discards_claiming_and_stale_records() {
        let mut gate = Gate::default();
        assert_eq!(gate.admit(0, 5), None);
        gate.partitions
            .insert(0, PartitionState::Claiming { token: 1 });
        assert_eq!(gate.admit(0, 5), None);
        gate.partitions
            .insert(0, PartitionState::Active { epoch: 3, next: 10 });
        assert_eq!(gate.admit(0, 9), None);
        assert_eq!(gate.admit(0, 10), Some(3));
        assert_eq!(gate.admit(0, 10), None);
        assert_eq!(gate.admit(0, 11), Some(3));
        assert_eq!(gate.active(), vec![0]);
    }
}
