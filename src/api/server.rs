//! The HTTP edge: the accept loop that serves the router, with every resource a client could
//! otherwise hold on to bounded (STYLE habit 16).
//!
//! ```text
//! accept ─┬─ this address at its cap? ── yes ──▶ "429 + Retry-After", close
//!         ├─ slot free? ── no ──▶ "503 + Retry-After", close (never queued, never a hang)
//!         └─ yes ─▶ connection task: hyper http1 ◀─ watchdog (header / idle / stall deadline)
//!                                     └─ router (request timeout → 504, see middleware)
//! ```
//!
//! | limit | default | enforced by | metric |
//! |---|---|---|---|
//! | open connections | 4096 (16 of them for loopback only) | a [`ConnTable`] entry taken at accept | `customer_http_connections_open`, `customer_http_connections_refused_total{reason="over_cap"}` |
//! | open connections per source address | 256 (0 = off) | the same entry | `customer_http_connections_refused_total{reason="per_client"}` |
//! | request head size | 32 KiB, 64 headers | hyper (`max_buf_size`, `max_headers`): 431, closed | — |
//! | request head time | 10 s | the connection watchdog | `customer_http_timeouts_total{kind="header"}` |
//! | keep-alive idle | 60 s | the connection watchdog | `customer_http_timeouts_total{kind="idle"}` |
//! | one request | 2 × request timeout | `middleware::request_timeout` (504) | `customer_http_timeouts_total{kind="request"}` |
//! | a stream the client stopped reading | 30 s | the connection watchdog | `customer_http_timeouts_total{kind="stream_stall"}` |
//!
//! Why the head is capped at 32 KiB: hyper's default read buffer grows to ~408 KiB per
//! connection before it answers 431, so a few thousand half-sent heads cost gigabytes. Real
//! heads are a few KiB (a bearer token, a request id, proxy headers); bodies have their own
//! limit (`--max-body-bytes`) and are not held in this buffer.
//!
//! Why these mechanisms and not the stock ones:
//! * hyper's `http1::Builder::header_read_timeout` starts its clock whenever the connection
//!   waits for a request head — idle keep-alive time included — so it cannot give a short
//!   header limit together with a longer idle limit. We leave hyper's timer off and run a
//!   per-connection watchdog over a pure state machine ([`ConnState`]) fed by the socket
//!   (first byte of a head) and the service (request started / finished).
//! * tower's `ConcurrencyLimit` bounds requests, not connections, and queues the excess: an
//!   idle or slow connection would still hold a socket. A semaphore taken at accept bounds
//!   sockets; the connection over the cap is answered at once with a 503 and closed. The 503
//!   is written without waiting (`try_write` into the fresh socket's empty send buffer): a
//!   client that already sent its request may see a reset instead, but it is told at once.
//! * the request timeout is an axum middleware rather than tower-http's `TimeoutLayer`, so the
//!   answer is the API's JSON error (504, outcome unknown) and counts itself, without a new
//!   dependency.
//!
//! Graceful stop: stop accepting, ask every connection to finish (hyper closes idle ones at
//! once and lets in-flight requests complete), then wait until every slot is free again.
//!
//! The open-files limit is raised to its hard limit at start and the connection cap lowered
//! to fit it ([`super::limits::fit_open_files`]); accept errors (out of descriptors) log one
//! line per 10 s with a count.
//!
//! Deliberately not here: HTTP/2 and TLS (put a proxy in front), request-rate limits.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tower::ServiceExt;

use super::limits::{Caps, ConnTable, Held, LogEvery, Refusal};
use crate::config::HttpLimits;

/// Largest request head hyper buffers (bytes); a longer one is answered 431 and closed.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// Most header lines in one request head; more is answered 431.
pub const MAX_HEADERS: usize = 64;

/// A stream response whose next chunk the connection has not taken for this long (the client
/// stopped reading and the socket buffers are full) is closed.
pub const STREAM_STALL: Duration = Duration::from_secs(30);

/// The source address of a request, stamped by the accept loop into its extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The source address of a request served by [`serve`]; `None` for a router called directly.
pub fn client_ip(extensions: &hyper::http::Extensions) -> Option<IpAddr> {
    extensions.get::<ClientAddr>().map(|a| a.0)
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// A request head did not arrive completely in time.
    Header,
    /// A keep-alive connection sat idle between requests for too long.
    Idle,
    /// A stream response was not read by the client for [`STREAM_STALL`].
    StreamStall,
}

impl TimeoutKind {
    /// The `kind` label of `customer_http_timeouts_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Idle => "idle",
            Self::StreamStall => "stream_stall",
        }
    }
}

/// Where one connection is in its request cycle, as far as its timeouts care. Pure: every
/// method takes the time as an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnState {
    /// Requests handed to the router and not answered yet (more than one only when pipelined).
    in_flight: u32,
    /// When the connection started waiting for its next request: the connect, or the end of
    /// the last response.
    waiting_since: Instant,
    /// When the first byte of the next request head arrived, if it did.
    head_started: Option<Instant>,
    /// Requests answered on this connection.
    served: u64,
    /// When a stream response produced a chunk the connection has not asked past yet.
    stream_sent: Option<Instant>,
}

impl ConnState {
    /// A connection accepted at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            in_flight: 0,
            waiting_since: now,
            head_started: None,
            served: 0,
            stream_sent: None,
        }
    }

    /// Bytes arrived at `now`. Returns true when that moved the deadline (the first byte of a
    /// head after an idle period: the idle clock gives way to the header clock). On a fresh
    /// connection the header clock runs from the connect.
    pub fn bytes_arrived(&mut self, now: Instant) -> bool {
        if self.in_flight > 0 || self.head_started.is_some() {
            return false;
        }
        self.head_started = Some(if self.served == 0 {
            self.waiting_since
        } else {
            now
        });
        true
    }

    /// A complete head was parsed and the request handed to the router.
    pub fn request_started(&mut self) {
        self.in_flight += 1;
        self.head_started = None;
    }

    /// The router answered a request at `now`.
    pub fn request_finished(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.served += 1;
        self.stream_sent = None;
        if self.in_flight == 0 {
            self.waiting_since = now;
            self.head_started = None;
        }
    }

    /// A stream response produced a chunk at `now`. Returns true when that set a deadline.
    pub fn stream_chunk(&mut self, now: Instant) -> bool {
        let unset = self.stream_sent.is_none();
        if unset {
            self.stream_sent = Some(now);
        }
        unset
    }

    /// The connection asked a stream response for its next chunk: it is still being read.
    /// Returns true when that lifted a deadline.
    pub fn stream_polled(&mut self) -> bool {
        self.stream_sent.take().is_some()
    }

    /// When the connection must be closed, and why; while a request is being served, `None`
    /// (the request timeout bounds that) unless a stream response sits unread.
    pub fn deadline(&self, limits: &HttpLimits) -> Option<(Instant, TimeoutKind)> {
        if self.in_flight > 0 {
            return self
                .stream_sent
                .map(|t| (t + STREAM_STALL, TimeoutKind::StreamStall));
        }
        Some(match (self.head_started, self.served) {
            (Some(t), _) => (t + limits.header_timeout, TimeoutKind::Header),
            (None, 0) => (
                self.waiting_since + limits.header_timeout,
                TimeoutKind::Header,
            ),
            (None, _) => (self.waiting_since + limits.idle_timeout, TimeoutKind::Idle),
        })
    }
}

/// A connection's [`ConnState`] shared between its socket, its service and its watchdog.
struct Watch {
    state: Mutex<ConnState>,
    changed: Notify,
}

impl Watch {
    fn update(&self, f: impl FnOnce(&mut ConnState) -> bool) {
        let moved = f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
        if moved {
            self.changed.notify_one();
        }
    }

    /// Resolves when the connection's deadline passes; follows every change of the state.
    async fn expiry(&self, limits: &HttpLimits) -> TimeoutKind {
        loop {
            let deadline = self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .deadline(limits);
            match deadline {
                Some((at, kind)) if at <= Instant::now() => return kind,
                Some((at, _)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at.into()) => {}
                        _ = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// Marks a request finished on its connection when dropped: when its answer is handed to
/// hyper, or for a stream, when its body ends.
struct Finished(Arc<Watch>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.update(|s| {
            s.request_finished(Instant::now());
            true
        });
    }
}

/// Whether `response` is a long-lived stream (Server-Sent Events).
fn is_stream(response: &axum::response::Response) -> bool {
    response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"))
}

/// The socket, reporting arriving bytes to the connection's [`Watch`].
struct WatchedStream {
    inner: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.update(|s| s.bytes_arrived(Instant::now()));
        }
        polled
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A connection slot: holding it counts the connection as open.
struct Slot(#[allow(dead_code)] Held);

impl Slot {
    fn new(held: Held) -> Self {
        metrics::gauge!("customer_http_connections_open").increment(1.0);
        Self(held)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("customer_http_connections_open").decrement(1.0);
    }
}

/// Serves `app` on `listener` under `limits` until `stop` turns true (or its sender is
/// dropped), then finishes every open connection and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let slots = ConnTable::new(Caps::connections(
        limits.max_connections,
        limits.max_connections_per_client,
    ));
    let (finish_tx, finish_rx) = watch::channel(false);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            _ = turned_true(&mut stop) => break,
        };
        let ip = peer.ip().to_canonical();
        match slots.admit(Some(ip)) {
            Ok(held) => {
                let connection = serve_connection(
                    stream,
                    ClientAddr(ip),
                    app.clone(),
                    limits,
                    Slot::new(held),
                    finish_rx.clone(),
                );
                tokio::spawn(connection);
            }
            Err(why) => refuse(&stream, why),
        }
    }
    drop(listener);
    let _ = finish_tx.send(true);
    slots.emptied().await;
    Ok(())
}

/// Resolves once `flag` is true, or its sender is gone (which ends the server too).
async fn turned_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|on| *on).await;
}

/// Accept errors are per connection (reset before accept) or resource exhaustion (out of file
/// descriptors); back off briefly on the latter so the loop does not spin, and log one line
/// per 10 s.
async fn accept_failed(e: io::Error) {
    static BUDGET: Mutex<LogEvery> = Mutex::new(LogEvery::new());
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    metrics::counter!("customer_http_accept_errors_total").increment(1);
    if let Some(left_out) = LogEvery::admit_shared(&BUDGET) {
        tracing::warn!(error = %e, similar_errors_not_logged = left_out, "accepting an HTTP connection failed; backing off");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The body of the answer to a connection over the cap.
const REFUSAL_BODY: &str =
    r#"{"error":{"code":"unavailable","message":"too many open connections; retry later"}}"#;

/// The body of the answer to a connection over its address's cap.
const PER_CLIENT_REFUSAL_BODY: &str = r#"{"error":{"code":"too_many_requests","message":"too many open connections from this address; close some or retry later"}}"#;

/// Answers a refused connection (503 over the cap, 429 over its address's cap) and closes it,
/// without waiting for anything.
fn refuse(stream: &TcpStream, why: Refusal) {
    metrics::counter!("customer_http_connections_refused_total", "reason" => why.label())
        .increment(1);
    let (status, body) = match why {
        Refusal::OverCap => ("503 Service Unavailable", REFUSAL_BODY),
        Refusal::PerClient => ("429 Too Many Requests", PER_CLIENT_REFUSAL_BODY),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        super::error::RETRY_AFTER_SECS,
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

/// Serves one connection until the client closes it, a deadline passes, or the server stops.
async fn serve_connection(
    stream: TcpStream,
    client: ClientAddr,
    app: Router,
    limits: HttpLimits,
    _slot: Slot,
    mut finish: watch::Receiver<bool>,
) {
    let watch = Arc::new(Watch {
        state: Mutex::new(ConnState::new(Instant::now())),
        changed: Notify::new(),
    });
    let io = TokioIo::new(WatchedStream {
        inner: stream,
        watch: watch.clone(),
    });
    let service_watch = watch.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let watch = service_watch.clone();
        watch.update(|s| {
            s.request_started();
            true
        });
        req.extensions_mut().insert(client);
        let answer = app.clone().oneshot(req.map(Body::new));
        async move {
            let response = answer.await?;
            let finished = Finished(watch);
            if !is_stream(&response) {
                return Ok::<_, std::convert::Infallible>(response);
            }
            // A stream is in flight until its body ends, not when its head is sent: the idle
            // timeout must not cut a quiet event stream. A chunk the connection does not ask
            // past starts the stall clock.
            Ok(response.map(|body| {
                let mut chunks = body.into_data_stream();
                Body::from_stream(futures::stream::poll_fn(move |cx| {
                    finished.0.update(ConnState::stream_polled);
                    let next = chunks.poll_next_unpin(cx);
                    if matches!(next, Poll::Ready(Some(_))) {
                        finished.0.update(|s| s.stream_chunk(Instant::now()));
                    }
                    next
                }))
            }))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut finishing = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = ?e, "HTTP connection ended with an error");
                }
                return;
            }
            kind = watch.expiry(&limits) => {
                metrics::counter!("customer_http_timeouts_total", "kind" => kind.label()).increment(1);
                tracing::debug!(kind = kind.label(), "closing an HTTP connection that timed out");
                return;
            }
            _ = turned_true(&mut finish), if !finishing => {
                finishing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            max_connections: 4,
            max_connections_per_client: 0,
            max_event_streams: 4,
            max_event_streams_per_client: 0,
            event_stream_max_age: Duration::from_secs(3600),
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_fresh_connection_must_deliver_its_first_head_within_the_header_timeout_of_the_connect() {
        let t0 = Instant::now();
        let mut c = ConnState::new(t0);
        assert_eq!(
            c.deadline(&limits()),
            Some((t0 + 10 * S, TimeoutKind::Header))
        );
        // Dripping bytes does not move the clock: it runs from the connect.
        c.bytes_arrived(t0 + 3 * S);
        c.bytes_arrived(t0 + 9 * S);
        assert_eq!(
            c.deadline(&limits()),
            Some((t0 + 10 * S, TimeoutKind::Header))
        );
    }

    #[test]
    fn no_deadline_runs_while_a_request_is_served() {
        let t0 = Instant::now();
        let mut c = ConnState::new(t0);
        c.bytes_arrived(t0);
        c.request_started();
        assert_eq!(c.deadline(&limits()), None);
        c.bytes_arrived(t0 + 100 * S); // a pipelined head: still serving
        assert_eq!(c.deadline(&limits()), None);
    }

    #[test]
    fn between_requests_the_idle_timeout_runs_until_the_next_head_starts() {
        let t0 = Instant::now();
        let mut c = ConnState::new(t0);
        c.request_started();
        c.request_finished(t0 + S);
        assert_eq!(
            c.deadline(&limits()),
            Some((t0 + 61 * S, TimeoutKind::Idle))
        );
        assert!(
            c.bytes_arrived(t0 + 30 * S),
            "the first byte moves the deadline"
        );
        assert_eq!(
            c.deadline(&limits()),
            Some((t0 + 40 * S, TimeoutKind::Header))
        );
        assert!(!c.bytes_arrived(t0 + 35 * S), "later bytes do not");
        c.request_started();
        c.request_finished(t0 + 36 * S);
        assert_eq!(
            c.deadline(&limits()),
            Some((t0 + 96 * S, TimeoutKind::Idle))
        );
    }

    #[test]
    fn a_stream_whose_next_chunk_is_not_asked_for_is_closed_after_the_stall_timeout() {
        let t0 = Instant::now();
        let mut c = ConnState::new(t0);
        c.request_started();
        assert!(c.stream_chunk(t0 + S));
        assert!(!c.stream_chunk(t0 + 2 * S), "the first unread chunk counts");
        assert_eq!(
            c.deadline(&limits()),
            Some((t0 + S + STREAM_STALL, TimeoutKind::StreamStall))
        );
        assert!(
            c.stream_polled(),
            "asked for more: no deadline while it waits"
        );
        assert_eq!(c.deadline(&limits()), None);
        assert!(!c.stream_polled());
    }

    #[test]
    fn pipelined_requests_keep_the_connection_busy_until_the_last_answer() {
        let t0 = Instant::now();
        let mut c = ConnState::new(t0);
        c.request_started();
        c.request_started();
        c.request_finished(t0 + S);
        assert_eq!(c.deadline(&limits()), None);
        c.request_finished(t0 + 2 * S);
        assert_eq!(
            c.deadline(&limits()),
            Some((t0 + 62 * S, TimeoutKind::Idle))
        );
    }
}
