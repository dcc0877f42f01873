//! DESIGN §10 case 16, retries under overload, with real node processes on loopback: 1024
//! closed-loop clients (far above what three nodes on two shared cores serve) for 10 s, every
//! 503 and 504 write retried with the same `Idempotency-Key` and body, then an ordinary load.
//!
//! ```text
//!  3 nodes ─▶ heavy workload 1024 clients, 10 s ─▶ checker: linearizable, 0 stale, 0 lost,
//!            (writes retried on 503/504)              no 503'd attempt applied, no key answered twice
//!        ─▶ light workload: every key served within the bound ─▶ checker ─▶ same processes
//! ```
//!
//! The checker judges the attempts of one key as one request: a value written only by
//! attempts answered 503 that is ever read fails the history, and so does a key that applied
//! twice. The nodes are the same processes before and after: an overload must pass by itself.
//! SQLite always; PostgreSQL when a server is at hand (required under `CI=true`).

mod support;

use std::time::Duration;

use customer_cluster::faults::checker;
use customer_cluster::faults::history::{History, HistoryConfig, Workload};
use support::TestCluster;
use support::postgres::test_database;

/// One cluster at a time: the overload is meant to saturate both cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Concurrent clients of the overload, each with one request in flight and a 1 s timeout:
/// three debug-built nodes on two cores answer well under a thousand requests a second, so
/// most requests wait past their timeout and are retried.
const HEAVY_CLIENTS: usize = 1024;
/// How long the overload lasts.
const HEAVY_FOR: Duration = Duration::from_secs(10);
/// After the overload, every key is served within this.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);

fn assert_history_ok(name: &str, history: &History) -> checker::Report {
    let report = checker::check(&history.ops());
    let path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("overload-{name}.jsonl"));
    if let Ok(file) = std::fs::File::create(&path) {
        let _ = checker::write_jsonl(&history.ops(), std::io::BufWriter::new(file));
    }
    let summary = format!(
        "== {name} ==\n503s by entry node: {:?}\nchecker: {report}\nhistory saved to {}",
        history.unavailable_by_entry(),
        path.display()
    );
    eprintln!("{summary}");
    assert!(report.ops() > 100, "too few operations to judge\n{summary}");
    assert_eq!(report.stale_reads(), 0, "{summary}");
    assert_eq!(report.lost_writes(), 0, "{summary}");
    assert!(report.is_ok(), "{summary}");
    report
}

async fn overload_then_recover(cluster: &mut TestCluster, engine: &str) {
    let pids: Vec<i32> = cluster.nodes.iter().map(|n| n.pid()).collect();
    let mut heavy = HistoryConfig::new(cluster.urls(), 16);
    heavy.clients = HEAVY_CLIENTS;
    heavy.keys = 64;
    heavy.timeout = Duration::from_secs(1);
    let workload = Workload::start(heavy)
        .await
        .expect("the overload creates its customers");
    tokio::time::sleep(HEAVY_FOR).await;
    let history = workload.finish().await;
    let unavailable: usize = history.unavailable_by_entry().values().sum();
    let retries = history.retries();
    eprintln!("{engine}: {unavailable} answers 503 during the overload; {retries}");
    // The load must really have exceeded what the nodes serve in time, or nothing was tested.
    assert!(
        retries.requests > 0,
        "no write was retried: not an overload"
    );
    assert_history_ok(&format!("{engine}-overload"), &history);

    // Afterwards, an ordinary load on fresh keys: served at once, by the same processes.
    let light = Workload::start(HistoryConfig::new(cluster.urls(), 17))
        .await
        .expect("after the overload the cluster creates customers again");
    let since = light.now();
    let served = light.probe(since, RECOVERY_BOUND).await;
    let never = served.iter().filter(|s| s.is_none()).count();
    assert_eq!(never, 0, "{never} keys not served after the overload");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let history = light.finish().await;
    assert_history_ok(&format!("{engine}-after"), &history);
    for (node, pid) in cluster.nodes.iter_mut().zip(pids) {
        assert!(node.is_running(), "{} exited", node.spec.name);
        assert_eq!(node.pid(), pid, "{} was restarted", node.spec.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overload_with_retries_stays_linearizable_and_the_cluster_recovers_by_itself() {
    let _serial = SERIAL.lock().await;
    let mut cluster = TestCluster::start("ov", 3, &[]).await;
    overload_then_recover(&mut cluster, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overload_with_retries_on_postgres_stays_linearizable_and_the_cluster_recovers_by_itself()
 {
    let _serial = SERIAL.lock().await;
    let Some((db, private)) = test_database("an_overload_with_retries_on_postgres").await else {
        return;
    };
    let mut cluster = TestCluster::start_postgres("op", 3, db.url(), &[]).await;
    overload_then_recover(&mut cluster, "postgres").await;
    drop(cluster);
    drop(db);
    drop(private);
}
