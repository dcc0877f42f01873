//! Without TLS a holder of the cookie can name itself after any node, so it can release a
//! node's shard leases in that node's name and grant them to another. What it cannot do is
//! go unnoticed: the node whose leases moved without its release says so (ERROR, metric,
//! `lease_moved` event) and the cluster heals by itself.
//!
//! The attacker runs in this process (plain `Mesh`es named after real nodes). Its own file:
//! every actor this process spawns is announced to every session it opens.

mod support;

use std::time::Duration;

use customer_cluster::cluster::mesh::{Mesh, Transport};
use customer_cluster::cluster::protocol::{DATABASE_GROUP, DatabaseMsg, call};
use customer_cluster::codec::Wire;
use customer_cluster::storage::{Grant, Holder, Release, ShardLease};
use ractor::ActorRef;
use support::{TestCluster, id_of, wait_until};

async fn posing_as(name: &str, target: &str) -> (Mesh, ActorRef<DatabaseMsg>) {
    let mesh = support::in_process_peer(name, None, Transport::Plain).await;
    mesh.dial(target).await.unwrap();
    let db = wait_until("the database actor", Duration::from_secs(30), || async {
        ractor::pg::get_members(&DATABASE_GROUP.to_owned())
            .into_iter()
            .find(|c| !c.get_id().is_local() && c.get_status() < ractor::ActorStatus::Stopping)
            .map(ActorRef::from)
    })
    .await;
    (mesh, db)
}

async fn lease_table(db: &ActorRef<DatabaseMsg>) -> Vec<ShardLease> {
    call(db, Duration::from_secs(5), |r| {
        DatabaseMsg::LeaseTable(Wire::ok(()), r)
    })
    .await
    .expect("lease table")
}

#[tokio::test]
async fn a_lease_moved_away_without_its_holders_release_is_reported_and_healed() {
    let cluster = TestCluster::start("a", 3, &[]).await;
    let (victim, other) = (cluster.node("a2"), cluster.node("a3"));
    let mut n = 0;
    let (id, email) = wait_until("a customer owned by a2", Duration::from_secs(60), || {
        n += 1;
        let email = format!("owned{n}@example.com");
        async move {
            let r = victim.create("Owned by a2", &email).await;
            (r.status == 201 && r.header("x-owner-node") == Some("a2"))
                .then_some((id_of(&r), email))
        }
    })
    .await;
    let db_addr = cluster.node("a1").spec.cluster_addr();

    // Posing as a2: release all of a2's shards in its name.
    let (as_victim, db) = posing_as("a2", &db_addr).await;
    let table = lease_table(&db).await;
    let held_by = |name: &str| -> Vec<ShardLease> {
        table
            .iter()
            .filter(|r| r.holder.as_deref() == Some(name))
            .cloned()
            .collect()
    };
    let stolen = held_by("a2");
    let a3 = held_by("a3")[0].clone();
    for row in &stolen {
        let r = call(&db, Duration::from_secs(5), |p| {
            DatabaseMsg::Release(Wire::ok(("a2".to_string(), row.shard, row.token)), p)
        })
        .await
        .unwrap();
        assert!(matches!(r, Release::Released { .. }), "{r:?}");
    }
    as_victim.stop();
    // Posing as a3: grant them to a3 (its incarnation and epoch are in the table).
    let (as_other, db) = posing_as("a3", &db_addr).await;
    let a3_holder = Holder {
        node: "a3".into(),
        incarnation: a3.holder_incarnation.unwrap(),
        epoch: a3.holder_epoch.unwrap(),
    };
    let shards: Vec<u16> = stolen.iter().map(|r| r.shard).collect();
    let grant = call(&db, Duration::from_secs(5), |p| {
        DatabaseMsg::Grant(Wire::ok((a3_holder, shards)), p)
    })
    .await
    .unwrap();
    assert!(
        matches!(&grant, Grant::Granted(g) if !g.is_empty()),
        "{grant:?}"
    );
    as_other.stop();

    // a2 notices, says so, and the shards come back to it (a3 releases what is not its own).
    wait_until(
        "a2 reported the moved leases",
        Duration::from_secs(60),
        || async {
            let log = victim.log();
            log.lines()
                .any(|l| l.contains("ERROR") && l.contains("never released have another holder"))
                .then_some(())
        },
    )
    .await;
    let metrics = victim.client.get("/metrics").await.unwrap();
    assert!(
        String::from_utf8_lossy(&metrics.body).lines().any(|l| l
            .starts_with("customer_leases_moved_unexpectedly_total")
            && !l.ends_with(" 0")),
        "no metric"
    );
    wait_until(
        "a2 serves its customer again",
        Duration::from_secs(60),
        || async {
            let r = other.get(&id).await;
            (r.status == 200 && String::from_utf8_lossy(&r.body).contains(&email)).then_some(())
        },
    )
    .await;
}
