//! Operations: metric names and the events that move them, health, the operations HTTP port,
//! process metrics and signal handling. Used by every layer; uses none of them (metric events
//! take plain values).

pub mod console;
mod health;
mod http;
mod process;
mod signals;
pub mod telemetry;

pub use health::Health;
pub use http::{start, OpsSettings};
pub(crate) use process::sample_process;
pub use signals::{shutdown_signal, Shutdown};
