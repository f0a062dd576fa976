//! Operations: metric names and the events that move them, health, the operations HTTP port,
//! process metrics and signal handling. Used by every layer; uses none of them (metric events
//! take plain values).

mod console;
mod health;
mod http;
mod process;
mod signals;
pub(crate) mod telemetry;

pub(crate) use console::{MinuteRow, SalesFuture, SalesRow, SalesSource};
pub use health::Health;
pub use http::{start, OpsSettings};
pub(crate) use process::sample_process;
pub use signals::{shutdown_signal, Shutdown};
pub use telemetry::total as metric_total;
