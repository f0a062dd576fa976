//! Simulated orders and their ids.
//!
//! Order ids are 63-bit "snowflakes": milliseconds since 2024-01-01 (41 bits), a node id
//! (10 bits) and a per-millisecond sequence (12 bits). Producers lease their node in MySQL
//! (`node_lease`), so two producers at once never share one, and a node's next owner starts
//! above the milliseconds its previous owner reserved, so a restart never repeats an id.

use rand::Rng;

use crate::model::{Order, PaymentMethod};

const ID_EPOCH_MS: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z
const SEQ_BITS: u32 = 12;
const NODE_BITS: u32 = 10;

/// Generates unique order ids.
#[derive(Debug)]
pub struct IdGenerator {
    node: i64,
    last_ms: i64,
    seq: i64,
}

impl IdGenerator {
    pub fn new(node: u16) -> Self {
        Self::with_floor(node, ID_EPOCH_MS - 1)
    }

    /// A generator whose ids use milliseconds (Unix) of at least `floor_ms`.
    pub(crate) fn with_floor(node: u16, floor_ms: i64) -> Self {
        Self {
            node: i64::from(node) & ((1 << NODE_BITS) - 1),
            // `next` moves past last_ms, or stays on it with a higher sequence: start one below.
            last_ms: (floor_ms - ID_EPOCH_MS - 1).max(-1),
            seq: (1 << SEQ_BITS) - 1,
        }
    }

    /// The highest millisecond (Unix) the next id may use, given the clock.
    pub(crate) fn next_ms(&self, now_ms: i64) -> i64 {
        ((now_ms - ID_EPOCH_MS).max(0)).max(self.last_ms + 1) + ID_EPOCH_MS
    }

    /// The next id for the given clock reading. Never repeats within this generator: when the
    /// clock stands still (or steps back) past 4,096 ids, time is borrowed from the future.
    pub fn next(&mut self, now_ms: i64) -> i64 {
        let now = (now_ms - ID_EPOCH_MS).max(0);
        if now > self.last_ms {
            self.last_ms = now;
            self.seq = 0;
        } else {
            self.seq += 1;
            if self.seq >= 1 << SEQ_BITS {
                self.last_ms += 1;
                self.seq = 0;
            }
        }
        (self.last_ms << (NODE_BITS + SEQ_BITS)) | (self.node << SEQ_BITS) | self.seq
    }
}

/// Generates plausible orders: 4 platforms, 20 products, 5,000 customers.
#[derive(Debug)]
pub struct OrderGenerator {
    ids: IdGenerator,
}

impl OrderGenerator {
    pub fn new(node: u16) -> Self {
        Self::with_ids(IdGenerator::new(node))
    }

    pub(crate) fn with_ids(ids: IdGenerator) -> Self {
        Self { ids }
    }

    pub fn ids(&self) -> &IdGenerator {
        &self.ids
    }

    pub fn next(&mut self, now_ms: i64, rng: &mut impl Rng) -> Order {
        let quantity = match rng.random_range(0..100) {
            0..=59 => 1,
            60..=84 => 2,
            85..=94 => 3,
            _ => rng.random_range(4..=10),
        };
        Order {
            order_id: self.ids.next(now_ms),
            created_at_ms: now_ms,
            platform_id: rng.random_range(1..=4),
            product_id: rng.random_range(1..=20),
            quantity,
            customer_id: rng.random_range(1..=5_000),
            payment_method: PaymentMethod::ALL[rng.random_range(0..4)],
        }
    }
}

/// A record that breaks the event contract in one of three ways, taking turns (`n` picks
/// which): not JSON, a quantity out of bounds, an unknown payment method. The demo mixes a few
/// into the stream so the dead-letter path has something to show.
pub(crate) fn invalid_record(order: &Order, n: u64) -> Vec<u8> {
    let valid = String::from_utf8_lossy(&order.to_json()).into_owned();
    match n % 3 {
        0 => valid.as_bytes()[..valid.len() / 2].to_vec(),
        1 => valid
            .replacen(
                &format!("\"quantity\":{}", order.quantity),
                "\"quantity\":0",
                1,
            )
            .into_bytes(),
        _ => valid
            .replacen(order.payment_method.as_str(), "cash", 1)
            .into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn invalid_records_are_refused_with_three_reasons() {
        let mut g = OrderGenerator::new(3);
        let mut rng = rand::rng();
        let mut reasons = HashSet::new();
        for n in 0..30 {
            let o = g.next(chrono::Utc::now().timestamp_millis(), &mut rng);
            let err = crate::model::decode(&invalid_record(&o, n), 65_536).unwrap_err();
            reasons.insert(err.reason.as_str());
        }
        assert_eq!(reasons.len(), 3, "{reasons:?}");
    }

    #[test]
    fn ids_are_unique_and_positive_even_when_the_clock_stalls() {
        let mut g = IdGenerator::new(7);
        let mut seen = HashSet::new();
        let t = 1_800_000_000_000;
        for i in 0..20_000 {
            // The clock stands still, then steps back.
            let now = if i < 10_000 { t } else { t - 5 };
            let id = g.next(now);
            assert!(id > 0);
            assert!(seen.insert(id));
        }
    }

    #[test]
    fn a_restart_later_and_another_node_never_collide() {
        let t = 1_800_000_000_000;
        let mut first = IdGenerator::new(1);
        let a: HashSet<i64> = (0..1000).map(|_| first.next(t)).collect();
        let mut restarted = IdGenerator::new(1);
        let b: HashSet<i64> = (0..1000).map(|_| restarted.next(t + 1)).collect();
        let mut other = IdGenerator::new(2);
        let c: HashSet<i64> = (0..1000).map(|_| other.next(t)).collect();
        assert!(a.is_disjoint(&c));
        // The first generator borrowed time up to t+1 only for ids past 4096 per ms.
        assert!(a.is_disjoint(&b));
    }

    #[test]
    fn a_floor_is_respected_and_next_ms_bounds_the_next_id() {
        let t = 1_800_000_000_000;
        let mut g = IdGenerator::with_floor(5, t + 10_000);
        assert_eq!(g.next_ms(t), t + 10_000);
        let id = g.next(t);
        assert_eq!(
            (id >> 22) + ID_EPOCH_MS,
            t + 10_000,
            "uses the floor, not the clock"
        );
        assert_eq!((id >> 12) & 0x3ff, 5);
        // Once past the floor, the clock rules again; next_ms is an upper bound for the next id.
        for now in [t + 10_000, t + 20_000, t + 20_000] {
            let bound = g.next_ms(now);
            let id = g.next(now);
            assert!((id >> 22) + ID_EPOCH_MS <= bound);
        }
    }

    #[test]
    fn generated_orders_satisfy_the_contract() {
        let mut g = OrderGenerator::new(3);
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let o = g.next(chrono::Utc::now().timestamp_millis(), &mut rng);
            assert_eq!(crate::model::decode(&o.to_json(), 65_536).unwrap(), o);
        }
    }
}
