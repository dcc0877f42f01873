//! The HTTP/JSON API: axum router, handlers, middleware, and the single error→status mapping.
//!
//! ```text
//! connection (server: cap, header and idle timeouts)
//!   → request → request_context (id, span, X-Entry-Node) → metrics → request timeout
//!   → [auth on /v1] → handler
//!   → Gateway (owner lookup, local or remote Registry call) → response + X-Owner-Node
//! ```
//!
//! Every node serves every route; the handler never cares where the customer lives. Handlers
//! are thin: parse and validate input, call the [`Gateway`], shape the response.
//!
//! Modules: `model` holds the JSON bodies as plain serde types (no axum, shared with the CLI
//! client), `json` the axum extractor over them, `handlers` the routes, `openapi` the document
//! generated from both, `error` the one error→status mapping, `middleware` the layers, and
//! `server` the accept loop with the edge's limits (connections, head size, header/idle/stall
//! timeouts), `limits` the bookkeeping behind them (per-address counts of connections and
//! event streams, the wrong-token throttle, once-per-window log lines, the open-files fit).
//! `events` streams the node's event bus (SSE) and its shard table; `dashboard` serves the
//! static page that watches them.
//!
//! Deliberately not here: business rules (in `customer`), routing decisions (in
//! `actors::gateway`), TLS for clients (terminate it in a proxy in front of the node). Nothing
//! here reaches past the actors layer: cluster state and storage limits come through the
//! [`Gateway`] (checked by `tests/architecture.rs`).

pub mod dashboard;
pub mod error;
pub mod events;
pub mod handlers;
pub mod json;
pub mod limits;
pub mod middleware;
pub mod model;
pub mod openapi;
pub mod server;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::actors::gateway::Gateway;
use crate::config::{HttpLimits, Secret, defaults};
use error::ApiError;
use limits::{Caps, ConnTable, FailureThrottle};

/// Header naming the node whose customer actor served the request.
pub const OWNER_NODE: &str = "x-owner-node";
/// Header naming the node that received the request.
pub const ENTRY_NODE: &str = "x-entry-node";
/// Header carrying the client's idempotency key for a write (DESIGN §6 F4).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Response header saying the answer is the one stored for this key the first time.
pub const IDEMPOTENT_REPLAY: &str = "idempotent-replay";
/// Header carrying the request id (accepted from the client, or generated).
pub const REQUEST_ID: &str = "x-request-id";

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The request path into the cluster.
    pub gateway: Gateway,
    /// Accepted bearer tokens; empty = open API.
    pub tokens: Arc<Vec<Secret>>,
    /// Body size limit, bytes.
    pub max_body_bytes: usize,
    /// Source of generated request ids.
    pub request_seq: Arc<AtomicU64>,
    /// Prometheus exposition, when a recorder is installed.
    pub metrics: Option<PrometheusHandle>,
    /// Longest one request may take before it is answered 504.
    pub request_timeout: Duration,
    /// Open `/v1/events` streams, in total and per source address.
    pub streams: Arc<ConnTable>,
    /// Age at which an event stream ends.
    pub stream_max_age: Duration,
    /// Wrong-token answers per source address (throttled past a rate).
    pub auth_failures: Arc<Mutex<FailureThrottle>>,
    /// The last `/ready` answer and when it was found, shared by callers for a second.
    pub readiness: Arc<handlers::ReadyCache>,
}

impl AppState {
    /// State for a node's router.
    pub fn new(gateway: Gateway, tokens: Vec<Secret>, max_body_bytes: usize) -> Self {
        Self {
            gateway,
            tokens: Arc::new(tokens),
            max_body_bytes,
            request_seq: Arc::new(AtomicU64::new(0)),
            metrics: None,
            request_timeout: Duration::from_millis(
                defaults::REQUEST_TIMEOUT_MS * u64::from(defaults::HTTP_REQUEST_TIMEOUT_FACTOR),
            ),
            streams: ConnTable::new(Caps {
                max: defaults::MAX_EVENT_STREAMS,
                per_client: defaults::MAX_EVENT_STREAMS_PER_CLIENT,
                loopback_reserve: 0,
            }),
            stream_max_age: Duration::from_secs(defaults::EVENT_STREAM_MAX_AGE_S),
            auth_failures: Arc::default(),
            readiness: Arc::default(),
        }
    }

    /// Applies the edge's limits: the request timeout and the event-stream caps and age.
    /// Streams may hold at most half the connection slots, whatever `--max-event-streams`
    /// says, so requests and `/health` always have the other half.
    pub fn with_http_limits(mut self, limits: &HttpLimits) -> Self {
        self.request_timeout = limits.request_timeout;
        self.streams = ConnTable::new(Caps {
            max: limits
                .max_event_streams
                .min((limits.max_connections / 2).max(1)),
            per_client: limits.max_event_streams_per_client,
            loopback_reserve: 0,
        });
        self.stream_max_age = limits.event_stream_max_age;
        self
    }

    /// Answers 504 to requests that take longer than `limit`.
    pub fn with_request_timeout(mut self, limit: Duration) -> Self {
        self.request_timeout = limit;
        self
    }

    /// Serves `/metrics` from `handle`.
    pub fn with_metrics(mut self, handle: Option<PrometheusHandle>) -> Self {
        self.metrics = handle;
        self
    }
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    use axum::middleware::{from_fn, from_fn_with_state};
    use handlers::*;
    let v1 = Router::new()
        .route("/v1/customers", get(list).post(create))
        .route(
            "/v1/customers/{id}",
            get(get_one).put(replace).patch(patch).delete(delete),
        )
        .route("/v1/customers/{id}/placement", get(placement))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/ping/{node}", get(ping))
        .route("/v1/cluster/shards", get(events::shards))
        .route("/v1/events", get(events::events))
        .route_layer(from_fn_with_state(state.clone(), middleware::auth));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/{asset}", get(dashboard::asset))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(from_fn_with_state(
            state.clone(),
            middleware::request_timeout,
        ))
        .layer(from_fn(middleware::record_metrics))
        .layer(from_fn_with_state(
            state.clone(),
            middleware::request_context,
        ))
        .with_state(state)
}
