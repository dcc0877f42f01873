//! Memory per active customer actor: activate N customers on one in-process node, read the
//! resident set size before and after, then passivate them all and read it again.
//!
//! Run: `cargo bench --bench memory` (N defaults to 100000; override with CC_MEMORY_CUSTOMERS).
//!
//! Scan mode: with `CC_MEMORY_MAX_ACTIVE=C` (a number, or `none` for no cap) the node runs
//! with `max_active_customers = C`, the reads are a scan of N distinct stored ids, and the
//! run ends after printing the resident size the scan left (`scan_rss_bytes=…`, read by
//! `scripts/bench.sh --scan`). Without the variable there is no cap either, so every
//! actor stays active and the per-actor figure means what it says.

use std::time::{Duration, Instant};

use customer_cluster::cluster::protocol::{
    CustomerCommand, Deadline, RegistryMsg, RegistryStats, RouteRequest, call, registry_name,
};
use customer_cluster::codec::Wire;
use customer_cluster::config::Config;
use customer_cluster::customer::{Customer, CustomerFields, CustomerId, new_customer_id};
use customer_cluster::node::start_actors;
use customer_cluster::storage::sqlite::SqliteStore;
use customer_cluster::storage::{Store, Write, WriteOp};
use futures::StreamExt;
use ractor::ActorRef;

/// Resident set size in bytes, from /proc/self/statm.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf with a valid name has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

async fn stats(registry: &ActorRef<RegistryMsg>) -> RegistryStats {
    call(registry, Duration::from_secs(30), |r| {
        RegistryMsg::Stats(Wire::ok(()), r)
    })
    .await
    .unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("CC_MEMORY_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::local("bench-memory", Some(dir.path().join("m.db")));
    // Long enough to measure the loaded state, short enough that the idle sweep (which also
    // returns freed heap to the OS) empties the node soon after.
    config.idle_timeout = Duration::from_secs(15);
    let scan_cap = std::env::var("CC_MEMORY_MAX_ACTIVE").ok();
    config.max_active_customers = scan_cap
        .as_deref()
        .and_then(|c| c.parse().ok())
        .unwrap_or(usize::MAX);
    // The rows are stored before the node starts (the Database actor takes only fenced
    // writes from lease holders); what is measured is the actors, not the inserts.
    let started = Instant::now();
    let path = dir.path().join("m.db");
    let ids: Vec<CustomerId> = tokio::task::spawn_blocking(move || {
        let mut store = SqliteStore::open(&path).unwrap();
        let mut ids = Vec::with_capacity(n);
        let rows: Vec<usize> = (0..n).collect();
        for chunk in rows.chunks(1000) {
            let writes: Vec<Write> = chunk
                .iter()
                .map(|i| {
                    let c = Customer::new(
                        new_customer_id(),
                        CustomerFields {
                            name: format!("Customer {i}"),
                            email: format!("memory{i}@example.com"),
                            phone: Some("+1 555 0100".into()),
                            address: Some("1 Main Street, Springfield".into()),
                        },
                        1,
                    );
                    ids.push(c.id);
                    Write::from(WriteOp::Insert(c))
                })
                .collect();
            store.write_batch(&writes).unwrap();
        }
        ids
    })
    .await
    .unwrap();
    let node = start_actors(&config, None, 1).await.unwrap();
    let registry: ActorRef<RegistryMsg> = ractor::registry::where_is(registry_name(&config.name))
        .unwrap()
        .into();
    println!(
        "stored {n} customers in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let baseline = rss_bytes();
    let started = Instant::now();
    futures::stream::iter(ids.iter().copied())
        .map(|id| {
            let registry = registry.clone();
            async move {
                // A read activates the customer's actor, loaded from the database.
                let get = RouteRequest {
                    id,
                    command: CustomerCommand::Get,
                    request: customer_cluster::actors::gateway::request_meta(None, 0),
                    deadline: Deadline::within(Duration::from_secs(60)),
                };
                call(&registry, Duration::from_secs(30), |r| {
                    RegistryMsg::Route(Wire::ok(get), r)
                })
                .await
                .unwrap()
            }
        })
        .buffer_unordered(256)
        .for_each(|_| async {})
        .await;
    let active = stats(&registry).await.active_customers;
    let loaded = rss_bytes();
    if let Some(cap) = scan_cap {
        println!(
            "scan of {n} distinct ids with max_active_customers={cap}: {active} actors active, RSS {:.1} MiB (before the scan {:.1} MiB)",
            mib(loaded),
            mib(baseline)
        );
        println!("scan_rss_bytes={loaded}");
        node.supervisor.stop(None);
        return;
    }
    println!(
        "activated {active} actors in {:.1} s ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        active as f64 / started.elapsed().as_secs_f64()
    );
    println!("RSS before activation: {:.1} MiB", mib(baseline));
    println!("RSS with {active} active actors: {:.1} MiB", mib(loaded));
    println!(
        "=> {:.0} bytes per active customer actor (state, mailbox, task, registry entry)",
        (loaded.saturating_sub(baseline)) as f64 / active.max(1) as f64
    );

    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    while stats(&registry).await.active_customers > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The registry trims the heap 2 s after a large sweep.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_bytes();
    println!(
        "idle sweep passivated them all after {:.1} s; RSS now {:.1} MiB ({:.1} MiB above the pre-activation baseline)",
        started.elapsed().as_secs_f64(),
        mib(after),
        mib(after.saturating_sub(baseline))
    );
    node.supervisor.stop(None);
}
