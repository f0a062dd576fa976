//! What `/healthz` and `/readyz` answer, shared between the data path and the HTTP port.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Health shared between the actors and the HTTP port.
#[derive(Debug, Default)]
pub struct Health {
    /// Unix ms of the last sign of progress (a poll, a commit); `/healthz` fails when stale.
    pub last_progress_ms: AtomicI64,
    /// The data path runs: the group is joined and every assigned partition is claimed.
    pub ready: AtomicBool,
    /// Both stores answered their last probe.
    pub stores_reachable: AtomicBool,
    /// The broker answered the watchdog's last read of the log ends.
    pub broker_reachable: AtomicBool,
    /// Why the progress watchdog holds readiness back (see `watchdog.rs`).
    stuck: Mutex<Option<String>>,
    /// The partitions this instance's consumer holds (assigned and claimed, or being claimed).
    held: Mutex<BTreeSet<i32>>,
    /// The data path's last failure, for the console.
    last_failure: Mutex<Option<LastFailure>>,
}

/// A failure of the data path as the console shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastFailure {
    pub unix_ms: i64,
    pub actor: String,
    pub error: String,
}

pub(super) fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: a panic elsewhere cannot leave it half-written.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Health {
    pub fn progress(&self) {
        self.last_progress_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }
    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
    pub(crate) fn set_stores_reachable(&self, reachable: bool) {
        self.stores_reachable.store(reachable, Ordering::Relaxed);
    }
    pub(crate) fn set_broker_reachable(&self, reachable: bool) {
        self.broker_reachable.store(reachable, Ordering::Relaxed);
    }
    pub(crate) fn set_stuck(&self, reason: Option<String>) {
        *locked(&self.stuck) = reason;
    }
    pub(crate) fn set_held(&self, partitions: impl IntoIterator<Item = i32>) {
        *locked(&self.held) = partitions.into_iter().collect();
    }
    pub fn set_last_failure(&self, actor: &str, error: &dyn std::fmt::Display) {
        *locked(&self.last_failure) = Some(LastFailure {
            unix_ms: chrono::Utc::now().timestamp_millis(),
            actor: actor.to_owned(),
            error: error.to_string(),
        });
    }
    pub fn last_failure(&self) -> Option<LastFailure> {
        locked(&self.last_failure).clone()
    }
    pub fn held(&self) -> BTreeSet<i32> {
        locked(&self.held).clone()
    }
    /// What `/readyz` answers: the data path runs, the broker and both stores answer and no
    /// partition this instance should serve is stuck; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.ready.load(Ordering::Relaxed) {
            return Err("the consumer is joining the group or claiming its partitions".into());
        }
        if !self.stores_reachable.load(Ordering::Relaxed) {
            return Err("a store does not answer (see orderstream_dependency_up)".into());
        }
        // Without this, a broker gone for longer than the session timeout would leave the
        // consumer with no partitions, nothing stuck that it holds, and readiness at 200.
        if !self.broker_reachable.load(Ordering::Relaxed) {
            return Err("the broker does not answer (see orderstream_dependency_up)".into());
        }
        match locked(&self.stuck).as_ref() {
            Some(reason) => Err(reason.clone()),
            None => Ok(()),
        }
    }
    pub(super) fn alive(&self, stale_after: Duration) -> bool {
        let last = self.last_progress_ms.load(Ordering::Relaxed);
        chrono::Utc::now().timestamp_millis() - last <= stale_after.as_millis() as i64
    }
}
