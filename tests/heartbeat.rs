//! Heartbeats with real processes: a node flooded with customer activations stays a member for
//! its peers, because heartbeats are answered by an actor that carries no customer traffic.
//!
//! The nodes run with a short failure timeout (100 ms heartbeats, eviction after 2 s of
//! silence). When the Registry answered heartbeats, a burst of activations queued pongs behind
//! thousands of customer messages and the peers evicted the busy node in the middle of it (this
//! test failed 3 runs out of 3 against that design, the busy node silent for over 2 s, and
//! passed 3 out of 3 against this one on the same loaded machine). A shorter timeout measures
//! the machine more than the design: on two cores shared with other work, the busy process
//! itself is sometimes starved for a second, and no heartbeat can hide that.
//!
//! The busy node is the one hosting the database, so its activations cross no session:
//! customer traffic between two nodes shares their one ractor_cluster session with
//! heartbeats, which no actor can avoid.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use customer_cluster::cluster::placement::{Member, Ring};
use customer_cluster::customer::{CustomerId, new_customer_id};
use futures::StreamExt;
use support::{TestCluster, TestNode};

/// Short heartbeat timings: a pong queued for 2 s behind customer work means an eviction.
const FAST_DETECTOR: [&str; 4] = ["--heartbeat-ms", "100", "--failure-timeout-ms", "2000"];
/// Distinct customer ids read during the burst; none exists, yet each one activates an actor
/// that asks the database for its row.
const BURST: usize = 8000;
/// Requests in flight at once during the burst.
const CONCURRENCY: usize = 512;

/// The value of a counter in `/metrics` (summed over its series; 0 when never incremented).
async fn counter(node: &TestNode, name: &str) -> f64 {
    let r = node.client.get("/metrics").await.expect("metrics request");
    assert_eq!(r.status, 200);
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Membership counters of every node: (placement views published, members evicted).
async fn membership_counters(cluster: &TestCluster) -> HashMap<String, (f64, f64)> {
    let mut out = HashMap::new();
    for node in &cluster.nodes {
        let changes = counter(node, "customer_placement_changes_total").await;
        let evictions = counter(node, "customer_members_evicted_total").await;
        out.insert(node.spec.name.clone(), (changes, evictions));
    }
    out
}

/// `count` fresh ids that `owner` owns among `members`.
fn ids_owned_by(owner: &str, members: &[&str], count: usize) -> Vec<CustomerId> {
    let member = |name: &str| Member {
        name: name.to_owned(),
        cluster_addr: String::new(),
        http_addr: String::new(),
        hosts_db: false,
    };
    let ring = Ring::single(member(owner)).next(members.iter().map(|m| member(m)).collect());
    std::iter::repeat_with(new_customer_id)
        .filter(|id| ring.owner(id).is_some_and(|m| m.name == owner))
        .take(count)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_flooded_with_activations_is_never_evicted_by_its_peers() {
    let cluster = TestCluster::start("hb", 3, &FAST_DETECTOR).await;
    let target = &cluster.nodes[0];
    let ids = ids_owned_by("hb1", &["hb1", "hb2", "hb3"], BURST);
    let before = membership_counters(&cluster).await;
    let activated_before = counter(target, "customer_actors_activated_total").await;

    // Every node's view, sampled for the whole burst: it must always hold all three nodes.
    let done = Arc::new(AtomicBool::new(false));
    let watchers: Vec<_> = cluster
        .nodes
        .iter()
        .map(|node| {
            let client = node.client.clone();
            let name = node.spec.name.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    if let Ok(r) = client.get("/v1/cluster").await
                        && let Ok(v) = r.json::<serde_json::Value>()
                        && let Some(members) = v["members"].as_array()
                    {
                        seen.push(members.len());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                (name, seen)
            })
        })
        .collect();

    let started = Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(ids)
        .map(|id| {
            let client = target.client.clone();
            async move {
                client
                    .get(&format!("/v1/customers/{id}"))
                    .await
                    .map_or(0, |r| r.status.as_u16())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let burst_took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let mut views = Vec::new();
    for w in watchers {
        views.push(w.await.expect("watcher"));
    }
    eprintln!("{BURST} activations through hb1 in {burst_took:?}");

    let activated = counter(target, "customer_actors_activated_total").await - activated_before;
    assert!(
        activated >= BURST as f64,
        "the burst activated only {activated} actors on hb1"
    );
    let not_found = statuses.iter().filter(|s| **s == 404).count();
    assert_eq!(
        not_found,
        BURST,
        "every read of an absent customer answers 404 (others: {:?})",
        statuses
            .iter()
            .filter(|s| **s != 404)
            .take(10)
            .collect::<Vec<_>>()
    );
    for (name, seen) in &views {
        assert!(!seen.is_empty(), "{name}'s view was never sampled");
        assert!(
            seen.iter().all(|n| *n == 3),
            "{name} lost a member during the burst: member counts {seen:?}"
        );
    }
    let after = membership_counters(&cluster).await;
    assert_eq!(
        after, before,
        "placement changes / evictions per node moved during the burst"
    );
}
