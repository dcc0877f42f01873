//! `customer-cluster events` against real nodes: a follower started before a node freezes
//! sees it evicted as it happens, and a later `events` (no `--follow`) prints the
//! node's recent events, in human and JSON form, and ends by itself.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use support::{BIN, ChildGuard, TestCluster};

const TOKEN: &str = "events-test-token";

fn events_cmd(node: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("events")
        .args(args)
        .args(["--node", node, "--token", TOKEN])
        .env_remove("CUSTOMER_CLUSTER_NODE")
        .env_remove("CUSTOMER_CLUSTER_TOKEN");
    cmd
}

/// Reads `child`'s stdout lines on a thread (a blocking read never runs on a tokio worker).
fn lines_of(child: &mut ChildGuard) -> mpsc::Receiver<String> {
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_node_is_streamed_as_evicted_as_it_happens_and_replayed_later() {
    let cluster = TestCluster::start("ev", 2, &["--api-token", TOKEN]).await;
    let n1 = format!("127.0.0.1:{}", cluster.nodes[0].spec.http_port);
    let mut follower = ChildGuard(
        events_cmd(&n1, &["--follow", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn events --follow"),
    );
    let lines = lines_of(&mut follower);
    // The replay shows n2 joining before anything is killed: the stream is open.
    let joined = next_matching(&lines, |e| e["kind"] == "member_up" && e["detail"] == "ev2");
    assert_eq!(joined["node"], "ev1");

    // Frozen, not killed: a killed node's session closes and it is reported as left at once;
    // a frozen one keeps its session and only the failure detector evicts it.
    cluster.nodes[1].signal(libc::SIGSTOP);
    let evicted = next_matching(&lines, |e| {
        e["kind"] == "member_evicted" && e["detail"] == "ev2"
    });
    assert!(
        evicted["cause"].as_str().unwrap().contains("silent for"),
        "{evicted}"
    );
    let moved = next_matching(&lines, |e| e["kind"] == "placement_changed");
    assert!(
        moved["detail"].as_str().unwrap().contains("shards moved"),
        "{moved}"
    );

    // Without --follow: the recent events, one line each, and the command ends by itself.
    let out = tokio::task::spawn_blocking(move || events_cmd(&n1, &[]).output())
        .await
        .unwrap()
        .expect("run events");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let human = String::from_utf8(out.stdout).unwrap();
    let line = human
        .lines()
        .find(|l| l.contains("member_evicted"))
        .unwrap_or_else(|| panic!("no eviction in:\n{human}"));
    assert!(line.contains(" ev1 ") && line.contains("ev2"), "{line}");
    assert!(human.lines().all(|l| l.starts_with("20")), "{human}");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_without_the_token_fail_with_the_api_error() {
    let cluster = TestCluster::start("evt", 1, &["--api-token", TOKEN]).await;
    let node = format!("127.0.0.1:{}", cluster.nodes[0].spec.http_port);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["events", "--node", &node])
            .env_remove("CUSTOMER_CLUSTER_TOKEN")
            .output()
    })
    .await
    .unwrap()
    .expect("run events");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HTTP 401"), "{stderr}");
}

/// The next JSON line from the follower that satisfies `wanted` (30 s at most).
fn next_matching(lines: &mpsc::Receiver<String>, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = lines
            .recv_timeout(left)
            .expect("the follower printed no matching event in time");
        let event: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if wanted(&event) {
            return event;
        }
    }
}
