//! The entry-node side of every request: fix its request id, find the shard's owner, call its
//! Registry, follow `NotHolder` redirects.
//!
//! Not an actor: it runs on the HTTP request's task, so requests proceed in parallel and only
//! meet at the owner's customer actor. Routing is `owner_of_shard(shard_of(id), members)` over
//! the current placement view → the local Registry (registered name) or the owner's Registry
//! (a remote pg member) → one call with a deadline. The deadline is an `Instant` on this node's
//! monotonic clock, one request timeout after the request arrived; each attempt's message
//! carries what is left of it as a duration ([`Deadline`]), never an instant another host
//! would read on its own clock (DESIGN §4).
//!
//! Request ids (DESIGN §6 F4): every request carries a [`RequestMeta`] fixed here once — the
//! client's `Idempotency-Key` or a UUID v7 made here, a hash of the canonical request (method,
//! customer id, body), and a random attempt number — and every internal retry reuses it, so a
//! retry can never apply a write twice: the database answers a repeated id with the stored
//! result.
//!
//! Retry rule ([`retry_plan`]), all within the request's one deadline (never extended):
//! * `NotHolder { holder: Some(h) }` ⇒ retry at `h` (the owner knows who holds the lease);
//! * `NotHolder { holder: None }` ⇒ wait briefly for the view or the lease to change, retry at
//!   the placement owner (leases are being acquired: startup, a takeover in progress);
//! * `Unavailable` ⇒ wait for the placement view to change, retry once at the recomputed
//!   owner, as before leases;
//! * anything else — including `Timeout`, an unknown outcome — is final here: an unknown
//!   outcome is never retried internally with a new attempt (the owner settled it, F3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{ActorRef, RpcReplyPort};

use super::NodeContext;
use crate::cluster::heartbeat;
use crate::cluster::membership::View;
use crate::cluster::protocol::{
    CreateRequest, CustomerCommand, CustomerPage, Deadline, HeartbeatMsg, ListRequest, RegistryMsg,
    RegistryStats, RequestMeta, RouteReply, RouteRequest, ShardReport, call, registry_name,
};
use crate::codec::Wire;
use crate::customer::{Customer, CustomerFields, CustomerId, CustomerPatch};
use crate::error::{Error, Result};
use crate::storage::{Settlement, StoredResult};

/// Longest wait for a new placement view before retrying after `Unavailable`.
const RETRY_VIEW_WAIT: Duration = Duration::from_millis(1500);

/// Wait before retrying a `NotHolder` that names no holder, per attempt so far.
const NOT_HOLDER_BACKOFF: Duration = Duration::from_millis(25);

/// Most calls one request makes (first try included): bounds redirects between nodes that
/// disagree about who holds a shard.
pub const MAX_ATTEMPTS: u32 = 12;

/// Longest `Idempotency-Key` accepted, in characters.
pub const MAX_KEY_LEN: usize = 200;

/// A reply plus the node whose actor produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<T> {
    /// The reply.
    pub value: T,
    /// Owner node that served it.
    pub owner: String,
    /// True when the owner answered with the result stored for this request id the first
    /// time (an idempotent replay: nothing applied now).
    pub replayed: bool,
}

/// What the entry node does after a failed call (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retry {
    /// Final: answer the client with the error.
    No,
    /// Retry at this node, the shard's holder.
    At(String),
    /// Wait up to this long for the view to change, then retry at the placement owner.
    AfterViewChange(Duration),
}

/// Decides whether and where to retry after `err` on attempt number `attempt` (1-based).
/// Pure.
pub fn retry_plan(err: &Error, attempt: u32) -> Retry {
    if attempt >= MAX_ATTEMPTS {
        return Retry::No;
    }
    match err {
        Error::NotHolder {
            holder: Some(h), ..
        } => Retry::At(h.clone()),
        Error::NotHolder { holder: None, .. } => {
            Retry::AfterViewChange(NOT_HOLDER_BACKOFF * attempt.min(8))
        }
        Error::Unavailable(_) if attempt == 1 => Retry::AfterViewChange(RETRY_VIEW_WAIT),
        _ => Retry::No,
    }
}

/// Calls another node's Registry; under the `delay-routed-writes` fault hook
/// ([`crate::faults::hooks`]) a write is held before it leaves, while its deadline runs: the
/// message is built first, so its deadline budget does not shrink during the hold (time in
/// transit, which no receiver can see).
async fn call_remote<T: Send + std::fmt::Debug + 'static>(
    registry: &ActorRef<RegistryMsg>,
    timeout: Duration,
    op: &'static str,
    build: impl FnOnce(RpcReplyPort<Wire<T>>) -> RegistryMsg,
) -> Result<T> {
    let is_write = matches!(op, "create" | "replace" | "patch" | "delete");
    match crate::faults::hooks::routed_write_delay().filter(|_| is_write) {
        None => call(registry, timeout, build).await,
        Some(delay) => call_held(registry, timeout, delay, build).await,
    }
}

/// The held call of [`call_remote`]: the message leaves `delay` after the call starts; the
/// caller waits `timeout` as always. A task keeps the reply port and logs the owner's answer, so a test
/// can tell when the late write was served even though its caller gave up long before.
async fn call_held<T: Send + std::fmt::Debug + 'static>(
    registry: &ActorRef<RegistryMsg>,
    timeout: Duration,
    delay: Duration,
    build: impl FnOnce(RpcReplyPort<Wire<T>>) -> RegistryMsg,
) -> Result<T> {
    let (tx, rx) = ractor::concurrency::oneshot();
    let message = build((tx, timeout).into());
    let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
    let registry = registry.clone();
    tracing::warn!(
        delay_ms = delay.as_millis() as u64,
        "fault hook: holding a routed write"
    );
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let dropped = || {
            Err(Error::Unavailable(format!(
                "{REQUEST_DROPPED} (held write)"
            )))
        };
        let result = match registry.send_message(message) {
            Err(_) => dropped(),
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Wire(r))) => r,
                Ok(Err(_)) => dropped(),
                Err(_) => Err(Error::Timeout("no answer to a held write".into())),
            },
        };
        tracing::warn!(answer = ?result, "fault hook: the owner answered a held routed write");
        let _ = answer_tx.send(result);
    });
    match tokio::time::timeout(timeout, answer_rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(Error::Unavailable(format!(
            "{REQUEST_DROPPED} (held write)"
        ))),
        Err(_) => Err(Error::Timeout(format!(
            "no reply within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// Whether a failed call may still have delivered its request to an owner that could apply
/// it: the call timed out, or the owner left (or its session dropped) while the request was
/// on its way. A refusal (`NotHolder`, a domain error, an owner never reached) is definite.
pub fn may_have_applied(err: &Error) -> bool {
    match err {
        Error::Timeout(_) => true,
        Error::Unavailable(m) => m.contains(OWNER_LEFT) || m.contains(REQUEST_DROPPED),
        _ => false,
    }
}

/// The answer a write gives up with. When an earlier attempt may still apply, only a definite
/// answer about the request itself stands ([`is_domain_answer`]); anything else the last
/// attempt said (`NotHolder`, `Unavailable`, a `VersionConflict`, an `Internal` failure) makes
/// the outcome unknown, which the caller settles through the request id (F3): 503 once
/// settled as not applied, the stored answer when it applied, else 504 — never a bare 503
/// "not applied" or a 500, which could hide a write that lands later.
pub fn final_error(last: Error, maybe_applied: bool) -> Error {
    if !maybe_applied || matches!(last, Error::Timeout(_)) || is_domain_answer(&last) {
        return last;
    }
    Error::Timeout(format!(
        "the outcome is unknown: an earlier attempt may still apply ({last}); retry with the same Idempotency-Key"
    ))
}

/// Whether `err` is the owner's definite answer about the request itself (404, 409, 412,
/// 422), which stands even when an earlier attempt was in doubt: the same request would get
/// it again, and where an earlier attempt of it could explain the refusal (a customer it
/// deleted, a version it moved) the owner settled the request id before answering
/// (`customer::refusal_an_earlier_attempt_may_explain`). A `VersionConflict` is not one: it
/// is a stale writer fenced by the database, stored under no request id.
pub fn is_domain_answer(err: &Error) -> bool {
    matches!(
        err,
        Error::NotFound(_)
            | Error::InvalidInput(_)
            | Error::Conflict(_)
            | Error::PreconditionFailed { .. }
    )
}

/// Text of the error a call gets when its owner leaves the view mid-call.
const OWNER_LEFT: &str = "left the cluster during the call";
/// Text of the error a call gets when its request was dropped in transit.
const REQUEST_DROPPED: &str = "the request was dropped";

/// Checks a client's `Idempotency-Key`: 1 to [`MAX_KEY_LEN`] visible ASCII characters.
pub fn check_key(key: &str) -> Result<&str> {
    let visible = key.bytes().all(|b| b.is_ascii_graphic());
    if !key.is_empty() && key.len() <= MAX_KEY_LEN && visible {
        Ok(key)
    } else {
        Err(Error::InvalidInput(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
        )))
    }
}

/// The customer id a keyed create without a client-chosen id gets: derived from the key, so
/// the same create retried through any entry node names the same customer (and so reaches
/// the same owner, which answers from the stored request).
pub fn id_for_key(key: &str) -> CustomerId {
    let hash = xxhash_rust::xxh3::xxh3_128(format!("customer-id\0{key}").as_bytes());
    uuid::Builder::from_custom_bytes(hash.to_be_bytes()).into_uuid()
}

/// A stable hash of the canonical request: method, customer id and the typed body, so the
/// same key with another body is told apart (422) and the same body always hashes the same.
pub fn body_hash<B: serde::Serialize>(method: &str, id: &CustomerId, body: &B) -> u64 {
    let mut canonical = format!("{method}\0{id}\0").into_bytes();
    if let Ok(json) = serde_json::to_vec(body) {
        canonical.extend_from_slice(&json);
    }
    xxhash_rust::xxh3::xxh3_64(&canonical)
}

/// The request id of one HTTP request: the client's key or a fresh UUID v7, the body hash,
/// and a random attempt.
pub fn request_meta(key: Option<String>, body_hash: u64) -> RequestMeta {
    RequestMeta {
        id: key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        body_hash,
        attempt: random_u32(),
    }
}

/// 32 random bits (from a UUID v7's random part: no extra dependency).
fn random_u32() -> u32 {
    uuid::Uuid::now_v7().as_u128() as u32
}

/// The request path from this node into the cluster.
#[derive(Clone)]
pub struct Gateway {
    ctx: Arc<NodeContext>,
}

impl Gateway {
    /// A gateway over this node's context.
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.ctx.name
    }

    /// The shared node context.
    pub fn context(&self) -> &Arc<NodeContext> {
        &self.ctx
    }

    /// Creates a customer with `id` (fresh, derived from the key, or the client's). The flag
    /// is false when the answer is a replay: the id already existed with the same fields, or
    /// this request id was already applied.
    pub async fn create(
        &self,
        id: CustomerId,
        fields: CustomerFields,
        key: Option<String>,
    ) -> Result<(Routed<Customer>, bool)> {
        let customer = Customer::new(id, fields, crate::clock::now_micros());
        let created_at = customer.created_at;
        let request = request_meta(key, body_hash("POST", &id, &customer.fields));
        let meta = request.clone();
        let routed = self
            .route(id, "create", Some(&meta), move |reply, deadline| {
                let request = CreateRequest {
                    customer: customer.clone(),
                    request: request.clone(),
                    deadline,
                };
                RegistryMsg::CreateCustomer(Wire::ok(request), reply)
            })
            .await?;
        let routed = expect_customer(routed)?;
        let created_now = routed.value.created_at == created_at && !routed.replayed;
        Ok((routed, created_now))
    }

    /// Reads a customer.
    pub async fn get(&self, id: CustomerId) -> Result<Routed<Customer>> {
        self.command(id, CustomerCommand::Get, None).await
    }

    /// Replaces a customer's fields.
    pub async fn replace(
        &self,
        id: CustomerId,
        fields: CustomerFields,
        if_match: Option<u64>,
        key: Option<String>,
    ) -> Result<Routed<Customer>> {
        self.command(id, CustomerCommand::Replace { fields, if_match }, key)
            .await
    }

    /// Applies a merge patch.
    pub async fn patch(
        &self,
        id: CustomerId,
        patch: CustomerPatch,
        if_match: Option<u64>,
        key: Option<String>,
    ) -> Result<Routed<Customer>> {
        self.command(id, CustomerCommand::Patch { patch, if_match }, key)
            .await
    }

    /// Deletes a customer.
    pub async fn delete(
        &self,
        id: CustomerId,
        if_match: Option<u64>,
        key: Option<String>,
    ) -> Result<Routed<()>> {
        let request = self.route_request(id, CustomerCommand::Delete { if_match }, key);
        // A retry carries the same request id: if an earlier attempt deleted the customer,
        // the database answers with that stored result. A NotFound is therefore the truth, never
        // a lost reply of our own delete (answering it 204 would be a wrong answer).
        let meta = request.request.clone();
        let routed = self
            .route(id, "delete", Some(&meta), |reply, deadline| {
                RegistryMsg::Route(Wire::ok(request.with_deadline(deadline)), reply)
            })
            .await?;
        Ok(Routed {
            value: (),
            owner: routed.owner,
            replayed: routed.value.replayed,
        })
    }

    /// Lists a page of customers (served by the local Registry from the database).
    pub async fn list(&self, after: Option<CustomerId>, limit: u32) -> Result<CustomerPage> {
        self.ctx.db_role.gate()?;
        let registry = self.local_registry()?;
        let req = ListRequest { after, limit };
        call(&registry, self.ctx.request_timeout, |reply| {
            RegistryMsg::ListCustomers(Wire::ok(req), reply)
        })
        .await
    }

    /// Counters of `member`'s Registry.
    pub async fn stats_of(
        &self,
        view: &View,
        member: &str,
        timeout: Duration,
    ) -> Result<RegistryStats> {
        let registry = self.registry_of(view, member)?;
        call(&registry, timeout, |reply| {
            RegistryMsg::Stats(Wire::ok(()), reply)
        })
        .await
    }

    /// Round trip of a bare heartbeat ping to `member`'s Heartbeat actor (the one beside the
    /// Registry this node routes to): the cost of one hop, without any customer queue.
    /// A name that is not in this node's view is `NotFound` (a permanent answer, 404), unlike a
    /// member that does not answer (`Unavailable`, 503).
    pub async fn ping(&self, member: &str, seq: u64) -> Result<Duration> {
        let view = self.ctx.view();
        if member != self.ctx.name && !view.registries.contains_key(member) {
            return Err(Error::NotFound(format!(
                "node {member:?} is not a member of this node's view"
            )));
        }
        let registry = self.registry_of(&view, member)?;
        let heartbeat = heartbeat::beside(&registry.get_cell())
            .ok_or_else(|| Error::Unavailable(format!("node {member} has no heartbeat actor")))?;
        let started = Instant::now();
        let echoed = call(&heartbeat, self.ctx.request_timeout, |reply| {
            HeartbeatMsg::Ping(Wire::ok(seq), reply)
        })
        .await?;
        if echoed != seq {
            return Err(Error::Internal(format!("ping echoed {echoed}, sent {seq}")));
        }
        Ok(started.elapsed())
    }

    /// Where a customer lives: its shard, the placement owner, and the owner's (and, if
    /// another, the holder's) view of the shard's lease.
    pub async fn placement(&self, id: CustomerId) -> Result<Placement> {
        let view = self.ctx.view();
        let shard = crate::cluster::placement::shard_of_customer(&id);
        let owner = view.ring.owner(&id).map(|m| m.name.clone());
        let mut reports = Vec::new();
        if let Some(owner) = &owner {
            reports.push(self.shard_report(&view, owner, id).await);
        }
        let hint = reports
            .first()
            .and_then(|r| r.as_ref().ok()?.holder_hint.clone());
        if let Some(holder) = hint.filter(|h| Some(h) != owner.as_ref()) {
            reports.push(self.shard_report(&view, &holder, id).await);
        }
        Ok(Placement {
            id,
            shard,
            owner,
            reports: reports.into_iter().filter_map(Result::ok).collect(),
        })
    }

    async fn shard_report(&self, view: &View, member: &str, id: CustomerId) -> Result<ShardReport> {
        let registry = self.registry_of(view, member)?;
        call(&registry, self.ctx.request_timeout, |reply| {
            RegistryMsg::ShardInfo(Wire::ok(id), reply)
        })
        .await
    }

    async fn command(
        &self,
        id: CustomerId,
        command: CustomerCommand,
        key: Option<String>,
    ) -> Result<Routed<Customer>> {
        let op = command.name();
        let request = self.route_request(id, command, key);
        let meta = (op != "get").then(|| request.request.clone());
        let routed = self
            .route(id, op, meta.as_ref(), |reply, deadline| {
                RegistryMsg::Route(Wire::ok(request.with_deadline(deadline)), reply)
            })
            .await?;
        expect_customer(routed)
    }

    /// A routed command with its request id. Every attempt of one request carries this same
    /// id, so a retry can never apply the write a second time; its deadline is set per
    /// attempt when the message is built ([`Gateway::route`]), from the one request deadline.
    fn route_request(
        &self,
        id: CustomerId,
        command: CustomerCommand,
        key: Option<String>,
    ) -> RouteRequest {
        // A read applies nothing, so it needs no request id (F4 is about writes): skipping the
        // canonical hash and two UUIDs is measurable on the GET path.
        let request = if matches!(command, CustomerCommand::Get) {
            RequestMeta {
                id: String::new(),
                body_hash: 0,
                attempt: 0,
            }
        } else {
            request_meta(key, body_hash(command.name(), &id, &command))
        };
        RouteRequest {
            id,
            request,
            command,
            deadline: Deadline::default(),
        }
    }

    /// Calls the shard owner's Registry, following redirects and retrying per [`retry_plan`]
    /// within one deadline, one request timeout from now on this node's monotonic clock.
    /// `build` makes each attempt's message with the [`Deadline`] it carries: the time left of
    /// that one deadline at the moment the message is built, so a retry never extends the time
    /// in which an earlier attempt, delayed somewhere, could still start its write.
    async fn route(
        &self,
        id: CustomerId,
        op: &'static str,
        request: Option<&RequestMeta>,
        mut build: impl FnMut(RpcReplyPort<Wire<RouteReply>>, Deadline) -> RegistryMsg,
    ) -> Result<Routed<RouteReply>> {
        // A node hosting SQLite serves nothing until it is the cluster's database node.
        self.ctx.db_role.gate()?;
        let deadline = Instant::now() + self.ctx.request_timeout;
        let mut view_rx = self.ctx.view.clone();
        let mut target: Option<String> = None;
        let mut attempt = 0;
        // Whether an earlier attempt of this write may have reached an owner and may still
        // apply there. Retrying is safe (the request id applies at most once), but giving up
        // with a "not applied" answer would then be a lie: the answer is "unknown" (504).
        let mut maybe_applied = false;
        loop {
            attempt += 1;
            let view = view_rx.borrow_and_update().clone();
            let target_now = target.take();
            let err = match self
                .call_owner(&view, id, target_now.as_deref(), op, deadline, &mut build)
                .await
            {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            maybe_applied |= op != "get" && may_have_applied(&err);
            let wait = match retry_plan(&err, attempt) {
                Retry::No => {
                    let last = final_error(err, maybe_applied);
                    return match (request, &last) {
                        (Some(request), Error::Timeout(_)) => {
                            self.settle_unknown(id, request, last).await
                        }
                        _ => Err(last),
                    };
                }
                Retry::At(holder) if self.reachable(&view, &holder) => {
                    target = Some(holder);
                    None
                }
                // A holder we cannot reach (dead, or cut off): its shard is being taken over;
                // give that a moment and ask the placement owner again.
                Retry::At(_) => Some(NOT_HOLDER_BACKOFF * attempt.min(8)),
                Retry::AfterViewChange(wait) => Some(wait),
            };
            metrics::counter!("customer_routing_retries_total", "op" => op).increment(1);
            tracing::debug!(customer = %id, op, attempt, error = %err, to = ?target, "retrying");
            if let Some(wait) = wait {
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(wait.min(left), view_rx.changed()).await;
            }
        }
    }

    /// F3 at the entry node: a write giving up with an unknown outcome settles its request id
    /// before answering, so an attempt still on its way (delayed in the network, queued in a
    /// frozen owner) can never apply after the client was answered. The database decides:
    /// recorded as aborted ⇒ 503, not applied and it never will be (retry freely); already
    /// applied ⇒ its stored answer; the database cannot say ⇒ the unknown outcome (504, retry
    /// with the same `Idempotency-Key`).
    async fn settle_unknown(
        &self,
        id: CustomerId,
        request: &RequestMeta,
        unknown: Error,
    ) -> Result<Routed<RouteReply>> {
        let stamp = request.stamp(crate::clock::now_micros());
        let settled = tokio::time::timeout(self.ctx.request_timeout / 2, self.ctx.db.settle(stamp))
            .await
            .unwrap_or_else(|_| Err(Error::Timeout("the settle got no answer".into())));
        let outcome = match settled {
            Ok(Settlement::Aborted | Settlement::Stored(StoredResult::Aborted)) => "aborted",
            Ok(Settlement::Stored(_)) => "stored",
            Err(_) => "unknown",
        };
        metrics::counter!("customer_entry_settles_total", "outcome" => outcome).increment(1);
        tracing::info!(customer = %id, request = %request.id, outcome, error = %unknown, "write outcome was unknown at the entry node; settled its request id");
        match settled {
            Ok(Settlement::Aborted | Settlement::Stored(StoredResult::Aborted)) => {
                Err(Error::Unavailable(format!(
                    "the write did not complete in time ({unknown}) and is now settled as not applied: it never will be; retry"
                )))
            }
            Ok(Settlement::Stored(stored)) => stored.into_result().map(|customer| Routed {
                value: RouteReply {
                    customer,
                    replayed: false,
                },
                owner: self.ctx.name.clone(),
                replayed: false,
            }),
            Err(_) => Err(unknown),
        }
    }

    async fn call_owner<T: Send + std::fmt::Debug + 'static>(
        &self,
        view: &View,
        id: CustomerId,
        target: Option<&str>,
        op: &'static str,
        deadline: Instant,
        build: &mut impl FnMut(RpcReplyPort<Wire<T>>, Deadline) -> RegistryMsg,
    ) -> Result<Routed<T>> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            return Err(Error::Timeout(
                "the request's deadline passed before a retry".into(),
            ));
        }
        let owner = match target {
            Some(t) => t.to_owned(),
            None => view
                .ring
                .owner(&id)
                .ok_or_else(|| Error::Unavailable("no member can own customers right now".into()))?
                .name
                .clone(),
        };
        let registry = self.registry_of(view, &owner)?;
        let remote = owner != self.ctx.name;
        // The budget is read when the message is built, not before: what is left, no more.
        let build = |reply| build(reply, Deadline::left_until(deadline, Instant::now()));
        let started = Instant::now();
        let value = if remote {
            // Fail fast when membership drops the owner mid-call (e.g. evicted while frozen)
            // instead of waiting out the whole deadline; the caller then retries (the request
            // id makes that safe even if the first call is still running somewhere).
            tokio::select! {
                r = call_remote(&registry, timeout, op, build) => r,
                () = self.left_view(&owner) => Err(Error::Unavailable(format!(
                    "owner {owner} {OWNER_LEFT}"
                ))),
            }
        } else {
            call(&registry, timeout, build).await
        };
        if remote {
            let outcome = if value.is_ok() { "ok" } else { "error" };
            metrics::counter!("customer_remote_calls_total", "op" => op, "outcome" => outcome)
                .increment(1);
            metrics::histogram!("customer_remote_call_seconds", "op" => op)
                .record(started.elapsed().as_secs_f64());
        }
        Ok(Routed {
            value: value?,
            owner,
            replayed: false,
        })
    }

    /// Completes once `member` is no longer in the published view.
    async fn left_view(&self, member: &str) {
        let mut rx = self.ctx.view.clone();
        loop {
            if !rx.borrow_and_update().ring.names().contains(&member) {
                return;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    fn reachable(&self, view: &View, member: &str) -> bool {
        member == self.ctx.name || view.registries.contains_key(member)
    }

    fn local_registry(&self) -> Result<ActorRef<RegistryMsg>> {
        ractor::registry::where_is(registry_name(&self.ctx.name))
            .map(ActorRef::from)
            .ok_or_else(|| Error::Unavailable("this node's registry is not running".into()))
    }

    fn registry_of(&self, view: &View, member: &str) -> Result<ActorRef<RegistryMsg>> {
        if member == self.ctx.name {
            return self.local_registry();
        }
        view.registries
            .get(member)
            .cloned()
            .ok_or_else(|| Error::Unavailable(format!("node {member} is not reachable")))
    }
}

/// Unwraps a routed reply that must carry a customer.
fn expect_customer(routed: Routed<RouteReply>) -> Result<Routed<Customer>> {
    match routed.value.customer {
        Some(customer) => Ok(Routed {
            value: customer,
            owner: routed.owner,
            replayed: routed.value.replayed,
        }),
        None => Err(Error::Internal(
            "a non-delete command returned no customer".into(),
        )),
    }
}

/// Where one customer lives, for `GET /v1/customers/{id}/placement` and `where`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The customer.
    pub id: CustomerId,
    /// Its shard.
    pub shard: u16,
    /// The member placement gives the shard to, as this node sees the members.
    pub owner: Option<String>,
    /// The lease as the owner (and the holder it names, if another node) sees it.
    pub reports: Vec<ShardReport>,
}

/// Largest page a list may ask for: the storage engine's bound, named here so the API layer
/// can state and check it without depending on `storage`.
pub const MAX_PAGE_SIZE: u32 = crate::storage::MAX_PAGE_SIZE;

/// The cluster as this node sees it, for `/v1/cluster` and `customer-cluster status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: String,
    /// Placement epoch of this node's view.
    pub epoch: u64,
    /// The members this node places customers on, sorted by name.
    pub members: Vec<MemberStatus>,
    /// Nodes whose Database actor this node can reach, sorted.
    pub db_members: Vec<String>,
}

/// One member in a [`ClusterStatus`].
#[derive(Debug, Clone, PartialEq)]
pub struct MemberStatus {
    /// Stable node name.
    pub name: String,
    /// Cluster address peers dial.
    pub cluster_addr: String,
    /// HTTP API address.
    pub http_addr: String,
    /// Whether it hosts a Database actor.
    pub hosts_db: bool,
    /// Fraction of the id space placed on it (0..1), estimated over fixed sample keys, so
    /// every node reports the same figure for the same members.
    pub owned_share: f64,
    /// Customer actors active on it now; `None` when its Registry did not answer in time.
    pub active_customers: Option<u64>,
    /// Shards whose lease it holds now; `None` when its Registry did not answer in time.
    pub leases_held: Option<u64>,
    /// Whether this member is the node that answered.
    pub this_node: bool,
}

/// What `/ready` reports once this node can serve customer requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// This node.
    pub node: String,
    /// The node whose Database actor answered the ping.
    pub database_node: String,
    /// Current members, sorted by name (this node among them).
    pub members: Vec<String>,
}

/// Views of this node's state for the API: what it may show without reaching into
/// membership, placement or storage itself.
impl Gateway {
    /// `limit` when a list may ask for that many customers (1 to [`MAX_PAGE_SIZE`]), else
    /// `InvalidInput` saying the bounds.
    pub fn check_page_size(limit: u32) -> Result<u32> {
        if (1..=MAX_PAGE_SIZE).contains(&limit) {
            Ok(limit)
        } else {
            Err(Error::InvalidInput(format!(
                "limit must be an integer from 1 to {MAX_PAGE_SIZE}"
            )))
        }
    }

    /// The HTTP addresses (`host:port`) members announced, as this node sees them now.
    pub fn member_http_addrs(&self) -> Vec<String> {
        self.ctx
            .view()
            .ring
            .members
            .iter()
            .map(|m| m.http_addr.clone())
            .collect()
    }

    /// The cluster as this node sees it. Every member's Registry is asked for its counters
    /// concurrently, each with `stats_timeout`; one that does not answer is reported without
    /// them rather than failing the whole status.
    pub async fn cluster_status(&self, stats_timeout: Duration) -> ClusterStatus {
        let view = self.ctx.view();
        let stats = futures::future::join_all(
            view.ring
                .members
                .iter()
                .map(|m| self.stats_of(&view, &m.name, stats_timeout)),
        )
        .await;
        let active = stats
            .into_iter()
            .map(|s| s.ok().map(|st| (st.active_customers, st.leases_held)))
            .collect::<Vec<_>>();
        ClusterStatus {
            node: self.ctx.name.clone(),
            epoch: view.ring.epoch,
            members: member_statuses(&view.ring.members, &active, &self.ctx.name),
            db_members: self.ctx.db.members(&self.ctx.name),
        }
    }

    /// Whether this node can serve customer requests: it is not an SQLite node still waiting
    /// to meet the cluster (or refused by it), a Database actor answers its ping within
    /// `db_timeout`, this node is in its own placement view, and it holds the lease of
    /// every shard placement gives it. `Unavailable` otherwise, saying which.
    pub async fn readiness(&self, db_timeout: Duration) -> Result<Readiness> {
        self.ctx.db_role.gate()?;
        let database_node = tokio::time::timeout(db_timeout, self.ctx.db.ping())
            .await
            .map_err(|_| {
                Error::Unavailable(format!(
                    "database unreachable: no answer to a ping within {} ms",
                    db_timeout.as_millis()
                ))
            })?
            .map_err(|e| Error::Unavailable(format!("database ping failed: {e}")))?;
        let view = self.ctx.view();
        let members: Vec<String> = view.ring.names().into_iter().map(str::to_owned).collect();
        if !members.contains(&self.ctx.name) {
            return Err(Error::Unavailable("this node is not a member yet".into()));
        }
        let placed = view.ring.local_shards();
        let now = crate::clock::holder_now();
        let missing = placed
            .iter()
            .filter(|s| {
                self.ctx.leases.shard_state(**s, now)
                    == crate::cluster::lease::ShardState::NotHolder
            })
            .count();
        if missing > 0 {
            return Err(Error::Unavailable(format!(
                "this node does not hold the leases of {missing} of the {} shards placed on it yet",
                placed.len()
            )));
        }
        Ok(Readiness {
            node: self.ctx.name.clone(),
            database_node,
            members,
        })
    }
}

/// Pairs each member with its share of the id space and its active-customer count
/// and lease count (`active[i]` belongs to `members[i]`; `None` = did not answer).
fn member_statuses(
    members: &[crate::cluster::placement::Member],
    active: &[Option<(u64, u64)>],
    this_node: &str,
) -> Vec<MemberStatus> {
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    let shares = crate::cluster::placement::shares(&names);
    members
        .iter()
        .zip(shares)
        .zip(active)
        .map(|((m, (_, share)), active)| MemberStatus {
            name: m.name.clone(),
            cluster_addr: m.cluster_addr.clone(),
            http_addr: m.http_addr.clone(),
            hosts_db: m.hosts_db,
            owned_share: share,
            active_customers: active.map(|a| a.0),
            leases_held: active.map(|a| a.1),
            this_node: m.name == this_node,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_shed_by_a_full_database_queue_is_not_applied_not_unknown() {
        let shed = crate::storage::engine::queue_full(4096);
        assert!(matches!(shed, Error::Unavailable(_)));
        assert!(!may_have_applied(&shed), "{shed}");
    }

    #[test]
    fn a_write_whose_earlier_attempt_may_still_apply_never_gives_up_as_not_applied() {
        let left = Error::Unavailable(format!("owner n3 {OWNER_LEFT}"));
        assert!(may_have_applied(&left));
        assert!(may_have_applied(&Error::Timeout("no reply".into())));
        let refused = Error::NotHolder {
            holder: None,
            token: 4,
        };
        assert!(!may_have_applied(&refused));
        assert!(!may_have_applied(&Error::Unavailable(
            "node n2 is not reachable".into()
        )));

        assert!(matches!(
            final_error(refused.clone(), true),
            Error::Timeout(_)
        ));
        assert_eq!(final_error(refused.clone(), false), refused);
        // An error that says nothing definite about the request (a 500, a fenced stale
        // writer) after an attempt that may still apply is the unknown outcome, to be
        // settled: answering it as is could hide a write that lands later.
        for undecided in [
            Error::Internal("sqlite: disk I/O error".into()),
            Error::VersionConflict {
                expected: 3,
                current: 4,
            },
            Error::Unavailable("node n2 is not reachable".into()),
        ] {
            assert!(
                matches!(final_error(undecided.clone(), true), Error::Timeout(_)),
                "{undecided:?} after an attempt that may still apply"
            );
            assert_eq!(final_error(undecided.clone(), false), undecided);
        }
        for decided in [
            Error::NotFound("customer x".into()),
            Error::InvalidInput("email is invalid".into()),
            Error::Conflict("email in use".into()),
            Error::PreconditionFailed {
                expected: 1,
                current: 2,
            },
        ] {
            assert_eq!(
                final_error(decided.clone(), true),
                decided,
                "a decided answer stands"
            );
        }
    }
    use crate::cluster::placement::Member;

    fn member(name: &str, hosts_db: bool) -> Member {
        Member {
            name: name.into(),
            cluster_addr: format!("{name}:4701"),
            http_addr: format!("{name}:8081"),
            hosts_db,
        }
    }

    #[test]
    fn a_not_holder_naming_the_holder_is_retried_there_and_one_naming_nobody_after_a_wait() {
        let named = Error::NotHolder {
            holder: Some("n3".into()),
            token: 4,
        };
        assert_eq!(retry_plan(&named, 1), Retry::At("n3".into()));
        let nobody = Error::NotHolder {
            holder: None,
            token: 0,
        };
        assert_eq!(
            retry_plan(&nobody, 2),
            Retry::AfterViewChange(NOT_HOLDER_BACKOFF * 2)
        );
        assert_eq!(retry_plan(&named, MAX_ATTEMPTS), Retry::No);
    }

    #[test]
    fn an_unknown_outcome_is_never_retried_and_unavailable_only_once() {
        assert_eq!(retry_plan(&Error::Timeout("t".into()), 1), Retry::No);
        assert_eq!(
            retry_plan(&Error::Unavailable("u".into()), 1),
            Retry::AfterViewChange(RETRY_VIEW_WAIT)
        );
        assert_eq!(retry_plan(&Error::Unavailable("u".into()), 2), Retry::No);
        assert_eq!(retry_plan(&Error::NotFound("n".into()), 1), Retry::No);
    }

    #[test]
    fn idempotency_keys_are_one_to_two_hundred_visible_ascii_characters() {
        assert!(check_key("a").is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        for bad in ["", "with space", "tab\t", "é", &"k".repeat(MAX_KEY_LEN + 1)] {
            assert!(
                matches!(check_key(bad), Err(Error::InvalidInput(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_keyed_create_names_the_same_customer_on_every_node_and_keys_do_not_collide() {
        assert_eq!(id_for_key("order-17"), id_for_key("order-17"));
        assert_ne!(id_for_key("order-17"), id_for_key("order-18"));
        assert_eq!(id_for_key("order-17").get_version_num(), 8);
    }

    #[test]
    fn the_body_hash_covers_method_customer_and_body() {
        let (a, b) = (CustomerId::from_u128(1), CustomerId::from_u128(2));
        let h = body_hash("patch", &a, &"x");
        assert_eq!(h, body_hash("patch", &a, &"x"));
        assert_ne!(h, body_hash("replace", &a, &"x"));
        assert_ne!(h, body_hash("patch", &b, &"x"));
        assert_ne!(h, body_hash("patch", &a, &"y"));
    }

    #[test]
    fn every_request_gets_a_fresh_attempt_and_keeps_the_clients_key() {
        let one = request_meta(Some("k".into()), 7);
        let two = request_meta(Some("k".into()), 7);
        assert_eq!((one.id.as_str(), one.body_hash), ("k", 7));
        assert_ne!(one.attempt, two.attempt);
        assert_ne!(request_meta(None, 7).id, request_meta(None, 7).id);
    }

    #[test]
    fn page_sizes_outside_one_to_the_storage_bound_are_refused() {
        assert_eq!(Gateway::check_page_size(1), Ok(1));
        assert_eq!(Gateway::check_page_size(MAX_PAGE_SIZE), Ok(MAX_PAGE_SIZE));
        for bad in [0, MAX_PAGE_SIZE + 1] {
            match Gateway::check_page_size(bad) {
                Err(Error::InvalidInput(m)) => {
                    assert!(m.contains(&MAX_PAGE_SIZE.to_string()), "{m}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn member_status_pairs_each_member_with_its_share_and_counters() {
        let members = [member("n1", true), member("n2", false), member("n3", false)];
        let statuses = member_statuses(&members, &[Some((4, 300)), None, Some((0, 2))], "n2");
        let names: Vec<&str> = statuses.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3"]);
        assert_eq!(
            statuses
                .iter()
                .map(|m| m.active_customers)
                .collect::<Vec<_>>(),
            [Some(4), None, Some(0)]
        );
        assert_eq!(
            statuses.iter().map(|m| m.leases_held).collect::<Vec<_>>(),
            [Some(300), None, Some(2)]
        );
        assert_eq!(
            statuses.iter().map(|m| m.this_node).collect::<Vec<_>>(),
            [false, true, false]
        );
        assert!(statuses[0].hosts_db && !statuses[1].hosts_db);
        assert_eq!(statuses[2].http_addr, "n3:8081");
        let total: f64 = statuses.iter().map(|m| m.owned_share).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let expected = crate::cluster::placement::shares(&["n1", "n2", "n3"]);
        for (status, (name, share)) in statuses.iter().zip(expected) {
            assert_eq!((status.name.as_str(), status.owned_share), (name, share));
        }
    }
}
