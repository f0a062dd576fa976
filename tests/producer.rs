//! Order ids stay unique across producers: node leases in MySQL (see src/tools/node_lease.rs), a
//! producer killed with SIGKILL and restarted, and producers running side by side.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use orderstream::tools::{LeaseError, NodeLease};

use crate::common::{self, Env};

/// The node part of an order id.
fn node_of(order_id: i64) -> i64 {
    (order_id >> 12) & 0x3ff
}

#[tokio::test(flavor = "multi_thread")]
async fn leases_are_exclusive_expire_and_hand_over_above_the_reservation() {
    let _heavy = common::heavy();
    let env = Env::start();
    env.migrate(1);
    let pool = env.mysql(1).await;
    let ttl = Duration::from_secs(1);

    // Side by side: distinct nodes, the lowest free first.
    let (a, b) = tokio::join!(
        NodeLease::acquire(&pool, "a", ttl, None),
        NodeLease::acquire(&pool, "b", ttl, None)
    );
    let (mut a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(BTreeSet::from([a.node, b.node]), BTreeSet::from([0, 1]));
    assert!(matches!(
        NodeLease::acquire(&pool, "c", ttl, Some(a.node)).await,
        Err(LeaseError::NodeTaken(n)) if n == a.node
    ));

    // A renewal extends the lease and the reservation.
    let before = a.reserved_until_ms;
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.renew(before).await.unwrap();
    assert!(a.reserved_until_ms > before);

    // `a` stops renewing (frozen, say): after its time to live the node goes to `c`, whose ids
    // start above everything `a` could have used, and `a`'s late renewal is refused.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert!(std::time::Instant::now() > a.valid_until, "a paused itself");
    let c = NodeLease::acquire(&pool, "c", ttl, Some(a.node))
        .await
        .unwrap();
    assert_eq!(c.node, a.node);
    assert_eq!(c.floor_ms, a.reserved_until_ms + 1);
    assert!(matches!(a.renew(0).await, Err(LeaseError::Lost(n)) if n == a.node));

    // A released node is free at once; its reservation carries over.
    b.release().await.unwrap();
    let d = NodeLease::acquire(&pool, "d", ttl, None).await.unwrap();
    assert_eq!(d.node, b.node);
    assert_eq!(d.floor_ms, b.reserved_until_ms + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_and_restarted_producers_never_repeat_an_order_id() {
    let _heavy = common::heavy();
    const PARTITIONS: i32 = 3;
    let env = Env::start();
    env.migrate(PARTITIONS);

    let mut first = env.spawn(
        PARTITIONS,
        &["produce", "--count", "20000", "--rate", "4000"],
    );
    let mut second = env.spawn(
        PARTITIONS,
        &["produce", "--count", "8000", "--rate", "4000"],
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill();
    // Restarted while the killed one's lease is still live: it takes a third node.
    let (code, err) = env.run_to_end(
        PARTITIONS,
        &["produce", "--count", "8000", "--rate", "8000"],
        Duration::from_secs(120),
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(second.wait(Duration::from_secs(120)), Some(0));

    let records = common::read_topic(&env.broker.addr(), &env.names.topic);
    let orders = common::valid_orders(&records);
    assert_eq!(orders.len(), records.len(), "every record is a valid order");
    assert!(orders.len() >= 16_000, "{} orders", orders.len());
    let mut per_id: BTreeMap<i64, usize> = BTreeMap::new();
    for o in &orders {
        *per_id.entry(o.order_id).or_default() += 1;
    }
    let repeated: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "repeated ids: {repeated:?}");
    // Three producers, three leased nodes: the lowest free ones.
    let nodes: BTreeSet<i64> = orders.iter().map(|o| node_of(o.order_id)).collect();
    assert_eq!(nodes, BTreeSet::from([0, 1, 2]));
}
