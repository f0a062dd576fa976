//! Why an actor of the data path failed, and the one answer to "what now?".
//!
//! Stores answer whether their own errors are worth retrying (`is_transient`), and the actors
//! retry those in place with backoff. What reaches the supervisor is a [`Failure`]; its
//! [`Failure::remedy`] decides, in one exhaustive match, whether the data path restarts or the
//! process stops (docs/DESIGN.md, rule 8).

use crate::stores::{CassandraError, OlapError};

/// What the supervisor does about a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remedy {
    /// Worth retrying where it happened; it reached the supervisor only because the actor gave
    /// up, so the data path restarts (and counts against the restart budget).
    Retry,
    /// Tear the data path down and build it again from the ledger.
    RestartPath,
    /// A broken invariant a restart cannot fix: stop the process with a non-zero code.
    StopProcess,
}

/// The failure of one actor of the data path.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A neighbour's mailbox is closed or it dropped a request: the data path is coming apart.
    #[error("{neighbour} is gone ({reason})")]
    NeighbourGone {
        neighbour: &'static str,
        reason: &'static str,
    },
    /// A task the actor spawned panicked or was cancelled.
    #[error("{task} task ended abnormally: {source}")]
    Task {
        task: &'static str,
        source: tokio::task::JoinError,
    },
    /// A Kafka client could not be created, or the broker did not answer a call the data path
    /// needs.
    #[error("{doing}: {source}")]
    Kafka {
        doing: String,
        source: rdkafka::error::KafkaError,
    },
    /// The OLAP store failed in a way retrying did not fix.
    #[error("{doing}: {source}")]
    Olap { doing: String, source: OlapError },
    /// Cassandra failed in a way retrying did not fix.
    #[error("cassandra: {0}")]
    Cassandra(#[from] CassandraError),
    /// The ledger of a partition is beyond the end of its log: the topic was recreated or
    /// truncated. Continuing would skip or double-count records.
    #[error(
        "ledger of {topic}/{partition} is at offset {ledger} but the log ends at {log_end}: \
         the topic was recreated or truncated; refusing to continue"
    )]
    LedgerAheadOfLog {
        topic: String,
        partition: i32,
        ledger: i64,
        log_end: i64,
    },
    /// The ledger of a partition is below the start of its log: records were deleted
    /// (retention) before they were applied.
    #[error(
        "ledger of {topic}/{partition} is at offset {ledger} but the log starts at {log_start}: \
         records were deleted (retention) before they were applied"
    )]
    LedgerBehindLog {
        topic: String,
        partition: i32,
        ledger: i64,
        log_start: i64,
    },
}

impl Failure {
    /// The one place that decides what a failure means for the process.
    pub(crate) fn remedy(&self) -> Remedy {
        match self {
            Self::Olap { source, .. } if source.is_transient() => Remedy::Retry,
            Self::Kafka { source, .. } if is_retriable(source) => Remedy::Retry,
            Self::Cassandra(e) if !e.is_rejection() => Remedy::Retry,
            Self::NeighbourGone { .. }
            | Self::Task { .. }
            | Self::Kafka { .. }
            | Self::Olap { .. }
            | Self::Cassandra(_) => Remedy::RestartPath,
            Self::LedgerAheadOfLog { .. } | Self::LedgerBehindLog { .. } => Remedy::StopProcess,
        }
    }

    /// A Kafka call that failed while doing `doing`.
    pub fn kafka(doing: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Self::Kafka {
            doing: doing.into(),
            source,
        }
    }

    /// An OLAP store call that failed while doing `doing`.
    pub fn olap(doing: impl Into<String>, source: OlapError) -> Self {
        Self::Olap {
            doing: doing.into(),
            source,
        }
    }

    /// A neighbour that did not take or answer a message.
    pub fn gone(neighbour: &'static str, error: actix::MailboxError) -> Self {
        let reason = match error {
            actix::MailboxError::Closed => "mailbox closed",
            actix::MailboxError::Timeout => "no answer in time",
        };
        Self::NeighbourGone { neighbour, reason }
    }
}

/// A Kafka error that a later attempt may not meet (a timeout, a broker or the network away).
fn is_retriable(error: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::OperationTimedOut
                | Code::RequestTimedOut
                | Code::AllBrokersDown
                | Code::BrokerTransportFailure
                | Code::NotCoordinator
                | Code::CoordinatorNotAvailable
                | Code::LeaderNotAvailable
                | Code::NotLeaderForPartition
                | Code::State
        )
    )
}
