//! `customer-cluster events [--follow] [--json]`: prints the node's cluster events from
//! `GET /v1/events`, one line each as they arrive.
//!
//! The node replays its recent events (up to 200) first. Without `--follow` the command
//! prints them and stops once the stream has been quiet for `--quiet-ms` (so it also shows
//! whatever happens meanwhile); with `--follow` it keeps printing until interrupted or the
//! node ends the stream. `--json` prints each event as the node sent it, one JSON object per
//! line; otherwise one human line per event. A stream the node dropped because this reader
//! fell behind ends the command with an error.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use http_body_util::BodyExt;

use super::ClientError;
use super::commands::ClientOpts;
use super::exit::{Ending, after_write_error};
use super::text::{json_shown, shown};
use crate::events::ClusterEvent;

/// Arguments of `events`.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Keep printing new events until interrupted (default: stop after a quiet period).
    #[arg(long)]
    pub follow: bool,
    /// Without --follow: stop once no event arrived for this long, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    pub quiet_ms: u64,
}

/// One Server-Sent Events frame: its `event:` name (`message` when absent) and its `data:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    /// The event name.
    pub event: String,
    /// The data lines, joined by newlines.
    pub data: String,
}

/// Splits a byte stream into SSE frames; comments (keep-alives) and empty frames are skipped.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: String,
}

impl SseParser {
    /// Feeds `bytes`; returns every frame they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseFrame> {
        self.buffer
            .push_str(&String::from_utf8_lossy(bytes).replace("\r\n", "\n"));
        let mut frames = Vec::new();
        while let Some(end) = self.buffer.find("\n\n") {
            let raw: String = self.buffer.drain(..end + 2).collect();
            if let Some(frame) = parse_frame(&raw) {
                frames.push(frame);
            }
        }
        frames
    }
}

fn parse_frame(raw: &str) -> Option<SseFrame> {
    let mut event = "message".to_owned();
    let mut data: Vec<&str> = Vec::new();
    for line in raw.lines() {
        if let Some(name) = line.strip_prefix("event:") {
            event = name.trim().to_owned();
        } else if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    (!data.is_empty()).then(|| SseFrame {
        event,
        data: data.join("\n"),
    })
}

/// What one frame prints, or the error that ends the command; what the node sent is escaped for
/// the terminal ([`super::text`]).
pub fn render(frame: &SseFrame, json: bool) -> Result<String, String> {
    if frame.event == "dropped" {
        return Err(format!(
            "the node dropped this stream because it fell behind: {}",
            shown(&frame.data)
        ));
    }
    if json {
        return Ok(json_shown(&frame.data).into_owned());
    }
    serde_json::from_str::<ClusterEvent>(&frame.data)
        .map(|e| shown(&e.line()).into_owned())
        .map_err(|e| {
            format!(
                "unexpected event from the node: {e}: {}",
                shown(&frame.data)
            )
        })
}

/// Runs `events`.
pub async fn command(opts: &ClientOpts, args: &EventsArgs) -> Ending {
    let body = match open(opts).await {
        Ok(body) => body,
        Err(e) => return Ending::failed(&e),
    };
    let quiet = (!args.follow).then(|| Duration::from_millis(args.quiet_ms.max(1)));
    print_stream(body, quiet, opts.json).await
}

async fn open(opts: &ClientOpts) -> Result<hyper::body::Incoming, ClientError> {
    opts.client()?.open_stream("/v1/events").await
}

/// Prints frames as they arrive until the stream ends, or (with `quiet`) goes quiet.
async fn print_stream(
    mut body: hyper::body::Incoming,
    quiet: Option<Duration>,
    json: bool,
) -> Ending {
    let mut parser = SseParser::default();
    loop {
        let next = match quiet {
            Some(limit) => match tokio::time::timeout(limit, body.frame()).await {
                Ok(next) => next,
                Err(_) => return Ending::Done(String::new()),
            },
            None => body.frame().await,
        };
        let bytes = match next {
            None => return Ending::Done(String::new()),
            Some(Err(e)) => return Ending::Failed(format!("the event stream broke: {e}")),
            Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
        };
        for frame in parser.push(&bytes) {
            let line = match render(&frame, json) {
                Ok(line) => line,
                Err(e) => return Ending::Failed(e),
            };
            let mut out = std::io::stdout().lock();
            if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                return after_write_error(&e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_are_joined_and_keep_alives_skipped() {
        let mut p = SseParser::default();
        assert!(p.push(b": keep-alive\n\ndata: {\"a\"").is_empty());
        let frames = p.push(b":1}\n\nevent: dropped\ndata: x\n\n");
        assert_eq!(
            frames,
            vec![
                SseFrame {
                    event: "message".into(),
                    data: "{\"a\":1}".into()
                },
                SseFrame {
                    event: "dropped".into(),
                    data: "x".into()
                },
            ]
        );
    }

    #[test]
    fn an_event_renders_as_one_line_or_as_its_json() {
        let data = r#"{"time":"2026-01-01T00:00:00.000Z","node":"n1","kind":"member_evicted","detail":"n3","cause":"silent"}"#;
        let frame = SseFrame {
            event: "message".into(),
            data: data.into(),
        };
        let line = render(&frame, false).expect("line");
        assert!(
            line.contains("member_evicted") && line.contains("n3") && line.contains("(silent)")
        );
        assert_eq!(render(&frame, true).expect("json"), data);
    }

    #[test]
    fn an_event_with_terminal_escapes_is_printed_with_them_escaped() {
        let data = r#"{"time":"2026-01-01T00:00:00.000Z","node":"n1\u001b[2J","kind":"member_up","detail":"zz\n[n4] ERROR forged \u202e","cause":"\u009b31m"}"#;
        let frame = SseFrame {
            event: "message".into(),
            data: data.into(),
        };
        let line = render(&frame, false).expect("line");
        assert!(
            !line.chars().any(crate::client::text::is_unsafe_on_terminal),
            "{line:?}"
        );
        assert!(
            line.contains("n1\\u{1b}[2J") && line.contains("zz\\u{a}[n4]"),
            "{line}"
        );
        let json = render(&frame, true).expect("json");
        assert!(
            !json.chars().any(crate::client::text::is_unsafe_on_terminal),
            "{json:?}"
        );
    }

    #[test]
    fn a_dropped_stream_is_an_error() {
        let frame = SseFrame {
            event: "dropped".into(),
            data: "{\"missed\":9}".into(),
        };
        assert!(render(&frame, false).unwrap_err().contains("fell behind"));
    }
}
