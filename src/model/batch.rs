//! Records and micro-batches, and the rule that cuts a batch.
//!
//! A record keeps its Kafka coordinates (partition, offset) and the owner epoch under which it
//! was read: the MySQL transaction uses them to drop replays, detect gaps and fence zombies. A
//! batch is cut on `max_orders`, `max_bytes` or `max_wait_ms`, whichever comes first, or early,
//! once it is `linger` old, while the stages behind the batcher have room (group commit: an
//! order does not wait for the clock while the stores are idle, and a busy pipeline still cuts
//! full batches).

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
    /// records do not keep their original bytes (that would hold every order in flight twice),
    /// so the dead letter carries the order re-encoded; its coordinates name the original.
    pub fn reject(&mut self, reason: Reason, detail: String) {
        if let Content::Valid(order) = &self.content {
            let payload = order.to_json();
            self.content = Content::Invalid {
                rejection: Rejection::new(reason, detail),
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
    /// Age at which a batch may be cut early, while the next stages have room.
    pub linger: Duration,
    /// The next stages have room while fewer batches than this are in flight; 0: never early.
    pub eager_in_flight: usize,
}

/// Accumulates records and cuts batches.
#[derive(Debug)]
pub struct BatchCutter {
    limits: BatchLimits,
    next_seq: u64,
    open: Option<Batch>,
    /// Records in the batch cut last: the next one starts with room for as many.
    last_len: usize,
}

impl BatchCutter {
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            next_seq: 0,
            open: None,
            last_len: 0,
        }
    }

    /// Adds a record; returns a batch when a size limit is reached.
    ///
    /// A batch starts with room for as many records as the one before it. Up to
    /// `pipeline.max_in_flight_batches` (16 by default) are in flight during a drain, each
    /// holding its records until MySQL has them: grown one record at a time, a batch of 5,000
    /// records would sit in room for 8,192.
    pub fn push(&mut self, record: Record, now: Instant) -> Option<Batch> {
        let seq = self.next_seq;
        let capacity = self.last_len;
        let batch = self.open.get_or_insert_with(|| Batch {
            seq,
            records: Vec::with_capacity(capacity),
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

    /// Cuts the open batch if it may go now, with what cut it: `time` once it has waited
    /// `max_wait`; `demand` once it has waited `linger` while fewer than `eager_in_flight`
    /// batches are in flight.
    pub(crate) fn poll(&mut self, now: Instant, in_flight: usize) -> Option<(Batch, &'static str)> {
        let age = now.duration_since(self.open.as_ref()?.opened_at);
        let trigger = if age >= self.limits.max_wait {
            "time"
        } else if age >= self.limits.linger && in_flight < self.limits.eager_in_flight {
            "demand"
        } else {
            return None;
        };
        self.cut().map(|batch| (batch, trigger))
    }

    /// When to poll the open batch next: once it is `linger` old, then at its deadline. In
    /// between, a batch held back while the next stages are busy ([`Self::waits_for_room`]) is
    /// polled again when a batch in flight is through, not on a clock.
    pub fn next_poll(&self, now: Instant) -> Option<Instant> {
        let b = self.open.as_ref()?;
        let deadline = b.opened_at + self.limits.max_wait;
        let lingered = b.opened_at + self.limits.linger;
        if self.limits.eager_in_flight == 0 || now >= lingered {
            return Some(deadline);
        }
        Some(lingered.min(deadline))
    }

    /// Whether the open batch would be cut now but for the stages behind the batcher being busy.
    pub fn waits_for_room(&self, now: Instant) -> bool {
        self.limits.eager_in_flight > 0
            && self
                .open
                .as_ref()
                .is_some_and(|b| now.duration_since(b.opened_at) >= self.limits.linger)
    }

    /// Cuts whatever is open (shutdown, or a time limit).
    pub fn cut(&mut self) -> Option<Batch> {
        let batch = self.open.take()?;
        self.next_seq += 1;
        self.last_len = batch.records.len();
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
            linger: Duration::from_millis(5),
            eager_in_flight: 0,
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
        // Sized by the batch before it: no room to spare, none grown.
        assert_eq!(b.records.capacity(), 3);
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
        assert!(c.poll(t, 0).is_none());
        c.push(rec(0, 1), t);
        assert_eq!(c.next_poll(t), Some(t + Duration::from_millis(200)));
        assert!(c.poll(t + Duration::from_millis(199), 0).is_none());
        let (b, trigger) = c.poll(t + Duration::from_millis(200), 0).unwrap();
        assert_eq!((b.records.len(), trigger), (1, "time"));
        assert!(c.next_poll(t + Duration::from_millis(200)).is_none());
        assert_eq!(c.open_len(), 0);
    }

    #[test]
    fn cuts_early_only_after_the_linger_and_while_the_next_stages_have_room() {
        let ms = Duration::from_millis;
        let mut c = BatchCutter::new(BatchLimits {
            eager_in_flight: 2,
            ..limits(1000, 1 << 20, 200)
        });
        let t = Instant::now();
        c.push(rec(0, 1), t);
        assert_eq!(c.next_poll(t), Some(t + ms(5)));
        assert!(c.poll(t + ms(4), 0).is_none(), "younger than the linger");
        assert!(!c.waits_for_room(t + ms(4)));
        // Busy: two batches in flight. The batch grows; it waits for room, or its deadline.
        assert!(c.poll(t + ms(5), 2).is_none());
        assert!(c.waits_for_room(t + ms(5)));
        assert_eq!(c.next_poll(t + ms(5)), Some(t + ms(200)));
        c.push(rec(1, 1), t + ms(6));
        // Room again: cut at once, with both records.
        let (b, trigger) = c.poll(t + ms(7), 1).unwrap();
        assert_eq!((b.records.len(), trigger), (2, "demand"));
        // Busy for the whole wait: the deadline still cuts, and is never passed.
        c.push(rec(2, 1), t + ms(10));
        assert_eq!(c.next_poll(t + ms(208)), Some(t + ms(210)));
        assert!(c.poll(t + ms(209), 2).is_none());
        assert_eq!(c.poll(t + ms(210), 2).unwrap().1, "time");
    }
}
