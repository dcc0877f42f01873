//! The edges of a real node process over raw TCP. HTTP: slow and idle clients are cut at
//! their timeouts, connections over the cap are refused at once while open ones keep working,
//! an open event stream is not taken for an idle connection, and `/metrics` neither grows with
//! what clients send nor lacks any catalogued metric. The cluster port: unauthenticated
//! connections are capped and timed out, counted, and summed up in the log instead of a line
//! each, while members keep serving and a new peer joins once slots free up.

mod support;

use std::time::{Duration, Instant};

use customer_cluster::telemetry::METRICS;
use support::{NodeSpec, TestNode, id_of, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const READY: Duration = Duration::from_secs(30);

/// A node with a database and `extra` flags (not waited for).
fn start(name: &str, dir: &std::path::Path, extra: &[&str]) -> TestNode {
    let mut spec = NodeSpec::new(name);
    spec.db_path = Some(dir.join(format!("{name}.db")));
    spec.extra = extra.iter().map(|s| s.to_string()).collect();
    TestNode::start(spec, dir)
}

/// A node with a database and `extra` flags, ready.
async fn node(name: &str, dir: &std::path::Path, extra: &[&str]) -> TestNode {
    let node = start(name, dir, extra);
    node.wait_ready(READY).await;
    node
}

async fn try_connect(node: &TestNode) -> Option<TcpStream> {
    TcpStream::connect(("127.0.0.1", node.spec.http_port))
        .await
        .ok()
}

async fn connect(node: &TestNode) -> TcpStream {
    try_connect(node).await.expect("connect")
}

/// Reads one HTTP/1.1 response (headers plus a `content-length` body) from a keep-alive
/// connection; `None` if the server closed it first.
async fn read_response(stream: &mut TcpStream) -> Option<(u16, String, String)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    Some((status, head, body))
}

/// Sends `method path` on a keep-alive connection and reads the answer.
async fn request(stream: &mut TcpStream, method: &str, path: &str) -> Option<(u16, String)> {
    let req = format!("{method} {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    read_response(stream).await.map(|(s, _, b)| (s, b))
}

/// Waits until the server closes `stream` (read returns EOF or an error), at most `limit`.
/// Returns how long that took, or `None` if it stayed open.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = [0u8; 1024];
    match tokio::time::timeout_at((started + limit).into(), stream.read(&mut sink)).await {
        Err(_) => None,
        Ok(Ok(0)) | Ok(Err(_)) => Some(started.elapsed()),
        Ok(Ok(_)) => panic!("the server answered a request it should have cut"),
    }
}

/// The value of a series in a Prometheus exposition (first line starting with `prefix`).
fn series(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

async fn metrics_text(node: &TestNode) -> String {
    let r = node.client.get("/metrics").await.expect("metrics");
    assert_eq!(r.status, 200);
    String::from_utf8(r.body.to_vec()).expect("utf-8")
}

#[tokio::test]
async fn a_client_dripping_its_headers_is_cut_at_the_header_timeout_and_an_idle_one_at_the_idle_timeout()
 {
    let dir = tempfile::tempdir().unwrap();
    let node = node(
        "slowloris",
        dir.path(),
        &[
            "--http-header-timeout-ms",
            "1000",
            "--http-idle-timeout-ms",
            "2000",
        ],
    )
    .await;

    // Slow headers: one header line every 200 ms, never the blank line that ends the head.
    let mut slow = connect(&node).await;
    let started = Instant::now();
    slow.write_all(b"GET /health HTTP/1.1\r\nhost: test\r\n")
        .await
        .unwrap();
    let drip = async {
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let line = format!("x-drip-{i}: {i}\r\n");
            if slow.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    };
    // The drip ends as soon as a write fails (the server closed the socket).
    tokio::time::timeout(Duration::from_secs(8), drip)
        .await
        .expect("a client dripping headers was still connected after 8 s (limit 1 s)");
    let cut_after = started.elapsed();
    assert!(
        cut_after >= Duration::from_millis(900),
        "cut too early: {cut_after:?}"
    );

    // A keep-alive connection served once, then silent: closed at the idle timeout, not at
    // the (shorter) header timeout.
    let mut idle = connect(&node).await;
    let (status, _) = request(&mut idle, "GET", "/health").await.expect("served");
    assert_eq!(status, 200);
    let after = closed_within(&mut idle, Duration::from_secs(8))
        .await
        .expect("an idle keep-alive connection was still open after 8 s (limit 2 s)");
    assert!(
        after >= Duration::from_millis(1500),
        "closed at {after:?}: the idle limit is 2 s"
    );

    // A client within the limits is served on the same connection several times.
    let mut good = connect(&node).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            request(&mut good, "GET", "/health").await.map(|r| r.0),
            Some(200)
        );
    }

    let text = metrics_text(&node).await;
    for kind in ["header", "idle"] {
        let counted = text.lines().any(|l| {
            l.starts_with("customer_http_timeouts_total")
                && l.contains(&format!("kind=\"{kind}\""))
                && !l.ends_with(" 0")
        });
        assert!(counted, "{kind} timeouts not counted:\n{text}");
    }
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_at_once_while_open_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    // Not `wait_ready`: its pooled keep-alive connection would hold one of the three slots.
    let node = start("capped", dir.path(), &["--http-max-connections", "3"]);
    let mut held = wait_until("three connections of our own are served", READY, || async {
        let mut set = Vec::new();
        for _ in 0..3 {
            let mut s = try_connect(&node).await?;
            let answered =
                tokio::time::timeout(Duration::from_secs(5), request(&mut s, "GET", "/ready"))
                    .await
                    .expect("a connection under the cap hung");
            match answered {
                Some((200, _)) => set.push(s),
                _ => return None,
            }
        }
        Some(set)
    })
    .await;

    // One more: answered 503 with Retry-After and closed, at once.
    let mut extra = connect(&node).await;
    let started = Instant::now();
    let (status, head, body) =
        tokio::time::timeout(Duration::from_secs(2), read_response(&mut extra))
            .await
            .expect("a refused connection hung")
            .expect("a refused connection got no answer");
    assert_eq!(status, 503, "{head}{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(body.contains("unavailable"), "{body}");
    assert!(
        closed_within(&mut extra, Duration::from_secs(2))
            .await
            .is_some()
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // The open connections keep working, and /metrics (through one of them) counts it all.
    for s in held.iter_mut() {
        assert_eq!(request(s, "GET", "/health").await.map(|r| r.0), Some(200));
    }
    let (status, text) = request(&mut held[0], "GET", "/metrics")
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    assert!(
        series(
            &text,
            "customer_http_connections_refused_total{node=\"capped\",reason=\"over_cap\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert_eq!(
        series(&text, "customer_http_connections_open"),
        Some(3.0),
        "{text}"
    );

    // A slot freed is a slot usable again.
    held.pop();
    wait_until(
        "a new connection is served after one closed",
        READY,
        || async {
            let mut s = connect(&node).await;
            match request(&mut s, "GET", "/health").await {
                Some((200, _)) => Some(()),
                _ => None,
            }
        },
    )
    .await;
}

#[tokio::test]
async fn made_up_methods_and_paths_do_not_grow_metrics_and_a_fresh_node_exports_every_metric() {
    let dir = tempfile::tempdir().unwrap();
    let node = node("labels", dir.path(), &[]).await;

    let fresh = metrics_text(&node).await;
    for (name, _, _) in METRICS {
        assert!(
            fresh
                .lines()
                .any(|l| l.starts_with(name) && !l.starts_with('#')),
            "a fresh node does not export {name}:\n{fresh}"
        );
    }

    let mut s = connect(&node).await;
    // Warm up the label sets that legitimate traffic creates.
    for _ in 0..2 {
        request(&mut s, "GET", "/health").await.expect("served");
        request(&mut s, "BREW", "/health").await.expect("served");
        request(&mut s, "GET", "/no/such/route-0")
            .await
            .expect("served");
        request(&mut s, "BREW", "/no/such/route-0")
            .await
            .expect("served");
    }
    let before = metrics_text(&node).await;
    for i in 0..200 {
        let method = format!("M{i}X");
        let path = format!("/made/up/{i}");
        let (status, _) = request(&mut s, &method, &path).await.expect("served");
        assert!(status >= 400, "{method} {path} -> {status}");
    }
    let after = metrics_text(&node).await;
    assert!(
        !after.contains("M17X") && !after.contains("/made/up"),
        "{after}"
    );
    assert!(after.contains("method=\"other\""), "{after}");
    assert!(after.contains("route=\"unmatched\""), "{after}");
    let series_count = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
    let added: Vec<&str> = after
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let key = l.rsplit_once(' ').map_or(*l, |(k, _)| k);
            !before.lines().any(|b| b.starts_with(key))
        })
        .collect();
    assert!(added.is_empty(), "new series: {added:#?}");
    assert_eq!(
        series_count(&after),
        series_count(&before),
        "200 made-up requests added series"
    );
}

#[tokio::test]
async fn an_open_event_stream_is_not_cut_at_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let node = node("streamer", dir.path(), &["--http-idle-timeout-ms", "1000"]).await;
    let mut stream = connect(&node).await;
    stream
        .write_all(b"GET /v1/events HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    // The head and the replay of the node's start-up events, until the stream goes quiet.
    let mut seen = Vec::new();
    let mut chunk = [0u8; 8192];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(300), stream.read(&mut chunk)).await
    {
        assert!(n > 0, "the stream closed while replaying");
        seen.extend_from_slice(&chunk[..n]);
    }
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains("lease_acquired"), "{seen}");
    // Quiet for well past the 1 s idle limit: a stream in flight is not an idle connection.
    assert_eq!(
        closed_within(&mut stream, Duration::from_millis(3000)).await,
        None,
        "the event stream was cut as if the connection were idle"
    );
}

/// The value of `customer_cluster_preauth_refused_total{reason=…}` (0 when absent).
fn preauth_refused(text: &str, reason: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("customer_cluster_preauth_refused_total{"))
        .find(|l| l.contains(&format!("reason=\"{reason}\"")))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

async fn connect_cluster(node: &TestNode) -> TcpStream {
    TcpStream::connect(("127.0.0.1", node.spec.cluster_port))
        .await
        .expect("connect to the cluster port")
}

/// Waits until the server closes `stream`; panics if it is still open after `limit`.
async fn closed(stream: &mut TcpStream, limit: Duration, what: &str) {
    let mut sink = [0u8; 64];
    match tokio::time::timeout(limit, stream.read(&mut sink)).await {
        Err(_) => panic!("{what}: still open after {limit:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("{what}: the node sent {n} bytes to an unauthenticated client"),
    }
}

#[tokio::test]
async fn the_cluster_port_caps_and_times_out_unauthenticated_connections_and_logs_a_summary() {
    const CAP: usize = 4;
    const OVER: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let limits = [
        "--cluster-max-unauthenticated",
        "4",
        "--cluster-handshake-timeout-ms",
        "6000",
    ];
    let n1 = node("gate1", dir.path(), &limits).await;
    let mut spec = NodeSpec::new("gate2");
    spec.seeds = vec![n1.spec.cluster_addr()];
    let n2 = TestNode::start(spec, dir.path());
    let both = vec!["gate1".to_string(), "gate2".to_string()];
    wait_until("gate2 joined gate1", READY, || async {
        (n1.members().await? == both && n2.members().await? == both).then_some(())
    })
    .await;

    // CAP idle connections take every slot ...
    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(connect_cluster(&n1).await);
    }
    wait_until("every slot is taken", READY, || async {
        let text = metrics_text(&n1).await;
        (series(&text, "customer_cluster_preauth_connections") == Some(CAP as f64)).then_some(())
    })
    .await;
    // ... so the next ones are closed at once, long before the idle ones' deadline.
    for i in 0..OVER {
        let mut extra = connect_cluster(&n1).await;
        closed(
            &mut extra,
            Duration::from_secs(60),
            &format!("connection {i} over the cap"),
        )
        .await;
    }
    // Members keep serving meanwhile: a write through gate2 and a read through gate1. (A 503
    // — a shard still being granted on a loaded machine — is "not applied": try again.)
    let mut attempt = 0;
    let gate2 = &n2;
    let id = wait_until("a write through gate2", READY, || {
        attempt += 1;
        let email = format!("gate{attempt}@example.com");
        let n2 = gate2;
        async move {
            let r = n2.create("Behind the gate", &email).await;
            (r.status == 201).then(|| id_of(&r))
        }
    })
    .await;
    assert_eq!(n1.get(&id).await.status, 200);
    assert_eq!(n1.members().await.unwrap(), both);

    // The idle ones are closed by the handshake deadline.
    for (i, conn) in idle.iter_mut().enumerate() {
        closed(
            conn,
            Duration::from_secs(60),
            &format!("idle connection {i}"),
        )
        .await;
    }
    // A frame header announcing 4 MiB before authentication is refused at once.
    let mut big = connect_cluster(&n1).await;
    big.write_all(&(4u64 << 20).to_be_bytes()).await.unwrap();
    closed(&mut big, Duration::from_secs(30), "a 4 MiB frame header").await;

    let text = wait_until("the refusals are counted", READY, || async {
        let text = metrics_text(&n1).await;
        (preauth_refused(&text, "bad_frame") >= 1.0).then_some(text)
    })
    .await;
    assert_eq!(preauth_refused(&text, "over_cap"), OVER as f64, "{text}");
    assert_eq!(preauth_refused(&text, "timeout"), CAP as f64, "{text}");
    assert_eq!(
        series(&text, "customer_cluster_preauth_connections"),
        Some(0.0)
    );

    // A new peer joins once slots are free.
    let mut spec = NodeSpec::new("gate3");
    spec.seeds = vec![n1.spec.cluster_addr()];
    let n3 = TestNode::start(spec, dir.path());
    let all = vec![
        "gate1".to_string(),
        "gate2".to_string(),
        "gate3".to_string(),
    ];
    wait_until("gate3 joined", READY, || async {
        (n1.members().await? == all && n3.members().await? == all).then_some(())
    })
    .await;

    // 15 refusals, a few summary lines (one at once, then at most one per 10 s), and no line
    // of the transport's own about any of these connections.
    let log = n1.log();
    let summaries = log
        .lines()
        .filter(|l| l.contains("unauthenticated cluster connection"))
        .count();
    let refusals = OVER + CAP + 1;
    assert!(
        (1..=3).contains(&summaries),
        "{summaries} summary lines for {refusals} refusals:\n{log}"
    );
    assert!(
        !log.contains("before the peer named itself") && !log.contains("framing error"),
        "the transport logged refused connections itself:\n{log}"
    );
}
