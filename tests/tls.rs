//! Inter-node TLS with certificates generated here: nodes with certificates from the cluster
//! CA form a cluster; a node with a certificate from another CA, or without TLS, never joins.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use support::{NodeSpec, TestCluster, TestNode, id_of, wait_until};

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

/// Writes `<dir>/<name>.{pem,key}` signed by `ca` (SANs 127.0.0.1 and localhost), and
/// `<dir>/<ca_file>` with `trusted`'s certificate; returns the TLS flags.
fn tls_flags(dir: &Path, name: &str, ca: &Ca, trusted: &Ca) -> Vec<String> {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let write = |file: String, text: &str| -> PathBuf {
        let p = dir.join(file);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cert_path = write(format!("{name}.pem"), &cert.pem());
    let key_path = write(format!("{name}.key"), &key.serialize_pem());
    let ca_path = write(format!("{name}-ca.pem"), &trusted.pem);
    vec![
        "--tls-cert".into(),
        cert_path.display().to_string(),
        "--tls-key".into(),
        key_path.display().to_string(),
        "--tls-ca".into(),
        ca_path.display().to_string(),
    ]
}

#[tokio::test]
async fn only_nodes_with_a_certificate_from_the_cluster_ca_join() {
    let certs = tempfile::tempdir().unwrap();
    let cluster_ca = ca("cluster ca");
    let rogue_ca = ca("rogue ca");

    // A two-node TLS cluster (the harness passes the same extra flags to both; each node
    // presents the same certificate, which is fine: identity is the CA signature plus the cookie).
    let flags = tls_flags(certs.path(), "member", &cluster_ca, &cluster_ca);
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = TestCluster::start("t", 2, &flag_refs).await;
    assert!(cluster.nodes[0].log().contains("tls=true"));
    let id = id_of(&cluster.nodes[1].create("Over TLS", "tls@example.com").await);
    assert_eq!(cluster.nodes[0].get(&id).await.status, 200);

    // A node whose certificate comes from another CA (but which trusts the cluster CA).
    let mut rogue = NodeSpec::new("rogue");
    rogue.seeds = vec![cluster.nodes[0].spec.cluster_addr()];
    rogue.extra = tls_flags(certs.path(), "rogue", &rogue_ca, &cluster_ca);
    let rogue = TestNode::start(rogue, cluster.dir.path());
    // A node without TLS at all, with the right cookie.
    let mut plain = NodeSpec::new("plain");
    plain.seeds = vec![cluster.nodes[1].spec.cluster_addr()];
    let plain = TestNode::start(plain, cluster.dir.path());

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
    for node in &cluster.nodes {
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

#[tokio::test]
async fn a_database_node_that_only_shares_a_third_node_with_the_database_node_is_refused() {
    // With TLS, nodes dial only their seeds and admitted members (no transitive connects), so
    // j2 reaches only j3 and never sees j1: it can learn of j1 only from what j3 reports.
    let dir = tempfile::tempdir().unwrap();
    let ca = ca("cluster ca");
    let flags = tls_flags(dir.path(), "member", &ca, &ca);
    let mut db = NodeSpec::new("j1");
    db.db_path = Some(dir.path().join("j1.db"));
    db.extra = flags.clone();
    let db = TestNode::start(db, dir.path());
    let mut middle = NodeSpec::new("j3");
    middle.seeds = vec![db.spec.cluster_addr()];
    middle.extra = flags.clone();
    let middle = TestNode::start(middle, dir.path());
    middle.wait_ready(Duration::from_secs(60)).await;
    let before = id_of(&middle.create("Before", "before@example.com").await);

    let mut rogue = NodeSpec::new("j2");
    rogue.db_path = Some(dir.path().join("j2.db"));
    rogue.seeds = vec![middle.spec.cluster_addr()];
    rogue.extra = flags;
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
