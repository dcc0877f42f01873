//! `/dashboard`: a static page (HTML, JavaScript, CSS embedded in the binary with
//! `include_str!`, no build step) that watches the cluster through the authenticated API.
//!
//! The page itself carries no data and needs no token; every data call it makes sends the
//! bearer token typed into it (kept in the tab's `sessionStorage` only) in the
//! `Authorization` header — the event stream too, read with `fetch()` streaming rather than
//! `EventSource`, so the token never appears in a URL or a log. It polls `/v1/cluster` and
//! `/v1/cluster/shards` every second, reads each member's `/metrics` for request and 5xx
//! rates, follows `/v1/events`, and looks customers up with `/v1/customers/{id}/placement`.
//!
//! Headers: the page may not be framed (`frame-ancestors 'none'`, `X-Frame-Options: DENY`),
//! nothing is sniffed (`nosniff`), no referrer leaves it, and its `connect-src` names this
//! node and the members' HTTP addresses known when the page was served — nothing else. A
//! member's `/metrics` answers a cross-origin read only to an `Origin` that is a member's
//! HTTP address ([`is_member_origin`]), so no other web page can read them.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");

/// The policy of the scripts and styles (the page's own is [`page_csp`]).
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// `GET /dashboard`
pub async fn page(State(s): State<AppState>, request: HeaderMap) -> Response {
    let host = request
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let csp = page_csp(&s.gateway.member_http_addrs(), host);
    let mut response = with_type("text/html; charset=utf-8", INDEX);
    if let Ok(v) = HeaderValue::from_str(&csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, v);
    }
    response
}

/// The page's policy: only its own origin, plus each member's `/metrics` (request rates), on
/// both schemes. A member bound to an unspecified address (`0.0.0.0:8081`) is reached by the
/// name the page was loaded with, as `app.js` does. Addresses that are not a plain
/// `host:port` are left out.
pub fn page_csp(members: &[String], request_host: &str) -> String {
    let own_host = split_host_port(request_host).map_or(request_host, |(h, _)| h);
    let mut sources = Vec::new();
    for addr in members {
        let Some((host, port)) = split_host_port(addr) else {
            continue;
        };
        let host = if is_unspecified(host) { own_host } else { host };
        if !is_plain_host(host) {
            continue;
        }
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        for scheme in ["http", "https"] {
            sources.push(format!("{scheme}://{host}:{port}"));
        }
    }
    format!(
        "default-src 'self'; connect-src 'self' {}; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        sources.join(" ")
    )
}

/// Whether `origin` (an `Origin` header) is a member's HTTP address: same port, and the same
/// host, or for a member bound to an unspecified address, the host this request was sent to
/// (`request_host`, the `Host` header).
pub fn is_member_origin(origin: &str, request_host: &str, members: &[String]) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let Some((host, port)) = split_host_port(rest) else {
        return false;
    };
    let own_host = split_host_port(request_host).map_or(request_host, |(h, _)| h);
    members
        .iter()
        .filter_map(|m| split_host_port(m))
        .any(|(mh, mp)| {
            mp == port
                && (mh.eq_ignore_ascii_case(host) || (is_unspecified(mh) && host == own_host))
        })
}

/// `host:port` (host unbracketed) when `addr` is one, with a numeric port.
fn split_host_port(addr: &str) -> Option<(&str, &str)> {
    let (host, port) = addr.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        .then_some((host, port))
}

fn is_unspecified(host: &str) -> bool {
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
}

/// A host name or address with nothing a policy could read as another source or directive.
fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
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
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members() -> Vec<String> {
        vec![
            "127.0.0.1:18101".into(),
            "0.0.0.0:18102".into(),
            "[::1]:18103".into(),
        ]
    }

    #[test]
    fn only_a_members_address_may_read_metrics_cross_origin() {
        let m = members();
        assert!(is_member_origin(
            "http://127.0.0.1:18101",
            "127.0.0.1:18102",
            &m
        ));
        assert!(is_member_origin("https://[::1]:18103", "x:1", &m));
        // A member bound to 0.0.0.0 is reached by the name the page used.
        assert!(is_member_origin("http://node-a:18102", "node-a:18101", &m));
        assert!(!is_member_origin(
            "http://evil.example:18102",
            "node-a:18101",
            &m
        ));
        assert!(!is_member_origin(
            "http://evil.example",
            "127.0.0.1:18101",
            &m
        ));
        assert!(!is_member_origin(
            "http://127.0.0.1:9999",
            "127.0.0.1:18101",
            &m
        ));
        assert!(!is_member_origin("null", "127.0.0.1:18101", &m));
        assert!(!is_member_origin(
            "file://127.0.0.1:18101",
            "127.0.0.1:18101",
            &m
        ));
    }

    #[test]
    fn the_page_may_connect_to_itself_and_the_members_only() {
        let mut m = members();
        m.push("evil.example; script-src *:1".into());
        m.push("a b:2".into());
        let csp = page_csp(&m, "node-a:18101");
        assert!(csp.contains("connect-src 'self' http://127.0.0.1:18101 https://127.0.0.1:18101 http://node-a:18102 https://node-a:18102 http://[::1]:18103 https://[::1]:18103;"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"));
        assert!(!csp.contains("evil") && !csp.contains("a b"), "{csp}");
    }
}
