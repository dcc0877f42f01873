//! The Heartbeat actor: one per node, in process group `customer-heartbeat.v5`, registered as
//! `customer-heartbeat.v5/<node>`. It answers heartbeat pings and does nothing else.
//!
//! Why an actor of its own: a ping answered by the Registry waits in the same mailbox as every
//! customer activation routed to the node, so a burst of activations could delay pongs past
//! the failure timeout and get a healthy, merely busy node evicted. This actor's mailbox only
//! ever holds pings, so its answer time measures the node (a frozen process, a cut network),
//! not a customer queue.
//!
//! Peers find it next to the Registry they admitted: [`beside`] picks the heartbeat actor that
//! arrived over the same session from the same node, so a ping always reaches the process
//! whose Registry is in the placement view, never a stale session of an earlier start.
//!
//! Deliberately not here: any state or decision. The failure detector that interprets the
//! answers is [`super::detector`], driven by Membership.

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};

use super::protocol::{HEARTBEAT_GROUP, HeartbeatMsg, heartbeat_name, node_of};
use crate::codec::Wire;
use crate::error::{Error, Result};

/// The Heartbeat actor.
pub struct Heartbeat;

impl Actor for Heartbeat {
    type Msg = HeartbeatMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(HEARTBEAT_GROUP.to_owned(), vec![myself.get_cell()]);
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        ractor::pg::leave(HEARTBEAT_GROUP.to_owned(), vec![myself.get_cell()]);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            HeartbeatMsg::Ping(Wire(seq), reply) => {
                let _ = reply.send(Wire(seq));
            }
        }
        Ok(())
    }
}

/// Spawns this node's Heartbeat actor, registered under [`heartbeat_name`] and linked to
/// `supervisor`.
pub async fn spawn(node: &str, supervisor: ActorCell) -> Result<ActorRef<HeartbeatMsg>> {
    let (actor, _) = Actor::spawn_linked(Some(heartbeat_name(node)), Heartbeat, (), supervisor)
        .await
        .map_err(|e| Error::Internal(format!("heartbeat actor failed to start: {e}")))?;
    Ok(actor)
}

/// The Heartbeat actor of the process that runs `actor` (typically a peer's Registry): same
/// node name, and reached over the same session (or local when `actor` is local). `None` while
/// that process has no running Heartbeat actor, e.g. during its restart.
pub fn beside(actor: &ActorCell) -> Option<ActorRef<HeartbeatMsg>> {
    let name = actor.get_name();
    let node = name.as_deref().and_then(node_of)?;
    let session = actor.get_id().node();
    ractor::pg::get_members(&HEARTBEAT_GROUP.to_owned())
        .into_iter()
        .find(|cell| {
            cell.get_id().node() == session
                && cell.get_id().is_local() == actor.get_id().is_local()
                && cell.get_status() < ractor::ActorStatus::Stopping
                && cell.get_name().as_deref().and_then(node_of) == Some(node)
        })
        .map(ActorRef::from)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::protocol::{call, registry_name};

    /// Stands in for a Registry: only its registered name matters here.
    struct Named;

    impl Actor for Named {
        type Msg = ();
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _myself: ActorRef<()>,
            _args: (),
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_registry_leads_to_the_heartbeat_of_its_own_node_which_echoes_pings() {
        let (root, _) = Actor::spawn(None, Named, ()).await.unwrap();
        let mine = spawn("hb-unit-a", root.get_cell()).await.unwrap();
        let other = spawn("hb-unit-b", root.get_cell()).await.unwrap();
        let (registry, _) = Actor::spawn(Some(registry_name("hb-unit-a")), Named, ())
            .await
            .unwrap();

        let found = beside(&registry.get_cell()).expect("heartbeat of hb-unit-a");
        assert_eq!(found.get_id(), mine.get_id());
        assert_ne!(found.get_id(), other.get_id());
        let echoed = call(&found, Duration::from_secs(5), |r| {
            HeartbeatMsg::Ping(Wire::ok(41), r)
        })
        .await;
        assert_eq!(echoed, Ok(41));

        // Once it stops, nothing is found (a ping then fails instead of reaching a stranger).
        mine.stop_and_wait(None, None).await.unwrap();
        assert!(beside(&registry.get_cell()).is_none());

        registry.stop(None);
        root.stop(None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ping_is_answered_while_the_registry_works_through_thousands_of_activations() {
        use crate::cluster::protocol::{
            CustomerCommand, Deadline, RegistryMsg, RequestMeta, RouteRequest,
        };
        use crate::customer::new_customer_id;

        let dir = tempfile::tempdir().unwrap();
        let config =
            crate::config::Config::local("hb-backlog-test", Some(dir.path().join("backlog.db")));
        let node = crate::node::start_actors(&config, None, 1).await.unwrap();
        let registry: ActorRef<RegistryMsg> =
            ractor::registry::where_is(registry_name(&config.name))
                .unwrap()
                .into();
        let heartbeat: ActorRef<HeartbeatMsg> =
            ractor::registry::where_is(heartbeat_name(&config.name))
                .unwrap()
                .into();

        // Bury the Registry under activations, then queue a call behind them.
        for i in 0..5000 {
            let (tx, _rx) = ractor::concurrency::oneshot();
            let get = Wire::ok(RouteRequest {
                id: new_customer_id(),
                command: CustomerCommand::Get,
                deadline: Deadline::within(Duration::from_secs(60)),
                request: RequestMeta {
                    id: format!("hb-backlog-{i}"),
                    body_hash: 0,
                    attempt: 0,
                },
            });
            registry
                .send_message(RegistryMsg::Route(get, tx.into()))
                .unwrap();
        }
        let (stats_tx, mut stats_rx) = ractor::concurrency::oneshot();
        registry
            .send_message(RegistryMsg::Stats(Wire::ok(()), stats_tx.into()))
            .unwrap();

        // A ping sent after that call is answered before the Registry reaches the call: it
        // never waits behind customer work (when the Registry answered pings, it did).
        let pong = call(&heartbeat, Duration::from_secs(60), |r| {
            HeartbeatMsg::Ping(Wire::ok(9), r)
        })
        .await;
        assert_eq!(pong, Ok(9));
        assert!(
            stats_rx.try_recv().is_err(),
            "the Registry was through its backlog before the pong: nothing was shown"
        );
        node.supervisor.stop(None);
    }
}
