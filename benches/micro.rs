//! Micro-benchmarks (criterion): placement lookup, the wire codec, group commit against one
//! commit per write, and activating a customer actor from the database.
//!
//! Run: `cargo bench --bench micro` (or `scripts/bench.sh`, which prints ratios).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use customer_cluster::cluster::placement::owner_of;
use customer_cluster::cluster::protocol::{
    CreateRequest, CustomerCommand, CustomerPage, Deadline, NodeInfo, PROTOCOL_VERSION,
    RegistryMsg, RouteRequest, call, registry_name,
};
use customer_cluster::codec::Wire;
use customer_cluster::config::Config;
use customer_cluster::customer::{
    Customer, CustomerFields, CustomerId, CustomerPatch, FieldPatch, new_customer_id,
};
use customer_cluster::node::start_actors;
use customer_cluster::storage::engine::{Engine, EngineConfig};
use customer_cluster::storage::sqlite::SqliteStore;
use customer_cluster::storage::{Store, Write, WriteOp};
use ractor::{ActorRef, BytesConvertable};

/// Stores `c` through a second connection to the node's file (untimed set-up: the Database
/// actor takes only fenced writes). The node's writer renews its lease meanwhile, so a busy
/// file is retried.
fn store_behind(store: &mut SqliteStore, c: Customer) -> CustomerId {
    let id = c.id;
    let write: Write = WriteOp::Insert(c).into();
    for _ in 0..100 {
        match store.write_batch(std::slice::from_ref(&write)) {
            Ok(_) => return id,
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    panic!("could not store a customer for the benchmark")
}

fn customer(i: usize) -> Customer {
    Customer::new(
        new_customer_id(),
        CustomerFields {
            name: format!("Customer number {i}"),
            email: format!("customer{i}-{}@example.com", std::process::id()),
            phone: Some("+1 555 0100".into()),
            address: Some("1 Infinite Loop, Cupertino".into()),
        },
        1_700_000_000_000_000,
    )
}

fn placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("placement");
    let ids: Vec<_> = (0..1024).map(|_| new_customer_id()).collect();
    for n in [3usize, 5, 16] {
        let members: Vec<String> = (1..=n).map(|i| format!("node-{i}")).collect();
        group.bench_with_input(BenchmarkId::new("owner_of", n), &members, |b, members| {
            let mut k = 0;
            b.iter(|| {
                k = (k + 1) % ids.len();
                black_box(owner_of(
                    members.iter().map(String::as_str),
                    ids[k].as_bytes(),
                ))
            })
        });
    }
    group.finish();
}

fn round_trip<T>(
    c: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    value: T,
) where
    T: serde::Serialize + serde::de::DeserializeOwned + Clone,
{
    let bytes = Wire::ok(value.clone()).into_bytes();
    c.bench_function(format!("encode/{name}"), |b| {
        b.iter(|| black_box(Wire::ok(value.clone()).into_bytes()))
    });
    c.bench_function(format!("decode/{name}"), |b| {
        b.iter(|| black_box(Wire::<T>::from_bytes(bytes.clone())))
    });
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    let cust = customer(1);
    round_trip(&mut group, "customer", cust.clone());
    round_trip(
        &mut group,
        "create_request",
        CreateRequest {
            customer: cust.clone(),
            request: customer_cluster::actors::gateway::request_meta(None, 0),
            deadline: Deadline::within(Duration::from_millis(1)),
        },
    );
    round_trip(
        &mut group,
        "route_patch",
        RouteRequest {
            id: cust.id,
            command: CustomerCommand::Patch {
                patch: CustomerPatch {
                    name: FieldPatch::Set("New name".into()),
                    ..Default::default()
                },
                if_match: Some(3),
            },
            request: customer_cluster::actors::gateway::request_meta(None, 0),
            deadline: Deadline::within(Duration::from_millis(1)),
        },
    );
    round_trip(
        &mut group,
        "route_get",
        RouteRequest {
            id: cust.id,
            command: CustomerCommand::Get,
            request: customer_cluster::actors::gateway::request_meta(None, 0),
            deadline: Deadline::within(Duration::from_millis(1)),
        },
    );
    round_trip(
        &mut group,
        "node_info",
        NodeInfo {
            name: "n1".into(),
            protocol_version: PROTOCOL_VERSION,
            cluster_addr: "127.0.0.1:4701".into(),
            http_addr: "127.0.0.1:8081".into(),
            hosts_db: true,
            incarnation: 1,
            sqlite: customer_cluster::cluster::dbnode::SqliteRole::Serving,
            database: None,
        },
    );
    round_trip(
        &mut group,
        "page_100",
        CustomerPage {
            items: (0..100).map(customer).collect(),
            next: Some(cust.id),
        },
    );
    group.finish();
}

/// Durable writes: `batch` concurrent inserts, acknowledged after commit.
fn group_commit(c: &mut Criterion) {
    const WRITES: usize = 256;
    let mut group = c.benchmark_group("durable_writes");
    group.throughput(Throughput::Elements(WRITES as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for (label, max_batch) in [("group_commit", 512usize), ("commit_per_write", 1)] {
        let dir = tempfile::tempdir().unwrap();
        let engine =
            Engine::open(&EngineConfig::sqlite(dir.path().join("b.db"), max_batch, 1)).unwrap();
        let mut n = 0usize;
        group.bench_function(label, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (tx, rx) = mpsc::channel();
                    let started = Instant::now();
                    for _ in 0..WRITES {
                        n += 1;
                        let tx = tx.clone();
                        engine.write(
                            WriteOp::Insert(customer(n)),
                            Box::new(move |r| tx.send(r.is_ok()).unwrap()),
                        );
                    }
                    for _ in 0..WRITES {
                        assert!(rx.recv().unwrap());
                    }
                    total += started.elapsed();
                }
                total
            })
        });
        engine.shutdown();
    }
    group.finish();
}

/// Activating a customer actor whose row must be loaded from the database.
fn activation(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::local("bench-activation", Some(dir.path().join("a.db")));
    // Rows are stored before the node starts: its Database actor takes only fenced writes.
    let rows: Vec<Customer> = (0..2000).map(customer).collect();
    let ids: Vec<CustomerId> = rows.iter().map(|c| c.id).collect();
    let writes: Vec<Write> = rows
        .into_iter()
        .map(|c| WriteOp::Insert(c).into())
        .collect();
    SqliteStore::open(&dir.path().join("a.db"))
        .unwrap()
        .write_batch(&writes)
        .unwrap();
    let (node, registry, ids) = rt.block_on(async {
        let node = start_actors(&config, None, 1).await.unwrap();
        let registry: ActorRef<RegistryMsg> =
            ractor::registry::where_is(registry_name(&config.name))
                .unwrap()
                .into();
        (node, registry, Arc::new(ids))
    });
    let timeout = Duration::from_secs(5);
    let mut group = c.benchmark_group("actor");
    group.bench_function("activate_from_database", |b| {
        // Each iteration reads a stored customer whose actor is not active yet: the timed
        // part is spawning the actor, loading its row and answering.
        let mut i = ids.len();
        let mut behind = SqliteStore::open(&dir.path().join("a.db")).unwrap();
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    i += 1;
                    let id = store_behind(&mut behind, customer(i));
                    let get = RouteRequest {
                        id,
                        command: CustomerCommand::Get,
                        request: customer_cluster::actors::gateway::request_meta(None, 0),
                        deadline: Deadline::within(Duration::from_secs(60)),
                    };
                    let started = Instant::now();
                    call(&registry, timeout, |r| RegistryMsg::Route(Wire::ok(get), r))
                        .await
                        .unwrap();
                    total += started.elapsed();
                }
                total
            })
        })
    });
    group.bench_function("call_active_actor", |b| {
        let id = ids[0];
        rt.block_on(async {
            let get = RouteRequest {
                id,
                command: CustomerCommand::Get,
                request: customer_cluster::actors::gateway::request_meta(None, 0),
                deadline: Deadline::within(Duration::from_secs(60)),
            };
            call(&registry, timeout, |r| RegistryMsg::Route(Wire::ok(get), r))
                .await
                .unwrap();
        });
        b.iter(|| {
            rt.block_on(async {
                let get = RouteRequest {
                    id,
                    command: CustomerCommand::Get,
                    request: customer_cluster::actors::gateway::request_meta(None, 0),
                    deadline: Deadline::within(Duration::from_secs(60)),
                };
                black_box(
                    call(&registry, timeout, |r| RegistryMsg::Route(Wire::ok(get), r))
                        .await
                        .unwrap(),
                )
            })
        })
    });
    group.finish();
    node.supervisor.stop(None);
}

criterion_group!(benches, placement, codec, group_commit, activation);
criterion_main!(benches);
