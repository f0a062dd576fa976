//! Process metrics: resident memory and CPU time, sampled every few seconds.

use std::time::Duration;

use metrics::{counter, gauge};
use metrics_exporter_prometheus::PrometheusHandle;

use super::telemetry::{PROCESS_CPU, PROCESS_MEMORY};

/// Every few seconds: samples resident memory and CPU time from /proc (Linux only; elsewhere
/// the series stay absent), and runs the recorder's upkeep. The upkeep folds histogram samples
/// into their buckets; without it every sample is kept until the next scrape, so an instance
/// nobody scrapes would grow by 8 bytes per order, without bound.
pub(crate) async fn sample_process(handle: PrometheusHandle) {
    loop {
        handle.run_upkeep();
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
            if let Some(pages) = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
            {
                gauge!(PROCESS_MEMORY).set(pages * 4096.0);
            }
        }
        if let Some(seconds) = cpu_seconds("self") {
            counter!(PROCESS_CPU).absolute(seconds as u64);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// CPU time (user + system, seconds) a process has used, from `/proc/<pid>/stat`; `pid` may be
/// `self`. None off Linux or when the process is gone. (The benchmark uses it for the servers.)
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): utime is the 14th field
    // overall, stime the 15th, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    Some(ticks as f64 / 100.0)
}
