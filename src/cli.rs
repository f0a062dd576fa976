//! The commands `run`, `produce`, `migrate` and `healthcheck`. `demo` and `reconcile` are in
//! `tools/`; `main.rs` answers `config` and `cql-emulator` itself.
//!
//! Each command is a plain async function over a validated [`Config`]; `main.rs` only parses
//! the command line and starts the runtime.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::{bail, Context as _};
use rdkafka::producer::Producer as _;
use sqlx::MySqlPool;

use crate::config::Config;
use crate::ops::{Health, OpsSettings};
use crate::pipeline::{instance_name, retry_backoff, Drain, Pipeline, Stores};
use crate::stores::{
    check_mysql_migrated, connect_mysql, create_topics, migrate_mysql, partition_count,
    producer_config, with_mysql_migrate_lock, CassandraError, CassandraStore, KafkaError,
    OlapError, OlapStore,
};
use crate::tools::{LeaseKeeper, OrderProducer, ProducerSettings};

/// `migrate`: topics, Cassandra keyspace and table, MySQL schema and seeds. Idempotent; runs
/// under a MySQL named lock so concurrent runs serialize.
pub async fn migrate(cfg: &Config) -> anyhow::Result<()> {
    with_mysql_migrate_lock(&cfg.mysql, || async {
        create_topics(&cfg.kafka).await.context("kafka topics")?;
        crate::stores::migrate_cassandra(&cfg.cassandra)
            .await
            .context("cassandra schema")?;
        migrate_mysql(&cfg.mysql).await.context("mysql schema")?;
        Ok(())
    })
    .await?;
    tracing::info!("migration complete");
    Ok(())
}

/// Retries `attempt` while the dependency is unreachable; stops at once on a permanent error
/// (an unmigrated store, say). A dependency down at startup is waited for, not crash-looped:
/// each attempt that comes back counts as progress for `/healthz`, so a liveness probe does not
/// restart a process that is doing all it can.
async fn wait_for<T, E, F, Fut>(
    cfg: &Config,
    health: &Health,
    what: &str,
    permanent: impl Fn(&E) -> bool,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::fmt::Display + Send + Sync + 'static + std::error::Error,
{
    let mut delay = Duration::from_millis(cfg.supervision.backoff_initial_ms);
    loop {
        let outcome = attempt().await;
        health.progress();
        match outcome {
            Ok(v) => return Ok(v),
            Err(e) if permanent(&e) => return Err(anyhow::Error::new(e).context(what.to_owned())),
            Err(e) => {
                tracing::warn!(dependency = what, error = %e, ?delay, "waiting for dependency");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(cfg.supervision.backoff_max_ms));
            }
        }
    }
}

/// How messages name the MySQL server.
fn mysql_at(cfg: &Config) -> String {
    format!("mysql at {}:{}", cfg.mysql.host, cfg.mysql.port)
}

/// Connects to both stores (MySQL through `pool`) and checks that everything is migrated.
async fn connect_stores(cfg: &Config, health: &Health, pool: &MySqlPool) -> anyhow::Result<Stores> {
    wait_for(
        cfg,
        health,
        &mysql_at(cfg),
        |e: &OlapError| !e.is_transient(),
        || check_mysql_migrated(pool, &cfg.mysql),
    )
    .await?;
    let cassandra = wait_for(
        cfg,
        health,
        &format!("cassandra at {}", cfg.cassandra.contact_points.join(", ")),
        |e: &CassandraError| {
            matches!(e, CassandraError::NotMigrated { .. }) || e.is_configuration()
        },
        || CassandraStore::connect(&cfg.cassandra),
    )
    .await?;
    for topic in [cfg.kafka.topic.clone(), cfg.kafka.dead_letter_topic.clone()] {
        let kcfg = cfg.kafka.clone();
        wait_for(
            cfg,
            health,
            &format!("kafka at {}", cfg.kafka.brokers),
            KafkaError::is_configuration,
            || {
                let kcfg = kcfg.clone();
                let topic = topic.clone();
                async move {
                    let name = topic.clone();
                    tokio::task::spawn_blocking(move || partition_count(&kcfg, &name))
                        .await
                        .unwrap_or_else(|e| Err(KafkaError::MissingTopic(format!("{topic} ({e})"))))
                }
            },
        )
        .await?;
    }
    Ok(Stores {
        cassandra: Arc::new(cassandra),
        olap: OlapStore::Mysql(pool.clone()),
    })
}

/// Leases a producer node (see `node_lease`) and starts the producer on it.
async fn start_producer(
    cfg: &Config,
    pool: MySqlPool,
    rate: u32,
    count: u64,
    done: Option<tokio::sync::oneshot::Sender<u64>>,
    health: Option<Arc<Health>>,
) -> anyhow::Result<(Addr<OrderProducer>, LeaseKeeper)> {
    let name = format!("{}-producer", instance_name());
    let keeper = LeaseKeeper::start(
        pool,
        name.clone(),
        Duration::from_millis(cfg.producer.lease_ttl_ms),
        cfg.producer.instance_id,
        retry_backoff(cfg),
    )
    .await?;
    let producer: rdkafka::producer::FutureProducer =
        producer_config(&cfg.kafka, &name).create()?;
    // Connect before the first order is stamped: librdkafka connects (and, being idempotent,
    // asks for a producer id) lazily, and orders created meanwhile would carry that start-up as
    // latency (over a second with tansu). A broker that is down is no error here: the bounded
    // queue and the retries handle it as at any other time.
    let warm = producer.clone();
    let topic = cfg.kafka.topic.clone();
    let warmed = tokio::task::spawn_blocking(move || {
        warm.client()
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .is_ok()
    })
    .await
    .unwrap_or(false);
    // When the brokers did not answer, find out whether they refuse these settings (a wrong CA,
    // failed SASL authentication): that is no outage to ride out, so say so and stop.
    if !warmed {
        let (kafka, topic) = (cfg.kafka.clone(), cfg.kafka.topic.clone());
        let probed = tokio::task::spawn_blocking(move || partition_count(&kafka, &topic)).await;
        if let Ok(Err(e @ KafkaError::Refused(_))) = probed {
            return Err(anyhow::Error::new(e).context(format!("kafka at {}", cfg.kafka.brokers)));
        }
    }
    let actor = OrderProducer::new(ProducerSettings {
        producer,
        topic: cfg.kafka.topic.clone(),
        rate_per_sec: rate,
        count,
        lease: keeper.window(),
        done,
        health,
    })
    .start();
    Ok((actor, keeper))
}

/// `run`: the pipeline until SIGTERM/SIGINT, then a bounded drain. Exit code 0 after a clean
/// drain.
pub async fn run(
    cfg: Config,
    migrate_first: bool,
    produce_rate: Option<u32>,
) -> anyhow::Result<i32> {
    let mut shutdown = crate::ops::Shutdown::listen();
    let cfg = Arc::new(cfg);
    let health = Arc::new(Health::default());
    health.progress();
    // Lazy: no connection until the first query, so the console can show the store from the
    // start (unreachable until it answers). The console reads the sales over a connection of
    // its own: however many browsers watch, the pipeline's connections stay the pipeline's.
    let pool = connect_mysql(&cfg.mysql).await?;
    let console_pool = connect_mysql(&crate::config::MysqlConfig {
        max_connections: 1,
        ..cfg.mysql.clone()
    })
    .await?;
    crate::ops::start(OpsSettings {
        listen: cfg.http.listen.clone(),
        health: health.clone(),
        sales: Some(Arc::new(OlapStore::Mysql(console_pool))),
        max_in_flight: cfg.pipeline.max_in_flight_batches,
    })
    .await?;
    let starting = async {
        if migrate_first {
            migrate(&cfg).await?;
        }
        connect_stores(&cfg, &health, &pool).await
    };
    let stores = tokio::select! {
        started = starting => started?,
        _ = shutdown.requested() => {
            tracing::info!("shutdown requested while starting: nothing to drain");
            return Ok(0);
        }
    };
    let owner = instance_name();
    tracing::info!(%owner, topic = %cfg.kafka.topic, "pipeline starting");
    let (exit_tx, mut exit_rx) = tokio::sync::mpsc::channel(1);
    let pipeline = Pipeline::new(cfg.clone(), stores, health, owner, exit_tx).start();
    let producer = match produce_rate {
        Some(rate) => Some(start_producer(&cfg, pool, rate, 0, None, None).await?),
        None => None,
    };
    let failed = tokio::select! {
        _ = shutdown.requested() => None,
        code = exit_rx.recv() => code,
    };
    if let Some((p, lease)) = producer {
        let _ = p.send(crate::pipeline::Halt).await;
        lease.stop().await;
    }
    if let Some(code) = failed {
        // The supervisor has already halted the data path and said why.
        return Ok(code);
    }
    tracing::info!("shutdown requested: draining");
    let drained = pipeline.send(Drain).await.unwrap_or(false);
    if drained {
        tracing::info!("drained cleanly");
    } else {
        tracing::warn!(
            "drain timeout reached: in-flight batches abandoned (they replay from the ledger)"
        );
    }
    Ok(0)
}

/// `produce`: the producer alone; with a count, exits 0 once every order is acknowledged.
pub async fn produce(mut cfg: Config, rate: u32, count: u64) -> anyhow::Result<i32> {
    let mut shutdown = crate::ops::Shutdown::listen();
    let health = Arc::new(Health::default());
    health.progress();
    cfg.http.listen = producer_listen(&cfg);
    crate::ops::start(OpsSettings {
        listen: cfg.http.listen.clone(),
        health: health.clone(),
        sales: None,
        max_in_flight: cfg.pipeline.max_in_flight_batches,
    })
    .await?;
    let started = std::time::Instant::now();
    let pool = connect_mysql(&cfg.mysql).await?;
    wait_for(
        &cfg,
        &health,
        &mysql_at(&cfg),
        |e: &OlapError| !e.is_transient(),
        || check_mysql_migrated(&pool, &cfg.mysql),
    )
    .await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (producer, lease) =
        start_producer(&cfg, pool, rate, count, Some(tx), Some(health.clone())).await?;
    // The producer's readiness is its own: it runs, and it probes no store.
    health.set_stores_reachable(true);
    health.set_broker_reachable(true);
    health.set_ready(true);
    tokio::select! {
        acked = rx => {
            let acked = acked.unwrap_or(0);
            tracing::info!(acked, "all orders acknowledged");
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "produced {acked} orders in {seconds:.1} s ({:.0} orders/s)",
                acked as f64 / seconds.max(0.001)
            );
        }
        _ = shutdown.requested() => {
            let _ = producer.send(crate::pipeline::Halt).await;
            tracing::info!("producer stopped");
        }
    }
    lease.stop().await;
    Ok(0)
}

/// Where `produce` serves its operations port: `http.listen`, unless that is left at the
/// default `run` uses, so that both run on one host.
fn producer_listen(cfg: &Config) -> String {
    if cfg.http.listen == crate::config::DEFAULT_LISTEN {
        crate::config::PRODUCER_DEFAULT_LISTEN.into()
    } else {
        cfg.http.listen.clone()
    }
}

/// `healthcheck`: exit 0 when the local instance (`run`'s, or with `producer` `produce`'s)
/// answers /healthz with 200.
pub async fn healthcheck(cfg: &Config, producer: bool) -> anyhow::Result<i32> {
    let listen = if producer {
        producer_listen(cfg)
    } else {
        cfg.http.listen.clone()
    };
    if listen.is_empty() {
        bail!("http.listen is empty: the operations port is disabled");
    }
    let mut addr: SocketAddr = listen.parse()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(5))
        .finish();
    let response = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("GET http://{addr}/healthz: {e}"))?;
    if response.status().is_success() {
        Ok(0)
    } else {
        eprintln!("unhealthy: {}", response.status());
        Ok(1)
    }
}
