//! The Customer actor: one per active customer on its owner node; it serialises every
//! operation on that customer.
//!
//! Life cycle: the Registry spawns it empty on first use; the first message loads the row from
//! the database (activation). It keeps the row cached and writes through: every write is a
//! compare-and-set on `version` at the database, acknowledged only after commit. It stops when
//! the Registry queues `Passivate` (idle, deleted, ownership moved).
//!
//! Cached state is trusted only while (a) the placement epoch is the one it was loaded under
//! and (b) the node's lease is valid. Otherwise it reloads first: a membership change or a
//! stall means another activation may have written meanwhile. If a write is still rejected as
//! stale (fencing), the command is **not** re-applied: the caller gets `Unavailable` (nothing
//! was applied; retry), the cache is dropped and the conflict counted. Re-applying would turn
//! the compare-and-set fence into a no-op: a command queued in a stale activation would land
//! on top of writes acknowledged after its caller gave up. Any failed write drops the cache
//! too, because a write whose outcome is unknown may still have committed.
//!
//! The decision logic lives in [`plan`] (pure); the actor only does I/O around it.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;

use super::{Counters, NodeContext};
use crate::clock::now_micros;
use crate::cluster::protocol::{
    CreateRequest, CustomerCommand, DeleteRequest, RegistryMsg, RouteRequest, UpdateRequest,
    check_deadline,
};
use crate::codec::Wire;
use crate::customer::{
    Customer, CustomerFields, CustomerId, FieldsInput, check_precondition, validate,
};
use crate::error::{Error, Result};

/// Messages of a customer actor. Local-only: never sent across nodes.
#[derive(RactorMessage)]
pub enum CustomerMsg {
    /// Create this customer (idempotent by id), then keep it cached.
    Create(CreateRequest, RpcReplyPort<Wire<Customer>>),
    /// Run a command.
    Command(RouteRequest, RpcReplyPort<Wire<Option<Customer>>>),
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
    ctx: Arc<NodeContext>,
    registry: ActorRef<RegistryMsg>,
    cached: Option<Cached>,
}

/// A row as loaded, with the placement epoch it was loaded under.
struct Cached {
    customer: Customer,
    epoch: u64,
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

/// True when cached state must be reloaded before use.
pub fn needs_reload(loaded_epoch: Option<u64>, current_epoch: u64, lease_valid: bool) -> bool {
    loaded_epoch != Some(current_epoch) || !lease_valid
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
                let result = match check_deadline(request.deadline_ms) {
                    Ok(()) => state.create(request.customer).await,
                    Err(e) => Err(e),
                };
                state.release_if_empty(&myself);
                let _ = reply.send(Wire(result));
            }
            CustomerMsg::Command(request, reply) => {
                let result = state.run(&request.command, request.deadline_ms).await;
                state.release_if_empty(&myself);
                let _ = reply.send(Wire(result));
            }
            CustomerMsg::Passivate => myself.stop(None),
        }
        Ok(())
    }
}

impl CustomerState {
    async fn create(&mut self, customer: Customer) -> Result<Customer> {
        let stored = self.ctx.db.insert(customer).await?;
        self.cache(stored.clone());
        Ok(stored)
    }

    /// The current row: cached if still trustworthy, else loaded. `NotFound` if absent.
    async fn current(&mut self) -> Result<Customer> {
        let epoch = self.ctx.view().ring.epoch;
        let loaded = self.cached.as_ref().map(|c| c.epoch);
        if needs_reload(loaded, epoch, self.ctx.lease.is_valid()) {
            self.cached = None;
            match self.ctx.db.get(self.id).await? {
                Some(row) => self.cache(row),
                None => return Err(Error::customer_not_found(self.id)),
            }
        }
        self.cached
            .as_ref()
            .map(|c| c.customer.clone())
            .ok_or_else(|| Error::customer_not_found(self.id))
    }

    async fn run(
        &mut self,
        command: &CustomerCommand,
        deadline_ms: u64,
    ) -> Result<Option<Customer>> {
        check_deadline(deadline_ms)?;
        #[cfg(test)]
        if self.ctx.faults.take_panic(self.id) {
            panic!("test fault injected into customer {}", self.id);
        }
        let current = self.current().await?;
        let plan = match plan(command, &current)? {
            Plan::Reply(row) => return Ok(Some(row)),
            write => write,
        };
        // The caller may have given up and retried elsewhere: never start a write late.
        check_deadline(deadline_ms)?;
        let outcome = self.write(plan).await;
        self.settle(outcome)
    }

    /// Sends a planned write to the database.
    async fn write(&self, plan: Plan) -> Result<Option<Customer>> {
        match plan {
            Plan::Reply(row) => Ok(Some(row)),
            Plan::Update {
                fields,
                expected_version,
            } => {
                let id = self.id;
                let now = now_micros();
                let update = UpdateRequest {
                    id,
                    fields,
                    expected_version,
                    now,
                };
                self.ctx.db.update(update).await.map(Some)
            }
            Plan::Delete { expected_version } => {
                let expected_version = Some(expected_version);
                let delete = DeleteRequest {
                    id: self.id,
                    expected_version,
                };
                self.ctx.db.delete(delete).await.map(|()| None)
            }
        }
    }

    /// Keeps the cache true to a write's outcome, and turns a fenced write into "not
    /// applied, retry" (see the module doc: never re-apply).
    fn settle(&mut self, outcome: Result<Option<Customer>>) -> Result<Option<Customer>> {
        match outcome {
            Ok(Some(row)) => {
                self.cache(row.clone());
                Ok(Some(row))
            }
            Ok(None) => {
                self.cached = None;
                Ok(None)
            }
            Err(Error::VersionConflict { expected, current }) => {
                self.cached = None;
                Err(self.fenced(expected, current))
            }
            Err(err) => {
                self.cached = None;
                Err(err)
            }
        }
    }

    /// Counts and logs a write the database fenced, and says what the caller should do.
    fn fenced(&self, expected: u64, current: u64) -> Error {
        Counters::bump(&self.ctx.counters.version_conflicts);
        metrics::counter!("customer_version_conflicts_total").increment(1);
        tracing::info!(customer = %self.id, expected, current, "stale write fenced by the database; not applied");
        Error::Unavailable(format!(
            "customer {} was written elsewhere since this node loaded it (version {current}, expected {expected}); nothing was applied, retry",
            self.id
        ))
    }

    fn cache(&mut self, customer: Customer) {
        let epoch = self.ctx.view().ring.epoch;
        self.cached = Some(Cached { customer, epoch });
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
    use crate::cluster::protocol::{call, registry_name};
    use crate::customer::{CustomerPatch, FieldPatch, new_customer_id};
    use std::time::Duration;

    fn patch(field: &str, value: &str) -> RouteRequest {
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
            deadline_ms: u64::MAX,
        }
    }

    async fn send(
        actor: &ActorRef<CustomerMsg>,
        request: RouteRequest,
    ) -> Result<Option<Customer>> {
        call(actor, Duration::from_secs(5), |r| {
            CustomerMsg::Command(request, r)
        })
        .await
    }

    /// A node with one stored customer, and a way to spawn actors for that customer outside
    /// the Registry (as a second activation would be).
    struct Fixture {
        _dir: tempfile::TempDir,
        node: crate::node::NodeActors,
        registry: ActorRef<RegistryMsg>,
        customer: Customer,
    }

    impl Fixture {
        async fn new(name: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let config = crate::config::Config::local(name, Some(dir.path().join("c.db")));
            let node = crate::node::start_actors(&config, None, 1).await.unwrap();
            let registry = ractor::registry::where_is(registry_name(&config.name))
                .unwrap()
                .into();
            let new = Customer::new(new_customer_id(), row(1).fields, 1);
            let customer = node.ctx.db.insert(new).await.unwrap();
            Self {
                _dir: dir,
                node,
                registry,
                customer,
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
    }

    #[tokio::test]
    async fn a_stale_second_activation_is_fenced_not_reapplied_and_never_overwrites_a_newer_write()
    {
        let f = Fixture::new("fencing-test").await;
        let (node, c) = (&f.node, &f.customer);
        // Two activations of one customer, as during a membership change.
        let first = f.activation().await;
        let stale = f.activation().await;
        let get = RouteRequest {
            id: c.id,
            command: CustomerCommand::Get,
            deadline_ms: u64::MAX,
        };
        send(&stale, get).await.unwrap(); // caches version 1

        let newer = send(&first, patch("address", "written by the first"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(newer.version, 2);
        let conflicts = Counters::read(&node.ctx.counters.version_conflicts);

        // The stale activation writes from version 1: fenced, and NOT re-applied.
        let fenced = send(&stale, patch("name", "written by the stale")).await;
        assert!(matches!(fenced, Err(Error::Unavailable(_))), "{fenced:?}");
        assert_eq!(
            Counters::read(&node.ctx.counters.version_conflicts),
            conflicts + 1
        );
        assert_eq!(node.ctx.db.get(c.id).await.unwrap().unwrap(), newer);

        // A retry runs against a fresh load and keeps the newer write.
        let merged = send(&stale, patch("name", "written by the stale"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(merged.version, 3);
        assert_eq!(merged.fields.name, "written by the stale");
        assert_eq!(
            merged.fields.address.as_deref(),
            Some("written by the first")
        );
        let stored = node.ctx.db.get(c.id).await.unwrap().unwrap();
        assert_eq!(stored, merged);
        first.stop(None);
        stale.stop(None);
        f.node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn an_expired_request_is_refused_without_writing() {
        let f = Fixture::new("deadline-test").await;
        let (node, c) = (&f.node, &f.customer);
        let actor = f.activation().await;
        let mut late = patch("name", "too late");
        late.deadline_ms = 1;
        assert!(matches!(send(&actor, late).await, Err(Error::Timeout(_))));
        assert_eq!(node.ctx.db.get(c.id).await.unwrap().unwrap().version, 1);
        actor.stop(None);
        node.supervisor.stop(None);
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
    fn cached_state_is_reloaded_after_a_membership_change_or_a_lapsed_lease() {
        assert!(needs_reload(None, 1, true));
        assert!(!needs_reload(Some(4), 4, true));
        assert!(needs_reload(Some(4), 5, true));
        assert!(needs_reload(Some(4), 4, false));
    }
}
