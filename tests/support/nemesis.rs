//! The nemesis of the fault tests: scripted faults over a 3-node cluster in a [`NetLab`], on
//! either storage engine, each recorded with when it started and when it healed.
//!
//! ```text
//!  LabCluster::try_start(engine) ─▶ inject(fault) ─▶ … workload … ─▶ heal(fault) ─▶ timeline()
//!                                    kill -9 · SIGSTOP · isolate · minority · partial · db cut
//!
//!  SQLite:      h1 n1 (--db-path) ── h2 n2 ── h3 n3          the database is node n1
//!  PostgreSQL:  h1 n1 ── h2 n2 ── h3 n3 ── h4 relay ─▶ 127.0.0.1 server (test process)
//!               every node: --database-url postgres://…@10.213.X.4:5432/cc_test_<random>
//!                           --database-allow-plaintext (a private bridge, not loopback)
//! ```
//!
//! **PostgreSQL in the lab.** The server listens on the test host's 127.0.0.1, which no lab
//! namespace reaches. A fourth lab host, the *database host*, has no process of its own: the
//! test process opens a listening socket inside its namespace ([`PgRelay`]) and relays every
//! connection to the server. So the path from a node to PostgreSQL is a real network link of
//! the lab, and the nemesis cuts it like any other (packets dropped on input at both ends).
//! Each cluster gets a database of its own (`TestDatabase`) on the server of
//! `CC_TEST_DATABASE_URL`, or on a private server when that is unset.
//!
//! **What each fault cuts**, per engine (the test process reaches every node throughout):
//!
//! | fault         | SQLite (database = n1)            | PostgreSQL (database = host 4)          |
//! |---------------|-----------------------------------|-----------------------------------------|
//! | `Isolate(k)`  | nk from n-others (and so from n1) | nk from the other nodes and the database |
//! | `Minority(k)` | nk from the two other nodes       | nk from the two other nodes; **every node keeps the database** (both sides of the split reach it: the case only a shared database has) |
//! | `Partial(a,b)`| na from nb                        | na from nb                              |
//! | `DbCut(k)`    | nk from n1                        | nk from the database host               |
//!
//! Every fault has one way in and one way out: a kill is healed by a restart of the same node
//! (same name, host and database file), a freeze by SIGCONT, a cut by removing every cut. The
//! times are `Instant`s on the test host, so a test can place them on the workload's time line
//! (`Recorder::origin`). Healing waits for nothing: how long the cluster takes to serve again
//! is what the test measures next.
//!
//! Deliberately not here: the workload and the checker (`customer_cluster::faults`), delays
//! and loss (netem).
#![allow(dead_code)]

use std::fmt;
use std::time::{Duration, Instant};

use super::netns::{LabNode, LabNodeSpec, NetLab};
use super::postgres::{PgServer, TestDatabase, skip};

/// Where the cluster keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// One SQLite file on n1 (`--db-path`); n2 and n3 reach it through n1.
    Sqlite,
    /// One PostgreSQL database shared by every node (`--database-url` on each), reached
    /// through the lab's database host.
    Postgres,
}

impl Engine {
    /// A file-name-friendly name.
    pub fn slug(&self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }
}

/// The lab host that stands for PostgreSQL (after the three node hosts).
pub const PG_HOST: usize = 4;

/// The port the relay listens on in the database host.
pub const PG_RELAY_PORT: u16 = 5432;

/// One scripted fault. Hosts are numbered from 1; node `nk` runs in host `k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL node k; healed by starting it again.
    Kill(usize),
    /// SIGSTOP node k; healed by SIGCONT.
    Freeze(usize),
    /// Cut host k from every other host.
    Isolate(usize),
    /// Cut host k (alone, the minority) from the two other nodes (the majority). On
    /// PostgreSQL both sides keep the database.
    Minority(usize),
    /// Cut hosts a and b from each other while both still reach the third.
    Partial(usize, usize),
    /// Cut host k from the database only: n1's host on SQLite, the database host on
    /// PostgreSQL.
    DbCut(usize),
}

impl Fault {
    /// A file-name-friendly name of the fault's kind.
    pub fn slug(&self) -> String {
        match self {
            Fault::Kill(_) => "kill",
            Fault::Freeze(_) => "freeze",
            Fault::Isolate(_) => "isolate",
            Fault::Minority(_) => "minority",
            Fault::Partial(..) => "partial",
            Fault::DbCut(_) => "db-cut",
        }
        .to_string()
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(k) => write!(f, "kill -9 n{k}"),
            Fault::Freeze(k) => write!(f, "SIGSTOP n{k}"),
            Fault::Isolate(k) => write!(f, "isolate n{k}"),
            Fault::Minority(k) => write!(f, "minority n{k} | rest"),
            Fault::Partial(a, b) => write!(f, "partial n{a} -x- n{b}"),
            Fault::DbCut(k) => write!(f, "cut n{k} from the database"),
        }
    }
}

/// A fault and when it was in force.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    /// Which fault.
    pub fault: Fault,
    /// When it was injected.
    pub started: Instant,
    /// When it was healed (`None` while in force).
    pub healed: Option<Instant>,
}

/// Three `customer-cluster` nodes in a lab: n1, n2, n3 (n1 hosts the database on SQLite).
pub struct LabCluster {
    /// Nodes `n1..n3`, in host order. Declared before the rest so they die first.
    pub nodes: Vec<LabNode>,
    /// PostgreSQL's relay, database and (private) server; after the nodes, before the lab.
    pg: Option<PgLab>,
    /// The lab (namespaces, cuts).
    pub lab: NetLab,
    /// Logs and the database file.
    pub dir: tempfile::TempDir,
    /// Which storage engine the nodes run on.
    pub engine: Engine,
    timeline: Vec<FaultRecord>,
}

impl LabCluster {
    /// Starts n1 (with the database) and n2, n3 seeded from it, each with `extra` flags, and
    /// waits until every node sees all three.
    pub async fn start(lab: NetLab, extra: &[&str]) -> Self {
        Self::start_each(lab, [extra, extra, extra]).await
    }

    /// Like [`LabCluster::start`], with its own extra flags for each node (`extra[k - 1]`
    /// for node `nk`), e.g. a fault hook on one node only.
    pub async fn start_each(lab: NetLab, extra: [&[&str]; 3]) -> Self {
        assert_eq!(lab.len(), 3, "the SQLite fault scenarios use three hosts");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("customers.db").display().to_string();
        Self::launch(lab, dir, Engine::Sqlite, None, &["--db-path", &db], extra).await
    }

    /// A lab and a cluster on `engine`, every node with `extra` flags; `None` (after a loud
    /// SKIPPED, or a panic under `CI=true`) when this machine cannot run one.
    pub async fn try_start(engine: Engine, extra: &[&str]) -> Option<Self> {
        Self::try_start_each(engine, [extra, extra, extra]).await
    }

    /// Like [`LabCluster::try_start`], with flags per node (`extra[k - 1]` for `nk`).
    pub async fn try_start_each(engine: Engine, extra: [&[&str]; 3]) -> Option<Self> {
        match engine {
            Engine::Sqlite => Some(Self::start_each(NetLab::try_new(3)?, extra).await),
            Engine::Postgres => {
                let lab = NetLab::try_new(PG_HOST)?;
                let pg = PgLab::start(&lab).await?;
                let dir = tempfile::tempdir().expect("tempdir");
                let url = pg.node_url.clone();
                // The lab's server is on its own private bridge (10.213.X.4), not loopback.
                let storage = ["--database-url", url.as_str(), "--database-allow-plaintext"];
                Some(Self::launch(lab, dir, engine, Some(pg), &storage, extra).await)
            }
        }
    }

    /// Starts n1, then n2 and n3 seeded from it, each with `storage` and its `extra` flags
    /// (on SQLite `storage` goes to n1 only).
    async fn launch(
        lab: NetLab,
        dir: tempfile::TempDir,
        engine: Engine,
        pg: Option<PgLab>,
        storage: &[&str],
        extra: [&[&str]; 3],
    ) -> Self {
        let flags = |k: usize| -> Vec<String> {
            let stored = engine == Engine::Postgres || k == 1;
            let storage = storage.iter().filter(|_| stored);
            storage.chain(extra[k - 1]).map(|s| s.to_string()).collect()
        };
        let mut spec = LabNodeSpec::new("n1", 1);
        spec.extra = flags(1);
        let n1 = LabNode::start(&lab, spec, dir.path());
        let seed = n1.cluster_addr();
        let mut nodes = vec![n1];
        for k in 2..=3 {
            let mut spec = LabNodeSpec::new(&format!("n{k}"), k);
            spec.seeds = vec![seed.clone()];
            spec.extra = flags(k);
            nodes.push(LabNode::start(&lab, spec, dir.path()));
        }
        let cluster = Self {
            nodes,
            pg,
            lab,
            dir,
            engine,
            timeline: Vec::new(),
        };
        cluster.wait_converged(Duration::from_secs(60)).await;
        cluster
    }

    /// The lab host the database is on: n1's on SQLite, the database host on PostgreSQL.
    pub fn db_host(&self) -> usize {
        match self.engine {
            Engine::Sqlite => 1,
            Engine::Postgres => PG_HOST,
        }
    }

    /// The HTTP URL of every node, n1 first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("http://{}:{}", n.ip, n.spec.http_port))
            .collect()
    }

    /// Node `nk`.
    pub fn node(&self, k: usize) -> &LabNode {
        &self.nodes[k - 1]
    }

    /// Waits until every node lists all three members.
    pub async fn wait_converged(&self, timeout: Duration) {
        for node in &self.nodes {
            node.wait_members(&["n1", "n2", "n3"], timeout).await;
        }
    }

    /// Injects `fault` and records when.
    pub fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::Kill(k) => {
                self.nodes[k - 1].process().kill9();
            }
            Fault::Freeze(k) => self.nodes[k - 1].process().stop(),
            Fault::Isolate(k) => self.lab.isolate(k),
            Fault::Minority(k) => {
                // The other nodes only: on PostgreSQL the database host stays with both sides.
                let rest: Vec<usize> = (1..=3).filter(|&h| h != k).collect();
                self.lab.partition(&[k], &rest);
            }
            Fault::Partial(a, b) => self.lab.partition(&[a], &[b]),
            Fault::DbCut(k) => self.lab.partition(&[k], &[self.db_host()]),
        }
        self.timeline.push(FaultRecord {
            fault,
            started: Instant::now(),
            healed: None,
        });
    }

    /// Heals `fault` (which must be in force) and records when.
    pub fn heal(&mut self, fault: Fault) {
        match fault {
            Fault::Kill(k) => self.nodes[k - 1].restart(&self.lab),
            Fault::Freeze(k) => self.nodes[k - 1].process().cont(),
            Fault::Isolate(_) | Fault::Minority(_) | Fault::Partial(..) | Fault::DbCut(_) => {
                self.lab.heal()
            }
        }
        let now = Instant::now();
        let record = self
            .timeline
            .iter_mut()
            .rev()
            .find(|r| r.fault == fault && r.healed.is_none())
            .unwrap_or_else(|| panic!("heal of {fault}, which is not in force"));
        record.healed = Some(now);
    }

    /// Every fault so far, in injection order.
    pub fn timeline(&self) -> &[FaultRecord] {
        &self.timeline
    }

    /// Copies every node's log to `to` (created), so a failed run can be read afterwards.
    pub fn keep_logs(&self, to: &std::path::Path) {
        let _ = std::fs::create_dir_all(to);
        for node in &self.nodes {
            let name = format!("{}.log", node.spec.name);
            let _ = std::fs::copy(self.dir.path().join(&name), to.join(&name));
        }
    }

    /// The timeline as lines, times in ms since `origin` (the workload's time 0).
    pub fn describe_timeline(&self, origin: Instant) -> String {
        let ms = |t: Instant| t.saturating_duration_since(origin).as_secs_f64() * 1000.0;
        self.timeline
            .iter()
            .map(|r| {
                let healed = r
                    .healed
                    .map(|h| format!("{:.0} ms", ms(h)))
                    .unwrap_or_else(|| "never".into());
                format!("  {}: from {:.0} ms to {healed}\n", r.fault, ms(r.started))
            })
            .collect()
    }
}

/// PostgreSQL for a lab cluster: a database of its own, and the relay that lets lab hosts
/// reach its server. Dropped in field order: the relay (every relayed connection closes), the
/// database (`DROP DATABASE … WITH (FORCE)`), the private server if there is one.
struct PgLab {
    relay: PgRelay,
    db: TestDatabase,
    server: Option<PgServer>,
    /// The URL the nodes are given: the database through the relay in the database host.
    node_url: String,
}

impl PgLab {
    /// The server of `CC_TEST_DATABASE_URL` (a private one when unset), a fresh database on
    /// it, and a relay to it listening in `lab`'s database host; `None` after [`skip`] when
    /// there is no server to be had.
    async fn start(lab: &NetLab) -> Option<Self> {
        let mut server = None;
        let admin_url = match std::env::var("CC_TEST_DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => url,
            _ => match PgServer::start() {
                Some(s) => server.insert(s).url("postgres"),
                None => {
                    skip(
                        "lab cluster on PostgreSQL",
                        "no CC_TEST_DATABASE_URL and no PostgreSQL server binaries",
                    );
                    return None;
                }
            },
        };
        let db = TestDatabase::create(&admin_url).await;
        let upstream = server_address(db.url()).await;
        let relay_addr = std::net::SocketAddr::from((lab.addr(PG_HOST), PG_RELAY_PORT));
        let listener = lab.in_host(PG_HOST, || {
            std::net::TcpListener::bind(relay_addr).unwrap_or_else(|e| {
                panic!("relay listens on {relay_addr} in the database host: {e}")
            })
        });
        let relay = PgRelay::start(listener, upstream);
        let node_url = with_address(db.url(), &relay_addr.to_string());
        Some(Self {
            relay,
            db,
            server,
            node_url,
        })
    }
}

/// A TCP relay in the test process: accepts on a socket opened inside a lab host and pipes
/// each connection to `upstream` (PostgreSQL on the test host's loopback). Whatever the
/// nemesis does to the lab host's link happens to the relayed connections. Dropping it aborts
/// the accept loop, whose set of connection tasks goes with it, closing every socket.
pub struct PgRelay {
    task: tokio::task::JoinHandle<()>,
}

impl PgRelay {
    /// Relays every connection accepted on `listener` to `upstream`. Call inside the runtime.
    pub fn start(listener: std::net::TcpListener, upstream: std::net::SocketAddr) -> Self {
        listener
            .set_nonblocking(true)
            .expect("non-blocking relay socket");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio relay socket");
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((mut inbound, _)) => {
                            connections.spawn(async move {
                                let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await
                                else {
                                    return;
                                };
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                    .await;
                            });
                        }
                        // Out of descriptors or the like: try again shortly.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    },
                    Some(_) = connections.join_next() => {}
                }
            }
        });
        Self { task }
    }
}

impl Drop for PgRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The server's socket address in a `postgres://user@host:port/db` URL (port 5432 if none).
async fn server_address(url: &str) -> std::net::SocketAddr {
    let authority = url_authority(url);
    let hostport = authority.rsplit('@').next().unwrap_or(authority);
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    tokio::net::lookup_host(&hostport)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("the PostgreSQL address {hostport:?} does not resolve"))
}

/// The authority (`user@host:port`) of a URL; panics on a key=value connection string.
fn url_authority(url: &str) -> &str {
    let start = url
        .find("://")
        .map(|i| i + 3)
        .unwrap_or_else(|| panic!("the lab needs a postgres:// URL"));
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    &url[start..end]
}

/// `url` with its host and port replaced by `addr`, user, database and options kept.
fn with_address(url: &str, addr: &str) -> String {
    let authority = url_authority(url);
    let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    url.replacen(authority, &format!("{}{addr}", user.unwrap_or_default()), 1)
}
