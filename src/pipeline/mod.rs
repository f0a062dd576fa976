//! The data path: the actors, one file each, their supervisor and the progress watchdog, and
//! the few things the actors share.
//!
//! Data flows KafkaConsumer → Batcher → CassandraWriter (→ DeadLetters) → OlapAggregator, and
//! the aggregator's commit notice flows back to the consumer. `Flow` counts the batches in
//! flight: the consumer pauses its partitions when the count reaches the limit, which bounds
//! every queue behind it (backpressure without blocking the poll loop).

mod batcher;
mod cassandra_writer;
mod consumer;
mod dead_letters;
#[cfg(feature = "failpoints")]
mod failpoints;
mod failure;
mod olap_aggregator;
mod supervisor;
mod watchdog;

use std::sync::atomic::{AtomicUsize, Ordering};

use actix::prelude::*;

pub use dead_letters::DeadLetters;
pub use failure::{Failure, Remedy};
pub use olap_aggregator::{
    AggregatorWiring, BatchCommitted, BatchWritten, NotifyConsumer, OlapAggregator, Rejections,
};
pub(crate) use supervisor::instance_name;
pub use supervisor::{retry_backoff, Drain, Pipeline, Stores};

/// Batches cut but not yet through MySQL.
#[derive(Debug)]
pub struct Flow {
    in_flight: AtomicUsize,
    pub max_in_flight: usize,
    /// Signalled each time a batch is through: the batcher, holding a batch back while the
    /// stages behind it are busy, cuts it then.
    freed: tokio::sync::Notify,
}

impl Flow {
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            max_in_flight,
            freed: tokio::sync::Notify::new(),
        }
    }
    pub fn started(&self) {
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        crate::ops::telemetry::in_flight(n);
    }
    pub fn finished(&self) {
        let n = self
            .in_flight
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        crate::ops::telemetry::in_flight(n);
        self.freed.notify_one();
    }
    /// Completes once a batch has gone through since the last call (at once if one has).
    pub(crate) async fn freed(&self) {
        self.freed.notified().await
    }
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
    pub(crate) fn saturated(&self) -> bool {
        self.in_flight() >= self.max_in_flight
    }
}

/// An actor reports its failure to the supervisor, which restarts the data path or stops the
/// process, as [`Failure::remedy`] says.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub struct ActorFailed {
    pub actor: &'static str,
    pub failure: Failure,
}

/// Stops an actor (data-path teardown).
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Halt;
