//! The Database actor (server side) and [`DatabaseClient`] (how anyone reaches it).
//!
//! The actor is a thin shim over [`crate::storage::engine::Engine`]: each message becomes a
//! storage job whose completion sends on the caller's reply port, so the actor never waits for
//! SQLite and its mailbox keeps draining while the writer thread group-commits. It joins the
//! process group `customer-db.v5`, which is how nodes without `--db-path` find it.
//!
//! The client prefers a Database actor in this process (registered by name), else the remote
//! group member whose node name sorts first.
//!
//! * **SQLite** (`--db-path`): there must be exactly one. SQLite files are not replicated, so
//!   two database nodes would each take writes the other never sees. Which node it is, and
//!   what a second one does, is decided by Membership ([`crate::cluster::dbnode`]): until
//!   this node is the serving database node, its actor stays out of the process group (no
//!   peer can reach it) and refuses every request with `Unavailable` (503) saying why; a node
//!   that loses to another database node refuses everything and exits.
//! * **PostgreSQL** (`--database-url`): every node runs a Database actor over the one shared
//!   server, so many members of the group are expected and that rule is lifted. Each node's
//!   customer actors use the local one; a remote one is used only while the local one is
//!   down (restarting).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;

use crate::cluster::dbnode::DbRoleCell;
use crate::cluster::membership::View;
use crate::cluster::protocol::{
    self, DATABASE_GROUP, DatabaseMsg, ListRequest, OwnRowRequest, TakeoverRequest, call,
    database_name, node_of,
};
use crate::codec::{Wire, answer};
use crate::customer::{Customer, CustomerId};
use crate::error::{Error, Result};
use crate::storage::engine::{Done, Engine, EngineConfig, LeaseJob, ReadJob};
use crate::storage::{
    Grant, Holder, Registration, Release, Renewal, RequestStamp, Settlement, ShardId, ShardLease,
    Takeover, Write, WriteOp, WriteOutcome,
};

/// How long a caller waits for a database actor to reappear before `Unavailable` (503).
pub const DB_REAPPEAR_WAIT: Duration = Duration::from_millis(500);

/// The Database actor.
pub struct Database;

/// Start arguments of [`Database`].
pub struct DatabaseArgs {
    /// Name of the hosting node (replied to pings).
    pub node: String,
    /// Storage engine settings.
    pub engine: EngineConfig,
    /// This node's SQLite database role: requests are refused unless it serves.
    pub role: DbRoleCell,
}

/// State of [`Database`].
pub struct DatabaseState {
    node: String,
    /// `None` only during shutdown.
    engine: Option<Engine>,
    /// Whether the backend is shared by every node (PostgreSQL): then there is no role gate.
    shared: bool,
    /// This node's SQLite database role: requests are refused unless it serves.
    role: DbRoleCell,
}

impl DatabaseState {
    /// Serves the liveness and customer messages; hands any other (lease) message back.
    fn customer_job(&self, engine: &Engine, message: DatabaseMsg) -> Option<DatabaseMsg> {
        match message {
            DatabaseMsg::Ping(request, reply) => {
                if let Some(((), reply)) = self.admit(request, reply) {
                    self.ping(engine, reply);
                }
            }
            DatabaseMsg::GetCustomer(request, reply) => {
                if let Some((id, reply)) = self.admit(request, reply) {
                    engine.read(ReadJob::Get(id, done(reply)));
                }
            }
            DatabaseMsg::ListCustomers(request, reply) => {
                if let Some((l, reply)) = self.admit(request, reply) {
                    engine.read(list_job(l, done(reply)));
                }
            }
            DatabaseMsg::Submit(request, reply) => {
                if let Some((w, reply)) = self.admit(request, reply) {
                    match refusal_of(&w) {
                        Some((reason, refusal)) => {
                            metrics::counter!("customer_db_writes_refused_total", "reason" => reason)
                                .increment(1);
                            tracing::debug!(reason, error = %refusal, "a write was refused before storage");
                            answer(reply, Err(refusal));
                        }
                        None => engine.submit(w, done(reply)),
                    }
                }
            }
            DatabaseMsg::LeaseTable(request, reply) => {
                if let Some(((), reply)) = self.admit(request, reply) {
                    engine.read(ReadJob::LeaseTable(done(reply)));
                }
            }
            other => return Some(other),
        }
        None
    }

    /// Opens a request for handling: `None` once the caller has been answered instead —
    /// with the refusal while this node is not the serving database node, or with the
    /// decoding error of a garbled argument.
    fn admit<T, R>(
        &self,
        request: Wire<T>,
        reply: RpcReplyPort<Wire<R>>,
    ) -> Option<(T, RpcReplyPort<Wire<R>>)> {
        match self.refusal() {
            Some(err) => {
                answer(reply, Err(err));
                None
            }
            None => request.open(reply),
        }
    }

    /// Answers a ping with this node's name. Over a shared server (PostgreSQL) the actor is
    /// always reachable, so the answer waits for one round trip to the server: a ping that
    /// succeeds while the server is down would let a node rejoin the registry only to leave
    /// again one lease TTL later, and `/ready` would blame the leases instead of the database.
    fn ping(&self, engine: &Engine, reply: RpcReplyPort<Wire<String>>) {
        if !self.shared {
            answer(reply, Ok(self.node.clone()));
            return;
        }
        let node = self.node.clone();
        engine.read(ReadJob::Ping(Box::new(move |r| {
            answer(reply, r.map(|()| node));
        })));
    }

    /// The error every request gets while this SQLite node is not the serving database node
    /// (a candidate that has not met the cluster, or a refused one).
    fn refusal(&self) -> Option<Error> {
        if self.shared {
            return None;
        }
        self.role.gate().err()
    }
}

impl Actor for Database {
    type Msg = DatabaseMsg;
    type State = DatabaseState;
    type Arguments = DatabaseArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: DatabaseArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let config = args.engine.clone();
        let engine = tokio::task::spawn_blocking(move || Engine::open(&config)).await??;
        let shared = args.engine.backend.is_shared();
        // A candidate joins the group only once Membership confirms it (and does the join).
        if shared || args.role.gate().is_ok() {
            ractor::pg::join(DATABASE_GROUP.to_owned(), vec![myself.get_cell()]);
        } else {
            tracing::info!(
                "this node hosts an SQLite database and was started with --seeds: it serves nothing until it has met the cluster and learnt that no other node is the database node"
            );
        }
        tracing::info!(store = %args.engine.backend.describe(), max_batch = args.engine.max_batch, "database actor started");
        Ok(DatabaseState {
            node: args.node,
            engine: Some(engine),
            shared,
            role: args.role,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        ractor::pg::leave(DATABASE_GROUP.to_owned(), vec![myself.get_cell()]);
        if let Some(engine) = state.engine.take() {
            // Finish every queued write before the process may exit.
            tokio::task::spawn_blocking(move || engine.shutdown()).await?;
        }
        tracing::info!("database actor stopped; queued writes flushed");
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some(engine) = state.engine.as_ref() else {
            return Ok(());
        };
        if engine.writer_stopped() {
            // The message is dropped unanswered (its caller sees it dropped: not applied, it
            // never reached storage); the supervisor starts this actor again over a fresh
            // engine after its backoff.
            return Err(
                "the storage writer thread stopped after a panic; restarting the database actor"
                    .into(),
            );
        }
        if let Some(lease_message) = state.customer_job(engine, message) {
            state.lease_job(engine, lease_message);
        }
        Ok(())
    }
}

impl DatabaseState {
    /// Turns a lease or request-id message into its storage job (served before write
    /// batches). Messages of other kinds are handled by the caller and ignored here.
    fn lease_job(&self, engine: &Engine, message: DatabaseMsg) {
        let job = match message {
            DatabaseMsg::Settle(w, r) => self.admit(w, r).map(|(stamp, r)| LeaseJob::Settle {
                stamp,
                done: done(r),
            }),
            DatabaseMsg::Register(w, r) => {
                self.admit(w, r)
                    .map(|((node, incarnation), r)| LeaseJob::Register {
                        node,
                        incarnation,
                        done: done(r),
                    })
            }
            DatabaseMsg::Renew(w, r) => {
                self.admit(w, r)
                    .map(|((me, k, ttl_ms), r)| LeaseJob::Renew {
                        me,
                        k,
                        ttl_ms,
                        done: done(r),
                    })
            }
            DatabaseMsg::Takeover(w, r) => self.admit(w, r).map(|(t, r)| takeover_job(t, done(r))),
            DatabaseMsg::TakeoverOwnRow(w, r) => {
                self.admit(w, r).map(|(o, r)| own_row_job(o, done(r)))
            }
            DatabaseMsg::Grant(w, r) => {
                self.admit(w, r)
                    .map(|((contender, shards), r)| LeaseJob::Grant {
                        contender,
                        shards,
                        done: done(r),
                    })
            }
            DatabaseMsg::Release(w, r) => {
                self.admit(w, r)
                    .map(|((node, shard, token), r)| LeaseJob::Release {
                        node,
                        shard,
                        token,
                        done: done(r),
                    })
            }
            DatabaseMsg::ClearIncarnation(w, r) => {
                self.admit(w, r)
                    .map(|((node, incarnation), r)| LeaseJob::ClearIncarnation {
                        node,
                        incarnation,
                        done: done(r),
                    })
            }
            _ => None,
        };
        if let Some(job) = job {
            engine.lease(job);
        }
    }
}

fn takeover_job(t: TakeoverRequest, done: Done<Takeover>) -> LeaseJob {
    LeaseJob::Takeover {
        contender: t.contender,
        victim: t.victim,
        shards: t.shards,
        done,
    }
}

fn own_row_job(o: OwnRowRequest, done: Done<Takeover>) -> LeaseJob {
    LeaseJob::TakeoverOwnRow {
        incarnation: o.incarnation,
        observed: o.observed,
        shards: o.shards,
        done,
    }
}

/// Why a submitted write is refused before it reaches storage, as a metric label and the
/// error sent back: no lease token or request id ([`unfenced`]), or customer fields that break
/// the API's rules ([`invalid_fields`]).
pub fn refusal_of(write: &Write) -> Option<(&'static str, Error)> {
    unfenced(write)
        .map(|e| ("unfenced", e))
        .or_else(|| invalid_fields(write).map(|e| ("invalid_fields", e)))
}

/// The refusal of a write whose customer fields break the rules the HTTP edge enforces
/// ([`crate::customer::validate`]): control characters, bidirectional controls, a malformed
/// email or phone, lengths. The edge already refused such input from clients; this check is
/// for writes that never passed the edge — a peer that holds the cluster cookie can send a
/// `Submit` straight to this actor, and storing what it sends would hand terminal escapes and
/// spoofed text to every reader.
pub fn invalid_fields(write: &Write) -> Option<Error> {
    let fields = match &write.op {
        WriteOp::Insert(customer) => &customer.fields,
        WriteOp::Update { fields, .. } => fields,
        WriteOp::Delete { .. } => return None,
    };
    crate::customer::revalidate(fields)
        .err()
        .map(|e| Error::InvalidInput(format!("the database refuses the write: {e}")))
}

/// The refusal of a write that carries no fencing token or no request id: customers are
/// written only through lease holders (L1), each write at most once (F1). Such a write can only
/// come from a peer that holds the cookie but not a lease, or from an older binary.
pub fn unfenced(write: &Write) -> Option<Error> {
    (write.fence.is_none() || write.request.is_none()).then(|| {
        Error::InvalidInput(
            "a write without a shard lease token and a request id is refused: customers are written only through their shard's lease holder".into(),
        )
    })
}

fn list_job(l: ListRequest, done: Done<Vec<Customer>>) -> ReadJob {
    ReadJob::List {
        after: l.after,
        limit: l.limit,
        done,
    }
}

fn done<T: Send + 'static>(reply: RpcReplyPort<Wire<T>>) -> Done<T> {
    Box::new(move |r| answer(reply, r))
}

/// Reaches the Database actor from anywhere in this node, with a deadline on every call.
#[derive(Clone)]
pub struct DatabaseClient {
    local_name: String,
    timeout: Duration,
    /// The remote Database actor last resolved; reused while it runs, so a call does not
    /// scan the process group (measurable on nodes without a database: every load and write).
    remote: Arc<std::sync::Mutex<Option<ActorCell>>>,
    /// Which remote Database actors may be used: the SQLite database node this node follows
    /// (while two briefly coexist, until the loser exits, every node that sees both uses the
    /// same one), or any over a shared server; never one of a node not greeted yet.
    role: DbRoleCell,
    /// The published membership view, when known: a call into a database node that leaves it
    /// (evicted while frozen or cut off, its session still open) ends at once instead of
    /// waiting out the whole deadline.
    view: Option<watch::Receiver<Arc<View>>>,
}

impl DatabaseClient {
    /// A client for node `node` with per-call deadline `timeout`; `role` names the database
    /// node to prefer when several are reachable.
    pub fn new(node: &str, timeout: Duration, role: DbRoleCell) -> Self {
        Self {
            local_name: database_name(node),
            timeout,
            remote: Arc::new(std::sync::Mutex::new(None)),
            role,
            view: None,
        }
    }

    /// The same client, ending calls early when their database node leaves `view`.
    pub fn watching(mut self, view: watch::Receiver<Arc<View>>) -> Self {
        self.view = Some(view);
        self
    }

    /// Runs `call` against `db`, cut short when `db` is remote and its node leaves the
    /// membership view meanwhile (see [`unless_member_leaves`]).
    async fn unless_host_leaves<T>(
        &self,
        db: &ActorRef<DatabaseMsg>,
        call: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let host = (!db.get_id().is_local())
            .then(|| db.get_name())
            .flatten()
            .and_then(|n| node_of(&n).map(str::to_owned));
        match (host, self.view.clone()) {
            (Some(host), Some(view)) => unless_member_leaves(view, &host, call).await,
            _ => call.await,
        }
    }

    /// The Database actor to use now, or `Unavailable` when none is reachable.
    pub fn resolve(&self) -> Result<ActorRef<DatabaseMsg>> {
        if let Some(cell) = ractor::registry::where_is(self.local_name.clone()) {
            return Ok(cell.into());
        }
        let mut cached = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cell) = cached.as_ref().filter(|c| {
            c.get_status() < ractor::ActorStatus::Stopping
                && c.get_name()
                    .as_deref()
                    .and_then(node_of)
                    .is_some_and(|n| self.role.may_use(n))
        }) {
            return Ok(cell.clone().into());
        }
        let usable = remote_members()
            .into_iter()
            .filter(|(node, _)| self.role.may_use(node))
            .collect();
        let first = pick(usable, self.role.chosen().map(|d| d.name).as_deref());
        cached.clone_from(&first);
        first
            .map(ActorRef::from)
            .ok_or_else(|| Error::Unavailable("no database node is reachable".into()))
    }

    /// Names of the nodes hosting a reachable Database actor (this one included).
    pub fn members(&self, local_node: &str) -> Vec<String> {
        let mut names: Vec<String> = remote_members().into_iter().map(|(n, _)| n).collect();
        if ractor::registry::where_is(self.local_name.clone()).is_some() {
            names.push(local_node.to_owned());
        }
        names.sort();
        names
    }

    /// The database actor, waiting up to [`DB_REAPPEAR_WAIT`] for one to (re)appear — a
    /// reconnecting session re-announces it within milliseconds — before answering
    /// `Unavailable`.
    async fn resolve_soon(&self) -> Result<ActorRef<DatabaseMsg>> {
        let deadline = Instant::now() + DB_REAPPEAR_WAIT.min(self.timeout);
        loop {
            match self.resolve() {
                Ok(db) => return Ok(db),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        build: impl FnOnce(RpcReplyPort<Wire<T>>) -> DatabaseMsg,
    ) -> Result<T> {
        let db = self.resolve_soon().await?;
        let started = Instant::now();
        let result = self
            .unless_host_leaves(&db, call(&db, self.timeout, build))
            .await;
        metrics::histogram!("customer_db_call_seconds", "op" => op)
            .record(started.elapsed().as_secs_f64());
        self.reply_lost(started).await.map_or(result, Err)
    }

    /// The `drop-db-replies` fault hook: when it acts, the reply that came (or not) is thrown
    /// away and the caller waits out its timeout, as if the network had lost the reply.
    async fn reply_lost(&self, started: Instant) -> Option<Error> {
        if !crate::faults::hooks::db_replies_dropped() {
            return None;
        }
        tokio::time::sleep_until((started + self.timeout).into()).await;
        Some(Error::Timeout(format!(
            "no database reply within {} ms (dropped by a fault hook)",
            self.timeout.as_millis()
        )))
    }

    /// Liveness of the database; returns the hosting node's name.
    pub async fn ping(&self) -> Result<String> {
        self.call("ping", |r| DatabaseMsg::Ping(Wire::ok(()), r))
            .await
    }

    /// Reads one customer.
    pub async fn get(&self, id: CustomerId) -> Result<Option<Customer>> {
        self.call("get", |r| DatabaseMsg::GetCustomer(Wire::ok(id), r))
            .await
    }

    /// One page ordered by id.
    pub async fn list(&self, req: ListRequest) -> Result<Vec<Customer>> {
        self.call("list", |r| DatabaseMsg::ListCustomers(Wire::ok(req), r))
            .await
    }

    /// A fenced, request-stamped write; its full outcome (F1). Only `Err(Timeout)` means the
    /// outcome is unknown (no reply in time, or the connection was lost after sending); any
    /// other error is an answer that nothing was applied (no database reachable, the database
    /// refused the request, or its batch failed before commit).
    pub async fn submit(&self, write: Write) -> Result<WriteOutcome> {
        let db = self.resolve_soon().await?;
        let started = Instant::now();
        let sent = async {
            match db
                .call(
                    |r| DatabaseMsg::Submit(Wire::ok(write), r),
                    Some(self.timeout),
                )
                .await
            {
                Ok(CallResult::Success(reply)) => reply.0,
                Ok(CallResult::Timeout) => Err(Error::Timeout(format!(
                    "the database did not answer a write within {} ms",
                    self.timeout.as_millis()
                ))),
                Ok(CallResult::SenderError) => Err(Error::Timeout(
                    "the connection to the database was lost before the write's outcome arrived"
                        .into(),
                )),
                Err(e) => Err(e.into()),
            }
        };
        let outcome = self.unless_host_leaves(&db, sent).await;
        metrics::histogram!("customer_db_call_seconds", "op" => "submit")
            .record(started.elapsed().as_secs_f64());
        if let Some(lost) = self.reply_lost(started).await {
            return Err(lost);
        }
        outcome
    }

    /// F3: settles a request whose outcome is unknown.
    pub async fn settle(&self, stamp: RequestStamp) -> Result<Settlement> {
        self.call("settle", |r| DatabaseMsg::Settle(Wire::ok(stamp), r))
            .await
    }

    /// L1: registers this process.
    pub async fn register(&self, node: &str, incarnation: u64) -> Result<Registration> {
        let args = (node.to_owned(), incarnation);
        self.call("register", |r| DatabaseMsg::Register(Wire::ok(args), r))
            .await
    }

    /// L2: renew number `k`, recording the TTL (ms) this node runs with (L4).
    pub async fn renew(&self, me: Holder, k: u64, ttl_ms: u64) -> Result<Renewal> {
        let args = (me, k, ttl_ms);
        self.call("renew", |r| DatabaseMsg::Renew(Wire::ok(args), r))
            .await
    }

    /// L5: takes a dead node over.
    pub async fn takeover(&self, req: TakeoverRequest) -> Result<Takeover> {
        self.call("takeover", |r| DatabaseMsg::Takeover(Wire::ok(req), r))
            .await
    }

    /// L5: takes this name's old row over.
    pub async fn takeover_own_row(&self, req: OwnRowRequest) -> Result<Takeover> {
        self.call("takeover_own_row", |r| {
            DatabaseMsg::TakeoverOwnRow(Wire::ok(req), r)
        })
        .await
    }

    /// L5: grants free or stale shards.
    pub async fn grant(&self, me: Holder, shards: Vec<ShardId>) -> Result<Grant> {
        self.call("grant", |r| DatabaseMsg::Grant(Wire::ok((me, shards)), r))
            .await
    }

    /// L6: releases a shard this node holds at `token`.
    pub async fn release(&self, shard: ShardId, token: u64) -> Result<Release> {
        let node = node_of(&self.local_name).unwrap_or_default().to_owned();
        self.call("release", |r| {
            DatabaseMsg::Release(Wire::ok((node, shard, token)), r)
        })
        .await
    }

    /// L6: clears this incarnation from its row (graceful stop).
    pub async fn clear_incarnation(&self, node: &str, incarnation: u64) -> Result<bool> {
        let args = (node.to_owned(), incarnation);
        self.call("clear_incarnation", |r| {
            DatabaseMsg::ClearIncarnation(Wire::ok(args), r)
        })
        .await
    }

    /// Every shard lease row.
    pub async fn lease_table(&self) -> Result<Vec<ShardLease>> {
        self.call("lease_table", |r| DatabaseMsg::LeaseTable(Wire::ok(()), r))
            .await
    }
}

/// Remote Database group members with their node names, sorted by name.
/// Runs `call`, cut short with [`Error::Timeout`] — the outcome is unknown, exactly as if
/// the deadline had passed, so a write is settled through its request id — when `host` leaves
/// `view` meanwhile. A host that is not a member when the call starts is not watched: the
/// call's own deadline bounds it.
async fn unless_member_leaves<T>(
    view: watch::Receiver<Arc<View>>,
    host: &str,
    call: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    if !view.borrow().ring.names().contains(&host) {
        return call.await;
    }
    tokio::select! {
        r = call => r,
        () = left_view(view, host) => {
            metrics::counter!("customer_db_calls_aborted_total").increment(1);
            Err(Error::Timeout(format!(
                "database node {host} left the cluster during the call; the outcome is unknown"
            )))
        }
    }
}

/// Completes once `member` is no longer in the published view (never, if the view's sender
/// is gone: the deadline then bounds the call).
async fn left_view(mut view: watch::Receiver<Arc<View>>, member: &str) {
    loop {
        if !view.borrow_and_update().ring.names().contains(&member) {
            return;
        }
        if view.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

fn remote_members() -> Vec<(String, ActorCell)> {
    let mut members: Vec<(String, ActorCell)> = ractor::pg::get_members(&DATABASE_GROUP.to_owned())
        .into_iter()
        .filter(|cell| !cell.get_id().is_local())
        .filter_map(|cell| {
            let node = cell
                .get_name()
                .as_deref()
                .and_then(node_of)
                .map(str::to_owned)?;
            Some((node, cell))
        })
        .collect();
    members.sort_by(|a, b| a.0.cmp(&b.0));
    members
}

/// The member of node `chosen` if present, else the first (members are sorted by name).
fn pick<T>(members: Vec<(String, T)>, chosen: Option<&str>) -> Option<T> {
    let at = chosen
        .and_then(|c| members.iter().position(|(n, _)| n == c))
        .unwrap_or(0);
    members.into_iter().nth(at).map(|(_, t)| t)
}

/// Spawns a Database actor registered under this node's database name.
pub async fn spawn(args: DatabaseArgs, supervisor: ActorCell) -> Result<ActorRef<DatabaseMsg>> {
    let name = protocol::database_name(&args.node);
    let (actor, _) = Actor::spawn_linked(Some(name), Database, args, supervisor)
        .await
        .map_err(|e| Error::Internal(format!("database actor failed to start: {e}")))?;
    Ok(actor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::placement::{Member, Ring};

    fn view_of(names: &[&str]) -> Arc<View> {
        let members = names
            .iter()
            .map(|n| Member {
                name: (*n).to_owned(),
                cluster_addr: format!("{n}:1"),
                http_addr: format!("{n}:2"),
                hosts_db: *n == "db",
            })
            .collect();
        Arc::new(View::single(
            Ring::single(Member {
                name: "me".into(),
                cluster_addr: "me:1".into(),
                http_addr: "me:2".into(),
                hosts_db: false,
            })
            .next(members),
        ))
    }

    #[tokio::test]
    async fn a_call_into_a_database_node_ends_as_unknown_when_the_node_leaves_the_view() {
        let (tx, rx) = watch::channel(view_of(&["me", "db"]));
        let call = tokio::spawn(async move {
            unless_member_leaves(rx, "db", std::future::pending::<Result<()>>()).await
        });
        tokio::task::yield_now().await;
        assert!(!call.is_finished(), "ended while db was still a member");
        tx.send_replace(view_of(&["me"]));
        let ended = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("the call did not end when db left")
            .unwrap();
        // Unknown, never "not applied": a write in flight is settled through its request id.
        assert!(
            matches!(ended, Err(Error::Timeout(ref m)) if m.contains("db left")),
            "{ended:?}"
        );
    }

    #[tokio::test]
    async fn a_call_into_a_non_member_is_bounded_by_its_own_deadline_only() {
        let (_tx, rx) = watch::channel(view_of(&["me"]));
        let answered = unless_member_leaves(rx, "db", async { Ok(7) }).await;
        assert_eq!(answered.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_write_without_a_lease_token_or_a_request_id_is_refused_and_changes_nothing() {
        use crate::customer::{Customer, CustomerFields, new_customer_id};
        use crate::storage::{Fence, WriteOp};
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::local("unfenced-test", Some(dir.path().join("c.db")));
        let node = crate::node::start_actors(&config, None, 1).await.unwrap();
        let fields = CustomerFields {
            name: "Behind".into(),
            email: "behind@example.com".into(),
            phone: None,
            address: None,
        };
        let c = Customer::new(new_customer_id(), fields, 1);
        let stamp = crate::storage::requests::RequestStamp {
            id: "k".into(),
            body_hash: 1,
            attempt: 1,
            at: 0,
        };
        let fence = Fence {
            shard: crate::cluster::placement::shard_of_customer(&c.id),
            token: 0,
        };
        for (fence, request) in [(None, None), (Some(fence), None), (None, Some(stamp))] {
            let write = Write {
                op: WriteOp::Insert(c.clone()),
                fence,
                request,
            };
            let refused = node.ctx.db.submit(write).await;
            assert!(
                matches!(&refused, Err(Error::InvalidInput(m)) if m.contains("lease token")),
                "{refused:?}"
            );
        }
        assert_eq!(node.ctx.db.get(c.id).await.unwrap(), None);
        node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_write_with_fields_the_api_would_refuse_is_refused_by_the_database_actor_and_stores_nothing()
     {
        use crate::customer::{Customer, CustomerFields, new_customer_id};
        use crate::storage::Fence;
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config::local("invalid-test", Some(dir.path().join("c.db")));
        let node = crate::node::start_actors(&config, None, 1).await.unwrap();
        let valid = CustomerFields {
            name: "Alice".into(),
            email: "alice@example.com".into(),
            phone: None,
            address: None,
        };
        // What a peer holding the cookie sent in the review of this path: terminal escapes, a
        // right-to-left override, an address that is not one, a phone that clears the screen.
        let mallory = CustomerFields {
            email: "mallory@example.com".into(),
            ..valid.clone()
        };
        let hostile = [
            CustomerFields {
                name: "\u{1b}]0;pwned\u{7}\u{1b}[31mAlice\u{202E}".into(),
                ..mallory.clone()
            },
            CustomerFields {
                email: "not-an-email".into(),
                ..mallory.clone()
            },
            CustomerFields {
                phone: Some("\u{1b}[2J".into()),
                ..mallory.clone()
            },
        ];
        // Each write carries its shard's current fencing token, read from the lease table as
        // a peer holding the cookie can: without the check, the writes would be stored.
        let fence_for = async |op: &WriteOp| {
            let shard = crate::cluster::placement::shard_of_customer(&op.customer_id());
            let table = node.ctx.db.lease_table().await.unwrap();
            let row = table.iter().find(|l| l.shard == shard).expect("shard row");
            Some(Fence {
                shard,
                token: row.token,
            })
        };
        // Sends `op` straight to the actor, as a peer would (no HTTP edge, no gateway), with
        // the current token, again while the node's own lease keeper moves it under the write:
        // the first answer that is not `Fenced`.
        let submit = async |op: WriteOp, id: String| {
            for attempt in 1..=50 {
                let write = Write {
                    op: op.clone(),
                    fence: fence_for(&op).await,
                    request: Some(crate::storage::requests::RequestStamp {
                        id: format!("{id}-{attempt}"),
                        body_hash: 1,
                        attempt: 1,
                        at: 0,
                    }),
                };
                match node.ctx.db.submit(write).await {
                    Ok(WriteOutcome::Fenced { .. }) => continue,
                    other => return other,
                }
            }
            panic!("{id}: fenced 50 times");
        };
        // The same write with valid fields is stored: the fence is right.
        let control = Customer::new(new_customer_id(), valid.clone(), 1);
        let stored = submit(WriteOp::Insert(control.clone()), "control".into()).await;
        let stored = stored.unwrap().into_result().unwrap();
        assert_eq!(stored.map(|c| c.id), Some(control.id));
        for fields in hostile {
            let c = Customer::new(new_customer_id(), fields.clone(), 1);
            let update = WriteOp::Update {
                id: control.id,
                fields: fields.clone(),
                expected_version: 1,
                now: 2,
            };
            for (i, op) in [WriteOp::Insert(c.clone()), update].into_iter().enumerate() {
                let refused = submit(op, format!("{}-{i}", c.id)).await;
                assert!(
                    matches!(&refused, Err(Error::InvalidInput(m)) if m.starts_with("the database refuses the write")),
                    "{fields:?}: {refused:?}"
                );
            }
            assert_eq!(node.ctx.db.get(c.id).await.unwrap(), None);
        }
        assert_eq!(
            node.ctx.db.get(control.id).await.unwrap(),
            Some(control.clone()),
            "the valid customer is unchanged"
        );
        let listed = node
            .ctx
            .db
            .list(ListRequest {
                after: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(
            listed.iter().map(|c| c.id).collect::<Vec<_>>(),
            [control.id],
            "only the valid customer is stored"
        );
        node.supervisor.stop(None);
    }

    #[test]
    fn the_followed_database_node_is_preferred_over_the_first_by_name() {
        let members = vec![("a".to_owned(), 1), ("b".to_owned(), 2)];
        assert_eq!(pick(members.clone(), Some("b")), Some(2));
        assert_eq!(pick(members.clone(), Some("zz")), Some(1), "unknown: first");
        assert_eq!(pick(members, None), Some(1));
        assert_eq!(pick(Vec::<(String, u8)>::new(), None), None);
    }
}
