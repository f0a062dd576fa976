//! The data-path supervisor: builds the actors, restarts them as a unit, drains on shutdown.
//!
//! Dependency outages are retried inside the actors and never reach this file. What does reach
//! it is an unexpected failure: then every data-path actor is stopped, in-flight batches are
//! dropped, and a fresh set starts after a backoff, rejoining the group and re-claiming every
//! partition from the ledger (DESIGN rule 8, like OTP's rest_for_one). A restart budget (N in a
//! window) bounds this; a spent budget or a fatal error stops the process with a non-zero code
//! naming the actor, so the container's restart policy becomes the top-level supervisor.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use backoff::ExponentialBackoff;
use metrics::counter;
use rdkafka::config::FromClientConfigAndContext;
use tokio::sync::mpsc;

use crate::actors::batcher::{Batcher, FlushOpen};
use crate::actors::cassandra_writer::CassandraWriter;
use crate::actors::consumer::{ConsumerSettings, KafkaConsumer, StopPolling};
use crate::actors::dead_letters::DeadLetters;
use crate::actors::mysql_aggregator::{MysqlAggregator, NotifyConsumer, Rejections};
use crate::actors::{ActorFailed, Flow, Halt};
use crate::batch::BatchLimits;
use crate::cassandra::CassandraStore;
use crate::config::Config;
use crate::kafka::{self, LedgerContext};
use crate::olap::OlapStore;
use crate::telemetry::{self, Health};

/// Exit code when the restart budget is spent.
pub const EXIT_BUDGET_SPENT: i32 = 3;
/// Exit code after a fatal (non-restartable) error.
pub const EXIT_FATAL: i32 = 2;

/// The backoff used for retries of dependency calls: exponential, capped, never giving up.
pub fn retry_backoff(cfg: &Config) -> ExponentialBackoff {
    ExponentialBackoff {
        initial_interval: Duration::from_millis(cfg.supervision.backoff_initial_ms),
        max_interval: Duration::from_millis(cfg.supervision.backoff_max_ms),
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    }
}

/// Connections shared across data-path generations.
#[derive(Clone)]
pub struct Stores {
    pub cassandra: Arc<CassandraStore>,
    /// MySQL in production, SQLite in the demo.
    pub olap: OlapStore,
}

struct DataPath {
    consumer: Addr<KafkaConsumer>,
    batcher: Addr<Batcher>,
    writer: Addr<CassandraWriter>,
    aggregator: Addr<MysqlAggregator>,
    dead_letters: Addr<DeadLetters>,
    flow: Arc<Flow>,
    stop: Arc<AtomicBool>,
}

impl DataPath {
    fn halt(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.consumer.do_send(Halt);
        self.batcher.do_send(Halt);
        self.writer.do_send(Halt);
        self.aggregator.do_send(Halt);
        self.dead_letters.do_send(Halt);
    }
}

pub struct Pipeline {
    cfg: Arc<Config>,
    stores: Stores,
    health: Arc<Health>,
    owner: String,
    path: Option<DataPath>,
    restarts: VecDeque<Instant>,
    generation: u64,
    draining: bool,
    /// Fires once the current data path's consumer has left the group.
    leaving: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Where the process learns that it must exit, and with which code. (`System::stop` would
    /// not do: `main` runs the system with `block_on`, which ignores it, and the process lived
    /// on without a data path; the chaos suite's budget test found that.)
    exit: mpsc::Sender<i32>,
}

impl Pipeline {
    pub fn new(
        cfg: Arc<Config>,
        stores: Stores,
        health: Arc<Health>,
        owner: String,
        exit: mpsc::Sender<i32>,
    ) -> Self {
        Self {
            exit,
            cfg,
            stores,
            health,
            owner,
            path: None,
            restarts: VecDeque::new(),
            generation: 0,
            draining: false,
            leaving: None,
        }
    }

    fn start_path(&mut self, ctx: &mut Context<Self>) -> Result<(), String> {
        let cfg = &self.cfg;
        let backoff = retry_backoff(cfg);
        let supervisor = ctx.address().recipient::<ActorFailed>();
        let flow = Arc::new(Flow::new(cfg.pipeline.max_in_flight_batches));
        let stop = Arc::new(AtomicBool::new(false));
        self.generation += 1;
        let client_id = format!("{}-g{}", self.owner, self.generation);

        let dlq_producer = kafka::producer_config(&cfg.kafka, &format!("{client_id}-dlq"))
            .create()
            .map_err(|e| format!("dead-letter producer: {e}"))?;
        let dead_letters = DeadLetters::new(
            dlq_producer,
            cfg.kafka.dead_letter_topic.clone(),
            cfg.kafka.topic.clone(),
            cfg.pipeline.max_record_bytes,
            backoff.clone(),
        )
        .start();
        let rejections = Rejections {
            dead_letters: dead_letters.clone(),
            cassandra: self.stores.cassandra.clone(),
        };
        let aggregator = MysqlAggregator::new(
            self.stores.olap.clone(),
            rejections,
            cfg.kafka.topic.clone(),
            flow.clone(),
            supervisor.clone(),
            self.health.clone(),
            backoff.clone(),
        )
        .start();
        let writer = CassandraWriter::new(
            self.stores.cassandra.clone(),
            cfg.cassandra.concurrency,
            aggregator.clone(),
            dead_letters.clone(),
            supervisor.clone(),
            backoff.clone(),
        )
        .start();
        let limits = BatchLimits {
            max_orders: cfg.pipeline.max_orders,
            max_bytes: cfg.pipeline.max_bytes,
            max_wait: Duration::from_millis(cfg.pipeline.max_wait_ms),
        };
        let batcher =
            Batcher::new(limits, writer.clone(), flow.clone(), supervisor.clone()).start();

        let (changes_tx, changes_rx) = mpsc::channel(1024);
        let context = LedgerContext {
            topic: cfg.kafka.topic.clone(),
            changes: changes_tx,
        };
        let client = rdkafka::consumer::StreamConsumer::from_config_and_context(
            &kafka::consumer_config(&cfg.kafka, &client_id),
            context,
        )
        .map_err(|e| format!("kafka consumer: {e}"))?;
        let settings = ConsumerSettings {
            topic: cfg.kafka.topic.clone(),
            owner: client_id,
            max_record_bytes: cfg.pipeline.max_record_bytes,
            request_timeout: Duration::from_millis(u64::from(cfg.kafka.request_timeout_ms)),
            rejoin_timeout: cfg.kafka.rejoin_timeout(),
        };
        let (left, leaving) = tokio::sync::oneshot::channel();
        self.leaving = Some(leaving);
        let consumer = KafkaConsumer::new(
            settings,
            client,
            changes_rx,
            self.stores.olap.clone(),
            batcher.clone(),
            flow.clone(),
            self.health.clone(),
            supervisor,
            stop.clone(),
            backoff,
            left,
        )
        .start();
        aggregator.do_send(NotifyConsumer(consumer.clone().recipient()));
        self.path = Some(DataPath {
            consumer,
            batcher,
            writer,
            aggregator,
            dead_letters,
            flow,
            stop,
        });
        // Ready once the consumer has joined the group and claimed what it was given (it says
        // so itself): producing into an instance that is still joining only adds latency.
        self.health.set_ready(false);
        Ok(())
    }

    /// Asks `app::run` to end the process with `code` (the first request wins).
    fn exit(&self, code: i32) {
        let _ = self.exit.try_send(code);
    }

    fn restart(&mut self, actor: &'static str, error: String, ctx: &mut Context<Self>) {
        if let Some(path) = self.path.take() {
            path.halt();
        }
        self.health.set_ready(false);
        if self.draining {
            return;
        }
        counter!(telemetry::RESTARTS, "actor" => actor).increment(1);
        let window = Duration::from_millis(self.cfg.supervision.restart_window_ms);
        let now = Instant::now();
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() as u32 >= self.cfg.supervision.restart_budget {
            tracing::error!(actor, %error, "restart budget spent: stopping the process");
            eprintln!(
                "orderstream: restart budget spent ({} restarts in {} ms); last failure in {actor}: {error}",
                self.restarts.len(),
                self.cfg.supervision.restart_window_ms
            );
            self.exit(EXIT_BUDGET_SPENT);
            return;
        }
        self.restarts.push_back(now);
        let delay = Duration::from_millis(self.cfg.supervision.backoff_initial_ms)
            * 2u32.saturating_pow(self.restarts.len().saturating_sub(1) as u32);
        let delay = delay.min(Duration::from_millis(self.cfg.supervision.backoff_max_ms));
        tracing::warn!(actor, %error, ?delay, "restarting the data path");
        ctx.run_later(delay, |act, ctx| act.start_after_leave(ctx));
    }

    /// Starts a new data path once the previous consumer has left the group, or after a session
    /// timeout (by then the broker has expired that member anyway). A new member that joins
    /// beside the old one costs an extra rebalance against Kafka, and against tansu 0.6 a group
    /// that did not re-form.
    fn start_after_leave(&mut self, ctx: &mut Context<Self>) {
        let leaving = self.leaving.take();
        let wait = Duration::from_millis(u64::from(self.cfg.kafka.session_timeout_ms));
        let left = async move {
            if let Some(leaving) = leaving {
                if tokio::time::timeout(wait, leaving).await.is_err() {
                    tracing::warn!("the previous consumer has not left the group; starting anyway");
                }
            }
        };
        ctx.spawn(left.into_actor(self).map(|(), act, ctx| {
            if act.draining {
                return;
            }
            if let Err(error) = act.start_path(ctx) {
                act.restart("consumer", error, ctx);
            }
        }));
    }
}

impl Actor for Pipeline {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        if let Err(error) = self.start_path(ctx) {
            self.restart("consumer", error, ctx);
        }
        // Readiness follows the stores: an outage is waited out inside the actors (retries with
        // backoff, no restart), and meanwhile the instance reports itself not ready.
        self.health.set_stores_reachable(true);
        telemetry::dependency_up("cassandra", true);
        // The `mysql` series stands for the OLAP store, whichever it is (SQLite in the demo), so
        // the dashboards and alerts work unchanged.
        telemetry::dependency_up("mysql", true);
        ctx.run_interval(PROBE_EVERY, |act, ctx| {
            let stores = act.stores.clone();
            let health = act.health.clone();
            ctx.spawn(
                async move {
                    let (cassandra, mysql) =
                        tokio::join!(probe(stores.cassandra.ping()), probe(stores.olap.ping()));
                    telemetry::dependency_up("cassandra", cassandra);
                    telemetry::dependency_up("mysql", mysql);
                    health.set_stores_reachable(cassandra && mysql);
                }
                .into_actor(act),
            );
        });
    }
}

const PROBE_EVERY: Duration = Duration::from_secs(2);

/// A probe that does not answer within the probe interval counts as down.
async fn probe(check: impl std::future::Future<Output = bool>) -> bool {
    tokio::time::timeout(PROBE_EVERY, check)
        .await
        .unwrap_or(false)
}

impl Handler<ActorFailed> for Pipeline {
    type Result = ();
    fn handle(&mut self, msg: ActorFailed, ctx: &mut Self::Context) {
        if msg.fatal {
            tracing::error!(actor = msg.actor, error = %msg.error, "fatal error");
            eprintln!("orderstream: fatal error in {}: {}", msg.actor, msg.error);
            if let Some(path) = self.path.take() {
                path.halt();
            }
            self.exit(EXIT_FATAL);
            return;
        }
        self.restart(msg.actor, msg.error, ctx);
    }
}

/// Stop consuming, let the in-flight batches reach MySQL (or give up after the drain timeout),
/// then stop. Answers with whether everything in flight was committed.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Drain;

impl Handler<Drain> for Pipeline {
    type Result = ResponseActFuture<Self, bool>;

    fn handle(&mut self, _: Drain, _: &mut Self::Context) -> Self::Result {
        self.draining = true;
        self.health.set_ready(false);
        let Some(path) = self.path.take() else {
            return Box::pin(actix::fut::ready(true));
        };
        let timeout = Duration::from_millis(self.cfg.pipeline.drain_timeout_ms);
        let fut = async move {
            let _ = path.consumer.send(StopPolling).await;
            // Let the poll loop notice the flag before the open batch is cut.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let _ = path.batcher.send(FlushOpen).await;
            let deadline = Instant::now() + timeout;
            while path.flow.in_flight() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let drained = path.flow.in_flight() == 0;
            // Let the last commit notice reach the consumer before it leaves the group.
            tokio::time::sleep(Duration::from_millis(100)).await;
            path.halt();
            drained
        };
        Box::pin(fut.into_actor(self))
    }
}
