//! A small HTTP/1.1 client for the node API, used by the CLI commands, the load generator, the
//! failover workload and the tests. One keep-alive connection pool per client; every request
//! has a deadline. [`exit`] says how every subcommand ends: its output and its exit code.
//!
//! A node serves plain HTTP and sits behind a TLS-terminating proxy when it leaves the host;
//! the client speaks `http://` and `https://` (rustls), and never downgrades an `https://` URL.
//! [`transport`] says which certificates it trusts, and why the CLI refuses `http://` to
//! anything but the loopback. [`text`] makes what a node sends safe to print on a terminal.

pub mod commands;
pub mod events;
pub mod exit;
pub mod import;
pub mod text;
pub mod transport;

use std::path::Path;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Default node URL for the CLI.
pub const DEFAULT_NODE_URL: &str = "http://127.0.0.1:8081";

/// What can go wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is unusable.
    #[error("invalid node URL {0:?}: {1}")]
    Url(String, String),
    /// No connection, or it broke.
    #[error("cannot reach node at {url}: {reason}")]
    Connect {
        /// Node URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// No answer within the deadline.
    #[error("node at {0} did not answer within {1:?}")]
    Timeout(String, Duration),
    /// The node answered with an error.
    #[error("{message} (HTTP {status} {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code from the body.
        code: String,
        /// Error message from the body.
        message: String,
    },
    /// The body was not what we expected.
    #[error("unexpected response: {0}")]
    Decode(String),
    /// A problem on this side, before or after talking to a node: an unreadable file, an
    /// unusable argument.
    #[error("{0}")]
    Local(String),
}

/// A response with its body read.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl HttpResponse {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Decodes a JSON body.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ClientError::Decode(format!(
                "{e}: {}",
                text::shown(&String::from_utf8_lossy(&self.body))
            ))
        })
    }

    /// `Ok(self)` for 2xx, else the API error from the body (its text escaped for the
    /// terminal: see [`text`]).
    pub fn ok(self) -> Result<Self, ClientError> {
        if self.status.is_success() {
            return Ok(self);
        }
        let (code, message) = match serde_json::from_slice::<serde_json::Value>(&self.body) {
            Ok(v) => (
                v["error"]["code"].as_str().unwrap_or("unknown").to_owned(),
                v["error"]["message"].as_str().unwrap_or("").to_owned(),
            ),
            Err(_) => (
                "unknown".into(),
                String::from_utf8_lossy(&self.body).into_owned(),
            ),
        };
        Err(ClientError::Api {
            status: self.status.as_u16(),
            code: text::shown(&code).into_owned(),
            message: text::shown(&message).into_owned(),
        })
    }
}

/// A client bound to one node.
#[derive(Clone)]
pub struct HttpClient {
    base: String,
    token: Option<String>,
    timeout: Duration,
    /// Appended to "cannot reach node" errors: what to do about it (see [`HttpClient::with_connect_hint`]).
    connect_hint: Option<String>,
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpClient {
    /// A client for `base` (`http://host:port`, `https://host:port` or `host:port`, which
    /// means `http://`); an `https://` node must present a certificate from the public web PKI.
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Result<Self, ClientError> {
        Self::with_ca_file(base, token, timeout, None)
    }

    /// [`HttpClient::new`], trusting for `https://` only the CA certificates in the PEM file
    /// `ca_file` when one is given (a private CA), instead of the public roots.
    pub fn with_ca_file(
        base: &str,
        token: Option<String>,
        timeout: Duration,
        ca_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let base = normalize_base(base)?;
        let connector = transport::connector(&base, ca_file, timeout)?;
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            base,
            token: token.filter(|t| !t.is_empty()),
            timeout,
            connect_hint: None,
            inner,
        })
    }

    /// Adds `hint` (a line telling the user what to do) to every "cannot reach node" error
    /// of this client, e.g. how to point the CLI at a cluster when it fell back to the default
    /// URL.
    pub fn with_connect_hint(mut self, hint: Option<String>) -> Self {
        self.connect_hint = hint;
        self
    }

    fn unreachable(&self, reason: String) -> ClientError {
        let reason = match &self.connect_hint {
            Some(hint) => format!("{reason}\nhint: {hint}"),
            None => reason,
        };
        ClientError::Connect {
            url: self.base.clone(),
            reason,
        }
    }

    /// The node URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Opens a long-lived GET (an event stream): the head must arrive within the client's
    /// timeout, the body is the caller's to read for as long as it likes. An error status is
    /// read in full and returned as the API's error.
    pub async fn open_stream(&self, path: &str) -> Result<hyper::body::Incoming, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut builder = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .header(hyper::header::ACCEPT, "text/event-stream");
        if let Some(token) = &self.token {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|e| ClientError::Url(url.clone(), e.to_string()))?;
        let head = tokio::time::timeout(self.timeout, self.inner.request(request))
            .await
            .map_err(|_| ClientError::Timeout(self.base.clone(), self.timeout))?
            .map_err(|e| self.unreachable(error_chain(&e)))?;
        let (parts, body) = head.into_parts();
        if parts.status.is_success() {
            return Ok(body);
        }
        let body = tokio::time::timeout(self.timeout, body.collect())
            .await
            .map_err(|_| ClientError::Timeout(self.base.clone(), self.timeout))?
            .map_err(|e| self.unreachable(e.to_string()))?;
        Err(HttpResponse {
            status: parts.status,
            headers: parts.headers,
            body: body.to_bytes(),
        }
        .ok()
        .err()
        .unwrap_or_else(|| ClientError::Decode(format!("HTTP {}", parts.status))))
    }

    /// Sends a request; `body` is sent as JSON (`Content-Type` from `headers` if given).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut builder = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            builder = builder.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some()
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| ClientError::Url(url.clone(), e.to_string()))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| ClientError::Url(url.clone(), e.to_string()))?;
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Url(url.clone(), e.to_string()))?;
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| self.unreachable(error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| self.unreachable(e.to_string()))?;
            Ok(HttpResponse {
                status: parts.status,
                headers: parts.headers,
                body: body.to_bytes(),
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(self.base.clone(), self.timeout))?
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Result<HttpResponse, ClientError> {
        self.send(Method::GET, path, None, &[]).await
    }

    /// One page of `GET /v1/customers`: up to `limit` customers after the cursor `after`.
    pub async fn list_page(
        &self,
        limit: u32,
        after: Option<&str>,
    ) -> Result<crate::api::model::ListResponse, ClientError> {
        let mut path = format!("/v1/customers?limit={limit}");
        if let Some(a) = after {
            path.push_str("&after=");
            path.push_str(&encode_segment(a));
        }
        self.get(&path).await?.ok()?.json()
    }

    /// A request with a JSON body.
    pub async fn json<T: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &T,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.send(method, path, Some(bytes), headers).await
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so any text (an id typed
/// by a user, a cursor) stays exactly one path segment or query value.
pub fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The path of one customer, `id` encoded as one segment whatever it contains.
pub fn customer_path(id: &str) -> String {
    format!("/v1/customers/{}", encode_segment(id))
}

fn normalize_base(raw: &str) -> Result<String, ClientError> {
    let raw = raw.trim().trim_end_matches('/');
    let with_scheme = if raw.starts_with("http://") || raw.starts_with("https://") {
        raw.to_owned()
    } else if raw.contains("://") {
        return Err(ClientError::Url(
            raw.into(),
            "only http:// and https:// URLs are supported".into(),
        ));
    } else {
        format!("http://{raw}")
    };
    let uri: hyper::Uri = with_scheme
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| ClientError::Url(raw.into(), e.to_string()))?;
    if uri.host().is_none() {
        return Err(ClientError::Url(raw.into(), "no host".into()));
    }
    Ok(with_scheme)
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_are_normalized_and_other_schemes_are_refused_clearly() {
        assert_eq!(
            normalize_base("127.0.0.1:8081").unwrap(),
            "http://127.0.0.1:8081"
        );
        assert_eq!(normalize_base("http://h:1/").unwrap(), "http://h:1");
        assert_eq!(normalize_base("https://h:1/").unwrap(), "https://h:1");
        assert!(matches!(
            normalize_base("ftp://h"),
            Err(ClientError::Url(..))
        ));
    }

    #[tokio::test]
    async fn a_connect_hint_follows_the_reason_a_node_is_unreachable() {
        // A port nobody listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let client = HttpClient::new(&format!("127.0.0.1:{port}"), None, Duration::from_secs(5))
            .unwrap()
            .with_connect_hint(Some("start a node".into()));
        let err = client.get("/health").await.unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("cannot reach node at http://127.0.0.1:"),
            "{text}"
        );
        assert!(text.ends_with("\nhint: start a node"), "{text}");
    }
}
