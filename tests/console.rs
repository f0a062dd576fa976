//! The web console in a real browser: Debian's Chromium, headless, driven over chromedriver,
//! against a pipeline on the real servers (tansu, MariaDB, the CQL emulator).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::common::{self, Env, Proc};

const PARTITIONS: i32 = 3;

/// Chromium under chromedriver, with a fresh profile; both killed on drop.
struct Browser {
    client: Client,
    _driver: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let chromium = common::find_program("chromium", &["/usr/bin"]).unwrap_or_else(|| {
            panic!(
                "Chromium is not installed: apt-get install chromium chromium-driver (or .ci/run)"
            )
        });
        let driver = common::find_program("chromedriver", &["/usr/bin"]).unwrap_or_else(|| {
            panic!("chromedriver is not installed: apt-get install chromium-driver (or .ci/run)")
        });
        let port = common::free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Proc {
            name: "chromedriver".into(),
            child,
        };
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let capabilities = capabilities.as_object().unwrap().clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("chromedriver at {port} did not start a session: {e}"),
            }
        };
        Browser {
            client,
            _driver: driver,
            _profile: profile,
        }
    }

    /// Chromium's console log since the last call (chromedriver's `se/log`).
    async fn console_log(&self) -> Vec<Value> {
        let log = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("browser log");
        log.as_array().cloned().unwrap_or_default()
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.expect(script)
    }

    async fn text(&self, id: &str) -> String {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("#{id}: {e}"))
            .text()
            .await
            .unwrap()
    }

    /// Waits (up to `timeout`) until the text of `#id` satisfies `ok`; returns it.
    async fn wait_text(&self, id: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text(id).await;
            if ok(&text) {
                return text;
            }
            assert!(Instant::now() < deadline, "#{id} still shows {text:?}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn show(&self, tab: &str) {
        self.client
            .find(Locator::Css(&format!("button[data-tab=\"{tab}\"]")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }
}

/// chromedriver's command for the browser's console log.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// The number on a card, without grouping ("12,345.60" → 12345.6).
fn number(text: &str) -> f64 {
    text.replace(',', "")
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {text:?}"))
}

async fn sales_in_sql(env: &Env) -> (f64, f64) {
    let pool = env.mysql(PARTITIONS).await;
    sqlx::query_as::<_, (f64, f64)>(
        "SELECT CAST(COALESCE(SUM(total_sales), 0) AS DOUBLE), CAST(COALESCE(SUM(orders), 0) AS DOUBLE) \
         FROM sales_and_profit_today",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
}

/// The page loads with no error and asks nothing of any other host; the stage counters rise
/// while orders flow; the sales equal SQL over the store; a killed MariaDB shows as unreachable
/// and the page recovers by itself once it is back. Saves a screenshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_pipeline_and_the_sales_in_a_real_browser() {
    let _heavy = common::heavy();
    let mut env = Env::start();
    env.driver_errors_expected = false;
    env.migrate(PARTITIONS);
    let _run = env.spawn(PARTITIONS, &["run"]);
    let mut producer = env.spawn(PARTITIONS, &["produce", "--rate", "300", "--count", "3000"]);
    let browser = Browser::start().await;
    let origin = format!("http://127.0.0.1:{}", env.http_port);
    let started = Instant::now();
    loop {
        if browser.client.goto(&format!("{origin}/")).await.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the console did not load"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Live, and the counters rise while orders flow.
    browser
        .wait_text("status", Duration::from_secs(30), |t| t.starts_with("live"))
        .await;
    let consumed = |b: &Browser| {
        let b = b.client.clone();
        async move {
            let el = b
                .find(Locator::Css("[data-stage=\"consumed\"] .stage-total"))
                .await
                .unwrap();
            number(&el.text().await.unwrap())
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let first = loop {
        let n = consumed(&browser).await;
        if n > 0.0 {
            break n;
        }
        assert!(Instant::now() < deadline, "nothing consumed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumed(&browser).await <= first {
        assert!(
            Instant::now() < deadline,
            "the consumed counter stayed at {first}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Once everything is applied, the page's sales equal SQL over the store.
    assert_eq!(producer.wait(Duration::from_secs(120)), Some(0));
    let ends = common::log_ends(&env.broker.addr(), &env.names.topic);
    common::ledger_reaches(&env.mysql(PARTITIONS).await, &env.names.topic, &ends).await;
    let (sales, orders) = sales_in_sql(&env).await;
    assert!(orders > 0.0);
    browser.show("sales").await;
    let shown = browser
        .wait_text("sales-total", Duration::from_secs(15), |t| {
            t.replace(',', "")
                .parse::<f64>()
                .is_ok_and(|v| (v - sales).abs() < 0.005)
        })
        .await;
    assert_eq!(number(&browser.text("orders-total").await), orders);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(
        dir.join("console-sales.png"),
        browser.client.screenshot().await.unwrap(),
    )
    .unwrap();
    browser.show("pipeline").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(
        dir.join("console-pipeline.png"),
        browser.client.screenshot().await.unwrap(),
    )
    .unwrap();

    // MariaDB killed: the page says so, keeps refreshing, and recovers once it is back;
    // meanwhile /metrics and /healthz answer at once.
    env.mariadb.proc.as_mut().unwrap().kill();
    browser.show("sales").await;
    browser
        .wait_text("olap-state", Duration::from_secs(30), |t| {
            t == "unreachable"
        })
        .await;
    assert!(browser.text("status").await.starts_with("live"));
    for path in ["/metrics", "/healthz"] {
        let asked = Instant::now();
        assert_eq!(
            common::http_status(env.http_port, path),
            Some(200),
            "{path}"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{path} took {:?}",
            asked.elapsed()
        );
    }
    env.mariadb.restart();
    browser
        .wait_text("olap-state", Duration::from_secs(60), |t| t == "reachable")
        .await;
    assert_eq!(browser.text("sales-total").await, shown);

    // No error on the page or in Chromium's console, and every request went to the console's
    // own origin.
    let errors = browser.js("return window.consoleErrors").await;
    assert_eq!(errors, json!([]), "errors on the page");
    let severe: Vec<Value> = browser
        .console_log()
        .await
        .into_iter()
        .filter(|entry| entry["level"] != "INFO" && entry["level"] != "DEBUG")
        .collect();
    assert!(severe.is_empty(), "Chromium's console: {severe:?}");
    let resources = browser
        .js("return performance.getEntriesByType('resource').map(e => e.name)")
        .await;
    let resources = resources.as_array().unwrap();
    assert!(!resources.is_empty());
    for url in resources {
        let url = url.as_str().unwrap();
        assert!(url.starts_with(&format!("{origin}/")), "a request to {url}");
    }
    let _ = browser.client.clone().close().await;
}

/// Unknown paths answer 404; the API answers JSON; the page and its assets come from the binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_port_serves_the_console_and_refuses_unknown_paths() {
    let _heavy = common::heavy();
    let env = Env::start();
    env.migrate(PARTITIONS);
    let _run = env.spawn(PARTITIONS, &["run"]);
    let port = env.http_port;
    common::eventually(
        Duration::from_secs(60),
        "the operations port answers",
        || async { common::http_status(port, "/healthz") == Some(200) },
    )
    .await;
    assert_eq!(common::http_status(port, "/nothing-here"), Some(404));
    assert_eq!(common::http_status(port, "/assets/nothing.js"), Some(404));
    let (status, page) = common::http_get(port, "/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("/assets/console.js"), "{page}");
    for asset in ["console.js", "uplot.js", "uplot.css"] {
        assert_eq!(
            common::http_status(port, &format!("/assets/{asset}")),
            Some(200)
        );
    }
    for api in ["/api/pipeline", "/api/sales", "/api/dead-letters"] {
        let (status, body) = common::http_get(port, api).unwrap();
        assert_eq!(status, 200, "{api}");
        let value: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{api}: {e}: {body}"));
        assert!(value.is_object(), "{api}: {body}");
        assert!(!body.contains("SELECT"), "{api} shows SQL: {body}");
    }
}
