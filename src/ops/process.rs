//! Process metrics (`orderstream_process_*`: resident memory, CPU time, threads, open files),
//! sampled every few seconds by `metrics-process`, and the recorder's upkeep.

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

/// Every two seconds: samples the process metrics and runs the recorder's upkeep. The upkeep
/// folds histogram samples into their buckets; without it every sample is kept until the next
/// scrape, so an instance nobody scrapes would grow by 8 bytes per order, without bound.
pub(crate) async fn sample_process(handle: PrometheusHandle) {
    let collector = metrics_process::Collector::new("orderstream_");
    collector.describe();
    loop {
        handle.run_upkeep();
        collector.collect();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
