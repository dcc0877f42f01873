//! The nemesis of the fault tests: scripted faults over a 3-node cluster in a [`NetLab`]
//! (n1 in host 1 hosts SQLite, n2 and n3 seed from it), each recorded with when it started and
//! when it healed.
//!
//! ```text
//!  LabCluster::start ─▶ inject(fault) ─▶ … workload runs … ─▶ heal(fault) ─▶ timeline()
//!                        kill -9 · SIGSTOP · isolate · minority · partial · db cut
//! ```
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

/// One scripted fault. Hosts are numbered from 1; node `nk` runs in host `k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL node k; healed by starting it again.
    Kill(usize),
    /// SIGSTOP node k; healed by SIGCONT.
    Freeze(usize),
    /// Cut host k from every other host.
    Isolate(usize),
    /// Cut host k (alone, the minority) from the two others (the majority).
    Minority(usize),
    /// Cut hosts a and b from each other while both still reach the third.
    Partial(usize, usize),
    /// Cut host k from the database node's host (1) only.
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
            Fault::DbCut(k) => write!(f, "cut n{k} from the database node n1"),
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

/// Three `customer-cluster` nodes in a lab: n1 (database), n2, n3.
pub struct LabCluster {
    /// Nodes `n1..n3`, in host order. Declared before `lab` so they die first.
    pub nodes: Vec<LabNode>,
    /// The lab (namespaces, cuts).
    pub lab: NetLab,
    /// Logs and the database file.
    pub dir: tempfile::TempDir,
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
        assert_eq!(lab.len(), 3, "the fault scenarios use three hosts");
        let dir = tempfile::tempdir().expect("tempdir");
        let flags =
            |k: usize| -> Vec<String> { extra[k - 1].iter().map(|s| s.to_string()).collect() };
        let mut spec = LabNodeSpec::new("n1", 1);
        spec.db_path = Some(dir.path().join("customers.db"));
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
            lab,
            dir,
            timeline: Vec::new(),
        };
        cluster.wait_converged(Duration::from_secs(60)).await;
        cluster
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
                let rest: Vec<usize> = (1..=3).filter(|&h| h != k).collect();
                self.lab.partition(&[k], &rest);
            }
            Fault::Partial(a, b) => self.lab.partition(&[a], &[b]),
            Fault::DbCut(k) => self.lab.partition(&[k], &[1]),
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
