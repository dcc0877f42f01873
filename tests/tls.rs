//! Inter-node TLS with certificates generated here: nodes with certificates from the cluster
//! CA form a cluster; a node with a certificate from another CA, or without TLS, never joins;
//! a certificate names the one node that may present it (a DNS subject alternative name equal
//! to `--name`), and a peer announcing another name is refused in both directions.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use customer_cluster::cluster::mesh::Transport;
use customer_cluster::config::TlsPaths;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use support::{NodeSpec, TestNode, id_of, wait_until};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// Writes `<dir>/<name>.{pem,key}` signed by `ca` (SANs 127.0.0.1, localhost and the node
/// name `name`), and `<dir>/<name>-ca.pem` with `trusted`'s certificate; returns the paths.
fn tls_files(dir: &Path, name: &str, ca: &Ca, trusted: &Ca) -> TlsPaths {
    let key = KeyPair::generate().unwrap();
    let sans = vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        name.to_string(),
    ];
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let write = |file: String, text: &str| -> PathBuf {
        let p = dir.join(file);
        std::fs::write(&p, text).unwrap();
        p
    };
    TlsPaths {
        cert: write(format!("{name}.pem"), &cert.pem()),
        key: write(format!("{name}.key"), &key.serialize_pem()),
        ca: write(format!("{name}-ca.pem"), &trusted.pem),
    }
}

/// The node flags for `paths`.
fn flags(paths: &TlsPaths) -> Vec<String> {
    let mut f = Vec::new();
    for (flag, path) in [
        ("--tls-cert", &paths.cert),
        ("--tls-key", &paths.key),
        ("--tls-ca", &paths.ca),
    ] {
        f.push(flag.to_string());
        f.push(path.display().to_string());
    }
    f
}

/// `tls_flags` for a certificate of `name`.
fn tls_flags(dir: &Path, name: &str, ca: &Ca, trusted: &Ca) -> Vec<String> {
    flags(&tls_files(dir, name, ca, trusted))
}

/// A TLS cluster of `names`, each with its own certificate from `ca`; the first hosts the
/// database, the others seed from it. Waits until every node lists them all.
async fn tls_cluster(dir: &Path, names: &[&str], ca: &Ca) -> Vec<TestNode> {
    let mut nodes: Vec<TestNode> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let mut spec = NodeSpec::new(name);
        spec.extra = tls_flags(dir, name, ca, ca);
        if i == 0 {
            spec.db_path = Some(dir.join("customers.db"));
        } else {
            spec.seeds = vec![nodes[0].spec.cluster_addr()];
        }
        nodes.push(TestNode::start(spec, dir));
    }
    let all: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    for node in &nodes {
        node.wait_ready(Duration::from_secs(60)).await;
        let what = format!("{} lists {all:?}", node.spec.name);
        wait_until(&what, Duration::from_secs(60), || async {
            (node.members().await? == all).then_some(())
        })
        .await;
    }
    nodes
}

#[tokio::test]
async fn only_nodes_with_a_certificate_from_the_cluster_ca_join() {
    let certs = tempfile::tempdir().unwrap();
    let cluster_ca = ca("cluster ca");
    let rogue_ca = ca("rogue ca");

    // A two-node TLS cluster, each node with its own certificate.
    let nodes = tls_cluster(certs.path(), &["t1", "t2"], &cluster_ca).await;
    assert!(nodes[0].log().contains("tls=true"));
    let id = id_of(&nodes[1].create("Over TLS", "tls@example.com").await);
    assert_eq!(nodes[0].get(&id).await.status, 200);

    // A node whose certificate comes from another CA (but which trusts the cluster CA).
    let mut rogue = NodeSpec::new("rogue");
    rogue.seeds = vec![nodes[0].spec.cluster_addr()];
    rogue.extra = tls_flags(certs.path(), "rogue", &rogue_ca, &cluster_ca);
    let rogue = TestNode::start(rogue, certs.path());
    // A node without TLS at all, with the right cookie.
    let mut plain = NodeSpec::new("plain");
    plain.seeds = vec![nodes[1].spec.cluster_addr()];
    let plain = TestNode::start(plain, certs.path());

    for intruder in [&rogue, &plain] {
        let what = format!("{} was refused at least twice", intruder.spec.name);
        wait_until(&what, Duration::from_secs(30), || async {
            let log = intruder.log();
            let refusals = log
                .lines()
                .filter(|l| {
                    l.contains("cannot reach peer") || l.contains("closed during the handshake")
                })
                .count();
            (refusals >= 2).then_some(())
        })
        .await;
    }
    for node in &nodes {
        assert_eq!(
            node.members().await.unwrap(),
            vec!["t1".to_string(), "t2".to_string()]
        );
    }
    assert_eq!(rogue.members().await.unwrap(), vec!["rogue".to_string()]);
    assert_eq!(plain.members().await.unwrap(), vec!["plain".to_string()]);
}

#[test]
fn a_node_with_unreadable_tls_files_refuses_to_start() {
    let out = std::process::Command::new(support::BIN)
        .args([
            "node",
            "--name",
            "x",
            "--cookie",
            support::COOKIE,
            "--cluster-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .args([
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.key",
            "--tls-ca",
            "/nonexistent-ca.pem",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLS certificate"));
}

#[test]
fn a_node_whose_certificate_does_not_carry_its_name_refuses_to_start() {
    let certs = tempfile::tempdir().unwrap();
    let ca = ca("cluster ca");
    let out = std::process::Command::new(support::BIN)
        .args(["node", "--name", "y", "--cookie", support::COOKIE])
        .args([
            "--cluster-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .args(tls_flags(certs.path(), "x", &ca, &ca))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not carry this node's name \"y\"") && stderr.contains("x"),
        "{stderr}"
    );
}

/// Counts `customer_cluster_preauth_refused_total{reason="name_mismatch"}` of `node`.
async fn name_mismatches(node: &TestNode) -> f64 {
    let r = node.client.get("/metrics").await.expect("metrics");
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| l.starts_with("customer_cluster_preauth_refused_total{"))
        .find(|l| l.contains("reason=\"name_mismatch\""))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_peer_with_a_valid_certificate_for_another_name_is_refused_both_ways() {
    let certs = tempfile::tempdir().unwrap();
    let cluster_ca = ca("cluster ca");
    // The impostor runs in this process (a node binary would refuse to start with it): a
    // cluster-CA certificate for "x", the right cookie, and the node name "y".
    let x = tls_files(certs.path(), "x", &cluster_ca, &cluster_ca);
    let (acceptor, transport) = customer_cluster::cluster::tls::load(&x, "x").unwrap();
    let impostor = support::in_process_peer("y", Some(acceptor), transport.clone()).await;
    assert!(matches!(transport, Transport::Tls { .. }));
    let impostor_addr = impostor.local_addr().to_string();

    // t1 dials the impostor as a seed: the challenge names "y", the certificate "x".
    let mut t1 = NodeSpec::new("t1");
    t1.db_path = Some(certs.path().join("customers.db"));
    t1.seeds = vec![impostor_addr.clone()];
    t1.extra = tls_flags(certs.path(), "t1", &cluster_ca, &cluster_ca);
    let t1 = TestNode::start(t1, certs.path());
    // t1 hosts the database and has a seed, so it serves only once it has met a real peer
    // (t2, below); until then its HTTP API answers, which is all the checks below need.
    wait_until("t1 answers HTTP", Duration::from_secs(30), || async {
        t1.client
            .get("/health")
            .await
            .ok()
            .filter(|r| r.status == 200)
    })
    .await;
    // (the generated certificates also carry the DNS name localhost)
    let refused = "announced node name \"y\" but its certificate is for localhost, x";
    wait_until(
        "t1 refused the impostor it dialed",
        Duration::from_secs(30),
        || async { t1.log().contains(refused).then_some(()) },
    )
    .await;
    // The impostor dials t1: its first frame names "y", its certificate "x".
    let before = name_mismatches(&t1).await;
    let t1_addr = t1.spec.cluster_addr();
    wait_until(
        "t1 refused the impostor that dialed it",
        Duration::from_secs(30),
        || async {
            let _ = impostor.dial(&t1_addr).await;
            (name_mismatches(&t1).await > before).then_some(())
        },
    )
    .await;
    let log = t1.log();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains(refused)),
        "no ERROR line naming both:\n{log}"
    );

    // Correct certificates still form a cluster with t1, and the impostor is never a member.
    let mut t2 = NodeSpec::new("t2");
    t2.seeds = vec![t1.spec.cluster_addr()];
    t2.extra = tls_flags(certs.path(), "t2", &cluster_ca, &cluster_ca);
    let t2 = TestNode::start(t2, certs.path());
    let both = vec!["t1".to_string(), "t2".to_string()];
    for node in [&t1, &t2] {
        node.wait_ready(Duration::from_secs(60)).await;
        wait_until("t1 and t2 only", Duration::from_secs(60), || async {
            (node.members().await? == both).then_some(())
        })
        .await;
    }
    // (placement may still be settling after t2's join: a 503 is retried)
    let created = wait_until("a create through t2", Duration::from_secs(60), || async {
        let r = t2.create("Named right", "named@example.com").await;
        (r.status == 201).then_some(r)
    })
    .await;
    let id = id_of(&created);
    assert_eq!(t1.get(&id).await.status, 200);
    assert!(!t1.log().contains("member joined peer=y"));
    impostor.stop();
}

#[tokio::test]
async fn a_database_node_that_only_shares_a_third_node_with_the_database_node_is_refused() {
    // With TLS, nodes dial only their seeds and admitted members (no transitive connects), so
    // j2 reaches only j3 and never sees j1: it can learn of j1 only from what j3 reports.
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("cluster ca");
    let mut db = NodeSpec::new("j1");
    db.db_path = Some(dir.path().join("j1.db"));
    db.extra = tls_flags(dir.path(), "j1", &ca, &ca);
    let db = TestNode::start(db, dir.path());
    let mut middle = NodeSpec::new("j3");
    middle.seeds = vec![db.spec.cluster_addr()];
    middle.extra = tls_flags(dir.path(), "j3", &ca, &ca);
    let middle = TestNode::start(middle, dir.path());
    middle.wait_ready(Duration::from_secs(60)).await;
    let before = id_of(&middle.create("Before", "before@example.com").await);

    let mut rogue = NodeSpec::new("j2");
    rogue.db_path = Some(dir.path().join("j2.db"));
    rogue.seeds = vec![middle.spec.cluster_addr()];
    rogue.extra = tls_flags(dir.path(), "j2", &ca, &ca);
    let mut rogue = TestNode::start(rogue, dir.path());

    assert_eq!(rogue.wait_exit(Duration::from_secs(60)).await, Some(1));
    assert!(
        rogue
            .log()
            .contains("refused by the cluster: node j1 is already its database node"),
        "{}",
        rogue.log()
    );
    assert!(
        !db.log().contains("j2"),
        "j1 and j2 were never connected: the refusal came through j3"
    );
    let conn = rusqlite::Connection::open(dir.path().join("j2.db")).unwrap();
    let stored: i64 = conn
        .query_row("SELECT COUNT(*) FROM customers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, 0);
    let after = id_of(&middle.create("After", "after@example.com").await);
    for id in [&before, &after] {
        assert_eq!(db.get(id).await.status, 200);
    }
}
