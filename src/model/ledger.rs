//! The rules of the batch transaction (docs/DESIGN.md, rule 4): given the locked ledger rows and
//! a batch, decide what the batch may change.
//!
//! Pure functions over plain data; `stores/olap/protocol.rs` runs them inside the transaction,
//! the same for every OLAP backend.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::aggregate::Deltas;
use crate::model::batch::Batch;

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
            // A hole between what is applied and what we hold: never skip, re-seek instead.
            blocked.insert(p);
            advance.remove(&p);
            report.gaps.push((p, record.epoch));
        }
    }
    // Pass 2: exactly the valid orders between the ledger and the new position.
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
    Deltas::fold(indices.iter().filter_map(|i| batch.records[*i].order()))
}

/// Writes the deltas of some of a batch's orders and undoes them at once (inside a savepoint of
/// the transaction that holds the ledger locks).
// Only called on this crate's actor contexts, which need no `Send` futures.
#[allow(async_fn_in_trait)]
pub trait Probe {
    type Error;
    /// `Some(message)` when the store refuses the data of the orders at `indices`.
    async fn probe(&mut self, indices: &[usize]) -> Result<Option<String>, Self::Error>;
}

/// Finds the orders a store refuses for their data (docs/DESIGN.md, rule 10). Returns (record
/// index, the store's message).
///
/// A binary search over prefixes of `candidates` finds the shortest failing prefix; its last
/// order is the offender (for constraints on cumulative values, it is the order that crossed the
/// line). The offender is set aside and the search repeats until the rest goes through:
/// O(offenders × log n) probes, all rolled back.
pub(crate) async fn bisect_rejected<P: Probe>(
    mut candidates: Vec<usize>,
    store: &mut P,
) -> Result<Vec<(usize, String)>, P::Error> {
    let mut rejected = Vec::new();
    while let Some(mut error) = store.probe(&candidates).await? {
        // Invariant: the prefix of length `good` passes, the one of length `bad` fails.
        let (mut good, mut bad) = (0, candidates.len());
        while bad - good > 1 {
            let mid = good + (bad - good) / 2;
            match store.probe(&candidates[..mid]).await? {
                Some(e) => {
                    bad = mid;
                    error = e;
                }
                None => good = mid,
            }
        }
        rejected.push((candidates.remove(bad - 1), error));
    }
    Ok(rejected)
}
