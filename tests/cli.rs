//! The command line as an operator meets it: exit codes (sysexits: 64 usage, 78 configuration),
//! messages that name what is wrong, plain-text logs, and the producer beside a pipeline.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{self, Env, BIN};

/// Runs the binary with no configuration from the environment; (exit code, stdout, stderr).
fn orderstream(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_errors_exit_64_and_configuration_errors_78() {
    for args in [
        &["--bogus"][..],
        &["no-such-command"],
        &["run", "--produce-rate"],
        &["produce", "--rate", "fast"],
        // A count of 0 would read as "forever" in the configuration.
        &["produce", "--count", "0"],
    ] {
        let (code, _, err) = orderstream(args);
        assert_eq!(code, Some(64), "{args:?}: {err}");
    }
    assert_eq!(orderstream(&["--help"]).0, Some(0));
    assert_eq!(orderstream(&["--version"]).0, Some(0));

    let (code, _, err) = orderstream(&["--set", "nokey", "config"]);
    assert_eq!(code, Some(78), "{err}");
    assert_eq!(
        err,
        "orderstream: --set number 1 has no '=': expected KEY=VALUE\n"
    );
    let (code, _, err) = orderstream(&["--set", "pipeline.max_orders=0", "config"]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("`pipeline.max_orders`"), "{err}");
}

#[test]
fn a_rate_of_zero_is_refused_by_demo_produce_and_run_alike() {
    let (demo_code, _, demo) = orderstream(&["demo", "--rate", "0"]);
    let (produce_code, _, produce) = orderstream(&["produce", "--rate", "0"]);
    let (run_code, _, run) = orderstream(&["run", "--produce-rate", "0"]);
    assert_eq!(
        (demo_code, produce_code, run_code),
        (Some(78), Some(78), Some(78)),
        "{demo}{produce}{run}"
    );
    assert_eq!(demo, produce);
    assert_eq!(demo, run);
    assert_eq!(
        demo,
        "orderstream: invalid configuration at `producer.rate_per_sec`: 0 is outside \
         1..=10000000\n"
    );
}

#[test]
fn a_demo_file_in_a_missing_directory_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    let file = missing.join("demo.db");
    let (code, _, err) = orderstream(&[
        "demo",
        "--seconds",
        "1",
        "--set",
        "http.listen=",
        "--sqlite",
        file.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(64), "{err}");
    assert_eq!(
        err,
        format!(
            "orderstream: --sqlite {}: the directory {} does not exist\n",
            file.display(),
            missing.display()
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_says_which_broker_it_waits_for_and_logs_in_plain_text() {
    let _heavy = common::heavy();
    let mut env = Env::start();
    // Nothing listens on this port: the broker is unreachable.
    let closed = common::free_port();
    env.extra_vars.extend([
        ("KAFKA__BROKERS".to_owned(), format!("127.0.0.1:{closed}")),
        ("KAFKA__REQUEST_TIMEOUT_MS".to_owned(), "1000".to_owned()),
    ]);
    let (code, err) = env.run_to_end(1, &["migrate"], Duration::from_secs(60));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("waiting for the kafka broker to answer")
            && err.contains(&format!("brokers=127.0.0.1:{closed}")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "the kafka broker at 127.0.0.1:{closed} did not answer within"
        )),
        "{err}"
    );
    // Written to a file, not a terminal: no colour codes.
    assert!(
        !err.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_runs_beside_a_pipeline_and_with_a_count_goes_as_fast_as_the_broker() {
    let _heavy = common::heavy();
    const PARTITIONS: i32 = 2;
    let env = Env::start();
    env.migrate(PARTITIONS);
    // A pipeline on the default operations address, if it is free here (otherwise something
    // else holds it, which is the same situation for the producer).
    let pipeline_port = std::net::TcpListener::bind("127.0.0.1:9898");
    // Every setting of the harness but the operations address, which stays at its default.
    let vars: Vec<(String, String)> = env
        .vars(PARTITIONS)
        .into_iter()
        .filter(|(k, _)| k != "ORDERSTREAM__HTTP__LISTEN")
        .collect();
    let child = Command::new(BIN)
        .args(["produce", "--count", "3000"])
        .envs(vars)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    drop(pipeline_port);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    // "produced 3000 orders in 0.8 s (3750 orders/s)"
    let rate: f64 = stdout
        .strip_prefix("produced 3000 orders in ")
        .and_then(|rest| rest.split('(').nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output: {stdout}"));
    // The configured default is 100 orders/s; with a count and no rate there is no limit.
    let default_rate = f64::from(orderstream::config::Config::default().producer.rate_per_sec);
    assert!(rate > 5.0 * default_rate, "{stdout}");
    let records = common::log_ends(&env.broker.addr(), &env.names.topic);
    assert_eq!(records.values().sum::<i64>(), 3000);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_counter_is_registered_at_zero_before_the_first_record() {
    let _heavy = common::heavy();
    const PARTITIONS: i32 = 2;
    let env = Env::start();
    env.migrate(PARTITIONS);
    let mut run = env.spawn(PARTITIONS, &["run"]);
    let metrics = loop {
        if let Some((200, body)) = common::http_get(env.http_port, "/metrics") {
            if body.contains("orderstream_actor_up") {
                break body;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for counter in [
        "orderstream_consumer_records_total 0",
        "orderstream_consumer_rejoins_total{reason=\"stuck_unheld\"} 0",
        "orderstream_consumer_released_partitions_total 0",
        "orderstream_watchdog_stuck_partitions_total 0",
        "orderstream_deadletter_records_total{reason=\"duplicate_field\"} 0",
    ] {
        assert!(metrics.contains(counter), "{counter} missing:\n{metrics}");
    }
    assert_eq!(run.terminate(Duration::from_secs(30)), Some(0));
}

/// Whether process `pid` still runs (a zombie has finished its work).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(") ")
                .map(|(_, rest)| rest.starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_servers_stop_returns_once_the_emulator_has_saved_its_state() {
    use futures::StreamExt as _;
    let _heavy = common::heavy();
    let dir = tempfile::tempdir().unwrap();
    let (kafka, mysql, cql) = (
        common::free_port(),
        common::free_port(),
        common::free_port(),
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev-servers");
    let dev_servers = |command: &str| {
        Command::new("bash")
            .args([script, command])
            .env("DEV_DIR", dir.path())
            .env("DEV_KAFKA_PORT", kafka.to_string())
            .env("DEV_MYSQL_PORT", mysql.to_string())
            .env("DEV_CQL_PORT", cql.to_string())
            .env("ORDERSTREAM_BIN", BIN)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let started = dev_servers("start");
    assert!(
        started.status.success(),
        "{}{}",
        String::from_utf8_lossy(&started.stdout),
        String::from_utf8_lossy(&started.stderr)
    );
    // About 200 MB of rows, so that saving the emulator's state takes a while.
    let cfg = orderstream::config::CassandraConfig {
        contact_points: vec![format!("127.0.0.1:{cql}")],
        ..Default::default()
    };
    let session = orderstream::stores::connect_cassandra_session(&cfg)
        .await
        .unwrap();
    session
        .query_unpaged(
            "CREATE KEYSPACE IF NOT EXISTS fill WITH replication = \
             {'class': 'SimpleStrategy', 'replication_factor': 1}",
            (),
        )
        .await
        .unwrap();
    session
        .query_unpaged(
            "CREATE TABLE IF NOT EXISTS fill.blobs (id bigint PRIMARY KEY, body text)",
            (),
        )
        .await
        .unwrap();
    let insert = session
        .prepare("INSERT INTO fill.blobs (id, body) VALUES (?, ?)")
        .await
        .unwrap();
    let body = "x".repeat(10 * 1024);
    let inserted = futures::stream::iter(0..20_000i64)
        .map(|id| session.execute_unpaged(&insert, (id, body.as_str())))
        .buffer_unordered(64)
        .filter(|r| std::future::ready(r.is_ok()))
        .count()
        .await;
    assert_eq!(inserted, 20_000);
    drop(session);

    let pid = std::fs::read_to_string(dir.path().join("cql.pid")).unwrap();
    let pid = pid.trim();
    assert!(running(pid), "the emulator runs before the stop");
    let stopped = dev_servers("stop");
    assert!(stopped.status.success());
    // `stop` returned: the emulator has finished writing its state, not only closed its port.
    assert!(
        !running(pid),
        "the emulator was still saving when `stop` returned"
    );
    let state = std::fs::metadata(dir.path().join("cql.state")).unwrap();
    assert!(
        state.len() > 100 * 1024 * 1024,
        "state of {} bytes",
        state.len()
    );
}
