//! The entry-node side of every request: find the owner, call its Registry, retry once.
//!
//! Not an actor: it runs on the HTTP request's task, so requests proceed in parallel and only
//! meet at the owner's customer actor. Routing is `owner(id)` over the current placement view
//! → the local Registry (registered name) or the owner's Registry (a remote pg member) → one
//! call with a deadline.
//!
//! Retry rule: when the call fails in a way that says "nothing was decided about this owner"
//! (unreachable or timed out, see [`Error::is_retryable`]), wait briefly for the placement view
//! to change, recompute the owner and try exactly once more. This is safe because every
//! routed operation is idempotent: creates carry the id chosen here, replace and merge-patch
//! converge to the same fields, and a retried delete that finds nothing reports success.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{ActorRef, RpcReplyPort};

use super::NodeContext;
use crate::cluster::heartbeat;
use crate::cluster::membership::View;
use crate::cluster::protocol::{
    CreateRequest, CustomerCommand, CustomerPage, HeartbeatMsg, ListRequest, RegistryMsg,
    RegistryStats, RouteRequest, call, deadline_after, registry_name,
};
use crate::codec::Wire;
use crate::customer::{Customer, CustomerFields, CustomerId, CustomerPatch};
use crate::error::{Error, Result};

/// Longest wait for a new placement view before the single retry.
const RETRY_VIEW_WAIT: Duration = Duration::from_millis(1500);

/// A reply plus the node whose actor produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<T> {
    /// The reply.
    pub value: T,
    /// Owner node that served it.
    pub owner: String,
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

    /// Creates a customer with `id` (fresh unless the client supplied one for idempotency).
    /// The flag is false when the id already existed with the same fields (an idempotent replay
    /// of an earlier request), true when this request stored it.
    pub async fn create(
        &self,
        id: CustomerId,
        fields: CustomerFields,
    ) -> Result<(Routed<Customer>, bool)> {
        let customer = Customer::new(id, fields, crate::clock::now_micros());
        let created_at = customer.created_at;
        let timeout = self.ctx.request_timeout;
        let routed = self
            .route(id, "create", move |reply| {
                let request = CreateRequest {
                    customer: customer.clone(),
                    deadline_ms: deadline_after(timeout),
                };
                RegistryMsg::CreateCustomer(Wire::ok(request), reply)
            })
            .await?;
        let created_now = routed.value.created_at == created_at;
        Ok((routed, created_now))
    }

    /// Reads a customer.
    pub async fn get(&self, id: CustomerId) -> Result<Routed<Customer>> {
        self.command(id, CustomerCommand::Get).await
    }

    /// Replaces a customer's fields.
    pub async fn replace(
        &self,
        id: CustomerId,
        fields: CustomerFields,
        if_match: Option<u64>,
    ) -> Result<Routed<Customer>> {
        self.command(id, CustomerCommand::Replace { fields, if_match })
            .await
    }

    /// Applies a merge patch.
    pub async fn patch(
        &self,
        id: CustomerId,
        patch: CustomerPatch,
        if_match: Option<u64>,
    ) -> Result<Routed<Customer>> {
        self.command(id, CustomerCommand::Patch { patch, if_match })
            .await
    }

    /// Deletes a customer.
    pub async fn delete(&self, id: CustomerId, if_match: Option<u64>) -> Result<Routed<()>> {
        let command = CustomerCommand::Delete { if_match };
        let mut attempts = 0;
        let routed = self
            .route(id, "delete", |reply| {
                attempts += 1;
                RegistryMsg::Route(Wire::ok(self.route_request(id, command.clone())), reply)
            })
            .await;
        match routed {
            Ok(r) => Ok(Routed {
                value: (),
                owner: r.owner,
            }),
            // A retried delete that finds nothing: the first attempt deleted it before its
            // reply was lost. Deletes are idempotent, so report success.
            Err(Error::NotFound(_)) if attempts > 1 => {
                let owner = self.ctx.view().ring.owner(&id).map(|m| m.name.clone());
                Ok(Routed {
                    value: (),
                    owner: owner.unwrap_or_default(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Lists a page of customers (served by the local Registry from the database).
    pub async fn list(&self, after: Option<CustomerId>, limit: u32) -> Result<CustomerPage> {
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
    pub async fn ping(&self, member: &str, seq: u64) -> Result<Duration> {
        let view = self.ctx.view();
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

    async fn command(&self, id: CustomerId, command: CustomerCommand) -> Result<Routed<Customer>> {
        let op = command.name();
        let routed = self
            .route(id, op, |reply| {
                RegistryMsg::Route(Wire::ok(self.route_request(id, command.clone())), reply)
            })
            .await?;
        match routed.value {
            Some(customer) => Ok(Routed {
                value: customer,
                owner: routed.owner,
            }),
            None => Err(Error::Internal(
                "a non-delete command returned no customer".into(),
            )),
        }
    }

    /// A routed command whose deadline is one request timeout from now (each attempt gets
    /// its own).
    fn route_request(&self, id: CustomerId, command: CustomerCommand) -> RouteRequest {
        RouteRequest {
            id,
            command,
            deadline_ms: deadline_after(self.ctx.request_timeout),
        }
    }

    /// Calls the owner's Registry, retrying once against a recomputed owner.
    async fn route<T: Send + 'static>(
        &self,
        id: CustomerId,
        op: &'static str,
        mut build: impl FnMut(RpcReplyPort<Wire<T>>) -> RegistryMsg,
    ) -> Result<Routed<T>> {
        let mut view_rx = self.ctx.view.clone();
        let view = view_rx.borrow_and_update().clone();
        let first = self.call_owner(&view, id, op, &mut build).await;
        let err = match first {
            Err(e) if e.is_retryable() => e,
            other => return other,
        };
        let owner_before = view.ring.owner(&id).map(|m| m.name.clone());
        metrics::counter!("customer_routing_retries_total", "op" => op).increment(1);
        // Give membership a moment to notice whatever made the owner unreachable.
        let _ = tokio::time::timeout(RETRY_VIEW_WAIT, view_rx.changed()).await;
        let view = view_rx.borrow_and_update().clone();
        tracing::info!(customer = %id, op, error = %err, from = ?owner_before, to = ?view.ring.owner(&id).map(|m| &m.name), "retrying against the recomputed owner");
        self.call_owner(&view, id, op, &mut build).await
    }

    async fn call_owner<T: Send + 'static>(
        &self,
        view: &View,
        id: CustomerId,
        op: &'static str,
        build: &mut impl FnMut(RpcReplyPort<Wire<T>>) -> RegistryMsg,
    ) -> Result<Routed<T>> {
        let owner = view
            .ring
            .owner(&id)
            .ok_or_else(|| Error::Unavailable("no member can own customers right now".into()))?
            .name
            .clone();
        let registry = self.registry_of(view, &owner)?;
        let remote = owner != self.ctx.name;
        let started = Instant::now();
        let value = if remote {
            // Fail fast when membership drops the owner mid-call (e.g. evicted while frozen)
            // instead of waiting out the whole deadline; the caller then retries.
            tokio::select! {
                r = call(&registry, self.ctx.request_timeout, build) => r,
                () = self.left_view(&owner) => Err(Error::Unavailable(format!(
                    "owner {owner} left the cluster during the call"
                ))),
            }
        } else {
            call(&registry, self.ctx.request_timeout, build).await
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
