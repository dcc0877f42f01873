//! Shared helpers for multi-process tests: start real nodes from the built binary on free
//! loopback ports, wait on conditions (never fixed sleeps), and kill every child on every path.
#![allow(dead_code)]

pub mod lab;
pub mod nemesis;
pub mod netns;
pub mod postgres;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use customer_cluster::client::{HttpClient, HttpResponse};
use hyper::Method;
use serde_json::{Value, json};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_customer-cluster");

/// The cookie test clusters share.
pub const COOKIE: &str = "test-cluster-cookie-0123456789";

/// A free TCP port on 127.0.0.1 (the OS picks; released before the node binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Polls `cond` until it returns `Some` or `timeout` passes (then panics with `what`).
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How to start one node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// HTTP port.
    pub http_port: u16,
    /// Cluster port.
    pub cluster_port: u16,
    /// Database file, if this node hosts the database.
    pub db_path: Option<PathBuf>,
    /// Seeds (cluster addresses).
    pub seeds: Vec<String>,
    /// Cookie.
    pub cookie: String,
    /// Extra flags.
    pub extra: Vec<String>,
    /// A command the node is started under, which must exec its arguments in place (e.g.
    /// `unshare --time --boottime 3600`, [`in_boot_clock_ahead`]), so that the process
    /// started — the one signalled, killed and reaped — is the node itself. Empty: none.
    pub wrapper: Vec<String>,
}

impl NodeSpec {
    /// A node on fresh ports.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            http_port: free_port(),
            cluster_port: free_port(),
            db_path: None,
            seeds: Vec::new(),
            cookie: COOKIE.into(),
            extra: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// `host:port` of the cluster listener.
    pub fn cluster_addr(&self) -> String {
        format!("127.0.0.1:{}", self.cluster_port)
    }

    fn args(&self) -> Vec<String> {
        let mut a = vec![
            "node".into(),
            "--name".into(),
            self.name.clone(),
            "--http-addr".into(),
            format!("127.0.0.1:{}", self.http_port),
            "--cluster-addr".into(),
            self.cluster_addr(),
        ];
        // Test timings, unless `extra` sets its own (clap refuses a flag given twice).
        for (flag, value) in [
            ("--heartbeat-ms", "200"),
            ("--failure-timeout-ms", "1500"),
            ("--request-timeout-ms", "3000"),
        ] {
            if !self.extra.iter().any(|e| e == flag) {
                a.push(flag.into());
                a.push(value.into());
            }
        }
        if !self.cookie.is_empty() {
            a.push("--cookie".into());
            a.push(self.cookie.clone());
        }
        if let Some(db) = &self.db_path {
            a.push("--db-path".into());
            a.push(db.display().to_string());
        }
        if !self.seeds.is_empty() {
            a.push("--seeds".into());
            a.push(self.seeds.join(","));
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// A running node process; killed (SIGKILL) and reaped when dropped.
pub struct TestNode {
    /// How it was started.
    pub spec: NodeSpec,
    /// Client for its HTTP API.
    pub client: HttpClient,
    child: Option<Child>,
    log: PathBuf,
}

impl TestNode {
    /// Starts the node; its stderr goes to `<log_dir>/<name>.log`.
    pub fn start(spec: NodeSpec, log_dir: &Path) -> Self {
        let log = log_dir.join(format!("{}.log", spec.name));
        // A node started with `--api-token T` is asked with that token.
        let token = spec
            .extra
            .windows(2)
            .find(|w| w[0] == "--api-token")
            .map(|w| w[1].clone());
        let client = HttpClient::new(
            &format!("127.0.0.1:{}", spec.http_port),
            token,
            Duration::from_secs(15),
        )
        .expect("client");
        let mut node = Self {
            spec,
            client,
            child: None,
            log,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = match self.spec.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .args(self.spec.args())
            .env_remove("RUST_LOG")
            .env_remove("CUSTOMER_CLUSTER_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn node");
        self.child = Some(child);
    }

    /// The OS pid.
    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .map(|c| c.id() as i32)
            .expect("node not running")
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for exit; returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        let mut child = self.child.take()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not exit within {timeout:?} after SIGTERM",
                    self.spec.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process started last is still alive (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits (polling, up to `timeout`) for the process to exit by itself; its exit code, or
    /// `None` when killed by a signal. Panics if it is still running at the deadline.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let what = format!("{} exited", self.spec.name);
        wait_until(&what, timeout, || {
            let status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            async move { status.map(|s| s.code()) }
        })
        .await
    }

    /// Starts the same node again (same name, ports, database file).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let what = format!("{} ready", self.spec.name);
        wait_until(&what, timeout, || async {
            match self.client.get("/ready").await {
                Ok(r) if r.status == 200 => Some(()),
                _ => None,
            }
        })
        .await;
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `POST /v1/customers`.
    pub async fn create(&self, name: &str, email: &str) -> HttpResponse {
        self.client
            .json(
                Method::POST,
                "/v1/customers",
                &json!({"name": name, "email": email}),
                &[],
            )
            .await
            .expect("create request")
    }

    /// `GET /v1/customers/{id}`.
    pub async fn get(&self, id: &str) -> HttpResponse {
        self.client
            .get(&format!("/v1/customers/{id}"))
            .await
            .expect("get request")
    }

    /// `PATCH /v1/customers/{id}`.
    pub async fn patch(&self, id: &str, body: Value) -> HttpResponse {
        self.client
            .json(Method::PATCH, &format!("/v1/customers/{id}"), &body, &[])
            .await
            .expect("patch request")
    }

    /// Every customer (one page of up to 1000), as JSON objects.
    pub async fn list_all(&self) -> Vec<Value> {
        let r = self
            .client
            .get("/v1/customers?limit=1000")
            .await
            .expect("list request");
        let v: Value = r.json().expect("list body");
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// `GET /v1/cluster` as JSON.
    pub async fn cluster(&self) -> Option<Value> {
        let r = self.client.get("/v1/cluster").await.ok()?;
        (r.status == 200).then(|| r.json().ok()).flatten()
    }

    /// Member names in this node's view.
    pub async fn members(&self) -> Option<Vec<String>> {
        let c = self.cluster().await?;
        Some(
            c["members"]
                .as_array()?
                .iter()
                .filter_map(|m| m["name"].as_str().map(str::to_owned))
                .collect(),
        )
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- last log lines of {} ----", self.spec.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A local cluster: node 1 hosts the database, the others seed from node 1.
pub struct TestCluster {
    /// Nodes, in start order (n1 first).
    pub nodes: Vec<TestNode>,
    /// Holds logs and the database file.
    pub dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `n` nodes named `<prefix>1..<prefix>n` and waits until each sees all of them.
    pub async fn start(prefix: &str, n: usize, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut specs = Self::specs(prefix, n, &[], extra);
        specs[0].db_path = Some(dir.path().join("customers.db"));
        Self::launch(specs, dir).await
    }

    /// Starts `n` nodes that each run a Database actor over the PostgreSQL database at `url`
    /// (`--database-url`), the others seeding from the first, and waits until each sees all.
    pub async fn start_postgres(prefix: &str, n: usize, url: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let specs = Self::specs(prefix, n, &["--database-url", url], extra);
        Self::launch(specs, dir).await
    }

    /// `n` node specs, every node after the first seeded from it, each with `storage` then
    /// `extra` as its extra flags.
    fn specs(prefix: &str, n: usize, storage: &[&str], extra: &[&str]) -> Vec<NodeSpec> {
        let mut specs: Vec<NodeSpec> = (1..=n)
            .map(|i| NodeSpec::new(&format!("{prefix}{i}")))
            .collect();
        let seed = specs[0].cluster_addr();
        for (i, spec) in specs.iter_mut().enumerate() {
            if i > 0 {
                spec.seeds = vec![seed.clone()];
            }
            spec.extra = storage.iter().chain(extra).map(|s| s.to_string()).collect();
        }
        specs
    }

    /// Like [`TestCluster::start`] (SQLite on node 1), with node `wrapped` (0-based) started
    /// under `wrapper` ([`NodeSpec::wrapper`]). Waits for the other nodes to be ready and for
    /// every node to list all `n` members, not for the wrapped node to be ready: what it does
    /// under its wrapper is for the test to judge.
    pub async fn start_wrapped(
        prefix: &str,
        n: usize,
        extra: &[&str],
        wrapped: usize,
        wrapper: &[String],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut specs = Self::specs(prefix, n, &[], extra);
        specs[0].db_path = Some(dir.path().join("customers.db"));
        specs[wrapped].wrapper = wrapper.to_vec();
        let nodes: Vec<TestNode> = specs
            .into_iter()
            .map(|s| TestNode::start(s, dir.path()))
            .collect();
        let cluster = Self { nodes, dir };
        let timeout = Duration::from_secs(60);
        for (i, node) in cluster.nodes.iter().enumerate() {
            if i != wrapped {
                node.wait_ready(timeout).await;
            }
        }
        let all: Vec<&TestNode> = cluster.nodes.iter().collect();
        cluster.wait_members(&all, n, timeout).await;
        cluster
    }

    async fn launch(specs: Vec<NodeSpec>, dir: tempfile::TempDir) -> Self {
        let n = specs.len();
        let nodes = specs
            .into_iter()
            .map(|s| TestNode::start(s, dir.path()))
            .collect();
        let cluster = Self { nodes, dir };
        cluster.wait_converged(n, Duration::from_secs(60)).await;
        cluster
    }

    /// The HTTP URL of every node, in start order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("http://127.0.0.1:{}", n.spec.http_port))
            .collect()
    }

    /// Waits until every running node in `self.nodes` reports `n` members.
    pub async fn wait_converged(&self, n: usize, timeout: Duration) {
        for node in &self.nodes {
            node.wait_ready(timeout).await;
        }
        self.wait_members(&self.nodes.iter().collect::<Vec<_>>(), n, timeout)
            .await;
    }

    /// Waits until each of `nodes` reports exactly `n` members.
    pub async fn wait_members(&self, nodes: &[&TestNode], n: usize, timeout: Duration) {
        for node in nodes {
            let what = format!("{} sees {n} members", node.spec.name);
            wait_until(&what, timeout, || async {
                node.members().await.filter(|m| m.len() == n).map(|_| ())
            })
            .await;
        }
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> &TestNode {
        self.nodes
            .iter()
            .find(|n| n.spec.name == name)
            .expect("no such node")
    }
}

/// The wrapper that runs a node in a new time namespace whose boot clock
/// (`CLOCK_BOOTTIME`) is `seconds` ahead of its monotonic clock, as on a host that was
/// suspended once: `unshare --time --boottime <seconds>`. Without `--fork`, `unshare` enters
/// the namespace for its children and then execs the node, which (Linux ≥ 6.3) moves the
/// exec'd program into it: the pid the test holds is the node's. `None` when this host cannot
/// (not root, no `unshare`, a kernel without time namespaces or that exec switch).
pub fn in_boot_clock_ahead(seconds: u64) -> Option<Vec<String>> {
    let offset = seconds.to_string();
    let wrapper: Vec<String> = ["unshare", "--time", "--boottime", offset.as_str()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .args(["cat", "/proc/self/timens_offsets"])
        .output()
        .ok()?;
    let offsets = String::from_utf8_lossy(&out.stdout);
    let applied = offsets.lines().any(|l| {
        l.split_whitespace()
            .take(2)
            .eq(["boottime", offset.as_str()])
    });
    (out.status.success() && applied).then_some(wrapper)
}

/// Kills and reaps a child process when dropped (for helper processes that are not nodes).
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Extracts `id` from a customer response.
pub fn id_of(r: &HttpResponse) -> String {
    let v: Value = r.json().expect("json body");
    v["id"].as_str().expect("id").to_owned()
}

/// A cluster peer started in the test process (not a node binary): `name`, the test cookie,
/// loopback, and `incoming`/`transport` for TLS (`None`, `Transport::Plain` without). Used to
/// play impostors and hostile peers a node binary would refuse to be.
pub async fn in_process_peer(
    name: &str,
    incoming: Option<tokio_rustls::TlsAcceptor>,
    transport: customer_cluster::cluster::mesh::Transport,
) -> customer_cluster::cluster::mesh::Mesh {
    customer_cluster::cluster::mesh::Mesh::start(customer_cluster::cluster::mesh::MeshConfig {
        name: name.into(),
        incarnation: 1,
        bind: "127.0.0.1:0".parse().unwrap(),
        advertise_host: "127.0.0.1".into(),
        cookie: COOKIE.into(),
        incoming,
        transport,
        max_unauthenticated: 8,
        handshake_timeout: Duration::from_secs(5),
        max_unauthenticated_per_source: 4,
        allow: Vec::new(),
    })
    .await
    .unwrap()
}
