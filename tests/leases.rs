//! Shard leases with real processes (DESIGN §6, §10): a frozen owner's queued write never
//! lands over a newer acknowledged one, a killed owner's shards move after detection + TTL, a
//! restarted node gets its shards back only after its old lease row stood still for TTL, and
//! a SIGTERMed owner hands over under load with nothing worse than 503 and no stale read, and
//! a node whose boot clock runs ahead of its monotonic clock (a host suspended once; a time
//! namespace) holds its shards and serves like any other (§10 case 15).

mod support;

use std::time::{Duration, Instant};

use customer_cluster::client::HttpResponse;
use serde_json::{Value, json};
use support::{TestCluster, TestNode, id_of, in_boot_clock_ahead, wait_until};

/// One 3-node cluster at a time: these tests measure takeover times on two shared cores.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The shipped lease TTL (`--lease-ttl-ms` default).
const TTL: Duration = Duration::from_millis(2000);
/// The shipped renew interval (`--lease-renew-ms` default).
const RENEW: Duration = Duration::from_millis(500);

async fn patch_name(node: &TestNode, id: &str, name: &str) -> HttpResponse {
    node.client
        .json(
            hyper::Method::PATCH,
            &format!("/v1/customers/{id}"),
            &json!({"name": name}),
            &[],
        )
        .await
        .expect("patch request")
}

/// Creates customers through `entry` until one is placed on `owner`; returns its id.
async fn customer_owned_by(entry: &TestNode, owner: &str, tag: &str) -> String {
    for i in 0..200 {
        let r = entry
            .create(&format!("{tag} {i}"), &format!("{tag}{i}@example.com"))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        if r.header("x-owner-node") == Some(owner) {
            return id_of(&r);
        }
    }
    panic!("no customer placed on {owner} in 200 creates");
}

/// Writes through `node` until acknowledged; returns (name, version).
async fn write_until_acked(node: &TestNode, id: &str, name: &str, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let r = patch_name(node, id, name).await;
        if r.status == 200 {
            return r.json::<Value>().unwrap()["version"].as_u64().unwrap();
        }
        assert!(
            r.status == 503 || r.status == 504,
            "unexpected {}: {:?}",
            r.status,
            r.body
        );
        assert!(
            Instant::now() < deadline,
            "{id} never writable through {}",
            node.spec.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads through `node` until it answers 200 (503s allowed meanwhile); returns the body.
async fn read_until_ok(node: &TestNode, id: &str, within: Duration) -> Value {
    let what = format!("{id} readable through {}", node.spec.name);
    wait_until(&what, within, || async {
        let r = node.get(id).await;
        assert!(
            r.status == 200 || r.status == 503,
            "read through {} answered {}: {:?}",
            node.spec.name,
            r.status,
            r.body
        );
        (r.status == 200).then(|| r.json::<Value>().unwrap())
    })
    .await
}

fn signal(node: &TestNode, sig: i32) {
    node.signal(sig);
}

#[tokio::test]
async fn a_write_queued_while_the_database_and_owner_were_frozen_never_overwrites_the_acknowledged_retry()
 {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = TestCluster::start("fz", 3, &[]).await;
    let (db, owner, entry) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let id = customer_owned_by(entry, "fz2", "Frozen").await;

    // 1. Freeze the database node, then send write A: the owner's write waits at the
    //    database. 2. Freeze the owner too, then resume the database: A may commit now, but
    //    its acknowledgement is stuck in the frozen owner.
    signal(db, libc::SIGSTOP);
    let client = entry.client.clone();
    let path = format!("/v1/customers/{id}");
    let old_write = tokio::spawn(async move {
        client
            .json(
                hyper::Method::PATCH,
                &path,
                &json!({"name": "A (old)"}),
                &[],
            )
            .await
    });
    // Fault timing, not a wait on a condition: give the request time to reach the database.
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(owner, libc::SIGSTOP);
    signal(db, libc::SIGCONT);

    // The entry node evicts the owner, another node takes the shard over after TTL, and the
    // client's next write B is acknowledged there.
    let b_version = write_until_acked(entry, &id, "B (new)", Duration::from_secs(30)).await;
    let a = old_write.await.unwrap();
    if let Ok(a) = &a {
        assert!(
            a.status == 200 || a.status == 503 || a.status == 504,
            "write A answered {}: {:?}",
            a.status,
            a.body
        );
    }

    // Resume the owner: whatever it had queued or cached must not surface.
    signal(owner, libc::SIGCONT);
    cluster
        .wait_members(&[owner, entry], 3, Duration::from_secs(30))
        .await;
    // The old owner learns from its next renew that it was revoked (its epoch was bumped by
    // the takeover that let B through); until then it answered not_holder, never its cache.
    wait_until(
        "the old owner saw its lease revoked",
        Duration::from_secs(30),
        || async { owner.log().contains("lease was revoked").then_some(()) },
    )
    .await;
    for node in [db, owner, entry] {
        let row = read_until_ok(node, &id, Duration::from_secs(30)).await;
        assert_eq!(row["name"], "B (new)", "through {}: {row}", node.spec.name);
        assert_eq!(
            row["version"].as_u64(),
            Some(b_version),
            "through {}",
            node.spec.name
        );
    }
}

#[tokio::test]
async fn a_killed_owners_shards_are_served_by_others_after_detection_plus_ttl() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = TestCluster::start("kl", 3, &[]).await;
    let id = customer_owned_by(&cluster.nodes[2], "kl2", "Killed").await;
    let acked = write_until_acked(&cluster.nodes[2], &id, "before", Duration::from_secs(10)).await;

    let killed_at = Instant::now();
    cluster.nodes[1].kill();
    let row = read_until_ok(&cluster.nodes[2], &id, Duration::from_secs(30)).await;
    let took = killed_at.elapsed();
    println!("kill -9 of the owner → its customer served again after {took:?} (TTL {TTL:?})");
    assert_eq!(row["version"].as_u64(), Some(acked));
    assert_ne!(row["name"], Value::Null);
    // Nobody may serve before the dead holder's row stood still for a whole TTL...
    assert!(
        took >= TTL,
        "served after {took:?}, before one TTL had passed"
    );
    // ...and the shard moves within detection + 2×TTL + a little scheduling slack.
    assert!(took < Duration::from_secs(12), "took {took:?}");
}

#[tokio::test]
async fn a_restarted_node_gets_its_shards_back_only_after_its_old_row_stood_still_for_ttl() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let mut spec = support::NodeSpec::new("rs1");
    spec.db_path = Some(dir.path().join("c.db"));
    let mut node = TestNode::start(spec, dir.path());
    node.wait_ready(Duration::from_secs(30)).await;
    let r = node.create("Restart", "restart@example.com").await;
    assert_eq!(r.status, 201);
    let id = id_of(&r);

    node.kill();
    let restarted_at = Instant::now();
    node.restart();
    // Ready = serving every shard placed here (the HTTP listener comes up long before).
    node.wait_ready(Duration::from_secs(30)).await;
    let took = restarted_at.elapsed();
    let row = read_until_ok(&node, &id, Duration::from_secs(5)).await;
    println!("restart with a new incarnation → shards back after {took:?} (TTL {TTL:?})");
    assert_eq!(row["name"], "Restart");
    assert!(
        took >= TTL,
        "the new process served after {took:?}: it must wait until the old row stood still for TTL"
    );
    assert!(
        node.log()
            .contains("took this node's lease row over from its previous process"),
        "the restart did not go through the own-row takeover"
    );
}

#[tokio::test]
async fn sigterm_of_an_owner_under_load_gives_no_error_beyond_503_and_no_stale_read() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = TestCluster::start("st", 3, &[]).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(customer_owned_by(&cluster.nodes[0], "st2", &format!("Term{i}")).await);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for (w, id) in ids.iter().enumerate() {
        let entry = if w % 2 == 0 { 0 } else { 2 };
        let client = cluster.nodes[entry].client.clone();
        let (id, stop) = (id.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut acked = 0u64;
            let mut n = 0u64;
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let path = format!("/v1/customers/{id}");
                let body = json!({"name": format!("w{w} #{n}")});
                if let Ok(r) = client.json(hyper::Method::PATCH, &path, &body, &[]).await {
                    statuses.push(r.status);
                    if r.status == 200 {
                        acked = r.json::<Value>().unwrap()["version"].as_u64().unwrap();
                    }
                }
                if let Ok(r) = client.get(&path).await {
                    statuses.push(r.status);
                    if r.status == 200 {
                        let v = r.json::<Value>().unwrap()["version"].as_u64().unwrap();
                        assert!(
                            v >= acked,
                            "stale read of {id}: version {v} after {acked} was acknowledged"
                        );
                    }
                }
            }
            statuses
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // load before the stop
    assert_eq!(cluster.nodes[1].terminate(Duration::from_secs(30)), Some(0));
    wait_until(
        "every customer served after the handover",
        Duration::from_secs(30),
        || async {
            for id in &ids {
                if cluster.nodes[0].get(id).await.status != 200 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut served = 0;
    for w in workers {
        for status in w.await.unwrap() {
            assert!(status == 200 || status == 503, "a client saw {status}");
            served += usize::from(status == 200);
        }
    }
    assert!(served > 0);
}

/// This node's `customer_lease_statements_total` by kind.
async fn lease_statements(node: &TestNode) -> std::collections::BTreeMap<String, f64> {
    let r = node.client.get("/metrics").await.expect("metrics request");
    assert_eq!(r.status, 200);
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| l.starts_with("customer_lease_statements_total{"))
        .filter_map(|l| {
            let (_, kind) = l.split_once("kind=\"")?;
            let (kind, _) = kind.split_once('"')?;
            Some((kind.to_string(), l.rsplit_once(' ')?.1.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn in_the_steady_state_the_lease_costs_one_statement_per_node_per_renew_interval() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = TestCluster::start("ss", 3, &[]).await;
    for i in 0..300 {
        let r = cluster.nodes[i % 3]
            .create("Steady", &format!("steady{i}@example.com"))
            .await;
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let before = futures::future::join_all(cluster.nodes.iter().map(lease_statements)).await;
    // A measuring window, not a wait for a condition: the rate is what is asserted.
    let window = RENEW * 16;
    tokio::time::sleep(window).await;
    let after = futures::future::join_all(cluster.nodes.iter().map(lease_statements)).await;
    for ((node, b), a) in cluster.nodes.iter().zip(&before).zip(&after) {
        let delta = |kind: &str| a.get(kind).unwrap_or(&0.0) - b.get(kind).unwrap_or(&0.0);
        let renews = delta("renew");
        let others: f64 = a.keys().filter(|k| *k != "renew").map(|k| delta(k)).sum();
        println!(
            "{}: {renews} renews and {others} other lease statements in {window:?} ({:.2} per interval)",
            node.spec.name,
            (renews + others) / 16.0
        );
        assert!(renews >= 8.0, "{}: only {renews} renews", node.spec.name);
        // No table read in the steady state; slack for one placement change settling at the
        // start of the window. A read every tick would be 16.
        assert!(
            others <= 5.0,
            "{}: {others} non-renew lease statements in 16 intervals: {a:?} vs {b:?}",
            node.spec.name
        );
    }
}

/// How far ahead of its monotonic clock the boot clock of the time-namespaced node runs.
const BOOT_AHEAD_S: u64 = 3600;
/// How long the time-namespaced node is watched serving.
const SERVE_FOR: Duration = Duration::from_secs(30);
/// How often it is asked.
const SERVE_EVERY: Duration = Duration::from_millis(200);

/// Of the shards `node` places on itself (its own `GET /v1/cluster/shards`): how many, how
/// many it holds, and the count per lease state.
async fn placed_and_held(
    node: &TestNode,
) -> Option<(usize, usize, std::collections::BTreeMap<String, usize>)> {
    let r = node.client.get("/v1/cluster/shards").await.ok()?;
    if r.status != 200 {
        return None;
    }
    let map: Value = r.json().ok()?;
    let name = node.spec.name.as_str();
    let placed: Vec<&Value> = map["shards"]
        .as_array()?
        .iter()
        .filter(|s| s["owner"] == name)
        .collect();
    let held = placed
        .iter()
        .filter(|s| s["state"] == "held" && s["holder"] == name)
        .count();
    let mut states = std::collections::BTreeMap::new();
    for s in &placed {
        let state = s["state"].as_str().unwrap_or("?").to_owned();
        *states.entry(state).or_default() += 1;
    }
    Some((placed.len(), held, states))
}

/// The process the test holds for `node` is the node itself (not a wrapper that forked it),
/// running in a time namespace of its own with the boot clock `BOOT_AHEAD_S` ahead.
fn assert_in_its_own_time_namespace(node: &TestNode) {
    let pid = node.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert!(
        comm.starts_with("customer-clust"),
        "pid {pid} is {comm:?}, not the node: killing it would orphan the node"
    );
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/time")).ok();
    assert_ne!(ns(&pid.to_string()), ns("self"), "not in a time namespace");
    let offsets =
        std::fs::read_to_string(format!("/proc/{pid}/timens_offsets")).unwrap_or_default();
    assert!(
        offsets.lines().any(|l| l
            .split_whitespace()
            .take(2)
            .eq(["boottime", BOOT_AHEAD_S.to_string().as_str()])),
        "boot clock offset: {offsets}"
    );
}

/// Creates customers through `entry` (503 allowed, for up to `within`) until one is placed
/// on `owner`; its id, or what went wrong.
async fn customer_placed_on(
    entry: &TestNode,
    owner: &str,
    within: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + within;
    let mut refused = 0;
    for i in 0.. {
        if Instant::now() > deadline {
            return Err(format!(
                "no customer created on {owner} within {within:?} ({refused} creates answered 503)"
            ));
        }
        let r = entry
            .create(&format!("Boot {i}"), &format!("boot{i}@example.com"))
            .await;
        match r.status.as_u16() {
            201 if r.header("x-owner-node") == Some(owner) => return Ok(id_of(&r)),
            201 => {}
            503 => {
                refused += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return Err(format!("create answered {other}: {:?}", r.body)),
        }
    }
    unreachable!()
}

#[tokio::test]
async fn a_node_whose_boot_clock_runs_ahead_holds_its_shards_and_serves_for_30_s() {
    let Some(wrapper) = in_boot_clock_ahead(BOOT_AHEAD_S) else {
        eprintln!("skipped: no time namespace here (needs root, unshare and Linux ≥ 6.3)");
        return;
    };
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = TestCluster::start_wrapped("bt", 3, &[], 2, &wrapper).await;
    let (n1, n3) = (&cluster.nodes[0], &cluster.nodes[2]);
    assert_in_its_own_time_namespace(n3);
    let mut trouble: Vec<String> = Vec::new();

    // 1. Every shard placed on n3 held by n3 within 2 × TTL (and room for two shared cores).
    let bound = 4 * TTL;
    let since = Instant::now();
    let mut last = None;
    while since.elapsed() < bound {
        last = placed_and_held(n3).await;
        if matches!(&last, Some((placed, held, _)) if *placed > 0 && held == placed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (placed, held_at_start) = match &last {
        Some((placed, held, _)) if *placed > 0 && held == placed => (*placed, *held),
        Some((placed, held, states)) => {
            trouble.push(format!(
                "after {bound:?} n3 held {held} of the {placed} shards placed on it: {states:?}"
            ));
            (*placed, *held)
        }
        None => panic!("n3 never listed its shards"),
    };

    // 2. A customer owned by n3.
    let id = match customer_placed_on(n1, "bt3", Duration::from_secs(10)).await {
        Ok(id) => id,
        Err(e) => panic!(
            "n3 (boot clock {BOOT_AHEAD_S} s ahead) cannot serve a customer of its own:\n{}\n{e}",
            trouble.join("\n")
        ),
    };

    // 3. For 30 s: every read of it through n1 and through n3 is 200, and n3 keeps holding
    //    every shard it held.
    let (mut asked, mut lowest) = (0, held_at_start);
    let started = Instant::now();
    while started.elapsed() < SERVE_FOR {
        let at = started.elapsed().as_millis();
        for entry in [n1, n3] {
            asked += 1;
            let r = entry.get(&id).await;
            if r.status != 200 {
                let owner = r.header("x-owner-node").unwrap_or("-").to_owned();
                trouble.push(format!(
                    "{at:>6} ms: GET through {} answered {} (owner {owner}): {}",
                    entry.spec.name,
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ));
            }
        }
        if let Some((_, held, states)) = placed_and_held(n3).await
            && held < lowest
        {
            lowest = held;
            trouble.push(format!(
                "{at:>6} ms: n3 holds {held} of {placed} shards: {states:?}"
            ));
        }
        tokio::time::sleep(SERVE_EVERY).await;
    }
    let failed_gets = trouble.iter().filter(|t| t.contains("GET through")).count();
    assert!(
        trouble.is_empty(),
        "n3 (boot clock {BOOT_AHEAD_S} s ahead) did not hold its shards and serve: {failed_gets} of \
         {asked} GETs failed, fewest shards held {lowest} of {placed}; first 25 problems:\n{}",
        trouble
            .iter()
            .take(25)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
