//! Logs and metrics.
//!
//! Logs: tracing to stderr, as text for people or JSON for machines; every line names the node,
//! and lines emitted while serving a request carry its request id (the `request` span).
//! Levels: INFO for state changes (node up, member joined/left/suspected, ownership moved,
//! actor restarted), WARN for degraded service, ERROR for what needs a human, DEBUG per message.
//!
//! Metrics: the `metrics` facade everywhere, exported in Prometheus text format on `/metrics`.
//! [`METRICS`] is the catalogue (name, kind, help); the README documents the same list and a
//! test keeps the two in step.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

pub mod transport;

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
        let note = match session_end_budget(event) {
            Budget::Print(note) => note,
            // Writing nothing drops the line (the inner format adds the newline).
            Budget::Suppress => return Ok(()),
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let line = plain_transport_words(event, line, self.json, note.as_deref());
        if !self.json {
            write!(writer, "[{}] ", self.node)?;
            return writer.write_str(&line);
        }
        match line.strip_prefix('{') {
            Some(rest) => {
                let node = serde_json::to_string(&self.node).map_err(|_| fmt::Error)?;
                write!(writer, "{{\"node\":{node},{rest}")
            }
            None => writer.write_str(&line),
        }
    }
}

/// Whether `event` is a `ractor_cluster` WARN line printed in plain words (not at DEBUG).
fn is_transport_warning(event: &tracing::Event<'_>) -> bool {
    let meta = event.metadata();
    meta.target().starts_with("ractor_cluster")
        && *meta.level() == tracing::Level::WARN
        && tracing::level_filters::LevelFilter::current() < tracing::Level::DEBUG
}

/// What to do with a log line, as far as the session-end budget goes.
enum Budget {
    /// Print it, with this note appended to its message.
    Print(Option<String>),
    /// Drop it (counted; the next printed session end says how many).
    Suppress,
}

/// Session-end lines of the transport go through one [`transport::SessionLineBudget`]: a flood
/// of connections that name themselves and then fail (a crafted name, a wrong cookie) would
/// otherwise log a line each.
fn session_end_budget(event: &tracing::Event<'_>) -> Budget {
    static BUDGET: std::sync::Mutex<Option<transport::SessionLineBudget>> =
        std::sync::Mutex::new(None);
    if !is_transport_warning(event) {
        return Budget::Print(None);
    }
    let mut message = MessageText(None);
    event.record(&mut message);
    if !message.0.is_some_and(|m| m.starts_with("Node session ")) {
        return Budget::Print(None);
    }
    let Ok(mut budget) = BUDGET.lock() else {
        return Budget::Print(None);
    };
    let budget = budget.get_or_insert_with(transport::SessionLineBudget::default);
    match budget.admit(std::time::Instant::now()) {
        Some(0) => Budget::Print(None),
        Some(n) => Budget::Print(Some(format!(
            " ({n} similar lines suppressed before this one)"
        ))),
        None => Budget::Suppress,
    }
}

/// A `ractor_cluster` WARN line with its message in plain words ([`transport::explain`]) and
/// `note` appended; every other line, and every line while the node logs at DEBUG, unchanged.
fn plain_transport_words(
    event: &tracing::Event<'_>,
    line: String,
    json: bool,
    note: Option<&str>,
) -> String {
    if !is_transport_warning(event) {
        return line;
    }
    let mut message = MessageText(None);
    event.record(&mut message);
    let Some(raw) = message.0 else { return line };
    let Some(mut plain) = transport::explain(&raw) else {
        return line;
    };
    plain.push_str(note.unwrap_or_default());
    if json {
        let (Ok(from), Ok(to)) = (serde_json::to_string(&raw), serde_json::to_string(&plain))
        else {
            return line;
        };
        return line.replacen(&from, &to, 1);
    }
    line.replacen(&raw, &plain, 1)
}

/// The `message` field of an event, as text.
struct MessageText(Option<String>);

impl tracing::field::Visit for MessageText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0 = Some(value.to_owned());
        }
    }
}

/// Kind of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic count.
    Counter,
    /// Value that goes up and down.
    Gauge,
    /// Distribution (Prometheus histogram).
    Histogram,
}

/// Every metric the node exports: (name, kind, help). Labels are given in the help text.
pub const METRICS: &[(&str, MetricKind, &str)] = &[
    (
        "customer_http_requests_total",
        MetricKind::Counter,
        "HTTP requests by method, route and status",
    ),
    (
        "customer_http_request_seconds",
        MetricKind::Histogram,
        "HTTP request latency by method and route",
    ),
    (
        "customer_actors_active",
        MetricKind::Gauge,
        "Customer actors alive on this node",
    ),
    (
        "customer_actors_activated_total",
        MetricKind::Counter,
        "Customer actors started (activations)",
    ),
    (
        "customer_actors_passivated_total",
        MetricKind::Counter,
        "Customer actors stopped for idleness, deletion or an ownership move",
    ),
    (
        "customer_cluster_lru_passivations_total",
        MetricKind::Counter,
        "Customer actors passivated because activating another would exceed max_active_customers",
    ),
    (
        "customer_actors_restarted_total",
        MetricKind::Counter,
        "Customer actors that panicked and were cleaned up",
    ),
    (
        "customer_remote_calls_total",
        MetricKind::Counter,
        "Calls to another node's Registry by op and outcome (ok, error)",
    ),
    (
        "customer_remote_call_seconds",
        MetricKind::Histogram,
        "Latency of calls to another node's Registry by op",
    ),
    (
        "customer_routing_retries_total",
        MetricKind::Counter,
        "Requests retried against a recomputed owner, by op",
    ),
    (
        "customer_db_call_seconds",
        MetricKind::Histogram,
        "Latency of calls to the database actor by op (local or remote)",
    ),
    (
        "customer_db_batch_size",
        MetricKind::Histogram,
        "Writes per group-commit transaction (database node only)",
    ),
    (
        "customer_db_commit_seconds",
        MetricKind::Histogram,
        "Time to apply and commit one batch, fsync included (database node only)",
    ),
    (
        "customer_db_batch_failures_total",
        MetricKind::Counter,
        "Batches whose transaction failed (none of their writes acknowledged)",
    ),
    (
        "customer_db_writes_shed_total",
        MetricKind::Counter,
        "Writes refused at once with 503 because the database write queue was full (--db-max-queued-writes; nothing applied)",
    ),
    (
        "customer_db_writes_refused_total",
        MetricKind::Counter,
        "Writes the Database actor refused before storage, by reason: unfenced (no lease token or request id) or invalid_fields (customer fields breaking the API's rules, sent by a cookie holder that bypassed the API)",
    ),
    (
        "customer_version_conflicts_total",
        MetricKind::Counter,
        "Stale writes rejected by the database compare-and-set (fencing)",
    ),
    (
        "customer_cluster_members",
        MetricKind::Gauge,
        "Members in this node's placement view, itself included",
    ),
    (
        "customer_placement_changes_total",
        MetricKind::Counter,
        "Placement views published (membership changes and local stalls)",
    ),
    (
        "customer_heartbeat_misses_total",
        MetricKind::Counter,
        "Heartbeat pings that failed or timed out",
    ),
    (
        "customer_heartbeat_suspicions_total",
        MetricKind::Counter,
        "Members suspected after half the failure timeout of silence",
    ),
    (
        "customer_members_evicted_total",
        MetricKind::Counter,
        "Members evicted by the failure detector",
    ),
    (
        "customer_node_child_restarts_total",
        MetricKind::Counter,
        "Database/heartbeat/registry/membership/lease-keeper actors restarted by the supervisor, by child",
    ),
    (
        "customer_http_connections_open",
        MetricKind::Gauge,
        "HTTP connections open now (bounded by http_max_connections)",
    ),
    (
        "customer_http_connections_refused_total",
        MetricKind::Counter,
        "HTTP connections refused at accept, by reason: over_cap (503, http_max_connections open), per_client (429, http_max_connections_per_client open from that address)",
    ),
    (
        "customer_http_accept_errors_total",
        MetricKind::Counter,
        "Errors accepting an HTTP connection (e.g. out of file descriptors)",
    ),
    (
        "customer_http_unauthorized_total",
        MetricKind::Counter,
        "Requests on /v1 with a missing or wrong bearer token",
    ),
    (
        "customer_http_auth_throttled_total",
        MetricKind::Counter,
        "Wrong-token requests answered 401 with Retry-After: more than 20 in 10 s from one address",
    ),
    (
        "customer_event_streams_open",
        MetricKind::Gauge,
        "/v1/events streams open now (bounded by max_event_streams)",
    ),
    (
        "customer_event_streams_refused_total",
        MetricKind::Counter,
        "/v1/events streams refused, by reason: over_cap (503), per_client (429)",
    ),
    (
        "customer_http_timeouts_total",
        MetricKind::Counter,
        "HTTP timeouts by kind: header (slow request head), idle (keep-alive), request (504), stream_stall (a stream not read for 30 s)",
    ),
    (
        "customer_leases_held",
        MetricKind::Gauge,
        "Shards whose lease this node holds and may serve now (HELD)",
    ),
    (
        "customer_leases_acquired_total",
        MetricKind::Counter,
        "Shard leases granted to this node (grants, takeovers, own-row takeovers)",
    ),
    (
        "customer_leases_released_total",
        MetricKind::Counter,
        "Shard leases this node handed back (placement moved, graceful stop)",
    ),
    (
        "customer_leases_moved_unexpectedly_total",
        MetricKind::Counter,
        "Shard leases this node held that another node (or none) held on a later table read, without this node's release",
    ),
    (
        "customer_leases_lost_total",
        MetricKind::Counter,
        "Shard leases lost: this node was revoked (renew hit 0 rows) or a write was fenced",
    ),
    (
        "customer_lease_renew_seconds",
        MetricKind::Histogram,
        "Round trip of one lease renew (send to reply)",
    ),
    (
        "customer_db_writer_panics_total",
        MetricKind::Counter,
        "Panics in the storage writer thread (the writer stops; the database actor restarts it)",
    ),
    (
        "customer_entry_settles_total",
        MetricKind::Counter,
        "Writes whose outcome was unknown at the entry node's deadline, settled through their request id, by outcome: aborted (503), stored (its answer), unknown (504)",
    ),
    (
        "customer_db_calls_aborted_total",
        MetricKind::Counter,
        "Database calls ended early because the database node left the membership view mid-call (outcome unknown, 504 for writes)",
    ),
    (
        "customer_lease_statements_total",
        MetricKind::Counter,
        "Lease statements sent to the database, by kind: renew, table, grant, takeover, release, register, own_row, ping",
    ),
    (
        "customer_fenced_writes_total",
        MetricKind::Counter,
        "Writes the database refused because the shard's token moved on (not applied)",
    ),
    (
        "customer_requests_not_holder_total",
        MetricKind::Counter,
        "Requests refused at once because this node does not hold the shard's lease",
    ),
    (
        "customer_email_key_conflicts",
        MetricKind::Gauge,
        "Live customers sharing a mailbox with an earlier one, found when email keys were computed; counted when the store opens (nodes with a Database actor)",
    ),
    (
        "customer_idempotent_replays_total",
        MetricKind::Counter,
        "Writes answered with the result stored for their request id (nothing applied)",
    ),
    (
        "customer_requests_pruned_total",
        MetricKind::Counter,
        "Request ids removed after their retention window (--request-retention-s), by the writer of a node with a Database actor",
    ),
    (
        "customer_events_total",
        MetricKind::Counter,
        "Cluster events this node emitted on its event bus (GET /v1/events), by kind",
    ),
    (
        "customer_cluster_preauth_refused_total",
        MetricKind::Counter,
        "Cluster connections refused before authentication, by reason: over_cap, per_source, backoff, not_allowed, timeout, bad_frame, tls, name_mismatch",
    ),
    (
        "customer_cluster_auth_failures_total",
        MetricKind::Counter,
        "Cluster connections that sent their whole handshake and failed the cookie check (repeated from one unknown address: it backs off)",
    ),
    (
        "customer_cluster_session_refused_total",
        MetricKind::Counter,
        "Authenticated cluster sessions closed for a frame that broke the rules (reason: foreign_actor, too_many, frame_too_long, lease_for_other, undecodable)",
    ),
    (
        "customer_cluster_preauth_connections",
        MetricKind::Gauge,
        "Cluster connections accepted and still in their handshake (at most --cluster-max-unauthenticated)",
    ),
    (
        "customer_event_subscribers_dropped_total",
        MetricKind::Counter,
        "Event streams ended because their reader fell more than 256 events behind",
    ),
];

/// The `kind` label values of `customer_http_timeouts_total`, registered at start.
pub const HTTP_TIMEOUT_KINDS: [&str; 3] = ["header", "idle", "request"];

/// The `kind` label values of `customer_lease_statements_total`, registered at start.
pub const LEASE_STATEMENT_KINDS: [&str; 8] = [
    "renew", "table", "grant", "takeover", "release", "register", "own_row", "ping",
];

/// Describes every metric of [`METRICS`] and registers it at zero, so a fresh node already
/// exports every series: `rate()` and absence alerts need a series to exist before its first
/// event. Labelled metrics get an unlabelled zero series (their label values are not known in
/// advance), except those whose label values are known: `customer_http_timeouts_total`,
/// `customer_lease_statements_total` and `customer_cluster_preauth_refused_total`.
fn describe_and_register_catalogue() {
    for (name, kind, help) in METRICS {
        match kind {
            MetricKind::Counter => {
                metrics::describe_counter!(*name, *help);
                metrics::counter!(*name).absolute(0);
            }
            MetricKind::Gauge => {
                metrics::describe_gauge!(*name, *help);
                metrics::gauge!(*name).set(0.0);
            }
            MetricKind::Histogram => {
                metrics::describe_histogram!(*name, *help);
                // Registering creates the series; the exporter renders it with zero counts.
                let _ = metrics::histogram!(*name);
            }
        }
    }
    for kind in HTTP_TIMEOUT_KINDS {
        metrics::counter!("customer_http_timeouts_total", "kind" => kind).absolute(0);
    }
    for kind in LEASE_STATEMENT_KINDS {
        metrics::counter!("customer_lease_statements_total", "kind" => kind).absolute(0);
    }
    for reason in crate::cluster::handshake::REFUSAL_REASONS {
        metrics::counter!("customer_cluster_preauth_refused_total", "reason" => reason).absolute(0);
    }
    for reason in crate::cluster::frames::VIOLATION_REASONS {
        metrics::counter!("customer_cluster_session_refused_total", "reason" => reason).absolute(0);
    }
}

/// Latency buckets (seconds) for every `*_seconds` histogram: 50 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Batch-size buckets for `customer_db_batch_size`.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static METRICS_HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle)
/// and starts its upkeep. Every series carries the label `node`.
pub fn install_metrics(node: &str) -> Option<PrometheusHandle> {
    METRICS_HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .add_global_label("node", node)
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("customer_db_batch_size".into()),
                        BATCH_BUCKETS,
                    )
                });
            let handle = match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    return None;
                }
            };
            describe_and_register_catalogue();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .ok();
            Some(handle)
        })
        .clone()
}
