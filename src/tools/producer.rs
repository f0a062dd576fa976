//! OrderProducer: publishes simulated orders at a steady rate (idempotent producer, key =
//! order_id).
//!
//! Order ids use the node this producer leased (`node_lease`): while no grant is valid (MySQL
//! unreachable for longer than the lease time, say), the producer pauses rather than risk an
//! id another producer may issue.
//!
//! A tick every 10 ms publishes what the rate allows; when librdkafka's bounded queue is full
//! the tick simply publishes less, so a slow broker slows the producer instead of growing
//! memory. With a count, the actor stops once every order was acknowledged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use metrics::counter;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::ops::{telemetry, Health};
use crate::pipeline::Halt;
use crate::tools::node_lease::LeaseWindow;
use crate::tools::simulation::{IdGenerator, OrderGenerator};

pub struct OrderProducer {
    producer: FutureProducer,
    topic: String,
    rate_per_sec: u32,
    /// 0: unlimited.
    count: u64,
    generator: OrderGenerator,
    /// The (node, floor) of the lease `generator` was made for.
    generator_for: Option<(u16, i64)>,
    lease: Arc<LeaseWindow>,
    started_at: Instant,
    sent: u64,
    acked: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// Told when `count` orders are acknowledged.
    done: Option<tokio::sync::oneshot::Sender<u64>>,
    /// The `produce` command's liveness: a tick that sees new acknowledgements is progress.
    /// (Inside `run`, the pipeline's own progress drives `/healthz` instead.)
    health: Option<Arc<Health>>,
    /// Acknowledgements seen by the last tick.
    acked_seen: u64,
    /// Every this many records is made invalid on purpose (0: never; the demo's dead letters).
    invalid_every: u64,
    /// Halt was asked for: nothing more is sent (see the `Halt` handler).
    halting: bool,
}

/// Longest wait of a halting producer for the broker's answers to what it has sent.
const HALT_WAIT: Duration = Duration::from_secs(10);

/// What a producer is built from.
pub struct ProducerSettings {
    pub producer: FutureProducer,
    pub topic: String,
    pub rate_per_sec: u32,
    /// Stop after this many orders; 0: never.
    pub count: u64,
    /// The id node this producer may use, and until when.
    pub lease: Arc<LeaseWindow>,
    /// Told the number acknowledged once `count` orders are.
    pub done: Option<tokio::sync::oneshot::Sender<u64>>,
    /// The `produce` command's liveness (None inside `run` and the demo).
    pub health: Option<Arc<Health>>,
}

impl OrderProducer {
    pub fn new(s: ProducerSettings) -> Self {
        Self {
            producer: s.producer,
            topic: s.topic,
            rate_per_sec: s.rate_per_sec,
            count: s.count,
            generator: OrderGenerator::new(0),
            generator_for: None,
            lease: s.lease,
            started_at: Instant::now(),
            sent: 0,
            acked: Arc::default(),
            failed: Arc::default(),
            done: s.done,
            health: s.health,
            acked_seen: 0,
            invalid_every: 0,
            halting: false,
        }
    }

    /// Makes every `n`th record invalid (see `simulation::invalid_record`); 0 turns it off.
    pub(crate) fn with_invalid_every(mut self, n: u64) -> Self {
        self.invalid_every = n;
        self
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.halting {
            return;
        }
        let acked = self.acked.load(Ordering::Relaxed);
        if acked > self.acked_seen {
            self.acked_seen = acked;
            if let Some(health) = &self.health {
                health.progress();
            }
        }
        let elapsed = self.started_at.elapsed().as_secs_f64();
        let mut due = (elapsed * f64::from(self.rate_per_sec)) as u64;
        if self.count > 0 {
            due = due.min(self.count);
        }
        let Some(grant) = self.lease.current() else {
            return;
        };
        // A new lease (the first, or another after a loss): ids start above its floor.
        if self.generator_for != Some((grant.node, grant.floor_ms)) {
            self.generator =
                OrderGenerator::with_ids(IdGenerator::with_floor(grant.node, grant.floor_ms));
            self.generator_for = Some((grant.node, grant.floor_ms));
        }
        let mut rng = rand::rng();
        let mut highest_ms = None;
        while self.sent < due {
            let now = chrono::Utc::now().timestamp_millis();
            let id_ms = self.generator.ids().next_ms(now);
            if !grant.allows(id_ms) {
                break;
            }
            highest_ms = Some(id_ms);
            let order = self.generator.next(now, &mut rng);
            let key = order.order_id.to_string();
            let payload =
                if self.invalid_every > 0 && (self.sent + 1).is_multiple_of(self.invalid_every) {
                    crate::tools::simulation::invalid_record(&order, self.sent / self.invalid_every)
                } else {
                    order.to_json()
                };
            let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    self.sent += 1;
                    let acked = self.acked.clone();
                    let failed = self.failed.clone();
                    ctx.spawn(
                        async move {
                            match delivery.await {
                                Ok(Ok(_)) => {
                                    acked.fetch_add(1, Ordering::Relaxed);
                                    counter!(telemetry::PRODUCER_ORDERS).increment(1);
                                }
                                _ => {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    counter!(telemetry::PRODUCER_ERRORS).increment(1);
                                }
                            }
                        }
                        .into_actor(self),
                    );
                }
                // Queue full (or the broker is away): try again on the next tick. The order's id
                // is simply never used.
                Err(_) => break,
            }
        }
        // Once per tick, not per order: the next renewal reserves past what was used.
        if let Some(ms) = highest_ms {
            self.lease.used(ms);
        }
        if self.count > 0 && self.acked.load(Ordering::Relaxed) >= self.count {
            if let Some(done) = self.done.take() {
                let _ = done.send(self.count);
            }
            ctx.stop();
        }
    }
}

impl Actor for OrderProducer {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        telemetry::actor_up("producer", true);
        self.started_at = Instant::now();
        ctx.run_interval(Duration::from_millis(10), |act, ctx| act.tick(ctx));
    }
    fn stopped(&mut self, _: &mut Self::Context) {
        telemetry::actor_up("producer", false);
    }
}

/// Stops publishing, then waits (up to `HALT_WAIT`) for the broker's answers to what was sent
/// before stopping, so that every order the topic holds is counted in
/// `orderstream_producer_orders_total`.
impl Handler<Halt> for OrderProducer {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, _: Halt, _: &mut Self::Context) -> Self::Result {
        self.halting = true;
        let (sent, acked, failed) = (self.sent, self.acked.clone(), self.failed.clone());
        let answered = async move {
            let deadline = Instant::now() + HALT_WAIT;
            while acked.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < sent
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        Box::pin(answered.into_actor(self).map(|(), _, ctx| ctx.stop()))
    }
}
