//! `/dashboard`: a static page (HTML, JavaScript, CSS embedded in the binary with
//! `include_str!`, no build step) that watches the cluster through the authenticated API.
//!
//! The page itself carries no data and needs no token; every data call it makes sends the
//! bearer token typed into it (kept in the tab's `sessionStorage` only) in the
//! `Authorization` header — the event stream too, read with `fetch()` streaming rather than
//! `EventSource`, so the token never appears in a URL or a log. It polls `/v1/cluster` and
//! `/v1/cluster/shards` every second, reads each member's `/metrics` for request and 5xx
//! rates, follows `/v1/events`, and looks customers up with `/v1/customers/{id}/placement`.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// Only the page's own origin may run scripts or be fetched from, except each member's
/// `/metrics` (request rates), which lives on other ports.
const CSP: &str = "default-src 'self'; connect-src 'self' http: https:; img-src 'self' data:";

/// `GET /dashboard`
pub async fn page() -> Response {
    with_type("text/html; charset=utf-8", INDEX)
}

/// `GET /dashboard/{asset}`: `app.js` and `style.css`; anything else is 404.
pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => with_type("text/javascript; charset=utf-8", SCRIPT),
        "style.css" => with_type("text/css; charset=utf-8", STYLE),
        _ => ApiError::RouteNotFound.into_response(),
    }
}

fn with_type(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
