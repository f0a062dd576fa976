//! `orderstream demo`: the whole system in one process, with none of the servers. The binary is
//! run as a newcomer would run it and stopped with Ctrl-C (SIGINT), with a SQLite file so that
//! the test can check the stores itself afterwards; the servers the other suites start are not
//! used here.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orderstream::stores::OlapStore;

use crate::common::{self, BIN};

/// The numbers in reconcile's report line "topic below the ledger: X valid orders (R refused by
/// a store), Y invalid records".
fn below_ledger(report: &str) -> (u64, u64, u64) {
    let line = report
        .lines()
        .find(|l| l.starts_with("topic below the ledger:"))
        .unwrap_or_else(|| panic!("no topic line in:\n{report}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1], numbers[2])
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_alone_and_its_audit_is_exact() {
    let _heavy = common::heavy();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("demo.sqlite");
    let port = common::free_port();
    let out_path = dir.path().join("demo.out");
    let err_path = dir.path().join("demo.err");
    let mut child = Command::new(BIN)
        .args(["demo", "--rate", "2000", "--invalid-every", "250"])
        .args(["--summary-every-s", "2", "--sqlite"])
        .arg(&sqlite)
        .args(["--set", &format!("http.listen=127.0.0.1:{port}")])
        .env("RUST_LOG", "warn,scylla=off,rdkafka=off")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start orderstream demo");

    // The same operations endpoint as production, while it runs.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut applied = 0.0;
    while Instant::now() < deadline && applied == 0.0 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some((200, body)) = common::http_get(port, "/metrics") {
            applied = common::metric_sum(&body, "orderstream_mysql_orders_applied_total");
        }
    }
    assert!(applied > 0.0, "no order applied within 20 s, per /metrics");
    assert_eq!(common::http_status(port, "/readyz"), Some(200));

    // Ctrl-C, as a newcomer would stop it.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();

    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    let out = std::fs::read_to_string(&out_path).unwrap();
    let err = std::fs::read_to_string(&err_path).unwrap();
    assert_eq!(status.code(), Some(0), "stdout:\n{out}\nstderr:\n{err}");

    // It said where the data lives, printed live summaries, and ended on an exact audit.
    assert!(
        out.contains("orderstream demo: the whole pipeline in one process"),
        "{out}"
    );
    assert!(
        out.contains(&format!("SQLite file {}", sqlite.display())),
        "{out}"
    );
    let summaries = out.lines().filter(|l| l.contains("] produced ")).count();
    assert!(summaries >= 5, "{summaries} summaries:\n{out}");
    assert!(out.contains("today, sales / profit: Books"), "{out}");
    assert!(out.contains("verdict: EXACT"), "{out}");

    // The stores themselves, checked from here: the ledger covers every record, one in 250 was
    // invalid, and the aggregates count exactly the valid ones.
    let (valid, refused, invalid) = below_ledger(&out);
    assert_eq!(refused, 0);
    assert!(
        valid >= 30_000,
        "only {valid} orders in 20 s and more at 2,000/s"
    );
    let records = valid + invalid;
    // Every 250th record sent is invalid; records purged from the producer's queue at the stop
    // leave at most a few of the last ones out.
    assert!(
        (records / 250).abs_diff(invalid) <= 2,
        "{invalid} invalid of {records}"
    );
    assert!(out.contains(&format!("cassandra rows: {valid}\n")), "{out}");
    let pool = orderstream::stores::connect_sqlite(Some(&sqlite))
        .await
        .unwrap();
    let store = OlapStore::Sqlite(pool);
    let ledger = store.read_ledger("orders").await.unwrap();
    assert_eq!(ledger.len(), 16);
    assert_eq!(ledger.values().sum::<i64>() as u64, records);
    // The last summary's "produced" counts every record the topic holds: the producer waited for
    // the broker's answers before it stopped.
    let last = out
        .lines()
        .filter_map(|l| l.split("] produced ").nth(1))
        .next_back()
        .unwrap();
    let produced: u64 = last
        .split(' ')
        .next()
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap();
    assert_eq!(produced, records, "last summary: {last}");
    let aggregates = store.read_aggregates().await.unwrap();
    let counted: i64 = aggregates.daily.values().map(|t| t.order_count).sum();
    let per_minute: i64 = aggregates.per_minute.values().map(|t| t.order_count).sum();
    assert_eq!((counted as u64, per_minute as u64), (valid, valid));
    drop(store);

    // The file now holds this run's data: a second run on it is refused, naming the file.
    let again = Command::new(BIN)
        .args(["demo", "--seconds", "1", "--sqlite"])
        .arg(&sqlite)
        .args(["--set", "http.listen="])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds another run's data"), "{stderr}");
    assert!(stderr.contains(&sqlite.display().to_string()), "{stderr}");
}
