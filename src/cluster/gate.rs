//! The cluster port: our own listener in front of ractor_cluster's NodeServer.
//!
//! ractor_cluster accepts connections itself with no cap, no deadline before authentication
//! and, with TLS, the TLS handshake awaited inside its accept loop (one silent client stalls
//! every later accept). So this node binds `--cluster-addr` here and hands the NodeServer only
//! connections that already passed the first checks, as external streams
//! (`NodeServerMessage::ConnectionOpenedExternal`):
//!
//! ```text
//!  accept ──▶ slot free? ──no──▶ close at once (over_cap)
//!               │yes (one of --cluster-max-unauthenticated)
//!               ▼
//!  TLS handshake (if on) ──▶ first frame: the peer's name, checked against its certificate
//!               │              (all within --cluster-handshake-timeout-ms)
//!               ▼
//!  NodeServer session ──▶ cookie challenge (the Tap keeps checking frames and the deadline)
//!               │
//!               ▼
//!  the peer's last handshake frame: the slot is freed
//!               │
//!               ▼
//!  every later frame is held back until whole and judged against the session's
//!  authenticated name (super::frames): passed on, dropped, or the session is closed
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
//! What this does not do: limit connections per source address, or the number of
//! authenticated sessions; the NodeServer's own listener still exists (it cannot
//! be turned off) but is bound to loopback with a TLS acceptor that has no certificate, so no
//! session ever starts through it ([`super::tls::closed_listener`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ractor::ActorRef;
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream, NodeServerMessage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::frames::FrameCheck;
use super::handshake::{HandshakeParser, Progress, REFUSAL_LOG_WINDOW, Refusal, RefusalLog, Side};
use crate::error::{Error, Result};

/// Settings of the cluster port.
pub struct GateConfig {
    /// Where to listen (`--cluster-addr`).
    pub bind: SocketAddr,
    /// Most connections in their handshake at once; one more is closed at once.
    pub max_unauthenticated: usize,
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

/// One of the slots for unauthenticated connections; freed when dropped.
struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl Slot {
    fn new(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!("customer_cluster_preauth_connections").increment(1.0);
        Self(permit)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!("customer_cluster_preauth_connections").decrement(1.0);
    }
}

/// The running cluster port.
pub struct Gate {
    /// The address it listens on (the real port when `--cluster-addr` asked for port 0).
    pub local_addr: SocketAddr,
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
        let acceptor = tokio::spawn(accept_loop(listener, Arc::new(config), server, refusals));
        Ok(Self {
            local_addr,
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
) {
    let slots = Arc::new(Semaphore::new(config.max_unauthenticated));
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
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            refusals.report(&Refusal::OverCap, &addr.to_string(), Side::Inbound);
            continue;
        };
        let slot = Slot::new(permit);
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
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let peer = addr.to_string();
    let mut gated = match &config.tls {
        None => GatedStream::new(stream, Identity::Any, Side::Inbound, deadline, &refusals),
        Some(acceptor) => {
            let tls = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
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
            GatedStream::new(tls, identity, Side::Inbound, deadline, &refusals)
        }
    };
    gated.peer = peer;
    gated.local = local.map(|a| a.to_string());
    gated.tap.slot = Some(slot);
    gated.tap.peer = gated.peer.clone();
    gated.tap.discovery = config.discovery.clone();
    gated.tap.prime().await.ok()?;
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
    let mut gated = match tls {
        None => GatedStream::new(tcp, Identity::Any, Side::Outbound, deadline, &refusals),
        Some((connector, name)) => {
            let tls = tokio::time::timeout_at(deadline, connector.connect(name, tcp))
                .await
                .map_err(|_| late())?
                .map_err(|e| Error::Unavailable(format!("dial {addr}: TLS: {e}")))?;
            let identity = Identity::of_peer(tls.get_ref().1.peer_certificates());
            GatedStream::new(tls, identity, Side::Outbound, deadline, &refusals)
        }
    };
    gated.tap.peer = addr.to_owned();
    gated.tap.discovery = discovery.clone();
    gated.peer = peer.unwrap_or_else(|| addr.to_owned());
    gated.local = local;
    Ok(gated)
}

/// A connection on its way to the NodeServer: the read side goes through a [`Tap`].
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
        side: Side,
        deadline: tokio::time::Instant,
        refusals: &Arc<Refusals>,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
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
                refusals: refusals.clone(),
                session: None,
                discovery: Discovery::default(),
            },
            writer: Box::new(writer),
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
