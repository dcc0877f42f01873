//! Fault testing: does the cluster keep its promises (DESIGN.md §6) while nodes crash, freeze,
//! come back and leave?
//!
//! Jepsen's method, in-tree, as a pipeline:
//!
//! ```text
//!  workload ──▶ history ──▶ checker ──▶ report
//!  clients do    what each    decides     what a person reads, and the
//!  real HTTP     request      whether     verdict that sets the exit
//!  requests      saw, when    the cluster code of `customer-cluster workload`
//!                             kept its promise
//! ```
//!
//! * **workload** ([`workload`]) — concurrent clients keep writing and reading customers
//!   through rotating entry nodes while something outside (`scripts/failover.sh`, a test)
//!   injects faults and appends each one to an events file. Each customer is written by one
//!   client, sequentially, so "its last acknowledged write" is well defined.
//! * **history** — every request is recorded with the time it was sent, the time its answer
//!   came back, what came back, and which node owned the customer; next to it, the member
//!   lists each node reported every 100 ms.
//! * **checker** — the failover workload makes two direct checks: a read that returns a
//!   version older than the customer's last acknowledged write is a *stale read* (judged as
//!   the answer comes in); at the end, a customer whose stored state is behind its last
//!   acknowledged write counts as a *lost acknowledged write*. [`checker`] decides
//!   linearizability of a whole recorded history, per customer, against a register model
//!   (Wing & Gong / Lowe), with indeterminate operations, and prints a short failing
//!   sub-history.
//! * **history workload** ([`history`]) — the fault tests' workload: random create, get,
//!   put, patch and delete on a few dozen customers through random entry nodes, every request
//!   recorded as a checker operation, ended by one read of every key; with an availability
//!   probe that times how long after a heal every key is read and written again.
//! * **report** ([`report`]) — totals, a per-second timeline, and around each event how long
//!   the survivors took to notice and how long until the customers that moved were written
//!   again. Any stale read or lost write makes the run a failure (exit code 1).
//!
//! * **hooks** ([`hooks`]) — test-only faults inside the node process (a clock at the wrong
//!   rate, lost database replies, delayed routed writes), behind a hidden `--fault-hook` flag,
//!   compiled only with the `fault-hooks` cargo feature (test builds).
//!
//! Deliberately not here: injecting the faults (the driving script or test does it, so the
//! same workload serves every kind of fault; [`hooks`] only acts in a node started with it); clock synchronisation between the workload's
//! host and the nodes (every time in the history is read on the workload's host).

pub mod checker;
pub mod history;
pub mod hooks;
pub mod report;
pub mod workload;

pub use report::{Event, EventReport, WorkloadReport};
pub use workload::WorkloadArgs;

use crate::client::exit::Ending;

/// Flags of `customer-cluster check-history`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckHistoryArgs {
    /// A history saved as JSON Lines (one operation per line), e.g. by
    /// `customer-cluster workload --history FILE`.
    pub file: std::path::PathBuf,
    /// Search steps allowed per customer before its verdict is "unknown" (a failure).
    #[arg(long, default_value_t = checker::DEFAULT_MAX_STEPS)]
    pub max_steps: u64,
}

/// `customer-cluster check-history`: runs the checker on a saved history; a violation (or a
/// key the search could not decide) is a failure, an unreadable file is one too.
pub fn check_history_command(args: &CheckHistoryArgs) -> Ending {
    let file = match std::fs::File::open(&args.file) {
        Ok(f) => f,
        Err(e) => return Ending::failed(&format!("{}: {e}", args.file.display())),
    };
    let ops = match checker::read_jsonl(std::io::BufReader::new(file)) {
        Ok(ops) => ops,
        Err(e) => return Ending::failed(&format!("{}: {e}", args.file.display())),
    };
    let options = checker::CheckOptions {
        max_steps: args.max_steps,
    };
    verdict_ending(&checker::check_with(&ops, &options))
}

/// The ending of a checked history: done when every key is ok, else findings.
pub fn verdict_ending(report: &checker::Report) -> Ending {
    let text = report.to_string();
    if report.is_ok() {
        Ending::Done(text)
    } else {
        Ending::Findings {
            stdout: text,
            error: Some("the history breaks the consistency contract".into()),
        }
    }
}

/// `customer-cluster workload`: runs the workload and ends with its report, a failure if the
/// report found a stale read or a lost write.
pub async fn command(args: &WorkloadArgs) -> Ending {
    match workload::run(args).await {
        Ok(report) => report.ending(),
        Err(e) => Ending::failed(&e),
    }
}
