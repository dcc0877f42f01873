//! The cluster port against strangers, with a real node process and raw sockets from other
//! loopback addresses (127.0.0.2, 127.0.0.3 stand for hosts that are not members):
//!
//! * a flood of silent connections from one address, reconnected as soon as they close, does
//!   not keep a new node out (that address holds at most its share of the slots);
//! * repeated wrong-cookie handshakes from one address are counted and refused for a backoff,
//!   while members still join from their own address.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream, NodeServer, NodeServerMessage};
use support::{NodeSpec, TestNode, wait_until};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

const READY: Duration = Duration::from_secs(30);

fn start(name: &str, dir: &std::path::Path, seeds: Vec<String>, db: bool) -> TestNode {
    let mut spec = NodeSpec::new(name);
    if db {
        spec.db_path = Some(dir.join(format!("{name}.db")));
    }
    spec.seeds = seeds;
    TestNode::start(spec, dir)
}

/// A TCP connection to `node`'s cluster port from the loopback address `from`.
async fn connect_from(from: &str, node: &TestNode) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse::<SocketAddr>().unwrap())?;
    socket
        .connect(
            format!("127.0.0.1:{}", node.spec.cluster_port)
                .parse()
                .unwrap(),
        )
        .await
}

async fn metrics_text(node: &TestNode) -> String {
    match node.client.get("/metrics").await {
        Ok(r) if r.status == 200 => String::from_utf8_lossy(&r.body).into_owned(),
        _ => String::new(),
    }
}

/// The value of the series `name` (with `reason="…"` if given; 0 when absent).
fn value(text: &str, name: &str, reason: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .find(|l| reason.is_none_or(|r| l.contains(&format!("reason=\"{r}\""))))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

/// Keeps `n` connections from `from` open to `node`'s cluster port, sending nothing and
/// reconnecting each as soon as it closes, until `stop` is set.
fn flood(from: &'static str, node: &TestNode, n: usize, stop: Arc<AtomicBool>) {
    let port = node.spec.cluster_port;
    for _ in 0..n {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let socket = TcpSocket::new_v4().unwrap();
                socket
                    .bind(format!("{from}:0").parse::<SocketAddr>().unwrap())
                    .unwrap();
                let addr = format!("127.0.0.1:{port}").parse().unwrap();
                let Ok(mut conn) = socket.connect(addr).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let mut sink = [0u8; 64];
                // Held until the node closes it (or the test ends).
                let _ = tokio::time::timeout(Duration::from_secs(60), conn.read(&mut sink)).await;
            }
        });
    }
}

#[tokio::test]
async fn silent_connections_from_one_address_do_not_keep_a_new_node_out() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = start("port1", dir.path(), Vec::new(), true);
    n1.wait_ready(READY).await;

    // 64 silent connections from 127.0.0.2 (as many as all the slots), reconnected at once.
    let stop = Arc::new(AtomicBool::new(false));
    flood("127.0.0.2", &n1, 64, stop.clone());
    wait_until("the flood meets the per-address cap", READY, || async {
        let text = metrics_text(&n1).await;
        (value(
            &text,
            "customer_cluster_preauth_refused_total",
            Some("per_source"),
        ) >= 10.0)
            .then_some(())
    })
    .await;

    // A new node joins meanwhile (from 127.0.0.1, an address n1 has not met yet).
    let n2 = start("port2", dir.path(), vec![n1.spec.cluster_addr()], false);
    let both = vec!["port1".to_string(), "port2".to_string()];
    wait_until("port2 joined during the flood", READY, || async {
        (n1.members().await? == both && n2.members().await? == both).then_some(())
    })
    .await;
    let text = metrics_text(&n1).await;
    stop.store(true, Ordering::Relaxed);
    // The flood held at most its share: never more than 4 of the slots at once.
    assert!(
        value(&text, "customer_cluster_preauth_connections", None) <= 4.0 + 2.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "customer_cluster_preauth_refused_total",
            Some("over_cap")
        ),
        0.0,
        "{text}"
    );
}

/// A raw connection handed to an in-process NodeServer as its transport.
struct Raw(TcpStream);

impl ClusterBidiStream for Raw {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (r, w) = self.0.into_split();
        (Box::new(r), Box::new(w))
    }
}

#[tokio::test]
async fn repeated_wrong_cookie_handshakes_from_one_address_are_counted_and_backed_off() {
    let dir = tempfile::tempdir().unwrap();
    let n1 = start("guess1", dir.path(), Vec::new(), true);
    n1.wait_ready(READY).await;

    // A ractor_cluster node with the wrong cookie, dialing from 127.0.0.3.
    let guesser = NodeServer::new(
        0,
        "not-the-cluster-cookie-9876".into(),
        "guesser#1".into(),
        "127.0.0.3".into(),
        Some(customer_cluster::cluster::tls::closed_listener().unwrap()),
        None,
    )
    .with_listen_addr("127.0.0.1".parse().unwrap());
    let (guesser, handle) = ractor::Actor::spawn(None, guesser, ()).await.unwrap();

    for attempt in 1..=5 {
        let conn = connect_from("127.0.0.3", &n1).await.unwrap();
        guesser
            .cast(NodeServerMessage::ConnectionOpenedExternal {
                stream: Box::new(Raw(conn)),
                is_server: false,
            })
            .unwrap();
        wait_until("the failed handshake is counted", READY, || async {
            let text = metrics_text(&n1).await;
            (value(&text, "customer_cluster_auth_failures_total", None) >= attempt as f64)
                .then_some(())
        })
        .await;
    }
    // The sixth connection from that address is closed at once, before any byte.
    let mut refused = connect_from("127.0.0.3", &n1).await.unwrap();
    let mut sink = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), refused.read(&mut sink))
        .await
        .expect("a backed-off address was not closed at once");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the node answered: {read:?}"
    );
    let text = metrics_text(&n1).await;
    assert!(
        value(
            &text,
            "customer_cluster_preauth_refused_total",
            Some("backoff")
        ) >= 1.0,
        "{text}"
    );
    // Other addresses are not affected: a member joins from 127.0.0.1 meanwhile.
    let n2 = start("guess2", dir.path(), vec![n1.spec.cluster_addr()], false);
    let both = vec!["guess1".to_string(), "guess2".to_string()];
    wait_until("guess2 joined", READY, || async {
        (n1.members().await? == both && n2.members().await? == both).then_some(())
    })
    .await;
    // The log names the address once, at the start of its backoff.
    let log = n1.log();
    assert!(
        log.contains("127.0.0.3 failed the cluster cookie check repeatedly"),
        "{log}"
    );
    guesser.stop(None);
    let _ = handle.await;
}
