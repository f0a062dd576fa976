//! The Kafka clients' security settings and pass-through librdkafka properties: how they become
//! librdkafka properties, and which properties the pipeline keeps for itself.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use super::{invalid, ConfigError, KafkaConfig};

/// Properties the pipeline sets itself: its exactly-once protocol (the group, offsets, commits,
/// isolation, assignment, idempotence), its timeouts and queues (validated against the memory
/// budget), and the security settings that have their own keys, each under every name
/// librdkafka takes for it (its aliases set the same property, and which of two settings wins is
/// not defined). Each maps to the key to use instead, or "" when there is none.
const OWNED: &[(&str, &str)] = &[
    ("bootstrap.servers", "kafka.brokers"),
    ("metadata.broker.list", "kafka.brokers"),
    ("group.id", "kafka.group_id"),
    ("group.instance.id", ""),
    ("group.protocol", ""),
    ("client.id", ""),
    ("enable.auto.commit", ""),
    ("auto.commit.enable", ""),
    ("enable.auto.offset.store", ""),
    ("auto.commit.interval.ms", ""),
    ("auto.offset.reset", ""),
    ("isolation.level", ""),
    ("partition.assignment.strategy", ""),
    ("enable.partition.eof", ""),
    ("session.timeout.ms", "kafka.session_timeout_ms"),
    ("max.poll.interval.ms", "kafka.max_poll_interval_ms"),
    ("heartbeat.interval.ms", "kafka.session_timeout_ms"),
    (
        "queued.max.messages.kbytes",
        "kafka.queued_max_messages_kbytes",
    ),
    (
        "queue.buffering.max.kbytes",
        "kafka.producer_queue_max_kbytes",
    ),
    ("enable.idempotence", ""),
    ("acks", ""),
    ("request.required.acks", ""),
    ("transactional.id", ""),
    ("message.timeout.ms", ""),
    ("delivery.timeout.ms", ""),
    ("linger.ms", ""),
    ("queue.buffering.max.ms", ""),
    ("queue.buffering.max.messages", ""),
    ("queued.min.messages", ""),
    ("fetch.queue.backoff.ms", ""),
    ("fetch.wait.max.ms", ""),
    ("socket.timeout.ms", "kafka.request_timeout_ms"),
    ("debug", "kafka.debug"),
    ("security.protocol", "kafka.security_protocol"),
    ("ssl.ca.location", "kafka.ssl_ca_file"),
    ("ssl.certificate.location", "kafka.ssl_certificate_file"),
    ("ssl.key.location", "kafka.ssl_key_file"),
    ("ssl.key.password", "kafka.ssl_key_password"),
    (
        "ssl.endpoint.identification.algorithm",
        "kafka.ssl_verify_hostname",
    ),
    ("sasl.mechanism", "kafka.sasl_mechanism"),
    ("sasl.mechanisms", "kafka.sasl_mechanism"),
    ("sasl.username", "kafka.sasl_username"),
    ("sasl.password", "kafka.sasl_password"),
];

/// `kafka.librdkafka_options`: property name → value, as librdkafka takes them. Shown (by
/// `orderstream config` and by `Debug`) with the value of every property whose name says it
/// holds a secret redacted.
#[derive(Clone, Default, PartialEq)]
pub struct LibrdkafkaOptions(BTreeMap<String, String>);

impl std::ops::Deref for LibrdkafkaOptions {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Whether a property's value may hold a secret: a password, a key, anything of OAUTHBEARER
/// (its configuration, extensions, endpoint), a URL or a command line that may embed
/// credentials. Showing a harmless value redacted costs less than the reverse.
fn is_secret_property(name: &str) -> bool {
    [
        "password",
        "secret",
        "oauthbearer",
        "key.pem",
        "url",
        "token",
        "kinit",
        "jaas",
    ]
    .iter()
    .any(|word| name.contains(word))
}

impl LibrdkafkaOptions {
    fn shown(&self) -> impl Iterator<Item = (&String, &str)> {
        self.0.iter().map(|(name, value)| {
            let shown = if is_secret_property(name) {
                "<redacted>"
            } else {
                value.as_str()
            };
            (name, shown)
        })
    }
}

impl std::fmt::Debug for LibrdkafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.shown()).finish()
    }
}

impl serde::Serialize for LibrdkafkaOptions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.shown())
    }
}

/// Values as strings, whatever TOML type they were written as (`true`, `30000`), with `_` in a
/// name read as `.`: no property librdkafka takes as a string has `_` in its name, and
/// environment variables and `--set` keys cannot carry the dots.
impl<'de> Deserialize<'de> for LibrdkafkaOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, toml::Value>::deserialize(d)?;
        raw.into_iter()
            .map(|(name, value)| {
                let text = match value {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                        value.to_string()
                    }
                    other => {
                        return Err(serde::de::Error::custom(format!(
                            "{name}: {} is not a librdkafka value",
                            other.type_str()
                        )))
                    }
                };
                Ok((name.replace('_', "."), text))
            })
            .collect::<Result<_, _>>()
            .map(LibrdkafkaOptions)
    }
}

/// The librdkafka properties of the security settings, secrets included: for the clients only.
pub(crate) fn security_properties(k: &KafkaConfig) -> Vec<(&'static str, String)> {
    let mut props = vec![(
        "security.protocol",
        k.security_protocol.to_ascii_lowercase(),
    )];
    let files = [
        ("ssl.ca.location", &k.ssl_ca_file),
        ("ssl.certificate.location", &k.ssl_certificate_file),
        ("ssl.key.location", &k.ssl_key_file),
    ];
    props.extend(
        files
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(p, v)| (p, v.clone())),
    );
    if !k.ssl_key_password.expose().is_empty() {
        props.push(("ssl.key.password", k.ssl_key_password.expose().to_owned()));
    }
    if k.uses_ssl() && !k.ssl_verify_hostname {
        props.push(("ssl.endpoint.identification.algorithm", "none".into()));
    }
    if k.uses_sasl() {
        props.push(("sasl.mechanism", k.sasl_mechanism.clone()));
        props.push(("sasl.username", k.sasl_username.clone()));
        props.push(("sasl.password", k.sasl_password.expose().to_owned()));
    }
    props
}

impl KafkaConfig {
    pub(crate) fn uses_ssl(&self) -> bool {
        self.security_protocol.to_ascii_lowercase().ends_with("ssl")
    }
    pub(crate) fn uses_sasl(&self) -> bool {
        self.security_protocol
            .to_ascii_lowercase()
            .starts_with("sasl")
    }

    /// The security keys and the pass-through properties: each a value librdkafka accepts, no
    /// property the pipeline owns.
    pub(super) fn validate_security(&self) -> Result<(), ConfigError> {
        let protocol = self.security_protocol.to_ascii_lowercase();
        if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&protocol.as_str()) {
            return Err(invalid(
                "kafka.security_protocol",
                format!("{protocol:?} is not plaintext, ssl, sasl_plaintext or sasl_ssl"),
            ));
        }
        if self.uses_sasl() {
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&self.sasl_mechanism.as_str())
            {
                return Err(invalid(
                    "kafka.sasl_mechanism",
                    format!(
                        "{:?} is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (needed by {protocol})",
                        self.sasl_mechanism
                    ),
                ));
            }
            super::nonempty("kafka.sasl_username", &self.sasl_username)?;
            super::nonempty("kafka.sasl_password", self.sasl_password.expose())?;
        }
        super::validate::tls_files(
            "kafka",
            ("kafka.security_protocol", self.uses_ssl()),
            [
                &self.ssl_ca_file,
                &self.ssl_certificate_file,
                &self.ssl_key_file,
            ],
        )?;
        let sasl_given = !self.sasl_mechanism.is_empty()
            || !self.sasl_username.is_empty()
            || !self.sasl_password.expose().is_empty();
        if sasl_given && !self.uses_sasl() {
            return Err(invalid(
                "kafka.security_protocol",
                format!("is {protocol} while kafka.sasl_* keys are given: use sasl_ssl (or sasl_plaintext), or remove them"),
            ));
        }
        if !self.ssl_key_password.expose().is_empty() && self.ssl_key_file.is_empty() {
            return Err(invalid(
                "kafka.ssl_key_password",
                "is given without kafka.ssl_key_file",
            ));
        }
        for name in self.librdkafka_options.keys() {
            if let Some((_, instead)) = OWNED.iter().find(|(owned, _)| owned == name) {
                let hint = if instead.is_empty() {
                    "the pipeline sets it itself".to_owned()
                } else {
                    format!("set {instead} instead")
                };
                return Err(invalid(
                    &format!("kafka.librdkafka_options.{name}"),
                    format!("{name} is not passed through: {hint}"),
                ));
            }
        }
        self.check_with_librdkafka()
    }

    /// librdkafka's own check of every property the clients get (unknown names, bad values,
    /// `ssl` in a build without TLS, an unknown `kafka.debug` context), each reported with its
    /// key and never with its value (it may be a secret under a misspelled name).
    fn check_with_librdkafka(&self) -> Result<(), ConfigError> {
        let passed = self.librdkafka_options.iter().map(|(name, value)| {
            (
                format!("kafka.librdkafka_options.{name}"),
                name.as_str(),
                value.clone(),
            )
        });
        let security = security_properties(self).into_iter().map(|(name, value)| {
            let key = OWNED
                .iter()
                .find(|(owned, _)| *owned == name)
                .map_or("kafka.security_protocol", |(_, key)| key);
            (key.to_owned(), name, value)
        });
        let debug = (!self.debug.is_empty())
            .then(|| ("kafka.debug".to_owned(), "debug", self.debug.clone()));
        for (key, name, value) in passed.chain(security).chain(debug) {
            let mut probe = rdkafka::ClientConfig::new();
            probe.set(name, &value);
            if let Err(e) = probe.create_native_config() {
                let mut message = e.to_string();
                if !value.is_empty() {
                    message = message.replace(&value, "<value>");
                }
                return Err(invalid(&key, message));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::from_env as load;

    #[test]
    fn a_pass_through_property_reaches_the_config_with_dots() {
        let cfg = load(&[("KAFKA__LIBRDKAFKA_OPTIONS__SOCKET_KEEPALIVE_ENABLE", "true")]).unwrap();
        assert_eq!(
            cfg.kafka.librdkafka_options.get("socket.keepalive.enable"),
            Some(&"true".to_owned())
        );
    }

    #[test]
    fn a_property_the_pipeline_owns_is_refused_by_name() {
        let err = load(&[("KAFKA__LIBRDKAFKA_OPTIONS__ENABLE_AUTO_COMMIT", "true")]).unwrap_err();
        assert!(
            err.contains("kafka.librdkafka_options.enable.auto.commit"),
            "{err}"
        );
        let err = load(&[("KAFKA__LIBRDKAFKA_OPTIONS__GROUP_ID", "other")]).unwrap_err();
        assert!(err.contains("set kafka.group_id instead"), "{err}");
    }

    #[test]
    fn an_unknown_debug_context_is_refused_with_its_key() {
        let err = load(&[("KAFKA__DEBUG", "consumer,nonsense")]).unwrap_err();
        assert!(err.contains("kafka.debug"), "{err}");
        assert!(load(&[("KAFKA__DEBUG", "consumer,cgrp")]).is_ok());
    }

    #[test]
    fn an_owned_property_is_refused_under_its_aliases_too() {
        // librdkafka's aliases set the same property as the name the pipeline sets.
        for (var, name) in [
            ("DELIVERY_TIMEOUT_MS", "delivery.timeout.ms"),
            ("QUEUE_BUFFERING_MAX_MS", "queue.buffering.max.ms"),
            ("AUTO_COMMIT_ENABLE", "auto.commit.enable"),
            ("REQUEST_REQUIRED_ACKS", "request.required.acks"),
            ("METADATA_BROKER_LIST", "metadata.broker.list"),
        ] {
            let var = format!("KAFKA__LIBRDKAFKA_OPTIONS__{var}");
            let err = load(&[(var.as_str(), "1")]).unwrap_err();
            assert!(
                err.contains(&format!("kafka.librdkafka_options.{name}")),
                "{err}"
            );
        }
    }

    #[test]
    fn an_unknown_property_is_refused_by_librdkafka_with_its_key() {
        let err = load(&[("KAFKA__LIBRDKAFKA_OPTIONS__NO_SUCH_THING", "1")]).unwrap_err();
        assert!(
            err.contains("kafka.librdkafka_options.no.such.thing"),
            "{err}"
        );
        assert!(
            err.to_lowercase()
                .contains("no such configuration property"),
            "{err}"
        );
    }

    #[test]
    fn sasl_needs_a_mechanism_a_user_and_a_password() {
        let err = load(&[("KAFKA__SECURITY_PROTOCOL", "sasl_plaintext")]).unwrap_err();
        assert!(err.contains("kafka.sasl_mechanism"), "{err}");
        let cfg = load(&[
            ("KAFKA__SECURITY_PROTOCOL", "sasl_plaintext"),
            ("KAFKA__SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA__SASL_USERNAME", "shop"),
            ("KAFKA__SASL_PASSWORD", "pw-not-shown"),
        ])
        .unwrap();
        let props = super::security_properties(&cfg.kafka);
        assert!(props.contains(&("sasl.mechanism", "SCRAM-SHA-512".into())));
        assert!(!cfg.to_redacted_toml().contains("pw-not-shown"));
    }

    #[test]
    fn an_unknown_protocol_is_refused() {
        let err = load(&[("KAFKA__SECURITY_PROTOCOL", "tls")]).unwrap_err();
        assert!(err.contains("kafka.security_protocol"), "{err}");
    }
}
