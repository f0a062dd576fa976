//! Configuration: typed, documented, layered, validated once before any actor starts.
//!
//! Layers, later wins: built-in defaults < TOML file (`--config`) < environment
//! (`ORDERSTREAM__SECTION__KEY=value`) < command-line flags. The `///` docs on the fields below are
//! the reference documentation; `orderstream config` prints the effective result with secrets
//! redacted. A bad value stops startup with a message naming the key.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

mod librdkafka;

pub use librdkafka::LibrdkafkaOptions;
mod secrets;
mod validate;

pub(crate) use librdkafka::security_properties;

/// Errors found while loading or validating the configuration. Each names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Toml { path: String, message: String },
    #[error("invalid configuration at `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// A secret value: readable by the code, never printed by `Debug`, `Display` or `config`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "<redacted>" })
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Kafka connection and topics.
    pub kafka: KafkaConfig,
    /// Cassandra / ScyllaDB connection, the raw-order store.
    pub cassandra: CassandraConfig,
    /// MySQL / MariaDB connection, the aggregate store and the offset ledger.
    pub mysql: MysqlConfig,
    /// Micro-batching and backpressure.
    pub pipeline: PipelineConfig,
    /// The simulated order producer.
    pub producer: ProducerConfig,
    /// The HTTP port for /metrics, /healthz and /readyz.
    pub http: HttpConfig,
    /// Restart policy of the supervised actors.
    pub supervision: SupervisionConfig,
}

/// Kafka connection and topics.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// The orders topic.
    pub topic: String,
    /// The dead-letter topic for invalid records.
    pub dead_letter_topic: String,
    /// Consumer group of the pipeline instances.
    pub group_id: String,
    /// Partitions of the orders topic, used by `migrate` when it creates the topic.
    pub partitions: i32,
    /// Replication factor of both topics, used by `migrate`.
    pub replication_factor: i32,
    /// Group session timeout; a member silent for longer is evicted.
    pub session_timeout_ms: u32,
    /// The consumer's max.poll.interval.ms, which is also the rebalance timeout it announces:
    /// how long a rebalance may wait for members that do not rejoin. The poll loop never
    /// stops polling (backpressure pauses partitions instead), so this can stay short; with
    /// Kafka's 300 s default, a rebalance after a broker freeze can stall for 5 minutes.
    pub max_poll_interval_ms: u32,
    /// Upper bound of librdkafka's consumer prefetch queue, one queue for all partitions. It
    /// should hold a whole fetch round (about 1 MiB per partition), or the consumer idles
    /// between rounds.
    pub queued_max_messages_kbytes: u32,
    /// Upper bound of librdkafka's producer queue.
    pub producer_queue_max_kbytes: u32,
    /// Timeout of admin and metadata requests.
    pub request_timeout_ms: u32,
    /// librdkafka debug contexts for the pipeline's consumer (e.g. "cgrp,fetch"), logged at
    /// debug level under the `librdkafka` target; empty for none.
    pub debug: String,
    /// How the clients reach the brokers: `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`
    /// (librdkafka's `security.protocol`).
    pub security_protocol: String,
    /// PEM file of the certificate authorities that sign the brokers' certificates
    /// (`ssl.ca.location`); empty: the system's trust store.
    pub ssl_ca_file: String,
    /// Client certificate (PEM), for brokers that authenticate clients by certificate; give
    /// `ssl_key_file` with it.
    pub ssl_certificate_file: String,
    /// Private key (PEM) of `ssl_certificate_file`.
    pub ssl_key_file: String,
    /// Password of `ssl_key_file`, when the key is encrypted.
    pub ssl_key_password: Secret,
    /// A file holding `ssl_key_password` (a Docker or Kubernetes secret), read at startup.
    pub ssl_key_password_file: String,
    /// Check that a broker's certificate names the host it was reached at. Off only for test
    /// clusters whose certificates name no host.
    pub ssl_verify_hostname: bool,
    /// SASL mechanism of the `sasl_*` protocols: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub sasl_mechanism: String,
    /// SASL user name.
    pub sasl_username: String,
    /// SASL password.
    pub sasl_password: Secret,
    /// A file holding `sasl_password`, read at startup.
    pub sasl_password_file: String,
    /// Any other librdkafka property, applied to every client (the consumer, the producers, the
    /// admin and metadata clients), e.g. `"socket.keepalive.enable" = "true"`; in the
    /// environment or `--set`, `_` stands for `.` in the property's name
    /// (`ORDERSTREAM__KAFKA__LIBRDKAFKA_OPTIONS__SOCKET_KEEPALIVE_ENABLE=true`). Properties the
    /// pipeline sets itself (the group, commits, offsets, isolation, assignment, idempotence,
    /// the security settings above) are refused with their name; librdkafka checks the rest at
    /// startup.
    pub librdkafka_options: LibrdkafkaOptions,
}

impl KafkaConfig {
    /// The longest a partition may legitimately wait for a consumer: a lost member is expired
    /// after `session_timeout_ms`, and the rebalance that follows may wait
    /// `max_poll_interval_ms` for the members to rejoin; twice the session on top leaves the
    /// group time to re-form. `pipeline.stuck_after_ms` may not be shorter.
    fn longest_rebalance_ms(&self) -> u64 {
        u64::from(self.max_poll_interval_ms) + 2 * u64::from(self.session_timeout_ms)
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "orders".into(),
            dead_letter_topic: "orders.dlq".into(),
            group_id: "orderstream".into(),
            partitions: 6,
            replication_factor: 1,
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 30_000,
            queued_max_messages_kbytes: 16_384,
            producer_queue_max_kbytes: 16_384,
            request_timeout_ms: 10_000,
            debug: String::new(),
            security_protocol: "plaintext".into(),
            ssl_ca_file: String::new(),
            ssl_certificate_file: String::new(),
            ssl_key_file: String::new(),
            ssl_key_password: Secret::default(),
            ssl_key_password_file: String::new(),
            ssl_verify_hostname: true,
            sasl_mechanism: String::new(),
            sasl_username: String::new(),
            sasl_password: Secret::default(),
            sasl_password_file: String::new(),
            librdkafka_options: LibrdkafkaOptions::default(),
        }
    }
}

/// Cassandra / ScyllaDB connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CassandraConfig {
    /// Contact points, `host:port`.
    pub contact_points: Vec<String>,
    /// Keyspace of the `orders` table.
    pub keyspace: String,
    /// Replication factor used by `migrate` (SimpleStrategy).
    pub replication_factor: u32,
    /// Consistency of writes: one, local_one, quorum, local_quorum, each_quorum, all.
    pub consistency: String,
    /// Inserts in flight at once, across all batches. Deep queues are what a CQL connection
    /// needs to reach its throughput (on the emulator, 64 in flight drain at about 65k/s, 512 at
    /// about 85k/s; docs/PERFORMANCE.md); each costs about 0.1 MiB of driver buffers.
    pub concurrency: usize,
    /// Timeout of one request.
    pub request_timeout_ms: u64,
    /// Wait for schema agreement after DDL (the emulator answers the schema-version queries as a
    /// single node does, so the default suits it too).
    pub await_schema_agreement: bool,
    /// Optional user name.
    pub user: String,
    /// Optional password.
    pub password: Secret,
    /// A file holding `password` (a Docker or Kubernetes secret), read at startup.
    pub password_file: String,
    /// Connect to the nodes over TLS.
    pub ssl: bool,
    /// PEM file of the certificate authorities that sign the nodes' certificates; empty: the
    /// system's trust store.
    pub ssl_ca_file: String,
    /// Client certificate (PEM), for clusters that authenticate clients by certificate; give
    /// `ssl_key_file` with it.
    pub ssl_certificate_file: String,
    /// Private key (PEM, unencrypted) of `ssl_certificate_file`.
    pub ssl_key_file: String,
    /// Check that a node's certificate names the address the driver reached it at (the
    /// driver connects to nodes by IP, so the certificate needs that IP among its names). Off
    /// only for clusters whose certificates name no address; the chain is checked either way.
    pub ssl_verify_hostname: bool,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        Self {
            contact_points: vec!["127.0.0.1:9042".into()],
            keyspace: "sales".into(),
            replication_factor: 1,
            consistency: "local_quorum".into(),
            concurrency: 512,
            request_timeout_ms: 5_000,
            await_schema_agreement: true,
            user: String::new(),
            password: Secret::default(),
            password_file: String::new(),
            ssl: false,
            ssl_ca_file: String::new(),
            ssl_certificate_file: String::new(),
            ssl_key_file: String::new(),
            ssl_verify_hostname: true,
        }
    }
}

/// MySQL / MariaDB connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MysqlConfig {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// User of the pipeline (needs no DDL rights once migrated).
    pub user: String,
    /// Password of `user`.
    pub password: Secret,
    /// A file holding `password` (a Docker or Kubernetes secret), read at startup.
    pub password_file: String,
    /// Database holding the aggregates, the ledger and the views.
    pub database: String,
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long connecting, waiting for a pooled connection, or one call of the data path (a
    /// claim, a batch's transaction, a bisection) may take before it is given up and retried.
    pub timeout_ms: u64,
    /// TLS to the server, MySQL's modes: `disabled`; `preferred` (TLS when the server offers
    /// it, unchecked); `required` (TLS or no connection, certificate unchecked); `verify_ca`
    /// (the certificate must be signed by `ssl_ca_file`, or the system's trust store);
    /// `verify_identity` (`verify_ca`, and the certificate must name `host`).
    pub ssl_mode: String,
    /// PEM file of the certificate authorities that sign the server's certificate.
    pub ssl_ca_file: String,
    /// Client certificate (PEM), for users that `REQUIRE X509`; give `ssl_key_file` with it.
    pub ssl_certificate_file: String,
    /// Private key (PEM, PKCS#8) of `ssl_certificate_file`.
    pub ssl_key_file: String,
}

impl MysqlConfig {
    /// `ssl_mode` as sqlx takes it; `None` for a value `validate` refuses.
    pub fn ssl_mode(&self) -> Option<sqlx::mysql::MySqlSslMode> {
        use sqlx::mysql::MySqlSslMode as Mode;
        Some(match self.ssl_mode.to_ascii_lowercase().as_str() {
            "disabled" => Mode::Disabled,
            "preferred" => Mode::Preferred,
            "required" => Mode::Required,
            "verify_ca" => Mode::VerifyCa,
            "verify_identity" => Mode::VerifyIdentity,
            _ => return None,
        })
    }
}

impl Default for MysqlConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 3306,
            user: "orderstream".into(),
            password: Secret::default(),
            password_file: String::new(),
            database: "sales".into(),
            max_connections: 4,
            timeout_ms: 10_000,
            ssl_mode: "preferred".into(),
            ssl_ca_file: String::new(),
            ssl_certificate_file: String::new(),
            ssl_key_file: String::new(),
        }
    }
}

/// Micro-batching and backpressure.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Cut a batch at this many records. Each batch costs one MySQL transaction and one Kafka
    /// offset commit: at 5,000 rather than 2,000, MariaDB needs half the CPU during a drain and
    /// the drain about 10% less CPU per order (docs/PERFORMANCE.md). At low rates `max_wait_ms`
    /// cuts the batches first, so the latency does not depend on this.
    pub max_orders: usize,
    /// Cut a batch at this many payload bytes.
    pub max_bytes: usize,
    /// Cut a batch this long after its first record arrived, at the latest.
    pub max_wait_ms: u64,
    /// Cut a batch as soon as it is this old while the stages behind the batcher have room
    /// (fewer than `eager_in_flight_batches` batches in flight): an order never waits for the
    /// clock while the stores are idle. While they are busy, the batch keeps growing until they
    /// have room again, `max_orders`/`max_bytes` is reached or `max_wait_ms` passes, so a drain
    /// still cuts full batches. At most `max_wait_ms`.
    pub linger_ms: u64,
    /// The stages behind the batcher "have room" while fewer batches than this are in flight.
    /// 2 lets one batch be written to Cassandra while the one before it commits to the OLAP
    /// store; 0 turns early cuts off (batches are cut by size or `max_wait_ms` only). At most
    /// `max_in_flight_batches`.
    pub eager_in_flight_batches: usize,
    /// Batches cut but not yet committed to MySQL; consumption pauses at this number.
    pub max_in_flight_batches: usize,
    /// Largest accepted record value; larger ones are dead-lettered.
    pub max_record_bytes: usize,
    /// Memory the pipeline may use in the worst case; validation refuses settings above it.
    pub memory_budget_bytes: u64,
    /// Time allowed to drain on SIGTERM before in-flight work is abandoned.
    pub drain_timeout_ms: u64,
    /// The progress watchdog: a partition is stuck when records wait below its log end and its
    /// ledger has not moved for this long. A stuck partition of this instance makes it not
    /// ready; stuck partitions that it does not hold make it leave the consumer group and join
    /// again. At least `kafka.max_poll_interval_ms + 2 x kafka.session_timeout_ms`, so that a
    /// rebalance after a member died is never taken for a stuck partition.
    pub stuck_after_ms: u64,
    /// Worker threads of the async runtime (the inserts, the clients' connections); the
    /// actors run on one more thread of their own. 0: one per core but the actors' (at least
    /// one). See [`PipelineConfig::runtime_workers`].
    pub worker_threads: usize,
}

impl PipelineConfig {
    /// The runtime's worker threads for `cores` cores. The default leaves the actors' thread a
    /// core of its own: a worker per core on top of it costs CPU in work stealing and
    /// cross-thread wake-ups, CPU the servers on the same machine could use (on 2 cores, 2
    /// workers instead of 1 raise the pipeline's CPU per order by about 14%).
    pub fn runtime_workers(&self, cores: usize) -> usize {
        match self.worker_threads {
            0 => cores.saturating_sub(1).max(1),
            n => n,
        }
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            max_orders: 5_000,
            max_bytes: 1024 * 1024,
            max_wait_ms: 200,
            linger_ms: 5,
            eager_in_flight_batches: 2,
            max_in_flight_batches: 16,
            max_record_bytes: 64 * 1024,
            memory_budget_bytes: 256 * 1024 * 1024,
            drain_timeout_ms: 10_000,
            stuck_after_ms: 60_000,
            worker_threads: 0,
        }
    }
}

/// The simulated order producer.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerConfig {
    /// Orders per second.
    pub rate_per_sec: u32,
    /// Stop after this many orders (0: run until stopped).
    pub count: u64,
    /// Node part of generated order ids, 0..=1023; unset leases the lowest free node.
    pub instance_id: Option<u16>,
    /// Time to live of the producer's node lease in MySQL; renewed every third of it. A
    /// producer that cannot renew in time pauses instead of risking a duplicate id.
    pub lease_ttl_ms: u64,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            rate_per_sec: 100,
            count: 0,
            instance_id: None,
            lease_ttl_ms: 10_000,
        }
    }
}

/// Where `run` serves the operations port unless told otherwise: loopback, so that metrics and
/// health are not exposed on every interface of a host (the container image listens on
/// 0.0.0.0).
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:9898";
/// Where `produce` serves its operations port while `http.listen` is left at its default, so that
/// it can run beside a pipeline on one host.
pub(crate) const PRODUCER_DEFAULT_LISTEN: &str = "127.0.0.1:9899";

/// The operations HTTP port.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address of /metrics, /healthz and /readyz; empty disables the port. `produce`
    /// listens on 127.0.0.1:9899 while this is left at its default, 127.0.0.1:9898.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.into(),
        }
    }
}

/// Restart policy of the supervised actors.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisionConfig {
    /// Restarts allowed within `restart_window_ms` before the process exits non-zero.
    pub restart_budget: u32,
    /// The window of the restart budget.
    pub restart_window_ms: u64,
    /// First backoff delay after a failure.
    pub backoff_initial_ms: u64,
    /// Longest backoff delay.
    pub backoff_max_ms: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        Self {
            restart_budget: 10,
            restart_window_ms: 60_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
        }
    }
}

/// The environment prefix of configuration keys.
const ENV_PREFIX: &str = "ORDERSTREAM__";

impl Config {
    /// Loads defaults < file < environment, then validates. Flags are applied by the caller
    /// through `overrides` (dotted keys) so that they too are checked by the same code.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        // Start from the defaults, so that the types of existing keys are known when a value
        // comes from the environment as text.
        let mut table = match toml::Value::try_from(Config::default()) {
            Ok(toml::Value::Table(t)) => t,
            _ => toml::Table::new(),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let from_file = text.parse::<toml::Table>().map_err(|e| ConfigError::Toml {
                path: path.display().to_string(),
                message: e.message().to_owned(),
            })?;
            merge(&mut table, from_file);
        }
        for (name, value) in env {
            if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                let key = rest.to_ascii_lowercase().replace("__", ".");
                set(&mut table, &key, &value, &name)?;
            }
        }
        for (key, value) in overrides {
            set(&mut table, key, value, key)?;
        }
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                // The parser's message quotes the value it got, and that may be a secret.
                if key.ends_with("password") || key.starts_with("kafka.librdkafka_options") {
                    invalid(&key, "expected a string (the value is not shown)")
                } else {
                    invalid(&key, e.inner().to_string())
                }
            })?;
        secrets::read_secret_files(&mut config)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value once; the first bad one is reported with its key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.cassandra.validate()?;
        self.mysql.validate()?;
        self.validate_pipeline()?;
        self.producer.validate()?;
        self.http.validate()?;
        self.supervision.validate()
    }

    /// The `pipeline.*` keys, which are also bounded by the Kafka settings and the memory budget.
    fn validate_pipeline(&self) -> Result<(), ConfigError> {
        let (p, k) = (&self.pipeline, &self.kafka);
        range("pipeline.max_orders", p.max_orders as i64, 1, 1_000_000)?;
        range("pipeline.max_bytes", p.max_bytes as i64, 1_024, 1 << 30)?;
        range("pipeline.max_wait_ms", p.max_wait_ms as i64, 1, 600_000)?;
        range(
            "pipeline.linger_ms",
            p.linger_ms as i64,
            0,
            p.max_wait_ms as i64,
        )?;
        range(
            "pipeline.eager_in_flight_batches",
            p.eager_in_flight_batches as i64,
            0,
            p.max_in_flight_batches as i64,
        )?;
        range(
            "pipeline.max_in_flight_batches",
            p.max_in_flight_batches as i64,
            1,
            1_024,
        )?;
        range(
            "pipeline.max_record_bytes",
            p.max_record_bytes as i64,
            64,
            16 << 20,
        )?;
        range(
            "pipeline.drain_timeout_ms",
            p.drain_timeout_ms as i64,
            0,
            3_600_000,
        )?;
        range("pipeline.worker_threads", p.worker_threads as i64, 0, 256)?;
        range(
            "pipeline.stuck_after_ms",
            p.stuck_after_ms as i64,
            k.longest_rebalance_ms() as i64,
            86_400_000,
        )
        .map_err(|_| {
            invalid(
                "pipeline.stuck_after_ms",
                format!(
                    "{} is shorter than a rebalance may take ({} ms: \
                     kafka.max_poll_interval_ms + 2 x kafka.session_timeout_ms) or longer than a day",
                    p.stuck_after_ms,
                    k.longest_rebalance_ms()
                ),
            )
        })?;
        let worst = self.worst_case_memory_bytes();
        if worst > p.memory_budget_bytes {
            return Err(invalid(
                "pipeline.memory_budget_bytes",
                format!(
                    "worst-case memory {worst} bytes (prefetch + a fetch per partition + in-flight \
                     batches x (max_bytes + max_record_bytes) + \
                     producer queue + cassandra inserts in flight + base) exceeds the budget of \
                     {} bytes",
                    p.memory_budget_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Worst-case memory of one pipeline process: the consumer's prefetch, every in-flight batch
    /// at its byte limit (held twice: raw payloads and decoded orders), the producer queues, the
    /// inserts in flight and a fixed base for the runtime and drivers.
    ///
    /// The pipeline's consumer has one queue for all its partitions, which
    /// `queued.max.messages.kbytes` bounds as a whole; librdkafka may overshoot that bound by one
    /// fetch of each partition (`fetch.message.max.bytes`, 1 MiB unless set). A batch is cut
    /// after the record that reaches `max_bytes`, so it may exceed it by one record.
    pub(crate) fn worst_case_memory_bytes(&self) -> u64 {
        const BASE: u64 = 48 * 1024 * 1024;
        const PARTITION_FETCH_BYTES: u64 = 1024 * 1024;
        let options = &self.kafka.librdkafka_options;
        let partition_fetch = ["fetch.message.max.bytes", "max.partition.fetch.bytes"]
            .iter()
            .find_map(|name| options.get(*name))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(PARTITION_FETCH_BYTES);
        let prefetch = u64::from(self.kafka.queued_max_messages_kbytes) * 1024
            + partition_fetch * self.kafka.partitions.max(1) as u64;
        // The batch being filled plus those in flight.
        let batch = (self.pipeline.max_bytes + self.pipeline.max_record_bytes) as u64;
        let batches = (self.pipeline.max_in_flight_batches as u64 + 1) * batch * 2;
        let producer = u64::from(self.kafka.producer_queue_max_kbytes) * 1024;
        // Driver buffers of the inserts in flight (measured: about 0.09 MiB each).
        let inserts = self.cassandra.concurrency as u64 * 96 * 1024;
        BASE + prefetch + batches + producer + inserts
    }

    /// How much of a record's payload its dead letter carries: the whole record up to
    /// `pipeline.max_record_bytes`, but never more than the dead-letter producer may send
    /// (librdkafka's `message.max.bytes`, 1,000,000 unless passed through) less room for the
    /// headers. A letter the producer refuses for its size would hold its partition forever.
    pub fn dead_letter_payload_bytes(&self) -> usize {
        const PRODUCER_MESSAGE_MAX: usize = 1_000_000;
        const HEADERS_ROOM: usize = 16 * 1024;
        let message_max = self
            .kafka
            .librdkafka_options
            .get("message.max.bytes")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(PRODUCER_MESSAGE_MAX);
        self.pipeline
            .max_record_bytes
            .min(message_max.saturating_sub(HEADERS_ROOM))
    }

    /// The configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// Sets `key` (dotted) in `table` to `raw`, read as a TOML value when it parses as one
/// (numbers, booleans, arrays) and as a string otherwise.
fn set(table: &mut toml::Table, key: &str, raw: &str, source: &str) -> Result<(), ConfigError> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(invalid(source, "malformed key"));
    }
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let mut node = table;
    for part in &parts[..parts.len() - 1] {
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| invalid(source, format!("`{part}` is not a section")))?;
    }
    let last = parts[parts.len() - 1].to_owned();
    // A string field given a value that looks like a number (a password "1234") must stay a
    // string: keep the type of what is already there when it was a string.
    // A list may also be written the way other tools take it, `a,b`, and not only as TOML's
    // `["a", "b"]`.
    let value = match (node.get(&last), value) {
        (Some(toml::Value::String(_)), v) if !v.is_str() => toml::Value::String(raw.to_owned()),
        (Some(toml::Value::Array(_)), toml::Value::String(text)) => toml::Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_owned()))
                .collect(),
        ),
        (_, v) => v,
    };
    node.insert(last, value);
    Ok(())
}

fn merge(base: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(t)) => merge(b, t),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

fn nonempty(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(invalid(key, "must not be empty"));
    }
    Ok(())
}

fn range(key: &str, value: i64, min: i64, max: i64) -> Result<(), ConfigError> {
    if !(min..=max).contains(&value) {
        return Err(invalid(key, format!("{value} is outside {min}..={max}")));
    }
    Ok(())
}

fn identifier(key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 48
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic());
    if !ok {
        return Err(invalid(
            key,
            format!("{value:?} must be a letter followed by letters, digits or _ (at most 48)"),
        ));
    }
    Ok(())
}

fn topic_name(key: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 249
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(invalid(key, format!("{value:?} is not a valid topic name")));
    }
    Ok(())
}

fn host_port(key: &str, value: &str) -> Result<(), ConfigError> {
    match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(invalid(key, format!("{value:?} is not host:port"))),
    }
}

impl CassandraConfig {
    /// The consistency level named by `consistency`; None when the name is unknown.
    pub(crate) fn consistency_level(&self) -> Option<scylla::statement::Consistency> {
        use scylla::statement::Consistency;
        Some(match self.consistency.to_ascii_lowercase().as_str() {
            "one" => Consistency::One,
            "local_one" => Consistency::LocalOne,
            "quorum" => Consistency::Quorum,
            "local_quorum" => Consistency::LocalQuorum,
            "each_quorum" => Consistency::EachQuorum,
            "all" => Consistency::All,
            _ => return None,
        })
    }
}

/// A command-line argument that cannot work; the process exits 64 (sysexits' EX_USAGE).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// For tests across the crate: the configuration from these environment variables, named
/// without their `ORDERSTREAM__` prefix (`("KAFKA__TOPIC", "x")`); an error as its message.
#[cfg(test)]
pub(crate) fn from_env(vars: &[(&str, &str)]) -> Result<Config, String> {
    let vars = vars
        .iter()
        .map(|(k, v)| (format!("ORDERSTREAM__{k}"), v.to_string()))
        .collect::<Vec<_>>();
    Config::load(None, vars, &[]).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_stuck_partition_is_never_a_rebalance_in_progress() {
        assert_eq!(
            KafkaConfig::default().longest_rebalance_ms(),
            30_000 + 2 * 10_000
        );
        let err = Config::load(
            None,
            env(&[("ORDERSTREAM__PIPELINE__STUCK_AFTER_MS", "49999")]),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration at `pipeline.stuck_after_ms`: 49999 is shorter than a \
             rebalance may take (50000 ms: kafka.max_poll_interval_ms + 2 x \
             kafka.session_timeout_ms) or longer than a day"
        );
        let ok = Config::load(
            None,
            env(&[
                ("ORDERSTREAM__KAFKA__SESSION_TIMEOUT_MS", "6000"),
                ("ORDERSTREAM__KAFKA__MAX_POLL_INTERVAL_MS", "10000"),
                ("ORDERSTREAM__PIPELINE__STUCK_AFTER_MS", "22000"),
            ]),
            &[],
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn the_actors_keep_a_core_of_their_own_by_default() {
        let mut p = PipelineConfig::default();
        assert_eq!(p.runtime_workers(1), 1);
        assert_eq!(p.runtime_workers(2), 1);
        assert_eq!(p.runtime_workers(8), 7);
        p.worker_threads = 3;
        assert_eq!(p.runtime_workers(2), 3);
        let err = Config::load(
            None,
            env(&[("ORDERSTREAM__PIPELINE__WORKER_THREADS", "1000")]),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("pipeline.worker_threads"), "{err}");
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, vec![], &[]).unwrap();
        assert_eq!(c.kafka.topic, "orders");
        assert_eq!(c.pipeline.max_wait_ms, 200);
    }

    #[test]
    fn a_list_from_the_environment_may_be_comma_separated() {
        for raw in ["a:9042, b:9042", r#"["a:9042", "b:9042"]"#] {
            let c = Config::load(
                None,
                env(&[("ORDERSTREAM__CASSANDRA__CONTACT_POINTS", raw)]),
                &[],
            )
            .unwrap();
            assert_eq!(
                c.cassandra.contact_points,
                vec!["a:9042", "b:9042"],
                "{raw}"
            );
        }
        let c = Config::load(
            None,
            env(&[("ORDERSTREAM__CASSANDRA__CONTACT_POINTS", "127.0.0.1:9042")]),
            &[],
        )
        .unwrap();
        assert_eq!(c.cassandra.contact_points, vec!["127.0.0.1:9042"]);
    }

    #[test]
    fn the_operations_port_is_on_loopback_by_default() {
        assert_eq!(Config::default().http.listen, "127.0.0.1:9898");
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_named_not_shown() {
        // (librdkafka's pass-through options take numbers: their values are strings to it.)
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        for (text, key) in [
            ("[mysql]\npassword = 918273\n", "mysql.password"),
            ("[kafka]\nsasl_password = [918273]\n", "kafka.sasl_password"),
            (
                "[kafka.librdkafka_options]\n\"ssl.keystore.password\" = [918273]\n",
                "kafka.librdkafka_options",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Config::load(Some(&path), Vec::new(), &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{key}")), "{err}");
            assert!(!err.contains("918273"), "{err}");
        }
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[kafka]\ntopic = \"from_file\"\ngroup_id = \"g_file\"\n[pipeline]\nmax_orders = 10\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("ORDERSTREAM__KAFKA__GROUP_ID", "g_env"),
                ("ORDERSTREAM__PIPELINE__MAX_ORDERS", "20"),
                ("OTHER", "x"),
            ]),
            &[("pipeline.max_orders".into(), "30".into())],
        )
        .unwrap();
        assert_eq!(c.kafka.topic, "from_file");
        assert_eq!(c.kafka.group_id, "g_env");
        assert_eq!(c.pipeline.max_orders, 30);
    }

    #[test]
    fn env_values_keep_string_types() {
        let c = Config::load(
            None,
            env(&[
                ("ORDERSTREAM__MYSQL__PASSWORD", "1234"),
                (
                    "ORDERSTREAM__CASSANDRA__CONTACT_POINTS",
                    "[\"a:1\", \"b:2\"]",
                ),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.mysql.password.expose(), "1234");
        assert_eq!(c.cassandra.contact_points, vec!["a:1", "b:2"]);
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::load(
            None,
            env(&[("ORDERSTREAM__PIPELINE__MAX_ORDERS", "zero")]),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("pipeline.max_orders"), "{err}");
        let err = Config::load(
            None,
            env(&[("ORDERSTREAM__PIPELINE__MAX_ORDERS", "0")]),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("pipeline.max_orders"), "{err}");
        let err = Config::load(None, env(&[("ORDERSTREAM__KAFKA__TOPICC", "x")]), &[]).unwrap_err();
        assert!(err.to_string().contains("topicc"), "{err}");
        let err = Config::load(
            None,
            env(&[("ORDERSTREAM__CASSANDRA__CONSISTENCY", "most")]),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("cassandra.consistency"), "{err}");
        let err = Config::load(
            None,
            env(&[("ORDERSTREAM__MYSQL__DATABASE", "sales; drop")]),
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("mysql.database"), "{err}");
    }

    #[test]
    fn the_default_budget_takes_many_partitions() {
        let many =
            Config::load(None, env(&[("ORDERSTREAM__KAFKA__PARTITIONS", "64")]), &[]).unwrap();
        assert!(many.worst_case_memory_bytes() <= many.pipeline.memory_budget_bytes);
    }

    #[test]
    fn a_dead_letter_fits_what_its_producer_may_send() {
        let load = |vars: &[(&str, &str)]| Config::load(None, env(vars), &[]).unwrap();
        assert_eq!(load(&[]).dead_letter_payload_bytes(), 64 * 1024);
        let large = [("ORDERSTREAM__PIPELINE__MAX_RECORD_BYTES", "2097152")];
        assert_eq!(
            load(&large).dead_letter_payload_bytes(),
            1_000_000 - 16 * 1024
        );
        let raised = [
            ("ORDERSTREAM__PIPELINE__MAX_RECORD_BYTES", "2097152"),
            (
                "ORDERSTREAM__KAFKA__LIBRDKAFKA_OPTIONS__MESSAGE_MAX_BYTES",
                "8388608",
            ),
        ];
        assert_eq!(load(&raised).dead_letter_payload_bytes(), 2_097_152);
    }

    #[test]
    fn memory_budget_is_enforced() {
        let too_much: [&[(&str, &str)]; 2] = [
            &[("ORDERSTREAM__PIPELINE__MAX_IN_FLIGHT_BATCHES", "500")],
            // Each partition's fetch may overshoot the queue's bound by its own size.
            &[
                ("ORDERSTREAM__KAFKA__PARTITIONS", "64"),
                (
                    "ORDERSTREAM__KAFKA__LIBRDKAFKA_OPTIONS__MAX_PARTITION_FETCH_BYTES",
                    "8388608",
                ),
            ],
        ];
        for vars in too_much {
            let err = Config::load(None, env(vars), &[]).unwrap_err();
            assert!(
                err.to_string().contains("pipeline.memory_budget_bytes"),
                "{vars:?}: {err}"
            );
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Config::load(
            None,
            env(&[("ORDERSTREAM__MYSQL__PASSWORD", "hunter2")]),
            &[],
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!c.to_redacted_toml().contains("hunter2"));
        assert!(c.to_redacted_toml().contains("<redacted>"));
    }
}
