//! Kafka client settings, topic administration and the consumer's rebalance hook.
//!
//! Settings follow docs/DESIGN.md, rule 1: no auto-commit, no auto offset store, `earliest` only
//! where the ledger has no row, and explicitly bounded prefetch and producer queues (librdkafka's
//! defaults are 64 MiB and 1 GiB). The producer is idempotent with `acks=all`.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use crate::config::KafkaConfig;

/// Errors of the Kafka side.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("creating topic {topic} failed: {code}")]
    CreateTopic { topic: String, code: String },
    #[error("kafka topic {0} does not exist: run `orderstream migrate` first")]
    MissingTopic(String),
    #[error("the kafka broker at {brokers} did not answer within {seconds} s")]
    Unreachable { brokers: String, seconds: u64 },
    #[error("creating topics at {brokers}: {source}")]
    Admin {
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("the TLS handshake or SASL authentication failed: {0}")]
    Refused(String),
    #[error("reading topic {topic} timed out; unread (partition, end offset): {missing:?}")]
    ReadTimeout {
        topic: String,
        missing: Vec<(i32, i64)>,
    },
}

/// What every client shares: the brokers, the security settings (TLS, SASL) and the
/// pass-through librdkafka properties.
pub(crate) fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (name, value) in crate::config::security_properties(cfg) {
        c.set(name, value);
    }
    for (name, value) in cfg.librdkafka_options.iter() {
        c.set(name, value);
    }
    c
}

/// Settings of the pipeline's consumer.
pub fn consumer_config(cfg: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("group.id", &cfg.group_id)
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        .set("max.poll.interval.ms", cfg.max_poll_interval_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (cfg.session_timeout_ms / 4).max(100).to_string(),
        )
        .set(
            "queued.max.messages.kbytes",
            cfg.queued_max_messages_kbytes.to_string(),
        )
        // Prefetch is bounded by queued.max.messages.kbytes alone. A low queued.min.messages or
        // librdkafka's 1 s fetch.queue.backoff.ms would leave the consumer idle for a second
        // after every fetch round once the queue fills, so the pipeline would drain in waves at
        // a third of the broker's rate.
        .set("queued.min.messages", "100000")
        .set("fetch.queue.backoff.ms", "10")
        .set("partition.assignment.strategy", "range,roundrobin")
        .set(
            "socket.timeout.ms",
            cfg.request_timeout_ms.max(1_000).to_string(),
        )
        // A fetch returns after at most 50 ms even when little data is waiting: freshness
        // matters more here than the broker's request rate.
        .set("fetch.wait.max.ms", "50");
    if !cfg.debug.is_empty() {
        c.set("debug", &cfg.debug);
    }
    c
}

/// Settings of the order producer and the dead-letter publisher.
pub fn producer_config(cfg: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "queue.buffering.max.kbytes",
            cfg.producer_queue_max_kbytes.to_string(),
        )
        .set("queue.buffering.max.messages", "100000")
        .set("message.timeout.ms", "0");
    c
}

fn admin(cfg: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, KafkaError> {
    Ok(client_config(cfg).create()?)
}

/// Creates the orders and dead-letter topics when missing. Safe to repeat and to race.
///
/// Topics that exist already are left alone, so a deployment may create them itself (a broker
/// without CreateTopics, like librdkafka's mock cluster, or a user without that ACL).
pub(crate) async fn create_topics(cfg: &KafkaConfig) -> Result<(), KafkaError> {
    wait_for_broker(cfg).await?;
    let wanted = vec![
        (cfg.topic.clone(), cfg.partitions),
        (cfg.dead_letter_topic.clone(), cfg.partitions.clamp(1, 3)),
    ];
    let check = cfg.clone();
    let probe = wanted.clone();
    let missing: Vec<(String, i32)> = tokio::task::spawn_blocking(move || {
        probe
            .into_iter()
            .filter(|(topic, _)| partition_count(&check, topic).is_err())
            .collect()
    })
    .await
    .unwrap_or(wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let admin = admin(cfg)?;
    let topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|(topic, partitions)| {
            NewTopic::new(
                topic,
                *partitions,
                TopicReplication::Fixed(cfg.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_millis(u64::from(
        cfg.request_timeout_ms,
    ))));
    let created = admin
        .create_topics(&topics, &options)
        .await
        .map_err(|source| KafkaError::Admin {
            brokers: cfg.brokers.clone(),
            source,
        })?;
    for result in created {
        match result {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::CreateTopic {
                    topic,
                    code: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Waits until the broker answers a metadata request, saying so while it waits; gives up after
/// six request timeouts (a minute by default), naming the broker.
async fn wait_for_broker(cfg: &KafkaConfig) -> Result<(), KafkaError> {
    let started = std::time::Instant::now();
    let budget = Duration::from_millis(u64::from(cfg.request_timeout_ms)) * 6;
    let client = std::sync::Arc::new(probe(&client_config(cfg))?);
    let attempt = Duration::from_millis(u64::from(cfg.request_timeout_ms)).min(budget / 2);
    loop {
        let probe = client.clone();
        let answered = tokio::task::spawn_blocking(move || {
            let answer = probe
                .fetch_metadata(None, attempt)
                .map_err(KafkaError::from);
            unless_refused(&probe, answer)
        })
        .await;
        match answered {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e @ KafkaError::Refused(_))) => return Err(e),
            // Not answered (or the probe's thread failed): wait on, within the budget.
            _ => {}
        }
        if started.elapsed() >= budget {
            return Err(KafkaError::Unreachable {
                brokers: cfg.brokers.clone(),
                seconds: started.elapsed().as_secs(),
            });
        }
        tracing::warn!(
            brokers = %cfg.brokers,
            waited_s = started.elapsed().as_secs(),
            "waiting for the kafka broker to answer"
        );
    }
}

/// Partition count of a topic, `MissingTopic`, or `Refused` when the brokers failed the TLS
/// handshake or SASL authentication with these settings. Blocking: call from `spawn_blocking`.
pub(crate) fn partition_count(cfg: &KafkaConfig, topic: &str) -> Result<usize, KafkaError> {
    let consumer = probe(&client_config(cfg))?;
    let timeout = Duration::from_millis(u64::from(cfg.request_timeout_ms));
    let count = partitions(&consumer, topic, timeout).map(|p| p.len());
    unless_refused(&consumer, count)
}

/// A client that notices when the brokers refuse its TLS or SASL settings (see
/// `unless_refused`).
pub(crate) fn probe(config: &ClientConfig) -> Result<BaseConsumer<ProbeContext>, KafkaError> {
    Ok(config.create_with_context(ProbeContext::default())?)
}

/// `result`, or `Refused` with librdkafka's reason when it failed because the brokers refused
/// the client's certificate check or authentication. Blocking (up to 100 ms) on failure.
pub(crate) fn unless_refused<T>(
    client: &BaseConsumer<ProbeContext>,
    result: Result<T, KafkaError>,
) -> Result<T, KafkaError> {
    result.map_err(|e| {
        // librdkafka hands its log lines and errors to the context only while the client is
        // polled; a zero timeout would read just the first of them.
        let _ = client.poll(Duration::from_millis(100));
        match client.context().refusal() {
            Some(reason) => KafkaError::Refused(reason),
            None => e,
        }
    })
}

impl KafkaError {
    /// Retrying cannot help: the topic is missing, or the brokers refuse these credentials or
    /// this trust store.
    pub(crate) fn is_configuration(&self) -> bool {
        matches!(
            self,
            Self::MissingTopic(_)
                | Self::Refused(_)
                // librdkafka could not build the client: a CA or key file it cannot load, a
                // wrong key password.
                | Self::Client(rdkafka::error::KafkaError::ClientCreation(_))
        )
    }
}

/// Keeps the last refusal librdkafka reports while a client talks to the brokers: a
/// certificate that fails the check, or failed SASL authentication. librdkafka retries those
/// forever, a request in the meantime only times out, and the reason reaches the application
/// only as a log line (facility `FAIL`), so it is caught there.
#[derive(Default)]
pub(crate) struct ProbeContext {
    refusal: std::sync::Mutex<Option<String>>,
}

impl ProbeContext {
    fn refusal(&self) -> Option<String> {
        self.refusal.lock().ok().and_then(|r| r.clone())
    }

    fn refused(&self, reason: &str) {
        if let Ok(mut slot) = self.refusal.lock() {
            *slot = Some(reason.to_owned());
        }
    }
}

impl ConsumerContext for ProbeContext {}

impl ClientContext for ProbeContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
        ) {
            self.refused(reason);
        }
        DefaultClientContext.error(error, reason);
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "FAIL"
            && (message.contains("certificate verify failed")
                || message.contains("SASL authentication error"))
        {
            self.refused(message);
        }
        DefaultClientContext.log(level, fac, message);
    }
}

/// The partitions of `topic`, from the broker's metadata; `MissingTopic` when it has none.
/// Blocking.
pub fn partitions<C: ConsumerContext>(
    client: &BaseConsumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, KafkaError> {
    let metadata = client.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(KafkaError::MissingTopic(topic.to_owned()));
    }
    Ok(partitions)
}

/// A change of this member's assignment, handed from the rebalance callback to the actor.
#[derive(Debug, Clone)]
pub enum AssignmentChange {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// The consumer context: new partitions start paused (docs/DESIGN.md, rule 2) and the actor is
/// told, so that it can claim them in the ledger and seek there without blocking the poll loop.
pub struct LedgerContext {
    pub topic: String,
    pub changes: mpsc::Sender<AssignmentChange>,
}

// The lag is measured against the ledger for every partition (watchdog.rs), not from
// librdkafka's statistics, which know only this member's assignment.
impl ClientContext for LedgerContext {}

impl ConsumerContext for LedgerContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let change = match rebalance {
            Rebalance::Assign(tpl) => {
                if let Err(err) = consumer.pause(tpl) {
                    tracing::error!(%err, "cannot pause newly assigned partitions");
                }
                AssignmentChange::Assigned(partitions_of(tpl, &self.topic))
            }
            Rebalance::Revoke(tpl) => AssignmentChange::Revoked(partitions_of(tpl, &self.topic)),
            Rebalance::Error(err) => {
                tracing::warn!(%err, "rebalance error");
                return;
            }
        };
        tracing::info!(?change, "group rebalance");
        crate::ops::telemetry::rebalance(match change {
            AssignmentChange::Assigned(_) => "assign",
            AssignmentChange::Revoked(_) => "revoke",
        });
        // The channel is far larger than the number of rebalances between two polls.
        match self.changes.try_send(change) {
            Ok(()) => {}
            // The actor is stopping: nothing left to claim for.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("assignment change after stop")
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::error!("assignment change lost: actor mailbox full")
            }
        }
    }
}

fn partitions_of(tpl: &rdkafka::TopicPartitionList, topic: &str) -> Vec<i32> {
    let mut partitions: Vec<i32> = tpl
        .elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect();
    partitions.sort_unstable();
    partitions
}

#[cfg(test)]
mod tests {
    use crate::config::from_env as load;

    /// What librdkafka itself holds once a client's configuration is built: the security
    /// settings arrive under librdkafka's names, for every mechanism (PLAIN is exercised only
    /// here; the tests run SCRAM against a real broker).
    #[test]
    fn the_security_settings_reach_librdkafka() {
        for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
            let cfg = load(&[
                ("KAFKA__SECURITY_PROTOCOL", "sasl_ssl"),
                ("KAFKA__SASL_MECHANISM", mechanism),
                ("KAFKA__SASL_USERNAME", "shop"),
                ("KAFKA__SASL_PASSWORD", "pw"),
                ("KAFKA__SSL_VERIFY_HOSTNAME", "false"),
                ("KAFKA__LIBRDKAFKA_OPTIONS__SOCKET_KEEPALIVE_ENABLE", "true"),
            ])
            .unwrap();
            for client in [
                super::client_config(&cfg.kafka),
                super::consumer_config(&cfg.kafka, "probe"),
                super::producer_config(&cfg.kafka, "probe"),
            ] {
                let native = client.create_native_config().unwrap();
                let get = |name: &str| native.get(name).unwrap();
                assert_eq!(get("security.protocol"), "sasl_ssl");
                assert_eq!(get("sasl.mechanisms"), mechanism);
                assert_eq!(get("sasl.username"), "shop");
                assert_eq!(get("sasl.password"), "pw");
                assert_eq!(get("ssl.endpoint.identification.algorithm"), "none");
                assert_eq!(get("socket.keepalive.enable"), "true");
            }
        }
    }
}
