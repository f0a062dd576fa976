//! Reads a topic back from the broker: every record of every partition from the log start up to
//! the end offsets given (or the current high watermarks). Used by `reconcile` and the tests.
//!
//! Blocking (a `BaseConsumer` with a manual assignment, no group membership, nothing committed):
//! call it from `spawn_blocking`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::stores::kafka::KafkaError;

/// One record as stored in the topic.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// A client of `brokers` in plain text (the tests' and the demo's brokers).
fn plain(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

/// Log start and end (high watermark) of every partition of a topic.
pub fn watermarks(
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, (i64, i64)>, KafkaError> {
    watermarks_with(&plain(brokers), topic, timeout)
}

/// [`watermarks`] with a client's settings (`kafka::client_config`).
fn watermarks_with(
    client: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, (i64, i64)>, KafkaError> {
    let consumer = super::kafka::probe(client)?;
    let partitions = super::kafka::partitions(&consumer, topic, timeout);
    let partitions = super::kafka::unless_refused(&consumer, partitions)?;
    partitions
        .into_iter()
        .map(|p| Ok((p, consumer.fetch_watermarks(topic, p, timeout)?)))
        .collect()
}

/// Every record below `ends` (partition → end offset, exclusive); `None` reads to the current
/// high watermarks. Fails when `deadline` passes before every record was read.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    ends: Option<&BTreeMap<i32, i64>>,
    deadline: Duration,
) -> Result<Vec<TopicRecord>, KafkaError> {
    let read = read_topic_within(&plain(brokers), topic, ends, deadline)?;
    if !read.unread.is_empty() {
        return Err(KafkaError::ReadTimeout {
            topic: topic.to_owned(),
            missing: read
                .unread
                .into_iter()
                .map(|(p, (_, end))| (p, end))
                .collect(),
        });
    }
    Ok(read.records)
}

/// What a bounded read got: the records, and where each partition that it could not finish
/// stopped.
#[derive(Debug, Default)]
pub struct TopicRead {
    pub records: Vec<TopicRecord>,
    /// partition → (first offset not read, end offset): the broker did not deliver these
    /// records before the deadline.
    pub unread: BTreeMap<i32, (i64, i64)>,
}

/// Like [`read_topic`], but a partition that does not deliver within `deadline` is reported in
/// [`TopicRead::unread`] with the offset where it stopped, instead of failing the whole read: a
/// record the broker acknowledged but will not serve blocks its partition for good.
pub(crate) fn read_topic_within(
    client: &ClientConfig,
    topic: &str,
    ends: Option<&BTreeMap<i32, i64>>,
    deadline: Duration,
) -> Result<TopicRead, KafkaError> {
    let started = Instant::now();
    let marks = watermarks_with(client, topic, deadline)?;
    let consumer: BaseConsumer = client
        .clone()
        .set(
            "group.id",
            format!("orderstream-reader-{}", rand::random::<u32>()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    // partition → (next offset expected, end offset)
    let mut remaining: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for (p, (low, high)) in &marks {
        let end = ends
            .and_then(|e| e.get(p).copied())
            .unwrap_or(*high)
            .min(*high);
        if end > *low {
            remaining.insert(*p, (*low, end));
            tpl.add_partition_offset(topic, *p, Offset::Offset(*low))?;
        }
    }
    consumer.assign(&tpl)?;
    drop(tpl);
    let mut out = Vec::new();
    while !remaining.is_empty() {
        if started.elapsed() > deadline {
            return Ok(TopicRead {
                records: out,
                unread: remaining,
            });
        }
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = msg?;
        let Some((_, end)) = remaining.get(&msg.partition()).copied() else {
            continue;
        };
        if msg.offset() >= end {
            remaining.remove(&msg.partition());
            continue;
        }
        let mut headers = BTreeMap::new();
        if let Some(h) = msg.headers() {
            for header in h.iter() {
                headers.insert(
                    header.key.to_string(),
                    String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        out.push(TopicRecord {
            partition: msg.partition(),
            offset: msg.offset(),
            payload: msg.payload().unwrap_or_default().to_vec(),
            headers,
        });
        if msg.offset() + 1 >= end {
            remaining.remove(&msg.partition());
        } else if let Some(position) = remaining.get_mut(&msg.partition()) {
            position.0 = msg.offset() + 1;
        }
    }
    Ok(TopicRead {
        records: out,
        unread: BTreeMap::new(),
    })
}
