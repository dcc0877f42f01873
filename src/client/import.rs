//! Bulk import: `customer-cluster import FILE.csv|FILE.jsonl --node URL`.
//!
//! Each row becomes one create, so a row is either stored whole or not at all — a rejected row
//! never leaves a partial customer behind. Rows are validated locally first (same rules as the
//! server), then sent concurrently. Each row's id is derived from its line number and content,
//! so re-running an interrupted import replays creates idempotently instead of failing on
//! duplicate emails. Transient failures (503, 504, connection errors) are retried a few times.
//!
//! CSV needs a header with `name` and `email` and optionally `phone` and `address`. JSON Lines
//! needs one object per line with those members. The exit status is non-zero when any row
//! was rejected, so scripts notice; `--rejects FILE` writes the rejected rows with reasons.
//!
//! The summary counts rows created now apart from rows an earlier run had already stored, and
//! lists rejected rows in input order, as the `--rejects` file does (the first
//! [`SHOWN_REJECTS`] on screen). With `--json` it is one JSON object instead (see
//! [`ImportSummary::to_json`]).

use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use hyper::Method;
use serde_json::{Value, json};
use uuid::Uuid;
use xxhash_rust::xxh3::xxh3_128;

use super::commands::ClientOpts;
use super::exit::Ending;
use super::{ClientError, HttpClient};
use crate::customer::{FieldsInput, validate};

/// Flags of `import`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// CSV (header: name,email[,phone][,address]) or JSON Lines file.
    pub file: PathBuf,
    /// `csv` or `jsonl`; by default taken from the file extension.
    #[arg(long)]
    pub format: Option<String>,
    /// Rows in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Write rejected rows (line, reason) to this CSV file.
    #[arg(long)]
    pub rejects: Option<PathBuf>,
    /// No progress bar (there is none anyway when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// One input row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line (CSV: record line) in the file.
    pub line: u64,
    /// Fields as read.
    pub input: FieldsInput,
    /// Deterministic id of this row.
    pub id: Uuid,
}

/// A rejected row.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Line in the file.
    pub line: u64,
    /// Why.
    pub reason: String,
}

/// The outcome of an import.
#[derive(Debug, Clone, Default)]
pub struct ImportSummary {
    /// Rows stored by this run.
    pub created: usize,
    /// Rows an earlier run had already stored (idempotent replay: nothing written now).
    pub replayed: usize,
    /// Rows rejected, with reasons, in input order.
    pub rejected: Vec<Rejected>,
}

/// Rejected rows listed in the human-readable summary; the rest are counted, and
/// `--rejects FILE` (or `--json`) has them all. Enough to see a pattern, short enough that the
/// counts stay on screen.
pub const SHOWN_REJECTS: usize = 20;

/// Derives a row's id from its line and content: the same row of the same file gets the same
/// id on every run (a UUID v8, "custom").
pub fn row_id(line: u64, raw: &[u8]) -> Uuid {
    let mut buf = line.to_le_bytes().to_vec();
    buf.extend_from_slice(raw);
    uuid::Builder::from_custom_bytes(xxh3_128(&buf).to_le_bytes()).into_uuid()
}

/// Reads all rows, or fails if the file as a whole is unusable (missing, bad header).
pub fn read_rows(
    path: &Path,
    format: Option<&str>,
) -> Result<(Vec<Row>, Vec<Rejected>), ClientError> {
    let format = match format {
        Some(f) => f.to_ascii_lowercase(),
        None => path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase(),
    };
    let file = std::fs::File::open(path)
        .map_err(|e| ClientError::Local(format!("cannot open {}: {e}", path.display())))?;
    match format.as_str() {
        "csv" => read_csv(file),
        "jsonl" | "ndjson" => Ok(read_jsonl(std::io::BufReader::new(file))),
        other => Err(ClientError::Local(format!(
            "unknown format {other:?}: use a .csv or .jsonl file, or --format csv|jsonl"
        ))),
    }
}

fn read_csv(file: std::fs::File) -> Result<(Vec<Row>, Vec<Rejected>), ClientError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(file);
    let headers = reader
        .headers()
        .map_err(|e| ClientError::Local(format!("unreadable CSV header: {e}")))?
        .clone();
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    for h in headers.iter() {
        if !["name", "email", "phone", "address"]
            .iter()
            .any(|k| h.eq_ignore_ascii_case(k))
        {
            return Err(ClientError::Local(format!(
                "unknown CSV column {h:?} (expected name,email,phone,address)"
            )));
        }
    }
    let (Some(name), Some(email)) = (column("name"), column("email")) else {
        return Err(ClientError::Local(
            "the CSV header needs name and email columns".into(),
        ));
    };
    let (phone, address) = (column("phone"), column("address"));
    let mut rows = Vec::new();
    let mut rejected = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                rejected.push(Rejected {
                    line,
                    reason: format!("unreadable CSV: {e}"),
                });
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        if record.len() != headers.len() {
            rejected.push(Rejected {
                line,
                reason: format!("{} fields, the header has {}", record.len(), headers.len()),
            });
            continue;
        }
        let get = |i: Option<usize>| i.and_then(|i| record.get(i)).map(str::to_owned);
        let raw: Vec<u8> = record.iter().flat_map(|f| f.bytes().chain([0u8])).collect();
        rows.push(Row {
            line,
            input: FieldsInput {
                name: get(Some(name)),
                email: get(Some(email)),
                phone: get(phone),
                address: get(address),
            },
            id: row_id(line, &raw),
        });
    }
    Ok((rows, rejected))
}

fn read_jsonl(reader: impl BufRead) -> (Vec<Row>, Vec<Rejected>) {
    let mut rows = Vec::new();
    let mut rejected = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line_no = index as u64 + 1;
        let text = match line {
            Ok(t) => t,
            Err(e) => {
                rejected.push(Rejected {
                    line: line_no,
                    reason: format!("unreadable line: {e}"),
                });
                continue;
            }
        };
        if text.trim().is_empty() {
            continue;
        }
        match parse_json_row(&text) {
            Ok(input) => rows.push(Row {
                line: line_no,
                input,
                id: row_id(line_no, text.as_bytes()),
            }),
            Err(reason) => rejected.push(Rejected {
                line: line_no,
                reason,
            }),
        }
    }
    (rows, rejected)
}

fn parse_json_row(text: &str) -> Result<FieldsInput, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("each line must be a JSON object".into());
    };
    let mut input = FieldsInput::default();
    for (k, v) in map {
        let v = match v {
            Value::String(s) => Some(s),
            Value::Null => None,
            _ => return Err(format!("{k} must be a string or null")),
        };
        match k.as_str() {
            "name" => input.name = v,
            "email" => input.email = v,
            "phone" => input.phone = v,
            "address" => input.address = v,
            other => return Err(format!("unknown field {other}")),
        }
    }
    Ok(input)
}

/// `customer-cluster import`: runs the import through `--node` and reports. Rows rejected
/// make it a failure (exit code 1), so scripts notice; the summary already lists them.
pub async fn command(opts: &ClientOpts, args: &ImportArgs) -> Ending {
    let client = match opts.client() {
        Ok(c) => c,
        Err(e) => return Ending::failed(&e),
    };
    match run(&client, args).await {
        Ok(summary) => summary.ending(opts.json),
        Err(e) => Ending::failed(&e),
    }
}

/// Runs an import against `client`.
pub async fn run(client: &HttpClient, args: &ImportArgs) -> Result<ImportSummary, ClientError> {
    let (rows, mut rejected) = read_rows(&args.file, args.format.as_deref())?;
    let mut valid = Vec::with_capacity(rows.len());
    // Rows go out concurrently, so resolve duplicate emails inside the file here: the first
    // row wins, deterministically.
    let mut first_line_of: std::collections::HashMap<String, u64> =
        std::collections::HashMap::new();
    for row in rows {
        match validate(row.input.clone()) {
            Ok(fields) => match first_line_of.get(&fields.email.to_ascii_lowercase()) {
                Some(first) => rejected.push(Rejected {
                    line: row.line,
                    reason: format!("email {} already used on line {first}", fields.email),
                }),
                None => {
                    first_line_of.insert(fields.email.to_ascii_lowercase(), row.line);
                    valid.push(row);
                }
            },
            Err(e) => rejected.push(Rejected {
                line: row.line,
                reason: e.to_string(),
            }),
        }
    }
    let bar = progress_bar(valid.len() as u64, args.no_progress);
    let mut summary = ImportSummary::default();
    let mut results = futures::stream::iter(valid.into_iter().map(|row| send_row(client, row)))
        .buffer_unordered(args.concurrency.max(1));
    while let Some((line, outcome)) = results.next().await {
        match outcome {
            Ok(true) => summary.replayed += 1,
            Ok(false) => summary.created += 1,
            Err(reason) => rejected.push(Rejected { line, reason }),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    rejected.sort_by_key(|r| r.line);
    summary.rejected = rejected;
    if let Some(path) = &args.rejects {
        write_rejects(path, &summary.rejected)?;
    }
    Ok(summary)
}

fn progress_bar(len: u64, hidden: bool) -> indicatif::ProgressBar {
    if hidden || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(progress_style());
    bar
}

/// The progress bar's look: `{bar} 1,234/5,000 rows  1,901/s  eta 2s`.
fn progress_style() -> indicatif::ProgressStyle {
    let style = indicatif::ProgressStyle::with_template(
        "{bar:40} {human_pos}/{human_len} rows  {rate}  eta {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    style.with_key(
        "rate",
        |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = w.write_str(&format_rate(state.per_sec()));
        },
    )
}

/// A rate as people read it: whole rows per second with thousands separators, `1,901/s`
/// (not `1901.2345/s`).
pub fn format_rate(per_sec: f64) -> String {
    let whole = if per_sec.is_finite() && per_sec > 0.0 {
        per_sec.round() as u64
    } else {
        0
    };
    format!("{}/s", group_thousands(whole))
}

/// `1234567` → `1,234,567`.
fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Creates one row, retrying transient failures. `Ok(true)` when an earlier run had stored it.
async fn send_row(client: &HttpClient, row: Row) -> (u64, Result<bool, String>) {
    let body = json!({
        "id": row.id.to_string(),
        "name": row.input.name,
        "email": row.input.email,
        "phone": row.input.phone,
        "address": row.input.address,
    });
    let mut last = String::new();
    for attempt in 0..5u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        match client.json(Method::POST, "/v1/customers", &body, &[]).await {
            // 201: stored now; 200: an earlier run had stored this very row.
            Ok(r) if r.status.as_u16() == 201 => return (row.line, Ok(false)),
            Ok(r) if r.status.as_u16() == 200 => return (row.line, Ok(true)),
            Ok(r) if r.status.is_server_error() => last = format!("HTTP {}", r.status.as_u16()),
            Ok(r) => {
                let reason = r
                    .ok()
                    .err()
                    .map_or_else(|| "unexpected response".to_owned(), |e| e.to_string());
                return (row.line, Err(reason));
            }
            Err(e) => last = e.to_string(),
        }
    }
    (row.line, Err(format!("gave up after 5 attempts: {last}")))
}

fn write_rejects(path: &Path, rejected: &[Rejected]) -> Result<(), ClientError> {
    let mut w = csv::Writer::from_path(path)
        .map_err(|e| ClientError::Local(format!("cannot write {}: {e}", path.display())))?;
    let io = |e: csv::Error| ClientError::Local(format!("writing {}: {e}", path.display()));
    w.write_record(["line", "reason"]).map_err(io)?;
    for r in rejected {
        w.write_record([r.line.to_string(), r.reason.clone()])
            .map_err(io)?;
    }
    w.flush().map_err(|e| ClientError::Local(e.to_string()))
}

impl ImportSummary {
    /// How the command ends: the summary on stdout (as JSON when `json`), and a failure when
    /// any row was rejected.
    pub fn ending(&self, json: bool) -> Ending {
        let stdout = if json {
            super::text::json_shown(&self.to_json().to_string()).into_owned()
        } else {
            self.render()
        } + "\n";
        if self.rejected.is_empty() {
            Ending::Done(stdout)
        } else {
            Ending::Findings {
                stdout,
                error: None,
            }
        }
    }

    /// Human-readable summary: what happened to the rows, then the rejected rows in input
    /// order (the first [`SHOWN_REJECTS`]).
    pub fn render(&self) -> String {
        let mut out = format!(
            "created {} row(s), {} already present from an earlier run, rejected {} row(s)",
            self.created,
            self.replayed,
            self.rejected.len()
        );
        for r in self.rejected.iter().take(SHOWN_REJECTS) {
            let _ = write!(
                out,
                "\n  line {}: {}",
                r.line,
                super::text::shown(&r.reason)
            );
        }
        if self.rejected.len() > SHOWN_REJECTS {
            let _ = write!(
                out,
                "\n  ... and {} more (--rejects FILE writes every rejected row)",
                self.rejected.len() - SHOWN_REJECTS
            );
        }
        out
    }

    /// Machine-readable summary (`import --json`):
    /// `{"created": 3, "already_present": 0, "rejected": [{"line": 4, "reason": "…"}]}`,
    /// every rejected row, in input order.
    pub fn to_json(&self) -> Value {
        json!({
            "created": self.created,
            "already_present": self.replayed,
            "rejected": self
                .rejected
                .iter()
                .map(|r| json!({"line": r.line, "reason": r.reason}))
                .collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_import_with_a_rejected_row_fails_and_still_prints_its_summary() {
        let clean = ImportSummary {
            created: 2,
            replayed: 0,
            rejected: vec![],
        };
        assert!(
            matches!(clean.ending(false), Ending::Done(out) if out.starts_with("created 2 row(s)"))
        );
        let rejected = ImportSummary {
            rejected: vec![Rejected {
                line: 3,
                reason: "invalid email".into(),
            }],
            ..clean
        };
        match rejected.ending(false) {
            Ending::Findings { stdout, error } => {
                assert!(stdout.contains("line 3: invalid email"), "{stdout}");
                assert_eq!(error, None, "the summary already says why");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_re_run_says_it_created_nothing_and_found_the_rows_already_present() {
        let rerun = ImportSummary {
            created: 0,
            replayed: 3,
            rejected: vec![],
        };
        assert_eq!(
            rerun.render(),
            "created 0 row(s), 3 already present from an earlier run, rejected 0 row(s)"
        );
    }

    fn rejected_lines(lines: &[u64]) -> ImportSummary {
        ImportSummary {
            created: 1,
            replayed: 0,
            rejected: lines
                .iter()
                .map(|&line| Rejected {
                    line,
                    reason: if line % 2 == 0 { "b: even" } else { "a: odd" }.into(),
                })
                .collect(),
        }
    }

    #[test]
    fn rejected_rows_are_listed_in_input_order_like_the_rejects_file() {
        let text = rejected_lines(&[2, 3, 4]).render();
        let listed: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            listed,
            vec!["  line 2: b: even", "  line 3: a: odd", "  line 4: b: even"]
        );
        let many: Vec<u64> = (1..=25).collect();
        let text = rejected_lines(&many).render();
        assert_eq!(text.lines().count(), 1 + SHOWN_REJECTS + 1, "{text}");
        assert!(text.ends_with("... and 5 more (--rejects FILE writes every rejected row)"));
    }

    #[test]
    fn the_json_summary_counts_each_outcome_and_lists_every_rejected_row() {
        let summary = ImportSummary {
            replayed: 2,
            ..rejected_lines(&(1..=25).collect::<Vec<_>>())
        };
        let Ending::Findings { stdout, .. } = summary.ending(true) else {
            panic!("rejected rows make an import a failure");
        };
        let v: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["created"], 1);
        assert_eq!(v["already_present"], 2);
        let rejected = v["rejected"].as_array().unwrap();
        assert_eq!(rejected.len(), 25);
        assert_eq!(rejected[0], json!({"line": 1, "reason": "a: odd"}));
        assert_eq!(rejected[24]["line"], 25);
    }

    #[test]
    fn rates_print_as_whole_rows_per_second_with_thousands_separators() {
        assert_eq!(format_rate(1901.2345), "1,901/s");
        assert_eq!(format_rate(999.6), "1,000/s");
        assert_eq!(format_rate(12.0), "12/s");
        assert_eq!(format_rate(1_234_567.0), "1,234,567/s");
        assert_eq!(format_rate(0.0), "0/s");
        assert_eq!(format_rate(f64::NAN), "0/s");
        assert_eq!(format_rate(f64::INFINITY), "0/s");
    }

    /// A terminal that keeps what is drawn on it.
    #[derive(Debug, Clone, Default)]
    struct Screen(std::sync::Arc<std::sync::Mutex<String>>);

    impl Screen {
        fn text(&self) -> String {
            self.0.lock().unwrap().clone()
        }
    }

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_progress_bar_shows_counts_and_rate_with_thousands_separators() {
        let screen = Screen::default();
        let target = indicatif::ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let bar = indicatif::ProgressBar::with_draw_target(Some(5000), target);
        bar.set_style(progress_style());
        bar.set_position(1234);
        bar.tick();
        let text = screen.text();
        let rest = text
            .split("1,234/5,000 rows  ")
            .nth(1)
            .unwrap_or_else(|| panic!("no grouped counts in {text:?}"));
        let rate = rest.split_whitespace().next().unwrap_or_default();
        let digits = rate
            .strip_suffix("/s")
            .unwrap_or_else(|| panic!("{rate:?}"));
        assert!(
            !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit() || c == ','),
            "a whole, grouped rate: {rate:?}"
        );
    }

    #[test]
    fn a_missing_file_is_a_local_error_that_names_the_file() {
        let err = read_rows(Path::new("/nonexistent/customers.csv"), None).unwrap_err();
        assert!(matches!(err, ClientError::Local(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("cannot open /nonexistent/customers.csv"),
            "{err}"
        );
    }

    #[test]
    fn row_ids_are_stable_and_distinct() {
        assert_eq!(row_id(3, b"a"), row_id(3, b"a"));
        assert_ne!(row_id(3, b"a"), row_id(4, b"a"));
        assert_ne!(row_id(3, b"a"), row_id(3, b"b"));
        assert_eq!(row_id(3, b"a").get_version_num(), 8);
    }

    #[test]
    fn json_rows_accept_strings_and_null_and_reject_the_rest() {
        let ok = parse_json_row(r#"{"name":"A","email":"a@b.co","phone":null}"#).unwrap();
        assert_eq!(ok.name.as_deref(), Some("A"));
        assert!(parse_json_row("[1]").is_err());
        assert!(parse_json_row(r#"{"name":1}"#).is_err());
        assert!(parse_json_row(r#"{"nick":"x"}"#).is_err());
        assert!(parse_json_row("{").is_err());
    }

    #[test]
    fn jsonl_keeps_line_numbers_and_skips_blank_lines() {
        let text = "{\"name\":\"A\",\"email\":\"a@b.co\"}\n\nnot json\n{\"name\":\"B\",\"email\":\"b@b.co\"}\n";
        let (rows, rejected) = read_jsonl(std::io::Cursor::new(text));
        assert_eq!(rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].line, 3);
    }

    #[test]
    fn a_csv_needs_name_and_email_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        std::fs::write(&p, "name,phone\nA,123\n").unwrap();
        assert!(read_rows(&p, None).is_err());
        std::fs::write(&p, "name,email,color\nA,a@b.co,red\n").unwrap();
        assert!(read_rows(&p, None).is_err());
        std::fs::write(&p, "Email,Name\n\"a@b.co\",\"Doe, Jane\"\n").unwrap();
        let (rows, rejected) = read_rows(&p, None).unwrap();
        assert!(rejected.is_empty());
        assert_eq!(rows[0].input.name.as_deref(), Some("Doe, Jane"));
    }
}
