//! Batcher: cuts micro-batches on size or bytes, early while the stages behind it have room
//! (after `pipeline.linger_ms`), or on time, and hands them to the CassandraWriter.
//!
//! Every cut batch counts as in flight until MySQL has it; the consumer pauses at the limit, so
//! the few batches that cannot be handed over at once wait here in a short queue. On failure the
//! data path restarts as a unit and the open batch is replayed from Kafka.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::model::{Batch, BatchCutter, BatchLimits, Record};
use crate::pipeline::cassandra_writer::{CassandraWriter, WriteBatch};
use crate::pipeline::{ActorFailed, Failure, Flow, Halt};

/// Records for the open batch, in the order they were polled. The consumer sends what one poll
/// round found (up to a few hundred), not one message per record: a mailbox round trip per
/// record costs more than the batching itself.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ingest(pub Vec<Record>);

/// Cut the open batch now (drain on shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushOpen;

pub struct Batcher {
    cutter: BatchCutter,
    limits: BatchLimits,
    writer: Addr<CassandraWriter>,
    flow: Arc<Flow>,
    waiting: VecDeque<Batch>,
    /// The next poll on the clock, and when it fires.
    timer: Option<(SpawnHandle, Instant)>,
    /// Waiting for a batch in flight to go through, while the open batch is held back.
    room: Option<SpawnHandle>,
    supervisor: Recipient<ActorFailed>,
}

impl Batcher {
    pub fn new(
        limits: BatchLimits,
        writer: Addr<CassandraWriter>,
        flow: Arc<Flow>,
        supervisor: Recipient<ActorFailed>,
    ) -> Self {
        Self {
            cutter: BatchCutter::new(limits),
            limits,
            writer,
            flow,
            waiting: VecDeque::new(),
            timer: None,
            room: None,
            supervisor,
        }
    }

    fn dispatch(&mut self, batch: Batch, trigger: &'static str, ctx: &mut Context<Self>) {
        crate::ops::telemetry::batch_cut(trigger, batch.records.len());
        self.flow.started();
        self.waiting.push_back(batch);
        self.hand_over(ctx);
    }

    fn hand_over(&mut self, ctx: &mut Context<Self>) {
        while let Some(batch) = self.waiting.pop_front() {
            match self.writer.try_send(WriteBatch(batch)) {
                Ok(()) => {}
                Err(SendError::Full(WriteBatch(batch))) => {
                    self.waiting.push_front(batch);
                    ctx.run_later(Duration::from_millis(5), |act, ctx| act.hand_over(ctx));
                    return;
                }
                Err(SendError::Closed(_)) => {
                    self.supervisor.do_send(ActorFailed {
                        actor: "batcher",
                        failure: Failure::gone("cassandra_writer", MailboxError::Closed),
                    });
                    ctx.stop();
                    return;
                }
            }
        }
    }

    /// Cuts the open batch if it may go now (demand or time); otherwise, or after the cut,
    /// polls again when the cutter says, and when a batch in flight is through while the open
    /// one is held back for room. A poll round that leaves the next poll where it was keeps its
    /// timer: during a drain every round would otherwise replace it.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if let Some((batch, trigger)) = self.cutter.poll(now, self.flow.in_flight()) {
            self.dispatch(batch, trigger, ctx);
        }
        let next = self.cutter.next_poll(now);
        if self.timer.map(|(_, at)| at) != next {
            if let Some((handle, _)) = self.timer.take() {
                ctx.cancel_future(handle);
            }
            if let Some(at) = next {
                let handle = ctx.run_later(at.saturating_duration_since(now), |act, ctx| {
                    act.timer = None;
                    act.poll(ctx);
                });
                self.timer = Some((handle, at));
            }
        }
        if self.room.is_none() && self.cutter.waits_for_room(now) {
            let flow = self.flow.clone();
            let freed = async move { flow.freed().await }.into_actor(self);
            self.room = Some(ctx.spawn(freed.map(|(), act, ctx| {
                act.room = None;
                act.poll(ctx);
            })));
        }
    }
}

impl Actor for Batcher {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        crate::ops::telemetry::actor_up("batcher", true);
    }
    fn stopped(&mut self, _: &mut Self::Context) {
        crate::ops::telemetry::actor_up("batcher", false);
    }
}

impl Handler<Ingest> for Batcher {
    type Result = ();
    fn handle(&mut self, Ingest(records): Ingest, ctx: &mut Self::Context) {
        let now = Instant::now();
        for record in records {
            if let Some(batch) = self.cutter.push(record, now) {
                let trigger = if batch.records.len() >= self.limits.max_orders {
                    "count"
                } else {
                    "bytes"
                };
                self.dispatch(batch, trigger, ctx);
            }
        }
        // Whatever this round left open may go at once (the linger may be 0) or needs a poll.
        if self.cutter.open_len() > 0 {
            self.poll(ctx);
        }
    }
}

impl Handler<FlushOpen> for Batcher {
    type Result = ();
    fn handle(&mut self, _: FlushOpen, ctx: &mut Self::Context) {
        if let Some(batch) = self.cutter.cut() {
            self.dispatch(batch, "drain", ctx);
        }
    }
}

impl Handler<Halt> for Batcher {
    type Result = ();
    fn handle(&mut self, _: Halt, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
