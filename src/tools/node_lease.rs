//! Node leases: two producers at once never share the node part of order ids.
//!
//! An order id is (milliseconds, node, sequence) (see `simulation`). A producer leases a node
//! in MySQL's `producer_leases` table (1,024 rows, one per node, seeded by `migrate`) and
//! renews the lease every third of its time to live:
//! - acquiring takes the lowest node whose lease has expired, in one transaction that locks the
//!   row and re-checks the expiry, so two producers can never take the same node;
//! - the producer stops issuing ids when its lease may have expired (measured on its own
//!   monotonic clock from before the renewal was sent, so never later than the server's
//!   expiry): a frozen producer cannot wake up and collide with the node's next owner;
//! - each renewal also reserves the milliseconds the producer may use (`reserved_until_ms`),
//!   and the next owner of the node starts above that reservation. This keeps ids unique even
//!   when the two hosts' clocks disagree.
//!
//! A producer killed with SIGKILL leaves its lease to expire; its restart takes another node.

use std::time::{Duration, Instant};

use sqlx::{MySqlPool, Row};

use crate::stores::OlapError;

/// Nodes in an order id (10 bits).
const NODES: u16 = 1024;

/// Errors of the lease protocol.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Mysql(#[from] OlapError),
    #[error("all {NODES} producer nodes are leased: too many producers, or stale leases not yet expired")]
    NoFreeNode,
    #[error("producer node {0} is leased by another producer (producer.instance_id)")]
    NodeTaken(u16),
    #[error("the lease of producer node {0} was lost (renewal came too late) and taken over")]
    Lost(u16),
}

impl From<sqlx::Error> for LeaseError {
    fn from(e: sqlx::Error) -> Self {
        Self::Mysql(e.into())
    }
}

/// A held node lease.
#[derive(Debug)]
pub struct NodeLease {
    pool: MySqlPool,
    owner: String,
    ttl: Duration,
    pub node: u16,
    /// Ids of this node must use milliseconds (Unix) above this: the previous owner's reservation.
    pub floor_ms: i64,
    /// Ids may use milliseconds up to this (Unix); raised by each renewal.
    pub reserved_until_ms: i64,
    /// After this instant the lease may have expired on the server: issue no ids.
    pub valid_until: Instant,
}

impl NodeLease {
    /// Leases a node: `wanted` if given (fails when it is taken), else the lowest free one.
    pub async fn acquire(
        pool: &MySqlPool,
        owner: &str,
        ttl: Duration,
        wanted: Option<u16>,
    ) -> Result<NodeLease, LeaseError> {
        let sent_at = Instant::now();
        let mut tx = pool.begin().await?;
        let row = match wanted {
            Some(node) => sqlx::query(
                "SELECT node_id, reserved_until_ms FROM producer_leases \
                 WHERE node_id = ? AND expires_at < UTC_TIMESTAMP(3) FOR UPDATE",
            )
            .bind(node)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(LeaseError::NodeTaken(node))?,
            None => sqlx::query(
                "SELECT node_id, reserved_until_ms FROM producer_leases \
                 WHERE expires_at < UTC_TIMESTAMP(3) ORDER BY node_id LIMIT 1 FOR UPDATE",
            )
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(LeaseError::NoFreeNode)?,
        };
        let node: u16 = row.try_get(0)?;
        let previous: i64 = row.try_get(1)?;
        let reserve = reservation(previous, ttl);
        // Re-check the expiry under the row lock: a concurrent acquirer that won the row first
        // leaves this update with nothing to do.
        let taken = sqlx::query(
            "UPDATE producer_leases SET owner = ?, \
             expires_at = UTC_TIMESTAMP(3) + INTERVAL ? MICROSECOND, reserved_until_ms = ? \
             WHERE node_id = ? AND expires_at < UTC_TIMESTAMP(3)",
        )
        .bind(owner)
        .bind(ttl.as_micros() as i64)
        .bind(reserve)
        .bind(node)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if taken != 1 {
            tx.rollback().await?;
            return Err(match wanted {
                Some(node) => LeaseError::NodeTaken(node),
                None => LeaseError::NoFreeNode,
            });
        }
        tx.commit().await?;
        tracing::info!(node, owner, "producer node leased");
        Ok(NodeLease {
            pool: pool.clone(),
            owner: owner.to_owned(),
            ttl,
            node,
            floor_ms: previous + 1,
            reserved_until_ms: reserve,
            valid_until: sent_at + ttl,
        })
    }

    /// Extends the lease and the reservation; `Lost` when another producer holds the node now.
    pub async fn renew(&mut self, last_used_ms: i64) -> Result<(), LeaseError> {
        let sent_at = Instant::now();
        let reserve = reservation(last_used_ms, self.ttl);
        let renewed = sqlx::query(
            "UPDATE producer_leases SET expires_at = UTC_TIMESTAMP(3) + INTERVAL ? MICROSECOND, \
             reserved_until_ms = GREATEST(reserved_until_ms, ?) \
             WHERE node_id = ? AND owner = ? AND expires_at >= UTC_TIMESTAMP(3)",
        )
        .bind(self.ttl.as_micros() as i64)
        .bind(reserve)
        .bind(self.node)
        .bind(&self.owner)
        .execute(&self.pool)
        .await
        .map_err(OlapError::from)?
        .rows_affected();
        if renewed != 1 {
            return Err(LeaseError::Lost(self.node));
        }
        self.reserved_until_ms = self.reserved_until_ms.max(reserve);
        self.valid_until = sent_at + self.ttl;
        Ok(())
    }

    /// Gives the node back at once (clean shutdown); the reservation stays for the next owner.
    pub async fn release(&self) -> Result<(), LeaseError> {
        sqlx::query(
            "UPDATE producer_leases SET expires_at = UTC_TIMESTAMP(3) - INTERVAL 1 SECOND \
             WHERE node_id = ? AND owner = ?",
        )
        .bind(self.node)
        .bind(&self.owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How often to renew.
    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

/// The milliseconds a holder may use: two lease times past now (or past what it already used),
/// so renewals at a third of the lease time keep the reservation ahead of the clock.
fn reservation(used_ms: i64, ttl: Duration) -> i64 {
    chrono::Utc::now().timestamp_millis().max(used_ms) + 2 * ms(ttl)
}

/// What the producer may use right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub node: u16,
    pub floor_ms: i64,
    pub reserved_until_ms: i64,
    pub valid_until: Instant,
}

impl Grant {
    fn of(lease: &NodeLease) -> Self {
        Self {
            node: lease.node,
            floor_ms: lease.floor_ms,
            reserved_until_ms: lease.reserved_until_ms,
            valid_until: lease.valid_until,
        }
    }

    /// Whether an id with this millisecond may be issued now.
    pub fn allows(&self, id_ms: i64) -> bool {
        Instant::now() < self.valid_until && id_ms <= self.reserved_until_ms
    }
}

/// Shared between the lease keeper and the producer: the current grant, and the highest
/// millisecond the producer has used (so renewals reserve past it).
#[derive(Debug, Default)]
pub struct LeaseWindow {
    grant: std::sync::Mutex<Option<Grant>>,
    last_used_ms: std::sync::atomic::AtomicI64,
}

impl LeaseWindow {
    /// A grant that never runs out, for the only producer a topic can ever have: the demo's
    /// in-memory topic lives and dies with its process, so there is no one to collide with and
    /// no lease table to ask.
    pub(crate) fn exclusive(node: u16) -> std::sync::Arc<Self> {
        let window = Self::default();
        window.set(Some(Grant {
            node,
            floor_ms: chrono::Utc::now().timestamp_millis(),
            reserved_until_ms: i64::MAX,
            // A century: far enough to mean "never", near enough not to overflow an Instant.
            valid_until: Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600),
        }));
        std::sync::Arc::new(window)
    }

    pub fn current(&self) -> Option<Grant> {
        *self.grant.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn set(&self, grant: Option<Grant>) {
        *self.grant.lock().unwrap_or_else(|e| e.into_inner()) = grant;
    }
    pub fn used(&self, ms: i64) {
        self.last_used_ms
            .fetch_max(ms, std::sync::atomic::Ordering::AcqRel);
    }
    fn last_used(&self) -> i64 {
        self.last_used_ms.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Keeps a lease renewed in the background; `stop` releases it.
pub struct LeaseKeeper {
    window: std::sync::Arc<LeaseWindow>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// Acquires a lease (waiting while MySQL is unreachable) and starts renewing it. When the
    /// lease is lost, the keeper withdraws the grant and leases another node.
    pub async fn start(
        pool: MySqlPool,
        owner: String,
        ttl: Duration,
        wanted: Option<u16>,
        backoff: backoff::ExponentialBackoff,
    ) -> Result<LeaseKeeper, LeaseError> {
        let lease = acquire_with_retry(&pool, &owner, ttl, wanted, backoff.clone()).await?;
        let window = std::sync::Arc::new(LeaseWindow::default());
        window.set(Some(Grant::of(&lease)));
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let shared = window.clone();
        let task = tokio::spawn(async move {
            let mut lease = lease;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(lease.renew_every()) => {}
                }
                match lease.renew(shared.last_used()).await {
                    Ok(()) => shared.set(Some(Grant::of(&lease))),
                    Err(LeaseError::Lost(node)) => {
                        tracing::warn!(node, "producer node lease lost; leasing another node");
                        shared.set(None);
                        match acquire_with_retry(&pool, &owner, ttl, wanted, backoff.clone()).await
                        {
                            Ok(next) => {
                                lease = next;
                                shared.set(Some(Grant::of(&lease)));
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "no producer node can be leased");
                                break;
                            }
                        }
                    }
                    // The grant runs out on its own if this lasts: the producer pauses.
                    Err(e) => tracing::warn!(error = %e, "producer lease renewal failed, retrying"),
                }
            }
            shared.set(None);
            if let Err(e) = lease.release().await {
                tracing::warn!(error = %e, "producer lease not released; it expires on its own");
            }
        });
        Ok(LeaseKeeper { window, stop, task })
    }

    pub fn window(&self) -> std::sync::Arc<LeaseWindow> {
        self.window.clone()
    }

    /// Stops renewing and gives the node back.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn acquire_with_retry(
    pool: &MySqlPool,
    owner: &str,
    ttl: Duration,
    wanted: Option<u16>,
    backoff: backoff::ExponentialBackoff,
) -> Result<NodeLease, LeaseError> {
    backoff::future::retry(backoff, || async {
        NodeLease::acquire(pool, owner, ttl, wanted)
            .await
            .map_err(|e| match &e {
                LeaseError::Mysql(m) if m.is_transient() => {
                    tracing::warn!(error = %e, "producer lease: mysql unavailable, retrying");
                    backoff::Error::transient(e)
                }
                _ => backoff::Error::permanent(e),
            })
    })
    .await
}
