//! Fault-injection points for the chaos tests, compiled only with the `failpoints` feature.
//!
//! `ORDERSTREAM_FAILPOINTS="name=exit@N"` makes the process exit abruptly (as SIGKILL would:
//! no drain, no flush) the N-th time the named point is reached. Release builds leave the
//! feature out, so the points cost nothing there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

fn plan() -> &'static HashMap<String, (AtomicU64, u64)> {
    static PLAN: OnceLock<HashMap<String, (AtomicU64, u64)>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let spec = std::env::var("ORDERSTREAM_FAILPOINTS").unwrap_or_default();
        spec.split(',')
            .filter_map(|item| {
                let (name, action) = item.split_once('=')?;
                let n = action.strip_prefix("exit@")?.parse().ok()?;
                Some((name.trim().to_owned(), (AtomicU64::new(0), n)))
            })
            .collect()
    })
}

/// Marks a point; exits the process when the plan says so.
pub fn hit(name: &str) {
    if let Some((count, at)) = plan().get(name) {
        if count.fetch_add(1, Ordering::SeqCst) + 1 == *at {
            eprintln!("failpoint {name} reached: exiting abruptly");
            std::process::exit(137);
        }
    }
}
