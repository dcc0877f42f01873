//! Cross-cutting request handling: request ids and spans, bearer auth, HTTP metrics.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tracing::Instrument;

use super::error::ApiError;
use super::limits::AuthFailure;
use super::{AppState, ENTRY_NODE, REQUEST_ID};
use crate::config::Secret;
use crate::error::Error;

/// Longest client-supplied request id we adopt; longer or odd ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 64;

/// Assigns the request id, opens the request span, and stamps `X-Request-Id` and
/// `X-Entry-Node` on the response.
pub async fn request_context(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_acceptable_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let n = state.request_seq.fetch_add(1, Ordering::Relaxed) + 1;
            format!("{}-{n}", state.gateway.node_name())
        });
    if let Ok(v) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID, v);
    }
    // `?` (Debug) escapes control characters: nothing a client sends can start a new log line.
    let span =
        tracing::info_span!("request", id = %id, method = ?req.method(), path = ?req.uri().path());
    let mut response = next.run(req).instrument(span).await;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(state.gateway.node_name()) {
        headers.insert(ENTRY_NODE, v);
    }
    response
}

/// True for ids we are willing to echo into headers and logs.
pub fn is_acceptable_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// Requires `Authorization: Bearer <token>` matching one of the configured tokens. A missing
/// or wrong token is answered 401 and counted (`customer_http_unauthorized_total`); past 20
/// such answers in 10 s to one source address, the next ones also carry `Retry-After`
/// (`customer_http_auth_throttled_total`): still 401, since an unauthenticated request is
/// unauthorized whatever its rate (API checkers hold a route to that). A correct token is never
/// throttled: a guesser sharing an address with real clients costs them nothing. Tokens are at
/// least 16 bytes, so guessing one online is hopeless anyway; the back-off tells a
/// misconfigured client to stop and shows it in the metric.
pub async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if state.tokens.is_empty() {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(token) if token_matches(&state.tokens, token) => next.run(req).await,
        _ => {
            metrics::counter!("customer_http_unauthorized_total").increment(1);
            let verdict = super::server::client_ip(req.extensions()).map(|ip| {
                state
                    .auth_failures
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .fail(ip, Instant::now())
            });
            match verdict {
                Some(AuthFailure::Throttled(retry_after)) => {
                    metrics::counter!("customer_http_auth_throttled_total").increment(1);
                    ApiError::UnauthorizedBackOff { retry_after }.into_response()
                }
                _ => ApiError::Unauthorized.into_response(),
            }
        }
    }
}

/// Compares `presented` with every token in constant time per token, without stopping at the
/// first match, so timing reveals neither which token matched nor how much of one did.
pub fn token_matches(tokens: &[Secret], presented: &str) -> bool {
    let mut any = subtle::Choice::from(0);
    for token in tokens {
        any |= token.expose().as_bytes().ct_eq(presented.as_bytes());
    }
    any.into()
}

/// Methods that get their own `method` label; every other (extension) method is `other`.
const LABELLED_METHODS: [Method; 7] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
];

/// The `method` label: a known method's name, else `other`. Clients choose the method (any
/// token is a valid extension method), so labelling it verbatim would let anyone grow
/// `/metrics` without bound.
pub fn method_label(method: &Method) -> &'static str {
    LABELLED_METHODS
        .iter()
        .find(|m| *m == method)
        .map_or("other", Method::as_str)
}

/// The `route` label: the matched route template (a fixed set), else `unmatched` — never the
/// raw path, which clients choose.
pub fn route_label(matched: Option<&MatchedPath>) -> String {
    matched.map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned())
}

/// Counts requests by route and status, and records their latency. Every label value comes
/// from a fixed set (see [`method_label`], [`route_label`]; statuses are three digits).
pub async fn record_metrics(req: Request, next: Next) -> Response {
    let route = route_label(req.extensions().get::<MatchedPath>());
    let method = method_label(req.method());
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    let elapsed = started.elapsed().as_secs_f64();
    metrics::counter!("customer_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("customer_http_request_seconds", "method" => method, "route" => route)
        .record(elapsed);
    tracing::debug!(
        status = response.status().as_u16(),
        elapsed_ms = elapsed * 1000.0,
        "request done"
    );
    response
}

/// Answers 504 when a request takes longer than the HTTP request timeout (body reading
/// included), and counts it in `customer_http_timeouts_total{kind="request"}`. 504, not 503:
/// the request may have started a write that still commits (outcome unknown, retry with the
/// same `Idempotency-Key`).
pub async fn request_timeout(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = state.request_timeout;
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!("customer_http_timeouts_total", "kind" => "request").increment(1);
            ApiError::Service(Error::Timeout(format!(
                "the request took longer than {} ms",
                limit.as_millis()
            )))
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_configured_token_matches_and_nothing_else() {
        let tokens = vec![Secret::new("old"), Secret::new("new")];
        assert!(token_matches(&tokens, "old"));
        assert!(token_matches(&tokens, "new"));
        assert!(!token_matches(&tokens, "ne"));
        assert!(!token_matches(&tokens, "newer"));
        assert!(!token_matches(&tokens, ""));
    }

    #[test]
    fn metric_labels_come_from_a_fixed_set_whatever_the_client_sends() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        for made_up in ["FOO", "X-SCAN-12345", "get", "PROPFIND"] {
            let m = Method::from_bytes(made_up.as_bytes()).unwrap();
            assert_eq!(method_label(&m), "other", "{made_up}");
        }
        assert_eq!(route_label(None), "unmatched");
    }

    #[test]
    fn only_short_plain_request_ids_are_adopted() {
        assert!(is_acceptable_request_id("abc-123_x.y:z"));
        assert!(!is_acceptable_request_id(""));
        assert!(!is_acceptable_request_id("has space"));
        assert!(!is_acceptable_request_id(&"a".repeat(65)));
        assert!(!is_acceptable_request_id("new\nline"));
    }
}
