//! A real Prometheus on a free loopback port, scraping one pipeline every second with the
//! stack's alert rules loaded.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use super::Proc;

/// A real Prometheus scraping the pipeline every second, with the stack's alert rules.
pub struct Prometheus {
    port: u16,
    _proc: Proc,
}

impl Prometheus {
    pub fn start(root: &Path, target_port: u16) -> Prometheus {
        let bin = super::find_program("prometheus", &["/usr/bin"]).unwrap_or_else(|| {
            panic!("prometheus is not installed: run `apt-get install prometheus` (or .ci/run)")
        });
        let dir = root.join("prometheus");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: orderstream\n    static_configs:\n\
                 \x20     - targets: ['127.0.0.1:{target_port}']\n        labels:\n\
                 \x20         service: pipeline\n",
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("prometheus/alerts.yml")
                    .display()
            ),
        )
        .unwrap();
        let port = super::free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            port,
            _proc: Proc {
                name: "prometheus".into(),
                child,
            },
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while super::http_get(port, "/-/ready").is_none_or(|(_, b)| !b.contains("Ready")) {
            assert!(Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// The number of series an instant query returns.
    pub fn series(&self, expr: &str) -> Result<usize, String> {
        self.query(expr).map(|series| series.len())
    }

    /// The result of an instant query: every series with its labels and value.
    pub fn query(&self, expr: &str) -> Result<Vec<Json>, String> {
        let (_, body) = super::http_get(
            self.port,
            &format!("/api/v1/query?query={}", percent_encode(expr)),
        )
        .ok_or("no answer")?;
        let json: Json = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if json["status"] != "success" {
            return Err(body);
        }
        Ok(json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
