//! DeadLetters: publishes invalid records to the dead-letter topic (docs/DESIGN.md, rule 7).
//!
//! A dead letter carries the original payload (truncated past the limit, with its length and
//! hash) and the headers `error`, `error_detail`, `source_topic`, `source_partition` and
//! `source_offset`. The request returns only when the broker acknowledged every record, so a
//! batch's ledger cannot move past an invalid record before its dead letter is stored. While the
//! topic is unreachable the publish is retried with backoff, which holds the batch and, through
//! backpressure, the partition. A producer that hit a fatal error answers with a failure: the
//! data path restarts with a new one.

use std::time::Duration;

use actix::prelude::*;
use backoff::ExponentialBackoff;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use crate::model::{Content, Reason, Record};
use crate::pipeline::{Failure, Halt};

/// One record to dead-letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub reason: Reason,
    pub detail: String,
    pub payload: Vec<u8>,
}

impl DeadLetter {
    /// The dead letter of an invalid record; `None` for a valid order.
    pub fn of(record: &Record) -> Option<DeadLetter> {
        match &record.content {
            Content::Invalid { rejection, payload } => Some(DeadLetter {
                partition: record.partition,
                offset: record.offset,
                reason: rejection.reason,
                detail: rejection.detail.clone(),
                payload: payload.clone(),
            }),
            Content::Valid(_) => None,
        }
    }
}

/// Publish these and answer once all are acknowledged, or with the failure that no retry of
/// this producer can get past (a fatal error of the idempotent producer).
#[derive(Message)]
#[rtype(result = "Result<(), Failure>")]
pub struct PublishDeadLetters(pub Vec<DeadLetter>);

pub struct DeadLetters {
    /// Taken when the actor stops, to be closed off the actors' thread.
    producer: Option<FutureProducer>,
    topic: String,
    source_topic: String,
    max_payload_bytes: usize,
    backoff: ExponentialBackoff,
}

impl DeadLetters {
    pub fn new(
        producer: FutureProducer,
        topic: String,
        source_topic: String,
        max_payload_bytes: usize,
        backoff: ExponentialBackoff,
    ) -> Self {
        Self {
            producer: Some(producer),
            topic,
            source_topic,
            max_payload_bytes,
            backoff,
        }
    }
}

impl Actor for DeadLetters {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(64);
        crate::ops::telemetry::actor_up("dead_letters", true);
    }
    fn stopped(&mut self, _: &mut Self::Context) {
        crate::ops::telemetry::actor_up("dead_letters", false);
        // Closing a producer blocks (purge, flush, joining its threads): not on the actors'
        // thread, which every other actor shares.
        if let Some(producer) = self.producer.take() {
            tokio::task::spawn_blocking(move || drop(producer));
        }
    }
}

impl Handler<Halt> for DeadLetters {
    type Result = ();
    fn handle(&mut self, _: Halt, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// FNV-1a 64: identifies a truncated payload without carrying it whole.
fn payload_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

impl Handler<PublishDeadLetters> for DeadLetters {
    type Result = ResponseActFuture<Self, Result<(), Failure>>;

    fn handle(&mut self, msg: PublishDeadLetters, _: &mut Self::Context) -> Self::Result {
        let Some(producer) = self.producer.clone() else {
            // Stopped: the data path is halting, and the batch replays from the ledger.
            return Box::pin(actix::fut::ready(Err(Failure::NeighbourGone {
                neighbour: "dead_letters",
                reason: "stopping",
            })));
        };
        let topic = self.topic.clone();
        let source_topic = self.source_topic.clone();
        let limit = self.max_payload_bytes;
        let backoff = self.backoff.clone();
        let publish_all = async move {
            let sends = msg.0.into_iter().map(|letter| {
                let producer = producer.clone();
                let topic = topic.clone();
                let source_topic = source_topic.clone();
                let backoff = backoff.clone();
                async move {
                    // The pipeline's backoff has no deadline: this ends once the letter is in
                    // the topic, and the batch waits for it (its ledger must not pass an
                    // unpublished letter). Only a published letter is counted. A producer that
                    // hit a fatal error refuses every send from then on: that is the data
                    // path's to restart, with a new producer.
                    backoff::future::retry(backoff, || async {
                        publish(&producer, &topic, &source_topic, &letter, limit)
                            .await
                            .map_err(|e| {
                                if producer.client().fatal_error().is_some() {
                                    return backoff::Error::permanent(e);
                                }
                                tracing::warn!(error = %e, "dead-letter publish failed, retrying");
                                backoff::Error::transient(e)
                            })
                    })
                    .await
                    .map_err(|e| Failure::kafka("publishing a dead letter", e))?;
                    crate::ops::telemetry::dead_letter(
                        letter.reason.as_str(),
                        letter.partition,
                        letter.offset,
                    );
                    Ok::<(), Failure>(())
                }
            });
            futures::future::try_join_all(sends).await.map(|_| ())
        };
        // Run in the actor's context, not detached: when the data path halts, its publishes
        // still retrying stop with it (the replay publishes them again) instead of living on
        // with their producer.
        Box::pin(publish_all.into_actor(self))
    }
}

async fn publish(
    producer: &FutureProducer,
    topic: &str,
    source_topic: &str,
    letter: &DeadLetter,
    limit: usize,
) -> Result<(), rdkafka::error::KafkaError> {
    #[cfg(feature = "failpoints")]
    if crate::pipeline::failpoints::fires("dead_letter_fatal") {
        crate::pipeline::failpoints::raise_fatal_error(producer.client());
    }
    #[cfg(feature = "failpoints")]
    if crate::pipeline::failpoints::failing("dead_letter_publish") {
        return Err(rdkafka::error::KafkaError::MessageProduction(
            rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
        ));
    }
    let partition = letter.partition.to_string();
    let offset = letter.offset.to_string();
    let length = letter.payload.len().to_string();
    let hash = format!("{:016x}", payload_hash(&letter.payload));
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: "error",
            value: Some(letter.reason.as_str()),
        })
        .insert(Header {
            key: "error_detail",
            value: Some(letter.detail.as_str()),
        })
        .insert(Header {
            key: "source_topic",
            value: Some(source_topic),
        })
        .insert(Header {
            key: "source_partition",
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: "source_offset",
            value: Some(offset.as_str()),
        });
    let payload = if letter.payload.len() > limit {
        headers = headers
            .insert(Header {
                key: "original_length",
                value: Some(length.as_str()),
            })
            .insert(Header {
                key: "original_fnv1a64",
                value: Some(hash.as_str()),
            });
        &letter.payload[..limit]
    } else {
        &letter.payload[..]
    };
    let key = format!("{partition}:{offset}");
    let record = FutureRecord::to(topic)
        .key(&key)
        .payload(payload)
        .headers(headers);
    producer
        .send(record, Timeout::After(Duration::from_secs(30)))
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}
