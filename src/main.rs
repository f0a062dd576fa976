//! The `orderstream` binary: parse the command line, load the configuration, start the runtime,
//! run the command.

use std::path::PathBuf;

use std::io::IsTerminal as _;

use clap::{Parser, Subcommand};
use orderstream::config::Config;

/// The highest `producer.rate_per_sec`: in effect, as fast as the broker accepts.
const MAX_RATE: u32 = 10_000_000;
/// sysexits(3): the command line was used wrongly.
const EXIT_USAGE: i32 = 64;
/// sysexits(3): the configuration is invalid.
const EXIT_CONFIG: i32 = 78;

#[derive(Parser)]
#[command(
    name = "orderstream",
    version,
    about = "Kafka orders into Cassandra and MySQL, exactly once in effect"
)]
struct Cli {
    /// TOML configuration file (layered over the built-in defaults, under the environment).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Override one key, e.g. `--set kafka.brokers=127.0.0.1:9092` (repeatable; wins over all).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    overrides: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole system in one process with nothing installed: in-memory Kafka (librdkafka's
    /// mock cluster), the CQL emulator as Cassandra and SQLite as MySQL. Prints a summary every
    /// few seconds; Ctrl-C stops it and audits both stores (exit 0 exact, 4 differences).
    Demo {
        /// Orders per second (default 2,000).
        #[arg(long)]
        rate: Option<u32>,
        /// Stop by itself after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        seconds: Option<u64>,
        /// Keep the aggregates and the ledger in this SQLite file (default: in memory).
        #[arg(long)]
        sqlite: Option<PathBuf>,
        /// Seconds between two summaries.
        #[arg(long, default_value_t = 5)]
        summary_every_s: u64,
        /// Make every Nth record invalid, to show the dead-letter topic at work (0: none).
        #[arg(long, default_value_t = 500)]
        invalid_every: u64,
    },
    /// Run the pipeline until SIGTERM/SIGINT.
    Run {
        /// Also run the simulated producer in this process, at this many orders per second.
        #[arg(long)]
        produce_rate: Option<u32>,
        /// Migrate before starting (development).
        #[arg(long)]
        migrate: bool,
    },
    /// Publish simulated orders. Serves its operations port on 127.0.0.1:9899 while
    /// `http.listen` is left at its default (so that it runs beside `run` on one host).
    Produce {
        /// Orders per second (default `producer.rate_per_sec`; with `--count` and no rate: as
        /// fast as the broker accepts).
        #[arg(long)]
        rate: Option<u32>,
        /// Stop after this many acknowledged orders (at least 1).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
    },
    /// Create topics, the Cassandra keyspace and table, the MySQL schema and seeds. Idempotent.
    Migrate,
    /// Print the effective configuration, secrets redacted.
    Config,
    /// Exit 0 when the local instance is healthy (for container health checks).
    Healthcheck {
        /// Check `produce`'s operations port (127.0.0.1:9899 while `http.listen` is at its
        /// default) instead of `run`'s.
        #[arg(long)]
        producer: bool,
    },
    /// Audit the deployment: every record below the ledger stored once, aggregates exact.
    /// Exit 0 when exact, 4 when differences were found, 5 when the broker did not deliver
    /// some records within the read time (the report names their partitions and offsets).
    Reconcile {
        /// Longest time to read each topic back; records not delivered by then are named as
        /// unreadable.
        #[arg(long, default_value_t = 120)]
        read_timeout_secs: u64,
    },
    /// Serve the in-memory CQL emulator (tests and demos; not for production).
    CqlEmulator {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:9042")]
        listen: std::net::SocketAddr,
        /// State file: loaded at start, saved on SIGTERM/SIGINT.
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    // The CQL emulator (kassandra) builds an error for every partial frame it reads, and with
    // RUST_BACKTRACE set each one would capture a backtrace: over a quarter of the demo's CPU on
    // a machine that sets it. Library backtraces are off unless asked for by name; panic
    // backtraces still follow RUST_BACKTRACE. Set before any thread exists.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are answers, not errors; everything else is a usage error.
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    init_logging(&cli.command);
    // A panic must never leave a zombie: log it and exit, so the supervisor above us restarts.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("orderstream: panic, exiting");
        std::process::exit(70);
    }));

    if let Command::CqlEmulator { listen, state } = &cli.command {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        runtime.block_on(cql_emulator::serve(
            *listen,
            state.clone(),
            orderstream::ops::shutdown_signal(),
        ))?;
        return Ok(());
    }
    let overrides = overrides(&cli);
    let config = match Config::load(cli.config.as_deref(), std::env::vars(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("orderstream: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.pipeline.runtime_workers(cores))
        .enable_all()
        .build()?;
    let system = actix::System::with_tokio_rt(move || runtime);
    let code = exit_code(system.block_on(execute(cli.command, config)));
    // Exit here rather than return: returning drops the actix system with whatever tasks are
    // still parked in it (pool connections, client sessions), and a drop during runtime
    // teardown can panic (exit 70 after a clean drain). Everything that matters is committed
    // by now.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// Logs go to stderr, as plain text unless a person watches a terminal.
fn init_logging(command: &Command) {
    // The demo's terminal belongs to its summary: only warnings, and none from the embedded
    // stand-ins (the CQL emulator and the driver's complaints about its missing cluster tables).
    // librdkafka's own lines come under the target `librdkafka`, the crate's under `rdkafka`.
    let default_filter = match command {
        Command::Demo { .. } => "warn,scylla=off,kassandra=off,rdkafka=error,librdkafka=error",
        _ => "info,sqlx=warn,scylla=warn,rdkafka=warn,librdkafka=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .init();
}

/// The configuration overrides of the command line, lowest first: the demo's own settings and
/// its `--rate`, then `--set`, then `produce`'s `--rate` and `--count` and `run`'s
/// `--produce-rate`.
fn overrides(cli: &Cli) -> Vec<(String, String)> {
    let mut overrides = Vec::new();
    if let Command::Demo { rate, .. } = &cli.command {
        for (k, v) in orderstream::tools::DEMO_DEFAULTS {
            overrides.push((k.to_owned(), v.to_owned()));
        }
        // Through the configuration, so that `demo --rate 0` is refused as `produce --rate 0`;
        // before `--set`, which wins.
        if let Some(rate) = rate {
            overrides.push(("producer.rate_per_sec".into(), rate.to_string()));
        }
    }
    for (n, item) in cli.overrides.iter().enumerate() {
        let Some((k, v)) = item.split_once('=') else {
            // Not echoed: a mistyped `--set mysql.password:…` must not print the secret.
            eprintln!(
                "orderstream: --set number {} has no '=': expected KEY=VALUE",
                n + 1
            );
            std::process::exit(EXIT_CONFIG);
        };
        overrides.push((k.trim().to_owned(), v.to_owned()));
    }
    if let Command::Produce {
        rate: Some(rate), ..
    }
    | Command::Run {
        produce_rate: Some(rate),
        ..
    } = &cli.command
    {
        // Validated like the configured rate: 0 or more than the producer can pace is refused.
        overrides.push(("producer.rate_per_sec".into(), rate.to_string()));
    }
    if let Command::Produce {
        count: Some(count),
        rate,
    } = &cli.command
    {
        overrides.push(("producer.count".into(), count.to_string()));
        if rate.is_none() {
            // A count and no rate: publish as fast as the broker takes the orders.
            overrides.push(("producer.rate_per_sec".into(), MAX_RATE.to_string()));
        }
    }
    overrides
}

/// Runs one command inside the actix system; returns the process's exit code.
async fn execute(command: Command, config: Config) -> anyhow::Result<i32> {
    use orderstream::{cli, tools};
    match command {
        Command::Run {
            produce_rate,
            migrate,
        } => {
            // The flag's value, validated: `overrides` put it in the configuration.
            let rate = produce_rate.map(|_| config.producer.rate_per_sec);
            cli::run(config, migrate, rate).await
        }
        Command::Produce { .. } => {
            let (rate, count) = (config.producer.rate_per_sec, config.producer.count);
            cli::produce(config, rate, count).await
        }
        Command::Migrate => cli::migrate(&config).await.map(|_| 0),
        Command::Config => {
            print!("{}", config.to_redacted_toml());
            Ok(0)
        }
        Command::Healthcheck { producer } => cli::healthcheck(&config, producer).await,
        Command::Demo {
            rate: _,
            seconds,
            sqlite,
            summary_every_s,
            invalid_every,
        } => {
            let options = tools::DemoOptions {
                rate_per_sec: config.producer.rate_per_sec,
                seconds,
                sqlite,
                summary_every: std::time::Duration::from_secs(summary_every_s.max(1)),
                invalid_every,
                catch_up: std::time::Duration::from_secs(60),
            };
            tools::run_demo(config, options).await
        }
        Command::Reconcile { read_timeout_secs } => {
            let read_time = std::time::Duration::from_secs(read_timeout_secs);
            let report = tools::reconcile(&config, read_time).await?;
            print!("{report}");
            Ok(if !report.unreadable.is_empty() {
                5
            } else if report.is_exact() {
                0
            } else {
                4
            })
        }
        Command::CqlEmulator { .. } => Ok(0),
    }
}

/// The exit code of a command's outcome: its own, 64 for a usage error, 1 for any other error.
fn exit_code(outcome: anyhow::Result<i32>) -> i32 {
    match outcome {
        Ok(code) => code,
        Err(e)
            if e.downcast_ref::<orderstream::config::UsageError>()
                .is_some() =>
        {
            eprintln!("orderstream: {e}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("orderstream: {}", describe(&e));
            1
        }
    }
}

/// The error and its causes, joined with ": ", leaving out a cause the text already holds
/// (many client errors repeat their source in their own message).
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if text.contains(message.as_str()) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}
