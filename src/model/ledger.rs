//! The rules of the batch transaction (docs/DESIGN.md, rule 4): given the locked ledger rows and
//! a batch, decide what the batch may change.
//!
//! Pure functions over plain data; `stores/olap/protocol.rs` runs them inside the transaction,
//! the same for every OLAP backend.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::aggregate::Deltas;
use crate::model::batch::{Batch, Record};

/// A partition's ledger position after its owner claimed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    pub partition: i32,
    pub epoch: i64,
    pub next_offset: i64,
    /// Whether the ledger row was created by this claim (no position was recorded before).
    pub created: bool,
}

/// What one batch transaction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// Partitions whose ledger advanced, with their new next offset.
    pub committed: Vec<(i32, i64)>,
    /// Valid orders folded into the aggregates.
    pub applied_orders: usize,
    /// Records skipped because the ledger was already past them (replays).
    pub replayed: usize,
    /// Partitions whose records carried an epoch other than the ledger's: this instance lost
    /// them (or re-claimed them since), so those records changed nothing.
    pub fenced: Vec<(i32, i64)>,
    /// Partitions whose records started above the ledger: (partition, epoch) to re-seek.
    pub gaps: Vec<(i32, i64)>,
    /// created_at of every applied order, for the end-to-end latency histogram.
    pub applied_created_at_ms: Vec<i64>,
}

/// A locked ledger row.
#[derive(Debug, Clone, Copy)]
pub struct LedgerRow {
    pub next_offset: i64,
    pub epoch: i64,
}

/// What a batch may change, decided against the locked ledger rows.
pub struct Plan {
    /// Partitions whose ledger advances, with their new next offset.
    pub advance: BTreeMap<i32, i64>,
    /// Indices (in batch order) of the valid orders between the ledger and `advance`.
    pub applicable: Vec<usize>,
    pub report: ApplyReport,
}

/// Drops replays and fenced records, stops each partition at its first hole
/// (docs/DESIGN.md, rule 4).
pub(crate) fn plan(ledger: &BTreeMap<i32, LedgerRow>, batch: &Batch) -> Plan {
    let mut report = ApplyReport::default();
    // Pass 1: per partition, how far this batch continues the ledger without a hole.
    let mut advance: BTreeMap<i32, i64> = BTreeMap::new();
    let mut blocked: BTreeSet<i32> = BTreeSet::new();
    for record in &batch.records {
        let p = record.partition;
        if blocked.contains(&p) {
            continue;
        }
        let Some(row) = ledger.get(&p) else {
            // No claim was ever recorded: we cannot own it.
            blocked.insert(p);
            report.fenced.push((p, record.epoch));
            continue;
        };
        if record.epoch != row.epoch {
            if !report.fenced.iter().any(|(fp, _)| *fp == p) {
                report.fenced.push((p, record.epoch));
            }
            continue;
        }
        let expected = advance.get(&p).copied().unwrap_or(row.next_offset);
        if record.offset < expected {
            report.replayed += 1;
        } else if record.offset == expected {
            advance.insert(p, record.offset + 1);
        } else {
            // A hole between what is applied and what we hold: never skip it. What continued
            // the ledger before the hole is applied; the partition is sought again from there.
            blocked.insert(p);
            report.gaps.push((p, record.epoch));
        }
    }
    // Pass 2: exactly the valid orders between the ledger and the new position. A range is
    // enough: within one claim epoch a partition's offsets only grow (the consumer's gate
    // admits each offset once), so no record of the range appears twice.
    let applicable = batch
        .records
        .iter()
        .enumerate()
        .filter(|(_, record)| {
            match (
                ledger.get(&record.partition),
                advance.get(&record.partition),
            ) {
                (Some(row), Some(next)) => {
                    record.epoch == row.epoch
                        && (row.next_offset..*next).contains(&record.offset)
                        && record.order().is_some()
                }
                _ => false,
            }
        })
        .map(|(i, _)| i)
        .collect();
    Plan {
        advance,
        applicable,
        report,
    }
}

pub fn fold(batch: &Batch, indices: &[usize]) -> Deltas {
    Deltas::fold(
        indices
            .iter()
            .filter_map(|i| batch.records.get(*i).and_then(Record::order)),
    )
}

/// The search for the orders a store refuses for their data (docs/DESIGN.md, rule 10), as a
/// state machine the store drives: it probes the orders [`Bisection::next_probe`] names (writes
/// their deltas and undoes them at once) and tells the outcome to [`Bisection::record`], until
/// there is nothing left to probe.
///
/// A binary search over prefixes of the candidates finds the shortest failing prefix; its last
/// order is the offender (for constraints on cumulative values, it is the order that crossed the
/// line). The offender is set aside and the search repeats until the rest goes through:
/// O(offenders × log n) probes.
#[derive(Debug)]
pub struct Bisection {
    candidates: Vec<usize>,
    rejected: Vec<(usize, String)>,
    /// While narrowing down: the prefix of length `good` passes, the one of length `bad` fails
    /// with `error`. None: the next probe is all remaining candidates.
    narrowing: Option<Narrowing>,
    done: bool,
}

#[derive(Debug)]
struct Narrowing {
    good: usize,
    bad: usize,
    error: String,
}

impl Bisection {
    pub fn new(candidates: Vec<usize>) -> Self {
        Self {
            candidates,
            rejected: Vec::new(),
            narrowing: None,
            done: false,
        }
    }

    /// The record indices to probe next; None when the search is over.
    pub fn next_probe(&self) -> Option<&[usize]> {
        if self.done {
            return None;
        }
        Some(match &self.narrowing {
            None => &self.candidates,
            Some(n) => &self.candidates[..n.good + (n.bad - n.good) / 2],
        })
    }

    /// The outcome of the last probe: `Some(message)` when the store refused it.
    pub fn record(&mut self, refused: Option<String>) {
        self.narrowing = match (self.narrowing.take(), refused) {
            (None, None) => {
                self.done = true;
                None
            }
            (None, Some(error)) => Some(Narrowing {
                good: 0,
                bad: self.candidates.len(),
                error,
            }),
            (Some(n), refused) => {
                let mid = n.good + (n.bad - n.good) / 2;
                match refused {
                    Some(error) => Some(Narrowing {
                        bad: mid,
                        error,
                        ..n
                    }),
                    None => Some(Narrowing { good: mid, ..n }),
                }
            }
        };
        if let Some(n) = &self.narrowing {
            if n.bad == 0 {
                // The store refused a probe of no orders at all: no order is to blame.
                self.narrowing = None;
                self.done = true;
            } else if n.bad - n.good <= 1 {
                let offender = self.candidates.remove(n.bad - 1);
                self.rejected.push((offender, n.error.clone()));
                self.narrowing = None;
            }
        }
    }

    /// The refused orders found: (record index, the store's message).
    pub fn rejected(self) -> Vec<(usize, String)> {
        self.rejected
    }
}

#[cfg(test)]
mod bisection_tests {
    use super::Bisection;

    /// Drives the search against a store that refuses any set holding one of `bad`.
    fn search(candidates: Vec<usize>, bad: &[usize]) -> (Vec<usize>, usize) {
        let mut search = Bisection::new(candidates);
        let mut probes = 0;
        while let Some(indices) = search.next_probe() {
            probes += 1;
            let refused = indices
                .iter()
                .find(|i| bad.contains(i))
                .map(|i| format!("#{i}"));
            search.record(refused);
        }
        let found = search.rejected();
        assert!(found.iter().all(|(i, m)| *m == format!("#{i}")));
        (found.into_iter().map(|(i, _)| i).collect(), probes)
    }

    #[test]
    fn finds_every_refused_order_in_log_probes() {
        assert_eq!(search((0..100).collect(), &[]), (vec![], 1));
        let (found, probes) = search((0..1000).collect(), &[3, 500, 999]);
        assert_eq!(found, vec![3, 500, 999]);
        assert!(probes <= 4 + 3 * 10, "{probes} probes");
        assert_eq!(search(vec![7], &[7]).0, vec![7]);
        assert_eq!(search(vec![], &[]).0, Vec::<usize>::new());
    }

    #[test]
    fn a_store_that_refuses_even_no_orders_blames_none() {
        let mut search = Bisection::new(vec![]);
        assert_eq!(search.next_probe(), Some(&[][..]));
        search.record(Some("refused".into()));
        assert_eq!(search.next_probe(), None);
        assert!(search.rejected().is_empty());
    }
}

#[cfg(test)]
mod plan_tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use super::{plan, LedgerRow};
    use crate::model::batch::{Batch, Content, Record};
    use crate::model::order::{Order, PaymentMethod};

    fn batch(records: &[(i32, i64, i64)]) -> Batch {
        let records: Vec<Record> = records
            .iter()
            .map(|&(partition, offset, epoch)| Record {
                partition,
                offset,
                epoch,
                bytes: 100,
                content: Content::Valid(Order {
                    order_id: offset,
                    created_at_ms: 0,
                    platform_id: 1,
                    product_id: 1,
                    quantity: 1,
                    customer_id: 1,
                    payment_method: PaymentMethod::Paypal,
                }),
            })
            .collect();
        Batch {
            seq: 0,
            bytes: records.len() * 100,
            records,
            opened_at: Instant::now(),
        }
    }

    fn ledger(rows: &[(i32, i64, i64)]) -> BTreeMap<i32, LedgerRow> {
        rows.iter()
            .map(|&(p, next_offset, epoch)| (p, LedgerRow { next_offset, epoch }))
            .collect()
    }

    #[test]
    fn a_hole_stops_its_partition_after_what_continues_the_ledger() {
        // p0: ledger at 15; 14 is a replay, 15..=17 continue it, 20 follows a hole, 21 is past it.
        // p1: continues without a hole.
        let b = batch(&[
            (0, 14, 1),
            (0, 15, 1),
            (1, 5, 1),
            (0, 16, 1),
            (0, 17, 1),
            (0, 20, 1),
            (1, 6, 1),
            (0, 21, 1),
        ]);
        let p = plan(&ledger(&[(0, 15, 1), (1, 5, 1)]), &b);
        assert_eq!(p.advance, BTreeMap::from([(0, 18), (1, 7)]));
        assert_eq!(p.applicable, vec![1, 2, 3, 4, 6]);
        assert_eq!(p.report.gaps, vec![(0, 1)]);
        assert_eq!(p.report.replayed, 1);
        assert!(p.report.fenced.is_empty());
    }

    #[test]
    fn a_hole_at_the_start_applies_nothing_of_its_partition() {
        let b = batch(&[(0, 20, 1), (0, 21, 1)]);
        let p = plan(&ledger(&[(0, 15, 1)]), &b);
        assert!(p.advance.is_empty());
        assert!(p.applicable.is_empty());
        assert_eq!(p.report.gaps, vec![(0, 1)]);
    }

    #[test]
    fn another_epoch_or_an_unclaimed_partition_is_fenced() {
        let b = batch(&[(0, 15, 1), (1, 0, 1)]);
        let p = plan(&ledger(&[(0, 15, 2)]), &b);
        assert!(p.advance.is_empty());
        assert!(p.applicable.is_empty());
        assert_eq!(p.report.fenced, vec![(0, 1), (1, 1)]);
    }
}
