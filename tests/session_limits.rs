//! What one peer holding the cookie can cost a node: a bounded number of remote actors per
//! session, and no name that is not a node name.
//!
//! The peer runs in this process (a plain `Mesh`: every actor this process spawns is announced
//! to every session it opens), against a real node process. Its own file, so the actors it
//! spawns are announced to no other test's sessions.

mod support;

use std::time::Duration;

use customer_cluster::cluster::mesh::{Mesh, Transport};
use customer_cluster::cluster::protocol::HeartbeatMsg;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use support::{NodeSpec, TestNode, wait_until};

/// A metric counter of `node` (`name{label}`), 0 when absent.
async fn counter(node: &TestNode, name: &str, label: &str) -> f64 {
    let Ok(r) = node.client.get("/metrics").await else {
        return 0.0;
    };
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| l.contains(label))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn peer(name: &str) -> Mesh {
    support::in_process_peer(name, None, Transport::Plain).await
}

fn single_node(dir: &std::path::Path, name: &str) -> TestNode {
    let mut spec = NodeSpec::new(name);
    spec.db_path = Some(dir.join("customers.db"));
    TestNode::start(spec, dir)
}

/// An actor that remote peers could call (its messages cross nodes), doing nothing.
struct Idle;

impl Actor for Idle {
    type Msg = HeartbeatMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

#[tokio::test]
async fn a_session_announcing_more_remote_actors_than_the_bound_is_closed_and_costs_the_node_little()
 {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path(), "f1");
    node.wait_ready(Duration::from_secs(60)).await;
    // 20,000 actors: about 200 MB on the node if each became a remote actor there.
    let mut actors = Vec::new();
    for _ in 0..20_000 {
        actors.push(Actor::spawn(None, Idle, ()).await.unwrap().0);
    }
    let before = rss_kib(node.pid());
    let flood = peer("flood").await;
    flood.dial(&node.spec.cluster_addr()).await.unwrap();
    wait_until(
        "the session was closed",
        Duration::from_secs(60),
        || async {
            let n = counter(
                &node,
                "customer_cluster_session_refused_total",
                "reason=\"too_many\"",
            )
            .await;
            (n >= 1.0).then_some(())
        },
    )
    .await;
    let grown_kib = rss_kib(node.pid()).saturating_sub(before);
    eprintln!("node RSS {before} KiB before the session, grown by {grown_kib} KiB");
    assert!(
        grown_kib < 40 * 1024,
        "the node grew by {grown_kib} KiB for one refused session"
    );
    let log = node.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("cluster session closed")
            && l.contains("too many remote actors")),
        "{log}"
    );
    assert_eq!(node.client.get("/health").await.unwrap().status, 200);
    flood.stop();
    for a in actors {
        a.stop(None);
    }
}

#[tokio::test]
async fn a_peer_naming_itself_with_a_newline_is_refused_before_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let node = single_node(dir.path(), "f2");
    node.wait_ready(Duration::from_secs(60)).await;
    let refused = || {
        counter(
            &node,
            "customer_cluster_preauth_refused_total",
            "reason=\"bad_frame\"",
        )
    };
    let before = refused().await;
    let forger = peer("zz\n[f2] 2026-01-01T00:00:00Z ERROR forged line").await;
    wait_until(
        "the forged name was refused",
        Duration::from_secs(30),
        || async {
            let _ = forger.dial(&node.spec.cluster_addr()).await;
            (refused().await > before).then_some(())
        },
    )
    .await;
    let log = node.log();
    assert!(
        !log.lines().any(|l| l.starts_with("[f2] 2026-01-01")),
        "a forged line reached the log:\n{log}"
    );
    forger.stop();
}
