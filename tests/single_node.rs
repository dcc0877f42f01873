//! One real node process on a real SQLite file: durability across SIGKILL, concurrency on one
//! customer, graceful stop, and the CLI's behaviour on bad input.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use hyper::Method;
use serde_json::{Value, json};
use support::{BIN, NodeSpec, TestNode, id_of};

const READY: Duration = Duration::from_secs(30);

fn db_node(dir: &tempfile::TempDir, name: &str) -> TestNode {
    let mut spec = NodeSpec::new(name);
    spec.db_path = Some(dir.path().join(format!("{name}.db")));
    TestNode::start(spec, dir.path())
}

#[tokio::test]
async fn every_acknowledged_write_survives_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = db_node(&dir, "durable");
    node.wait_ready(READY).await;

    // expected: id -> Some(body) for live customers, None for deleted ones.
    let mut expected: HashMap<String, Option<Value>> = HashMap::new();
    for i in 0..40 {
        let r = node
            .create(&format!("Customer {i}"), &format!("c{i}@example.com"))
            .await;
        assert_eq!(r.status, 201);
        expected.insert(id_of(&r), Some(r.json().unwrap()));
    }
    let ids: Vec<String> = expected.keys().cloned().collect();
    for (n, id) in ids.iter().enumerate() {
        match n % 4 {
            0 => {
                let r = node
                    .patch(
                        id,
                        json!({"name": format!("Renamed {n}"), "phone": "+1 555 0100"}),
                    )
                    .await;
                assert_eq!(r.status, 200);
                expected.insert(id.clone(), Some(r.json().unwrap()));
            }
            1 => {
                let r = node
                    .client
                    .send(Method::DELETE, &format!("/v1/customers/{id}"), None, &[])
                    .await
                    .unwrap();
                assert_eq!(r.status, 204);
                expected.insert(id.clone(), None);
            }
            _ => {}
        }
    }

    node.kill();
    node.restart();
    node.wait_ready(READY).await;

    for (id, want) in &expected {
        let r = node.get(id).await;
        match want {
            Some(body) => {
                assert_eq!(r.status, 200, "{id} lost");
                assert_eq!(&r.json::<Value>().unwrap(), body, "{id} changed");
            }
            None => assert_eq!(r.status, 404, "deleted {id} came back"),
        }
    }
    let live = expected.values().filter(|v| v.is_some()).count();
    assert_eq!(node.list_all().await.len(), live);
}

#[tokio::test]
async fn fifty_concurrent_patches_to_one_customer_are_serialised() {
    let dir = tempfile::tempdir().unwrap();
    let node = db_node(&dir, "concurrent");
    node.wait_ready(READY).await;
    let id = id_of(&node.create("Contended", "contended@example.com").await);

    let mut tasks = Vec::new();
    for i in 0..50 {
        let client = node.client.clone();
        let path = format!("/v1/customers/{id}");
        tasks.push(tokio::spawn(async move {
            let body = json!({"name": format!("writer {i}")});
            client.json(Method::PATCH, &path, &body, &[]).await
        }));
    }
    let mut acknowledged = 0u64;
    let mut versions = Vec::new();
    for t in tasks {
        let r = t.await.unwrap().expect("request failed at transport level");
        match r.status.as_u16() {
            200 => {
                acknowledged += 1;
                versions.push(r.json::<Value>().unwrap()["version"].as_u64().unwrap());
            }
            // Failing cleanly means a JSON error body with a retryable or conflict status.
            409 | 503 | 504 => {
                let v: Value = r.json().unwrap();
                assert!(v["error"]["code"].is_string(), "unclean failure: {v}");
            }
            other => panic!("unexpected status {other}: {:?}", r.body),
        }
    }
    assert!(acknowledged > 0);
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(
        versions.len() as u64,
        acknowledged,
        "two writes got the same version"
    );
    let final_version = node.get(&id).await.json::<Value>().unwrap()["version"]
        .as_u64()
        .unwrap();
    assert_eq!(final_version, acknowledged + 1);
}

#[tokio::test]
async fn sigterm_stops_gracefully_with_exit_code_0_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = db_node(&dir, "graceful");
    node.wait_ready(READY).await;
    let id = id_of(&node.create("Kept", "kept@example.com").await);
    assert_eq!(node.terminate(Duration::from_secs(20)), Some(0));
    assert!(node.log().contains("node stopped"), "{}", node.log());
    node.restart();
    node.wait_ready(READY).await;
    assert_eq!(node.get(&id).await.status, 200);
}

#[test]
fn a_node_refuses_to_start_without_a_cookie_or_with_bad_settings() {
    let cases: [&[&str]; 5] = [
        &["node", "--name", "x"],
        &["node", "--name", "x", "--cookie", "  "],
        &["node", "--name", "bad name", "--cookie", support::COOKIE],
        &["node", "--name", "x", "--cookie", "test-cookie"],
        &[
            "node",
            "--name",
            "x",
            "--cookie",
            support::COOKIE,
            "--config",
            "/nonexistent/cc.toml",
        ],
    ];
    for args in cases {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("CUSTOMER_CLUSTER_COOKIE")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
}

#[test]
fn the_cli_exits_non_zero_with_a_message_when_the_node_is_unreachable_or_input_is_bad() {
    let port = support::free_port();
    let node = format!("127.0.0.1:{port}");
    let out = Command::new(BIN)
        .args([
            "get",
            "01900000-0000-7000-8000-000000000000",
            "--node",
            &node,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach node"));
    let out = Command::new(BIN)
        .args(["update", "x", "--node", &node])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to update"));
}

#[tokio::test]
async fn the_cli_does_crud_against_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = db_node(&dir, "cli");
    node.wait_ready(READY).await;
    let url = format!("127.0.0.1:{}", node.spec.http_port);
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--node", &url])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&[
        "create",
        "--name",
        "Cli User",
        "--email",
        "cli@example.com",
        "--json",
    ]);
    assert!(ok, "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let (ok, out, _) = run(&["update", &id, "--phone", "+1 555 0199"]);
    assert!(
        ok && out.contains("+1 555 0199") && out.contains("version:    2"),
        "{out}"
    );
    let (ok, _, err) = run(&["update", &id, "--name", "X", "--if-match", "1"]);
    assert!(!ok && err.contains("412"), "{err}");
    // The ETag exactly as the node sent it is a valid --if-match.
    let (ok, out, err) = run(&["update", &id, "--name", "Tagged", "--if-match", "\"2\""]);
    assert!(ok && out.contains("version:    3"), "{out}{err}");
    let (ok, out, err) = run(&["update", &id, "--name", "Weak", "--if-match", "W/\"3\""]);
    assert!(ok && out.contains("version:    4"), "{out}{err}");
    let (ok, out, _) = run(&["list"]);
    assert!(
        ok && out.contains(&id) && out.contains("1 customer(s)"),
        "{out}"
    );
    let (ok, out, _) = run(&["status"]);
    assert!(
        ok && out.contains("cli*") && out.contains("100.0%"),
        "{out}"
    );
    let (ok, _, _) = run(&["delete", &id]);
    assert!(ok);
    let (ok, _, err) = run(&["get", &id]);
    assert!(!ok && err.contains("404"), "{err}");
}

#[tokio::test]
async fn status_watch_keeps_refreshing_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let node = db_node(&dir, "watched");
    node.wait_ready(READY).await;
    let out_path = dir.path().join("watch.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let _child = support::ChildGuard(
        Command::new(BIN)
            .args([
                "status",
                "--watch",
                "1",
                "--node",
                &format!("127.0.0.1:{}", node.spec.http_port),
            ])
            .stdout(out)
            .spawn()
            .unwrap(),
    );
    let refreshes = support::wait_until("two refreshes", Duration::from_secs(20), || async {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        let n = text.matches("cluster as seen by watched").count();
        (n >= 2).then_some(n)
    })
    .await;
    assert!(refreshes >= 2);
    let text = std::fs::read_to_string(&out_path).unwrap();
    assert!(
        !text.contains('\x1b'),
        "clear-screen codes belong on a terminal, not in a file: {text:?}"
    );
}

#[tokio::test]
async fn status_into_a_pipe_closed_early_ends_quietly_also_when_watching() {
    let dir = tempfile::tempdir().unwrap();
    let node = db_node(&dir, "piped");
    node.wait_ready(READY).await;
    let url = format!("127.0.0.1:{}", node.spec.http_port);
    for args in [&["status"][..], &["status", "--watch", "1"], &["list"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        // spawn, not output(): output() would replace stdout with a pipe of its own.
        // kill_on_drop: a watch that did not notice its reader left is killed, not leaked.
        let child = tokio::process::Command::new(BIN)
            .args(args)
            .args(["--node", &url])
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("{args:?} went on writing into a closed pipe"))
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

#[test]
fn a_node_whose_ports_are_taken_exits_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let free = support::free_port();
    for (cluster, http, what) in [(port, free, "cluster connections"), (free, port, "HTTP")] {
        let out = Command::new(BIN)
            .args(["node", "--name", "x", "--cookie", support::COOKIE])
            .args([
                "--cluster-addr",
                &format!("127.0.0.1:{cluster}"),
                "--http-addr",
                &format!("127.0.0.1:{http}"),
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("cannot listen for {what}")),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn bench_cleanup_removes_only_the_customers_the_run_created() {
    let dir = tempfile::tempdir().unwrap();
    let node = db_node(&dir, "bench");
    node.wait_ready(READY).await;
    let keep = node.create("Keep Me", "keep@example.com").await;
    assert_eq!(keep.status, 201);
    let url = format!("127.0.0.1:{}", node.spec.http_port);
    let out = tokio::process::Command::new(BIN)
        .args([
            "bench",
            "--nodes",
            &url,
            "--duration-s",
            "1",
            "--warmup-s",
            "0",
        ])
        .args(["--keys", "30", "--concurrency", "4"])
        .args(["--mix", "get=50,create=30,delete=20", "--cleanup"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed: usize = stdout
        .split("cleanup: removed the ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cleanup line in {stdout}"));
    assert!(removed >= 30, "{stdout}");
    let left = node.list_all().await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["email"], "keep@example.com");
}

#[tokio::test]
async fn the_failover_workload_verifies_every_acknowledged_write_and_reports_events() {
    let dir = tempfile::tempdir().unwrap();
    let node = db_node(&dir, "wl");
    node.wait_ready(READY).await;
    let events = dir.path().join("events");
    let now_ms = customer_cluster::clock::now_ms();
    std::fs::write(&events, format!("{now_ms} restart wl\n")).unwrap();
    let report_path = dir.path().join("failover.json");
    let out = tokio::process::Command::new(BIN)
        .args(["workload", "--nodes"])
        .arg(format!("http://127.0.0.1:{}", node.spec.http_port))
        .args([
            "--customers",
            "6",
            "--concurrency",
            "2",
            "--duration-s",
            "2",
        ])
        .arg("--events")
        .arg(&events)
        .arg("--out")
        .arg(&report_path)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("workload running"), "{stderr}");
    for line in [
        "restart  wl   detected after",
        "stale reads: 0",
        "acknowledged writes lost: 0",
    ] {
        assert!(stdout.contains(line), "no {line:?} in {stdout}");
    }
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    assert!(report["writes_ok"].as_u64().unwrap() > 0, "{report}");
    assert!(report["reads_ok"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["owners_after"]["wl"], 6, "{report}");
    assert_eq!(report["events"][0]["event"]["kind"], "restart", "{report}");
    let stored = node.list_all().await;
    let final_names: Vec<&str> = stored.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(final_names.len(), 6);
    assert!(
        final_names.iter().all(|n| *n != "w0"),
        "every customer was written: {final_names:?}"
    );
}

/// The value of a series in the node's `/metrics` (the first line starting with `name`).
async fn metric(node: &TestNode, name: &str) -> f64 {
    let r = node.client.get("/metrics").await.expect("metrics");
    let text = String::from_utf8(r.body.to_vec()).expect("utf-8");
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

#[tokio::test]
async fn a_scan_past_max_active_customers_passivates_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = NodeSpec::new("lru");
    spec.db_path = Some(dir.path().join("lru.db"));
    spec.extra = vec!["--max-active-customers".into(), "10".into()];
    let node = TestNode::start(spec, dir.path());
    node.wait_ready(READY).await;
    const LRU: &str = "customer_cluster_lru_passivations_total";
    assert_eq!(metric(&node, LRU).await, 0.0, "registered at start");

    let mut created = Vec::new();
    for i in 0..50 {
        let r = node.create("Scan", &format!("scan{i}@example.com")).await;
        assert_eq!(r.status, 201);
        created.push(r.json::<Value>().expect("json body"));
    }
    // Each create activates an actor: 50 activations under a cap of 10.
    assert_eq!(metric(&node, LRU).await, 40.0);
    assert!(metric(&node, "customer_actors_active").await <= 10.0);

    // A scan in creation order finds none of its ids active: 50 more, and every read is right.
    for c in &created {
        let r = node.get(c["id"].as_str().unwrap()).await;
        assert_eq!(r.status, 200);
        assert_eq!(&r.json::<Value>().expect("json body"), c);
    }
    assert_eq!(metric(&node, LRU).await, 90.0);
    assert!(metric(&node, "customer_actors_active").await <= 10.0);
}
