//! The transport: ractor_cluster's NodeServer (cookie-authenticated TCP, optionally TLS) and
//! the events it reports about sessions.
//!
//! Facts that shape this module (all verified with separate processes on loopback):
//! * The NodeServer advertises `hostname:port`, so `hostname` is our advertise address.
//! * `client_connect` returns once TCP connects, before authentication: a wrong cookie is not
//!   an error there. A peer counts as connected only after the session-ready event.
//! * Nothing reconnects by itself and transitive discovery happens once per connection, so
//!   Membership keeps the full mesh by re-dialing ([`Mesh::dial`]).
//! * Each process start gets its own NodeServer name, `<name>#<incarnation>`: two processes with
//!   one name (a restart while the old one hangs) are then two distinct peers to ractor_cluster,
//!   and the stable `--name` stays the placement identity.
//! * One inbound frame over the limit tears down the whole session, so every node uses the
//!   same limit ([`crate::codec::MAX_FRAME_BYTES`]).
//! * The cluster port is ours ([`super::gate`]): it caps and times out unauthenticated
//!   connections and hands the rest to the NodeServer as external streams. The NodeServer's
//!   own listener is bound to an ephemeral loopback port behind a certificate-less TLS
//!   acceptor (no session can start there), and told the real port so it advertises that.
//! * Dials go through the same checks ([`super::gate::dial`]), then
//!   `client_connect_external`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorRef};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage};

use super::gate::{Discovery, Gate, GateConfig};

use crate::codec::MAX_FRAME_BYTES;
use crate::error::{Error, Result};

/// What happened to a session, as Membership needs to know it.
#[derive(Debug, Clone)]
pub struct SessionEvent {
    /// Which transition.
    pub kind: SessionEventKind,
    /// The NodeSession actor (stopping it closes the connection).
    pub session: ActorCell,
    /// The peer's NodeServer name (`<name>#<incarnation>@<host>`), once known.
    pub peer_server_name: Option<String>,
    /// The peer's advertised `host:port`, once known.
    pub peer_addr: Option<String>,
    /// Socket address of the other end.
    pub socket_addr: String,
}

/// Session transitions reported by the NodeServer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEventKind {
    /// TCP (and TLS) established; not yet authenticated.
    Opened,
    /// Cookie handshake done and state exchanged: the peer is connected.
    Ready,
    /// The session ended.
    Disconnected,
}

impl SessionEvent {
    fn from_info(kind: SessionEventKind, ses: NodeServerSessionInformation) -> Self {
        Self {
            kind,
            session: ses.actor.get_cell(),
            peer_server_name: ses.peer_name.as_ref().map(|p| p.name.clone()),
            peer_addr: ses.peer_name.as_ref().map(|p| p.connection_string.clone()),
            socket_addr: ses.peer_addr,
        }
    }

    /// The peer's stable node name, derived from its NodeServer name.
    pub fn peer_node(&self) -> Option<&str> {
        self.peer_server_name.as_deref().map(node_of_server_name)
    }
}

/// The stable node name inside a NodeServer name `<name>#<incarnation>@<host>`.
pub fn node_of_server_name(server_name: &str) -> &str {
    let before_host = server_name.split('@').next().unwrap_or(server_name);
    before_host.split('#').next().unwrap_or(before_host)
}

/// Forwards NodeServer events to a callback (Membership casts them to itself).
pub struct EventForwarder<F: Fn(SessionEvent) + Send + 'static>(pub F);

impl<F: Fn(SessionEvent) + Send + 'static> NodeEventSubscription for EventForwarder<F> {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        (self.0)(SessionEvent::from_info(SessionEventKind::Opened, ses));
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        (self.0)(SessionEvent::from_info(SessionEventKind::Disconnected, ses));
    }

    fn node_session_authenticated(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        (self.0)(SessionEvent::from_info(SessionEventKind::Ready, ses));
    }
}

/// How this node dials peers.
#[derive(Clone)]
pub enum Transport {
    /// Plain TCP with cookie authentication.
    Plain,
    /// TLS (mutual, see `cluster::tls`), then cookie authentication.
    Tls {
        /// Client-side TLS configuration.
        connector: tokio_rustls::TlsConnector,
    },
}

/// Settings of the mesh.
pub struct MeshConfig {
    /// Stable node name.
    pub name: String,
    /// Process start id, making the NodeServer name unique per start.
    pub incarnation: u64,
    /// Listener bind address.
    pub bind: SocketAddr,
    /// Advertised host (what peers dial).
    pub advertise_host: String,
    /// Shared cookie.
    pub cookie: String,
    /// Inbound TLS, if any.
    pub incoming: Option<tokio_rustls::TlsAcceptor>,
    /// Outbound transport.
    pub transport: Transport,
    /// Most connections in their handshake at once (`--cluster-max-unauthenticated`).
    pub max_unauthenticated: usize,
    /// Longest handshake, inbound and outbound (`--cluster-handshake-timeout-ms`).
    pub handshake_timeout: Duration,
    /// Most connections in their handshake from one address not yet known
    /// (`--cluster-max-unauthenticated-per-source`; 0 = no cap).
    pub max_unauthenticated_per_source: usize,
    /// The only source ranges accepted, if not empty (`--cluster-allow`).
    pub allow: Vec<super::sources::Cidr>,
}

/// A running NodeServer and the way to dial peers.
#[derive(Clone)]
pub struct Mesh {
    /// The NodeServer actor.
    pub server: ActorRef<NodeServerMessage>,
    /// Outbound transport.
    pub transport: Transport,
    /// Deadline of an outbound handshake.
    handshake_timeout: Duration,
    /// The cluster port.
    gate: Arc<Gate>,
    /// Where peers' lists of their sessions go.
    discovery: Discovery,
}

impl Mesh {
    /// Starts the NodeServer and the cluster port on `config.bind` in front of it.
    pub async fn start(config: MeshConfig) -> Result<Self> {
        // With TLS, ractor_cluster's transitive auto-connects would be plain TCP and fail;
        // Membership dials every member explicitly anyway.
        let mode = match config.transport {
            Transport::Plain => NodeConnectionMode::Transitive,
            Transport::Tls { .. } => NodeConnectionMode::Isolated,
        };
        // IPv4 loopback whatever --cluster-addr is: it exists wherever the node can run.
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let server = NodeServer::new(
            0,
            config.cookie,
            format!("{}#{}", config.name, config.incarnation),
            config.advertise_host,
            Some(super::tls::closed_listener()?),
            Some(mode),
        )
        .with_listen_addr(loopback)
        .with_max_inbound_frame_size(MAX_FRAME_BYTES);
        let (server, _) = Actor::spawn(None, server, ())
            .await
            .map_err(|e| Error::Internal(format!("cannot start the cluster transport: {e}")))?;
        let discovery = Discovery::default();
        let gate = GateConfig {
            bind: config.bind,
            max_unauthenticated: config.max_unauthenticated,
            max_unauthenticated_per_source: config.max_unauthenticated_per_source,
            allow: config.allow,
            handshake_timeout: config.handshake_timeout,
            tls: config.incoming,
            discovery: discovery.clone(),
        };
        let gate = match Gate::start(gate, server.clone()).await {
            Ok(gate) => gate,
            Err(e) => {
                server.stop(None);
                return Err(e);
            }
        };
        Ok(Self {
            server,
            transport: config.transport,
            handshake_timeout: config.handshake_timeout,
            gate: Arc::new(gate),
            discovery,
        })
    }

    /// Sends the addresses peers report of their own sessions (transitive discovery, which
    /// ractor_cluster is not left to dial itself: see [`super::frames`]) to `sink`.
    pub fn on_discovered(&self, sink: impl Fn(Vec<String>) + Send + Sync + 'static) {
        self.discovery.set(sink);
    }

    /// The address the cluster port listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.gate.local_addr
    }

    /// Subscribes `callback` to session events (replacing an earlier subscription of `id`).
    pub fn subscribe<F: Fn(SessionEvent) + Send + 'static>(&self, id: &str, callback: F) {
        let _ = self.server.cast(NodeServerMessage::SubscribeToEvents {
            id: id.to_owned(),
            subscription: Box::new(EventForwarder(callback)),
        });
    }

    /// Sessions authenticated now, as `Ready` events: what a restarted Membership starts from,
    /// since it missed their events. Empty if the NodeServer does not answer in time.
    pub async fn ready_sessions(&self) -> Vec<SessionEvent> {
        match ractor::call_t!(self.server, NodeServerMessage::GetSessions, 2_000) {
            Ok(sessions) => sessions
                .into_values()
                .map(|s| SessionEvent::from_info(SessionEventKind::Ready, s))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Opens a connection to a peer's cluster address. Success means TCP (and TLS) connected;
    /// authentication continues in the background and shows up as a session event.
    pub async fn dial(&self, addr: &str) -> Result<()> {
        let tls = match &self.transport {
            Transport::Plain => None,
            Transport::Tls { connector } => {
                let host = crate::config::split_host_port(addr)
                    .map(|(h, _)| h.to_owned())
                    .unwrap_or_default();
                let name =
                    tokio_rustls::rustls::pki_types::ServerName::try_from(host).map_err(|e| {
                        Error::InvalidInput(format!("bad TLS server name in {addr}: {e}"))
                    })?;
                Some((connector, name))
            }
        };
        let stream = super::gate::dial(
            addr,
            tls,
            self.handshake_timeout,
            self.gate.sources.clone(),
            &self.discovery,
        )
        .await?;
        ractor_cluster::client_connect_external(&self.server, Box::new(stream))
            .await
            .map_err(|e| Error::Unavailable(format!("dial {addr}: {e}")))
    }

    /// Stops the cluster port and the NodeServer (closing every session).
    pub fn stop(&self) {
        self.gate.stop();
        self.server.stop(Some("node stopping".into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stable_name_is_recovered_from_a_node_server_name() {
        assert_eq!(node_of_server_name("n1#1764000000000@127.0.0.1"), "n1");
        assert_eq!(node_of_server_name("n1@host"), "n1");
        assert_eq!(node_of_server_name("n1"), "n1");
    }
}
