//! Batcher: cuts micro-batches on size, bytes or time and hands them to the CassandraWriter.
//!
//! Every cut batch counts as in flight until MySQL has it; the consumer pauses at the limit, so
//! the few batches that cannot be handed over at once wait here in a short queue. On failure the
//! data path restarts as a unit and the open batch is replayed from Kafka.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::model::batch::{Batch, BatchCutter, BatchLimits, Record};
use crate::pipeline::cassandra_writer::{CassandraWriter, WriteBatch};
use crate::pipeline::{ActorFailed, Failure, Flow, Halt};

/// Records for the open batch, in the order they were polled. The consumer sends what one poll
/// round found (up to a few hundred), not one message per record: a mailbox round trip per
/// record cost more than the batching itself.
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
    timer: Option<SpawnHandle>,
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

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(deadline) = self.cutter.deadline() {
            let wait = deadline.saturating_duration_since(Instant::now());
            self.timer = Some(ctx.run_later(wait, |act, ctx| {
                act.timer = None;
                if let Some(batch) = act.cutter.poll_time(Instant::now()) {
                    act.dispatch(batch, "time", ctx);
                }
                act.arm_timer(ctx);
            }));
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
            let was_empty = self.cutter.open_len() == 0;
            if let Some(batch) = self.cutter.push(record, now) {
                let trigger = if batch.records.len() >= self.limits.max_orders {
                    "count"
                } else {
                    "bytes"
                };
                self.dispatch(batch, trigger, ctx);
                self.arm_timer(ctx);
            } else if was_empty {
                self.arm_timer(ctx);
            }
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
