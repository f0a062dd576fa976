//! Fault-injection points for the chaos tests, compiled only with the `failpoints` feature.
//!
//! `ORDERSTREAM_FAILPOINTS` holds comma-separated `name=action` items:
//! - `exit@N`: the process exits abruptly (as SIGKILL would: no drain, no flush) the N-th time
//!   the named point is reached (`hit`);
//! - `panic@N`: the N-th time the point is reached, the code panics there (the panic hook in
//!   `main` must turn that into an exit, never a zombie);
//! - `fail_while:PATH`: the named operation fails while the file PATH exists (`failing`). This
//!   stands in for faults the test servers cannot produce selectively (tansu 0.6 cannot delete
//!   one topic without losing the others, say); the test removes the file to end the fault.
//!
//! Release builds leave the feature out, so the points cost nothing there.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

enum Action {
    ExitAt { count: AtomicU64, at: u64 },
    PanicAt { count: AtomicU64, at: u64 },
    FailWhile(PathBuf),
}

fn plan() -> &'static HashMap<String, Action> {
    static PLAN: OnceLock<HashMap<String, Action>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let spec = std::env::var("ORDERSTREAM_FAILPOINTS").unwrap_or_default();
        spec.split(',')
            .filter_map(|item| {
                let (name, action) = item.split_once('=')?;
                let action = if let Some(n) = action.strip_prefix("exit@") {
                    Action::ExitAt {
                        count: AtomicU64::new(0),
                        at: n.parse().ok()?,
                    }
                } else if let Some(n) = action.strip_prefix("panic@") {
                    Action::PanicAt {
                        count: AtomicU64::new(0),
                        at: n.parse().ok()?,
                    }
                } else {
                    Action::FailWhile(PathBuf::from(action.strip_prefix("fail_while:")?))
                };
                Some((name.trim().to_owned(), action))
            })
            .collect()
    })
}

/// Marks a point; exits or panics when the plan says so.
#[allow(clippy::panic)]
pub fn hit(name: &str) {
    match plan().get(name) {
        Some(Action::ExitAt { count, at }) if count.fetch_add(1, Ordering::SeqCst) + 1 == *at => {
            eprintln!("failpoint {name} reached: exiting abruptly");
            std::process::exit(137);
        }
        Some(Action::PanicAt { count, at }) if count.fetch_add(1, Ordering::SeqCst) + 1 == *at => {
            panic!("failpoint {name} reached: injected panic");
        }
        _ => {}
    }
}

/// Whether the named operation must fail now.
pub(crate) fn failing(name: &str) -> bool {
    matches!(plan().get(name), Some(Action::FailWhile(path)) if path.exists())
}
