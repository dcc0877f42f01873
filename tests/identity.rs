//! A cluster certificate is its node's identity for every message, not only the handshake:
//! a peer holding a valid certificate (and the cookie) for one node cannot announce another
//! node's actors, answer a greeting in its name, or release and grant its shard leases.
//!
//! The impostor runs in this process (a `Mesh` with its own certificate; this process can
//! spawn actors under any name and join any group), against real node processes. Its own
//! file: every actor this process spawns is announced to every session it opens.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use customer_cluster::cluster::dbnode::SqliteRole;
use customer_cluster::cluster::protocol::{
    DATABASE_GROUP, DatabaseMsg, NodeInfo, PROTOCOL_VERSION, REGISTRY_GROUP, RegistryMsg, call,
    registry_name,
};
use customer_cluster::codec::Wire;
use customer_cluster::config::TlsPaths;
use customer_cluster::storage::{Grant, Holder, Release, ShardLease};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use support::{NodeSpec, TestNode, id_of, wait_until};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "cluster ca");
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// `<dir>/<name>.{pem,key}` from `ca` for the node `name` (and 127.0.0.1, localhost).
fn tls_files(dir: &Path, name: &str, ca: &Ca) -> TlsPaths {
    let key = KeyPair::generate().unwrap();
    let sans = vec!["127.0.0.1".into(), "localhost".into(), name.to_string()];
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
        ca: write(format!("{name}-ca.pem"), &ca.pem),
    }
}

fn tls_node(dir: &Path, name: &str, ca: &Ca) -> NodeSpec {
    let paths = tls_files(dir, name, ca);
    let mut spec = NodeSpec::new(name);
    for (flag, path) in [
        ("--tls-cert", &paths.cert),
        ("--tls-key", &paths.key),
        ("--tls-ca", &paths.ca),
    ] {
        spec.extra.push(flag.into());
        spec.extra.push(path.display().to_string());
    }
    spec
}

/// `customer_cluster_session_refused_total{reason}` of `node`.
async fn sessions_refused(node: &TestNode, reason: &str) -> f64 {
    let Ok(r) = node.client.get("/metrics").await else {
        return 0.0;
    };
    let label = format!("reason=\"{reason}\"");
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter(|l| l.starts_with("customer_cluster_session_refused_total{"))
        .find(|l| l.contains(&label))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

/// The Database actor of a node as this process sees it, once a session announced it.
async fn remote_database() -> ActorRef<DatabaseMsg> {
    wait_until(
        "a remote database actor",
        Duration::from_secs(30),
        || async {
            ractor::pg::get_members(&DATABASE_GROUP.to_owned())
                .into_iter()
                .find(|c| !c.get_id().is_local() && c.get_status() < ractor::ActorStatus::Stopping)
                .map(ActorRef::from)
        },
    )
    .await
}

async fn lease_table(db: &ActorRef<DatabaseMsg>) -> Vec<ShardLease> {
    call(db, Duration::from_secs(5), |r| {
        DatabaseMsg::LeaseTable(Wire::ok(()), r)
    })
    .await
    .expect("lease table")
}

/// A Registry that answers every greeting as `t2`, a newer process start than any.
struct ForgedRegistry;

impl Actor for ForgedRegistry {
    type Msg = RegistryMsg;
    type State = String;
    type Arguments = String;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        addr: String,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(addr)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        message: Self::Msg,
        addr: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let RegistryMsg::Hello(_, reply) = message {
            let _ = reply.send(Wire::ok(NodeInfo {
                name: "t2".into(),
                protocol_version: PROTOCOL_VERSION,
                cluster_addr: addr.clone(),
                http_addr: "127.0.0.1:9".into(),
                hosts_db: false,
                incarnation: u64::MAX,
                sqlite: SqliteRole::None,
                database: None,
            }));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_certificate_for_one_node_cannot_release_another_nodes_leases_or_take_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca();
    let mut t1 = tls_node(dir.path(), "t1", &ca);
    t1.db_path = Some(dir.path().join("customers.db"));
    let t1 = TestNode::start(t1, dir.path());
    let mut t2 = tls_node(dir.path(), "t2", &ca);
    t2.seeds = vec![t1.spec.cluster_addr()];
    let t2 = TestNode::start(t2, dir.path());
    let both = vec!["t1".to_string(), "t2".to_string()];
    for node in [&t1, &t2] {
        node.wait_ready(Duration::from_secs(60)).await;
        wait_until("t1 and t2", Duration::from_secs(60), || async {
            (node.members().await? == both).then_some(())
        })
        .await;
    }
    // A customer owned by t2, created through t1.
    let mut n = 0;
    let owned_by_t2 = wait_until("a customer owned by t2", Duration::from_secs(60), || {
        n += 1;
        let email = format!("owned{n}@example.com");
        let t1 = &t1;
        async move {
            let r = t1.create("Owned by t2", &email).await;
            (r.status == 201 && r.header("x-owner-node") == Some("t2"))
                .then_some((id_of(&r), email))
        }
    })
    .await;

    // The impostor: a valid cluster certificate, for t9, and the cookie.
    let (acceptor, transport) =
        customer_cluster::cluster::tls::load(&tls_files(dir.path(), "t9", &ca), "t9").unwrap();
    let impostor = support::in_process_peer("t9", Some(acceptor), transport).await;
    let t1_addr = t1.spec.cluster_addr();
    impostor.dial(&t1_addr).await.unwrap();
    let db = remote_database().await;
    let before = lease_table(&db).await;
    let stolen: Vec<ShardLease> = before
        .iter()
        .filter(|r| r.holder.as_deref() == Some("t2"))
        .cloned()
        .collect();
    assert!(!stolen.is_empty(), "t2 holds shards");
    let target = stolen[0].clone();

    // A release in t2's name: the session is closed and nothing is released.
    let r = call(&db, Duration::from_secs(5), |r| {
        DatabaseMsg::Release(Wire::ok(("t2".to_string(), target.shard, target.token)), r)
    })
    .await;
    assert!(r.is_err(), "a release for t2 was answered: {r:?}");
    wait_until("t1 closed the session", Duration::from_secs(30), || async {
        (sessions_refused(&t1, "lease_for_other").await >= 1.0).then_some(())
    })
    .await;

    // In its own name: the database refuses to release a shard t9 does not hold, and grants
    // nothing of t2's.
    let _ = impostor.dial(&t1_addr).await;
    let db = remote_database().await;
    let release = call(&db, Duration::from_secs(5), |r| {
        DatabaseMsg::Release(Wire::ok(("t9".to_string(), target.shard, target.token)), r)
    })
    .await
    .unwrap();
    assert!(matches!(release, Release::NotHeld(_)), "{release:?}");
    let me = Holder {
        node: "t9".into(),
        incarnation: 1,
        epoch: 1,
    };
    let shards: Vec<u16> = stolen.iter().map(|r| r.shard).collect();
    let grant = call(&db, Duration::from_secs(5), |r| {
        DatabaseMsg::Grant(Wire::ok((me, shards)), r)
    })
    .await
    .unwrap();
    assert!(
        matches!(&grant, Grant::NotCurrent) || matches!(&grant, Grant::Granted(g) if g.is_empty()),
        "{grant:?}"
    );
    let after = lease_table(&db).await;
    for row in &stolen {
        let now = after.iter().find(|r| r.shard == row.shard);
        assert_eq!(now, Some(row), "the lease table changed");
    }

    // A Registry named for t2, answering greetings as t2: the session is closed, t2 stays.
    let (forged, _) = Actor::spawn(
        Some(registry_name("t2")),
        ForgedRegistry,
        impostor.local_addr().to_string(),
    )
    .await
    .unwrap();
    ractor::pg::join(REGISTRY_GROUP.to_owned(), vec![forged.get_cell()]);
    let _ = impostor.dial(&t1_addr).await;
    wait_until(
        "t1 closed the impostor's session",
        Duration::from_secs(30),
        || async { (sessions_refused(&t1, "foreign_actor").await >= 1.0).then_some(()) },
    )
    .await;
    let log = t1.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("cluster session closed")
            && l.contains("customer-registry.v5/t2")
            && l.contains("\"t9\"")),
        "no ERROR line naming the impostor:\n{log}"
    );
    assert!(!log.contains("member restarted"), "{log}");
    assert_eq!(t1.members().await, Some(both.clone()));
    let (id, email) = owned_by_t2;
    let got = t1.get(&id).await;
    assert_eq!(got.status, 200, "{:?}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.header("x-owner-node"), Some("t2"));
    assert!(String::from_utf8_lossy(&got.body).contains(&email));
    forged.stop(None);
    impostor.stop();
}
