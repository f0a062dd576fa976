//! Secrets given as files (`password_file` and the like: Docker and Kubernetes secrets are
//! files), read once at startup into the secret they stand for.

use super::{invalid, Config, ConfigError, Secret};

/// Reads every `*_file` secret into its secret: the file's content without its trailing line
/// break. A value and a file for the same secret is an error naming both keys; an unreadable
/// file names its key and path, never any content.
pub(super) fn read_secret_files(cfg: &mut Config) -> Result<(), ConfigError> {
    let Config {
        kafka,
        cassandra,
        mysql,
        ..
    } = cfg;
    let slots: [(&str, &mut Secret, &str); 4] = [
        (
            "kafka.sasl_password",
            &mut kafka.sasl_password,
            &kafka.sasl_password_file,
        ),
        (
            "kafka.ssl_key_password",
            &mut kafka.ssl_key_password,
            &kafka.ssl_key_password_file,
        ),
        (
            "cassandra.password",
            &mut cassandra.password,
            &cassandra.password_file,
        ),
        ("mysql.password", &mut mysql.password, &mysql.password_file),
    ];
    for (key, secret, file) in slots {
        if file.is_empty() {
            continue;
        }
        if !secret.expose().is_empty() {
            return Err(invalid(
                &format!("{key}_file"),
                format!("give {key} or {key}_file, not both"),
            ));
        }
        let text = std::fs::read_to_string(file)
            .map_err(|e| invalid(&format!("{key}_file"), format!("cannot read {file}: {e}")))?;
        *secret = Secret::new(text.trim_end_matches(['\n', '\r']));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::from_env as load;

    #[test]
    fn a_password_file_becomes_the_password_and_is_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mysql_password");
        std::fs::write(&file, "s3cr3t-from-a-file\n").unwrap();
        let cfg = load(&[("MYSQL__PASSWORD_FILE", file.to_str().unwrap())]).unwrap();
        assert_eq!(cfg.mysql.password.expose(), "s3cr3t-from-a-file");
        let shown = cfg.to_redacted_toml();
        assert!(!shown.contains("s3cr3t-from-a-file"), "{shown}");
        assert!(
            shown.contains(file.to_str().unwrap()),
            "names where it came from"
        );
        assert!(!format!("{cfg:?}").contains("s3cr3t-from-a-file"));
    }

    #[test]
    fn a_value_and_a_file_for_one_secret_name_both_keys() {
        let err = load(&[
            ("KAFKA__SASL_PASSWORD", "x"),
            ("KAFKA__SASL_PASSWORD_FILE", "/nonexistent"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("kafka.sasl_password_file"), "{err}");
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn an_unreadable_file_names_its_key_and_path() {
        let err = load(&[("CASSANDRA__PASSWORD_FILE", "/nonexistent/pw")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("cassandra.password_file"), "{err}");
        assert!(err.contains("/nonexistent/pw"), "{err}");
    }
}
