//! The recorded history: what each client asked, when, and what came back; saved and read
//! back as JSON Lines (one operation per line) so a failed run can be re-checked later.

use std::fmt;
use std::io::{BufRead, Write};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One operation as a client saw it. Serialised as one JSON object per line (JSON Lines).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client (process) that issued it; only for reading the output, the checker does not
    /// assume a client waits for one operation before the next.
    pub client: u32,
    /// The customer id: each key is checked on its own.
    pub key: String,
    /// What was asked.
    pub call: Call,
    /// When it was sent, since the start of the run (recording host's monotonic clock).
    #[serde(rename = "invoke_ns", with = "nanos")]
    pub invoke: Duration,
    /// When the answer arrived (or the client gave up), since the start of the run. Ignored
    /// for [`Outcome::Info`], whose effect may come at any later time.
    #[serde(rename = "complete_ns", with = "nanos")]
    pub complete: Duration,
    /// What came back.
    pub outcome: Outcome,
    /// The request id (`Idempotency-Key`) this attempt was sent with, if any. Attempts of one
    /// key that share it are retries of one request — the same call, applied at most once
    /// (DESIGN §6 F3, F4) — and the checker judges them as one operation (see
    /// [`super::fold_attempts`]). Absent in histories written before retries were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
}

/// An operation on one customer, as the workload does it through the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// `POST /v1/customers` writing `value`.
    Create {
        /// The value written (unique per write in a workload).
        value: String,
    },
    /// `GET /v1/customers/{id}`.
    Get,
    /// `PUT` (or `PATCH`, recorded with the resulting value) of `value`.
    Put {
        /// The value the customer has after this write.
        value: String,
        /// The `If-Match` version, if the client sent one.
        if_match: Option<u64>,
    },
    /// `DELETE /v1/customers/{id}`.
    Delete {
        /// The `If-Match` version, if the client sent one.
        if_match: Option<u64>,
    },
}

/// How an operation ended, from the client's point of view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The server answered with success.
    Ok(Reply),
    /// Definitely not applied.
    Fail(Refusal),
    /// Indeterminate: timeout, 504, connection lost. May take effect at any time after invoke,
    /// or never.
    Info,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// A create answered with the new customer's version.
    Created {
        /// Version in the response.
        version: u64,
    },
    /// A read found the customer.
    Found {
        /// Version in the response.
        version: u64,
        /// Value in the response.
        value: String,
    },
    /// A read answered 404.
    NotFound,
    /// A put answered with the customer's new version.
    Written {
        /// Version in the response.
        version: u64,
    },
    /// A delete answered 204.
    Deleted,
}

/// Why a write was definitely not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// 404: the customer did not exist (never created, or deleted) when the call took effect.
    NotFound,
    /// 412: `If-Match` named another version than the current one.
    PreconditionFailed,
    /// Anything that says nothing about this customer's state: 503 (not applied, retry), a 409
    /// over another customer's email, a 422. Left out of the search.
    Rejected,
}

/// Why a saved history could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading the file failed.
    #[error("reading history: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not an operation.
    #[error("history line {line}: {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What was wrong with it.
        reason: String,
    },
}

/// Writes `ops` as JSON Lines, one operation per line, so a run can be re-checked later.
pub fn write_jsonl<W: Write>(ops: &[Op], mut out: W) -> std::io::Result<()> {
    for op in ops {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by [`write_jsonl`]; blank lines are skipped.
pub fn read_jsonl<R: BufRead>(input: R) -> Result<Vec<Op>, HistoryError> {
    let mut ops = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|e| HistoryError::Parse {
            line: n + 1,
            reason: e.to_string(),
        })?;
        ops.push(op);
    }
    Ok(ops)
}

/// Durations as integer nanoseconds: exact, and readable in a JSON line.
mod nanos {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_nanos)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn describe_call(call: &Call) -> String {
    let if_match = |m: &Option<u64>| m.map(|v| format!(" if-match {v}")).unwrap_or_default();
    match call {
        Call::Create { value } => format!("create {value:?}"),
        Call::Get => "get".to_owned(),
        Call::Put { value, if_match: m } => format!("put {value:?}{}", if_match(m)),
        Call::Delete { if_match: m } => format!("delete{}", if_match(m)),
    }
}

fn describe_outcome(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok(Reply::Created { version } | Reply::Written { version }) => {
            format!("ok v{version}")
        }
        Outcome::Ok(Reply::Found { version, value }) => format!("v{version} {value:?}"),
        Outcome::Ok(Reply::NotFound) | Outcome::Fail(Refusal::NotFound) => "not found".to_owned(),
        Outcome::Ok(Reply::Deleted) => "deleted".to_owned(),
        Outcome::Fail(Refusal::PreconditionFailed) => "412 precondition failed".to_owned(),
        Outcome::Fail(Refusal::Rejected) => "rejected, not applied".to_owned(),
        Outcome::Info => "? (indeterminate)".to_owned(),
    }
}

impl fmt::Display for Op {
    /// One line: times in ms, client, call, result.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match self.outcome {
            Outcome::Info => "∞".to_owned(),
            _ => format!("{:.3}", ms(self.complete)),
        };
        write!(
            f,
            "[{:>10.3} .. {end:>10} ms] client {:<3} {} → {}",
            ms(self.invoke),
            self.client,
            describe_call(&self.call),
            describe_outcome(&self.outcome)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u32, from_ms: u64, call: Call, outcome: Outcome) -> Op {
        Op {
            client,
            key: "k".to_owned(),
            call,
            invoke: Duration::from_millis(from_ms),
            complete: Duration::from_millis(from_ms) + Duration::from_nanos(1_234_567),
            outcome,
            request: None,
        }
    }

    #[test]
    fn a_history_round_trips_through_json_lines() {
        let put = |value: &str, if_match| Call::Put {
            value: value.to_owned(),
            if_match,
        };
        let history = vec![
            op(
                0,
                0,
                Call::Create {
                    value: "x".to_owned(),
                },
                Outcome::Ok(Reply::Created { version: 1 }),
            ),
            op(
                1,
                2,
                put("a\n\"quoted\"", Some(1)),
                Outcome::Ok(Reply::Written { version: 2 }),
            ),
            op(
                2,
                4,
                Call::Get,
                Outcome::Ok(Reply::Found {
                    version: 2,
                    value: "a".to_owned(),
                }),
            ),
            op(2, 4, Call::Get, Outcome::Ok(Reply::NotFound)),
            op(3, 6, put("b", None), Outcome::Info),
            op(3, 8, put("c", None), Outcome::Fail(Refusal::Rejected)),
            op(
                3,
                8,
                put("d", Some(7)),
                Outcome::Fail(Refusal::PreconditionFailed),
            ),
            op(
                4,
                10,
                Call::Delete { if_match: None },
                Outcome::Fail(Refusal::NotFound),
            ),
            op(
                4,
                12,
                Call::Delete { if_match: Some(2) },
                Outcome::Ok(Reply::Deleted),
            ),
        ];
        let mut bytes = Vec::new();
        write_jsonl(&history, &mut bytes).expect("write to memory");
        let text = String::from_utf8(bytes.clone()).expect("JSON is UTF-8");
        assert_eq!(text.lines().count(), history.len());
        assert!(
            text.contains("\"invoke_ns\":2000000,\"complete_ns\":3234567"),
            "{text}"
        );
        let back = read_jsonl(bytes.as_slice()).expect("read back");
        assert_eq!(back, history);
    }

    #[test]
    fn a_malformed_history_line_is_an_error_naming_the_line() {
        let text = "\n{\"client\":1}\n";
        let err = read_jsonl(text.as_bytes()).expect_err("not an operation");
        assert!(matches!(err, HistoryError::Parse { line: 2, .. }), "{err}");
    }

    #[test]
    fn an_operation_prints_as_one_line_with_times_in_ms() {
        let read = op(
            3,
            229,
            Call::Get,
            Outcome::Ok(Reply::Found {
                version: 318,
                value: "c1-w9".to_owned(),
            }),
        );
        assert_eq!(
            read.to_string(),
            "[   229.000 ..    230.235 ms] client 3   get → v318 \"c1-w9\""
        );
        let unknown = op(
            1,
            76,
            Call::Put {
                value: "v".to_owned(),
                if_match: Some(4),
            },
            Outcome::Info,
        );
        assert_eq!(
            unknown.to_string(),
            "[    76.000 ..          ∞ ms] client 1   put \"v\" if-match 4 → ? (indeterminate)"
        );
    }
}
