//! A 3-node cluster on PostgreSQL (every node runs a Database actor over `--database-url`)
//! under the fault tests' recording workload and checker (`customer_cluster::faults`):
//!
//! ```text
//!  kill -9 n1, restart; kill -9 n2, restart; kill -9 n3, restart   (shared server, own database)
//!    each time: every customer read and written through the two survivors within the bound
//!  PostgreSQL stopped under load, started again                   (a private server)
//!    503 + Retry-After in the gap, then every customer served; no node restarted
//!  PostgreSQL killed for good                                     (a private server)
//!    every request 503 + Retry-After within its deadline; /ready says the database is unreachable
//! ```
//!
//! Every run ends with the checker: linearizable, 0 acknowledged writes lost.
//!
//! The node-kill test uses a database of its own (`CREATE DATABASE` with a random name,
//! dropped at the end) on the server of `CC_TEST_DATABASE_URL`, or on a private server when
//! that is unset. The two others start a private server (initdb + pg_ctl in a temp dir, see
//! `support::postgres`) because they stop it. Without PostgreSQL server binaries each test
//! prints SKIPPED, and fails under `CI=true`. Tests run one at a time (a static mutex): they
//! share the machine's cores, and a starved node misses heartbeats.

mod support;

use std::time::{Duration, Instant};

use customer_cluster::client::HttpResponse;
use customer_cluster::faults::checker;
use customer_cluster::faults::history::{History, HistoryConfig, Workload};
use hyper::Method;
use serde_json::json;
use support::postgres::{PgServer, TestDatabase, skip};
use support::{TestCluster, TestNode, id_of, wait_until};

/// One test at a time: they share two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Workload before the first fault.
const BEFORE: Duration = Duration::from_secs(2);
/// Workload after the last recovery, before the final reads.
const AFTER: Duration = Duration::from_secs(2);
/// After a node dies, the survivors serve every key within this: detection (1.5 s) + one
/// lease TTL (2 s) for the takeover, with room for two busy cores.
const AVAILABILITY_BOUND: Duration = Duration::from_secs(10);
/// After PostgreSQL is back, every key is served within this: the pools reconnect, each node
/// sees its ping answered, rejoins the registry and takes its shards' leases again.
const RECOVERY_BOUND: Duration = Duration::from_secs(20);
/// 503s the workload must have recorded before PostgreSQL is started again.
const GAP_503S: usize = 10;
/// The nodes' request deadline (`--request-timeout-ms` of `support::NodeSpec`).
const DEADLINE: Duration = Duration::from_millis(3000);
/// What an answer may take beyond its deadline (scheduling on two busy cores).
const SLACK: Duration = Duration::from_millis(1000);

/// The checker's verdict on a finished run, with what it measured; fails the test unless the
/// history is linearizable with no acknowledged write lost.
fn assert_history_ok(name: &str, history: &History, notes: &str) {
    let report = checker::check(&history.ops());
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("postgres-cluster-{name}.jsonl"));
    let file = std::fs::File::create(&path).expect("history file");
    checker::write_jsonl(&history.ops(), std::io::BufWriter::new(file)).expect("write history");
    let summary = format!(
        "== {name} ==\n{notes}503s by entry node: {:?}\nchecker: {report}\nhistory saved to {}",
        history.unavailable_by_entry(),
        path.display()
    );
    eprintln!("{summary}");
    assert!(report.ops() > 100, "too few operations to judge\n{summary}");
    assert_eq!(report.lost_writes(), 0, "{summary}");
    assert!(report.is_ok(), "{summary}");
}

/// Every key served (`Some`) and the slowest time; fails naming `what` otherwise.
fn assert_all_served(what: &str, served: &[Option<Duration>]) -> Duration {
    let never = served.iter().filter(|s| s.is_none()).count();
    assert_eq!(
        never,
        0,
        "{what}: {never} of {} keys never served",
        served.len()
    );
    served.iter().flatten().max().copied().unwrap_or_default()
}

/// A private server, or `None` after saying why the test cannot run.
fn private_server(test: &str) -> Option<PgServer> {
    let server = PgServer::start();
    if server.is_none() {
        skip(
            test,
            "no PostgreSQL server binaries (initdb, pg_ctl) on this machine",
        );
    }
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_each_node_in_turn_keeps_every_customer_served_by_the_survivors_and_linearizable()
{
    let _serial = SERIAL.lock().await;
    let test = "kill_9_of_each_node_in_turn";
    // The shared server when CI provides one (a database of our own on it), else a private one.
    let mut private = None;
    let admin_url = match std::env::var("CC_TEST_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => match private_server(test) {
            Some(server) => private.insert(server).url("postgres"),
            None => return,
        },
    };
    let db = TestDatabase::create(&admin_url).await;
    let mut cluster = TestCluster::start_postgres("p", 3, db.url(), &[]).await;
    let workload = Workload::start(HistoryConfig::new(cluster.urls(), 11))
        .await
        .expect("the workload creates its customers");
    tokio::time::sleep(BEFORE).await;
    let mut notes = String::new();
    for k in 0..3 {
        cluster.nodes[k].kill();
        let killed = workload.now();
        let survivors: Vec<usize> = (0..3).filter(|&i| i != k).collect();
        let served = workload
            .probe_via(killed, AVAILABILITY_BOUND, &survivors)
            .await;
        let name = cluster.nodes[k].spec.name.clone();
        let what = format!("after kill -9 {name}, through the survivors");
        let slowest = assert_all_served(&what, &served);
        notes += &format!(
            "kill -9 {name}: every key read and written via the survivors within {slowest:?}\n"
        );
        cluster.nodes[k].restart();
        cluster.wait_converged(3, Duration::from_secs(60)).await;
    }
    tokio::time::sleep(AFTER).await;
    let history = workload.finish().await;
    assert_history_ok("node-kills", &history, &notes);
    drop(cluster);
    drop(db);
    drop(private);
}

/// Waits until every node's `/ready` answers 503 saying the database is unreachable; returns
/// the last body seen.
async fn wait_database_unreachable(cluster: &TestCluster, bound: Duration) -> String {
    let mut body = String::new();
    for node in &cluster.nodes {
        let what = format!("{} /ready says the database is unreachable", node.spec.name);
        body = wait_until(&what, bound, || async {
            let r = node.client.get("/ready").await.ok()?;
            let text = String::from_utf8_lossy(&r.body).into_owned();
            let says_why = text.contains("database") && text.contains("unreachable");
            (r.status == 503 && says_why).then_some(text)
        })
        .await;
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_answers_503_in_the_gap_then_serves_again_without_node_restarts()
 {
    let _serial = SERIAL.lock().await;
    let Some(server) = private_server("postgres_restarted_under_load") else {
        return;
    };
    let mut cluster = TestCluster::start_postgres("r", 3, &server.url("postgres"), &[]).await;
    let pids: Vec<i32> = cluster.nodes.iter().map(TestNode::pid).collect();
    // Answers within the nodes' deadline are recorded as answered, not as timeouts.
    let config = HistoryConfig {
        timeout: DEADLINE + SLACK,
        ..HistoryConfig::new(cluster.urls(), 12)
    };
    let workload = Workload::start(config)
        .await
        .expect("the workload creates its customers");
    tokio::time::sleep(BEFORE).await;

    server.stop();
    let down = workload.now();
    // The gap lasts until every node says why it cannot serve and the workload was refused.
    let ready_body = wait_database_unreachable(&cluster, Duration::from_secs(20)).await;
    wait_until(
        "503s recorded in the gap",
        Duration::from_secs(20),
        || async {
            let refused = workload
                .recorder()
                .snapshot()
                .iter()
                .filter(|r| r.meta.status == Some(503) && r.op.invoke >= down)
                .count();
            (refused >= GAP_503S).then_some(())
        },
    )
    .await;
    let answer = timed_get(&cluster.nodes[1], &uuid::Uuid::now_v7().to_string()).await;
    assert_503_in_time("a read in the gap", &answer);
    server.start_again();
    let up = workload.now();

    let served = workload.probe(up, RECOVERY_BOUND).await;
    let slowest = assert_all_served("after PostgreSQL came back", &served);
    for (node, pid) in cluster.nodes.iter_mut().zip(&pids) {
        assert!(
            node.is_running() && node.pid() == *pid,
            "{} was restarted or died",
            node.spec.name
        );
    }
    tokio::time::sleep(AFTER).await;
    let history = workload.finish().await;
    let mut gap = std::collections::BTreeMap::<String, usize>::new();
    for r in &history.recorded {
        if r.op.invoke >= down && r.op.complete <= up {
            let status = r.meta.status.map_or("none".into(), |s| s.to_string());
            *gap.entry(status).or_default() += 1;
        }
    }
    let in_gap = gap.get("503").copied().unwrap_or(0);
    let notes = format!(
        "PostgreSQL down {:.0} .. {:.0} ms: answers in the gap by status {gap:?}; /ready said {ready_body}\n\
         every key read and written within {slowest:?} of the restart, no node restarted\n",
        down.as_secs_f64() * 1000.0,
        up.as_secs_f64() * 1000.0
    );
    assert_history_ok("postgres-restart", &history, &notes);
    assert!(
        in_gap > 0,
        "no 503 recorded while PostgreSQL was down\n{notes}"
    );
}

/// Waits until no node holds a shard lease (each node's own count in `/v1/cluster`).
async fn wait_leases_lapsed(cluster: &TestCluster, bound: Duration) {
    for node in &cluster.nodes {
        let what = format!("{} holds no lease", node.spec.name);
        wait_until(&what, bound, || async {
            let view = node.cluster().await?;
            let me = view["members"]
                .as_array()?
                .iter()
                .find(|m| m["this_node"] == true)?
                .clone();
            (me["leases_held"] == 0).then_some(())
        })
        .await;
    }
}

/// An answer and how long it took.
struct Timed {
    what: String,
    took: Duration,
    response: Option<HttpResponse>,
}

async fn timed(what: String, request: impl Future<Output = Option<HttpResponse>>) -> Timed {
    let started = Instant::now();
    let response = request.await;
    Timed {
        what,
        took: started.elapsed(),
        response,
    }
}

async fn timed_get(node: &TestNode, id: &str) -> Timed {
    let what = format!("GET {id} via {}", node.spec.name);
    timed(what, async {
        node.client.get(&format!("/v1/customers/{id}")).await.ok()
    })
    .await
}

/// 503 with `Retry-After`, within the deadline and its slack.
fn assert_503_in_time(context: &str, t: &Timed) {
    let r = t
        .response
        .as_ref()
        .unwrap_or_else(|| panic!("{context}: {} got no answer in {:?}", t.what, t.took));
    assert_eq!(
        r.status,
        503,
        "{context}: {} answered {}: {}",
        t.what,
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        r.header("retry-after").is_some(),
        "{context}: {} answered 503 without Retry-After",
        t.what
    );
    assert!(
        t.took <= DEADLINE + SLACK,
        "{context}: {} took {:?}, more than the deadline {DEADLINE:?} + {SLACK:?}",
        t.what,
        t.took
    );
}

/// One request of every kind through `node`, each timed.
async fn every_kind(node: &TestNode, ids: &[String], round: usize) -> Vec<Timed> {
    let id = &ids[round % ids.len()];
    let name = &node.spec.name;
    let email = format!("dead-{round}-{name}@example.com");
    let patch = json!({"name": format!("patched-{round}")});
    vec![
        timed_get(node, id).await,
        timed(format!("POST via {name}"), async {
            Some(node.create("dead", &email).await)
        })
        .await,
        timed(format!("PATCH {id} via {name}"), async {
            Some(node.patch(id, patch).await)
        })
        .await,
        timed(format!("DELETE {id} via {name}"), async {
            let path = format!("/v1/customers/{id}");
            node.client
                .send(Method::DELETE, &path, None, &[])
                .await
                .ok()
        })
        .await,
        timed(format!("list via {name}"), async {
            node.client.get("/v1/customers?limit=10").await.ok()
        })
        .await,
        timed(format!("/ready via {name}"), async {
            node.client.get("/ready").await.ok()
        })
        .await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_for_good_makes_every_request_answer_503_in_time_and_ready_say_why() {
    let _serial = SERIAL.lock().await;
    let Some(server) = private_server("postgres_killed_for_good") else {
        return;
    };
    let cluster = TestCluster::start_postgres("d", 3, &server.url("postgres"), &[]).await;
    let mut ids = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        // A shard whose lease is still being granted answers 503: retried.
        let what = format!("a create via {} answers 201", node.spec.name);
        let email = format!("alive-{i}@example.com");
        let created = wait_until(&what, Duration::from_secs(20), || async {
            let r = node.create("alive", &email).await;
            (r.status == 201).then_some(r)
        })
        .await;
        ids.push(id_of(&created));
    }

    server.kill();
    let ready_body = wait_database_unreachable(&cluster, Duration::from_secs(20)).await;
    // Until its leases lapse, an owner may still serve a cached row (DESIGN §6): from then
    // on nothing can be served.
    wait_leases_lapsed(&cluster, Duration::from_secs(20)).await;
    let mut answers = Vec::new();
    let window = Instant::now() + Duration::from_secs(4);
    let mut round = 0;
    while Instant::now() < window {
        for node in &cluster.nodes {
            answers.extend(every_kind(node, &ids, round).await);
        }
        round += 1;
    }
    let slowest = answers.iter().max_by_key(|t| t.took).expect("answers");
    eprintln!(
        "PostgreSQL killed: {} requests, slowest {} in {:?}; /ready says {ready_body}",
        answers.len(),
        slowest.what,
        slowest.took
    );
    for t in &answers {
        assert_503_in_time("with PostgreSQL killed", t);
    }
}
