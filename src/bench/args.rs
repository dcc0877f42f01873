//! The flags of `customer-cluster bench` and their validation: everything that can be wrong
//! with a command line is found here, before any request is sent.
//!
//! [`BenchArgs`] derives `clap::Args` so the CLI can flatten it into a subcommand; its
//! [`Default`] is the flag defaults without the environment, for programmatic use.

use std::path::PathBuf;
use std::time::Duration;

use super::BenchError;
use super::mix::Mix;
use super::plan::Route;
use super::sampler::KeySampler;
use crate::client::DEFAULT_NODE_URL;

/// Default measured seconds.
pub const DEFAULT_DURATION_S: u64 = 10;
/// Default warm-up seconds.
pub const DEFAULT_WARMUP_S: u64 = 1;
/// Default closed-loop workers / open-loop in-flight limit.
pub const DEFAULT_CONCURRENCY: usize = 32;
/// Default preloaded customers.
pub const DEFAULT_KEYS: usize = 1000;
/// Default per-request deadline, ms.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;

/// How keys are picked (`--distribution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// Zipf with exponent `--zipf-s`: a few hot keys get most requests.
    Zipf,
}

impl Distribution {
    /// The flag value, as results print it.
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipf => "zipf",
        }
    }
}

/// Flags of `customer-cluster bench`.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct BenchArgs {
    /// Node URLs that receive requests, comma-separated.
    #[arg(
        long,
        env = "CUSTOMER_CLUSTER_NODE",
        default_value = DEFAULT_NODE_URL,
        value_delimiter = ','
    )]
    pub nodes: Vec<String>,
    /// Bearer token.
    #[arg(long, env = "CUSTOMER_CLUSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Measured phase, seconds.
    #[arg(long, default_value_t = DEFAULT_DURATION_S)]
    pub duration_s: u64,
    /// Warm-up before it (not recorded), seconds.
    #[arg(long, default_value_t = DEFAULT_WARMUP_S)]
    pub warmup_s: u64,
    /// Closed loop: number of workers. Open loop: most requests in flight.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Open loop at this many requests/s (latency from each request's intended start).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Operation weights, from get, update, create, delete.
    #[arg(long, default_value = "get=100")]
    pub mix: String,
    /// Customers to preload and address.
    #[arg(long, default_value_t = DEFAULT_KEYS)]
    pub keys: usize,
    /// How keys are picked.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Zipf exponent (0 = uniform; ~1 = a few very hot keys).
    #[arg(long, default_value_t = 0.99)]
    pub zipf_s: f64,
    /// Which node receives a key's requests.
    #[arg(long, value_enum, default_value_t = Route::Any)]
    pub route: Route,
    /// Only GET this path (e.g. /health) instead of the mix: the HTTP ceiling.
    #[arg(long)]
    pub path: Option<String>,
    /// Write the JSON result here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Label copied into the result.
    #[arg(long)]
    pub label: Option<String>,
    /// Seed of the operation and key choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Per-request deadline, ms.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT_MS)]
    pub timeout_ms: u64,
    /// After the run, delete every customer it created (found by the run tag in their
    /// email, `bench-<tag>-…@example.com`). Without it they stay in the database.
    #[arg(long)]
    pub cleanup: bool,
}

impl Default for BenchArgs {
    /// The flag defaults, ignoring the environment.
    fn default() -> Self {
        Self {
            nodes: vec![DEFAULT_NODE_URL.to_owned()],
            token: None,
            duration_s: DEFAULT_DURATION_S,
            warmup_s: DEFAULT_WARMUP_S,
            concurrency: DEFAULT_CONCURRENCY,
            rate: None,
            mix: "get=100".into(),
            keys: DEFAULT_KEYS,
            distribution: Distribution::Uniform,
            zipf_s: 0.99,
            route: Route::Any,
            path: None,
            out: None,
            label: None,
            seed: 1,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            cleanup: false,
        }
    }
}

/// Validated settings derived from the flags.
#[derive(Debug)]
pub(super) struct Settings {
    /// `None` with `--path`.
    pub mix: Option<Mix>,
    /// Picks key slots.
    pub sampler: KeySampler,
    /// Per-request deadline.
    pub timeout: Duration,
}

/// Checks the flags and derives what the run needs; no I/O.
pub(super) fn validate(args: &BenchArgs) -> Result<Settings, BenchError> {
    let invalid = |msg: &str| Err(BenchError::InvalidArgs(msg.to_owned()));
    if args.nodes.iter().all(|n| n.trim().is_empty()) {
        return invalid("--nodes is empty");
    }
    if args.concurrency == 0 || args.duration_s == 0 || args.timeout_ms == 0 {
        return invalid("--concurrency, --duration-s and --timeout-ms must be at least 1");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        return invalid("--rate must be a number of requests/s above 0");
    }
    if !(args.zipf_s.is_finite() && args.zipf_s >= 0.0) {
        return invalid("--zipf-s must be a number ≥ 0");
    }
    if args.path.as_ref().is_some_and(|p| !p.starts_with('/')) {
        return invalid("--path must start with /, e.g. /health");
    }
    let mix = match &args.path {
        Some(_) => None,
        None => Some(parse_mix(args)?),
    };
    if mix.as_ref().is_some_and(|m| m.needs_keys()) {
        if args.keys == 0 {
            return invalid("--keys must be at least 1 when the mix has get, update or delete");
        }
        if args.route == Route::NonOwner && node_urls(args).len() < 2 {
            return invalid("--route non-owner needs at least 2 --nodes");
        }
    }
    let sampler = match args.distribution {
        Distribution::Uniform => KeySampler::uniform(args.keys),
        Distribution::Zipf => KeySampler::zipf(args.keys, args.zipf_s),
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    Ok(Settings {
        mix,
        sampler,
        timeout,
    })
}

fn parse_mix(args: &BenchArgs) -> Result<Mix, BenchError> {
    Mix::parse(&args.mix).map_err(|reason| BenchError::InvalidMix {
        mix: args.mix.clone(),
        reason,
    })
}

/// Whether the run's customers are deleted afterwards: asked with `--cleanup`, and only a
/// run of the mix creates customers (a `--path` run only GETs that path, so it has none).
pub fn wants_cleanup(args: &BenchArgs) -> bool {
    args.cleanup && args.path.is_none()
}

pub(super) fn node_urls(args: &BenchArgs) -> Vec<String> {
    let urls = args.nodes.iter().map(|n| n.trim().to_owned());
    urls.filter(|n| !n.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn args(f: impl FnOnce(&mut BenchArgs)) -> BenchArgs {
        let mut a = BenchArgs::default();
        f(&mut a);
        a
    }

    #[test]
    fn only_a_mix_run_asked_to_clean_up_deletes_its_customers() {
        assert!(!wants_cleanup(&args(|_| {})), "kept unless asked");
        assert!(wants_cleanup(&args(|a| a.cleanup = true)));
        let path_run = args(|a| {
            a.cleanup = true;
            a.path = Some("/health".into());
        });
        assert!(!wants_cleanup(&path_run), "a --path run created nothing");
    }

    #[test]
    fn flag_defaults_match_the_default_args() {
        let parsed = Cli::parse_from(["bench"]).args;
        let expected = BenchArgs {
            nodes: parsed.nodes.clone(),
            token: parsed.token.clone(),
            ..BenchArgs::default()
        };
        assert_eq!(parsed, expected);
    }

    #[test]
    fn flags_parse_into_routes_distributions_and_lists() {
        let a = Cli::parse_from([
            "bench",
            "--nodes",
            "h1:1,h2:2",
            "--route",
            "non-owner",
            "--distribution",
            "zipf",
            "--rate",
            "500",
            "--mix",
            "get=1",
        ])
        .args;
        assert_eq!(a.nodes, vec!["h1:1", "h2:2"]);
        assert_eq!(
            (a.route, a.distribution),
            (Route::NonOwner, Distribution::Zipf)
        );
        assert_eq!(a.rate, Some(500.0));
    }

    #[test]
    fn a_bad_mix_is_reported_with_the_flag_and_the_reason() {
        let err = validate(&args(|a| a.mix = "get=1,scan=1".into())).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid --mix \"get=1,scan=1\": unknown"),
            "{err}"
        );
    }

    #[test]
    fn with_a_path_the_mix_is_ignored() {
        let s = validate(&args(|a| {
            a.path = Some("/health".into());
            a.mix = "nonsense".into();
        }))
        .unwrap();
        assert!(s.mix.is_none());
        assert!(validate(&args(|a| a.path = Some("health".into()))).is_err());
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        for bad in [
            args(|a| a.rate = Some(0.0)),
            args(|a| a.rate = Some(f64::NAN)),
            args(|a| a.concurrency = 0),
            args(|a| a.duration_s = 0),
            args(|a| a.zipf_s = -1.0),
            args(|a| a.keys = 0),
            args(|a| a.nodes = vec![" ".into()]),
        ] {
            assert!(
                matches!(validate(&bad), Err(BenchError::InvalidArgs(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn non_owner_routing_needs_two_nodes_unless_no_key_is_addressed() {
        let one = |mix: &str| {
            validate(&args(|a| {
                a.route = Route::NonOwner;
                a.mix = mix.into();
            }))
        };
        assert!(one("get=1").is_err());
        assert!(one("create=1").is_ok());
    }

    #[test]
    fn a_create_only_mix_may_run_without_keys() {
        assert!(
            validate(&args(|a| {
                a.mix = "create=1".into();
                a.keys = 0;
            }))
            .is_ok()
        );
    }
}
