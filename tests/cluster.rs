//! Real node processes on loopback: routing through any node, placement balance, the remote
//! database path, cookie authentication, and a second SQLite database node being refused.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::{NodeSpec, TestCluster, TestNode, id_of, wait_until};

#[tokio::test]
async fn crud_through_any_node_reaches_the_one_owner() {
    let cluster = TestCluster::start("r", 3, &[]).await;
    let nodes = &cluster.nodes;

    // 150 customers created through "random" nodes (a fixed stride, so failures reproduce).
    let mut owners: HashMap<String, String> = HashMap::new();
    for i in 0..150 {
        let entry = &nodes[(i * 7 + i / 3) % 3];
        let r = entry
            .create(&format!("Customer {i}"), &format!("r{i}@example.com"))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        assert_eq!(r.header("x-entry-node"), Some(entry.spec.name.as_str()));
        owners.insert(id_of(&r), r.header("x-owner-node").unwrap().to_owned());
    }

    // Every read through every node returns the same body and the same owner.
    for (id, owner) in &owners {
        let mut bodies = Vec::new();
        for node in nodes {
            let r = node.get(id).await;
            assert_eq!(r.status, 200);
            assert_eq!(
                r.header("x-owner-node"),
                Some(owner.as_str()),
                "{id} via {}",
                node.spec.name
            );
            bodies.push(r.json::<Value>().unwrap());
        }
        assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{id}: {bodies:?}");
    }

    // Every node owns at least 20%.
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for owner in owners.values() {
        *per_node.entry(owner.as_str()).or_default() += 1;
    }
    for node in nodes {
        let owned = per_node.get(node.spec.name.as_str()).copied().unwrap_or(0);
        assert!(owned >= 30, "{} owns only {owned} of 150", node.spec.name);
    }

    // An update through a non-owner is visible through every node.
    let (id, owner) = owners.iter().next().unwrap();
    let non_owner = nodes.iter().find(|n| &n.spec.name != owner).unwrap();
    let r = non_owner
        .patch(id, json!({"address": "updated via a non-owner"}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-owner-node"), Some(owner.as_str()));
    for node in nodes {
        let v: Value = node.get(id).await.json().unwrap();
        assert_eq!(v["address"], "updated via a non-owner");
        assert_eq!(v["version"], 2);
    }

    // Only r1 has a database; r2 and r3 reach it through the process group.
    for node in nodes {
        let c = node.cluster().await.unwrap();
        assert_eq!(c["db_members"], json!(["r1"]), "{}", node.spec.name);
        let dbs: Vec<bool> = c["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["db"].as_bool().unwrap())
            .collect();
        assert_eq!(dbs, vec![true, false, false]);
    }
    assert!(cluster.nodes[1].spec.db_path.is_none() && cluster.nodes[2].spec.db_path.is_none());
    let served_by_r2 = owners
        .iter()
        .find(|(_, o)| o.as_str() == "r2")
        .map(|(id, _)| id)
        .unwrap();
    let r = cluster
        .node("r3")
        .patch(served_by_r2, json!({"name": "written by r2's actor"}))
        .await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-owner-node")),
        (200, Some("r2"))
    );

    // Lists through any node see every customer.
    for node in nodes {
        assert_eq!(node.list_all().await.len(), 150);
    }
}

#[tokio::test]
async fn a_node_with_a_wrong_cookie_never_becomes_a_member() {
    let cluster = TestCluster::start("k", 2, &[]).await;
    let mut spec = NodeSpec::new("intruder");
    spec.cookie = "wrong-cluster-cookie-0123456789".into();
    spec.seeds = vec![
        cluster.nodes[0].spec.cluster_addr(),
        cluster.nodes[1].spec.cluster_addr(),
    ];
    let intruder = TestNode::start(spec, cluster.dir.path());

    // Wait until the members have rejected several of the intruder's handshakes.
    wait_until(
        "the intruder's handshakes were rejected",
        Duration::from_secs(30),
        || async {
            let rejections: usize = cluster
                .nodes
                .iter()
                .map(|n| {
                    n.log()
                        .lines()
                        .filter(|l| l.contains("intruder") && l.contains("auth_fail"))
                        .count()
                })
                .sum();
            (rejections >= 3).then_some(())
        },
    )
    .await;
    for node in &cluster.nodes {
        let members = node.members().await.unwrap();
        assert_eq!(
            members,
            vec!["k1".to_string(), "k2".to_string()],
            "{}",
            node.spec.name
        );
    }
    assert_eq!(
        intruder.members().await.unwrap(),
        vec!["intruder".to_string()]
    );
}

/// Customers stored in an SQLite file, read directly.
fn customers_in(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).expect("open the database file");
    conn.query_row("SELECT COUNT(*) FROM customers", [], |r| r.get(0))
        .expect("count customers")
}

/// One write through `entry` read back through `reader`; the failure, if any, as text.
async fn write_and_read(entry: &TestNode, reader: &TestNode, tag: &str) -> Result<String, String> {
    let r = entry.create(tag, &format!("{tag}@example.com")).await;
    if r.status != 201 {
        return Err(format!(
            "create via {}: {} {:?}",
            entry.spec.name, r.status, r.body
        ));
    }
    let id = id_of(&r);
    let g = reader.get(&id).await;
    let v: Value = g.json().map_err(|e| format!("{e}"))?;
    if g.status != 200 || v["name"] != tag {
        return Err(format!("read via {}: {} {v}", reader.spec.name, g.status));
    }
    Ok(id)
}

#[tokio::test]
async fn a_second_database_node_is_refused_and_exits_while_the_cluster_keeps_serving() {
    let cluster = TestCluster::start("d", 3, &[]).await;
    let nodes = &cluster.nodes;
    let mut written = Vec::new();
    for i in 0..6 {
        let tag = format!("before{i}");
        written.push(
            write_and_read(&nodes[i % 3], &nodes[(i + 1) % 3], &tag)
                .await
                .unwrap(),
        );
    }

    // An operator mistake: a fourth node with its own SQLite file joins through d2.
    let rogue_db = cluster.dir.path().join("second.db");
    let mut spec = NodeSpec::new("d4");
    spec.db_path = Some(rogue_db.clone());
    spec.seeds = vec![nodes[1].spec.cluster_addr()];
    let mut rogue = TestNode::start(spec, cluster.dir.path());

    // Writes through the three members keep succeeding while it is around, and it is never
    // admitted as a member (no shard is placed on it).
    let mut i = 0;
    let code = loop {
        let tag = format!("during{i}");
        written.push(
            write_and_read(&nodes[i % 3], &nodes[(i + 2) % 3], &tag)
                .await
                .unwrap(),
        );
        for node in nodes {
            assert_eq!(
                node.members().await.unwrap(),
                ["d1", "d2", "d3"],
                "{}",
                node.spec.name
            );
        }
        i += 1;
        if !rogue.is_running() {
            break rogue.wait_exit(Duration::from_secs(1)).await;
        }
        assert!(i < 2000, "the second database node never exited");
    };
    assert_eq!(code, Some(1), "the refused node exits non-zero");
    let log = rogue.log();
    assert!(
        log.contains("refused by the cluster: node d1 is already its database node"),
        "{log}"
    );
    assert!(
        customers_in(&rogue_db) == 0,
        "the refused node stored a customer"
    );

    // After it left: still serving, and everything written before and during reads back.
    for i in 0..6 {
        let tag = format!("after{i}");
        written.push(
            write_and_read(&nodes[i % 3], &nodes[(i + 1) % 3], &tag)
                .await
                .unwrap(),
        );
    }
    for (i, id) in written.iter().enumerate() {
        assert_eq!(nodes[i % 3].get(id).await.status, 200, "{id}");
    }
    for node in nodes {
        let c = node.cluster().await.unwrap();
        assert_eq!(c["db_members"], json!(["d1"]), "{}", node.spec.name);
    }
    assert_eq!(
        customers_in(&cluster.dir.path().join("customers.db")),
        written.len() as i64
    );
}

#[tokio::test]
async fn a_database_node_started_with_seeds_serves_only_after_meeting_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut plain = NodeSpec::new("w2");
    let mut db = NodeSpec::new("w1");
    db.db_path = Some(dir.path().join("w1.db"));
    db.seeds = vec![plain.cluster_addr()];
    plain.seeds = vec![db.cluster_addr()];
    let db = TestNode::start(db, dir.path());

    // Its seed is not up yet: it answers, but serves nothing, and says why.
    let ready = wait_until("w1 answers /ready", Duration::from_secs(30), || async {
        db.client.get("/ready").await.ok()
    })
    .await;
    assert_eq!(ready.status, 503);
    let why: Value = ready.json().unwrap();
    assert!(
        why["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("serves nothing until it has met the cluster")),
        "{why}"
    );
    let r = db.create("Too early", "early@example.com").await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    let body: Value = r.json().unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--seeds")),
        "{body}"
    );
    assert_eq!(customers_in(&dir.path().join("w1.db")), 0);

    // Once it has met a peer and learnt of no other database node, it serves.
    let plain = TestNode::start(plain, dir.path());
    db.wait_ready(Duration::from_secs(60)).await;
    plain.wait_ready(Duration::from_secs(60)).await;
    let id = write_and_read(&plain, &db, "after-meeting").await.unwrap();
    assert_eq!(plain.get(&id).await.status, 200);
    assert_eq!(customers_in(&dir.path().join("w1.db")), 1);
    assert!(
        db.log()
            .contains("this node is the database node and serves")
    );
}

#[tokio::test]
async fn a_database_node_started_alone_with_its_clock_an_hour_behind_exits_for_the_one_the_cluster_follows()
 {
    // i1 is the database node and i3 follows it. i2 is started by mistake with its own file and
    // no seeds, on a host whose wall clock reads an hour behind: by start times it would be the
    // older of the two. i3 dials it (its address is one of i3's seeds) and tells it that it
    // follows i1; the node the cluster follows keeps serving and i2 exits naming it.
    let dir = tempfile::tempdir().unwrap();
    let mut first = NodeSpec::new("i1");
    first.db_path = Some(dir.path().join("i1.db"));
    let first = TestNode::start(first, dir.path());
    first.wait_ready(Duration::from_secs(60)).await;
    let before = write_and_read(&first, &first, "kept").await.unwrap();
    let mut lagging = NodeSpec::new("i2");
    lagging.db_path = Some(dir.path().join("i2.db"));
    lagging.extra = vec!["--fault-hook".into(), "wall-clock-offset=-3600000".into()];
    let mut third = NodeSpec::new("i3");
    third.seeds = vec![first.spec.cluster_addr(), lagging.cluster_addr()];
    let third = TestNode::start(third, dir.path());
    third.wait_ready(Duration::from_secs(60)).await;

    let mut lagging = TestNode::start(lagging, dir.path());
    assert_eq!(lagging.wait_exit(Duration::from_secs(60)).await, Some(1));
    assert!(
        lagging
            .log()
            .contains("refused by the cluster: node i1 is already its database node"),
        "{}",
        lagging.log()
    );
    third.wait_ready(Duration::from_secs(60)).await;
    first.wait_ready(Duration::from_secs(60)).await;
    let id = write_and_read(&third, &first, "after").await.unwrap();
    assert_eq!(third.get(&before).await.status, 200);
    assert_eq!(first.get(&id).await.status, 200);
    let c = third.cluster().await.unwrap();
    assert_eq!(c["db_members"], json!(["i1"]));
}
