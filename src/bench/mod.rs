//! The load generator behind `customer-cluster bench`: how fast is the cluster, and what does
//! the remote hop to a customer's owner cost?
//!
//! ```text
//!  validate flags ─▶ discover: GET /v1/cluster on every --nodes URL → node name ↔ URL
//!                 ─▶ preload: --keys customers (64 in flight), remember id + x-owner-node
//!                 ─▶ warm-up (--warmup-s, not recorded) ─▶ measure (--duration-s)
//!                 ─▶ merge the workers' recorders ─▶ BenchResult (JSON to --out, render())
//! ```
//!
//! Each request draws an operation from `--mix` and a key from the `--distribution` (uniform,
//! or Zipf for hot keys), and goes to the entry node `--route` picks: the key's owner, a
//! non-owner, or any node in turn. `--path /health` skips all of that and GETs one path: the
//! ceiling of the HTTP stack alone, to compare the customer operations against. Creates go
//! round-robin whatever `--route` says: a new customer's owner is only known once placed.
//!
//! Two load models (the `workload` module explains both): closed loop (`--concurrency`
//! workers, each waiting for its answer; measures capacity) and open loop (`--rate`, fixed
//! arrival rate, latency from the intended start so queueing is not hidden; measures latency
//! at a given load).
//!
//! Creates in the mix and the preload use emails tagged with a random per-run tag, so runs
//! against the same cluster never collide. A delete retires its key and then creates a
//! replacement, so the key population stays the same size (see [`keys`]).
//!
//! The customers a run created stay, tagged `bench-<run_tag>-…@example.com`, unless
//! `--cleanup` deletes them afterwards ([`cleanup`], when [`args::wants_cleanup`]; [`command`]
//! is the subcommand). Deliberately not done: HTTPS (the client refuses it); coordinating
//! several generator processes; separating the generator's own CPU use from the nodes' when
//! both share a host.
//!
//! Pure parts, each unit-tested: [`args`] (flags, validation), [`mix`] (parsing, drawing),
//! [`sampler`] (PRNG, uniform and Zipf keys), [`plan`] (routing, open-loop schedule), [`keys`]
//! (key slots, emails), [`recorder`] (histograms, percentiles, error counts), [`report`]
//! (the result, rendering, comparison). `setup` and `workload` do the I/O.

pub mod args;
pub mod compare;
pub mod keys;
pub mod mix;
pub mod plan;
pub mod recorder;
pub mod report;
pub mod sampler;
mod setup;
mod workload;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use args::{BenchArgs, Distribution};
use args::{Settings, node_urls, validate, wants_cleanup};
use keys::{EmailGen, KeyTable, run_tag};
use mix::Mix;
pub use plan::Route;
use recorder::Recorder;
pub use report::{BenchNode, BenchResult, LatencySummary, OpResult, ratio_line};
use setup::Target;
use workload::{Phases, Workload};

use crate::client::exit::Ending;

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A flag is out of range or contradicts another.
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),
    /// `--mix` did not parse.
    #[error("invalid --mix {mix:?}: {reason}")]
    InvalidMix {
        /// As given.
        mix: String,
        /// What is wrong.
        reason: String,
    },
    /// A `--nodes` entry is not a usable URL.
    #[error("bad --nodes entry: {reason}")]
    InvalidNode {
        /// As given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A node did not answer at all.
    #[error("node {url} unreachable: {reason}")]
    Unreachable {
        /// Node URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// A node answered `GET /v1/cluster` with an error or an unexpected body.
    #[error("node {url} did not say its name on GET /v1/cluster: {reason} (wrong --token?)")]
    Discovery {
        /// Node URL.
        url: String,
        /// What it answered.
        reason: String,
    },
    /// Two URLs reach the same node.
    #[error("{first} and {second} are the same node {name:?}; list each node once")]
    DuplicateNode {
        /// Node name.
        name: String,
        /// First URL.
        first: String,
        /// Second URL.
        second: String,
    },
    /// Creating the preloaded customers failed.
    #[error("preload failed after {created} of {keys} customers: {reason}")]
    Preload {
        /// Created before the failure.
        created: usize,
        /// Wanted.
        keys: usize,
        /// The failure.
        reason: String,
    },
    /// Removing the run's customers (`--cleanup`) failed part-way.
    #[error("cleanup stopped after removing {removed} customers: {reason}")]
    Cleanup {
        /// Deleted before the failure.
        removed: usize,
        /// The failure.
        reason: String,
    },
    /// A worker task died (a bug).
    #[error("a bench worker failed: {0}")]
    Worker(String),
    /// `--out` could not be written.
    #[error("cannot write the result to {path}: {reason}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// `customer-cluster bench`: runs the benchmark, prints its result, then deletes the run's
/// customers if [`args::wants_cleanup`]. The result is printed before the clean-up starts
/// (deleting thousands of customers takes a while), and stays printed if the clean-up fails.
pub async fn command(args: &BenchArgs) -> Ending {
    let result = match run(args).await {
        Ok(result) => result,
        Err(e) => return Ending::failed(&e),
    };
    // Printed now, not in the returned Ending: the result must be on screen before a long
    // clean-up starts, and stay there if the clean-up fails.
    let printed = Ending::Done(result.render());
    if let Err(e) = printed.write_to(&mut std::io::stdout().lock(), &mut std::io::stderr().lock()) {
        return crate::client::exit::after_write_error(&e);
    }
    if !wants_cleanup(args) {
        return Ending::Done(String::new());
    }
    match cleanup(args, &result.run_tag).await {
        Ok(n) => Ending::Done(format!(
            "  cleanup: removed the {n} customers this run created\n"
        )),
        Err(e) => Ending::failed(&e),
    }
}

/// Runs a benchmark: discover, preload, warm up, measure, report (and write `--out`).
pub async fn run(args: &BenchArgs) -> Result<BenchResult, BenchError> {
    let settings = validate(args)?;
    let timeout = settings.timeout;
    let work = Arc::new(prepare(args, settings).await?);
    let measured = drive(args, work.clone(), timeout).await?;
    let result = assemble(args, &work, measured);
    if let Some(path) = &args.out {
        write_result(path, &result).await?;
    }
    Ok(result)
}

/// Deletes every customer this run created (their emails carry `run_tag`, as [`EmailGen`]
/// makes them), listing through the first `--nodes` URL; returns how many were removed.
pub async fn cleanup(args: &BenchArgs, run_tag: &str) -> Result<usize, BenchError> {
    let url = node_urls(args).into_iter().next().unwrap_or_default();
    let timeout = Duration::from_millis(args.timeout_ms);
    let client =
        crate::client::HttpClient::new(&url, args.token.clone(), timeout).map_err(|e| {
            BenchError::InvalidNode {
                url,
                reason: e.to_string(),
            }
        })?;
    setup::remove_run(&client, &EmailGen::new(run_tag)).await
}

/// Discovers the nodes and preloads the keys (none with `--path`).
async fn prepare(args: &BenchArgs, settings: Settings) -> Result<Workload, BenchError> {
    let strict = args.path.is_none();
    let urls = node_urls(args);
    let targets = setup::discover(&urls, args.token.clone(), settings.timeout, strict).await?;
    let by_name: HashMap<String, usize> = (targets.iter().enumerate())
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let emails = EmailGen::new(run_tag());
    let keys = match args.path {
        Some(_) => KeyTable::default(),
        None => setup::preload(&targets, &by_name, args.keys, &emails).await?,
    };
    Ok(Workload {
        targets,
        by_name,
        mix: settings.mix,
        path: args.path.clone(),
        sampler: settings.sampler,
        keys,
        route: args.route,
        emails,
        seed: args.seed,
    })
}

/// What the measured phase produced.
struct Measured {
    recorder: Recorder,
    /// Open loop: measured tickets never sent.
    unsent: u64,
    /// Start of the measured phase.
    from: Instant,
}

/// Runs warm-up and measured phase in the chosen load model.
async fn drive(
    args: &BenchArgs,
    work: Arc<Workload>,
    timeout: Duration,
) -> Result<Measured, BenchError> {
    let warmup = Duration::from_secs(args.warmup_s);
    let duration = Duration::from_secs(args.duration_s);
    tracing::info!(?warmup, ?duration, rate = ?args.rate, "bench starting");
    let start = Instant::now();
    let from = start + warmup;
    let (recorder, unsent) = match args.rate {
        None => {
            let phases = Phases {
                measure_from: from,
                end: from + duration,
            };
            let recorder = workload::closed_loop(work, args.concurrency, phases).await?;
            (recorder, 0)
        }
        Some(rate) => {
            let schedule = plan::Schedule::new(rate, warmup, duration);
            let hard_stop = from + duration + timeout;
            workload::open_loop(work, args.concurrency, schedule, start, hard_stop).await?
        }
    };
    Ok(Measured {
        recorder,
        unsent,
        from,
    })
}

fn assemble(args: &BenchArgs, work: &Workload, measured: Measured) -> BenchResult {
    let rec = measured.recorder;
    let duration = Duration::from_secs(args.duration_s);
    let window = rec
        .last_send()
        .map(|t| t.saturating_duration_since(measured.from));
    let nodes = work.targets.iter().map(node_of).collect();
    let mode = if args.rate.is_some() {
        "open"
    } else {
        "closed"
    };
    BenchResult {
        label: args.label.clone(),
        mode: mode.into(),
        target_rate: args.rate,
        concurrency: args.concurrency,
        duration_s: args.duration_s,
        warmup_s: args.warmup_s,
        requests: rec.requests(),
        ok: rec.ok_count(),
        throughput_rps: report::throughput_rps(rec.ok_count(), duration, window),
        window_s: window.unwrap_or_default().max(duration).as_secs_f64(),
        latency_us: rec.latency(),
        ops: rec.ops(),
        errors: rec.errors(),
        counters: rec.counters.clone(),
        unsent: measured.unsent,
        nodes,
        route: args.route.name().into(),
        mix: work.mix.as_ref().map(Mix::to_string).unwrap_or_default(),
        path: args.path.clone(),
        keys: work.keys.len(),
        distribution: args.distribution.name().into(),
        zipf_s: (args.distribution == Distribution::Zipf).then_some(args.zipf_s),
        seed: args.seed,
        run_tag: work.emails.tag().to_owned(),
    }
}

fn node_of(t: &Target) -> BenchNode {
    BenchNode {
        name: t.name.clone(),
        url: t.client.base().to_owned(),
    }
}

async fn write_result(path: &std::path::Path, result: &BenchResult) -> Result<(), BenchError> {
    let failed = |reason: String| BenchError::Write {
        path: path.display().to_string(),
        reason,
    };
    let mut json = serde_json::to_vec_pretty(result).map_err(|e| failed(e.to_string()))?;
    json.push(b'\n');
    tokio::fs::write(path, json)
        .await
        .map_err(|e| failed(e.to_string()))
}
