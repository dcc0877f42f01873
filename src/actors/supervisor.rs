//! NodeSupervisor: the root of a node's actor tree.
//!
//! Start order: Database (if this node hosts one; a node that cannot open its database must
//! not pretend to serve), then Heartbeat (so peers can ping us as soon as they admit us), then
//! Registry, then Membership (which announces us to peers), then the LeaseKeeper (which
//! acquires the shards placement gives us). Stop order is the reverse, and the Database
//! flushes every queued write before it reports stopped.
//!
//! The NodeServer (transport) is deliberately not a child: it is started before this tree and
//! stopped after it, so a graceful leave can still be heard by peers while the tree drains.
//!
//! Restart policy, for every child alike: a child that fails, or stops while the node is not
//! shutting down, is started again after a backoff that doubles from [`RESTART_BACKOFF_MIN`]
//! with each recent restart of that child (capped at [`RESTART_BACKOFF_MAX`]), so a child that
//! fails on start does not spin. A child restarted more than [`MAX_RESTARTS`] times within
//! [`RESTART_WINDOW`] makes the supervisor stop, and the node exits non-zero rather than limp
//! along. Once a graceful stop has begun, nothing is restarted. The decisions (which child,
//! whether, how long to wait) are pure functions at the bottom of this file; the actor only
//! schedules and spawns.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};
use ractor_cluster::RactorMessage;

use super::NodeContext;
use super::database::{self, DatabaseArgs};
use super::lease_keeper;
use super::registry::{self, RegistryArgs};
use crate::cluster::heartbeat;
use crate::cluster::membership::{self, MembershipArgs};
use crate::cluster::protocol::{NodeInfo, REGISTRY_GROUP};
use crate::storage::engine::EngineConfig;

/// Restarts of one child allowed per [`RESTART_WINDOW`] before the node gives up.
pub const MAX_RESTARTS: usize = 5;
/// The restart-rate window.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// Delay before the first restart of a child (in a window).
pub const RESTART_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay before a restart.
pub const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The supervised children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Child {
    /// The Database actor (only on a node started with `--db-path`).
    Database,
    /// The Heartbeat actor, which answers peers' heartbeat pings.
    Heartbeat,
    /// The Registry and, below it, the customer actors.
    Registry,
    /// Membership: member set, failure detection, placement view.
    Membership,
    /// The LeaseKeeper: registers, renews, acquires and releases shard leases. Its lease state
    /// lives in the NodeContext, so a restarted keeper continues it.
    LeaseKeeper,
}

impl Child {
    /// Every child, in start order.
    pub const ALL: [Child; 5] = [
        Child::Database,
        Child::Heartbeat,
        Child::Registry,
        Child::Membership,
        Child::LeaseKeeper,
    ];

    /// Name for logs and the `child` metric label.
    pub fn name(self) -> &'static str {
        match self {
            Child::Database => "database",
            Child::Heartbeat => "heartbeat",
            Child::Registry => "registry",
            Child::Membership => "membership",
            Child::LeaseKeeper => "lease keeper",
        }
    }
}

/// Messages of the supervisor (local-only).
#[derive(RactorMessage)]
pub enum SupervisorMsg {
    /// First step of a graceful stop: leave the registry group so peers stop routing here.
    LeaveCluster(RpcReplyPort<()>),
    /// Last step: stop Membership, the Registry (and its customer actors), the Heartbeat,
    /// then the Database.
    StopChildren(RpcReplyPort<()>),
    /// A child's backoff has elapsed: start it again. Sent by the supervisor's own timer.
    Restart(Child),
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
    /// Kept to start any child again with the same arguments.
    args: SupervisorArgs,
    /// The running children. A child is removed as soon as it stops, so a late or duplicate
    /// supervision event about it cannot trigger a second restart.
    running: HashMap<Child, ActorCell>,
    /// Recent restarts per child: the rate limit and the backoff.
    restarts: RestartHistory,
    /// Set once a graceful stop began: stopped children then stay stopped.
    stopping: bool,
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
            running: HashMap::new(),
            restarts: RestartHistory::default(),
            stopping: false,
        };
        for child in Child::ALL {
            state.start(&myself, child).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::LeaveCluster(reply) => {
                state.stopping = true;
                if let Some(r) = state.running.get(&Child::Registry) {
                    ractor::pg::leave(REGISTRY_GROUP.to_owned(), vec![r.clone()]);
                }
                let _ = reply.send(());
            }
            SupervisorMsg::StopChildren(reply) => {
                state.stopping = true;
                for child in Child::ALL.into_iter().rev() {
                    if let Some(cell) = state.running.remove(&child) {
                        let _ = cell.stop_and_wait(Some("node stopping".into()), None).await;
                    }
                }
                let _ = reply.send(());
            }
            SupervisorMsg::Restart(child) => state.restart(&myself, child).await,
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
        let running = state.running.iter().map(|(c, cell)| (*c, cell.get_id()));
        let Some(child) = identify(running, cell.get_id()) else {
            return Ok(());
        };
        state.running.remove(&child);
        state.on_child_down(&myself, child, &why);
        Ok(())
    }
}

impl SupervisorState {
    /// Applies the restart policy to a child that went down: schedule its restart after the
    /// backoff, leave it stopped during a graceful stop, or stop the node.
    fn on_child_down(&mut self, myself: &ActorRef<SupervisorMsg>, child: Child, why: &str) {
        let name = child.name();
        match self.restarts.decide(child, Instant::now(), self.stopping) {
            RestartDecision::LeaveStopped => {}
            RestartDecision::RestartAfter(delay) => {
                tracing::warn!(child = name, reason = %why, delay_ms = delay.as_millis() as u64, "child stopped unexpectedly; restarting it after a backoff");
                self.args.ctx.events.emit(
                    crate::events::EventKind::ActorRestarted,
                    name,
                    format!("{why}; restarting after {} ms", delay.as_millis()),
                );
                myself.send_after(delay, move || SupervisorMsg::Restart(child));
            }
            RestartDecision::GiveUp { restarts } => {
                tracing::error!(child = name, reason = %why, restarts, "child keeps failing; stopping the node");
                myself.stop(Some(format!("{name} failed repeatedly: {why}")));
            }
        }
    }

    /// Starts `child` again once its backoff elapsed; a failed start counts as another failure.
    async fn restart(&mut self, myself: &ActorRef<SupervisorMsg>, child: Child) {
        if self.stopping || self.running.contains_key(&child) {
            return;
        }
        match self.start(myself, child).await {
            Ok(()) => {
                tracing::info!(child = child.name(), "child restarted");
                metrics::counter!("customer_node_child_restarts_total", "child" => child.name())
                    .increment(1);
            }
            Err(err) => self.on_child_down(myself, child, &format!("restart failed: {err}")),
        }
    }

    /// Spawns `child` linked to the supervisor and records it as running.
    async fn start(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        let supervisor = myself.get_cell();
        let cell = match child {
            Child::Database => {
                let Some(engine) = self.args.engine.clone() else {
                    return Ok(()); // this node hosts no database
                };
                let args = DatabaseArgs {
                    node: self.args.ctx.name.clone(),
                    engine,
                    role: self.args.ctx.db_role.clone(),
                };
                database::spawn(args, supervisor).await?.get_cell()
            }
            Child::Heartbeat => heartbeat::spawn(&self.args.ctx.name, supervisor)
                .await?
                .get_cell(),
            Child::Registry => {
                let args = RegistryArgs {
                    ctx: self.args.ctx.clone(),
                    info: self.args.info.clone(),
                };
                registry::spawn(args, supervisor).await?.get_cell()
            }
            Child::Membership => membership::spawn(self.args.membership.clone(), supervisor)
                .await?
                .get_cell(),
            Child::LeaseKeeper => lease_keeper::spawn(self.args.ctx.clone(), supervisor)
                .await?
                .get_cell(),
        };
        self.running.insert(child, cell);
        Ok(())
    }
}

/// Which running child the stopped actor `stopped` is; `None` for an actor that is not (or no
/// longer) a running child, e.g. a late event about a child already replaced.
pub fn identify(
    running: impl IntoIterator<Item = (Child, ActorId)>,
    stopped: ActorId,
) -> Option<Child> {
    running
        .into_iter()
        .find(|(_, id)| *id == stopped)
        .map(|(child, _)| child)
}

/// What to do about a child that went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// The node is shutting down: the child stays stopped.
    LeaveStopped,
    /// Start it again after this delay.
    RestartAfter(Duration),
    /// It was restarted too often within the window: stop the node.
    GiveUp {
        /// Restarts of this child within the window.
        restarts: usize,
    },
}

/// Delay before a restart, given how many times the same child was restarted in the window:
/// doubling from [`RESTART_BACKOFF_MIN`], capped at [`RESTART_BACKOFF_MAX`].
pub fn restart_backoff(earlier_restarts: usize) -> Duration {
    let shift = u32::try_from(earlier_restarts).unwrap_or(u32::MAX).min(16);
    RESTART_BACKOFF_MIN
        .saturating_mul(1u32 << shift)
        .min(RESTART_BACKOFF_MAX)
}

/// Recent restarts of each child: the memory behind the rate limit and the backoff.
#[derive(Debug, Default)]
pub struct RestartHistory {
    by_child: HashMap<Child, VecDeque<Instant>>,
}

impl RestartHistory {
    /// Decides about `child`, down at `now`, and records the restart when one is decided.
    /// Each child has its own budget: one flapping child does not use up another's.
    pub fn decide(&mut self, child: Child, now: Instant, stopping: bool) -> RestartDecision {
        if stopping {
            return RestartDecision::LeaveStopped;
        }
        let history = self.by_child.entry(child).or_default();
        while history
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > RESTART_WINDOW)
        {
            history.pop_front();
        }
        let earlier = history.len();
        if earlier >= MAX_RESTARTS {
            return RestartDecision::GiveUp { restarts: earlier };
        }
        history.push_back(now);
        RestartDecision::RestartAfter(restart_backoff(earlier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::gateway::Gateway;
    use crate::cluster::membership::membership_name;
    use crate::cluster::protocol::{
        DATABASE_GROUP, HEARTBEAT_GROUP, database_name, heartbeat_name, registry_name,
    };
    use crate::config::Config;
    use crate::customer::new_customer_id;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_stopped_actor_is_matched_to_its_child_and_strangers_to_none() {
        let running = [
            (Child::Registry, ActorId::Local(7)),
            (Child::Heartbeat, ActorId::Local(9)),
        ];
        assert_eq!(identify(running, ActorId::Local(9)), Some(Child::Heartbeat));
        assert_eq!(identify(running, ActorId::Local(8)), None);
    }

    #[test]
    fn restarts_back_off_exponentially_from_100ms_up_to_the_cap() {
        let t0 = Instant::now();
        let mut h = RestartHistory::default();
        let delays: Vec<_> = (0..MAX_RESTARTS as u64)
            .map(|i| h.decide(Child::Membership, at(t0, i * 10), false))
            .collect();
        let ms = |m| RestartDecision::RestartAfter(Duration::from_millis(m));
        assert_eq!(delays, vec![ms(100), ms(200), ms(400), ms(800), ms(1600)]);
        assert_eq!(restart_backoff(10), RESTART_BACKOFF_MAX);
        assert_eq!(restart_backoff(usize::MAX), RESTART_BACKOFF_MAX);
    }

    #[test]
    fn a_child_restarted_too_often_within_the_window_stops_the_node() {
        let t0 = Instant::now();
        let mut h = RestartHistory::default();
        for i in 0..MAX_RESTARTS as u64 {
            assert!(matches!(
                h.decide(Child::Registry, at(t0, i * 1000), false),
                RestartDecision::RestartAfter(_)
            ));
        }
        assert_eq!(
            h.decide(Child::Registry, at(t0, 10_000), false),
            RestartDecision::GiveUp {
                restarts: MAX_RESTARTS
            }
        );
    }

    #[test]
    fn each_child_has_its_own_budget_and_old_restarts_are_forgotten() {
        let t0 = Instant::now();
        let mut h = RestartHistory::default();
        for i in 0..MAX_RESTARTS as u64 {
            h.decide(Child::Registry, at(t0, i), false);
        }
        assert_eq!(
            h.decide(Child::Database, at(t0, 10), false),
            RestartDecision::RestartAfter(RESTART_BACKOFF_MIN)
        );
        // Long after, the window has emptied: back to the first delay.
        let later = t0 + RESTART_WINDOW * 2;
        assert_eq!(
            h.decide(Child::Registry, later, false),
            RestartDecision::RestartAfter(RESTART_BACKOFF_MIN)
        );
    }

    #[test]
    fn nothing_is_restarted_once_the_node_is_stopping() {
        let mut h = RestartHistory::default();
        for child in Child::ALL {
            assert_eq!(
                h.decide(child, Instant::now(), true),
                RestartDecision::LeaveStopped
            );
        }
    }

    use crate::storage::suite::fields;

    /// The actor registered as `name` once it is running and not `old`.
    async fn replacement(name: &str, old: ActorId) -> ActorCell {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(cell) = ractor::registry::where_is(name)
                && cell.get_id() != old
                && cell.get_status() == ractor::ActorStatus::Running
            {
                return cell;
            }
            assert!(Instant::now() < deadline, "{name} was not restarted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn in_group(group: &str, cell: &ActorCell) -> bool {
        ractor::pg::get_members(&group.to_owned())
            .iter()
            .any(|c| c.get_id() == cell.get_id())
    }

    #[tokio::test]
    async fn every_killed_child_is_restarted_and_the_node_serves_again() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::local("supervisor-kill-test", Some(dir.path().join("s.db")));
        let node = crate::node::start_actors(&config, None, 1).await.unwrap();
        let gateway = Gateway::new(node.ctx.clone());
        let me = &config.name;
        let children = [
            (database_name(me), Some(DATABASE_GROUP)),
            (heartbeat_name(me), Some(HEARTBEAT_GROUP)),
            (registry_name(me), Some(REGISTRY_GROUP)),
            (membership_name(me), None),
        ];
        for (i, (name, group)) in children.iter().enumerate() {
            let victim = ractor::registry::where_is(name.clone()).expect("child running");
            victim.kill();
            let back = replacement(name, victim.get_id()).await;
            if let Some(group) = group {
                assert!(in_group(group, &back), "{name} did not rejoin {group}");
            }
            // A customer request through the Gateway succeeds again (the first attempts may
            // race the restart of the actor that serves them).
            let id = new_customer_id();
            let deadline = Instant::now() + Duration::from_secs(10);
            let created = loop {
                match gateway
                    .create(id, fields("After", &format!("after{i}@x.io")), None)
                    .await
                {
                    Ok((routed, _)) => break routed.value,
                    Err(e) if e.is_retryable() && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("no service after {name} was killed: {e}"),
                }
            };
            assert_eq!(gateway.get(id).await.unwrap().value, created);
        }
        assert!(!node.supervisor_done.is_finished(), "the node kept running");
        node.supervisor.stop(None);
    }

    #[tokio::test]
    async fn a_child_that_keeps_dying_stops_the_node() {
        let config = Config::local("supervisor-give-up-test", None);
        let node = crate::node::start_actors(&config, None, 1).await.unwrap();
        let name = heartbeat_name(&config.name);
        let mut victim = ractor::registry::where_is(name.clone()).expect("heartbeat running");
        for _ in 0..MAX_RESTARTS {
            victim.kill();
            victim = replacement(&name, victim.get_id()).await;
        }
        victim.kill();
        tokio::time::timeout(Duration::from_secs(10), node.supervisor_done)
            .await
            .expect("the supervisor gave up and stopped")
            .unwrap();
    }
}
