//! The cluster port: our own listener in front of ractor_cluster's NodeServer.
//!
//! ractor_cluster accepts connections itself with no cap, no deadline before authentication
//! and, with TLS, the TLS handshake awaited inside its accept loop (one silent client stalls
//! every later accept). So this node binds `--cluster-addr` here and hands the NodeServer only
//! connections that already passed the first checks, as external streams
//! (`NodeServerMessage::ConnectionOpenedExternal`):
//!
//! ```text
//!  accept ──▶ source allowed, not backing off, under its share, slot free? ──no──▶ close at
//!               │yes (one of --cluster-max-unauthenticated; see cluster::sources)   once
//!               ▼
//!  TLS handshake (if on) ──▶ first frame: the peer's name, checked against its certificate
//!               │              (a stranger within 1 s of accept, a known peer within the
//!               │               handshake deadline)
//!               ▼
//!  NodeServer session ──▶ cookie challenge (the Tap keeps checking frames and the deadline;
//!               │          a write-side tap sees whether this node acknowledged the cookie)
//!               ▼
//!  the peer's last handshake frame: the slot is freed
//!               │
//!               ▼
//!  every later frame is held back until whole and judged against the session's
//!  authenticated name (super::frames): passed on, dropped, or the session is closed
//!  our acknowledgement: the source address is known (cluster::sources); none before the
//!  session ends: a cookie failure, counted and, repeated, backed off
//! ```
//!
//! A refused connection costs no NodeServer session and no line from the transport's log:
//! refusals are counted in `customer_cluster_preauth_refused_total{reason}` and summed up in at
//! most one WARN line per 10 s ([`RefusalLog`]). A name mismatch (a CA-signed peer claiming
//! another node's name) is logged on its own, at ERROR: only holders of a cluster certificate
//! can cause one.
//!
//! Outbound dials ([`dial`]) use the same [`Tap`] to check the name the dialed peer announces
//! in its challenge against its certificate, and the same deadline.
//!
//! What this does not do: limit the number of authenticated sessions (a peer with the cookie
//! is a node); the NodeServer's own listener still exists (it cannot
//! be turned off) but is bound to loopback with a TLS acceptor that has no certificate, so no
//! session ever starts through it ([`super::tls::closed_listener`]).

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ractor::ActorRef;
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream, NodeServerMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::frames::FrameCheck;
use super::handshake::{HandshakeParser, Progress, REFUSAL_LOG_WINDOW, Refusal, RefusalLog, Side};
use super::sources::{Cidr, SourcePolicy, Sources};
use crate::error::{Error, Result};

/// Settings of the cluster port.
pub struct GateConfig {
    /// Where to listen (`--cluster-addr`).
    pub bind: SocketAddr,
    /// Most connections in their handshake at once; one more is closed at once.
    pub max_unauthenticated: usize,
    /// Most connections in their handshake from one address not yet known (0 = no cap).
    pub max_unauthenticated_per_source: usize,
    /// If not empty, the only source ranges accepted (`--cluster-allow`).
    pub allow: Vec<Cidr>,
    /// Longest a connection may take from accept to its last handshake frame.
    pub handshake_timeout: Duration,
    /// Inbound TLS, if on.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Where peers' lists of their sessions go (see [`Discovery`]).
    pub discovery: Discovery,
}

/// Whom a peer may claim to be.
#[derive(Clone)]
pub enum Identity {
    /// No TLS: any name (the cookie is the only credential).
    Any,
    /// The peer's verified TLS certificate: only a name it carries as a DNS name.
    Certificate(CertificateDer<'static>),
}

impl Identity {
    fn check(&self, name: &str) -> std::result::Result<(), Vec<String>> {
        match self {
            Identity::Any => Ok(()),
            Identity::Certificate(cert) => super::tls::check_name(cert, name),
        }
    }

    /// The identity of a TLS peer whose certificate rustls verified (`None` only without TLS
    /// client authentication, which this node never configures: then no name is accepted).
    fn of_peer(certs: Option<&[CertificateDer<'_>]>) -> Self {
        match certs.and_then(<[_]>::first) {
            Some(cert) => Identity::Certificate(cert.clone().into_owned()),
            None => Identity::Certificate(CertificateDer::from(Vec::new())),
        }
    }
}

/// What refusals share: the rate-limited log.
struct Refusals {
    log: Mutex<RefusalLog>,
}

impl Refusals {
    fn report(&self, refusal: &Refusal, peer: &str, side: Side) {
        if side == Side::Outbound && !matches!(refusal, Refusal::NameMismatch { .. }) {
            // Our own dial that stalled or met a stranger: membership re-dials and reports.
            tracing::debug!(peer, "outbound cluster handshake refused: {refusal}");
            return;
        }
        metrics::counter!("customer_cluster_preauth_refused_total", "reason" => refusal.label())
            .increment(1);
        if let Refusal::NameMismatch { .. } = refusal {
            tracing::error!(peer, "cluster session refused: {refusal}");
            return;
        }
        tracing::debug!(peer, "cluster connection refused: {refusal}");
        let line = self
            .log
            .lock()
            .map(|mut log| log.record(refusal, Instant::now()))
            .unwrap_or(None);
        if let Some(line) = line {
            tracing::warn!("{line}");
        }
    }

    /// One line per cookie failure would let a guesser write the log; one summary per window
    /// (and a WARN when an address starts backing off, at most once a second per address).
    fn cookie_failed(&self, ip: IpAddr, backoff: Option<Duration>) {
        tracing::debug!(peer = %ip, "cluster connection failed the cookie check");
        if let Some(backoff) = backoff {
            tracing::warn!(
                peer = %ip,
                "{ip} failed the cluster cookie check repeatedly; its connections are refused for {} s",
                backoff.as_secs()
            );
        }
        let line = self
            .log
            .lock()
            .map(|mut log| log.record_cookie_failure(Instant::now()))
            .unwrap_or(None);
        if let Some(line) = line {
            tracing::warn!("{line}");
        }
    }

    fn flush(&self) {
        let line = self
            .log
            .lock()
            .map(|mut log| log.flush(Instant::now()))
            .unwrap_or(None);
        if let Some(line) = line {
            tracing::warn!("{line}");
        }
    }
}

/// The per-address table, shared by the accept loop, every connection's taps and the dials.
pub(crate) type SharedSources = Arc<Mutex<Sources>>;

/// One of the slots for unauthenticated connections, taken from `ip`'s share; freed when
/// dropped.
struct Slot {
    sources: SharedSources,
    ip: IpAddr,
}

impl Slot {
    /// Takes a slot for `ip` if [`Sources::admit`] allows it.
    fn take(sources: &SharedSources, ip: IpAddr) -> std::result::Result<Self, Refusal> {
        let mut table = sources.lock().unwrap_or_else(|e| e.into_inner());
        table.admit(ip, Instant::now())?;
        metrics::gauge!("customer_cluster_preauth_connections").increment(1.0);
        Ok(Self {
            sources: sources.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("customer_cluster_preauth_connections").decrement(1.0);
        let mut table = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        table.release(self.ip);
    }
}

/// What a connection's two taps learn about its cookie handshake. Dropped with the
/// connection: a peer that sent its whole side of an inbound handshake and never got our
/// acknowledgement failed the cookie check.
struct AuthWatch {
    sources: SharedSources,
    ip: Option<IpAddr>,
    side: Side,
    /// The peer's last handshake frame went through (inbound).
    peer_done: AtomicBool,
    /// The handshake completed: we acknowledged the peer's cookie (inbound) or it ours
    /// (outbound).
    acked: AtomicBool,
    refusals: Arc<Refusals>,
}

impl AuthWatch {
    fn acknowledged(&self) {
        if self.acked.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(ip) = self.ip {
            let mut table = self.sources.lock().unwrap_or_else(|e| e.into_inner());
            table.authenticated(ip, Instant::now());
        }
    }
}

impl Drop for AuthWatch {
    fn drop(&mut self) {
        let failed = self.side == Side::Inbound
            && self.peer_done.load(Ordering::Relaxed)
            && !self.acked.load(Ordering::Relaxed);
        let (true, Some(ip)) = (failed, self.ip) else {
            return;
        };
        metrics::counter!("customer_cluster_auth_failures_total").increment(1);
        let backoff = {
            let mut table = self.sources.lock().unwrap_or_else(|e| e.into_inner());
            table.cookie_failed(ip, Instant::now())
        };
        self.refusals.cookie_failed(ip, backoff);
    }
}

/// The running cluster port.
pub struct Gate {
    /// The address it listens on (the real port when `--cluster-addr` asked for port 0).
    pub local_addr: SocketAddr,
    /// Per-address state; outbound dials record the peers they authenticated with.
    pub(crate) sources: SharedSources,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Gate {
    /// Binds `config.bind`, tells `server` to advertise that port, and hands it the
    /// connections that pass the checks.
    pub async fn start(config: GateConfig, server: ActorRef<NodeServerMessage>) -> Result<Self> {
        let listener = TcpListener::bind(config.bind).await.map_err(|e| {
            Error::InvalidInput(format!(
                "cannot listen for cluster connections on {}: {e}",
                config.bind
            ))
        })?;
        let local_addr = listener.local_addr()?;
        // Advertise this port, not the loopback one the NodeServer's own listener reported
        // when it started; sent before any connection can be handed over.
        server
            .cast(NodeServerMessage::PortChanged {
                port: local_addr.port(),
            })
            .map_err(|e| Error::Internal(format!("cluster transport stopped: {e}")))?;
        let refusals = Arc::new(Refusals {
            log: Mutex::new(RefusalLog::new(REFUSAL_LOG_WINDOW)),
        });
        let flusher = {
            let refusals = refusals.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    refusals.flush();
                }
            })
        };
        let sources = Arc::new(Mutex::new(Sources::new(SourcePolicy::new(
            config.max_unauthenticated,
            config.max_unauthenticated_per_source,
            config.allow.clone(),
        ))));
        let acceptor = tokio::spawn(accept_loop(
            listener,
            Arc::new(config),
            server,
            refusals,
            sources.clone(),
        ));
        Ok(Self {
            local_addr,
            sources,
            tasks: vec![acceptor, flusher],
        })
    }

    /// Stops listening (sessions already handed over are the NodeServer's).
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<GateConfig>,
    server: ActorRef<NodeServerMessage>,
    refusals: Arc<Refusals>,
    sources: SharedSources,
) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::debug!(error = %e, "cluster accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match Slot::take(&sources, addr.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                drop(stream);
                refusals.report(&refusal, &addr.to_string(), Side::Inbound);
                continue;
            }
        };
        let (config, server, refusals) = (config.clone(), server.clone(), refusals.clone());
        tokio::spawn(async move {
            if let Some(stream) = admit(stream, addr, slot, &config, refusals).await {
                let _ = server.cast(NodeServerMessage::ConnectionOpenedExternal {
                    stream: Box::new(stream),
                    is_server: true,
                });
            }
        });
    }
}

/// TLS (if on) and the peer's first frame, within the deadline; `None` when refused or closed.
async fn admit(
    stream: TcpStream,
    addr: SocketAddr,
    slot: Slot,
    config: &GateConfig,
    refusals: Arc<Refusals>,
) -> Option<GatedStream> {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let now = tokio::time::Instant::now();
    let deadline = now + config.handshake_timeout;
    let first_frame = now + {
        let table = slot.sources.lock().unwrap_or_else(|e| e.into_inner());
        table.first_frame_timeout(addr.ip(), Instant::now(), config.handshake_timeout)
    };
    let peer = addr.to_string();
    let watch = AuthWatch::new(&slot.sources, Some(addr.ip()), Side::Inbound, &refusals);
    let mut gated = match &config.tls {
        None => GatedStream::new(stream, Identity::Any, deadline, watch),
        Some(acceptor) => {
            let tls = match tokio::time::timeout_at(first_frame, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    refusals.report(&Refusal::Tls(e.to_string()), &peer, Side::Inbound);
                    return None;
                }
                Err(_) => {
                    refusals.report(&Refusal::Timeout, &peer, Side::Inbound);
                    return None;
                }
            };
            let identity = Identity::of_peer(tls.get_ref().1.peer_certificates());
            GatedStream::new(tls, identity, deadline, watch)
        }
    };
    gated.peer = peer;
    gated.local = local.map(|a| a.to_string());
    gated.tap.slot = Some(slot);
    gated.tap.peer = gated.peer.clone();
    gated.tap.discovery = config.discovery.clone();
    match tokio::time::timeout_at(first_frame, gated.tap.prime()).await {
        Ok(primed) => primed.ok()?,
        Err(_) => {
            gated.tap.refuse(Refusal::Timeout);
            return None;
        }
    }
    Some(gated)
}

/// Dials `addr` (TCP, then TLS with `connector` if given) and returns the stream to hand to
/// the NodeServer, with the dialed peer's announced name checked against its certificate.
pub async fn dial(
    addr: &str,
    tls: Option<(
        &tokio_rustls::TlsConnector,
        tokio_rustls::rustls::pki_types::ServerName<'static>,
    )>,
    handshake_timeout: Duration,
    sources: SharedSources,
    discovery: &Discovery,
) -> Result<impl ClusterBidiStream> {
    let deadline = tokio::time::Instant::now() + handshake_timeout;
    let late = || Error::Unavailable(format!("dial {addr}: no connection within the deadline"));
    let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| late())?
        .map_err(|e| Error::Unavailable(format!("dial {addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().map(|a| a.to_string()).ok();
    let local = tcp.local_addr().map(|a| a.to_string()).ok();
    // Outbound refusals other than a name mismatch are only logged at DEBUG (see `report`).
    let refusals = Arc::new(Refusals {
        log: Mutex::new(RefusalLog::new(REFUSAL_LOG_WINDOW)),
    });
    let ip = tcp.peer_addr().ok().map(|a| a.ip());
    let watch = AuthWatch::new(&sources, ip, Side::Outbound, &refusals);
    let mut gated = match tls {
        None => GatedStream::new(tcp, Identity::Any, deadline, watch),
        Some((connector, name)) => {
            let tls = tokio::time::timeout_at(deadline, connector.connect(name, tcp))
                .await
                .map_err(|_| late())?
                .map_err(|e| Error::Unavailable(format!("dial {addr}: TLS: {e}")))?;
            let identity = Identity::of_peer(tls.get_ref().1.peer_certificates());
            GatedStream::new(tls, identity, deadline, watch)
        }
    };
    gated.tap.peer = addr.to_owned();
    gated.tap.discovery = discovery.clone();
    gated.peer = peer.unwrap_or_else(|| addr.to_owned());
    gated.local = local;
    Ok(gated)
}

/// A connection on its way to the NodeServer: the read side goes through a [`Tap`], the write
/// side of an inbound one through a [`WriteTap`].
struct GatedStream {
    tap: Tap,
    writer: BoxWrite,
    peer: String,
    local: Option<String>,
}

impl GatedStream {
    fn new<S>(
        stream: S,
        identity: Identity,
        deadline: tokio::time::Instant,
        watch: Arc<AuthWatch>,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        let side = watch.side;
        let writer: BoxWrite = match side {
            Side::Inbound => Box::new(WriteTap {
                inner: Box::new(writer),
                // Our own frames, as a dialer of ours would receive them.
                parser: Some(HandshakeParser::new(Side::Outbound)),
                watch: watch.clone(),
            }),
            Side::Outbound => Box::new(writer),
        };
        Self {
            tap: Tap {
                inner: Box::new(reader),
                parser: HandshakeParser::new(side),
                identity,
                prefix: Vec::new(),
                prefix_pos: 0,
                deadline: Box::pin(tokio::time::sleep_until(deadline)),
                slot: None,
                refused: false,
                peer: String::new(),
                refusals: watch.refusals.clone(),
                watch,
                session: None,
                discovery: Discovery::default(),
            },
            writer,
            peer: String::new(),
            local: None,
        }
    }
}

impl ClusterBidiStream for GatedStream {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        (Box::new(self.tap), self.writer)
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.peer.clone())
    }

    fn local_label(&self) -> Option<String> {
        self.local.clone()
    }
}

/// The read side of a connection: until its handshake is over every received byte is fed to
/// a [`HandshakeParser`]; a refusal or the deadline turns into a read error, which ends the
/// session (the bytes of the refused frame never reach the transport). Holds the connection's
/// slot until the peer's last handshake frame; afterwards every frame goes through a
/// [`FrameCheck`] for the authenticated name before it is served.
struct Tap {
    inner: BoxRead,
    parser: HandshakeParser,
    identity: Identity,
    /// Bytes read (and parsed) before the hand-over, served first.
    prefix: Vec<u8>,
    prefix_pos: usize,
    deadline: Pin<Box<Sleep>>,
    slot: Option<Slot>,
    refused: bool,
    peer: String,
    refusals: Arc<Refusals>,
    watch: Arc<AuthWatch>,
    /// After authentication: the frame check and the checked bytes waiting to be served.
    session: Option<Box<Authenticated>>,
    /// Where addresses from a peer's list of its sessions go (Membership dials them).
    discovery: Discovery,
}

impl Tap {
    /// Reads until the peer has named itself; what was read is kept to be served first.
    async fn prime(&mut self) -> std::io::Result<()> {
        let mut seen = Vec::new();
        let mut chunk = [0u8; 1024];
        while self.parser.peer_name().is_none() && !self.parser.is_done() {
            let n = self.read(&mut chunk).await?;
            if n == 0 {
                tracing::debug!(peer = %self.peer, "cluster connection closed before naming itself");
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            seen.extend_from_slice(&chunk[..n]);
        }
        self.prefix = seen;
        self.prefix_pos = 0;
        Ok(())
    }

    fn refuse(&mut self, refusal: Refusal) -> std::io::Error {
        self.refused = true;
        self.slot = None;
        self.refusals
            .report(&refusal, &self.peer, self.parser.side());
        // UnexpectedEof: the transport then ends the session without a warning of its own.
        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, refusal.to_string())
    }
}

/// Where a session's peer sends the addresses of its own sessions (transitive discovery):
/// Membership registers a sink and dials them through the gate. Shared by every session of
/// one node; nothing happens until a sink is set.
#[derive(Clone, Default)]
pub struct Discovery(Arc<Mutex<Option<DiscoverySink>>>);

type DiscoverySink = Arc<dyn Fn(Vec<String>) + Send + Sync>;

impl Discovery {
    /// Sends discovered addresses to `sink` from now on.
    pub fn set(&self, sink: impl Fn(Vec<String>) + Send + Sync + 'static) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(Arc::new(sink));
        }
    }

    fn report(&self, addrs: Vec<String>) {
        if addrs.is_empty() {
            return;
        }
        tracing::debug!(?addrs, "a peer listed the addresses of its sessions");
        let sink = self.0.lock().ok().and_then(|s| s.clone());
        if let Some(sink) = sink {
            sink(addrs);
        }
    }
}

/// A session's read side after authentication: every frame is held back until it is whole
/// and [`FrameCheck`] passed it.
struct Authenticated {
    check: FrameCheck,
    /// Checked bytes not yet served.
    ready: Vec<u8>,
    ready_pos: usize,
    /// Where reads from the connection land before they are checked.
    scratch: Box<[u8]>,
}

/// Bytes read from the connection at a time after authentication.
const AUTHENTICATED_READ: usize = 16 * 1024;

impl Tap {
    /// The handshake is over: from now on frames are checked; `rest` arrived behind it.
    fn authenticated(&mut self, rest: &[u8]) -> Poll<std::io::Result<()>> {
        let node = self.parser.peer_name().unwrap_or_default().to_owned();
        self.session = Some(Box::new(Authenticated {
            check: FrameCheck::new(&node),
            ready: Vec::new(),
            ready_pos: 0,
            scratch: vec![0u8; AUTHENTICATED_READ].into_boxed_slice(),
        }));
        match self.judge(rest) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Feeds received bytes to the frame check; a violation closes the session.
    fn judge(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        if session.ready_pos == session.ready.len() {
            session.ready.clear();
            session.ready_pos = 0;
        }
        let verdict = session.check.feed(bytes, &mut session.ready);
        self.discovery.report(session.check.take_discovered());
        let Err(violation) = verdict else {
            return Ok(());
        };
        self.refused = true;
        metrics::counter!("customer_cluster_session_refused_total", "reason" => violation.label())
            .increment(1);
        tracing::error!(
            peer = %self.peer,
            node = ?session.check.node(),
            reason = violation.label(),
            "cluster session closed: {violation}"
        );
        Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            violation.to_string(),
        ))
    }

    fn poll_authenticated(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            let Some(session) = self.session.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            if session.ready_pos < session.ready.len() {
                let n = (session.ready.len() - session.ready_pos).min(out.remaining());
                out.put_slice(&session.ready[session.ready_pos..session.ready_pos + n]);
                session.ready_pos += n;
                return Poll::Ready(Ok(()));
            }
            if self.refused {
                return Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let mut scratch = std::mem::take(&mut session.scratch);
            let mut buf = ReadBuf::new(&mut scratch);
            let polled = Pin::new(&mut self.inner).poll_read(cx, &mut buf);
            let n = buf.filled().len();
            let result = match polled {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if n == 0 => Poll::Ready(Ok(())), // end of stream
                Poll::Ready(Ok(())) => match self.judge(&scratch[..n]) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(e) => Poll::Ready(Err(e)),
                },
            };
            if let Some(session) = self.session.as_mut() {
                session.scratch = scratch;
            }
            match result {
                // Checked bytes may or may not be ready yet: serve them, or read on.
                Poll::Ready(Ok(())) if n > 0 => continue,
                other => return other,
            }
        }
    }
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.prefix_pos < this.prefix.len() {
            let n = (this.prefix.len() - this.prefix_pos).min(out.remaining());
            out.put_slice(&this.prefix[this.prefix_pos..this.prefix_pos + n]);
            this.prefix_pos += n;
            return Poll::Ready(Ok(()));
        }
        if this.session.is_some() {
            return this.poll_authenticated(cx, out);
        }
        if this.refused {
            return Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if this.deadline.is_elapsed() {
            return Poll::Ready(Err(this.refuse(Refusal::Timeout)));
        }
        let before = out.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, out) {
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(this.refuse(Refusal::Timeout))),
                Poll::Pending => Poll::Pending,
            },
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let fresh = &out.filled()[before..];
                if fresh.is_empty() {
                    return Poll::Ready(Ok(())); // end of stream
                }
                let identity = &this.identity;
                match this.parser.feed(fresh, &|name| identity.check(name)) {
                    Err(refusal) => Poll::Ready(Err(this.refuse(refusal))),
                    Ok(Progress::Done) => {
                        this.slot = None;
                        match this.parser.side() {
                            Side::Inbound => this.watch.peer_done.store(true, Ordering::Relaxed),
                            // The peer acknowledged our cookie.
                            Side::Outbound => this.watch.acknowledged(),
                        }
                        // What came behind the last handshake frame is authenticated traffic:
                        // it is judged like everything after it, so it is taken back.
                        let rest = this.parser.take_rest();
                        let len = out.filled().len();
                        out.set_filled(len - rest.len());
                        this.authenticated(&rest)
                    }
                    Ok(Progress::Pending | Progress::Named(_)) => Poll::Ready(Ok(())),
                }
            }
        }
    }
}

impl AuthWatch {
    fn new(
        sources: &SharedSources,
        ip: Option<IpAddr>,
        side: Side,
        refusals: &Arc<Refusals>,
    ) -> Arc<Self> {
        Arc::new(Self {
            sources: sources.clone(),
            ip,
            side,
            peer_done: AtomicBool::new(false),
            acked: AtomicBool::new(false),
            refusals: refusals.clone(),
        })
    }
}

/// The write side of an inbound connection until this node has acknowledged the peer's
/// cookie (the handshake's last server frame); afterwards it only passes bytes through.
struct WriteTap {
    inner: BoxWrite,
    /// Follows our own handshake frames; `None` once the acknowledgement went out (or our
    /// frames stopped parsing, which only a transport change could cause).
    parser: Option<HandshakeParser>,
    watch: Arc<AuthWatch>,
}

impl WriteTap {
    fn observe(&mut self, written: &[u8]) {
        let Some(parser) = self.parser.as_mut() else {
            return;
        };
        match parser.feed(written, &|_| Ok(())) {
            Ok(Progress::Done) => {
                self.parser = None;
                self.watch.acknowledged();
            }
            Ok(_) => {}
            Err(refusal) => {
                tracing::debug!("our own handshake frames did not parse: {refusal}");
                self.parser = None;
            }
        }
    }
}

impl AsyncWrite for WriteTap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            this.observe(&buf[..*n]);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format the parser reads is the one ractor_cluster writes: a NodeServer dialing
    /// a plain listener sends a first frame that parses as its name.
    #[tokio::test]
    async fn a_ractor_cluster_dialer_names_itself_in_a_frame_the_parser_reads() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = ractor_cluster::NodeServer::new(
            0,
            "cookie-cookie-cookie".into(),
            "probe#42".into(),
            "127.0.0.1".into(),
            Some(super::super::tls::closed_listener().unwrap()),
            None,
        )
        .with_listen_addr("127.0.0.1".parse().unwrap());
        let (server, handle) = ractor::Actor::spawn(None, server, ()).await.unwrap();
        ractor_cluster::client_connect(&server, addr).await.unwrap();
        let (mut socket, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .unwrap()
            .unwrap();
        let mut parser = HandshakeParser::new(Side::Inbound);
        let mut buf = [0u8; 512];
        let named = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before naming itself");
                if let Progress::Named(name) = parser.feed(&buf[..n], &|_| Ok(())).unwrap() {
                    return name;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(named, "probe");
        server.stop(None);
        let _ = handle.await;
    }
}
