//! The Customer actor: one per active customer on its owner node; it serialises every
//! operation on that customer.
//!
//! Life cycle: the Registry spawns it empty on first use; the first message loads the row from
//! the database (activation). It keeps the row cached and writes through; it stops when the
//! Registry queues `Passivate` (idle, deleted, shard moved or lost).
//!
//! Every request starts with the shard's lease (DESIGN §6 L6, R1), read in the same actor turn
//! as the cache:
//!
//! * not HELD (lapsed, lost, releasing, never granted) ⇒ `NotHolder` at once: never queue,
//!   never start a write;
//! * HELD under token T ⇒ a cached row is used only if it was loaded (or written) under T;
//!   otherwise the row is reloaded, and the reload is cached only while no write of this
//!   customer is unsettled.
//!
//! Writes go to the database fenced by T and stamped with the request id
//! (`Write { op, fence, request }`), and the outcome decides the cache:
//!
//! | outcome | reply | cache |
//! |---|---|---|
//! | `Decided(Ok(row))` | the row | keep it under T |
//! | `Decided(Err(VersionConflict))` | 503, not applied | dropped |
//! | `Decided(Err(other))` | the domain error | dropped |
//! | `Replayed(stored)` | the stored answer, marked replayed | **untouched** (a newer write may follow it) |
//! | `Fenced` | `NotHolder`; the shard becomes LOST | dropped; never re-applied |
//! | no answer (timeout, connection lost) | settle: aborted ⇒ 503, stored ⇒ it, unreachable ⇒ 504 | dropped, customer *unsettled* until settled |
//! | refused or failed before commit (no database, a database node not serving yet, batch error) | that error (503) | dropped |
//!
//! Re-applying a fenced or conflicting write would turn the fence into a no-op: a command
//! queued in a stale activation would land on top of writes acknowledged after its caller gave
//! up. The decision logic lives in [`plan`] and [`after_write`] (pure); the actor only does
//! I/O around them.

use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;

use super::lease_keeper::WritePermit;
use super::{Counters, NodeContext};
use crate::clock::{holder_now, now_micros};
use crate::cluster::lease::ShardState;
use crate::cluster::placement::{ShardId, shard_of_customer};
use crate::cluster::protocol::{
    CreateRequest, CustomerCommand, RegistryMsg, RouteReply, RouteRequest,
};
use crate::codec::Wire;
use crate::config::ReadMode;
use crate::customer::{
    Customer, CustomerFields, CustomerId, FieldsInput, check_precondition, validate,
};
use crate::error::{Error, Result};
use crate::storage::{Fence, RequestStamp, Settlement, StoredResult, Write, WriteOp, WriteOutcome};

/// Messages of a customer actor. Local-only: never sent across nodes.
#[derive(RactorMessage)]
pub enum CustomerMsg {
    /// Create this customer (idempotent by id and by request id), then keep it cached.
    Create(CreateRequest, RpcReplyPort<Wire<RouteReply>>),
    /// Run a command.
    Command(RouteRequest, RpcReplyPort<Wire<RouteReply>>),
    /// Stop after everything queued before this message. Sent only by the Registry.
    Passivate,
}

/// The customer actor.
pub struct CustomerActor;

/// Start arguments.
pub struct CustomerArgs {
    /// Which customer.
    pub id: CustomerId,
    /// Shared node context.
    pub ctx: Arc<NodeContext>,
    /// The Registry, told when this actor holds nothing (deleted / absent).
    pub registry: ActorRef<RegistryMsg>,
}

/// State of a customer actor.
pub struct CustomerState {
    id: CustomerId,
    shard: ShardId,
    ctx: Arc<NodeContext>,
    registry: ActorRef<RegistryMsg>,
    cached: Option<Cached>,
}

/// A row as loaded or written, with the shard token it was loaded under (R1).
struct Cached {
    customer: Customer,
    token: u64,
}

/// What the actor does with a write's outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterWrite {
    /// Reply with this; cache the row (a fresh state decided now under our token).
    Cache(RouteReply),
    /// Reply with this; drop the cache.
    Drop(Result<RouteReply>),
    /// Reply with this; leave the cache as it is (a replay says nothing about now).
    Keep(Result<RouteReply>),
    /// The shard was granted elsewhere: mark it LOST, drop the cache, answer `NotHolder`.
    Fenced {
        /// Holder now.
        holder: Option<String>,
        /// Token now.
        token: u64,
    },
}

/// Decides what a write's outcome means for the reply and the cache (F1, R1). Pure.
pub fn after_write(outcome: WriteOutcome) -> AfterWrite {
    let reply = |customer, replayed| RouteReply { customer, replayed };
    match outcome {
        WriteOutcome::Decided(Ok(Some(row))) => AfterWrite::Cache(reply(Some(row), false)),
        WriteOutcome::Decided(Ok(None)) => AfterWrite::Drop(Ok(reply(None, false))),
        WriteOutcome::Decided(Err(e)) => AfterWrite::Drop(Err(e)),
        WriteOutcome::Replayed(stored) => {
            AfterWrite::Keep(stored.into_result().map(|c| reply(c, true)))
        }
        WriteOutcome::Fenced { holder, token } => AfterWrite::Fenced { holder, token },
    }
}

/// Whether a write command's refusal (before anything was sent) could be the trace of an
/// earlier attempt of the same request: a customer it deleted, or a version it moved.
pub fn refusal_an_earlier_attempt_may_explain(command: &CustomerCommand, refusal: &Error) -> bool {
    !matches!(command, CustomerCommand::Get)
        && matches!(
            refusal,
            Error::NotFound(_) | Error::PreconditionFailed { .. }
        )
}

/// The answer to a request whose write outcome was unknown, once `settle` ran (F3): an
/// abort recorded now is 503 (never applied), a stored answer is that answer, and a
/// settle that did not get through is 504 — outcome unknown, retry with the same key.
pub fn after_settle(settled: Result<Settlement>) -> Result<RouteReply> {
    match settled {
        Ok(Settlement::Aborted) => Err(Error::Unavailable(
            "the write's outcome was unknown and it has been settled as not applied; retry".into(),
        )),
        Ok(Settlement::Stored(stored)) => stored.into_result().map(|customer| RouteReply {
            customer,
            replayed: false,
        }),
        Err(e) => Err(Error::Timeout(format!(
            "outcome unknown ({e}); retry with the same Idempotency-Key"
        ))),
    }
}

/// The cached row if it may be served under `token` now (R1): loaded under the same token,
/// and not a GET that `--read-mode db` sends to the database.
pub fn usable_cache(
    cached_token: Option<u64>,
    token: u64,
    read_mode: ReadMode,
    command: &CustomerCommand,
) -> bool {
    let db_read = read_mode == ReadMode::Db && matches!(command, CustomerCommand::Get);
    cached_token == Some(token) && !db_read
}

/// What a command needs done, decided from the current row.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Reply with this row; nothing to write.
    Reply(Customer),
    /// Write these fields, conditional on `expected_version`.
    Update {
        /// New fields.
        fields: CustomerFields,
        /// Compare-and-set token.
        expected_version: u64,
    },
    /// Delete, conditional on `expected_version`.
    Delete {
        /// Compare-and-set token.
        expected_version: u64,
    },
}

/// Decides what `command` does to `current`: precondition check, patch application and
/// (re-)validation happen here, so the owner is the authority even if an entry node is not.
pub fn plan(command: &CustomerCommand, current: &Customer) -> Result<Plan> {
    let expected_version = current.version;
    match command {
        CustomerCommand::Get => Ok(Plan::Reply(current.clone())),
        CustomerCommand::Replace { fields, if_match } => {
            check_precondition(*if_match, current.version)?;
            Ok(Plan::Update {
                fields: revalidate(fields)?,
                expected_version,
            })
        }
        CustomerCommand::Patch { patch, if_match } => {
            check_precondition(*if_match, current.version)?;
            Ok(Plan::Update {
                fields: patch.apply(&current.fields)?,
                expected_version,
            })
        }
        CustomerCommand::Delete { if_match } => {
            check_precondition(*if_match, current.version)?;
            Ok(Plan::Delete { expected_version })
        }
    }
}

/// Fields that crossed the network are validated again by their owner.
fn revalidate(fields: &CustomerFields) -> Result<CustomerFields> {
    validate(FieldsInput {
        name: Some(fields.name.clone()),
        email: Some(fields.email.clone()),
        phone: fields.phone.clone(),
        address: fields.address.clone(),
    })
}

impl Actor for CustomerActor {
    type Msg = CustomerMsg;
    type State = CustomerState;
    type Arguments = CustomerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: CustomerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Deliberately no I/O here: the Registry awaits spawning, and must not wait on the DB.
        Ok(CustomerState {
            id: args.id,
            shard: shard_of_customer(&args.id),
            ctx: args.ctx,
            registry: args.registry,
            cached: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CustomerMsg::Create(request, reply) => {
                let result = state.create(request).await;
                state.release_if_empty(&myself);
                let _ = reply.send(Wire(result));
            }
            CustomerMsg::Command(request, reply) => {
                let result = state.run(request).await;
                state.release_if_empty(&myself);
                let _ = reply.send(Wire(result));
            }
            CustomerMsg::Passivate => myself.stop(None),
        }
        Ok(())
    }
}

impl CustomerState {
    /// The token this node may serve the shard under right now, or `NotHolder` (L6).
    fn serving_token(&self) -> Result<u64> {
        match self.ctx.leases.shard_state(self.shard, holder_now()) {
            ShardState::Serve { token, .. } => Ok(token),
            ShardState::NotHolder => {
                metrics::counter!("customer_requests_not_holder_total").increment(1);
                Err(self.ctx.leases.not_holder(self.shard))
            }
        }
    }

    /// Leave to write on this customer's shard now (counted in flight until dropped, L6), or
    /// `NotHolder`.
    fn write_permit(&self) -> Result<WritePermit> {
        self.ctx
            .leases
            .begin_write(self.shard, holder_now())
            .ok_or_else(|| {
                metrics::counter!("customer_requests_not_holder_total").increment(1);
                self.ctx.leases.not_holder(self.shard)
            })
    }

    async fn create(&mut self, request: CreateRequest) -> Result<RouteReply> {
        request.deadline.check(Instant::now())?;
        self.settle_pending().await;
        let permit = self.write_permit()?;
        let stamp = request.request.stamp(now_micros());
        self.write(WriteOp::Insert(request.customer), permit.token, stamp)
            .await
    }

    async fn run(&mut self, request: RouteRequest) -> Result<RouteReply> {
        request.deadline.check(Instant::now())?;
        #[cfg(test)]
        if self.ctx.faults.take_panic(self.id) {
            panic!("test fault injected into customer {}", self.id);
        }
        self.settle_pending().await;
        let token = self.serving_token()?;
        let planned = match self.current(token, &request.command).await {
            Ok(current) => plan(&request.command, &current),
            Err(e) => Err(e),
        };
        let op = match planned {
            Ok(Plan::Reply(row)) => {
                return Ok(RouteReply {
                    customer: Some(row),
                    replayed: false,
                });
            }
            Ok(write) => self.op_of(write),
            Err(e) if refusal_an_earlier_attempt_may_explain(&request.command, &e) => {
                return self.refuse_write(&request, e).await;
            }
            Err(e) => return Err(e),
        };
        // The caller may have given up and retried elsewhere: never start a write after its
        // deadline (armed when the request reached this node); and the lease may have lapsed
        // while the row loaded: check it again.
        request.deadline.check(Instant::now())?;
        let permit = self.write_permit()?;
        let stamp = request.request.stamp(now_micros());
        self.write(op, permit.token, stamp).await
    }

    /// The current row: the cache when loaded under `token` (checked in this same turn as the
    /// lease), else a fresh load, kept only when no write of this customer is unsettled.
    async fn current(&mut self, token: u64, command: &CustomerCommand) -> Result<Customer> {
        let cached_token = self.cached.as_ref().map(|c| c.token);
        if usable_cache(cached_token, token, self.ctx.read_mode, command)
            && let Some(c) = &self.cached
        {
            return Ok(c.customer.clone());
        }
        self.cached = None;
        let row = self
            .ctx
            .db
            .get(self.id)
            .await?
            .ok_or_else(|| Error::customer_not_found(self.id))?;
        if self.unsettled().is_none() {
            self.cached = Some(Cached {
                customer: row.clone(),
                token,
            });
        }
        Ok(row)
    }

    fn op_of(&self, plan: Plan) -> WriteOp {
        match plan {
            Plan::Update {
                fields,
                expected_version,
            } => WriteOp::Update {
                id: self.id,
                fields,
                expected_version,
                now: now_micros(),
            },
            Plan::Delete { expected_version } => WriteOp::Delete {
                id: self.id,
                expected_version: Some(expected_version),
            },
            Plan::Reply(row) => WriteOp::Insert(row),
        }
    }

    /// Sends one fenced, stamped write and turns its outcome into the reply (see the table in
    /// the module doc).
    async fn write(&mut self, op: WriteOp, token: u64, stamp: RequestStamp) -> Result<RouteReply> {
        if self.unsettled().is_some() {
            // An earlier write's outcome is still open and could not be settled (the database
            // is unreachable): a second open outcome would be one too many to track.
            return Err(Error::Unavailable(
                "an earlier write of this customer is not settled yet; nothing was applied, retry"
                    .into(),
            ));
        }
        // In flight until its outcome is known: if this actor dies meanwhile, the next
        // activation settles it before caching anything.
        self.set_unsettled(Some(stamp.clone()));
        let write = Write {
            op,
            fence: Some(Fence {
                shard: self.shard,
                token,
            }),
            request: Some(stamp.clone()),
        };
        #[cfg(test)]
        let dropped = self
            .ctx
            .faults
            .drop_writes
            .load(std::sync::atomic::Ordering::SeqCst);
        #[cfg(not(test))]
        let dropped = false;
        let outcome = if dropped {
            Err(Error::Timeout("the write was lost on its way".into()))
        } else {
            self.ctx.db.submit(write).await
        };
        #[cfg(test)]
        let outcome = self.ctx.faults.maybe_lose(outcome);
        let outcome = match outcome {
            Ok(o) => {
                self.set_unsettled(None);
                o
            }
            Err(e @ Error::Timeout(_)) => return self.unknown_outcome(stamp, e).await,
            Err(not_applied) => {
                self.set_unsettled(None);
                self.cached = None;
                return Err(not_applied);
            }
        };
        match after_write(outcome) {
            AfterWrite::Cache(reply) => {
                if let (Some(row), None) = (&reply.customer, self.unsettled()) {
                    self.cached = Some(Cached {
                        customer: row.clone(),
                        token,
                    });
                }
                Ok(reply)
            }
            AfterWrite::Drop(result) => {
                self.cached = None;
                result.map_err(|e| self.conflict(e))
            }
            AfterWrite::Keep(result) => {
                metrics::counter!("customer_idempotent_replays_total").increment(1);
                result
            }
            AfterWrite::Fenced { holder, token: now } => {
                self.cached = None;
                metrics::counter!("customer_fenced_writes_total").increment(1);
                self.ctx.leases.on_fenced(self.shard, token);
                Err(Error::NotHolder { holder, token: now })
            }
        }
    }

    /// F3: the write's reply never came. Drop the cache, settle the request id ourselves.
    async fn unknown_outcome(&mut self, stamp: RequestStamp, err: Error) -> Result<RouteReply> {
        tracing::warn!(customer = %self.id, request = %stamp.id, error = %err, "write outcome unknown; settling it");
        self.cached = None;
        let settled = self.ctx.db.settle(stamp).await;
        if settled.is_ok() {
            self.set_unsettled(None);
        }
        after_settle(settled)
    }

    /// A write refused before it was sent (404: the customer is gone; 412: its version moved)
    /// may be a retry whose earlier attempt already applied — and removed the customer or
    /// moved the version itself. The request id decides (F4): settle it; a stored answer is
    /// this request's answer, else the refusal stands and the id can never apply later. When
    /// the database cannot say, the outcome is unknown (504: retry with the same key).
    async fn refuse_write(&mut self, request: &RouteRequest, refusal: Error) -> Result<RouteReply> {
        let stamp = request.request.stamp(now_micros());
        match self.ctx.db.settle(stamp).await {
            Ok(Settlement::Stored(stored)) if stored != StoredResult::Aborted => {
                metrics::counter!("customer_idempotent_replays_total").increment(1);
                let customer = stored.into_result()?;
                Ok(RouteReply {
                    customer,
                    replayed: true,
                })
            }
            Ok(_) => Err(refusal),
            Err(e) => Err(Error::Timeout(format!(
                "{refusal}; whether an earlier attempt of this request applied is unknown ({e}): retry with the same Idempotency-Key"
            ))),
        }
    }

    /// Settles a write left unsettled by an earlier request, if any; on success caching may
    /// resume.
    async fn settle_pending(&mut self) {
        if let Some(stamp) = self.unsettled()
            && self.ctx.db.settle(stamp).await.is_ok()
        {
            self.set_unsettled(None);
        }
    }

    /// The write of this customer whose outcome is still unknown, if any (F3): while one
    /// exists nothing loaded is cached (it may still commit). Kept in the node context, not in
    /// the actor, so a passivated or restarted actor's successor still knows it.
    fn unsettled(&self) -> Option<RequestStamp> {
        let map = self.ctx.unsettled.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&self.id).cloned()
    }

    fn set_unsettled(&self, stamp: Option<RequestStamp>) {
        let mut map = self.ctx.unsettled.lock().unwrap_or_else(|p| p.into_inner());
        match stamp {
            Some(s) => map.insert(self.id, s),
            None => map.remove(&self.id),
        };
    }

    /// A version miss means another activation wrote since we loaded: count it and answer
    /// "not applied, retry". Other errors pass through.
    fn conflict(&self, err: Error) -> Error {
        let Error::VersionConflict { expected, current } = err else {
            return err;
        };
        Counters::bump(&self.ctx.counters.version_conflicts);
        metrics::counter!("customer_version_conflicts_total").increment(1);
        tracing::info!(customer = %self.id, expected, current, "stale write rejected by compare-and-set; not applied");
        Error::Unavailable(format!(
            "customer {} was written elsewhere since this node loaded it (version {current}, expected {expected}); nothing was applied, retry",
            self.id
        ))
    }

    /// Tells the Registry this actor holds nothing (absent, deleted, or a create that failed),
    /// so it can be retired: actors exist only for customers that exist.
    fn release_if_empty(&self, myself: &ActorRef<CustomerMsg>) {
        if self.cached.is_some() {
            return;
        }
        let pid = myself.get_id().pid();
        let _ = self
            .registry
            .cast(RegistryMsg::Release(Wire::ok((self.id, pid))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refused_write_can_be_explained_by_its_own_earlier_attempt() {
        let gone = Error::NotFound("customer x".into());
        let moved = Error::PreconditionFailed {
            expected: 1,
            current: 2,
        };
        let delete = CustomerCommand::Delete { if_match: None };
        assert!(refusal_an_earlier_attempt_may_explain(&delete, &gone));
        assert!(refusal_an_earlier_attempt_may_explain(&delete, &moved));
        assert!(!refusal_an_earlier_attempt_may_explain(
            &CustomerCommand::Get,
            &gone
        ));
        let invalid = Error::InvalidInput("name is required".into());
        assert!(!refusal_an_earlier_attempt_may_explain(&delete, &invalid));
    }
    use crate::cluster::protocol::{Deadline, RequestMeta, call, registry_name};
    use crate::customer::{CustomerPatch, FieldPatch, new_customer_id};
    use std::time::Duration;

    fn meta(key: &str, attempt: u32) -> RequestMeta {
        RequestMeta {
            id: key.into(),
            body_hash: 1,
            attempt,
        }
    }

    fn patch_as(field: &str, value: &str, key: &str, attempt: u32) -> RouteRequest {
        let mut p = CustomerPatch::default();
        match field {
            "name" => p.name = FieldPatch::Set(value.into()),
            _ => p.address = FieldPatch::Set(value.into()),
        }
        RouteRequest {
            id: CustomerId::nil(),
            command: CustomerCommand::Patch {
                patch: p,
                if_match: None,
            },
            request: RequestMeta {
                body_hash: crate::actors::gateway::body_hash("patch", &CustomerId::nil(), &value),
                ..meta(key, attempt)
            },
            deadline: Deadline::within(Duration::from_secs(60)),
        }
    }

    fn patch(field: &str, value: &str) -> RouteRequest {
        patch_as(field, value, &new_customer_id().to_string(), 1)
    }

    fn get() -> RouteRequest {
        RouteRequest {
            id: CustomerId::nil(),
            command: CustomerCommand::Get,
            request: meta("get", 1),
            deadline: Deadline::within(Duration::from_secs(60)),
        }
    }

    async fn send(actor: &ActorRef<CustomerMsg>, request: RouteRequest) -> Result<RouteReply> {
        call(actor, Duration::from_secs(5), |r| {
            CustomerMsg::Command(request, r)
        })
        .await
    }

    async fn send_row(actor: &ActorRef<CustomerMsg>, request: RouteRequest) -> Result<Customer> {
        send(actor, request)
            .await
            .map(|r| r.customer.expect("a row"))
    }

    /// A node with one stored customer whose shard it holds, and a way to spawn actors for
    /// that customer outside the Registry (as a second activation would be).
    struct Fixture {
        dir: tempfile::TempDir,
        node: crate::node::NodeActors,
        registry: ActorRef<RegistryMsg>,
        customer: Customer,
        shard: ShardId,
    }

    impl Fixture {
        async fn new(name: &str) -> Self {
            Self::with(name, |_| {}).await
        }

        async fn with(name: &str, tune: impl FnOnce(&mut crate::config::Config)) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let mut config = crate::config::Config::local(name, Some(dir.path().join("c.db")));
            tune(&mut config);
            let node = crate::node::start_actors(&config, None, 1).await.unwrap();
            let registry = ractor::registry::where_is(registry_name(&config.name))
                .unwrap()
                .into();
            let new = Customer::new(new_customer_id(), row(1).fields, 1);
            let customer = crate::actors::insert_behind(&dir.path().join("c.db"), new).await;
            let shard = shard_of_customer(&customer.id);
            let f = Self {
                dir,
                node,
                registry,
                customer,
                shard,
            };
            f.wait_held().await;
            f
        }

        /// Waits until this node serves the customer's shard (register, renew, grant).
        async fn wait_held(&self) -> u64 {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let ShardState::Serve { token, .. } =
                    self.node.ctx.leases.shard_state(self.shard, holder_now())
                {
                    return token;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the shard was never granted"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        async fn activation(&self) -> ActorRef<CustomerMsg> {
            let args = CustomerArgs {
                id: self.customer.id,
                ctx: self.node.ctx.clone(),
                registry: self.registry.clone(),
            };
            Actor::spawn(None, CustomerActor, args).await.unwrap().0
        }

        async fn stored(&self) -> Customer {
            self.node
                .ctx
                .db
                .get(self.customer.id)
                .await
                .unwrap()
                .unwrap()
        }

        fn faults(&self) -> &crate::actors::TestFaults {
            &self.node.ctx.faults
        }
    }

    #[tokio::test]
    async fn a_stale_second_activation_is_fenced_not_reapplied_and_never_overwrites_a_newer_write()
    {
        let f = Fixture::new("fencing-test").await;
        let (node, c) = (&f.node, &f.customer);
        // Two activations of one customer, as during a membership change.
        let first = f.activation().await;
        let stale = f.activation().await;
        send(&stale, get()).await.unwrap(); // caches version 1

        let newer = send_row(&first, patch("address", "written by the first"))
            .await
            .unwrap();
        assert_eq!(newer.version, 2);
        let conflicts = Counters::read(&node.ctx.counters.version_conflicts);

        // The stale activation writes from version 1: rejected, and NOT re-applied.
        let fenced = send(&stale, patch("name", "written by the stale")).await;
        assert!(matches!(fenced, Err(Error::Unavailable(_))), "{fenced:?}");
        assert_eq!(
            Counters::read(&node.ctx.counters.version_conflicts),
            conflicts + 1
        );
        assert_eq!(f.stored().await, newer);

        // A retry runs against a fresh load and keeps the newer write.
        let merged = send_row(&stale, patch("name", "written by the stale"))
            .await
            .unwrap();
        assert_eq!(merged.version, 3);
        assert_eq!(merged.fields.name, "written by the stale");
        assert_eq!(
            merged.fields.address.as_deref(),
            Some("written by the first")
        );
        assert_eq!(f.stored().await, merged);
        assert_eq!(c.id, merged.id);
        first.stop(None);
        stale.stop(None);
        f.node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn an_expired_request_is_refused_without_writing() {
        let f = Fixture::new("deadline-test").await;
        let actor = f.activation().await;
        let mut late = patch("name", "too late");
        // It reached this node a second ago with 10 ms to run, and waited in a queue since.
        let arrived = std::time::Instant::now()
            .checked_sub(Duration::from_secs(1))
            .expect("the monotonic clock has run for a second");
        late.deadline = Deadline::within(Duration::from_millis(10));
        late.deadline.arm(arrived);
        assert!(matches!(send(&actor, late).await, Err(Error::Timeout(_))));
        assert_eq!(f.stored().await.version, 1);
        actor.stop(None);
        f.node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_fenced_write_is_not_reapplied_and_the_shard_becomes_lost() {
        let f = Fixture::new("fenced-lost-test").await;
        let actor = f.activation().await;
        send(&actor, get()).await.unwrap();
        let token = f.wait_held().await;
        // The shard is granted elsewhere behind this node's back: its token moves on.
        let moved = f.node.ctx.db.release(f.shard, token).await.unwrap();
        assert!(matches!(moved, crate::storage::Release::Released { .. }));

        let fenced = send(&actor, patch("name", "from the old holder")).await;
        assert!(matches!(fenced, Err(Error::NotHolder { .. })), "{fenced:?}");
        assert_eq!(f.stored().await.version, 1, "a fenced write never applies");
        let status = f.node.ctx.leases.status(f.shard, holder_now());
        assert!(
            matches!(
                status,
                Some(crate::cluster::lease::ShardStatus::Lost { .. }) | None
            ),
            "{status:?}"
        );
        // Not HELD: refused at once, from the cache too.
        assert!(matches!(
            send(&actor, get()).await,
            Err(Error::NotHolder { .. })
        ));
        actor.stop(None);
        f.node.supervisor.stop(None);
    }

    /// DESIGN §10 case 14 (L3): the actor is never told that its shard was LOST and granted
    /// again while it kept a cached row — here there is no notice to delay at all: every request
    /// reads the node's lease state in the same turn as the cache, and a row loaded under an
    /// older token is never served.
    #[tokio::test]
    async fn an_actor_never_told_its_shard_was_lost_and_granted_again_serves_no_stale_read() {
        let f = Fixture::new("lost-notice-test").await;
        let actor = f.activation().await;
        assert_eq!(send_row(&actor, get()).await.unwrap().version, 1); // cached under T
        let token = f.wait_held().await;
        // Behind this node's back the shard moves on (as a takeover would) and another writer
        // changes the customer.
        f.node.ctx.db.release(f.shard, token).await.unwrap();
        let mut fields = f.customer.fields.clone();
        fields.name = "written while the shard was elsewhere".into();
        let update = crate::storage::WriteOp::Update {
            id: f.customer.id,
            fields,
            expected_version: 1,
            now: now_micros(),
        };
        let path = f.dir.path().join("c.db");
        let newer = crate::actors::write_behind(&path, vec![update]).await;
        let newer = newer[0].clone().unwrap().unwrap();
        assert_eq!(newer.version, 2);
        // The node learns it lost the shard and is granted it again under a newer token; the
        // actor (outside the Registry, so nobody stops it) still holds version 1 in its cache.
        assert!(f.node.ctx.leases.on_fenced(f.shard, token));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let regranted = loop {
            let t = f.wait_held().await;
            if t > token {
                break t;
            }
            assert!(std::time::Instant::now() < deadline, "never granted again");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(regranted > token);
        assert_eq!(send_row(&actor, get()).await.unwrap(), newer);
        actor.stop(None);
        f.node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_replayed_request_never_touches_the_cache_so_a_later_read_shows_the_newer_write() {
        let f = Fixture::new("replay-cache-test").await;
        let actor = f.activation().await;
        let first = send_row(&actor, patch_as("name", "first", "key-a", 1))
            .await
            .unwrap();
        let newer = send_row(&actor, patch_as("name", "newer", "key-b", 1))
            .await
            .unwrap();
        assert_eq!((first.version, newer.version), (2, 3));

        let replay = send(&actor, patch_as("name", "first", "key-a", 2))
            .await
            .unwrap();
        assert!(replay.replayed);
        assert_eq!(replay.customer, Some(first));
        let read = send_row(&actor, get()).await.unwrap();
        assert_eq!(
            read, newer,
            "the replay's old row must not be served afterwards"
        );
        actor.stop(None);
        f.node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_retried_delete_whose_first_attempt_applied_gets_its_answer_not_404() {
        let f = Fixture::new("retried-delete-test").await;
        let actor = f.activation().await;
        let delete = |key: &str, attempt| RouteRequest {
            id: CustomerId::nil(),
            command: CustomerCommand::Delete { if_match: None },
            request: meta(key, attempt),
            deadline: Deadline::within(Duration::from_secs(60)),
        };
        let first = send(&actor, delete("del-key", 1)).await.unwrap();
        assert!(!first.replayed);
        // The same request again (its reply was lost): the stored answer, not a 404.
        let again = send(&actor, delete("del-key", 2)).await.unwrap();
        assert!(again.replayed, "{again:?}");
        assert_eq!(again.customer, None);
        // Another request to delete it is told the truth.
        let other = send(&actor, delete("other-key", 1)).await;
        assert!(matches!(other, Err(Error::NotFound(_))), "{other:?}");
        actor.stop(None);
        f.node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_key_reused_with_another_body_is_refused_as_invalid_input() {
        let f = Fixture::new("key-body-test").await;
        let actor = f.activation().await;
        send(&actor, patch_as("name", "one", "key-x", 1))
            .await
            .unwrap();
        let reused = send(&actor, patch_as("name", "two", "key-x", 2)).await;
        assert!(matches!(reused, Err(Error::InvalidInput(_))), "{reused:?}");
        assert_eq!(f.stored().await.fields.name, "one");
        actor.stop(None);
        f.node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_write_lost_on_its_way_is_settled_as_not_applied_and_its_retry_applies_once() {
        let f = Fixture::new("settle-abort-test").await;
        let actor = f.activation().await;
        f.faults()
            .drop_writes
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let lost = send(&actor, patch_as("name", "once", "key-503", 1)).await;
        assert!(matches!(lost, Err(Error::Unavailable(_))), "{lost:?}");
        f.faults()
            .drop_writes
            .store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(f.stored().await.version, 1);

        // The same attempt arriving late can never apply: its id is settled as aborted.
        let late = send(&actor, patch_as("name", "once", "key-503", 1)).await;
        assert!(matches!(late, Err(Error::Unavailable(_))), "{late:?}");
        assert_eq!(f.stored().await.version, 1);

        // The client's retry (a new attempt) applies, once.
        let retried = send_row(&actor, patch_as("name", "once", "key-503", 2))
            .await
            .unwrap();
        assert_eq!(retried.version, 2);
        let again = send(&actor, patch_as("name", "once", "key-503", 3))
            .await
            .unwrap();
        assert!(again.replayed);
        assert_eq!(f.stored().await.version, 2);
        actor.stop(None);
        f.node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_write_whose_reply_was_lost_is_settled_to_its_stored_answer() {
        let f = Fixture::new("settle-stored-test").await;
        let actor = f.activation().await;
        f.faults()
            .lose_write_replies
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let answered = send_row(&actor, patch_as("name", "applied", "key-lost", 1)).await;
        f.faults()
            .lose_write_replies
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let answered = answered.unwrap();
        assert_eq!(answered.version, 2);
        assert_eq!(f.stored().await, answered);
        actor.stop(None);
        f.node.supervisor.stop(None);
    }

    /// A panic in the storage writer is not a 503 until restart: the batch's outcome is
    /// reported unknown (never "not applied"), the Database actor fails on its next message
    /// and its supervisor starts it over a fresh engine; writes apply again, and the panicked
    /// one never does.
    #[tokio::test]
    async fn a_panicking_storage_writer_is_restarted_and_its_unknown_write_never_applies() {
        let f = Fixture::new("writer-panic-test").await;
        let db_file = f.dir.path().join("c.db");
        let actor = f.activation().await;
        send(&actor, get()).await.unwrap();
        crate::storage::engine::stall::panic_next_batch(&db_file);
        let lost = send(&actor, patch_as("name", "in the panic", "key-panic", 1)).await;
        assert!(
            matches!(lost, Err(Error::Timeout(_) | Error::Unavailable(_))),
            "{lost:?}"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let written = loop {
            match send(&actor, patch_as("name", "after", "key-after", 1)).await {
                Ok(reply) => break reply.customer.expect("a row"),
                Err(e) => assert!(
                    std::time::Instant::now() < deadline,
                    "writes never applied again after the writer panicked: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            (written.version, written.fields.name.as_str()),
            (2, "after")
        );
        let stored = f.stored().await;
        assert_eq!((stored.version, stored.fields.name.as_str()), (2, "after"));
        actor.stop(None);
        f.node.supervisor.stop(None);
    }

    /// One actor per customer per node: a request that arrives while the customer's actor is
    /// passivating waits until it stopped. A successor started next to it would cache a row
    /// the first one's queued write then supersedes — and serve it after that write was
    /// acknowledged (a stale read with no fault at all).
    #[tokio::test]
    async fn a_request_arriving_while_the_actor_passivates_never_meets_a_second_actor() {
        let f = Fixture::new("retiring-actor-test").await;
        let db_file = f.dir.path().join("c.db");
        let id = f.customer.id;
        let cast = |mut request: RouteRequest| {
            request.id = id;
            let (tx, rx) = ractor::concurrency::oneshot();
            f.registry
                .cast(RegistryMsg::Route(Wire::ok(request), tx.into()))
                .unwrap();
            async move {
                match tokio::time::timeout(Duration::from_secs(5), rx).await {
                    Ok(Ok(Wire(reply))) => reply.map(|r| r.customer.expect("a row")),
                    other => panic!("no reply: {other:?}"),
                }
            }
        };
        assert_eq!(
            cast(get()).await.unwrap().version,
            1,
            "activated and cached"
        );
        let children = f.registry.get_cell().get_children();
        assert_eq!(children.len(), 1);
        let pid = children[0].get_id().pid();

        // A write held in the stalled writer keeps the actor busy; then the actor is retired
        // (as when it reports it holds no row) and a read arrives — in this order.
        crate::storage::engine::stall::set(&db_file, true);
        let write = cast(patch("name", "second"));
        f.registry
            .cast(RegistryMsg::Release(Wire::ok((id, pid))))
            .unwrap();
        let mut read = Box::pin(cast(get()));
        // The read may answer at once only with a row from before the write (it is
        // concurrent with it); give a successor the chance to exist.
        let early = tokio::time::timeout(Duration::from_millis(300), &mut read).await;
        crate::storage::engine::stall::set(&db_file, false);
        let written = write.await.unwrap();
        assert_eq!(written.version, 2);
        let during = match early {
            Ok(r) => r.unwrap(),
            Err(_) => read.await.unwrap(),
        };
        assert!(during.version <= 2);
        let after = cast(get()).await.unwrap();
        assert_eq!(
            (after.version, after.fields.name.as_str()),
            (2, "second"),
            "a read after the write was acknowledged showed an older row"
        );
        assert_eq!(f.registry.get_cell().get_children().len(), 1);
        f.node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_stalled_write_committing_after_its_deadline_is_never_followed_by_an_older_read() {
        let f = Fixture::with("stalled-writer-test", |c| {
            c.request_timeout = Duration::from_millis(400);
        })
        .await;
        let actor = f.activation().await;
        let db_file = f.dir.path().join("c.db");
        send(&actor, get()).await.unwrap(); // cached at version 1

        crate::storage::engine::stall::set(&db_file, true);
        let stalled = send(&actor, patch_as("name", "late", "key-stall", 1)).await;
        assert!(matches!(stalled, Err(Error::Timeout(_))), "{stalled:?}");
        // Meanwhile a read reloads the old row (the write has not committed)...
        assert_eq!(send_row(&actor, get()).await.unwrap().version, 1);
        // ...and another write is refused, unsent, while the first one's outcome is open (or,
        // on a loaded machine, because the stalled writer also held the renews long enough
        // for the lease to lapse: refused unsent just the same).
        let second = send(&actor, patch_as("address", "second", "key-second", 1)).await;
        assert!(
            matches!(second, Err(Error::Unavailable(_) | Error::NotHolder { .. })),
            "{second:?}"
        );
        // ...then the write commits.
        crate::storage::engine::stall::set(&db_file, false);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while f.stored().await.version < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the stalled write never committed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for _ in 0..3 {
            let read = send_row(&actor, get()).await.unwrap();
            assert_eq!(
                read.version, 2,
                "a read after the commit showed an older version"
            );
            assert_eq!(read.fields.name, "late");
            assert_eq!(
                read.fields.address, None,
                "the refused second write applied"
            );
        }
        actor.stop(None);
        f.node.supervisor.stop(None);
    }

    fn row(version: u64) -> Customer {
        let mut c = Customer::new(
            new_customer_id(),
            CustomerFields {
                name: "Ada".into(),
                email: "ada@x.io".into(),
                phone: None,
                address: None,
            },
            1,
        );
        c.version = version;
        c
    }

    #[test]
    fn a_get_replies_with_the_current_row() {
        let c = row(3);
        assert_eq!(plan(&CustomerCommand::Get, &c), Ok(Plan::Reply(c)));
    }

    #[test]
    fn writes_are_conditional_on_the_version_the_actor_holds() {
        let c = row(3);
        let cmd = CustomerCommand::Patch {
            patch: CustomerPatch {
                name: FieldPatch::Set("Ada L".into()),
                ..Default::default()
            },
            if_match: None,
        };
        match plan(&cmd, &c).unwrap() {
            Plan::Update {
                fields,
                expected_version,
            } => {
                assert_eq!(expected_version, 3);
                assert_eq!(fields.name, "Ada L");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            plan(&CustomerCommand::Delete { if_match: None }, &c),
            Ok(Plan::Delete {
                expected_version: 3
            })
        );
    }

    #[test]
    fn a_client_precondition_is_checked_against_the_current_row() {
        let c = row(3);
        let cmd = CustomerCommand::Delete { if_match: Some(2) };
        assert!(matches!(
            plan(&cmd, &c),
            Err(Error::PreconditionFailed {
                expected: 2,
                current: 3
            })
        ));
    }

    #[test]
    fn invalid_fields_from_another_node_are_rejected_by_the_owner() {
        let c = row(1);
        let mut fields = c.fields.clone();
        fields.email = "not-an-email".into();
        let cmd = CustomerCommand::Replace {
            fields,
            if_match: None,
        };
        assert!(matches!(plan(&cmd, &c), Err(Error::InvalidInput(_))));
    }

    #[test]
    fn a_cached_row_is_served_only_under_the_token_it_was_loaded_under() {
        let get = CustomerCommand::Get;
        assert!(usable_cache(Some(4), 4, ReadMode::Cache, &get));
        assert!(!usable_cache(Some(4), 5, ReadMode::Cache, &get));
        assert!(!usable_cache(None, 4, ReadMode::Cache, &get));
        // --read-mode db: GETs always read the database; writes still plan from the cache.
        assert!(!usable_cache(Some(4), 4, ReadMode::Db, &get));
        let delete = CustomerCommand::Delete { if_match: None };
        assert!(usable_cache(Some(4), 4, ReadMode::Db, &delete));
    }

    #[test]
    fn only_a_decided_row_is_cached_a_replay_keeps_the_cache_and_a_fence_is_not_applied() {
        let c = row(2);
        assert!(matches!(
            after_write(WriteOutcome::Decided(Ok(Some(c.clone())))),
            AfterWrite::Cache(RouteReply {
                replayed: false,
                ..
            })
        ));
        match after_write(WriteOutcome::Replayed(crate::storage::StoredResult::Row(c))) {
            AfterWrite::Keep(Ok(reply)) => assert!(reply.replayed),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            after_write(WriteOutcome::Replayed(
                crate::storage::StoredResult::Aborted
            )),
            AfterWrite::Keep(Err(Error::Unavailable(_)))
        ));
        assert_eq!(
            after_write(WriteOutcome::Fenced {
                holder: Some("n3".into()),
                token: 9
            }),
            AfterWrite::Fenced {
                holder: Some("n3".into()),
                token: 9
            }
        );
        let miss = Err(Error::VersionConflict {
            expected: 1,
            current: 2,
        });
        assert!(matches!(
            after_write(WriteOutcome::Decided(miss)),
            AfterWrite::Drop(Err(Error::VersionConflict { .. }))
        ));
    }

    #[test]
    fn an_unknown_outcome_settles_to_503_the_stored_answer_or_504() {
        assert!(matches!(
            after_settle(Ok(Settlement::Aborted)),
            Err(Error::Unavailable(_))
        ));
        let stored = after_settle(Ok(Settlement::Stored(crate::storage::StoredResult::Row(
            row(3),
        ))));
        assert_eq!(stored.unwrap().customer.map(|c| c.version), Some(3));
        assert!(matches!(
            after_settle(Err(Error::Unavailable("db".into()))),
            Err(Error::Timeout(_))
        ));
    }
}
