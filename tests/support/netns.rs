//! A network lab on one machine: every test host is its own Linux network namespace with its
//! own IPv4 address, and a nemesis cuts and heals the links between hosts with nftables. This
//! is what lets a fault test run real partitions (full, majority/minority, partial, node to
//! database node) between real processes without containers.
//!
//! ```text
//!   test process (host namespace)  10.213.X.254 on veth <tag> ─────────────┐
//!                                                                           │ obs
//!   namespace <tag>hub            bridge br0 ──────┬──────────┬─────────────┘
//!                                             h1 │       h2 │       h3 │     (veths)
//!   namespaces <tag>h1, <tag>h2, …     eth0 10.213.X.1   eth0 10.213.X.2   eth0 10.213.X.3
//! ```
//!
//! * **The bridge lives in a namespace of its own.** A bridge in the host namespace hands its
//!   frames to the host's iptables FORWARD chain whenever `br_netfilter` is loaded, and Docker
//!   sets that chain's policy to DROP: whether the lab worked would depend on the machine. In
//!   the hub namespace there are no rules at all.
//! * **The test process has an address on the segment (`.254`)**, so it reaches every host with
//!   its ordinary HTTP client. The nemesis never cuts it: like Jepsen's control node it watches
//!   every side of a partition.
//! * **A cut drops, it does not reject.** Each host gets an nftables table `cc_nemesis` whose
//!   input chain drops every packet from the hosts it is cut from. A dropped SYN makes
//!   `connect` time out and a dropped segment makes an open TCP session hang, which is what a
//!   pulled cable or a failed switch does and what the failure detector must cope with; a
//!   reject (RST or ICMP unreachable) would tell both ends at once and test a much easier
//!   failure. Both sides drop on input, so every cut is symmetric, and nothing is dropped on
//!   output: a local output drop returns `EPERM` to the sender, which no real network does.
//! * **Cuts accumulate** (`partition` twice cuts both pairs) until `heal` removes them all.
//!   Every change rewrites each host's table in one nftables transaction.
//!
//! **Names and addresses are unique per lab.** The tag is `ccl<pid hex>x<lab counter hex>`;
//! the namespaces are `<tag>hub` and `<tag>h<k>`, the host-side veth is `<tag>` (at most 12
//! bytes, under the 15-byte interface name limit). The subnet `10.213.X.0/24` is picked under
//! an flock on [`LOCK_PATH`] among the `X` that no address on the host uses yet, so test
//! binaries running in parallel (and `scripts/cluster.sh up --netns`, which prefers `X = 0`)
//! never share one. Traffic only ever goes to these addresses.
//!
//! **Cleanup always runs.** Dropping a [`NetLab`] (also while unwinding from a panic) kills
//! every process still inside its namespaces, deletes the host veth and the namespaces; the
//! hub's veths and bridge go with the hub. A test binary killed with SIGKILL cannot run `Drop`,
//! so every [`NetLab::new`] first sweeps labs whose owning PID no longer exists.
//!
//! **Root only.** Without root (or without `ip`/`nft`) [`NetLab::try_new`] prints a loud
//! `SKIPPED` line, and fails the test when `CI=true` so CI cannot go green by skipping.
//!
//! Deliberately not here: delays and loss (netem), one-way cuts, the workload and the checker.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use customer_cluster::client::HttpClient;
use serde_json::Value;

use super::{BIN, COOKIE, wait_until};

/// Serialises subnet choice between processes (held only while a lab is being created).
pub const LOCK_PATH: &str = "/tmp/customer-cluster-netlab.lock";

/// Every lab address is `10.213.X.k`: a private range nothing on a test machine routes.
const NET_PREFIX: [u8; 2] = [10, 213];

/// The last octet of the test process's own address on a lab's segment.
pub const OBSERVER_OCTET: u8 = 254;

/// The third octet `scripts/cluster.sh up --netns` prefers; labs leave it to the script.
const SCRIPT_SUBNET: u8 = 0;

/// Prefix of every lab's tag; the sweep only ever touches names that parse as a lab tag.
const TAG_PREFIX: &str = "ccl";

/// The nftables table the nemesis owns inside each host namespace.
const NEMESIS_TABLE: &str = "cc_nemesis";

/// Where `ip netns` keeps its namespace handles.
const NETNS_DIR: &str = "/run/netns";

/// Distinguishes the labs of one process.
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Hosts in their own network namespaces, joined by a bridge, with a nemesis over their links.
/// Hosts are numbered from 1 (host k has address `10.213.X.k`, and runs node `nk` by habit).
pub struct NetLab {
    /// `ccl<pid hex>x<counter hex>`: the prefix of every name this lab creates.
    tag: String,
    /// `X` in `10.213.X.0/24`.
    subnet: u8,
    /// Namespace names; `hosts[k - 1]` is host k.
    hosts: Vec<String>,
    /// The cut host pairs, each stored as (smaller, larger) host number.
    cuts: Mutex<BTreeSet<(usize, usize)>>,
}

impl NetLab {
    /// A lab of `n_hosts`, or `None` (after saying why, loudly) when this machine cannot run
    /// one: not root, or `ip`/`nft` missing. Panics instead when `CI=true`.
    pub fn try_new(n_hosts: usize) -> Option<Self> {
        match missing_prerequisite() {
            None => Some(Self::new(n_hosts)),
            Some(why) => {
                let ci = std::env::var("CI").is_ok_and(|v| v == "true");
                // Straight to the stderr handle: libtest captures `eprintln!` of passing
                // tests, and a skip must be seen.
                let _ = writeln!(
                    std::io::stderr(),
                    "!!!!!!!! network namespace test SKIPPED: {why} !!!!!!!!"
                );
                assert!(!ci, "CI=true: network namespace tests must run, but {why}");
                None
            }
        }
    }

    /// A lab of `n_hosts` (1..=250). Panics, after removing whatever it had created, if any
    /// step fails.
    pub fn new(n_hosts: usize) -> Self {
        assert!((1..=250).contains(&n_hosts), "a lab has 1..=250 hosts");
        let counter = LAB_COUNTER.fetch_add(1, Ordering::Relaxed) % 256;
        let tag = format!("{TAG_PREFIX}{:x}x{counter:x}", std::process::id());
        let _lock = FileLock::acquire(LOCK_PATH);
        sweep_stale_labs();
        let subnet = free_subnet(std::process::id() + counter);
        let lab = Self {
            hosts: (1..=n_hosts).map(|k| format!("{tag}h{k}")).collect(),
            tag,
            subnet,
            cuts: Mutex::new(BTreeSet::new()),
        };
        // From here on a panic drops `lab`, which removes whatever exists so far.
        lab.create_hub();
        for k in 1..=n_hosts {
            lab.create_host(k);
        }
        lab
    }

    fn hub(&self) -> String {
        format!("{}hub", self.tag)
    }

    fn create_hub(&self) {
        let hub = self.hub();
        run(ip(&["netns", "add", &hub]));
        run(ip(&["-n", &hub, "link", "set", "lo", "up"]));
        run(ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]));
        run(ip(&["-n", &hub, "link", "set", "br0", "up"]));
        // The observer's veth: one end on the host with .254, the other on the bridge.
        let observer = format!("{}/24", self.observer_addr());
        run(ip(&[
            "link", "add", &self.tag, "type", "veth", "peer", "name", "obs", "netns", &hub,
        ]));
        run(ip(&[
            "-n", &hub, "link", "set", "obs", "master", "br0", "up",
        ]));
        run(ip(&["addr", "add", &observer, "dev", &self.tag]));
        run(ip(&["link", "set", &self.tag, "up"]));
    }

    fn create_host(&self, k: usize) {
        let (hub, ns) = (self.hub(), self.namespace(k));
        let port = format!("h{k}");
        let addr = format!("{}/24", self.addr(k));
        run(ip(&["netns", "add", &ns]));
        run(ip(&[
            "-n", &hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]));
        run(ip(&[
            "-n", &hub, "link", "set", &port, "master", "br0", "up",
        ]));
        run(ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]));
        run(ip(&["-n", &ns, "link", "set", "eth0", "up"]));
        run(ip(&["-n", &ns, "link", "set", "lo", "up"]));
    }

    /// How many hosts.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// The prefix of every namespace and interface name of this lab.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Host `k`'s address.
    pub fn addr(&self, k: usize) -> Ipv4Addr {
        self.check_host(k);
        Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], self.subnet, k as u8)
    }

    /// The test process's own address on the lab segment (never cut).
    pub fn observer_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(NET_PREFIX[0], NET_PREFIX[1], self.subnet, OBSERVER_OCTET)
    }

    /// Host `k`'s namespace name (for `ip netns exec NAME …` by hand).
    pub fn namespace(&self, k: usize) -> String {
        self.check_host(k);
        self.hosts[k - 1].clone()
    }

    fn check_host(&self, k: usize) {
        assert!(
            (1..=self.hosts.len()).contains(&k),
            "host {k} is not in this lab of {} hosts",
            self.hosts.len()
        );
    }

    fn open_namespace(&self, k: usize) -> File {
        let path = Path::new(NETNS_DIR).join(self.namespace(k));
        File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
    }

    /// Starts `cmd` inside host `k`'s namespace. The caller's command is kept as it is (args,
    /// environment, directory, stdio): the child joins the namespace with `setns(2)` just
    /// before `exec`, which is what `ip netns exec` does, so the PID is the program's own.
    /// The process is killed when the returned guard, or the lab, is dropped.
    pub fn spawn(&self, k: usize, mut cmd: Command) -> LabProcess {
        let ns = self.open_namespace(k);
        let fd = ns.as_raw_fd();
        // SAFETY: the closure runs in the forked child before exec and only makes the
        // async-signal-safe setns(2) syscall on an fd the parent keeps open until spawn returns.
        unsafe {
            cmd.pre_exec(move || match libc::setns(fd, libc::CLONE_NEWNET) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?} in host {k}: {e}", cmd.get_program()));
        drop(ns);
        LabProcess { child, host: k }
    }

    /// Runs `f` on a thread that has joined host `k`'s namespace: sockets it opens belong to
    /// that host (and keep belonging to it after the thread ends). For plain-socket checks.
    pub fn in_host<T: Send>(&self, k: usize, f: impl FnOnce() -> T + Send) -> T {
        let ns = self.open_namespace(k);
        std::thread::scope(|s| {
            let joined = s.spawn(|| {
                // SAFETY: setns(2) on an open namespace fd; it only affects this new thread.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                let err = std::io::Error::last_os_error();
                assert_eq!(rc, 0, "setns into host {k}: {err}");
                f()
            });
            joined
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Cuts every host in `a` from every host in `b`, both ways, adding to any cut already in
    /// place. Packets are dropped, so connections hang rather than fail.
    pub fn partition(&self, a: &[usize], b: &[usize]) {
        let mut cuts = self.lock_cuts();
        for &x in a {
            for &y in b {
                self.check_host(x);
                self.check_host(y);
                assert_ne!(x, y, "a host cannot be cut from itself");
                cuts.insert((x.min(y), x.max(y)));
            }
        }
        self.apply(&cuts);
    }

    /// Cuts host `k` from every other host (the test process still reaches it).
    pub fn isolate(&self, k: usize) {
        let others: Vec<usize> = (1..=self.len()).filter(|&h| h != k).collect();
        self.partition(&[k], &others);
    }

    /// Removes every cut.
    pub fn heal(&self) {
        let mut cuts = self.lock_cuts();
        cuts.clear();
        self.apply(&cuts);
    }

    /// The cut pairs, each as (smaller, larger) host number.
    pub fn cuts(&self) -> Vec<(usize, usize)> {
        self.lock_cuts().iter().copied().collect()
    }

    fn lock_cuts(&self) -> std::sync::MutexGuard<'_, BTreeSet<(usize, usize)>> {
        // A panic while holding the lock leaves the set as consistent as the rules it mirrors.
        self.cuts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rewrites every host's nemesis table to match `cuts`.
    fn apply(&self, cuts: &BTreeSet<(usize, usize)>) {
        for k in 1..=self.len() {
            let peers: Vec<Ipv4Addr> = cut_peers(cuts, k)
                .into_iter()
                .map(|p| self.addr(p))
                .collect();
            let mut nft = ip(&["netns", "exec", &self.namespace(k), "nft", "-f", "-"]);
            run_with_input(&mut nft, &nemesis_ruleset(&peers));
        }
    }

    /// Every namespace this lab owns, hub last.
    fn namespaces(&self) -> Vec<String> {
        let mut all = self.hosts.clone();
        all.push(self.hub());
        all
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in self.namespaces() {
            kill_namespace_processes(&ns);
        }
        // Deleting the host end of a veth is synchronous; leaving it to the namespace teardown
        // would let it linger for a moment after drop.
        quiet(ip(&["link", "del", &self.tag]));
        for ns in self.namespaces() {
            quiet(ip(&["netns", "del", &ns]));
        }
    }
}

/// The hosts `k` is cut from.
fn cut_peers(cuts: &BTreeSet<(usize, usize)>, k: usize) -> Vec<usize> {
    cuts.iter()
        .filter_map(|&(a, b)| match k {
            _ if a == k => Some(b),
            _ if b == k => Some(a),
            _ => None,
        })
        .collect()
}

/// One nftables transaction that replaces the nemesis table: drop input from `peers`.
/// (`add` then `delete` makes the delete succeed whether or not the table exists.)
fn nemesis_ruleset(peers: &[Ipv4Addr]) -> String {
    let mut rules = format!("add table inet {NEMESIS_TABLE}\ndelete table inet {NEMESIS_TABLE}\n");
    if !peers.is_empty() {
        let set: Vec<String> = peers.iter().map(Ipv4Addr::to_string).collect();
        rules.push_str(&format!(
            "table inet {NEMESIS_TABLE} {{\n  chain input {{\n    type filter hook input priority -300; policy accept;\n    ip saddr {{ {} }} drop\n  }}\n}}\n",
            set.join(", ")
        ));
    }
    rules
}

/// A process started in a lab host; SIGKILLed and reaped when dropped.
pub struct LabProcess {
    child: Child,
    host: usize,
}

impl LabProcess {
    /// The OS pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The host it runs in.
    pub fn host(&self) -> usize {
        self.host
    }

    /// SIGKILL, then reap; returns how it ended.
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        kill9(self.pid());
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("wait for pid {}: {e}", self.pid()))
    }

    /// SIGSTOP (frozen: no CPU, sockets stay open, peers see silence).
    pub fn stop(&self) {
        stop(self.pid());
    }

    /// SIGCONT after [`LabProcess::stop`].
    pub fn cont(&self) {
        cont(self.pid());
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// True when it ended by SIGKILL.
    pub fn was_killed(&mut self) -> bool {
        self.exited().and_then(|s| s.signal()) == Some(libc::SIGKILL)
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGKILL `pid` (a crash: no cleanup, no goodbye to peers).
pub fn kill9(pid: u32) {
    signal(pid, libc::SIGKILL);
}

/// SIGSTOP `pid`.
pub fn stop(pid: u32) {
    signal(pid, libc::SIGSTOP);
}

/// SIGCONT `pid`.
pub fn cont(pid: u32) {
    signal(pid, libc::SIGCONT);
}

/// Sends `sig` to `pid` (e.g. SIGUSR1, which switches a node's fault hooks on).
pub fn signal(pid: u32, sig: i32) {
    let target = i32::try_from(pid).unwrap_or_else(|_| panic!("pid {pid} out of range"));
    // SAFETY: kill(2) with a positive pid signals exactly that process.
    let rc = unsafe { libc::kill(target, sig) };
    let err = std::io::Error::last_os_error();
    assert_eq!(rc, 0, "kill({pid}, {sig}): {err}");
}

/// How to start one `customer-cluster` node in a lab host.
#[derive(Clone, Debug)]
pub struct LabNodeSpec {
    /// Node name (`nk` for host k by habit).
    pub name: String,
    /// The host it runs in.
    pub host: usize,
    /// Cluster port on the host's address (hosts have their own addresses, so every node may
    /// use the same ports).
    pub cluster_port: u16,
    /// HTTP port on the host's address.
    pub http_port: u16,
    /// SQLite file, if this node hosts the database.
    pub db_path: Option<PathBuf>,
    /// Seeds (cluster addresses of peers).
    pub seeds: Vec<String>,
    /// Extra flags.
    pub extra: Vec<String>,
}

impl LabNodeSpec {
    /// Node `name` in host `host` on the default ports 4701 (cluster) and 8081 (HTTP).
    pub fn new(name: &str, host: usize) -> Self {
        Self {
            name: name.into(),
            host,
            cluster_port: 4701,
            http_port: 8081,
            db_path: None,
            seeds: Vec::new(),
            extra: Vec::new(),
        }
    }

    fn args(&self, ip: Ipv4Addr) -> Vec<String> {
        let mut a: Vec<String> = [
            "node",
            "--name",
            &self.name,
            "--cluster-addr",
            &format!("{ip}:{}", self.cluster_port),
            "--http-addr",
            &format!("{ip}:{}", self.http_port),
            "--cookie",
            COOKIE,
            "--heartbeat-ms",
            "200",
            "--failure-timeout-ms",
            "1500",
            "--request-timeout-ms",
            "3000",
        ]
        .map(String::from)
        .to_vec();
        if let Some(db) = &self.db_path {
            a.extend(["--db-path".into(), db.display().to_string()]);
        }
        if !self.seeds.is_empty() {
            a.extend(["--seeds".into(), self.seeds.join(",")]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }
}

/// A `customer-cluster` node running in a lab host. Killed when dropped; on a panic its last
/// log lines are printed.
pub struct LabNode {
    /// How it was started.
    pub spec: LabNodeSpec,
    /// Client for its HTTP API, from the test process (through the observer address).
    pub client: HttpClient,
    /// Its host's address.
    pub ip: Ipv4Addr,
    process: Option<LabProcess>,
    log: PathBuf,
}

impl LabNode {
    /// Starts a node in `lab`; its stderr goes to `<log_dir>/<name>.log`.
    pub fn start(lab: &NetLab, spec: LabNodeSpec, log_dir: &Path) -> Self {
        let ip = lab.addr(spec.host);
        let client = HttpClient::new(
            &format!("{ip}:{}", spec.http_port),
            None,
            Duration::from_secs(5),
        )
        .expect("client");
        let log = log_dir.join(format!("{}.log", spec.name));
        let mut node = Self {
            spec,
            client,
            ip,
            process: None,
            log,
        };
        node.restart(lab);
        node
    }

    /// The cluster address peers dial.
    pub fn cluster_addr(&self) -> String {
        format!("{}:{}", self.ip, self.spec.cluster_port)
    }

    /// Starts the node again (killing it first if it runs): same name, host, database file.
    pub fn restart(&mut self, lab: &NetLab) {
        self.process = None;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("log file {}: {e}", self.log.display()));
        let mut cmd = Command::new(BIN);
        cmd.args(self.spec.args(self.ip))
            .env_remove("RUST_LOG")
            .env_remove("CUSTOMER_CLUSTER_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.process = Some(lab.spawn(self.spec.host, cmd));
    }

    /// The running process (panics if it was killed and not restarted).
    pub fn process(&mut self) -> &mut LabProcess {
        self.process.as_mut().expect("node not running")
    }

    /// `GET /v1/cluster` as JSON, if the node answers.
    pub async fn cluster(&self) -> Option<Value> {
        let r = self.client.get("/v1/cluster").await.ok()?;
        (r.status == 200).then(|| r.json().ok()).flatten()
    }

    /// Member names in this node's view, if it answers.
    pub async fn members(&self) -> Option<Vec<String>> {
        let c = self.cluster().await?;
        let names = c["members"]
            .as_array()?
            .iter()
            .filter_map(|m| m["name"].as_str().map(str::to_owned));
        Some(names.collect())
    }

    /// Waits until this node's member list is exactly `expected` (in any order).
    pub async fn wait_members(&self, expected: &[&str], timeout: Duration) {
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        want.sort();
        let what = format!("{} sees members {want:?}", self.spec.name);
        wait_until(&what, timeout, || async {
            let mut seen = self.members().await?;
            seen.sort();
            (seen == want).then_some(())
        })
        .await;
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for LabNode {
    fn drop(&mut self) {
        self.process = None;
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- last log lines of {} ----", self.spec.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Why this machine cannot run a lab, if it cannot.
fn missing_prerequisite() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (network namespaces and nftables need it)".into());
    }
    for (tool, flag, install) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        let found = Command::new(tool)
            .arg(flag)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` not found (apt-get install -y {install})"));
        }
    }
    None
}

/// An exclusive flock, released on drop.
struct FileLock(File);

impl FileLock {
    fn acquire(path: &str) -> Self {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: flock(2) on a descriptor we own; blocks until the lock is ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        let err = std::io::Error::last_os_error();
        assert_eq!(rc, 0, "flock {path}: {err}");
        Self(file)
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own descriptor (closing it would release the lock too).
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// A third octet no address on the host uses yet, starting the search at `seed` so parallel
/// labs rarely even compare notes. Call under [`LOCK_PATH`].
fn free_subnet(seed: u32) -> u8 {
    let addrs = run(ip(&["-o", "-4", "addr", "show"]));
    let used: BTreeSet<u8> = addrs
        .split_whitespace()
        .filter_map(|word| {
            let rest = word.strip_prefix(&format!("{}.{}.", NET_PREFIX[0], NET_PREFIX[1]))?;
            rest.split('.').next()?.parse().ok()
        })
        .collect();
    (0..255u32)
        .map(|i| ((seed + i) % 255 + 1) as u8)
        .find(|x| *x != SCRIPT_SUBNET && !used.contains(x))
        .expect("every 10.213.X.0/24 subnet is in use")
}

/// The owning PID of a lab name (`ccl<pid hex>x<counter hex>[hub|h<k>]`), if it is one.
fn lab_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TAG_PREFIX)?;
    let (pid, rest) = rest.split_once('x')?;
    let counter_len = rest.chars().take_while(char::is_ascii_hexdigit).count();
    let (counter, suffix) = rest.split_at(counter_len);
    let suffix_ok = suffix.is_empty()
        || suffix == "hub"
        || suffix
            .strip_prefix('h')
            .is_some_and(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_digit()));
    (!counter.is_empty() && suffix_ok)
        .then(|| u32::from_str_radix(pid, 16).ok())
        .flatten()
}

/// Removes the namespaces and host links of labs whose process is gone (killed before its
/// `Drop` could run). Call under [`LOCK_PATH`].
fn sweep_stale_labs() {
    let dead = |name: &str| {
        lab_owner(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    let namespaces = std::fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for ns in namespaces.iter().filter(|ns| dead(ns)) {
        eprintln!("netlab: removing namespace {ns} left by a killed test run");
        kill_namespace_processes(ns);
        quiet(ip(&["netns", "del", ns]));
    }
    let links = run(ip(&["-o", "link", "show"]));
    for line in links.lines() {
        // "7: ccl1a2bx0@if6: <BROADCAST,…"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if dead(name) {
            eprintln!("netlab: removing link {name} left by a killed test run");
            quiet(ip(&["link", "del", name]));
        }
    }
}

/// SIGKILLs every process inside namespace `ns` (they could keep it alive after `netns del`).
fn kill_namespace_processes(ns: &str) {
    let Ok(pids) = run_checked(ip(&["netns", "pids", ns])) else {
        return;
    };
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: kill(2) of a process inside a namespace this lab created.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn ip(args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    cmd
}

/// Runs `cmd` to completion; stdout on success, else a message with its stderr.
fn run_checked(mut cmd: Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            stderr.trim()
        ))
    }
}

/// Runs `cmd`; panics with its stderr if it fails.
fn run(cmd: Command) -> String {
    run_checked(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd` with `input` on stdin; panics with its stderr if it fails.
fn run_with_input(cmd: &mut Command, input: &str) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .unwrap_or_else(|e| panic!("{cmd:?}: writing stdin: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}\ninput was:\n{input}",
        out.status,
        stderr.trim()
    );
}

/// Runs a cleanup command: a thing already gone is fine, any other failure is reported on
/// stderr (never a panic: this runs in `Drop`, possibly while unwinding).
fn quiet(cmd: Command) {
    if let Err(e) = run_checked(cmd)
        && !e.contains("No such file")
        && !e.contains("Cannot find device")
        && !e.contains("does not exist")
    {
        eprintln!("netlab cleanup: {e}");
    }
}
