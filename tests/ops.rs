//! The production stack (docker-compose.yml, prometheus/, grafana/, docker/mysql-init), verified
//! on a machine without Docker:
//!
//! - the compose files parsed and checked: images pinned, health checks and restart policies on
//!   every long-running service, no plaintext secret, loopback-only ports, no pipeline port,
//!   health-gated `depends_on`, a grace period longer than the drain;
//! - `promtool check config`, `check rules` and `test rules` clean;
//! - a real Prometheus scrapes a running pipeline under load, with the stack's alert rules
//!   loaded: every PromQL expression of the pipeline dashboard and of the alert rules returns at
//!   least one series;
//! - the database users come from the stack's own init script; the pipeline runs as its
//!   least-privilege user, and every SQL query of the sales dashboard, Grafana macros expanded
//!   for a fixed range, runs as Grafana's read-only user and returns rows with the columns its
//!   panel needs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use sqlx::{Column, Row, TypeInfo};

use crate::common::prometheus::Prometheus;
use crate::common::{self, Env};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

// ---------------------------------------------------------------------------------------------
// docker compose

fn load_yaml(path: &str) -> Yaml {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    let mut doc: Yaml = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    doc.apply_merge().unwrap();
    untag(&mut doc);
    doc
}

/// Drops compose's `!reset` / `!override` tags, keeping the tagged values.
fn untag(v: &mut Yaml) {
    match v {
        Yaml::Tagged(t) => {
            let mut inner = std::mem::replace(&mut t.value, Yaml::Null);
            untag(&mut inner);
            *v = inner;
        }
        Yaml::Mapping(m) => m.iter_mut().for_each(|(_, v)| untag(v)),
        Yaml::Sequence(s) => s.iter_mut().for_each(untag),
        _ => {}
    }
}

fn str_of(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

/// `${VAR:-default}` → `default`, `${VAR}` / `${VAR:?msg}` → "".
fn default_of(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("unclosed ${") + start;
        let inner = &rest[start + 2..end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Every `${VAR...}` name in a text.
fn variables(text: &str) -> BTreeSet<String> {
    text.match_indices("${")
        .map(|(i, _)| {
            text[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_uppercase();
    ["PASSWORD", "SECRET", "TOKEN", "PWD"]
        .iter()
        .any(|s| k.contains(s))
}

/// Checks shared by the main file and the overrides.
fn check_services(file: &str, doc: &Yaml, errors: &mut Vec<String>) {
    let services = doc["services"].as_mapping().expect("services");
    for (name, svc) in services {
        let name = str_of(name);
        let image = default_of(&str_of(&svc["image"]));
        if !image.is_empty() || !svc["image"].is_null() {
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            if tag.is_empty() || tag == "latest" || !tag.chars().any(|c| c.is_ascii_digit()) {
                errors.push(format!(
                    "{file}: {name}: image `{image}` is not pinned to a version"
                ));
            }
        }
        // A password is a compose secret the service mounts, read from its file; never a
        // value in the environment.
        let mounted: Vec<String> = svc["secrets"]
            .as_sequence()
            .map(|s| s.iter().map(str_of).collect())
            .unwrap_or_default();
        if let Some(env) = svc["environment"].as_mapping() {
            for (k, v) in env {
                let (k, v) = (str_of(k), str_of(v));
                if !is_secret_key(&k) {
                    continue;
                }
                let secret = v.strip_prefix("/run/secrets/").unwrap_or_default();
                if !k.ends_with("_FILE") || secret.is_empty() {
                    errors.push(format!(
                        "{file}: {name}: {k} is not read from a compose secret (`{v}`)"
                    ));
                } else if !mounted.iter().any(|m| m == secret) {
                    errors.push(format!("{file}: {name}: {k} reads {secret}, not mounted"));
                }
            }
        }
        if let Some(ports) = svc["ports"].as_sequence() {
            for p in ports {
                let p = str_of(p);
                if !p.starts_with("127.0.0.1:") {
                    errors.push(format!(
                        "{file}: {name}: port {p} is not bound to 127.0.0.1"
                    ));
                }
            }
        }
        if let Some(volumes) = svc["volumes"].as_sequence() {
            for v in volumes.iter().map(str_of) {
                let source = v.split(':').next().unwrap_or("");
                let named = !source.starts_with('.') && !source.starts_with('/');
                if named && doc["volumes"].get(source).is_none() {
                    errors.push(format!("{file}: {name}: volume {source} is not declared"));
                }
            }
        }
    }
}

#[test]
fn compose_stack_is_production_ready() {
    let doc = load_yaml("docker-compose.yml");
    let mut errors = Vec::new();
    check_services("docker-compose.yml", &doc, &mut errors);
    let services = doc["services"].as_mapping().unwrap();
    let names: BTreeSet<String> = services.keys().map(str_of).collect();
    for wanted in [
        "kafka",
        "cassandra",
        "mysql",
        "prometheus",
        "grafana",
        "migrate",
        "pipeline",
        "producer",
    ] {
        assert!(names.contains(wanted), "no `{wanted}` service");
    }
    let one_shot = ["migrate", "reconcile"];
    for (name, svc) in services {
        let name = str_of(name);
        let restart = str_of(&svc["restart"]);
        if one_shot.contains(&name.as_str()) {
            if restart != "no" {
                errors.push(format!(
                    "{name}: a one-shot job must not restart ({restart})"
                ));
            }
            continue;
        }
        if !["always", "unless-stopped", "on-failure"].contains(&restart.as_str()) {
            errors.push(format!(
                "{name}: long-running without a restart policy (`{restart}`)"
            ));
        }
        let health = &svc["healthcheck"];
        if health["test"].is_null() || health["disable"].as_bool() == Some(true) {
            errors.push(format!("{name}: long-running without a health check"));
        }
        if let Some(deps) = svc["depends_on"].as_mapping() {
            for (dep, how) in deps {
                let condition = str_of(&how["condition"]);
                let wanted = if one_shot.contains(&str_of(dep).as_str()) {
                    "service_completed_successfully"
                } else {
                    "service_healthy"
                };
                if condition != wanted {
                    errors.push(format!(
                        "{name}: depends on {} with `{condition}`, not `{wanted}`",
                        str_of(dep)
                    ));
                }
            }
        }
    }

    let pipeline = &services["pipeline"];
    assert!(
        pipeline["ports"].is_null(),
        "the pipeline publishes no port (it must scale with --scale pipeline=N)"
    );
    assert_eq!(
        str_of(&pipeline["depends_on"]["migrate"]["condition"]),
        "service_completed_successfully"
    );
    let drain_ms: u64 = str_of(&pipeline["environment"]["ORDERSTREAM__PIPELINE__DRAIN_TIMEOUT_MS"])
        .parse()
        .unwrap_or(10_000);
    let grace = str_of(&pipeline["stop_grace_period"]);
    let grace_ms = grace
        .strip_suffix('s')
        .and_then(|s| s.parse::<u64>().ok())
        .expect("stop_grace_period in seconds")
        * 1000;
    assert!(
        grace_ms > drain_ms,
        "stop_grace_period {grace} must exceed the drain timeout ({drain_ms} ms)"
    );
    // The pipeline and the producer run as the least-privilege user; only migrate owns the DDL.
    for svc in ["pipeline", "producer"] {
        assert_eq!(
            str_of(&services[svc]["environment"]["ORDERSTREAM__MYSQL__USER"]),
            "orderstream"
        );
    }
    let kafka = &services["kafka"]["environment"];
    assert!(
        str_of(&kafka["KAFKA_PROCESS_ROLES"]).contains("controller"),
        "Kafka runs in KRaft mode"
    );
    let text = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    assert!(!text.to_lowercase().contains("zookeeper:"), "no ZooKeeper");

    // Prometheus finds every replica by the service's DNS name.
    let prometheus = load_yaml("prometheus/prometheus.yml");
    let sd = &prometheus["scrape_configs"][0]["dns_sd_configs"][0]["names"];
    assert!(
        sd.as_sequence()
            .unwrap()
            .iter()
            .any(|n| str_of(n) == "pipeline"),
        "Prometheus discovers the pipeline replicas"
    );

    // Overrides: parse, name existing services, pin their images, keep secrets in .env.
    let mut all_text = text.clone();
    for file in ["docker-compose.cassandra.yml", "docker-compose.mysql8.yml"] {
        let over = load_yaml(file);
        check_services(file, &over, &mut errors);
        for name in over["services"].as_mapping().unwrap().keys() {
            assert!(
                names.contains(&str_of(name)),
                "{file} overrides unknown {name:?}"
            );
        }
        all_text.push_str(&std::fs::read_to_string(repo(file)).unwrap());
    }

    // Every secret a service mounts is declared, with its value from an .env variable.
    let declared = doc["secrets"].as_mapping().expect("top-level secrets");
    let mut from_env: BTreeSet<String> = BTreeSet::new();
    for (secret, how) in declared {
        let var = str_of(&how["environment"]);
        assert!(
            !var.is_empty(),
            "secret {secret:?} has no `environment` source"
        );
        from_env.insert(var);
    }
    for (name, svc) in services {
        for secret in svc["secrets"].as_sequence().into_iter().flatten() {
            if !declared.contains_key(secret) {
                errors.push(format!(
                    "{}: secret {secret:?} is not declared",
                    str_of(name)
                ));
            }
        }
    }
    let grafana_sources =
        std::fs::read_to_string(repo("grafana/provisioning/datasources/datasources.yml")).unwrap();
    assert!(grafana_sources.contains("$__file{/run/secrets/grafana_db_password}"));

    // Every variable the files need is documented in .env.example; .env itself is ignored.
    let example = std::fs::read_to_string(repo(".env.example")).unwrap();
    for var in variables(&all_text).into_iter().chain(from_env) {
        if !example.contains(&format!("{var}=")) {
            errors.push(format!("{var} is not in .env.example"));
        }
    }
    let ignore = std::fs::read_to_string(repo(".gitignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l.trim() == ".env"),
        ".env is ignored"
    );

    // The scripts that ship with the stack at least parse.
    for (shell, script) in [
        ("bash", "scripts/compose-chaos"),
        ("sh", "docker/mysql-init/10-users.sh"),
    ] {
        let ok = Command::new(shell)
            .arg("-n")
            .arg(repo(script))
            .status()
            .unwrap()
            .success();
        assert!(ok, "{script} does not parse");
    }

    assert!(
        errors.is_empty(),
        "compose problems:\n{}",
        errors.join("\n")
    );
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_a_health_check() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let instructions: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    let stages = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .count();
    assert!(stages >= 2, "multi-stage build ({stages} FROM)");
    let runtime = text.rsplit("\nFROM ").next().unwrap();
    assert!(
        runtime.starts_with("debian:") && runtime.contains("-slim"),
        "slim runtime image"
    );
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "non-root user: {user}"
    );
    assert!(
        runtime.contains("HEALTHCHECK") && runtime.contains("\"orderstream\", \"healthcheck\""),
        "health check through `orderstream healthcheck`"
    );
    assert!(
        !instructions
            .iter()
            .any(|l| l.contains("--features") || l.contains("--all-features")),
        "no fault injection (the failpoints feature) in the image"
    );
    let ignore = std::fs::read_to_string(repo(".dockerignore")).unwrap();
    for entry in ["target/", ".git/", ".env"] {
        assert!(
            ignore.lines().any(|l| l == entry),
            ".dockerignore leaves out {entry}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// promtool

fn promtool(args: &[&str]) {
    let bin = common::find_program("promtool", &["/usr/bin"]).unwrap_or_else(|| {
        panic!("promtool is not installed: run `apt-get install prometheus` (or .ci/run)")
    });
    let out = Command::new(bin)
        .args(args)
        .current_dir(repo("prometheus"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_config_and_the_rules_and_the_rules_fire() {
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);
}

// ---------------------------------------------------------------------------------------------
// dashboards and alerts against real servers

fn dashboard(name: &str) -> Json {
    let path = repo(&format!("grafana/dashboards/{name}"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// (panel title, target) for every target of a dashboard.
fn targets(dash: &Json) -> Vec<(String, Json)> {
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push((panel["title"].as_str().unwrap().to_owned(), t.clone()));
        }
    }
    out
}

/// An alert expression's parts, each without its comparison with a threshold: the series the
/// alert is computed from, which must exist whether or not it fires.
fn alert_parts(expr: &str) -> Vec<String> {
    expr.split(" and ")
        .map(|part| {
            let part = part.trim();
            [" > ", " < ", " == ", " != ", " >= ", " <= "]
                .iter()
                .filter_map(|op| part.rfind(op))
                .max()
                .map_or(part, |i| &part[..i])
                .trim()
                .to_owned()
        })
        .collect()
}

/// Grafana's MySQL macros, expanded as Grafana does for the range [from, to] (Unix seconds).
fn expand_macros(sql: &str, from: i64, to: i64) -> String {
    let mut out = sql.to_owned();
    while let Some(start) = out.find("$__") {
        let name_end = out[start..].find('(').map(|i| i + start).expect("macro (");
        let close = out[name_end..].find(')').map(|i| i + name_end).unwrap();
        let name = &out[start + 3..name_end];
        let args: Vec<&str> = out[name_end + 1..close].split(',').map(str::trim).collect();
        let replacement = match name {
            "timeFilter" => format!(
                "{} BETWEEN FROM_UNIXTIME({from}) AND FROM_UNIXTIME({to})",
                args[0]
            ),
            "timeFrom" => format!("FROM_UNIXTIME({from})"),
            "timeTo" => format!("FROM_UNIXTIME({to})"),
            "timeGroupAlias" => {
                let interval = args[1].trim_matches('\'');
                let seconds: i64 = match interval.split_at(interval.len() - 1) {
                    (n, "s") => n.parse().unwrap(),
                    (n, "m") => n.parse::<i64>().unwrap() * 60,
                    (n, "h") => n.parse::<i64>().unwrap() * 3600,
                    _ => panic!("interval {interval}"),
                };
                format!(
                    "UNIX_TIMESTAMP({}) DIV {seconds} * {seconds} AS \"time\"",
                    args[0]
                )
            }
            other => panic!("macro $__{other} is not expanded by this test"),
        };
        out.replace_range(start..=close, &replacement);
    }
    out
}

fn is_numeric(type_name: &str) -> bool {
    let t = type_name.to_ascii_uppercase();
    [
        "DECIMAL", "BIGINT", "INT", "DOUBLE", "FLOAT", "SMALLINT", "TINYINT",
    ]
    .iter()
    .any(|n| t.starts_with(n))
}

/// A pool on the test's database as another MySQL user.
async fn pool_as(env: &Env, partitions: i32, user: &str, password: &str) -> sqlx::MySqlPool {
    let vars = env
        .vars(partitions)
        .into_iter()
        .chain([
            ("ORDERSTREAM__MYSQL__USER".into(), user.into()),
            ("ORDERSTREAM__MYSQL__PASSWORD".into(), password.into()),
        ])
        .collect::<Vec<_>>();
    let cfg = orderstream::config::Config::load(None, vars, &[]).unwrap();
    orderstream::stores::connect_mysql(&cfg.mysql)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboards_and_alerts_return_data_from_a_real_prometheus_and_mariadb() {
    let _heavy = common::heavy();
    const PARTITIONS: i32 = 3;
    let env = Env::start();
    env.migrate(PARTITIONS);

    // The database users, from the stack's own init script.
    let pipeline_password = env.root.path().join("orderstream_db_password");
    std::fs::write(&pipeline_password, "pipeline-pw").unwrap();
    let out = Command::new("sh")
        .arg(repo("docker/mysql-init/10-users.sh"))
        .env("ORDERSTREAM_DATABASE", &env.names.database)
        // As compose passes it (a secret's file), and as a plain variable.
        .env("ORDERSTREAM_DB_PASSWORD_FILE", &pipeline_password)
        .env("GRAFANA_DB_PASSWORD", "grafana-pw")
        .env("MARIADB_ROOT_PASSWORD", "")
        .env(
            "MYSQL_INIT_CLIENT_ARGS",
            format!("--protocol=tcp -h127.0.0.1 -P{}", env.mariadb.port),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init script: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let prometheus = Prometheus::start(env.root.path(), env.http_port);
    let mut run = env.spawn_with(
        PARTITIONS,
        &["run", "--produce-rate", "500"],
        &[
            ("ORDERSTREAM__MYSQL__USER", "orderstream"),
            ("ORDERSTREAM__MYSQL__PASSWORD", "pipeline-pw"),
        ],
    );
    let root_pool = env.mysql(PARTITIONS).await;
    common::eventually(Duration::from_secs(120), "3,000 orders applied", || {
        let (pool, topic) = (root_pool.clone(), env.names.topic.clone());
        async move { common::applied(&pool, &topic).await >= 3_000 }
    })
    .await;
    // Enough scrapes for every rate window of the dashboards.
    std::thread::sleep(Duration::from_secs(5));

    // Every PromQL expression: the dashboard's (with Grafana's interval variables) and the
    // alerts' (each part without its threshold).
    let mut exprs: Vec<(String, String)> = Vec::new();
    for (title, t) in targets(&dashboard("pipeline.json")) {
        let expr = t["expr"]
            .as_str()
            .unwrap()
            .replace("$__rate_interval", "30s");
        exprs.push((title, expr));
    }
    let rules = load_yaml("prometheus/alerts.yml");
    for rule in rules["groups"][0]["rules"].as_sequence().unwrap() {
        for part in alert_parts(&str_of(&rule["expr"])) {
            exprs.push((format!("alert {}", str_of(&rule["alert"])), part));
        }
    }
    let mut empty = Vec::new();
    for (title, expr) in &exprs {
        match prometheus.series(expr) {
            Ok(n) if n > 0 => {}
            Ok(_) => empty.push(format!("{title}: `{expr}` returned no series")),
            Err(e) => empty.push(format!("{title}: `{expr}` failed: {e}")),
        }
    }
    assert!(
        empty.is_empty(),
        "{} of {} expressions:\n{}",
        empty.len(),
        exprs.len(),
        empty.join("\n")
    );
    common::promtool_check(&common::scrape(env.http_port));

    // The sales dashboard, as Grafana's read-only user, in UTC as its datasource says.
    let grafana = pool_as(&env, PARTITIONS, "grafana", "grafana-pw").await;
    let mut conn = grafana.acquire().await.unwrap();
    sqlx::raw_sql("SET time_zone = '+00:00'")
        .execute(&mut *conn)
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let sales = dashboard("sales.json");
    let panel_types: BTreeMap<String, String> = sales["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["title"].as_str().unwrap().to_owned(),
                p["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut figures = Vec::new();
    for (title, t) in targets(&sales) {
        let sql = expand_macros(t["rawSql"].as_str().unwrap(), now - 6 * 3600, now + 300);
        let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{title}: {e}\n{sql}"));
        assert!(!rows.is_empty(), "{title}: no rows\n{sql}");
        let columns: Vec<(String, String)> = rows[0]
            .columns()
            .iter()
            .map(|c| (c.name().to_owned(), c.type_info().name().to_owned()))
            .collect();
        let numeric = |c: &(String, String)| is_numeric(&c.1);
        let ok = match (t["format"].as_str().unwrap(), panel_types[&title].as_str()) {
            ("time_series", _) => {
                columns[0].0 == "time" && columns[1..].iter().all(|c| c.0 == "metric" || numeric(c))
            }
            ("table", "stat") => columns.len() == 1 && numeric(&columns[0]),
            ("table", "barchart") => {
                !numeric(&columns[0]) && columns.len() > 1 && columns[1..].iter().all(numeric)
            }
            ("table", "table") => columns.len() >= 2,
            other => panic!("{title}: unexpected panel {other:?}"),
        };
        assert!(ok, "{title}: columns {columns:?} do not fit the panel");
        figures.push(format!("{title}: {} rows {columns:?}", rows.len()));
    }
    // Least privilege: Grafana cannot write, the pipeline's user cannot change the schema.
    let write = sqlx::raw_sql("UPDATE platforms SET platform_name = 'x' WHERE platform_id = 1")
        .execute(&mut *conn)
        .await;
    assert!(write.is_err(), "the grafana user must not write");
    let pipeline_pool = pool_as(&env, PARTITIONS, "orderstream", "pipeline-pw").await;
    let ddl = sqlx::raw_sql("CREATE TABLE intruder (a INT)")
        .execute(&pipeline_pool)
        .await;
    assert!(ddl.is_err(), "the pipeline's user must not run DDL");

    assert_eq!(run.terminate(Duration::from_secs(30)), Some(0));
    println!(
        "FIGURES ops: {} PromQL expressions returned series; sales panels:\n  {}",
        exprs.len(),
        figures.join("\n  ")
    );
}
