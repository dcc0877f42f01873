//! Reading saved results back: a table of several runs and ratios between two of them, as
//! scripts/bench.sh prints them (`customer-cluster bench-report`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::BenchResult;
use super::report::ratio_line;

/// Flags of `bench-report`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Result files written by `bench --out`, shown as a table in this order.
    pub files: Vec<PathBuf>,
    /// A ratio to print: `NAME=A.json/B.json` (A ÷ B). Repeatable.
    #[arg(long = "ratio", value_name = "NAME=A/B")]
    pub ratios: Vec<String>,
}

/// Loads one result file.
pub fn load(path: &Path) -> Result<BenchResult, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a bench result: {e}", path.display()))
}

/// One table row per result: label, throughput, latency percentiles in ms, errors.
pub fn table(results: &[BenchResult]) -> String {
    let ms = |us: u64| us as f64 / 1000.0;
    let mut out = format!(
        "{:<34} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7}\n",
        "run", "ok/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"
    );
    for r in results {
        let errors: u64 = r.errors.values().sum();
        let _ = writeln!(
            out,
            "{:<34} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>7}",
            r.label.clone().unwrap_or_else(|| r.mix.clone()),
            r.throughput_rps,
            ms(r.latency_us.p50),
            ms(r.latency_us.p90),
            ms(r.latency_us.p99),
            ms(r.latency_us.max),
            errors
        );
    }
    out
}

/// Parses `NAME=A/B` into its parts.
pub fn parse_ratio(spec: &str) -> Result<(String, PathBuf, PathBuf), String> {
    let (name, files) = spec
        .split_once('=')
        .ok_or_else(|| format!("--ratio {spec:?}: expected NAME=A.json/B.json"))?;
    let (a, b) = files
        .split_once(".json/")
        .ok_or_else(|| format!("--ratio {spec:?}: expected NAME=A.json/B.json"))?;
    Ok((
        name.to_owned(),
        PathBuf::from(format!("{a}.json")),
        PathBuf::from(b),
    ))
}

/// Runs `bench-report`.
pub fn run(args: &ReportArgs) -> Result<String, String> {
    let results = args
        .files
        .iter()
        .map(|f| load(f))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = if results.is_empty() {
        String::new()
    } else {
        table(&results)
    };
    for spec in &args.ratios {
        let (name, a, b) = parse_ratio(spec)?;
        let _ = writeln!(out, "{}", ratio_line(&name, &load(&a)?, &load(&b)?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_spec_names_two_files() {
        let (name, a, b) =
            parse_ratio("remote ÷ local=run/get_remote.json/run/get_local.json").unwrap();
        assert_eq!(name, "remote ÷ local");
        assert_eq!(a, PathBuf::from("run/get_remote.json"));
        assert_eq!(b, PathBuf::from("run/get_local.json"));
        assert!(parse_ratio("no-equals").is_err());
        assert!(parse_ratio("x=a.txt").is_err());
    }

    #[test]
    fn the_table_has_a_row_per_result() {
        let mut r = BenchResult {
            throughput_rps: 1234.0,
            ..Default::default()
        };
        r.label = Some("get via owner".into());
        r.latency_us.p50 = 1500;
        let t = table(&[r.clone(), r]);
        assert_eq!(t.lines().count(), 3);
        assert!(t.contains("get via owner") && t.contains("1234") && t.contains("1.500"));
    }
}
