//! The Registry: one per node, in process group `customer-registry.v5`. It is the node's
//! door for customer operations — from its own HTTP handlers and from peers.
//!
//! It keeps `id → customer actor` for the customers active here and never does slow work in
//! its own handler: commands are handed to the customer actor together with the caller's
//! reply port, lists run in a spawned task. So one slow customer never blocks the others.
//!
//! Retirement of customer actors happens only here, by removing the map entry and then
//! queueing `Passivate` behind everything already sent (see `actors` module invariants):
//! * idle longer than `idle_timeout` (periodic sweep);
//! * least recently used when activating another would exceed `max_active_customers`
//!   (`recency`), so a scan of many distinct ids cannot take the node's memory;
//! * the actor reported it holds nothing (deleted or absent: `Release`);
//! * placement moved the customer to another node (`PlacementChanged`).
//!
//! A customer actor that panics is removed and counted; the next request for that customer
//! activates a fresh one from the database. Other customers are unaffected.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::JoinHandle;

use super::customer::{CustomerActor, CustomerArgs, CustomerMsg};
use super::recency::{Recency, evictions_before_activation};
use super::{Counters, NodeContext};
use crate::clock::holder_now;
use crate::cluster::lease::{ShardState, ShardStatus};
use crate::cluster::membership::{MembershipMsg, membership_name};
use crate::cluster::placement::shard_of_customer;
use crate::cluster::protocol::{
    CustomerPage, ListRequest, NodeInfo, REGISTRY_GROUP, RegistryMsg, RegistryStats, ShardReport,
    check_peer, registry_name,
};
use crate::codec::{Wire, answer};
use crate::customer::CustomerId;
use crate::error::{Error, Result};
use crate::storage::MAX_PAGE_SIZE;

/// The Registry actor.
pub struct Registry;

/// Start arguments.
pub struct RegistryArgs {
    /// Shared node context.
    pub ctx: Arc<NodeContext>,
    /// What we tell peers in `Hello`.
    pub info: NodeInfo,
}

/// State of the Registry.
pub struct RegistryState {
    /// Shared node context: name, timeouts, placement view, database client, counters.
    ctx: Arc<NodeContext>,
    /// What we answer peers' `Hello` with.
    info: NodeInfo,
    /// The customer actors active here, by customer: where requests are delivered.
    active: HashMap<CustomerId, Active>,
    /// Actors told to passivate that have not stopped yet, by customer, with the requests that
    /// arrived for that customer meanwhile. A retiring actor still works through the requests
    /// queued ahead of its `Passivate` (reloading its row if it dropped it), so a successor
    /// started next to it would be a second actor for the same customer under the same lease
    /// token: writes would race on the version, and reads could come from the older one's
    /// cache after the newer one acknowledged a write. One actor per customer per node at any
    /// time: the successor starts when the supervision event says the predecessor stopped.
    retiring: HashMap<CustomerId, Retiring>,
    /// The reverse index, by actor id: supervision events name only the actor, and an actor
    /// that stops or panics must be mapped back to its customer — and told apart from a
    /// successor already in `active` for the same customer.
    by_actor: HashMap<ActorId, CustomerId>,
    /// The customers of `active`, least recently used first: who goes when the cap is hit.
    recency: Recency,
    /// The periodic idle sweep; aborted when the Registry stops.
    sweeper: Option<JoinHandle<()>>,
}

/// One active customer actor.
struct Active {
    /// Where its messages go.
    actor: ActorRef<CustomerMsg>,
    /// Last delivery, for the idle sweep.
    last_used: Instant,
}

/// A customer actor between `Passivate` and its stop.
struct Retiring {
    /// Which actor: its stop releases the requests below.
    actor: ActorId,
    /// Requests for the customer that arrived meanwhile, in arrival order.
    waiting: Vec<CustomerMsg>,
}

/// Requests held per customer while its actor passivates; more are refused with a 503 (the
/// actor is slow to stop, e.g. a write waiting for an unreachable database).
pub const MAX_WAITING_PER_CUSTOMER: usize = 256;

/// Ids idle for at least `idle_timeout` at `now`.
pub fn idle_ids<'a>(
    entries: impl IntoIterator<Item = (&'a CustomerId, Instant)>,
    now: Instant,
    idle_timeout: Duration,
) -> Vec<CustomerId> {
    entries
        .into_iter()
        .filter(|(_, last)| now.saturating_duration_since(*last) >= idle_timeout)
        .map(|(id, _)| *id)
        .collect()
}

/// How often the idle sweep runs: a quarter of the idle timeout, between 100 ms and 10 s.
pub fn sweep_period(idle_timeout: Duration) -> Duration {
    (idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(10))
}

impl Actor for Registry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = RegistryArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RegistryArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let period = sweep_period(args.ctx.idle_timeout);
        let sweeper = myself.send_interval(period, || RegistryMsg::Sweep(Wire::ok(())));
        // L7: a node that stopped renewing stays out of the group; the LeaseKeeper joins this
        // Registry when renews answer again (it finds it by name, registered before this runs).
        if args.ctx.leases.is_renewing() {
            ractor::pg::join(REGISTRY_GROUP.to_owned(), vec![myself.get_cell()]);
        }
        Ok(RegistryState {
            ctx: args.ctx,
            info: args.info,
            active: HashMap::new(),
            retiring: HashMap::new(),
            by_actor: HashMap::new(),
            recency: Recency::default(),
            sweeper: Some(sweeper),
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        ractor::pg::leave(REGISTRY_GROUP.to_owned(), vec![myself.get_cell()]);
        if let Some(s) = state.sweeper.take() {
            s.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RegistryMsg::Hello(peer, reply) => {
                let mut info = state.info.clone();
                info.sqlite = state.ctx.db_role.role();
                info.database = state.ctx.db_role.chosen();
                let checked = peer.0.and_then(|p| check_peer(&p).map(|()| p));
                if let Ok(p) = &checked
                    && let Some(cell) = ractor::registry::where_is(membership_name(&state.ctx.name))
                {
                    // What the peer says about the database node is judged by Membership.
                    let membership: ActorRef<MembershipMsg> = cell.into();
                    let _ = membership.cast(MembershipMsg::Greeted(p.clone()));
                }
                answer(reply, checked.map(|_| info));
            }
            // A routed request's deadline counts from here, on this node's monotonic clock
            // (`Deadline`): the first place the owner sees it, for a remote or local caller.
            RegistryMsg::CreateCustomer(request, reply) => {
                if let Some((mut r, reply)) = request.open(reply) {
                    r.deadline.arm(Instant::now());
                    let msg = (r.customer.id, CustomerMsg::Create(r, reply));
                    state.deliver(&myself, msg.0, msg.1).await;
                }
            }
            RegistryMsg::Route(request, reply) => {
                if let Some((mut r, reply)) = request.open(reply) {
                    r.deadline.arm(Instant::now());
                    let msg = (r.id, CustomerMsg::Command(r, reply));
                    state.deliver(&myself, msg.0, msg.1).await;
                }
            }
            RegistryMsg::ListCustomers(request, reply) => {
                if let Some((r, reply)) = request.open(reply) {
                    let db = state.ctx.db.clone();
                    tokio::spawn(async move { answer(reply, list_page(&db, r).await) });
                }
            }
            RegistryMsg::Stats(_, reply) => answer(reply, Ok(state.stats())),
            RegistryMsg::ShardInfo(request, reply) => {
                if let Some((id, reply)) = request.open(reply) {
                    answer(reply, Ok(state.shard_report(id)));
                }
            }
            RegistryMsg::PlacementChanged(_) => state.drop_unowned(),
            RegistryMsg::Sweep(_) => state.sweep(),
            RegistryMsg::Release(Wire(Ok((id, pid)))) => state.release(id, pid),
            RegistryMsg::Release(Wire(Err(_))) => {}
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.stopped(&myself, &cell).await;
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(id) = state.stopped(&myself, &cell).await {
                    Counters::bump(&state.ctx.counters.restarts);
                    metrics::counter!("customer_actors_restarted_total").increment(1);
                    tracing::warn!(customer = %id, error = %err, "customer actor panicked; it will be re-activated from the database on next use");
                    state.ctx.events.emit(
                        crate::events::EventKind::ActorRestarted,
                        format!("customer {id}"),
                        format!("panicked ({err}); re-activated from the database on next use"),
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }
}

async fn list_page(db: &super::database::DatabaseClient, req: ListRequest) -> Result<CustomerPage> {
    let limit = req.limit.clamp(1, MAX_PAGE_SIZE);
    // Ask for one more than requested: its presence says whether a next page exists.
    let mut items = db
        .list(ListRequest {
            after: req.after,
            limit: limit + 1,
        })
        .await?;
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|c| c.id)
    } else {
        None
    };
    Ok(CustomerPage { items, next })
}

impl RegistryState {
    /// Hands `msg` to the customer's actor, activating one if needed. If the actor died
    /// between lookup and send, the message comes back and goes to a fresh actor.
    async fn deliver(&mut self, myself: &ActorRef<RegistryMsg>, id: CustomerId, msg: CustomerMsg) {
        let shard = shard_of_customer(&id);
        if !self.active.contains_key(&id)
            && self.ctx.leases.shard_state(shard, holder_now()) == ShardState::NotHolder
        {
            // Not activated for a shard we may not serve; the actor re-checks on every request.
            metrics::counter!("customer_requests_not_holder_total").increment(1);
            return fail(msg, self.ctx.leases.not_holder(shard));
        }
        if let Some(retiring) = self.retiring.get_mut(&id) {
            if retiring.waiting.len() >= MAX_WAITING_PER_CUSTOMER {
                return fail(
                    msg,
                    Error::Unavailable(format!(
                        "customer {id} is being passivated and {MAX_WAITING_PER_CUSTOMER} requests already wait for it; retry"
                    )),
                );
            }
            return retiring.waiting.push(msg);
        }
        let mut msg = msg;
        for _ in 0..2 {
            let actor = match self.actor_for(myself, id).await {
                Ok(a) => a,
                Err(e) => return fail(msg, e),
            };
            match actor.send_message(msg) {
                Ok(()) => return,
                Err(ractor::MessagingErr::SendErr(back)) => {
                    // An active actor that died: nothing waits on it (only retiring ones).
                    let _ = self.forget(&actor.get_cell());
                    msg = back;
                }
                Err(_) => return,
            }
        }
        fail(
            msg,
            Error::Unavailable(format!("customer {id} could not be activated")),
        );
    }

    async fn actor_for(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        id: CustomerId,
    ) -> Result<ActorRef<CustomerMsg>> {
        if let Some(active) = self.active.get_mut(&id) {
            active.last_used = Instant::now();
            self.recency.touch(id);
            return Ok(active.actor.clone());
        }
        self.make_room();
        let args = CustomerArgs {
            id,
            ctx: self.ctx.clone(),
            registry: myself.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, CustomerActor, args, myself.get_cell())
            .await
            .map_err(|e| Error::Internal(format!("spawning customer actor: {e}")))?;
        Counters::bump(&self.ctx.counters.activations);
        metrics::counter!("customer_actors_activated_total").increment(1);
        metrics::gauge!("customer_actors_active").increment(1.0);
        self.by_actor.insert(actor.get_id(), id);
        self.recency.touch(id);
        self.active.insert(
            id,
            Active {
                actor: actor.clone(),
                last_used: Instant::now(),
            },
        );
        Ok(actor)
    }

    /// Retires least recently used actors until one more activation stays within
    /// `max_active_customers`. The same retirement as the idle sweep's: `Passivate` queues
    /// behind everything already sent, so every accepted command is still answered.
    fn make_room(&mut self) {
        let excess = evictions_before_activation(self.active.len(), self.ctx.max_active_customers);
        for _ in 0..excess {
            let Some(oldest) = self.recency.oldest() else {
                return;
            };
            self.recency.remove(&oldest);
            if self.retire(&oldest, "least recently used at the active cap") {
                Counters::bump(&self.ctx.counters.lru_passivations);
                metrics::counter!("customer_cluster_lru_passivations_total").increment(1);
            }
        }
    }

    /// A customer actor reported it holds nothing: retire it, unless a successor (another
    /// pid) has taken its place meanwhile.
    fn release(&mut self, id: CustomerId, pid: u64) {
        if self
            .active
            .get(&id)
            .is_some_and(|a| a.actor.get_id().pid() == pid)
        {
            self.retire(&id, "holds no row");
        }
    }

    /// Moves the entry to `retiring` and queues `Passivate`; requests that arrive before the
    /// actor stopped wait for its successor. Returns whether there was an actor.
    fn retire(&mut self, id: &CustomerId, why: &str) -> bool {
        let Some(active) = self.active.remove(id) else {
            return false;
        };
        self.recency.remove(id);
        self.retiring.insert(
            *id,
            Retiring {
                actor: active.actor.get_id(),
                waiting: Vec::new(),
            },
        );
        let _ = active.actor.cast(CustomerMsg::Passivate);
        Counters::bump(&self.ctx.counters.passivations);
        metrics::counter!("customer_actors_passivated_total").increment(1);
        metrics::gauge!("customer_actors_active").decrement(1.0);
        tracing::debug!(customer = %id, why, "customer actor passivated");
        true
    }

    /// Drops bookkeeping for a stopped actor. Returns its customer id if it was active or
    /// retiring, and the requests that waited for it to stop (to deliver to a successor).
    fn forget(&mut self, cell: &ActorCell) -> Option<(CustomerId, Vec<CustomerMsg>)> {
        let id = self.by_actor.remove(&cell.get_id())?;
        if self
            .active
            .get(&id)
            .is_some_and(|a| a.actor.get_id() == cell.get_id())
        {
            self.active.remove(&id);
            self.recency.remove(&id);
            metrics::gauge!("customer_actors_active").decrement(1.0);
        }
        let waiting = match self.retiring.get(&id) {
            Some(r) if r.actor == cell.get_id() => self
                .retiring
                .remove(&id)
                .map(|r| r.waiting)
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        Some((id, waiting))
    }

    /// A customer actor stopped: deliver what waited for it to a successor.
    async fn stopped(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        cell: &ActorCell,
    ) -> Option<CustomerId> {
        let (id, waiting) = self.forget(cell)?;
        for msg in waiting {
            self.deliver(myself, id, msg).await;
        }
        Some(id)
    }

    fn sweep(&mut self) {
        let idle = idle_ids(
            self.active.iter().map(|(id, a)| (id, a.last_used)),
            Instant::now(),
            self.ctx.idle_timeout,
        );
        for id in &idle {
            self.retire(id, "idle");
        }
        let lost = self.without_lease();
        for id in &lost {
            self.retire(id, "shard lease lost");
        }
        release_memory_after(idle.len() + lost.len());
    }

    /// Customers whose shard this node no longer holds (LOST, or forgotten after a loss or a
    /// release): their actors stop and their caches go (L6). LAPSED keeps them (the same
    /// epoch may be renewed again).
    fn without_lease(&self) -> Vec<CustomerId> {
        let now = holder_now();
        self.active
            .keys()
            .filter(|id| {
                let status = self.ctx.leases.status(shard_of_customer(id), now);
                matches!(status, None | Some(ShardStatus::Lost { .. }))
            })
            .copied()
            .collect()
    }

    /// This node's view of `id`'s shard, for `GET …/placement`.
    fn shard_report(&self, id: CustomerId) -> ShardReport {
        let shard = shard_of_customer(&id);
        let now = holder_now();
        let (state, token, valid_for_ms) = match self.ctx.leases.status(shard, now) {
            Some(ShardStatus::Held {
                token, valid_until, ..
            }) => {
                let left = valid_until.saturating_sub(now.at).as_millis() as u64;
                ("held", Some(token), Some(left))
            }
            Some(ShardStatus::Lapsed { token, .. }) => ("lapsed", Some(token), None),
            Some(ShardStatus::Lost { token }) => ("lost", Some(token), None),
            Some(ShardStatus::Releasing { token }) => ("releasing", Some(token), None),
            None => ("none", None, None),
        };
        ShardReport {
            node: self.ctx.name.clone(),
            shard,
            state: state.to_owned(),
            token,
            valid_for_ms,
            holder_hint: self.ctx.leases.hint(shard).and_then(|(h, _)| h),
            active: self.active.contains_key(&id),
        }
    }

    fn drop_unowned(&mut self) {
        let view = self.ctx.view();
        let moved: Vec<CustomerId> = self
            .active
            .keys()
            .filter(|id| !view.ring.is_local_owner(id))
            .copied()
            .collect();
        for id in &moved {
            self.retire(id, "owner moved");
        }
        release_memory_after(moved.len());
        if !moved.is_empty() {
            tracing::info!(
                moved = moved.len(),
                epoch = view.ring.epoch,
                "placement changed: passivated customer actors now owned elsewhere"
            );
        }
    }

    fn stats(&self) -> RegistryStats {
        let c = &self.ctx.counters;
        RegistryStats {
            node: self.ctx.name.clone(),
            active_customers: self.active.len() as u64,
            activations: Counters::read(&c.activations),
            passivations: Counters::read(&c.passivations),
            restarts: Counters::read(&c.restarts),
            version_conflicts: Counters::read(&c.version_conflicts),
            leases_held: self.ctx.leases.held_count(holder_now()) as u64,
        }
    }
}

/// Passivations at once that justify handing freed heap back to the OS.
const TRIM_AFTER_PASSIVATIONS: usize = 1024;

/// glibc keeps freed memory for reuse, so after a large passivation the resident size would
/// not follow the working set; `malloc_trim` returns the free pages (measured: 1.5 GB → 48 MB
/// after passivating 100k actors). Passivated actors free their memory only once they have
/// drained their mailboxes and stopped, so the trim runs a little later, on a blocking thread.
fn release_memory_after(passivated: usize) {
    if passivated >= TRIM_AFTER_PASSIVATIONS {
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = tokio::task::spawn_blocking(|| {
                // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
                unsafe { libc::malloc_trim(0) };
            })
            .await;
        });
    }
}

/// Answers a message that could not be delivered, so its caller never waits for a timeout.
fn fail(msg: CustomerMsg, err: Error) {
    match msg {
        CustomerMsg::Create(_, reply) => answer(reply, Err(err)),
        CustomerMsg::Command(_, reply) => answer(reply, Err(err)),
        CustomerMsg::Passivate => {}
    }
}

/// Spawns the Registry, registered under this node's registry name.
pub async fn spawn(args: RegistryArgs, supervisor: ActorCell) -> Result<ActorRef<RegistryMsg>> {
    let name = registry_name(&args.ctx.name);
    let (actor, _) = Actor::spawn_linked(Some(name), Registry, args, supervisor)
        .await
        .map_err(|e| Error::Internal(format!("registry failed to start: {e}")))?;
    Ok(actor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::gateway::Gateway;
    use crate::cluster::protocol::{CustomerCommand, Deadline, RouteRequest, call};
    use crate::config::Config;
    use crate::customer::{CustomerPatch, FieldPatch, new_customer_id};

    use crate::storage::suite::fields;

    async fn stats(registry: &ActorRef<RegistryMsg>) -> RegistryStats {
        call(registry, Duration::from_secs(5), |r| {
            RegistryMsg::Stats(Wire::ok(()), r)
        })
        .await
        .unwrap()
    }

    /// A node with its own SQLite file (kept while the returned directory lives), its Gateway
    /// and its Registry.
    async fn node_with_db(
        name: &str,
        tune: impl FnOnce(&mut Config),
    ) -> (
        tempfile::TempDir,
        crate::node::NodeActors,
        Gateway,
        ActorRef<RegistryMsg>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::local(name, Some(dir.path().join("c.db")));
        tune(&mut config);
        let node = crate::node::start_actors(&config, None, 1).await.unwrap();
        let gateway = Gateway::new(node.ctx.clone());
        let registry = ractor::registry::where_is(registry_name(&config.name))
            .unwrap()
            .into();
        (dir, node, gateway, registry)
    }

    /// The Registry arms a routed request's deadline on receipt, on this node's clock, for a
    /// local caller exactly as for a remote one: what counts is the budget that arrived.
    #[tokio::test]
    async fn a_routed_deadline_counts_from_its_receipt_by_the_registry() {
        let (_dir, node, gateway, registry) = node_with_db("registry-deadline-test", |_| {}).await;
        let a = gateway
            .create(new_customer_id(), fields("A", "a@x.io"), None)
            .await
            .unwrap()
            .0
            .value;
        let rename = |budget| RouteRequest {
            id: a.id,
            command: CustomerCommand::Patch {
                patch: CustomerPatch {
                    name: FieldPatch::Set("B".into()),
                    ..Default::default()
                },
                if_match: None,
            },
            request: crate::actors::gateway::request_meta(None, 1),
            deadline: Deadline::within(budget),
        };
        let send = |request: RouteRequest| {
            call(&registry, Duration::from_secs(5), move |r| {
                RegistryMsg::Route(Wire::ok(request), r)
            })
        };
        // Nothing left when it was sent: refused before it runs, nothing written.
        let spent = send(rename(Duration::ZERO)).await;
        assert!(matches!(spent, Err(Error::Timeout(_))), "{spent:?}");
        assert_eq!(gateway.get(a.id).await.unwrap().value.version, 1);
        // A budget left: served, counted from its receipt here.
        let served = send(rename(Duration::from_secs(60))).await.unwrap();
        assert_eq!(served.customer.map(|c| c.version), Some(2));
        node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_panicking_customer_actor_is_cleaned_up_and_others_are_unaffected() {
        let (_dir, node, gateway, registry) = node_with_db("registry-crash-test", |_| {}).await;

        let a = gateway
            .create(new_customer_id(), fields("A", "a@x.io"), None)
            .await
            .unwrap()
            .0
            .value;
        let b = gateway
            .create(new_customer_id(), fields("B", "b@x.io"), None)
            .await
            .unwrap()
            .0
            .value;
        assert_eq!(stats(&registry).await.activations, 2);

        *node.ctx.faults.panic_customer.lock().unwrap() = Some(a.id);
        let crash = RouteRequest {
            id: a.id,
            command: CustomerCommand::Get,
            request: crate::actors::gateway::request_meta(None, 0),
            deadline: Deadline::within(Duration::from_secs(60)),
        };
        let crashed = call(&registry, Duration::from_secs(5), |r| {
            RegistryMsg::Route(Wire::ok(crash.clone()), r)
        })
        .await;
        assert!(matches!(crashed, Err(Error::Unavailable(_))), "{crashed:?}");

        let deadline = Instant::now() + Duration::from_secs(5);
        while stats(&registry).await.restarts < 1 {
            assert!(Instant::now() < deadline, "the panic was never noticed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let s = stats(&registry).await;
        assert_eq!((s.restarts, s.active_customers), (1, 1));

        // B's actor survived: reading it activates nothing new.
        assert_eq!(gateway.get(b.id).await.unwrap().value, b);
        assert_eq!(stats(&registry).await.activations, 2);
        // A is re-activated from the database with its data intact.
        assert_eq!(gateway.get(a.id).await.unwrap().value, a);
        assert_eq!(stats(&registry).await.activations, 3);

        node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn garbage_sent_to_a_registry_is_dropped_and_it_keeps_serving() {
        use ractor::message::SerializedMessage;
        let config = Config::local("registry-garbage-test", None);
        let node = crate::node::start_actors(&config, None, 1).await.unwrap();
        let registry: ActorRef<RegistryMsg> =
            ractor::registry::where_is(registry_name(&config.name))
                .unwrap()
                .into();
        for variant in [
            "Route",
            "Hello",
            "Stats",
            "CreateCustomer",
            "Release",
            "Nope",
        ] {
            for args in [vec![], vec![0xff; 9], vec![0, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]] {
                let (tx, _rx) = ractor::concurrency::oneshot();
                let _ = registry
                    .get_cell()
                    .send_serialized(SerializedMessage::Call {
                        variant: variant.into(),
                        args: args.clone(),
                        reply: tx.into(),
                        metadata: None,
                    });
                let _ = registry
                    .get_cell()
                    .send_serialized(SerializedMessage::Cast {
                        variant: variant.into(),
                        args,
                        metadata: None,
                    });
            }
        }
        assert_eq!(stats(&registry).await.node, config.name);
        node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_maximal_page_says_whether_another_page_follows() {
        for stored in [999usize, 1000, 1001] {
            let dir = tempfile::tempdir().unwrap();
            let name = format!("page-boundary-{stored}");
            let config = Config::local(&name, Some(dir.path().join("c.db")));
            let node = crate::node::start_actors(&config, None, 1).await.unwrap();
            let inserts = (0..stored)
                .map(|i| {
                    let email = format!("p{i}@example.com");
                    let c =
                        crate::customer::Customer::new(new_customer_id(), fields("P", &email), 1);
                    crate::storage::WriteOp::Insert(c)
                })
                .collect();
            let written = crate::actors::write_behind(&dir.path().join("c.db"), inserts).await;
            assert!(written.iter().all(Result::is_ok));

            let max = ListRequest {
                after: None,
                limit: MAX_PAGE_SIZE,
            };
            let first = list_page(&node.ctx.db, max).await.unwrap();
            assert_eq!(first.items.len(), stored.min(1000), "{stored} stored");
            assert_eq!(first.next.is_some(), stored > 1000, "{stored} stored");
            if let Some(after) = first.next {
                let rest = ListRequest {
                    after: Some(after),
                    limit: MAX_PAGE_SIZE,
                };
                let second = list_page(&node.ctx.db, rest).await.unwrap();
                assert_eq!(second.items.len(), stored - 1000);
                assert_eq!(second.next, None);
            }
            node.supervisor.stop(None);
        }
    }

    #[tokio::test]
    async fn a_scan_past_the_active_cap_passivates_the_least_recently_used() {
        let (dir, node, gateway, registry) =
            node_with_db("registry-lru-test", |c| c.max_active_customers = 10).await;
        let mut stored = Vec::new();
        for i in 0..50 {
            let email = format!("scan{i}@example.com");
            let c = crate::customer::Customer::new(new_customer_id(), fields("S", &email), 1);
            stored.push(crate::actors::insert_behind(&dir.path().join("c.db"), c).await);
        }
        for c in &stored {
            assert_eq!(&gateway.get(c.id).await.unwrap().value, c);
            assert!(stats(&registry).await.active_customers <= 10);
        }
        let lru = || Counters::read(&node.ctx.counters.lru_passivations);
        assert_eq!(lru(), 40);
        // The ten most recent stayed active: reading them activates nothing.
        let activations = stats(&registry).await.activations;
        for c in &stored[40..] {
            assert_eq!(&gateway.get(c.id).await.unwrap().value, c);
        }
        assert_eq!(stats(&registry).await.activations, activations);
        // A write, then a re-read of everything: passivated customers come back intact.
        let first = &stored[0];
        let renamed = gateway
            .replace(first.id, fields("Renamed", &first.fields.email), None, None)
            .await
            .unwrap()
            .value;
        for c in &stored[1..] {
            assert_eq!(&gateway.get(c.id).await.unwrap().value, c);
        }
        assert_eq!(gateway.get(first.id).await.unwrap().value, renamed);
        assert!(stats(&registry).await.active_customers <= 10);
        node.supervisor.stop(None);
    }

    #[test]
    fn only_entries_idle_for_the_full_timeout_are_swept() {
        let now = Instant::now();
        let (a, b) = (new_customer_id(), new_customer_id());
        let t = Duration::from_secs(10);
        let old = now.checked_sub(Duration::from_secs(11)).unwrap();
        let fresh = now.checked_sub(Duration::from_secs(9)).unwrap();
        assert_eq!(idle_ids([(&a, old), (&b, fresh)], now, t), vec![a]);
    }

    #[test]
    fn the_sweep_period_follows_the_idle_timeout_within_bounds() {
        assert_eq!(
            sweep_period(Duration::from_secs(300)),
            Duration::from_secs(10)
        );
        assert_eq!(
            sweep_period(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            sweep_period(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
    }
}
