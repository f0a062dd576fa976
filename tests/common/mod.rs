//! Test harness: real servers on free loopback ports, stopped when the test ends.
//!
//! - Kafka protocol: the tansu broker with SQLite storage (`cargo install tansu --locked
//!   --features libsql`);
//! - CQL: `orderstream cql-emulator`, the kassandra emulator in its own process (production
//!   uses Cassandra or ScyllaDB);
//! - MySQL: a private MariaDB instance (`apt-get install mariadb-server`).
//!
//! A missing server fails the test with a message saying how to get it; nothing is skipped.
//! Every test gets fresh topic, keyspace, database and group names.

#![allow(dead_code)]

pub mod fault_proxy;
pub mod prometheus;
pub mod tls;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use orderstream::config::Config;
use orderstream::model::Order;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub const BIN: &str = env!("CARGO_BIN_EXE_orderstream");

/// `pipeline.stuck_after_ms` of every process the harness starts.
pub const STUCK_AFTER_MS: u64 = 25_000;

/// Heavy tests take this lock so that two of them never share the 2 cores.
pub fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A free loopback port below the kernel's ephemeral range (32768–60999 on these machines).
/// Ports the kernel hands out (`bind :0`) come from that range, where any outgoing connection
/// may take one as its local port while the server meant for it is not listening: the
/// benchmark's operations port, picked at its start, was taken that way twenty minutes later
/// and `orderstream run` failed with "Address already in use". Servers here also restart on
/// their first port.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Processes start at different places, so two test binaries rarely probe the same ports.
    let offset = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, AtomicOrdering::Relaxed);
        let port = (FIRST + (offset + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN);
}

fn wait_for_port(port: u16, what: &str, child: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before it listened on {port}: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on {port} within {timeout:?}");
}

pub fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(extra.iter().map(PathBuf::from));
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// A child process killed (SIGKILL) on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Sends SIGTERM and waits; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        self.signal("TERM");
        self.wait(timeout)
    }

    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                if status.code().is_none() {
                    use std::os::unix::process::ExitStatusExt;
                    eprintln!("{} ended by signal {:?}", self.name, status.signal());
                }
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Peak resident memory of a process (VmHWM), in bytes; 0 once it has exited.
pub fn peak_rss(proc: &Proc) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", proc.child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The tansu broker, or a Kafka-protocol broker that someone else runs (the benchmark's
/// librdkafka mock cluster).
pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    pub proc: Option<Proc>,
    external: Option<String>,
    /// The port clients are told to use when it is not `port`: a TLS terminator's in front.
    pub advertised: Option<u16>,
    /// SASL (SCRAM) required of every client.
    pub authentication: bool,
}

impl Broker {
    pub fn start(root: &Path) -> Broker {
        let dir = root.join("tansu");
        std::fs::create_dir_all(&dir).unwrap();
        let mut b = Broker {
            port: free_port(),
            dir,
            proc: None,
            external: None,
            advertised: None,
            authentication: false,
        };
        b.restart();
        b
    }

    /// A broker that requires SCRAM from every client, with `user` provisioned for both
    /// SCRAM mechanisms, advertising `advertised` (where the caller puts a TLS terminator).
    /// tansu takes new users only while authentication is off, so it starts once without.
    pub fn start_with_scram(root: &Path, user: &str, password: &str, advertised: u16) -> Broker {
        let mut b = Broker::start(root);
        let tansu = find_program("tansu", &[]).expect("tansu");
        for mechanism in ["scram256", "scram512"] {
            let out = Command::new(&tansu)
                .args([
                    "user",
                    "create",
                    "--broker",
                    &format!("tcp://127.0.0.1:{}", b.port),
                ])
                .args([user, password, "--mechanism", mechanism])
                .output()
                .expect("tansu user create");
            assert!(
                out.status.success(),
                "tansu user create: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(mut p) = b.proc.take() {
            p.kill();
        }
        b.advertised = Some(advertised);
        b.authentication = true;
        b.restart();
        b
    }

    /// A broker at `bootstrap`, not started or stopped by the harness.
    pub fn external(bootstrap: &str) -> Broker {
        Broker {
            port: 0,
            dir: PathBuf::new(),
            proc: None,
            external: Some(bootstrap.to_owned()),
            advertised: None,
            authentication: false,
        }
    }

    pub fn restart(&mut self) {
        let tansu = find_program("tansu", &[]).unwrap_or_else(|| {
            panic!("tansu is not installed: run `cargo install tansu --locked --features libsql` (or .ci/run)")
        });
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised.unwrap_or(self.port));
        let log = std::fs::File::create(self.dir.join("tansu.log")).unwrap();
        let mut child = Command::new(tansu)
            .current_dir(&self.dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
                "--storage-engine",
                "sqlite://tansu.db",
            ])
            .args(self.authentication.then_some("--authentication"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start tansu");
        wait_for_port(self.port, "tansu", &mut child, Duration::from_secs(30));
        self.proc = Some(Proc {
            name: "tansu".into(),
            child,
        });
    }

    pub fn addr(&self) -> String {
        match &self.external {
            Some(bootstrap) => bootstrap.clone(),
            None => format!("127.0.0.1:{}", self.advertised.unwrap_or(self.port)),
        }
    }
}

/// The CQL emulator (its own process; state saved on SIGTERM).
pub struct Cql {
    pub port: u16,
    state: PathBuf,
    log: PathBuf,
    pub proc: Option<Proc>,
}

impl Cql {
    pub fn start(root: &Path) -> Cql {
        let mut c = Cql {
            port: free_port(),
            state: root.join("cql.state"),
            log: root.join("cql.log"),
            proc: None,
        };
        c.restart();
        c
    }

    /// Stops the emulator without saving (SIGKILL) and starts it empty: a benchmark's next
    /// measurement must not run on a heap that earlier ones filled.
    pub fn restart_empty(&mut self) {
        if let Some(mut old) = self.proc.take() {
            old.kill();
        }
        let _ = std::fs::remove_file(&self.state);
        self.restart();
    }

    pub fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(BIN)
            .args([
                "cql-emulator",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--state",
            ])
            .arg(&self.state)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start cql emulator");
        wait_for_port(
            self.port,
            "cql emulator",
            &mut child,
            Duration::from_secs(30),
        );
        self.proc = Some(Proc {
            name: "cql".into(),
            child,
        });
    }
}

/// A private MariaDB instance.
pub struct Mariadb {
    pub port: u16,
    dir: PathBuf,
    pub proc: Option<Proc>,
    /// Serves TLS with this server certificate (its CA, certificate, key).
    pub tls: Option<[PathBuf; 3]>,
}

impl Mariadb {
    pub fn start(root: &Path) -> Mariadb {
        let dir = root.join("mariadb");
        let install = find_program("mariadb-install-db", &["/usr/bin", "/usr/sbin"]).unwrap_or_else(|| {
            panic!("MariaDB is not installed: run `apt-get install -y mariadb-server` (or .ci/run)")
        });
        let out = Command::new(install)
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .arg(format!("--datadir={}", dir.display()))
            .output()
            .expect("mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut m = Mariadb {
            port: free_port(),
            dir,
            proc: None,
            tls: None,
        };
        m.restart();
        m
    }

    pub fn restart(&mut self) {
        let server = find_program("mariadbd", &["/usr/sbin", "/usr/bin"]).expect("mariadbd");
        let d = self.dir.display();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let mut child = Command::new(server)
            .args([
                "--no-defaults".to_string(),
                "--user=root".into(),
                format!("--datadir={d}"),
                format!("--port={}", self.port),
                "--bind-address=127.0.0.1".into(),
                format!("--socket={d}/sock"),
                format!("--pid-file={d}/pid"),
                "--skip-log-bin".into(),
                "--skip-name-resolve".into(),
                "--innodb-log-file-size=8M".into(),
                "--innodb-buffer-pool-size=64M".into(),
                "--max-connections=500".into(),
            ])
            .args(self.tls.iter().flat_map(|[ca, cert, key]| {
                [
                    format!("--ssl-ca={}", ca.display()),
                    format!("--ssl-cert={}", cert.display()),
                    format!("--ssl-key={}", key.display()),
                ]
            }))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mariadbd");
        wait_for_port(self.port, "mariadbd", &mut child, Duration::from_secs(30));
        self.proc = Some(Proc {
            name: "mariadb".into(),
            child,
        });
    }
}

/// All three servers and a fresh set of names.
pub struct Env {
    pub root: tempfile::TempDir,
    pub broker: Broker,
    pub cql: Cql,
    pub mariadb: Mariadb,
    pub names: Names,
    pub http_port: u16,
    /// More settings for every process (`SECTION__KEY`, value), after the defaults above.
    pub extra_vars: Vec<(String, String)>,
    /// The test stops or disturbs the CQL server, so the driver's ERROR lines are expected;
    /// otherwise any ERROR line from the driver fails the test (see `Drop`).
    pub driver_errors_expected: bool,
    /// The `orderstream` binary the harness starts: this build's, or another build to compare
    /// with (the benchmark's before/after drains).
    pub bin: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Names {
    pub topic: String,
    pub dlq: String,
    pub keyspace: String,
    pub database: String,
    pub group: String,
}

impl Names {
    pub fn fresh() -> Names {
        let tag = format!("{:08x}", rand::random::<u32>());
        Names {
            topic: format!("orders_{tag}"),
            dlq: format!("orders_{tag}.dlq"),
            keyspace: format!("ks_{tag}"),
            database: format!("db_{tag}"),
            group: format!("g_{tag}"),
        }
    }
}

impl Env {
    pub fn start() -> Env {
        let root = tempfile::tempdir().unwrap();
        let broker = Broker::start(root.path());
        Self::with_broker(root, broker)
    }

    /// CQL and MariaDB started here; Kafka at `bootstrap`, run by the caller.
    pub fn with_external_kafka(bootstrap: &str) -> Env {
        Self::with_broker(tempfile::tempdir().unwrap(), Broker::external(bootstrap))
    }

    /// CQL and MariaDB started here, next to `broker`, under `root`.
    pub fn with_broker(root: tempfile::TempDir, broker: Broker) -> Env {
        let cql = Cql::start(root.path());
        let mariadb = Mariadb::start(root.path());
        Env {
            broker,
            cql,
            mariadb,
            names: Names::fresh(),
            http_port: free_port(),
            root,
            extra_vars: Vec::new(),
            driver_errors_expected: false,
            bin: PathBuf::from(BIN),
        }
    }

    /// The environment variables that point an `orderstream` process at these servers.
    pub fn vars(&self, partitions: i32) -> Vec<(String, String)> {
        let n = &self.names;
        [
            ("KAFKA__BROKERS", self.broker.addr()),
            ("KAFKA__TOPIC", n.topic.clone()),
            ("KAFKA__DEAD_LETTER_TOPIC", n.dlq.clone()),
            ("KAFKA__GROUP_ID", n.group.clone()),
            ("KAFKA__PARTITIONS", partitions.to_string()),
            ("KAFKA__SESSION_TIMEOUT_MS", "6000".into()),
            ("KAFKA__MAX_POLL_INTERVAL_MS", "10000".into()),
            (
                "CASSANDRA__CONTACT_POINTS",
                format!("[\"127.0.0.1:{}\"]", self.cql.port),
            ),
            ("CASSANDRA__KEYSPACE", n.keyspace.clone()),
            ("MYSQL__PORT", self.mariadb.port.to_string()),
            ("MYSQL__USER", "root".into()),
            ("MYSQL__DATABASE", n.database.clone()),
            ("HTTP__LISTEN", format!("127.0.0.1:{}", self.http_port)),
            ("SUPERVISION__BACKOFF_MAX_MS", "1000".into()),
            // The shortest the session and rebalance timeouts above allow, plus a margin.
            ("PIPELINE__STUCK_AFTER_MS", STUCK_AFTER_MS.to_string()),
        ]
        .into_iter()
        .chain(self.extra_vars.iter().map(|(k, v)| (k.as_str(), v.clone())))
        .map(|(k, v)| (format!("ORDERSTREAM__{k}"), v))
        .collect()
    }

    /// The same settings as a `Config`, for checks made from the test itself.
    pub fn config(&self, partitions: i32) -> Config {
        Config::load(None, self.vars(partitions), &[]).unwrap()
    }

    /// Runs `orderstream ARGS` to completion; returns (exit code, stderr).
    pub fn run_to_end(
        &self,
        partitions: i32,
        args: &[&str],
        timeout: Duration,
    ) -> (Option<i32>, String) {
        let err = self
            .root
            .path()
            .join(format!("cmd-{}.log", rand::random::<u32>()));
        let mut p = self.spawn_logged(partitions, args, &err, &[]);
        let code = p.wait(timeout);
        (code, std::fs::read_to_string(&err).unwrap_or_default())
    }

    /// Starts `orderstream ARGS` in the background, logging to a file in the test root.
    pub fn spawn(&self, partitions: i32, args: &[&str]) -> Proc {
        self.spawn_with(partitions, args, &[])
    }

    /// `spawn` with extra environment variables (failpoints, say).
    pub fn spawn_with(&self, partitions: i32, args: &[&str], extra: &[(&str, &str)]) -> Proc {
        let log = self
            .root
            .path()
            .join(format!("{}-{}.log", args[0], rand::random::<u32>()));
        self.spawn_logged(partitions, args, &log, extra)
    }

    pub fn spawn_logged(
        &self,
        partitions: i32,
        args: &[&str],
        log: &Path,
        extra: &[(&str, &str)],
    ) -> Proc {
        let file = std::fs::File::create(log).unwrap();
        let mut command = Command::new(&self.bin);
        // The binary's own default log filter, as users run it, unless a test run asks for
        // another with ORDERSTREAM_TEST_LOG.
        match std::env::var("ORDERSTREAM_TEST_LOG") {
            Ok(filter) => command.env("RUST_LOG", filter),
            Err(_) => command.env_remove("RUST_LOG"),
        };
        let child = command
            .args(args)
            .envs(self.vars(partitions))
            .envs(Self::port_of(args))
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start orderstream");
        Proc {
            name: args[0].to_string(),
            child,
        }
    }

    /// Only `run` serves the operations port (`http_port`): other commands started next to it
    /// would find the port taken, which stops them at startup.
    fn port_of(args: &[&str]) -> Vec<(&'static str, &'static str)> {
        if args.contains(&"run") {
            Vec::new()
        } else {
            vec![("ORDERSTREAM__HTTP__LISTEN", "")]
        }
    }

    /// Produces `count` simulated orders as fast as the broker takes them; asserts exit 0.
    pub fn produce(&self, partitions: i32, count: u64) {
        let (code, err) = self.run_to_end(
            partitions,
            &["produce", "--count", &count.to_string(), "--rate", "50000"],
            Duration::from_secs(300),
        );
        assert_eq!(code, Some(0), "produce failed: {err}");
    }

    pub fn migrate(&self, partitions: i32) {
        let (code, err) = self.run_to_end(partitions, &["migrate"], Duration::from_secs(120));
        assert_eq!(code, Some(0), "migrate failed: {err}");
    }

    pub async fn mysql(&self, partitions: i32) -> sqlx::MySqlPool {
        orderstream::stores::connect_mysql(&self.config(partitions).mysql)
            .await
            .unwrap()
    }

    /// A migrated OLAP store: this environment's MariaDB database (migrated by `migrate`), or
    /// a fresh SQLite file under the environment's directory.
    pub async fn olap(&self, partitions: i32, backend: Backend) -> orderstream::stores::OlapStore {
        match backend {
            Backend::Mariadb => orderstream::stores::OlapStore::Mysql(self.mysql(partitions).await),
            Backend::Sqlite => {
                let path = self
                    .root
                    .path()
                    .join(format!("{}.sqlite", self.names.database));
                let pool = orderstream::stores::connect_sqlite(Some(&path))
                    .await
                    .unwrap();
                orderstream::stores::migrate_sqlite(&pool).await.unwrap();
                orderstream::stores::OlapStore::Sqlite(pool)
            }
        }
    }
}

/// The OLAP stores the ledger protocol runs on.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    /// Production's store (MariaDB 10.11 here).
    Mariadb,
    /// The demo's store.
    Sqlite,
}

pub use orderstream::stores::TopicRecord;

/// When a test fails, the tails of every log in its root (servers and orderstream processes)
/// are printed with its output, so that a CI failure can be read without a rerun; with
/// ORDERSTREAM_TEST_KEEP_LOGS set to a directory, the whole logs are copied there too.
impl Drop for Env {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.fail_on_driver_errors();
            return;
        }
        let mut logs: Vec<PathBuf> = Vec::new();
        let mut dirs = vec![self.root.path().to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "log") {
                    logs.push(path);
                }
            }
        }
        logs.sort();
        for log in logs {
            // ORDERSTREAM_TEST_KEEP_LOGS=dir keeps the whole logs (the root is deleted).
            if let Some(keep) = std::env::var_os("ORDERSTREAM_TEST_KEEP_LOGS") {
                let keep = PathBuf::from(keep);
                let _ = std::fs::create_dir_all(&keep);
                if let Some(name) = log.file_name() {
                    let _ = std::fs::copy(&log, keep.join(name));
                }
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(120)..];
            eprintln!(
                "===== {} (last {} lines)\n{}",
                log.display(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

impl Env {
    /// Fails the test on any ERROR line of the CQL driver in a log of this test's processes:
    /// against a healthy CQL server the driver has nothing to complain about.
    fn fail_on_driver_errors(&self) {
        if self.driver_errors_expected {
            return;
        }
        let mut errors = Vec::new();
        for entry in std::fs::read_dir(self.root.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "log") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            errors.extend(
                text.lines()
                    .filter(|l| l.contains(" ERROR ") && l.contains("scylla"))
                    .map(|l| format!("{}: {l}", path.display())),
            );
        }
        assert!(
            errors.is_empty(),
            "the CQL driver logged errors against a healthy server:\n{}",
            errors.join("\n")
        );
    }
}

/// Every record of a topic from the beginning to its current end.
pub fn read_topic(brokers: &str, topic: &str) -> Vec<TopicRecord> {
    orderstream::stores::read_topic(brokers, topic, None, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("reading {topic}: {e}"))
}

/// High watermark of every partition of a topic.
pub fn log_ends(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    orderstream::stores::watermarks(brokers, topic, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("watermarks of {topic}: {e}"))
        .into_iter()
        .map(|(p, (_, high))| (p, high))
        .collect()
}

/// Offsets the group committed to Kafka.
pub fn committed(
    brokers: &str,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let result = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let map = result
        .elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                match e.offset() {
                    Offset::Offset(o) => o,
                    _ => -1,
                },
            )
        })
        .collect();
    drop(result);
    map
}

/// The valid orders of a topic, decoded with the pipeline's own contract.
pub fn valid_orders(records: &[TopicRecord]) -> Vec<Order> {
    records
        .iter()
        .filter_map(|r| orderstream::model::decode(&r.payload, 64 * 1024).ok())
        .collect()
}

/// Polls `check` until it returns true or the timeout passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// How soon progress must resume once a fault ends (a killed process started again at once, as
/// a restart policy does; a server back; a freeze over): the bound every fault test asserts.
pub const RESUME_WITHIN: Duration = Duration::from_secs(90);

/// The ledger of the test's topic: partition → next offset to apply (absent before a claim).
pub async fn ledger(env: &Env, partitions: i32) -> BTreeMap<i32, i64> {
    orderstream::stores::OlapStore::Mysql(env.mysql(partitions).await)
        .read_ledger(&env.names.topic)
        .await
        .unwrap_or_default()
}

/// Waits until every partition's ledger position moves past where it was in `from` (or reaches
/// the log end, when nothing was left there): no partition may sit idle. Returns how long that
/// took, or panics after [`RESUME_WITHIN`] naming `after` and the idle partitions.
pub async fn resumes(
    env: &Env,
    partitions: i32,
    from: &BTreeMap<i32, i64>,
    after: &str,
) -> Duration {
    let started = Instant::now();
    let ends = log_ends(&env.broker.addr(), &env.names.topic);
    let idle = |now: &BTreeMap<i32, i64>| -> Vec<i32> {
        ends.iter()
            .filter(|(p, end)| {
                let at = now.get(p).copied().unwrap_or(0);
                at < **end && at <= from.get(p).copied().unwrap_or(0)
            })
            .map(|(p, _)| *p)
            .collect()
    };
    loop {
        let still_idle = idle(&ledger(env, partitions).await);
        if still_idle.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < RESUME_WITHIN,
            "after {after}, partitions {still_idle:?} made no progress within {RESUME_WITHIN:?} \
             (ledger was {from:?}, log ends {ends:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = started.elapsed();
    println!(
        "FIGURES resume after {after}: every partition moved within {:.1} s (bound {} s)",
        took.as_secs_f64(),
        RESUME_WITHIN.as_secs()
    );
    took
}

/// Orders applied so far: the sum of the ledger's positions (0 before the first claim).
pub async fn applied(pool: &sqlx::MySqlPool, topic: &str) -> i64 {
    orderstream::stores::OlapStore::Mysql(pool.clone())
        .read_ledger(topic)
        .await
        .map(|l| l.values().sum())
        .unwrap_or(0)
}

/// GET `path` on a loopback HTTP server: (status, body); `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Fetches /metrics from a running instance (the body only).
pub fn scrape(port: u16) -> String {
    http_get(port, "/metrics")
        .unwrap_or_else(|| panic!("no answer on port {port}"))
        .1
}

/// A scrape taken once `metric` reaches `at_least` (10 s at most). The ledger commits before the
/// aggregator counts the batch, so a scrape taken the moment the ledger reaches the log end can
/// miss the last batches (seen in CI: 9,829 of 10,000).
pub async fn scrape_when(port: u16, metric: &str, at_least: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = scrape(port);
        if metric_sum(&metrics, metric) >= at_least || Instant::now() > deadline {
            return metrics;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The HTTP status of GET `path` on the operations port; `None` when nothing answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).map(|(status, _)| status)
}

/// Runs `promtool check metrics` on a scrape; panics with its complaints.
pub fn promtool_check(metrics: &str) {
    use std::io::Write;
    let promtool = find_program("promtool", &["/usr/bin"]).unwrap_or_else(|| {
        panic!("promtool is not installed: run `apt-get install prometheus` (or .ci/run)")
    });
    let body = metrics.split_once("\r\n\r\n").map_or(metrics, |(_, b)| b);
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sum of every series of a metric in a scrape.
pub fn metric_sum(metrics: &str, name: &str) -> f64 {
    orderstream::ops::metric_total(metrics, name)
}

/// Waits until the MySQL ledger of the test's topic equals `ends` (partition → log end).
pub async fn ledger_reaches(pool: &sqlx::MySqlPool, topic: &str, ends: &BTreeMap<i32, i64>) {
    eventually(
        Duration::from_secs(300),
        "the ledger to reach the log end",
        || async {
            orderstream::stores::OlapStore::Mysql(pool.clone())
                .read_ledger(topic)
                .await
                .map(|l| &l == ends)
                .unwrap_or(false)
        },
    )
    .await;
}

/// Everything at rest is exact against the topic: Cassandra holds exactly its valid orders,
/// field for field; the aggregates equal the sums recomputed from them; the ledger is at the
/// log end. Returns the valid orders.
pub async fn assert_stores_exact(env: &Env, partitions: i32, expected_valid: usize) -> Vec<Order> {
    let records = read_topic(&env.broker.addr(), &env.names.topic);
    let produced = valid_orders(&records);
    assert_eq!(produced.len(), expected_valid, "valid orders in the topic");
    assert_stores_hold(env, partitions, &produced).await;
    produced
}

/// Runs `orderstream reconcile`; returns (exit code, its report).
pub fn reconcile(env: &Env, partitions: i32) -> (Option<i32>, String) {
    env.run_to_end(partitions, &["reconcile"], Duration::from_secs(300))
}

/// Cassandra holds exactly `want` (field for field), the aggregates equal the sums recomputed
/// from `want`, the ledger is at the log end, and `orderstream reconcile` agrees.
pub async fn assert_stores_hold(env: &Env, partitions: i32, want: &[Order]) {
    let (code, report) = reconcile(env, partitions);
    assert_eq!(code, Some(0), "reconcile: {report}");
    assert!(report.contains("verdict: EXACT"), "{report}");
    let cfg = env.config(partitions);
    let store = orderstream::stores::CassandraStore::connect(&cfg.cassandra)
        .await
        .unwrap();
    let mut stored = store.read_all().await.unwrap();
    stored.sort_by_key(|o| o.order_id);
    let mut want = want.to_vec();
    want.sort_by_key(|o| o.order_id);
    assert_eq!(stored.len(), want.len(), "cassandra row count");
    assert!(
        stored == want,
        "cassandra rows differ from the produced orders"
    );
    let pool = env.mysql(partitions).await;
    let aggregates = orderstream::stores::OlapStore::Mysql(pool.clone())
        .read_aggregates()
        .await
        .unwrap();
    let recomputed = orderstream::model::Deltas::fold(&want);
    assert_eq!(aggregates.daily, recomputed.daily);
    assert_eq!(aggregates.per_minute, recomputed.per_minute);
    assert_eq!(
        orderstream::stores::OlapStore::Mysql(pool.clone())
            .read_ledger(&env.names.topic)
            .await
            .unwrap(),
        log_ends(&env.broker.addr(), &env.names.topic)
    );
}

/// One record of every kind the event contract refuses, with its reason.
pub fn invalid_payloads() -> Vec<(Vec<u8>, &'static str)> {
    let valid = |field: &str, value: &str| {
        let mut fields = BTreeMap::from([
            ("order_id", "77".to_string()),
            ("created_at", "\"2024-05-01T10:20:30Z\"".to_string()),
            ("platform_id", "1".to_string()),
            ("product_id", "2".to_string()),
            ("quantity", "3".to_string()),
            ("customer_id", "4".to_string()),
            ("payment_method", "\"paypal\"".to_string()),
        ]);
        if value.is_empty() {
            fields.remove(field);
        } else {
            fields.insert(field, value.to_string());
        }
        let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", body.join(",")).into_bytes()
    };
    let mut huge = valid("order_id", "78");
    huge.pop();
    huge.extend(std::iter::repeat_n(b' ', 70 * 1024));
    huge.push(b'}');
    vec![
        (b"not json at all".to_vec(), "not_json"),
        (b"[1,2,3]".to_vec(), "not_object"),
        (valid("quantity", ""), "missing_field"),
        (valid("customer_id", "\"4\""), "wrong_type"),
        (valid("order_id", "12.5"), "wrong_type"),
        (valid("quantity", "0"), "out_of_range"),
        (valid("quantity", "10001"), "out_of_range"),
        (valid("order_id", "-3"), "out_of_range"),
        (
            valid("payment_method", "\"bitcoin\""),
            "unknown_payment_method",
        ),
        (
            valid("created_at", "\"1999-12-31T23:59:59Z\""),
            "out_of_range",
        ),
        (valid("created_at", "\"last tuesday\""), "bad_timestamp"),
        (valid("created_at", "\"2024-5-1 1:2:3\""), "bad_timestamp"),
        (
            valid("created_at", "\"2024-05-0110:20:30\""),
            "bad_timestamp",
        ),
        (valid("order_id", "18446744073709551616"), "out_of_range"),
        (
            valid("order_id", "1000000000000000000000000000000"),
            "out_of_range",
        ),
        (valid("quantity", "-0"), "out_of_range"),
        (
            {
                let mut twice = valid("quantity", "3");
                twice.pop();
                twice.extend_from_slice(b",\"quantity\":4}");
                twice
            },
            "duplicate_field",
        ),
        (b"{\"order_id\": \"\xff\xfe\"}".to_vec(), "invalid_utf8"),
        (huge, "too_large"),
    ]
}
