//! Validation of each section: every value checked once, the first bad one reported with its
//! key.

use super::*;

impl KafkaConfig {
    /// The `kafka.*` keys.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        nonempty("kafka.brokers", &self.brokers)?;
        topic_name("kafka.topic", &self.topic)?;
        topic_name("kafka.dead_letter_topic", &self.dead_letter_topic)?;
        if self.topic == self.dead_letter_topic {
            return Err(invalid(
                "kafka.dead_letter_topic",
                "must differ from kafka.topic",
            ));
        }
        nonempty("kafka.group_id", &self.group_id)?;
        range("kafka.partitions", i64::from(self.partitions), 1, 10_000)?;
        range(
            "kafka.replication_factor",
            i64::from(self.replication_factor),
            1,
            100,
        )?;
        range(
            "kafka.session_timeout_ms",
            i64::from(self.session_timeout_ms),
            1_000,
            3_600_000,
        )?;
        range(
            "kafka.max_poll_interval_ms",
            i64::from(self.max_poll_interval_ms),
            i64::from(self.session_timeout_ms),
            86_400_000,
        )?;
        range(
            "kafka.queued_max_messages_kbytes",
            i64::from(self.queued_max_messages_kbytes),
            1,
            2_097_151,
        )?;
        range(
            "kafka.producer_queue_max_kbytes",
            i64::from(self.producer_queue_max_kbytes),
            1,
            2_147_483_647,
        )?;
        range(
            "kafka.request_timeout_ms",
            i64::from(self.request_timeout_ms),
            100,
            3_600_000,
        )?;
        self.validate_security()
    }
}

impl CassandraConfig {
    /// The `cassandra.*` keys.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.contact_points.is_empty() {
            return Err(invalid(
                "cassandra.contact_points",
                "needs at least one host:port",
            ));
        }
        for point in &self.contact_points {
            host_port("cassandra.contact_points", point)?;
        }
        identifier("cassandra.keyspace", &self.keyspace)?;
        range(
            "cassandra.replication_factor",
            i64::from(self.replication_factor),
            1,
            100,
        )?;
        self.consistency_level().ok_or_else(|| {
            invalid(
                "cassandra.consistency",
                format!("unknown level {:?}", self.consistency),
            )
        })?;
        if self.user.is_empty() && !self.password.expose().is_empty() {
            // Without a user the driver would not log in at all, and the node's refusal of an
            // unauthenticated session would look like an outage.
            return Err(invalid(
                "cassandra.password",
                "is given without cassandra.user",
            ));
        }
        range("cassandra.concurrency", self.concurrency as i64, 1, 4_096)?;
        range(
            "cassandra.request_timeout_ms",
            self.request_timeout_ms as i64,
            10,
            600_000,
        )?;
        tls_files(
            "cassandra",
            ("cassandra.ssl", self.ssl),
            [
                &self.ssl_ca_file,
                &self.ssl_certificate_file,
                &self.ssl_key_file,
            ],
        )?;
        Ok(())
    }
}

impl MysqlConfig {
    /// The `mysql.*` keys.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        nonempty("mysql.host", &self.host)?;
        range("mysql.port", i64::from(self.port), 1, 65_535)?;
        nonempty("mysql.user", &self.user)?;
        identifier("mysql.database", &self.database)?;
        range(
            "mysql.max_connections",
            i64::from(self.max_connections),
            2,
            1_000,
        )?;
        range("mysql.timeout_ms", self.timeout_ms as i64, 10, 600_000)?;
        self.ssl_mode().ok_or_else(|| {
            invalid(
                "mysql.ssl_mode",
                format!(
                    "{:?} is not disabled, preferred, required, verify_ca or verify_identity",
                    self.ssl_mode
                ),
            )
        })?;
        let mode = self.ssl_mode.to_ascii_lowercase();
        tls_files(
            "mysql",
            ("mysql.ssl_mode", mode != "disabled"),
            [
                &self.ssl_ca_file,
                &self.ssl_certificate_file,
                &self.ssl_key_file,
            ],
        )?;
        // The driver checks a certificate against the CA only in the verifying modes; in the
        // others a CA file would look like protection and give none.
        if !self.ssl_ca_file.is_empty() && (mode == "preferred" || mode == "required") {
            return Err(invalid(
                "mysql.ssl_mode",
                format!("is {mode}, which checks no certificate, while mysql.ssl_ca_file is given: use verify_ca or verify_identity"),
            ));
        }
        Ok(())
    }
}

impl ProducerConfig {
    /// The `producer.*` keys.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        range(
            "producer.rate_per_sec",
            i64::from(self.rate_per_sec),
            1,
            10_000_000,
        )?;
        range(
            "producer.lease_ttl_ms",
            self.lease_ttl_ms as i64,
            1_000,
            600_000,
        )?;
        if let Some(id) = self.instance_id {
            range("producer.instance_id", i64::from(id), 0, 1_023)?;
        }
        Ok(())
    }
}

impl HttpConfig {
    /// The `http.*` keys.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.is_empty() {
            self.listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| invalid("http.listen", format!("{:?}: {e}", self.listen)))?;
        }
        Ok(())
    }
}

impl SupervisionConfig {
    /// The `supervision.*` keys.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        range(
            "supervision.restart_budget",
            i64::from(self.restart_budget),
            0,
            1_000_000,
        )?;
        range(
            "supervision.restart_window_ms",
            self.restart_window_ms as i64,
            1,
            86_400_000,
        )?;
        range(
            "supervision.backoff_initial_ms",
            self.backoff_initial_ms as i64,
            1,
            3_600_000,
        )?;
        if self.backoff_max_ms < self.backoff_initial_ms {
            return Err(invalid(
                "supervision.backoff_max_ms",
                "must be >= backoff_initial_ms",
            ));
        }
        Ok(())
    }
}

/// The TLS files of a section (`SECTION.ssl_ca_file`, `_certificate_file`, `_key_file`): a
/// certificate comes with its key, every file given can be read, and none is given while the
/// section's TLS is off (`enabled`: the key that turns it on, and whether it is on) — a file
/// the client would never read.
pub(super) fn tls_files(
    section: &str,
    (enabled_key, enabled): (&str, bool),
    [ca, certificate, key]: [&str; 3],
) -> Result<(), ConfigError> {
    if certificate.is_empty() != key.is_empty() {
        return Err(invalid(
            &format!("{section}.ssl_key_file"),
            format!("give {section}.ssl_certificate_file and {section}.ssl_key_file together"),
        ));
    }
    for (name, file) in [
        ("ssl_ca_file", ca),
        ("ssl_certificate_file", certificate),
        ("ssl_key_file", key),
    ] {
        if file.is_empty() {
            continue;
        }
        if !enabled {
            return Err(invalid(
                enabled_key,
                format!(
                    "leaves TLS off while {section}.{name} is given: turn TLS on, or remove it"
                ),
            ));
        }
        std::fs::File::open(file).map_err(|e| {
            invalid(
                &format!("{section}.{name}"),
                format!("cannot read {file}: {e}"),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::from_env as load;

    #[test]
    fn a_cassandra_password_needs_a_user() {
        let err = load(&[("CASSANDRA__PASSWORD", "s3cr3t")]).unwrap_err();
        assert!(
            err.contains("cassandra.password") && err.contains("cassandra.user"),
            "{err}"
        );
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(load(&[
            ("CASSANDRA__USER", "app"),
            ("CASSANDRA__PASSWORD", "s3cr3t")
        ])
        .is_ok());
    }

    #[test]
    fn tls_files_name_their_key() {
        let err = load(&[
            ("CASSANDRA__SSL", "true"),
            ("CASSANDRA__SSL_CA_FILE", "/nonexistent/ca.pem"),
        ])
        .unwrap_err();
        assert!(err.contains("cassandra.ssl_ca_file"), "{err}");
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        let err = load(&[
            ("MYSQL__SSL_MODE", "required"),
            ("MYSQL__SSL_CERTIFICATE_FILE", "/etc/hostname"),
        ])
        .unwrap_err();
        assert!(err.contains("mysql.ssl_key_file"), "{err}");
        assert!(err.contains("together"), "{err}");
    }

    #[test]
    fn tls_files_need_tls_on() {
        let err = load(&[("CASSANDRA__SSL_CA_FILE", "/etc/hostname")]).unwrap_err();
        assert!(err.contains("cassandra.ssl"), "{err}");
        load(&[
            ("CASSANDRA__SSL", "true"),
            ("CASSANDRA__SSL_CA_FILE", "/etc/hostname"),
        ])
        .unwrap();
        let err = load(&[
            ("MYSQL__SSL_MODE", "disabled"),
            ("MYSQL__SSL_CA_FILE", "/etc/hostname"),
        ])
        .unwrap_err();
        assert!(err.contains("mysql.ssl_mode"), "{err}");
        let err = load(&[("KAFKA__SSL_CA_FILE", "/etc/hostname")]).unwrap_err();
        assert!(err.contains("kafka.security_protocol"), "{err}");
        let err = load(&[("KAFKA__SASL_USERNAME", "shop")]).unwrap_err();
        assert!(err.contains("kafka.security_protocol"), "{err}");
    }

    #[test]
    fn a_mysql_ca_file_needs_a_verifying_mode() {
        for mode in ["preferred", "required"] {
            let err = load(&[
                ("MYSQL__SSL_MODE", mode),
                ("MYSQL__SSL_CA_FILE", "/etc/hostname"),
            ])
            .unwrap_err();
            assert!(err.contains("mysql.ssl_mode"), "{err}");
            assert!(err.contains("verify_ca"), "{err}");
        }
        load(&[
            ("MYSQL__SSL_MODE", "verify_ca"),
            ("MYSQL__SSL_CA_FILE", "/etc/hostname"),
        ])
        .unwrap();
    }

    #[test]
    fn mysql_ssl_modes_are_mysqls_own() {
        for mode in [
            "disabled",
            "preferred",
            "required",
            "verify_ca",
            "VERIFY_IDENTITY",
        ] {
            load(&[("MYSQL__SSL_MODE", mode)]).unwrap();
        }
        let err = load(&[("MYSQL__SSL_MODE", "on")]).unwrap_err();
        assert!(err.contains("mysql.ssl_mode"), "{err}");
        assert!(err.contains("verify_identity"), "{err}");
    }
}
