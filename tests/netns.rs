//! The network lab (tests/support/netns.rs) proves itself: first with plain sockets, showing
//! that a partition cuts exactly the links it names, that a cut hangs like a real one, and that
//! nothing is left behind; then with three real nodes, each in its own namespace, showing that
//! an isolated node is evicted and taken back after the cut heals.
//!
//! The test process talks to the hosts through its own address on the lab's bridge (the
//! observer, never cut), so it uses its normal HTTP client and can watch both sides of a cut.
//! Needs root; without it every test here prints SKIPPED (and fails when `CI=true`).

mod support;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use customer_cluster::client::HttpResponse;
use hyper::Method;
use serde_json::{Value, json};
use support::netns::{LabNode, LabNodeSpec, NetLab};
use support::{id_of, wait_until};

/// How long a connect may take before we call the link cut. Lab links answer in well under a
/// millisecond, so this only bounds how long each cut link costs the test.
const CUT_TIMEOUT: Duration = Duration::from_millis(700);

/// One listener per host, on its own address; kept open for the whole test (the kernel
/// completes handshakes into the backlog, so nobody needs to accept).
fn listen_everywhere(lab: &NetLab) -> Vec<(TcpListener, SocketAddrV4)> {
    (1..=lab.len())
        .map(|k| {
            let ip = lab.addr(k);
            let listener = lab.in_host(k, || TcpListener::bind((ip, 0))).expect("bind");
            let port = listener.local_addr().expect("local addr").port();
            (listener, SocketAddrV4::new(ip, port))
        })
        .collect()
}

/// Whether a TCP connect from host `from` to `to` succeeds. A refused or otherwise failed
/// connect panics: a cut must look like silence (a timeout), never like an answer.
fn connects(lab: &NetLab, from: usize, to: SocketAddrV4) -> bool {
    let result = lab.in_host(from, || {
        TcpStream::connect_timeout(&SocketAddr::V4(to), CUT_TIMEOUT)
    });
    match result {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::TimedOut => false,
        Err(e) => panic!("connect from host {from} to {to} failed with {e}, not a timeout"),
    }
}

/// For every ordered pair of distinct hosts: does a connect get through?
fn reachability(
    lab: &NetLab,
    listeners: &[(TcpListener, SocketAddrV4)],
) -> BTreeMap<(usize, usize), bool> {
    let mut seen = BTreeMap::new();
    for from in 1..=lab.len() {
        for (i, (_, addr)) in listeners.iter().enumerate() {
            let to = i + 1;
            if from != to {
                seen.insert((from, to), connects(lab, from, *addr));
            }
        }
    }
    seen
}

/// The reachability we expect when exactly the unordered pairs in `cut` are cut.
fn expected(n: usize, cut: &[(usize, usize)]) -> BTreeMap<(usize, usize), bool> {
    let mut want = BTreeMap::new();
    for from in 1..=n {
        for to in (1..=n).filter(|&to| to != from) {
            let is_cut = cut.contains(&(from, to)) || cut.contains(&(to, from));
            want.insert((from, to), !is_cut);
        }
    }
    want
}

/// The test process (the observer) reaches every host, whatever is cut.
fn observer_reaches_all(listeners: &[(TcpListener, SocketAddrV4)]) {
    for (_, addr) in listeners {
        TcpStream::connect_timeout(&SocketAddr::V4(*addr), CUT_TIMEOUT)
            .unwrap_or_else(|e| panic!("the observer cannot reach {addr}: {e}"));
    }
}

#[test]
fn a_partial_partition_cuts_only_the_named_pair_until_heal() {
    let Some(lab) = NetLab::try_new(3) else {
        return;
    };
    let listeners = listen_everywhere(&lab);
    assert_eq!(reachability(&lab, &listeners), expected(3, &[]));
    observer_reaches_all(&listeners);

    lab.partition(&[2], &[3]);
    assert_eq!(
        reachability(&lab, &listeners),
        expected(3, &[(2, 3)]),
        "after partition([2], [3]) only 2<->3 is cut; both still reach 1"
    );
    observer_reaches_all(&listeners);

    lab.heal();
    assert_eq!(reachability(&lab, &listeners), expected(3, &[]));
}

#[test]
fn an_isolated_host_reaches_no_other_host_and_cuts_add_up() {
    let Some(lab) = NetLab::try_new(3) else {
        return;
    };
    let listeners = listen_everywhere(&lab);

    lab.isolate(1);
    assert_eq!(
        reachability(&lab, &listeners),
        expected(3, &[(1, 2), (1, 3)])
    );
    observer_reaches_all(&listeners);

    lab.partition(&[2], &[3]);
    assert_eq!(
        reachability(&lab, &listeners),
        expected(3, &[(1, 2), (1, 3), (2, 3)]),
        "a second partition adds to the first"
    );

    lab.heal();
    assert_eq!(reachability(&lab, &listeners), expected(3, &[]));
}

/// Every namespace, `/run/netns` entry and host interface whose name contains `tag`.
fn leftovers(tag: &str) -> Vec<String> {
    let mut found = Vec::new();
    for args in [&["netns", "list"][..], &["-o", "link", "show"][..]] {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        found.extend(text.lines().filter(|l| l.contains(tag)).map(str::to_owned));
    }
    found
}

/// The network namespace inode of `path` (`/proc/PID/ns/net` or `/run/netns/NAME`).
fn netns_inode(path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino()
}

#[test]
fn dropping_the_lab_removes_its_namespaces_links_and_processes() {
    let Some(lab) = NetLab::try_new(2) else {
        return;
    };
    let tag = lab.tag().to_owned();
    let mut sleeper = lab.spawn(1, {
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        cmd
    });
    let pid = sleeper.pid();
    assert_eq!(
        netns_inode(&format!("/proc/{pid}/ns/net")),
        netns_inode(&format!("/run/netns/{}", lab.namespace(1))),
        "a spawned process runs in its host's namespace"
    );
    lab.partition(&[1], &[2]);
    assert!(!leftovers(&tag).is_empty());

    // The lab goes first, while the process guard still lives: the lab itself must end it.
    drop(lab);
    assert_eq!(leftovers(&tag), Vec::<String>::new());
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleeper.exited().is_none() {
        assert!(Instant::now() < deadline, "pid {pid} outlived its lab");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(sleeper.was_killed(), "pid {pid} ended, but not by SIGKILL");
}

#[test]
fn a_lab_is_removed_even_when_the_test_panics() {
    let Some(lab) = NetLab::try_new(2) else {
        return;
    };
    let tag = lab.tag().to_owned();
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _sleeper = lab.spawn(2, {
            let mut cmd = Command::new("sleep");
            cmd.arg("600");
            cmd
        });
        lab.isolate(2);
        panic!("a failing fault test");
    }));
    assert!(unwound.is_err());
    assert_eq!(leftovers(&tag), Vec::<String>::new());
}

/// `GET /v1/customers/{id}` through `node`.
async fn get(node: &LabNode, id: &str) -> Option<HttpResponse> {
    node.client.get(&format!("/v1/customers/{id}")).await.ok()
}

/// Creates customer `id` through `node`, retrying while the node answers 5xx or not at all
/// (a retry with the same id is idempotent: a replay answers 200).
async fn create(node: &LabNode, id: &str, name: &str, timeout: Duration) -> Value {
    let body = json!({"id": id, "name": name, "email": format!("{name}@example.com")});
    let what = format!("{} creates {name}", node.spec.name);
    wait_until(&what, timeout, || async {
        let r = node
            .client
            .json(Method::POST, "/v1/customers", &body, &[])
            .await;
        match r {
            Ok(r) if r.status == 201 || r.status == 200 => Some(r.json::<Value>().expect("json")),
            Ok(r) if r.status.is_server_error() => None,
            Ok(r) => panic!("{what}: {} {:?}", r.status, r.body),
            Err(_) => None,
        }
    })
    .await
}

/// Reads customer `id` through `node` until it answers 200; panics on a 404 (a lost write).
async fn read(node: &LabNode, id: &str, timeout: Duration) -> Value {
    let what = format!("{} reads {id}", node.spec.name);
    wait_until(&what, timeout, || async {
        let r = get(node, id).await?;
        assert_ne!(r.status, 404, "{what}: the customer is gone");
        (r.status == 200).then(|| r.json::<Value>().expect("json"))
    })
    .await
}

#[tokio::test]
async fn three_nodes_in_namespaces_evict_an_isolated_node_and_take_it_back_after_heal() {
    let Some(lab) = NetLab::try_new(3) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = LabNodeSpec::new("n1", 1);
    spec.db_path = Some(dir.path().join("customers.db"));
    let n1 = LabNode::start(&lab, spec, dir.path());
    let seed = n1.cluster_addr();
    let peer = |name: &str, host| {
        let mut spec = LabNodeSpec::new(name, host);
        spec.seeds = vec![seed.clone()];
        LabNode::start(&lab, spec, dir.path())
    };
    let (n2, n3) = (peer("n2", 2), peer("n3", 3));
    let all = ["n1", "n2", "n3"];
    for node in [&n1, &n2, &n3] {
        assert_ne!(node.ip, Ipv4Addr::LOCALHOST);
        node.wait_members(&all, Duration::from_secs(60)).await;
    }

    // A create through n2 is read through n3.
    let r = n2
        .client
        .json(
            Method::POST,
            "/v1/customers",
            &json!({"name": "Before", "email": "before@example.com"}),
            &[],
        )
        .await
        .expect("create through n2");
    assert_eq!(r.status, 201, "{:?}", r.body);
    let before = id_of(&r);
    let via_n3 = read(&n3, &before, Duration::from_secs(10)).await;
    assert_eq!(via_n3["name"], "Before");

    // n3 cut from both peers: they evict it and keep serving; n3, alone, sees only itself.
    lab.isolate(3);
    let evict = Duration::from_secs(20);
    n1.wait_members(&["n1", "n2"], evict).await;
    n2.wait_members(&["n1", "n2"], evict).await;
    n3.wait_members(&["n3"], evict).await;
    let during = uuid::Uuid::now_v7().to_string();
    let created = create(&n1, &during, "during", Duration::from_secs(15)).await;
    assert_eq!(created["id"], during.as_str());
    assert_eq!(read(&n2, &during, evict).await["name"], "during");
    assert_eq!(read(&n2, &before, evict).await["name"], "Before");

    // Healed: n3 is a member again everywhere and serves what was written without it.
    lab.heal();
    for node in [&n1, &n2, &n3] {
        node.wait_members(&all, Duration::from_secs(60)).await;
    }
    let r = read(&n3, &during, Duration::from_secs(15)).await;
    assert_eq!(
        (r["name"].as_str(), r["version"].as_u64()),
        (Some("during"), Some(1))
    );
}
