//! The data-path supervisor: builds the actors, restarts them as a unit, drains on shutdown.
//!
//! Dependency outages are retried inside the actors and never reach this file. What does reach
//! it is an unexpected failure: then every data-path actor is stopped, in-flight batches are
//! dropped, and a fresh set starts after a backoff, rejoining the group and re-claiming every
//! partition from the ledger (docs/DESIGN.md, rule 8; like OTP's rest_for_one). A restart budget
//! (N in a window) bounds this; a spent budget or a fatal error stops the process with a non-zero
//! code naming the actor, so the container's restart policy becomes the top-level supervisor.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use backoff::ExponentialBackoff;
use metrics::counter;
use rdkafka::config::FromClientConfigAndContext;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::model::{BatchLimits, Reason};
use crate::ops::{telemetry, Health};
use crate::pipeline::batcher::{Batcher, FlushOpen};
use crate::pipeline::cassandra_writer::CassandraWriter;
use crate::pipeline::consumer::{ConsumerSettings, ConsumerWiring, KafkaConsumer, StopPolling};
use crate::pipeline::dead_letters::DeadLetters;
use crate::pipeline::olap_aggregator::{
    AggregatorWiring, NotifyConsumer, OlapAggregator, Rejections,
};
use crate::pipeline::watchdog::{Change, PartitionView, RejoinPolicy, Watchdog};
use crate::pipeline::{ActorFailed, Failure, Flow, Halt, Remedy};
use crate::stores::{
    client_config, consumer_config, partitions, producer_config, CassandraStore, KafkaError,
    LedgerContext, OlapError, OlapStore,
};

/// Exit code when the restart budget is spent.
const EXIT_BUDGET_SPENT: i32 = 3;
/// Exit code after a fatal (non-restartable) error.
const EXIT_FATAL: i32 = 2;

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
    aggregator: Addr<OlapAggregator>,
    dead_letters: Addr<DeadLetters>,
    flow: Arc<Flow>,
    stop: Arc<AtomicBool>,
}

/// The actors behind the consumer.
struct Sinks {
    batcher: Addr<Batcher>,
    writer: Addr<CassandraWriter>,
    aggregator: Addr<OlapAggregator>,
    dead_letters: Addr<DeadLetters>,
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
    /// Lag and progress of every partition (see `watchdog.rs`), read every `WATCH_EVERY`.
    watchdog: Watchdog,
    rejoins: RejoinPolicy,
    /// A watchdog round is running.
    watching: bool,
    /// A new data path is scheduled (after a restart or a rejoin): failures reported meanwhile
    /// come from the stopped one.
    restarting: bool,
    /// When the current data path started: its consumer needs a rebalance to get partitions.
    path_started: Instant,
    /// Reads the topic's watermarks; not a group member.
    metadata: Option<Arc<rdkafka::consumer::BaseConsumer>>,
    /// Where the process learns that it must exit, and with which code. (`System::stop` would
    /// not do: `main` runs the system with `block_on`, which ignores it, so the process would
    /// live on without a data path.)
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
        let stuck_after = Duration::from_millis(cfg.pipeline.stuck_after_ms);
        Self {
            watchdog: Watchdog::new(stuck_after, WATCH_GAP_MAX),
            rejoins: RejoinPolicy::new(stuck_after, REJOIN_INTERVAL_MAX.max(stuck_after)),
            watching: false,
            restarting: false,
            path_started: Instant::now(),
            metadata: None,
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

    /// Builds the data path from the sink end: the actors behind the consumer first, so that
    /// nothing is consumed before there is somewhere to put it.
    fn start_path(&mut self, ctx: &mut Context<Self>) -> Result<(), Failure> {
        // Never two data paths at once.
        if let Some(old) = self.path.take() {
            old.halt();
        }
        self.path_started = Instant::now();
        self.generation += 1;
        let client_id = format!("{}-g{}", self.owner, self.generation);
        let supervisor = ctx.address().recipient::<ActorFailed>();
        let flow = Arc::new(Flow::new(self.cfg.pipeline.max_in_flight_batches));
        let sinks = self.start_sinks(&client_id, &flow, &supervisor)?;
        let stop = Arc::new(AtomicBool::new(false));
        let consumer = self.start_consumer(&client_id, &sinks, &flow, supervisor, &stop)?;
        sinks
            .aggregator
            .do_send(NotifyConsumer(consumer.clone().recipient()));
        let Sinks {
            batcher,
            writer,
            aggregator,
            dead_letters,
        } = sinks;
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

    /// Dead letters, the OLAP aggregator, the Cassandra writer and the batcher, wired back to
    /// front.
    fn start_sinks(
        &self,
        client_id: &str,
        flow: &Arc<Flow>,
        supervisor: &Recipient<ActorFailed>,
    ) -> Result<Sinks, Failure> {
        let cfg = &self.cfg;
        let backoff = retry_backoff(cfg);
        let dlq_producer = producer_config(&cfg.kafka, &format!("{client_id}-dlq"))
            .create()
            .map_err(|e| Failure::kafka("creating the dead-letter producer", e))?;
        let dead_letters = DeadLetters::new(
            dlq_producer,
            cfg.kafka.dead_letter_topic.clone(),
            cfg.kafka.topic.clone(),
            cfg.dead_letter_payload_bytes(),
            backoff.clone(),
        )
        .start();
        let rejections = Rejections {
            dead_letters: dead_letters.clone(),
            cassandra: self.stores.cassandra.clone(),
        };
        let aggregator = OlapAggregator::new(AggregatorWiring {
            store: self.stores.olap.clone(),
            rejections,
            topic: cfg.kafka.topic.clone(),
            flow: flow.clone(),
            supervisor: supervisor.clone(),
            health: self.health.clone(),
            backoff: backoff.clone(),
            statement_timeout: Duration::from_millis(cfg.mysql.timeout_ms),
        })
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
            linger: Duration::from_millis(cfg.pipeline.linger_ms),
            eager_in_flight: cfg.pipeline.eager_in_flight_batches,
        };
        let batcher =
            Batcher::new(limits, writer.clone(), flow.clone(), supervisor.clone()).start();
        Ok(Sinks {
            batcher,
            writer,
            aggregator,
            dead_letters,
        })
    }

    /// The consumer: a new group member with its own client, handing records to the batcher.
    fn start_consumer(
        &mut self,
        client_id: &str,
        sinks: &Sinks,
        flow: &Arc<Flow>,
        supervisor: Recipient<ActorFailed>,
        stop: &Arc<AtomicBool>,
    ) -> Result<Addr<KafkaConsumer>, Failure> {
        let cfg = &self.cfg;
        let (changes_tx, changes_rx) = mpsc::channel(1024);
        let context = LedgerContext {
            topic: cfg.kafka.topic.clone(),
            changes: changes_tx,
        };
        let client = rdkafka::consumer::StreamConsumer::from_config_and_context(
            &consumer_config(&cfg.kafka, client_id),
            context,
        )
        .map_err(|e| Failure::kafka("creating the consumer", e))?;
        let settings = ConsumerSettings {
            topic: cfg.kafka.topic.clone(),
            owner: client_id.to_owned(),
            max_record_bytes: cfg.pipeline.max_record_bytes,
            request_timeout: Duration::from_millis(u64::from(cfg.kafka.request_timeout_ms)),
            store_timeout: Duration::from_millis(cfg.mysql.timeout_ms),
        };
        let (left, leaving) = tokio::sync::oneshot::channel();
        self.leaving = Some(leaving);
        let consumer = KafkaConsumer::new(ConsumerWiring {
            settings,
            client,
            changes: changes_rx,
            store: self.stores.olap.clone(),
            batcher: sinks.batcher.clone(),
            flow: flow.clone(),
            health: self.health.clone(),
            supervisor,
            stop: stop.clone(),
            backoff: retry_backoff(cfg),
            left,
        })
        .start();
        Ok(consumer)
    }

    /// Asks `cli::run` to end the process with `code` (the first request wins).
    fn exit(&self, code: i32) {
        let _ = self.exit.try_send(code);
    }

    fn restart(&mut self, actor: &'static str, error: &Failure, ctx: &mut Context<Self>) {
        if self.restarting {
            // An actor of the data path already stopped, noticing its neighbours are gone.
            tracing::debug!(actor, %error, "failure of a stopped data path");
            return;
        }
        self.health.set_last_failure(actor, error);
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
        self.restarting = true;
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
            act.restarting = false;
            if act.draining {
                return;
            }
            if let Err(failure) = act.start_path(ctx) {
                act.restart("consumer", &failure, ctx);
            }
        }));
    }
}

/// How often the watchdog reads the ledger and the watermarks.
const WATCH_EVERY: Duration = Duration::from_secs(2);
/// A round that starts longer than this after the last one ended (the process was frozen, or
/// rounds were skipped because the broker or MySQL did not answer) leaves a gap in what the
/// watchdog saw: the time since the last round does not count as waiting.
const WATCH_GAP_MAX: Duration = Duration::from_secs(10);
/// The longest wait between two rejoins while partitions stay stuck.
const REJOIN_INTERVAL_MAX: Duration = Duration::from_secs(600);

impl Pipeline {
    /// One watchdog round: reads the ledger and the log ends of every partition, then judges
    /// them (`judge`). A round that cannot read both is skipped: the watchdog judges progress,
    /// and an outage of the broker or MySQL is already reported by its own signals.
    fn watch(&mut self, ctx: &mut Context<Self>) {
        if self.watching {
            return;
        }
        let metadata = match &self.metadata {
            Some(m) => m.clone(),
            None => {
                let client = client_config(&self.cfg.kafka)
                    .set("client.id", format!("{}-watchdog", self.owner))
                    .create::<rdkafka::consumer::BaseConsumer>();
                match client {
                    Ok(c) => self.metadata.insert(Arc::new(c)).clone(),
                    Err(e) => {
                        tracing::warn!(error = %e, "watchdog: cannot create its kafka client");
                        return;
                    }
                }
            }
        };
        self.watching = true;
        let started = Instant::now();
        let (olap, topic) = (self.stores.olap.clone(), self.cfg.kafka.topic.clone());
        let health = self.health.clone();
        let timeout = Duration::from_millis(u64::from(self.cfg.kafka.request_timeout_ms))
            .min(WATCH_EVERY * 2);
        let read = async move {
            let marks = {
                let topic = topic.clone();
                tokio::task::spawn_blocking(move || watermarks(&metadata, &topic, timeout))
            };
            let ledger = tokio::time::timeout(timeout, olap.read_ledger_owners(&topic));
            let (marks, ledger) = tokio::join!(marks, ledger);
            // The log ends are also the broker's probe.
            let broker_up = matches!(marks, Ok(Ok(_)));
            telemetry::dependency_up("kafka", broker_up);
            health.set_broker_reachable(broker_up);
            let marks = marks??;
            let ledger = ledger.map_err(|_| WatchError::LedgerTimeout)??;
            Ok::<_, WatchError>(
                marks
                    .into_iter()
                    .map(|(partition, (low, end))| {
                        let (next, owner) = ledger
                            .get(&partition)
                            .cloned()
                            .unwrap_or((low, String::new()));
                        PartitionView {
                            partition,
                            next,
                            end,
                            owner,
                        }
                    })
                    .collect::<Vec<_>>(),
            )
        };
        ctx.spawn(read.into_actor(self).map(move |views, act, ctx| {
            act.watching = false;
            match views {
                Ok(views) => act.judge(started, views, ctx),
                Err(error) => tracing::debug!(%error, "watchdog round skipped"),
            }
        }));
    }

    /// Judges one round of views, read since `started`.
    fn judge(&mut self, started: Instant, views: Vec<PartitionView>, ctx: &mut Context<Self>) {
        let now = Instant::now();
        // A store outage stalls every partition, held or not, and is reported as such: the
        // time it lasts is not counted as partitions waiting, and no new member would help.
        let stores_up = self
            .health
            .stores_reachable
            .load(std::sync::atomic::Ordering::Relaxed);
        if !stores_up {
            self.watchdog.suspend();
        }
        for change in self.watchdog.observe_read(started, now, views) {
            match change {
                Change::Stuck { view, waiting } => {
                    telemetry::partition_stuck(
                        view.partition,
                        view.next,
                        view.end,
                        &view.owner,
                        waiting,
                    );
                }
                Change::Moving { view, stuck_for } => tracing::info!(
                    partition = view.partition,
                    ledger_offset = view.next,
                    log_end = view.end,
                    stuck_s = stuck_for.as_secs(),
                    "partition moving again"
                ),
            }
        }
        let unix_now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        for p in self.watchdog.partitions() {
            let progressed = unix_now - now.duration_since(p.progressed_at).as_secs_f64();
            telemetry::partition_progress(p.view.partition, p.view.lag(), progressed, p.stuck);
        }
        let verdict = self.watchdog.verdict(&self.health.held());
        self.health.set_stuck(verdict.unready);
        if verdict.unheld_stuck.is_empty() {
            if !self.watchdog.partitions().any(|p| p.stuck) {
                self.rejoins.reset();
            }
            return;
        }
        // A consumer that has just started gets its partitions within a rebalance; until then
        // it holds nothing, which is no reason to leave the group again.
        let settled = self.path_started.elapsed() >= self.watchdog.stuck_after();
        // During a store outage partitions stay stuck (their clocks paused), and a new member
        // would not help.
        if settled
            && stores_up
            && self.path.is_some()
            && !self.restarting
            && !self.draining
            && self.rejoins.attempt(now)
        {
            let reason = format!(
                "partitions {:?} are stuck and this instance does not hold them",
                verdict.unheld_stuck
            );
            self.rejoin(reason, ctx);
        }
    }

    /// Leaves the consumer group and joins again as a new member: the data path restarts
    /// (in-flight batches replay from the ledger), without counting against the restart budget.
    fn rejoin(&mut self, reason: String, ctx: &mut Context<Self>) {
        let Some(path) = self.path.take() else {
            return;
        };
        self.restarting = true;
        telemetry::rejoin_for_stuck(&reason);
        path.halt();
        self.health.set_ready(false);
        self.start_after_leave(ctx);
    }
}

/// Why a watchdog round could not see every partition (it is skipped, and the time not
/// counted as waiting).
#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("reading the watermarks: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the watermark task ended abnormally: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("reading the ledger timed out")]
    LedgerTimeout,
    #[error("reading the ledger: {0}")]
    Olap(#[from] OlapError),
}

/// partition → (log start, log end)
type LogBounds = Vec<(i32, (i64, i64))>;

/// Log start and end of every partition of `topic`. Blocking. A partition whose watermarks do
/// not come (no leader for a moment) is left out of this round rather than the whole round.
fn watermarks(
    client: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<LogBounds, KafkaError> {
    use rdkafka::consumer::Consumer as _;
    let mut bounds = Vec::new();
    let mut last_error = None;
    for p in partitions(client, topic, timeout)? {
        match client.fetch_watermarks(topic, p, timeout) {
            Ok(marks) => bounds.push((p, marks)),
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(error) if bounds.is_empty() => Err(error.into()),
        _ => Ok(bounds),
    }
}

impl Actor for Pipeline {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        telemetry::dead_letter_reasons(Reason::ALL.iter().map(|r| r.as_str()));
        ctx.run_interval(WATCH_EVERY, |act, ctx| act.watch(ctx));
        if let Err(failure) = self.start_path(ctx) {
            self.restart("consumer", &failure, ctx);
        }
        // Readiness follows the stores and the broker: an outage is waited out inside the
        // actors (retries with backoff, no restart), and meanwhile the instance reports itself
        // not ready.
        self.health.set_stores_reachable(true);
        self.health.set_broker_reachable(true);
        telemetry::dependency_up("kafka", true);
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
    fn handle(&mut self, ActorFailed { actor, failure }: ActorFailed, ctx: &mut Self::Context) {
        match failure.remedy() {
            // The actor retried in place and gave up, or could not: start over from the ledger.
            Remedy::Retry | Remedy::RestartPath => self.restart(actor, &failure, ctx),
            Remedy::StopProcess => {
                tracing::error!(actor, error = %failure, "fatal error");
                eprintln!("orderstream: fatal error in {actor}: {failure}");
                if let Some(path) = self.path.take() {
                    path.halt();
                }
                self.exit(EXIT_FATAL);
            }
        }
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

/// A name for this instance in the ledger and in client ids.
pub(crate) fn instance_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "orderstream".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}
