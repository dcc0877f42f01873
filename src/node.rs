//! Start-up and shutdown order of one node.
//!
//! Start: bind the HTTP listener (fail fast on a taken port) → check that the advertised
//! address leads back here (one warning line if not) → NodeServer on the cluster
//! address → shared context with a single-member placement view → NodeSupervisor (Database,
//! Heartbeat, Registry, Membership; Membership then dials the seeds) → serve HTTP.
//!
//! A node hosting SQLite that the cluster refuses (another node is its database node, see
//! [`crate::cluster::dbnode`]) stops the same way and exits non-zero with a message naming
//! that node.
//!
//! Graceful stop (SIGINT/SIGTERM): leave the registry group first, so peers re-place our
//! customers and stop routing to us → release every shard lease (RELEASING, writes in flight
//! finish, release at the token, clear our lease row) so peers are granted them at once → stop
//! accepting HTTP and let in-flight requests finish (bounded by `shutdown_grace`) → stop
//! Membership, the Registry and its customer actors, the Heartbeat → stop the Database, which
//! commits every queued write → stop the NodeServer → exit 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorRef};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::actors::database::DatabaseClient;
use crate::actors::gateway::Gateway;
use crate::actors::lease_keeper::{LeaseKeeperMsg, NodeLeases, random_incarnation};
use crate::actors::supervisor::{NodeSupervisor, SupervisorArgs, SupervisorMsg};
use crate::actors::{Counters, NodeContext};
use crate::api::{AppState, router};
use crate::cluster::dbnode::DbRoleCell;
use crate::cluster::membership::{Lease, MembershipArgs, View};
use crate::cluster::mesh::{Mesh, MeshConfig, Transport};
use crate::cluster::placement::{Member, Ring};
use crate::cluster::protocol::{NodeInfo, PROTOCOL_VERSION};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::EventBus;

/// A running node.
pub struct RunningNode {
    /// Shared context (placement view, database client, counters).
    pub ctx: Arc<NodeContext>,
    /// The bound HTTP address (useful with port 0).
    pub http_addr: SocketAddr,
    /// Root of the actor tree: asked to leave the cluster first and to stop its children last.
    supervisor: ActorRef<SupervisorMsg>,
    /// Completes when the supervisor stops, whether asked to or because a child kept failing;
    /// [`run`] exits non-zero in the second case instead of serving without an actor tree.
    supervisor_done: JoinHandle<()>,
    /// Tells the HTTP server to stop accepting connections and drain in-flight requests.
    http_stop: watch::Sender<bool>,
    /// The HTTP server task: awaited (within `shutdown_grace`) so in-flight requests finish
    /// before the Registry and Database stop under them.
    http: JoinHandle<std::io::Result<()>>,
    /// The NodeServer, stopped only after the actor tree, so peers hear our graceful leave.
    mesh: Mesh,
    /// The configuration the node started with (for `shutdown_grace`).
    config: Config,
}

/// The actors of a node without its HTTP listener (what in-process router tests need).
pub struct NodeActors {
    /// Shared context.
    pub ctx: Arc<NodeContext>,
    /// Root of the actor tree.
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Completes when the supervisor stops.
    pub supervisor_done: JoinHandle<()>,
}

/// Starts the actor tree of a node. Without a `mesh` the node stays alone (in-process tests).
pub async fn start_actors(
    config: &Config,
    mesh: Option<Mesh>,
    incarnation: u64,
) -> Result<NodeActors> {
    let local = Member {
        name: config.name.clone(),
        cluster_addr: config.advertise_addr.clone(),
        http_addr: config.http_addr.to_string(),
        hosts_db: config.hosts_database(),
    };
    let (view_tx, view_rx) = watch::channel(Arc::new(View::single(Ring::single(local))));
    let engine = config.database();
    let hosts_sqlite = engine.as_ref().is_some_and(|e| !e.backend.is_shared());
    let db_role = DbRoleCell::new(DbRoleCell::initial_role(
        hosts_sqlite,
        !config.seeds.is_empty(),
    ));
    let lease = Lease::new(config.failure_timeout, Instant::now());
    let events = EventBus::new(&config.name);
    let ctx = Arc::new(NodeContext {
        name: config.name.clone(),
        request_timeout: config.request_timeout,
        idle_timeout: config.idle_timeout,
        max_active_customers: config.max_active_customers,
        view: view_rx.clone(),
        lease: lease.clone(),
        leases: Arc::new(NodeLeases::new(
            &config.name,
            config.lease,
            random_incarnation(),
        )),
        lease_config: config.lease,
        read_mode: config.read_mode,
        unsettled: Default::default(),
        db: DatabaseClient::new(&config.name, config.request_timeout, db_role.clone())
            .watching(view_rx.clone()),
        db_role: db_role.clone(),
        counters: Counters::default(),
        events: events.clone(),
        #[cfg(test)]
        faults: Default::default(),
    });
    let info = NodeInfo {
        name: config.name.clone(),
        protocol_version: PROTOCOL_VERSION,
        cluster_addr: config.advertise_addr.clone(),
        http_addr: config.http_addr.to_string(),
        hosts_db: config.hosts_database(),
        incarnation,
        sqlite: db_role.role(),
        database: None,
    };
    let membership = MembershipArgs {
        info: info.clone(),
        seeds: config.seeds.clone(),
        heartbeat: config.heartbeat,
        failure_timeout: config.failure_timeout,
        request_timeout: config.request_timeout,
        view_tx: Arc::new(view_tx),
        lease,
        mesh,
        events,
        db_role,
    };
    let args = SupervisorArgs {
        ctx: ctx.clone(),
        info,
        engine,
        membership,
    };
    let (supervisor, supervisor_done) = Actor::spawn(
        Some(format!("supervisor/{}", config.name)),
        NodeSupervisor,
        args,
    )
    .await
    .map_err(|e| Error::Internal(format!("node failed to start: {e}")))?;
    Ok(NodeActors {
        ctx,
        supervisor,
        supervisor_done,
    })
}

/// Starts a node: actors and HTTP listener.
pub async fn start(config: Config) -> Result<RunningNode> {
    let listener = TcpListener::bind(config.http_addr).await.map_err(|e| {
        Error::InvalidInput(format!(
            "cannot listen for HTTP on {}: {e}",
            config.http_addr
        ))
    })?;
    let http_addr = listener.local_addr()?;
    let metrics = crate::telemetry::install_metrics(&config.name);
    let incarnation = crate::clock::incarnation();
    // Before the NodeServer binds the cluster port: the probe listens there for a moment.
    let advertise = crate::cluster::advertise::probe(
        config.cluster_addr,
        &config.advertise_addr,
        &config.seeds,
    );
    if let Some(warning) = advertise.await {
        tracing::warn!("{warning}");
    }
    let (incoming, transport) = match &config.tls {
        Some(paths) => {
            let (incoming, transport) = crate::cluster::tls::load(paths, &config.name)?;
            (Some(incoming), transport)
        }
        None => (None, Transport::Plain),
    };
    let mesh = Mesh::start(MeshConfig {
        name: config.name.clone(),
        incarnation,
        bind: config.cluster_addr,
        advertise_host: config.advertise_host(),
        cookie: config.cookie.expose().to_owned(),
        incoming,
        transport,
        max_unauthenticated: config.cluster_max_unauthenticated,
        handshake_timeout: config.cluster_handshake_timeout,
        max_unauthenticated_per_source: config.cluster_max_unauthenticated_per_source,
        allow: config.cluster_allow.clone(),
    })
    .await?;
    let actors = match start_actors(&config, Some(mesh.clone()), incarnation).await {
        Ok(a) => a,
        Err(e) => {
            mesh.stop();
            return Err(e);
        }
    };
    let state = AppState::new(
        Gateway::new(actors.ctx.clone()),
        config.api_tokens.clone(),
        config.max_body_bytes,
    )
    .with_metrics(metrics)
    .with_http_limits(&config.http);
    let (http_stop, stop_rx) = watch::channel(false);
    let app = router(state);
    let http = tokio::spawn(crate::api::server::serve(
        listener,
        app,
        crate::api::limits::fit_open_files(config.http),
        stop_rx,
    ));
    Ok(RunningNode {
        ctx: actors.ctx,
        http_addr,
        supervisor: actors.supervisor,
        supervisor_done: actors.supervisor_done,
        http_stop,
        http,
        mesh,
        config,
    })
}

impl RunningNode {
    /// Graceful stop, in the order documented at the top of this module.
    pub async fn shutdown(self) -> Result<()> {
        tracing::info!("leaving the cluster");
        let _ = ractor::call!(self.supervisor, SupervisorMsg::LeaveCluster);
        release_leases(&self.config.name).await;
        self.ctx.events.close();
        let _ = self.http_stop.send(true);
        let grace = self.config.shutdown_grace;
        match tokio::time::timeout(grace, self.http).await {
            Ok(_) => tracing::info!("in-flight requests finished"),
            Err(_) => tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "in-flight requests did not finish within the grace period"
            ),
        }
        let _ = ractor::call!(self.supervisor, SupervisorMsg::StopChildren);
        self.supervisor.stop(None);
        let _ = self.supervisor_done.await;
        self.mesh.stop();
        tracing::info!("node stopped");
        Ok(())
    }
}

/// Graceful stop of the leases (L6): the LeaseKeeper puts every shard in RELEASING, waits
/// briefly for writes in flight, releases each at its token and clears this incarnation, so
/// peers are granted our shards on their next tick instead of after a TTL.
async fn release_leases(node: &str) {
    let Some(cell) = ractor::registry::where_is(format!("lease-keeper/{node}")) else {
        return;
    };
    let keeper: ActorRef<LeaseKeeperMsg> = cell.into();
    let timeout = std::time::Duration::from_secs(5);
    if ractor::call_t!(keeper, LeaseKeeperMsg::Shutdown, timeout.as_millis() as u64).is_err() {
        tracing::warn!("shard leases were not all released; peers take them over after a TTL");
    }
}

/// Runs a node until SIGINT/SIGTERM, then stops it gracefully. Returns an error (non-zero
/// exit) when start-up fails or the actor tree gives up.
pub async fn run(config: Config) -> Result<()> {
    if config.api_tokens.is_empty() {
        tracing::warn!(
            "no --api-token configured: the /v1 API is open to anyone who can reach {}",
            config.http_addr
        );
    }
    let mut node = start(config.clone()).await?;
    tracing::info!(
        http = %node.http_addr,
        cluster = %config.advertise_addr,
        tls = config.tls.is_some(),
        database = %config.database().map_or("remote (via process group)".to_owned(), |e| e.backend.describe()),
        "node {} is up", config.name
    );
    let mut refused = node.ctx.db_role.refused_rx();
    let outcome = tokio::select! {
        signal = shutdown_signal() => { tracing::info!(signal, "stop requested"); Ok(()) }
        _ = &mut node.supervisor_done => Err(Error::Internal("the node's actor tree stopped unexpectedly".into())),
        why = refused.wait_for(Option::is_some) => {
            let why = why.ok().and_then(|w| w.clone()).unwrap_or_default();
            Err(Error::Conflict(why))
        }
    };
    match &outcome {
        Ok(()) => node.shutdown().await?,
        // A refused database node leaves in order too (it serves nothing meanwhile), so its
        // peers see a graceful leave rather than a vanished session.
        Err(Error::Conflict(_)) => {
            let _ = node.shutdown().await;
        }
        Err(_) => {}
    }
    outcome
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
