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
        let deadline_ms = deadline_after(self.ctx.request_timeout);
        let routed = self
            .route(id, "create", move |reply| {
                let request = CreateRequest {
                    customer: customer.clone(),
                    deadline_ms,
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
        let request = self.route_request(id, CustomerCommand::Delete { if_match });
        let mut attempts = 0;
        let routed = self
            .route(id, "delete", |reply| {
                attempts += 1;
                RegistryMsg::Route(Wire::ok(request.clone()), reply)
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

    async fn command(&self, id: CustomerId, command: CustomerCommand) -> Result<Routed<Customer>> {
        let op = command.name();
        let request = self.route_request(id, command);
        let routed = self
            .route(id, op, |reply| {
                RegistryMsg::Route(Wire::ok(request.clone()), reply)
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

    /// A routed command whose deadline is one request timeout from now. Every attempt of one
    /// request carries this same deadline: a retry must never extend the time in which an
    /// earlier attempt, delayed somewhere, could still start its write.
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
        let deadline = Instant::now() + self.ctx.request_timeout;
        let mut view_rx = self.ctx.view.clone();
        let view = view_rx.borrow_and_update().clone();
        let first = self.call_owner(&view, id, op, deadline, &mut build).await;
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
        self.call_owner(&view, id, op, deadline, &mut build).await
    }

    async fn call_owner<T: Send + 'static>(
        &self,
        view: &View,
        id: CustomerId,
        op: &'static str,
        deadline: Instant,
        build: &mut impl FnMut(RpcReplyPort<Wire<T>>) -> RegistryMsg,
    ) -> Result<Routed<T>> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        if timeout.is_zero() {
            return Err(Error::Timeout(
                "the request's deadline passed before a retry".into(),
            ));
        }
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
                r = call(&registry, timeout, build) => r,
                () = self.left_view(&owner) => Err(Error::Unavailable(format!(
                    "owner {owner} left the cluster during the call"
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
            .map(|s| s.ok().map(|st| st.active_customers))
            .collect::<Vec<_>>();
        ClusterStatus {
            node: self.ctx.name.clone(),
            epoch: view.ring.epoch,
            members: member_statuses(&view.ring.members, &active, &self.ctx.name),
            db_members: self.ctx.db.members(&self.ctx.name),
        }
    }

    /// Whether this node can serve customer requests: a Database actor answers its ping
    /// within `db_timeout`, and this node is in its own placement view. `Unavailable`
    /// otherwise, saying which.
    pub async fn readiness(&self, db_timeout: Duration) -> Result<Readiness> {
        let database_node = tokio::time::timeout(db_timeout, self.ctx.db.ping())
            .await
            .map_err(|_| Error::Unavailable("database did not answer in time".into()))??;
        let view = self.ctx.view();
        let members: Vec<String> = view.ring.names().into_iter().map(str::to_owned).collect();
        if !members.contains(&self.ctx.name) {
            return Err(Error::Unavailable("this node is not a member yet".into()));
        }
        Ok(Readiness {
            node: self.ctx.name.clone(),
            database_node,
            members,
        })
    }
}

/// Pairs each member with its share of the id space and its active-customer count
/// (`active[i]` belongs to `members[i]`; `None` = did not answer).
fn member_statuses(
    members: &[crate::cluster::placement::Member],
    active: &[Option<u64>],
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
            active_customers: *active,
            this_node: m.name == this_node,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let statuses = member_statuses(&members, &[Some(4), None, Some(0)], "n2");
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
