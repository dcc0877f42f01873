//! What operators see: Prometheus metrics that move with traffic, JSON logs that name the node
//! and the request, secrets that never reach logs, and a README that documents every metric.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use customer_cluster::client::HttpClient;
use customer_cluster::telemetry::METRICS;
use hyper::Method;
use serde_json::{Value, json};
use support::{NodeSpec, TestNode, id_of, wait_until};

const READY: Duration = Duration::from_secs(30);

/// Parses the Prometheus text format into `series → value` (series = name plus sorted labels).
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.trim_end_matches('}');
                let mut parts: Vec<&str> = labels
                    .split(',')
                    .filter(|p| !p.starts_with("node="))
                    .collect();
                parts.sort_unstable();
                if parts.is_empty() {
                    name.to_owned()
                } else {
                    format!("{name}{{{}}}", parts.join(","))
                }
            }
            None => series.to_owned(),
        };
        out.insert(key, value);
    }
    out
}

async fn scrape(node: &TestNode) -> (String, HashMap<String, f64>) {
    let r = node.client.get("/metrics").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain")
    );
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    let parsed = parse_exposition(&text);
    (text, parsed)
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_parse_and_named_series_move_with_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = NodeSpec::new("metrics");
    spec.db_path = Some(dir.path().join("m.db"));
    let node = TestNode::start(spec, dir.path());
    node.wait_ready(READY).await;
    let (_, before) = scrape(&node).await;

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(id_of(&node.create("M", &format!("m{i}@example.com")).await));
    }
    for id in &ids[..2] {
        assert_eq!(node.get(id).await.status, 200);
    }
    assert_eq!(
        node.get("01900000-0000-7000-8000-000000000000")
            .await
            .status,
        404
    );
    node.patch(&ids[0], json!({"name": "M2"})).await;

    let (text, after) = scrape(&node).await;
    let created =
        r#"customer_http_requests_total{method="POST",route="/v1/customers",status="201"}"#;
    let got =
        r#"customer_http_requests_total{method="GET",route="/v1/customers/{id}",status="200"}"#;
    let missing =
        r#"customer_http_requests_total{method="GET",route="/v1/customers/{id}",status="404"}"#;
    assert_eq!(
        value(&after, created) - value(&before, created),
        3.0,
        "{text}"
    );
    assert_eq!(value(&after, got) - value(&before, got), 2.0);
    assert_eq!(value(&after, missing) - value(&before, missing), 1.0);
    let latency = r#"customer_http_request_seconds_count{method="POST",route="/v1/customers"}"#;
    assert_eq!(value(&after, latency) - value(&before, latency), 3.0);
    assert!(
        value(&after, "customer_actors_activated_total")
            - value(&before, "customer_actors_activated_total")
            >= 3.0
    );
    assert!(value(&after, "customer_actors_active") >= 3.0);
    assert!(
        value(&after, "customer_db_batch_size_count")
            - value(&before, "customer_db_batch_size_count")
            >= 4.0
    );
    assert!(value(&after, "customer_db_commit_seconds_count") > 0.0);
    assert_eq!(value(&after, "customer_cluster_members"), 1.0);
    assert!(text.contains("# HELP customer_http_requests_total"));
    assert!(
        text.contains("node=\"metrics\""),
        "every series carries the node label"
    );
}

#[tokio::test]
async fn json_logs_name_the_node_and_the_request_and_never_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let cookie_file = dir.path().join("cookie");
    let token_file = dir.path().join("tokens");
    std::fs::write(&cookie_file, "cookie-SECRET-1234\n").unwrap();
    std::fs::write(&token_file, "token-SECRET-5678\n").unwrap();
    let mut spec = NodeSpec::new("jsonlogs");
    spec.db_path = Some(dir.path().join("j.db"));
    spec.cookie = String::new();
    spec.extra = vec![
        "--log-format".into(),
        "json".into(),
        "--log-level".into(),
        "debug".into(),
        "--cookie-file".into(),
        cookie_file.display().to_string(),
        "--api-token-file".into(),
        token_file.display().to_string(),
    ];
    let node = TestNode::start(spec, dir.path());
    let authed = HttpClient::new(
        &format!("127.0.0.1:{}", node.spec.http_port),
        Some("token-SECRET-5678".into()),
        Duration::from_secs(10),
    )
    .unwrap();
    wait_until("node answers", READY, || async {
        authed
            .get("/v1/cluster")
            .await
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ())
    })
    .await;
    let r = authed
        .send(
            Method::GET,
            "/v1/customers?limit=1",
            None,
            &[("x-request-id", "trace-abc-42")],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id"), Some("trace-abc-42"));
    let unauthenticated = node.client.get("/v1/customers").await.unwrap();
    assert_eq!(unauthenticated.status, 401);

    let log = wait_until("the request is logged", READY, || async {
        let log = node.log();
        log.contains("trace-abc-42").then_some(log)
    })
    .await;
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(v["node"], "jsonlogs", "{line}");
        lines += 1;
    }
    assert!(lines > 3);
    assert!(!log.contains("SECRET"), "a secret reached the log");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", node.pid())).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("SECRET"),
        "a secret is visible in ps"
    );
}

#[test]
fn the_readme_documents_every_metric() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for (name, _, _) in METRICS {
        assert!(readme.contains(name), "README.md does not document {name}");
    }
}
