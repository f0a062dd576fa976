//! Records and micro-batches, and the rule that cuts a batch.
//!
//! A record keeps its Kafka coordinates (partition, offset) and the owner epoch under which it
//! was read: the MySQL transaction uses them to drop replays, detect gaps and fence zombies. A
//! batch is cut on `max_orders`, `max_bytes` or `max_wait_ms`, whichever comes first.

use std::time::{Duration, Instant};

use crate::model::order::{Order, Reason, Rejection};

/// What a record turned out to be.
#[derive(Debug, Clone)]
pub enum Content {
    Valid(Order),
    /// Refused by the event contract; carries the original payload for the dead letter.
    Invalid {
        rejection: Rejection,
        payload: Vec<u8>,
    },
}

/// One Kafka record of the orders topic, decoded.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    /// Owner epoch of the partition when the record was read.
    pub epoch: i64,
    /// Size of the record value in bytes.
    pub bytes: usize,
    pub content: Content,
}

impl Record {
    pub fn order(&self) -> Option<&Order> {
        match &self.content {
            Content::Valid(order) => Some(order),
            Content::Invalid { .. } => None,
        }
    }

    /// Turns an order a store refused into an invalid record (docs/DESIGN.md, rule 10). Valid
    /// records do not keep their original bytes, so the dead letter carries the order re-encoded.
    pub fn reject(&mut self, reason: Reason, detail: String) {
        if let Content::Valid(order) = &self.content {
            let payload = order.to_json();
            self.content = Content::Invalid {
                rejection: Rejection { reason, detail },
                payload,
            };
        }
    }
}

/// A micro-batch: records of one or more partitions, each partition's records in offset order.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Position in the order batches were cut; MySQL applies them in this order.
    pub seq: u64,
    pub records: Vec<Record>,
    pub bytes: usize,
    /// When the first record of the batch arrived.
    pub opened_at: Instant,
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_orders: usize,
    pub max_bytes: usize,
    pub max_wait: Duration,
}

/// Accumulates records and cuts batches.
#[derive(Debug)]
pub struct BatchCutter {
    limits: BatchLimits,
    next_seq: u64,
    open: Option<Batch>,
}

impl BatchCutter {
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            next_seq: 0,
            open: None,
        }
    }

    /// Adds a record; returns a batch when a size limit is reached.
    pub fn push(&mut self, record: Record, now: Instant) -> Option<Batch> {
        let seq = self.next_seq;
        let batch = self.open.get_or_insert_with(|| Batch {
            seq,
            records: Vec::new(),
            bytes: 0,
            opened_at: now,
        });
        batch.bytes += record.bytes;
        batch.records.push(record);
        if batch.records.len() >= self.limits.max_orders || batch.bytes >= self.limits.max_bytes {
            return self.cut();
        }
        None
    }

    /// Cuts the open batch if it has waited `max_wait`.
    pub(crate) fn poll_time(&mut self, now: Instant) -> Option<Batch> {
        match &self.open {
            Some(b) if now.duration_since(b.opened_at) >= self.limits.max_wait => self.cut(),
            _ => None,
        }
    }

    /// When the open batch must be cut at the latest.
    pub fn deadline(&self) -> Option<Instant> {
        self.open
            .as_ref()
            .map(|b| b.opened_at + self.limits.max_wait)
    }

    /// Cuts whatever is open (shutdown, or a time limit).
    pub fn cut(&mut self) -> Option<Batch> {
        let batch = self.open.take()?;
        self.next_seq += 1;
        Some(batch)
    }

    pub(crate) fn open_len(&self) -> usize {
        self.open.as_ref().map_or(0, |b| b.records.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(offset: i64, bytes: usize) -> Record {
        Record {
            partition: 0,
            offset,
            epoch: 1,
            bytes,
            content: Content::Invalid {
                rejection: Rejection {
                    reason: Reason::NotJson,
                    detail: String::new(),
                },
                payload: vec![],
            },
        }
    }

    fn limits(orders: usize, bytes: usize, wait_ms: u64) -> BatchLimits {
        BatchLimits {
            max_orders: orders,
            max_bytes: bytes,
            max_wait: Duration::from_millis(wait_ms),
        }
    }

    #[test]
    fn cuts_on_count() {
        let mut c = BatchCutter::new(limits(3, 1 << 20, 1000));
        let t = Instant::now();
        assert!(c.push(rec(0, 10), t).is_none());
        assert!(c.push(rec(1, 10), t).is_none());
        let b = c.push(rec(2, 10), t).unwrap();
        assert_eq!((b.seq, b.records.len(), b.bytes), (0, 3, 30));
        let b = (3..6).filter_map(|o| c.push(rec(o, 10), t)).next().unwrap();
        assert_eq!(b.seq, 1);
        assert_eq!(b.records[0].offset, 3);
    }

    #[test]
    fn cuts_on_bytes() {
        let mut c = BatchCutter::new(limits(1000, 100, 1000));
        let t = Instant::now();
        assert!(c.push(rec(0, 60), t).is_none());
        let b = c.push(rec(1, 40), t).unwrap();
        assert_eq!(b.bytes, 100);
    }

    #[test]
    fn cuts_on_time_only_after_the_wait() {
        let mut c = BatchCutter::new(limits(1000, 1 << 20, 200));
        let t = Instant::now();
        assert!(c.poll_time(t).is_none());
        c.push(rec(0, 1), t);
        assert_eq!(c.deadline(), Some(t + Duration::from_millis(200)));
        assert!(c.poll_time(t + Duration::from_millis(199)).is_none());
        let b = c.poll_time(t + Duration::from_millis(200)).unwrap();
        assert_eq!(b.records.len(), 1);
        assert!(c.deadline().is_none());
        assert_eq!(c.open_len(), 0);
    }
}
