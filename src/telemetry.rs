//! Logs: tracing to stderr, as text for people or JSON for machines; every line names the node.
//!
//! Levels: INFO for state changes (node up, member joined/left/suspected, ownership moved,
//! actor restarted), WARN for degraded service, ERROR for what needs a human, DEBUG per message.

use std::fmt;

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Default filter: our INFO, the actor and transport libraries' warnings only (their INFO lines
/// are per-connection chatter, and their per-actor spans would prefix every line).
pub const DEFAULT_LOG_FILTER: &str = "info,ractor=warn,ractor_cluster=warn";

/// Installs the global subscriber. `level` is a filter directive; `RUST_LOG` is used when it is
/// absent, and [`DEFAULT_LOG_FILTER`] when both are. Safe to call more than once (later calls
/// are ignored).
pub fn init_tracing(format: LogFormat, level: Option<&str>, node: &str) {
    let filter = level
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Text => builder
            .event_format(WithNode {
                node: node.to_owned(),
                inner: Format::default().with_target(false),
                json: false,
            })
            .try_init(),
        LogFormat::Json => builder
            .json()
            .event_format(WithNode {
                node: node.to_owned(),
                inner: Format::default()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
                json: true,
            })
            .try_init(),
    };
    let _ = result;
}

/// Wraps an event format so every line carries the node name.
struct WithNode<F> {
    node: String,
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithNode<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        if !self.json {
            write!(writer, "[{}] ", self.node)?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => {
                let node = serde_json::to_string(&self.node).map_err(|_| fmt::Error)?;
                write!(writer, "{{\"node\":{node},{rest}")
            }
            None => writer.write_str(&line),
        }
    }
}
