//! Fault-injection points for the chaos tests, compiled only with the `failpoints` feature.
//!
//! `ORDERSTREAM_FAILPOINTS` holds comma-separated `name=action` items:
//! - `exit@N`: the process exits abruptly (as SIGKILL would: no drain, no flush) the N-th time
//!   the named point is reached (`hit`);
//! - `panic@N`: the N-th time the point is reached, the code panics there (the panic hook in
//!   `main` must turn that into an exit, never a zombie);
//! - `once@N`: the N-th time the point is reached, `fires` says so (once), and the code there
//!   injects its fault;
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
    Once { count: AtomicU64, at: u64 },
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
                } else if let Some(n) = action.strip_prefix("once@") {
                    Action::Once {
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

/// Whether the named point is reached for the N-th time now (`once@N`).
pub(crate) fn fires(name: &str) -> bool {
    matches!(plan().get(name), Some(Action::Once { count, at })
        if count.fetch_add(1, Ordering::SeqCst) + 1 == *at)
}

/// Raises a fatal error in an idempotent producer, as librdkafka does after the broker lost
/// its sequence numbers ("out of order sequence number"). No test broker produces that at
/// will, so librdkafka's own test hook stands in for it: every send fails from then on.
pub(crate) fn raise_fatal_error(client: &rdkafka::client::Client<impl rdkafka::ClientContext>) {
    let reason = c"failpoint: injected fatal error";
    // SAFETY: the client is alive for the call, and the reason is a NUL-terminated string that
    // librdkafka copies.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            client.native_ptr(),
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            reason.as_ptr(),
        )
    };
    eprintln!("failpoint: fatal error raised in the producer ({err:?})");
}
