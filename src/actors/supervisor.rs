//! NodeSupervisor: the root of a node's actor tree.
//!
//! Start order: Database (if this node hosts one; a node that cannot open its database must
//! not pretend to serve), then Registry, then Membership (which announces us to peers), then
//! the LeaseKeeper (which acquires the shards placement gives us). Stop
//! order is the reverse, and the Database flushes every queued write before it reports
//! stopped.
//!
//! The NodeServer (transport) is deliberately not a child: it is started before this tree and
//! stopped after it, so a graceful leave can still be heard by peers while the tree drains.
//!
//! Restart policy: a child that fails (or stops while the node is not shutting down) is
//! started again, at most [`MAX_RESTARTS`] times per [`RESTART_WINDOW`]; beyond that the
//! supervisor stops, and the node exits non-zero rather than limp along.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;

use super::NodeContext;
use super::database::{self, DatabaseArgs};
use super::lease_keeper::{self, LeaseKeeperMsg};
use super::registry::{self, RegistryArgs};
use crate::cluster::membership::{self, MembershipArgs, MembershipMsg};
use crate::cluster::protocol::{DatabaseMsg, NodeInfo, REGISTRY_GROUP, RegistryMsg};
use crate::storage::engine::EngineConfig;

/// Restarts allowed per window before the node gives up.
pub const MAX_RESTARTS: usize = 3;
/// The restart-rate window.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// Messages of the supervisor (local-only).
#[derive(RactorMessage)]
pub enum SupervisorMsg {
    /// First step of a graceful stop: leave the registry group so peers stop routing here.
    LeaveCluster(RpcReplyPort<()>),
    /// Last step: stop the Registry (and its customer actors), then the Database.
    StopChildren(RpcReplyPort<()>),
}

/// The supervisor actor.
pub struct NodeSupervisor;

/// Everything needed to (re)start the children.
pub struct SupervisorArgs {
    /// Shared node context.
    pub ctx: Arc<NodeContext>,
    /// What the Registry tells peers.
    pub info: NodeInfo,
    /// Storage settings when this node hosts the database.
    pub engine: Option<EngineConfig>,
    /// Membership settings.
    pub membership: MembershipArgs,
}

/// Supervisor state.
pub struct SupervisorState {
    args: SupervisorArgs,
    database: Option<ActorRef<DatabaseMsg>>,
    registry: Option<ActorRef<RegistryMsg>>,
    membership: Option<ActorRef<MembershipMsg>>,
    lease_keeper: Option<ActorRef<LeaseKeeperMsg>>,
    restarts: VecDeque<Instant>,
    stopping: bool,
}

/// Records a restart at `now`; false when the rate limit is exceeded.
pub fn allow_restart(history: &mut VecDeque<Instant>, now: Instant) -> bool {
    while history
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) > RESTART_WINDOW)
    {
        history.pop_front();
    }
    history.push_back(now);
    history.len() <= MAX_RESTARTS
}

impl Actor for NodeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SupervisorState {
            args,
            database: None,
            registry: None,
            membership: None,
            lease_keeper: None,
            restarts: VecDeque::new(),
            stopping: false,
        };
        state.start_database(&myself).await?;
        state.start_registry(&myself).await?;
        state.start_membership(&myself).await?;
        state.start_lease_keeper(&myself).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::LeaveCluster(reply) => {
                state.stopping = true;
                if let Some(r) = &state.registry {
                    ractor::pg::leave(REGISTRY_GROUP.to_owned(), vec![r.get_cell()]);
                }
                let _ = reply.send(());
            }
            SupervisorMsg::StopChildren(reply) => {
                state.stopping = true;
                if let Some(k) = state.lease_keeper.take() {
                    let _ = k.stop_and_wait(Some("node stopping".into()), None).await;
                }
                if let Some(m) = state.membership.take() {
                    let _ = m.stop_and_wait(Some("node stopping".into()), None).await;
                }
                if let Some(r) = state.registry.take() {
                    let _ = r.stop_and_wait(Some("node stopping".into()), None).await;
                }
                if let Some(d) = state.database.take() {
                    let _ = d.stop_and_wait(Some("node stopping".into()), None).await;
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match &event {
            SupervisionEvent::ActorFailed(cell, err) => (cell.clone(), err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell.clone(),
                reason.clone().unwrap_or_else(|| "stopped".into()),
            ),
            _ => return Ok(()),
        };
        if state.stopping {
            return Ok(());
        }
        let is_registry = state
            .registry
            .as_ref()
            .is_some_and(|r| r.get_id() == cell.get_id());
        let is_database = state
            .database
            .as_ref()
            .is_some_and(|d| d.get_id() == cell.get_id());
        let is_keeper = state
            .lease_keeper
            .as_ref()
            .is_some_and(|k| k.get_id() == cell.get_id());
        let child = match (is_registry, is_database, is_keeper) {
            (true, _, _) => "registry",
            (_, true, _) => "database",
            (_, _, true) => "lease keeper",
            _ => return Ok(()),
        };
        if !allow_restart(&mut state.restarts, Instant::now()) {
            tracing::error!(child, reason = %why, "child keeps failing; stopping the node");
            myself.stop(Some(format!("{child} failed repeatedly: {why}")));
            return Ok(());
        }
        tracing::warn!(child, reason = %why, "child stopped unexpectedly; restarting it");
        metrics::counter!("customer_node_child_restarts_total", "child" => child).increment(1);
        match child {
            "registry" => state.start_registry(&myself).await?,
            "database" => state.start_database(&myself).await?,
            // Its lease state lives in the NodeContext, so the new keeper continues it.
            "lease keeper" => state.start_lease_keeper(&myself).await?,
            _ => state.start_membership(&myself).await?,
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn start_database(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(engine) = self.args.engine.clone() {
            let args = DatabaseArgs {
                node: self.args.ctx.name.clone(),
                engine,
            };
            self.database = Some(database::spawn(args, myself.get_cell()).await?);
        }
        Ok(())
    }

    async fn start_registry(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let args = RegistryArgs {
            ctx: self.args.ctx.clone(),
            info: self.args.info.clone(),
        };
        self.registry = Some(registry::spawn(args, myself.get_cell()).await?);
        Ok(())
    }
}

impl SupervisorState {
    async fn start_membership(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let args = self.args.membership.clone();
        self.membership = Some(membership::spawn(args, myself.get_cell()).await?);
        Ok(())
    }

    async fn start_lease_keeper(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = self.args.ctx.clone();
        self.lease_keeper = Some(lease_keeper::spawn(ctx, myself.get_cell()).await?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_allowed_up_to_the_limit_within_the_window() {
        let mut h = VecDeque::new();
        let t0 = Instant::now();
        for i in 0..MAX_RESTARTS {
            assert!(allow_restart(&mut h, t0 + Duration::from_secs(i as u64)));
        }
        assert!(!allow_restart(&mut h, t0 + Duration::from_secs(5)));
        // Long after, the window has emptied again.
        assert!(allow_restart(&mut h, t0 + RESTART_WINDOW * 3));
    }
}
