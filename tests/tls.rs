//! The pipeline against secured servers: Kafka over SASL_SSL (SCRAM-SHA-512; tansu behind
//! stunnel, since tansu 0.6 has no TLS listener), the CQL emulator behind stunnel, MariaDB
//! with its own certificate and a user that `REQUIRE SSL`; passwords given as files.

use std::path::Path;
use std::time::Duration;

use crate::common::tls::{Certs, Stunnel};
use crate::common::{self, free_port, Broker, Env};

const PARTITIONS: i32 = 3;

/// Runs `orderstream ARGS` with more settings to completion: (exit code, its output).
fn run_with(env: &Env, args: &[&str], extra: &[(&str, &str)]) -> (Option<i32>, String) {
    let log = env
        .root
        .path()
        .join(format!("{}-{}.log", args[0], rand::random::<u32>()));
    let mut p = env.spawn_logged(PARTITIONS, args, &log, extra);
    let code = p.wait(Duration::from_secs(120));
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

fn secret_file(dir: &Path, name: &str, secret: &str) -> String {
    let path = dir.join(name);
    // A trailing line break, as `echo pw > file` leaves it: not part of the secret.
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_flow_exactly_once_over_tls_to_all_three_stores_with_passwords_from_files() {
    let _heavy = common::heavy();
    const COUNT: u64 = 3_000;
    let root = tempfile::tempdir().unwrap();
    let certs = Certs::generate(root.path());
    let kafka_password = format!("kafka-pw-{:016x}", rand::random::<u64>());
    let mysql_password = format!("mysql-pw-{:016x}", rand::random::<u64>());

    let kafka_tls_port = free_port();
    let broker = Broker::start_with_scram(root.path(), "shop", &kafka_password, kafka_tls_port);
    let kafka_tls = Stunnel::start(
        root.path(),
        "kafka",
        kafka_tls_port,
        broker.port,
        &certs.server,
    );
    let mut env = Env::with_broker(root, broker);
    let cql_tls = Stunnel::start(
        env.root.path(),
        "cql",
        free_port(),
        env.cql.port,
        &certs.server,
    );

    // MariaDB again with its certificate, and a user that may only connect over TLS.
    if let Some(mut p) = env.mariadb.proc.take() {
        p.kill();
    }
    let [cert, key] = certs.server.clone();
    env.mariadb.tls = Some([certs.ca.clone(), cert, key]);
    env.mariadb.restart();
    let root_pool =
        sqlx::MySqlPool::connect(&format!("mysql://root@127.0.0.1:{}/", env.mariadb.port))
            .await
            .unwrap();
    for statement in [
        format!("CREATE USER 'shop'@'%' IDENTIFIED BY '{mysql_password}' REQUIRE SSL"),
        "GRANT ALL PRIVILEGES ON *.* TO 'shop'@'%'".to_owned(),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&root_pool)
            .await
            .unwrap();
    }

    let dir = env.root.path().to_path_buf();
    let ca = certs.ca.display().to_string();
    env.extra_vars = vec![
        ("KAFKA__BROKERS", format!("127.0.0.1:{}", kafka_tls.port)),
        ("KAFKA__SECURITY_PROTOCOL", "sasl_ssl".into()),
        ("KAFKA__SSL_CA_FILE", ca.clone()),
        ("KAFKA__SASL_MECHANISM", "SCRAM-SHA-512".into()),
        ("KAFKA__SASL_USERNAME", "shop".into()),
        (
            "KAFKA__SASL_PASSWORD_FILE",
            secret_file(&dir, "kafka_password", &kafka_password),
        ),
        (
            "CASSANDRA__CONTACT_POINTS",
            format!("[\"127.0.0.1:{}\"]", cql_tls.port),
        ),
        ("CASSANDRA__SSL", "true".into()),
        ("CASSANDRA__SSL_CA_FILE", ca.clone()),
        ("MYSQL__USER", "shop".into()),
        (
            "MYSQL__PASSWORD_FILE",
            secret_file(&dir, "mysql_password", &mysql_password),
        ),
        ("MYSQL__SSL_MODE", "verify_ca".into()),
        ("MYSQL__SSL_CA_FILE", ca.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    // Every client over TLS: the admin client and both stores (migrate), the producer, the
    // consumer, the ledger and the aggregates (run), the audit's topic reader (reconcile).
    env.migrate(PARTITIONS);
    env.produce(PARTITIONS, COUNT);
    let mut run = env.spawn(PARTITIONS, &["run"]);
    let pool = env.mysql(PARTITIONS).await;
    common::eventually(
        Duration::from_secs(120),
        "every order applied over TLS",
        || async { common::applied(&pool, &env.names.topic).await == COUNT as i64 },
    )
    .await;
    let metrics = common::scrape(env.http_port);
    assert_eq!(run.terminate(Duration::from_secs(60)), Some(0));
    let (code, report) = common::reconcile(&env, PARTITIONS);
    assert_eq!(code, Some(0), "reconcile: {report}");
    assert!(report.contains("verdict: EXACT"), "{report}");
    let cfg = env.config(PARTITIONS);
    let stored = orderstream::stores::CassandraStore::connect(&cfg.cassandra)
        .await
        .unwrap()
        .read_all()
        .await
        .unwrap();
    assert_eq!(stored.len() as u64, COUNT, "cassandra rows over TLS");

    // The passwords are nowhere: not in any log line, the metrics or the configuration shown,
    // which names the files they came from.
    let (code, shown) = run_with(&env, &["config"], &[]);
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        shown.contains(&format!("{}/mysql_password", dir.display())),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("{}/kafka_password", dir.display())),
        "{shown}"
    );
    let mut texts = vec![
        ("config output".to_owned(), shown),
        ("metrics".into(), metrics),
    ];
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            texts.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap_or_default(),
            ));
        }
    }
    for (what, text) in &texts {
        for secret in [&kafka_password, &mysql_password] {
            assert!(
                !text.contains(secret.as_str()),
                "a password appears in {what}"
            );
        }
    }

    // A wrong CA for any one store, or a wrong SASL password, stops startup with a message
    // naming the server and the reason. (The CQL driver logs its failed handshakes as errors:
    // expected here.)
    env.driver_errors_expected = true;
    let wrong_ca = certs.wrong_ca.display().to_string();
    let wrong_password = secret_file(&dir, "wrong_password", "not-the-password");
    let mysql_at = format!("mysql at 127.0.0.1:{}", env.mariadb.port);
    let cassandra_at = format!("cassandra at 127.0.0.1:{}", cql_tls.port);
    let kafka_at = format!("kafka at 127.0.0.1:{}", kafka_tls.port);
    let certificate = "certificate verify failed";
    let sasl = "SASL authentication error";
    let produce = ["produce", "--count", "10"];
    for (command, key, value, names, why) in [
        (
            &["run"][..],
            "MYSQL__SSL_CA_FILE",
            &wrong_ca,
            &mysql_at,
            certificate,
        ),
        (
            &["run"],
            "CASSANDRA__SSL_CA_FILE",
            &wrong_ca,
            &cassandra_at,
            certificate,
        ),
        (
            &["run"],
            "KAFKA__SSL_CA_FILE",
            &wrong_ca,
            &kafka_at,
            certificate,
        ),
        (
            &["run"],
            "KAFKA__SASL_PASSWORD_FILE",
            &wrong_password,
            &kafka_at,
            sasl,
        ),
        (
            &produce,
            "KAFKA__SASL_PASSWORD_FILE",
            &wrong_password,
            &kafka_at,
            sasl,
        ),
    ] {
        let key = format!("ORDERSTREAM__{key}");
        let (code, out) = run_with(&env, command, &[(&key, value)]);
        let last = out.lines().last().unwrap_or_default();
        assert!(
            code.is_some_and(|c| c != 0),
            "{key} wrong: {command:?} should stop ({code:?}): {out}"
        );
        assert!(
            last.contains(names.as_str()),
            "{key} wrong: names {names}: {last}"
        );
        assert!(last.contains(why), "{key} wrong: says {why:?}: {last}");
        eprintln!("{key} wrong: {last}");
    }

    // verify_identity as well: the server's certificate names 127.0.0.1.
    let mut mysql = env.config(PARTITIONS).mysql;
    mysql.ssl_mode = "verify_identity".into();
    let pool = orderstream::stores::connect_mysql(&mysql).await.unwrap();
    let cipher: (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!cipher.1.is_empty(), "the session is encrypted: {cipher:?}");

    // A node whose certificate (from the right CA) names another host is refused while the
    // hostname check is on, the default, and accepted with it off.
    let misnamed = Stunnel::start(
        env.root.path(),
        "cql-misnamed",
        free_port(),
        env.cql.port,
        &certs.misnamed,
    );
    let mut cassandra = env.config(PARTITIONS).cassandra;
    cassandra.contact_points = vec![format!("127.0.0.1:{}", misnamed.port)];
    let refused = orderstream::stores::CassandraStore::connect(&cassandra)
        .await
        .err()
        .expect("a certificate naming another host is refused")
        .to_string();
    assert!(refused.contains("certificate verify failed"), "{refused}");
    cassandra.ssl_verify_hostname = false;
    let store = orderstream::stores::CassandraStore::connect(&cassandra)
        .await
        .unwrap();
    assert_eq!(store.read_all().await.unwrap().len() as u64, COUNT);
}
