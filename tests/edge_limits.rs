//! What one client can hold at a real node's HTTP edge, over raw TCP from several loopback
//! addresses (127.0.0.1, 127.0.0.2, … are different sources to the node): half-sent request
//! heads cost little memory, one address cannot take every connection or every event stream,
//! wrong tokens are throttled per address without touching correct ones, `/ready` costs at most
//! a database ping a second, and the dashboard's headers keep other pages out.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::{NodeSpec, TestNode, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const READY: Duration = Duration::from_secs(30);
const TOKEN: &str = "edge-limits-test-token";

/// A node with a database and `extra` flags, ready.
async fn node(name: &str, dir: &std::path::Path, extra: &[&str]) -> TestNode {
    let mut spec = NodeSpec::new(name);
    spec.db_path = Some(dir.join(format!("{name}.db")));
    spec.extra = extra.iter().map(|s| s.to_string()).collect();
    let node = TestNode::start(spec, dir);
    node.wait_ready(READY).await;
    node
}

/// A connection to `node` from the loopback address `from` (e.g. `127.0.0.2`).
async fn connect_from(node: &TestNode, from: &str) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse::<SocketAddr>().unwrap())?;
    socket
        .connect(SocketAddr::from(([127, 0, 0, 1], node.spec.http_port)))
        .await
}

/// Reads one response head and its `content-length` body; `None` if the server closed first.
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

/// `GET path` from `from` with `headers` (lines ending in `\r\n`) on a fresh connection.
async fn get_from(
    node: &TestNode,
    from: &str,
    path: &str,
    headers: &str,
) -> Option<(u16, String, String)> {
    let mut s = connect_from(node, from).await.ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n{headers}\r\n",
        node.spec.http_port
    );
    s.write_all(req.as_bytes()).await.ok()?;
    tokio::time::timeout(Duration::from_secs(10), read_response(&mut s))
        .await
        .ok()
        .flatten()
}

fn bearer(token: &str) -> String {
    format!("authorization: Bearer {token}\r\n")
}

/// The node's resident memory, KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(node: &TestNode) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Sum of the series of `name` whose labels contain `label` (all of them for `""`).
fn sum_series(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

async fn metrics(node: &TestNode) -> String {
    let r = get_from(node, "127.0.0.9", "/metrics", "")
        .await
        .expect("metrics");
    assert_eq!(r.0, 200);
    r.2
}

#[tokio::test]
async fn two_hundred_half_sent_100_kb_heads_cost_the_node_under_20_mb_and_health_still_answers() {
    let dir = tempfile::tempdir().unwrap();
    // No per-address cap: this is about what each connection's head buffer may cost. A long
    // header timeout: the heads are not cut by it while memory is watched.
    let node = node(
        "heads",
        dir.path(),
        &[
            "--http-max-connections-per-client",
            "0",
            "--http-header-timeout-ms",
            "60000",
        ],
    )
    .await;
    // A head of a few KiB is served as usual.
    let big = format!("x-pad: {}\r\n", "a".repeat(8 * 1024));
    assert_eq!(
        get_from(&node, "127.0.0.1", "/health", &big)
            .await
            .map(|r| r.0),
        Some(200)
    );
    let before = rss_kib(&node);

    let pad = "a".repeat(100 * 1024);
    let mut flood = Vec::new();
    for _ in 0..200 {
        let port = node.spec.http_port;
        let pad = pad.clone();
        flood.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
            let head = format!("GET /health HTTP/1.1\r\nhost: x\r\nx-pad: {pad}");
            let _ =
                tokio::time::timeout(Duration::from_secs(10), s.write_all(head.as_bytes())).await;
            Some(s)
        }));
    }
    let mut open = Vec::new();
    for task in flood {
        if let Some(s) = task.await.unwrap() {
            open.push(s);
        }
    }
    assert!(open.len() >= 150, "only {} connections opened", open.len());

    // Watch the node's memory until every flood connection is closed by the node (431), or
    // for 10 s if the node keeps them.
    let watch_until = Instant::now() + Duration::from_secs(10);
    let mut peak = rss_kib(&node);
    while Instant::now() < watch_until {
        peak = peak.max(rss_kib(&node));
        let mut still_open = Vec::new();
        for mut s in open {
            let mut sink = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(1), s.read(&mut sink)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {}
                _ => still_open.push(s),
            }
        }
        open = still_open;
        if open.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    peak = peak.max(rss_kib(&node));
    let growth_mib = peak.saturating_sub(before) as f64 / 1024.0;
    assert!(
        growth_mib < 20.0,
        "200 half-sent 100 KB heads grew the node by {growth_mib:.1} MiB ({before} → {peak} KiB)"
    );
    assert_eq!(
        get_from(&node, "127.0.0.2", "/health", "")
            .await
            .map(|r| r.0),
        Some(200)
    );
}

#[tokio::test]
async fn one_address_gets_its_per_client_cap_of_connections_and_another_address_still_gets_health()
{
    let dir = tempfile::tempdir().unwrap();
    let node = node(
        "percl",
        dir.path(),
        &["--http-max-connections-per-client", "4"],
    )
    .await;
    // Four connections from 127.0.0.3, held (the node counts them as soon as it accepts).
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = connect_from(&node, "127.0.0.3").await.unwrap();
        let req = "GET /health HTTP/1.1\r\nhost: x\r\n\r\n";
        s.write_all(req.as_bytes()).await.unwrap();
        assert_eq!(read_response(&mut s).await.map(|r| r.0), Some(200));
        held.push(s);
    }
    let (status, head, body) = get_from(&node, "127.0.0.3", "/health", "")
        .await
        .expect("the fifth connection is answered");
    assert_eq!(status, 429, "{head}{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(body.contains("too_many_requests"), "{body}");

    assert_eq!(
        get_from(&node, "127.0.0.2", "/health", "")
            .await
            .map(|r| r.0),
        Some(200),
        "another address is served"
    );
    let text = metrics(&node).await;
    assert!(
        sum_series(
            &text,
            "customer_http_connections_refused_total",
            "reason=\"per_client\""
        ) >= 1.0,
        "{text}"
    );
    // A connection closed frees its address's slot.
    held.pop();
    wait_until("a slot of 127.0.0.3 frees", READY, || async {
        match get_from(&node, "127.0.0.3", "/health", "").await {
            Some((200, _, _)) => Some(()),
            _ => None,
        }
    })
    .await;
}

/// Opens `/v1/events` from `from`; the stream (when 200) and the status and body.
async fn open_stream(node: &TestNode, from: &str) -> (u16, String, Option<TcpStream>) {
    let mut s = connect_from(node, from).await.expect("connect");
    let req = format!(
        "GET /v1/events HTTP/1.1\r\nhost: x\r\n{}\r\n",
        bearer(TOKEN)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => panic!("no answer to /v1/events"),
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status: u16 = text.split(' ').nth(1).unwrap().parse().unwrap();
    if status == 200 {
        return (status, text, Some(s));
    }
    // An error: read its (small) JSON body to the end of its content-length.
    let length: usize = text
        .to_lowercase()
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let head_end = text.find("\r\n\r\n").unwrap() + 4;
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    (status, String::from_utf8_lossy(&buf).into_owned(), None)
}

#[tokio::test]
async fn event_streams_have_their_own_caps_answered_with_json_while_health_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(
        "streams",
        dir.path(),
        &[
            "--api-token",
            TOKEN,
            "--max-event-streams",
            "3",
            "--max-event-streams-per-client",
            "2",
        ],
    )
    .await;
    let mut streams = Vec::new();
    for from in ["127.0.0.4", "127.0.0.4", "127.0.0.5"] {
        let (status, text, s) = open_stream(&node, from).await;
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("text/event-stream"), "{text}");
        streams.push(s.unwrap());
    }
    let (status, text, _) = open_stream(&node, "127.0.0.4").await;
    assert_eq!(status, 429, "a third stream from one address: {text}");
    assert!(text.contains("\"too_many_requests\""), "{text}");
    let (status, text, _) = open_stream(&node, "127.0.0.6").await;
    assert_eq!(status, 503, "a fourth stream on the node: {text}");
    assert!(
        text.contains("\"unavailable\"") && text.contains("event streams"),
        "{text}"
    );
    assert!(text.to_lowercase().contains("retry-after: 1"), "{text}");

    for from in ["127.0.0.4", "127.0.0.6", "127.0.0.1"] {
        assert_eq!(
            get_from(&node, from, "/health", "").await.map(|r| r.0),
            Some(200),
            "/health from {from} while the streams are open"
        );
    }
    let text = metrics(&node).await;
    assert_eq!(
        sum_series(&text, "customer_event_streams_open", ""),
        3.0,
        "{text}"
    );
    assert!(
        sum_series(&text, "customer_event_streams_refused_total", "") >= 2.0,
        "{text}"
    );

    // A stream closed by its client gives its slot back.
    streams.pop();
    wait_until("a new stream once one closed", READY, || async {
        let (status, _, s) = open_stream(&node, "127.0.0.6").await;
        (status == 200).then_some(s)
    })
    .await;
}

#[tokio::test]
async fn repeated_wrong_tokens_from_one_address_are_told_to_back_off_while_correct_tokens_are_served()
 {
    let dir = tempfile::tempdir().unwrap();
    let node = node("throttle", dir.path(), &["--api-token", TOKEN]).await;
    let wrong = bearer("not-the-token-0123456789");
    let mut statuses = Vec::new();
    for _ in 0..25 {
        let r = get_from(&node, "127.0.0.7", "/v1/cluster", &wrong)
            .await
            .expect("answer");
        statuses.push((r.0, r.1.contains("retry-after: ")));
        assert!(r.2.contains("\"unauthorized\""), "{}", r.2);
    }
    // Still 401 (unauthenticated is unauthorized whatever the rate), with Retry-After past 20.
    assert!(
        statuses[..20].iter().all(|s| *s == (401, false)),
        "{statuses:?}"
    );
    assert!(
        statuses[20..].iter().all(|s| *s == (401, true)),
        "{statuses:?}"
    );
    // The right token from the same address is served at once; other addresses get 401s.
    assert_eq!(
        get_from(&node, "127.0.0.7", "/v1/cluster", &bearer(TOKEN))
            .await
            .map(|r| r.0),
        Some(200)
    );
    assert_eq!(
        get_from(&node, "127.0.0.8", "/v1/cluster", &wrong)
            .await
            .map(|r| r.0),
        Some(401)
    );
    let text = metrics(&node).await;
    assert!(
        sum_series(&text, "customer_http_unauthorized_total", "") >= 26.0,
        "{text}"
    );
    assert!(
        sum_series(&text, "customer_http_auth_throttled_total", "") >= 5.0,
        "{text}"
    );
}

#[tokio::test]
async fn ready_pings_the_database_at_most_about_once_a_second_and_the_dashboard_keeps_other_pages_out()
 {
    let dir = tempfile::tempdir().unwrap();
    let node = node("ready", dir.path(), &[]).await;
    let pings = |text: &str| sum_series(text, "customer_db_call_seconds_count", "op=\"ping\"");
    let before = pings(&metrics(&node).await);
    let started = Instant::now();
    for _ in 0..40 {
        assert_eq!(
            get_from(&node, "127.0.0.1", "/ready", "")
                .await
                .map(|r| r.0),
            Some(200)
        );
    }
    let seconds = started.elapsed().as_secs_f64().ceil();
    let made = pings(&metrics(&node).await) - before;
    assert!(
        made <= seconds + 1.0,
        "40 /ready calls in {seconds} s made {made} database pings"
    );

    // The dashboard: no framing, no sniffing, no referrer, connections to members only.
    let (status, head, _) = get_from(&node, "127.0.0.1", "/dashboard", "")
        .await
        .expect("dashboard");
    assert_eq!(status, 200);
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(head.contains("x-frame-options: deny"), "{head}");
    assert!(head.contains("referrer-policy: no-referrer"), "{head}");
    let csp = head
        .lines()
        .find_map(|l| l.strip_prefix("content-security-policy:"))
        .expect("a policy");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let own = format!("http://127.0.0.1:{}", node.spec.http_port);
    assert!(csp.contains(&format!("connect-src 'self' {own} ")), "{csp}");
    assert!(
        !csp.contains(" http: ") && !csp.contains("https:;"),
        "{csp}"
    );
    let (_, head, _) = get_from(&node, "127.0.0.1", "/dashboard/app.js", "")
        .await
        .expect("script");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");

    // /metrics: readable cross-origin by a member's page only.
    let (_, head, _) = get_from(
        &node,
        "127.0.0.1",
        "/metrics",
        "origin: http://evil.example\r\n",
    )
    .await
    .unwrap();
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    let (_, head, _) = get_from(
        &node,
        "127.0.0.1",
        "/metrics",
        &format!("origin: {own}\r\n"),
    )
    .await
    .unwrap();
    assert!(
        head.contains(&format!("access-control-allow-origin: {own}")),
        "{head}"
    );
}

/// The soft and hard open-files limits of `pid`, from `/proc/<pid>/limits`.
fn open_files_limits(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let mut values = line["Max open files".len()..].split_whitespace();
    (
        values.next().unwrap().to_owned(),
        values.next().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn the_node_raises_its_open_files_limit_and_fits_the_connection_cap_under_a_low_one() {
    let dir = tempfile::tempdir().unwrap();
    let started = |name: &str, limit: &str| {
        let mut spec = NodeSpec::new(name);
        spec.db_path = Some(dir.path().join(format!("{name}.db")));
        spec.wrapper = vec!["prlimit".into(), format!("--nofile={limit}"), "--".into()];
        TestNode::start(spec, dir.path())
    };
    // A soft limit below the hard one is raised to it.
    let raised = started("nofile1", "300:5000");
    raised.wait_ready(READY).await;
    assert_eq!(
        open_files_limits(raised.pid()),
        ("5000".to_owned(), "5000".to_owned())
    );
    assert!(
        !raised.log().contains("open-files limit"),
        "{}",
        raised.log()
    );
    // A hard limit too low for 4096 connections lowers the cap, with a WARN saying so.
    let low = started("nofile2", "400:400");
    low.wait_ready(READY).await;
    let log = low.log();
    assert!(
        log.contains("WARN")
            && log.contains("lowered to fit the open-files limit")
            && log.contains("cap=144"),
        "{log}"
    );
}

#[tokio::test]
async fn an_event_stream_ends_at_its_maximum_age_and_the_client_can_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(
        "age",
        dir.path(),
        &["--api-token", TOKEN, "--event-stream-max-age-s", "1"],
    )
    .await;
    let (status, text, stream) = open_stream(&node, "127.0.0.1").await;
    assert_eq!(status, 200, "{text}");
    let mut stream = stream.unwrap();
    // The chunked body ends (`0\r\n\r\n`) or the connection closes, well before 30 s.
    let mut seen = text.into_bytes();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if seen.ends_with(b"0\r\n\r\n") {
                return;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its maximum age");
    let (status, text, _) = open_stream(&node, "127.0.0.1").await;
    assert_eq!(status, 200, "a new stream: {text}");
}

#[test]
fn an_api_token_shorter_than_16_bytes_refuses_to_start_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("stderr");
    let child = std::process::Command::new(support::BIN)
        .args(["node", "--name", "short", "--api-token", "short-token"])
        .args(["--cookie", support::COOKIE, "--http-addr", "127.0.0.1:0"])
        .args(["--cluster-addr", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env_remove("CUSTOMER_CLUSTER_API_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("run the node");
    // Killed on every path if it started after all.
    let mut child = support::ChildGuard(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the node started with a short token"
        );
        std::thread::sleep(Duration::from_millis(25));
    };
    assert!(!status.success());
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(stderr.contains("at least 16 bytes"), "{stderr}");
}
