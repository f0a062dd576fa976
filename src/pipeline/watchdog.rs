//! The progress watchdog: lag and progress of every partition of the topic, whoever holds it.
//!
//! Every instance looks at the whole topic, not only at its own assignment: the ledger (the
//! truth about what is applied) against the broker's log end, every few seconds. A partition is
//! *stuck* when records wait below its log end and its ledger row has not moved for
//! `pipeline.stuck_after_ms`. What the instance then does depends on who holds the partition:
//!
//! - one of its own partitions is stuck: it reports itself not ready (a store is down, or a
//!   record cannot be read; restarting would not help);
//! - stuck partitions that it does not hold: nobody may be consuming them (a broker that kept a
//!   dead member in the group, a member that released a partition claimed twice). It leaves the
//!   group and joins again as a new member, which makes the broker hand the partitions out again.
//!   A broker that expires dead members within the session and rebalance timeouts never lets a
//!   partition wait that long, so against it this never fires.
//!
//! This file holds the decisions only (pure, unit-tested); the supervisor reads the ledger and
//! the watermarks and acts on them (`supervisor.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// One partition as read in one round: its ledger row and its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    pub partition: i32,
    /// The ledger's next offset, or the log start when the partition has no ledger row yet.
    pub next: i64,
    /// The log end (high watermark).
    pub end: i64,
    /// The member that last claimed the partition in the ledger ("" before any claim).
    pub owner: String,
}

impl PartitionView {
    /// Records waiting below the log end.
    pub fn lag(&self) -> i64 {
        (self.end - self.next).max(0)
    }
}

/// What the watchdog knows of one partition.
#[derive(Debug, Clone)]
pub struct Progress {
    pub view: PartitionView,
    /// When the ledger last moved, or was last seen at the log end; moved forward by the time
    /// not watched (gaps, store outages).
    pub progressed_at: Instant,
    pub stuck: bool,
}

/// A partition became stuck, or moved again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Stuck {
        view: PartitionView,
        waiting: Duration,
    },
    Moving {
        view: PartitionView,
        stuck_for: Duration,
    },
}

/// What the instance should do about the stuck partitions, given what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Why `/readyz` answers 503; `None` when the watchdog has nothing against readiness.
    pub unready: Option<String>,
    /// Stuck partitions that this instance does not hold: leave the group and join again.
    pub unheld_stuck: Vec<i32>,
}

pub struct Watchdog {
    stuck_after: Duration,
    /// Rounds further apart than this leave a gap: what happened in between was not seen.
    max_gap: Duration,
    last_round: Option<Instant>,
    /// The next round does not count the time since the last one as waiting (see `suspend`).
    suspended: bool,
    partitions: BTreeMap<i32, Progress>,
}

impl Watchdog {
    pub fn new(stuck_after: Duration, max_gap: Duration) -> Self {
        Self {
            stuck_after,
            max_gap,
            last_round: None,
            suspended: false,
            partitions: BTreeMap::new(),
        }
    }

    pub fn stuck_after(&self) -> Duration {
        self.stuck_after
    }

    /// The next round does not count the time since the round before as waiting: an outage of
    /// a store is going on, which stalls every partition and is reported by its own signals.
    pub(crate) fn suspend(&mut self) {
        self.suspended = true;
    }

    /// Takes one round of views (every partition of the topic), read at `now`, and says what
    /// changed.
    #[cfg(test)]
    pub(crate) fn observe(&mut self, now: Instant, views: Vec<PartitionView>) -> Vec<Change> {
        self.observe_read(now, now, views)
    }

    /// Takes one round of views read between `started` and `now`. Only the time between the
    /// last round's end and this one's start can be a gap: a slow read (a partition without a
    /// leader for a while) is still time watched.
    pub(crate) fn observe_read(
        &mut self,
        started: Instant,
        now: Instant,
        views: Vec<PartitionView>,
    ) -> Vec<Change> {
        if let Some(last) = self.last_round {
            let gap = started.saturating_duration_since(last) > self.max_gap;
            if gap || self.suspended {
                // The clocks pause, they do not start afresh: the time since the last round is
                // not counted as waiting, and what a partition had waited before still counts.
                // So a store probe that fails now and then cannot keep a partition nobody
                // consumes from ever being reported.
                let unwatched = now.saturating_duration_since(last);
                for p in self.partitions.values_mut() {
                    p.progressed_at = (p.progressed_at + unwatched).min(now);
                }
            }
        }
        self.suspended = false;
        self.last_round = Some(now);
        let mut changes = Vec::new();
        for view in views {
            let entry = self
                .partitions
                .entry(view.partition)
                .or_insert_with(|| Progress {
                    view: view.clone(),
                    progressed_at: now,
                    stuck: false,
                });
            let since_progress = now.saturating_duration_since(entry.progressed_at);
            if view.next != entry.view.next || view.lag() == 0 {
                entry.progressed_at = now;
            }
            entry.view = view;
            let waiting = now.saturating_duration_since(entry.progressed_at);
            let stuck = entry.view.lag() > 0 && waiting >= self.stuck_after;
            if stuck && !entry.stuck {
                changes.push(Change::Stuck {
                    view: entry.view.clone(),
                    waiting,
                });
            } else if !stuck && entry.stuck {
                changes.push(Change::Moving {
                    view: entry.view.clone(),
                    stuck_for: since_progress,
                });
            }
            entry.stuck = stuck;
        }
        changes
    }

    /// Every partition seen so far.
    pub fn partitions(&self) -> impl Iterator<Item = &Progress> {
        self.partitions.values()
    }

    /// The verdict for an instance that holds `held` (assigned, claimed or being claimed).
    pub fn verdict(&self, held: &BTreeSet<i32>) -> Verdict {
        let stuck: Vec<&Progress> = self.partitions.values().filter(|p| p.stuck).collect();
        let mine: Vec<&&Progress> = stuck
            .iter()
            .filter(|p| held.contains(&p.view.partition))
            .collect();
        let unheld_stuck: Vec<i32> = stuck
            .iter()
            .map(|p| p.view.partition)
            .filter(|p| !held.contains(p))
            .collect();
        let unready = if let Some(first) = mine.first() {
            let v = &first.view;
            Some(format!(
                "partition {} is stuck at offset {} (log end {}, {} waiting){}",
                v.partition,
                v.next,
                v.end,
                v.lag(),
                if mine.len() > 1 {
                    format!(
                        ", and {} more of this instance's partitions",
                        mine.len() - 1
                    )
                } else {
                    String::new()
                }
            ))
        } else if held.is_empty() && !unheld_stuck.is_empty() {
            Some(format!(
                "this instance holds no partition while partitions {unheld_stuck:?} are stuck"
            ))
        } else {
            None
        };
        Verdict {
            unready,
            unheld_stuck,
        }
    }
}

/// How often the instance may leave and rejoin the group for stuck partitions: at most once per
/// interval, the interval doubling while partitions stay stuck (a rejoin that did not help is
/// not repeated at full speed), back to the start once nothing is stuck.
#[derive(Debug)]
pub struct RejoinPolicy {
    first: Duration,
    max: Duration,
    interval: Duration,
    next_allowed: Option<Instant>,
}

impl RejoinPolicy {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            interval: first,
            next_allowed: None,
        }
    }

    /// Whether a rejoin may happen now; if so, it is counted as done.
    pub(crate) fn attempt(&mut self, now: Instant) -> bool {
        if self.next_allowed.is_some_and(|t| now < t) {
            return false;
        }
        self.next_allowed = Some(now + self.interval);
        self.interval = (self.interval * 2).min(self.max);
        true
    }

    /// Nothing is stuck any more.
    pub fn reset(&mut self) {
        self.interval = self.first;
        self.next_allowed = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(partition: i32, next: i64, end: i64) -> PartitionView {
        PartitionView {
            partition,
            next,
            end,
            owner: "a".into(),
        }
    }

    const AFTER: Duration = Duration::from_secs(30);
    const GAP: Duration = Duration::from_secs(10);
    /// For tests that jump in time without gaps mattering.
    const NO_GAP: Duration = Duration::from_secs(3600);

    #[test]
    fn a_partition_is_stuck_once_records_wait_and_the_ledger_stays_put() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(AFTER, NO_GAP);
        assert!(w.observe(t0, vec![view(0, 10, 20)]).is_empty());
        assert!(w
            .observe(t0 + Duration::from_secs(29), vec![view(0, 10, 25)])
            .is_empty());
        let changes = w.observe(t0 + AFTER, vec![view(0, 10, 25)]);
        assert_eq!(
            changes,
            vec![Change::Stuck {
                view: view(0, 10, 25),
                waiting: AFTER
            }]
        );
        // Reported once, not at every round.
        assert!(w
            .observe(t0 + Duration::from_secs(40), vec![view(0, 10, 25)])
            .is_empty());
        let moved = w.observe(t0 + Duration::from_secs(42), vec![view(0, 11, 25)]);
        assert_eq!(
            moved,
            vec![Change::Moving {
                view: view(0, 11, 25),
                stuck_for: Duration::from_secs(42)
            }]
        );
    }

    #[test]
    fn a_partition_that_moves_or_waits_for_nothing_is_never_stuck() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(AFTER, NO_GAP);
        for s in 0..100 {
            let at = t0 + Duration::from_secs(s);
            // Partition 0 advances every round; partition 1 is idle at its log end.
            assert!(w
                .observe(at, vec![view(0, s as i64, s as i64 + 500), view(1, 7, 7)])
                .is_empty());
        }
        // A record arriving on a partition idle for long is not stuck at once.
        let later = t0 + Duration::from_secs(100);
        assert!(w.observe(later, vec![view(1, 7, 8)]).is_empty());
    }

    #[test]
    fn time_not_watched_or_spent_in_an_outage_is_not_waiting() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(AFTER, GAP);
        let round = |w: &mut Watchdog, at: u64| {
            w.observe(t0 + Duration::from_secs(at), vec![view(0, 10, 20)])
        };
        round(&mut w, 0);
        round(&mut w, 8);
        // No round for 40 s (MySQL did not answer): those 40 s are not waiting, the 8 before
        // still are, so the partition is stuck 22 s of watching later, at 70.
        for at in (48..=68).step_by(5) {
            assert!(round(&mut w, at).is_empty(), "at {at}");
        }
        let changes = round(&mut w, 70);
        assert!(matches!(changes[..], [Change::Stuck { .. }]), "{changes:?}");
        // A store outage: the verdict stands, quietly, and the clock does not move.
        for at in (72..=100).step_by(2) {
            w.suspend();
            assert!(round(&mut w, at).is_empty(), "at {at}");
            assert!(w.partitions().all(|p| p.stuck));
        }
        assert!(round(&mut w, 102).is_empty());
        assert!(w.partitions().all(|p| p.stuck));
    }

    #[test]
    fn a_probe_failing_now_and_then_does_not_hide_a_stuck_partition() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(AFTER, GAP);
        let mut stuck_at = None;
        for at in (0..=60).step_by(2) {
            // One round in five sees a store probe that missed its deadline.
            if at % 10 == 4 {
                w.suspend();
            }
            let changes = w.observe(t0 + Duration::from_secs(at), vec![view(0, 10, 20)]);
            if !changes.is_empty() && stuck_at.is_none() {
                stuck_at = Some(at);
            }
        }
        // 30 s of waiting, plus the 2 s of each of the suspended rounds.
        assert_eq!(stuck_at, Some(38));
    }

    #[test]
    fn a_slow_read_is_watched_time_not_a_gap() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(AFTER, GAP);
        let mut last_end = t0;
        let mut stuck_at = None;
        for round in 0..10u64 {
            // Every read takes 12 s (leaderless partitions time out one after another), longer
            // than the gap, and starts 2 s after the last one ended.
            let started = last_end + Duration::from_secs(2);
            let end = started + Duration::from_secs(12);
            let changes = w.observe_read(started, end, vec![view(0, 10, 20)]);
            if !changes.is_empty() && stuck_at.is_none() {
                stuck_at = Some(round);
            }
            last_end = end;
        }
        // Stuck once 30 s have been seen: waiting is 14, 28 and 42 s at rounds 1, 2 and 3.
        assert_eq!(stuck_at, Some(3));
    }

    #[test]
    fn the_verdict_depends_on_who_holds_the_stuck_partitions() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(AFTER, NO_GAP);
        let round = vec![view(0, 5, 9), view(1, 3, 3), view(2, 0, 4)];
        w.observe(t0, round.clone());
        w.observe(t0 + AFTER, round);
        // Holds a stuck partition: not ready, nothing to rejoin for (a restart would not help)
        // unless the other stuck one is not held.
        let v = w.verdict(&BTreeSet::from([0, 1, 2]));
        assert_eq!(v.unheld_stuck, Vec::<i32>::new());
        assert_eq!(
            v.unready.as_deref(),
            Some("partition 0 is stuck at offset 5 (log end 9, 4 waiting), and 1 more of this instance's partitions")
        );
        // Holds only a healthy partition: ready, but the stuck ones need a new assignment.
        let v = w.verdict(&BTreeSet::from([1]));
        assert_eq!(v.unready, None);
        assert_eq!(v.unheld_stuck, vec![0, 2]);
        // Holds nothing while partitions are stuck: not ready, and rejoin.
        let v = w.verdict(&BTreeSet::new());
        assert_eq!(
            v.unready.as_deref(),
            Some("this instance holds no partition while partitions [0, 2] are stuck")
        );
        assert_eq!(v.unheld_stuck, vec![0, 2]);
    }

    #[test]
    fn rejoins_back_off_and_start_over_once_nothing_is_stuck() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut p = RejoinPolicy::new(s(30), s(120));
        assert!(p.attempt(t0));
        assert!(!p.attempt(t0 + s(29)));
        assert!(p.attempt(t0 + s(30))); // next after 60 s
        assert!(!p.attempt(t0 + s(89)));
        assert!(p.attempt(t0 + s(90))); // next after 120 s (the cap)
        assert!(!p.attempt(t0 + s(209)));
        assert!(p.attempt(t0 + s(210)));
        p.reset();
        assert!(p.attempt(t0 + s(211)));
    }
}
