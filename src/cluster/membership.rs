//! Membership: who is alive, and the placement view everyone reads.
//!
//! The [`View`] is an immutable snapshot (ring + how to reach each member's Registry),
//! published through a `tokio::sync::watch` channel; readers clone an `Arc` and never lock.
//!
//! The [`Lease`] answers "is my picture of the cluster recent?". Membership renews it on every
//! heartbeat tick. A process that was frozen (SIGSTOP, a long stall) wakes up with an expired
//! lease, and customer actors then reload from the database before serving anything cached:
//! while we were frozen, peers may have evicted us and accepted newer writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ractor::ActorRef;

use crate::cluster::placement::Ring;
use crate::cluster::protocol::RegistryMsg;

/// The placement view: the ring plus the Registry of every remote member.
#[derive(Debug, Clone)]
pub struct View {
    /// Members and owner computation.
    pub ring: Ring,
    /// Remote members' Registries by node name (the local one is found by registered name).
    pub registries: HashMap<String, ActorRef<RegistryMsg>>,
}

impl View {
    /// A view with only the local node.
    pub fn single(ring: Ring) -> Self {
        Self {
            ring,
            registries: HashMap::new(),
        }
    }
}

/// Freshness of this node's cluster picture; cheap to check on every customer operation.
#[derive(Clone)]
pub struct Lease {
    inner: Arc<LeaseInner>,
}

struct LeaseInner {
    base: Instant,
    renewed_ms: AtomicU64,
    validity: Duration,
}

impl Lease {
    /// A lease valid for `validity` after each renewal; starts renewed.
    pub fn new(validity: Duration) -> Self {
        Self {
            inner: Arc::new(LeaseInner {
                base: Instant::now(),
                renewed_ms: AtomicU64::new(0),
                validity,
            }),
        }
    }

    /// Marks the picture as fresh now.
    pub fn renew(&self) {
        let now = self.inner.base.elapsed().as_millis() as u64;
        self.inner.renewed_ms.store(now, Ordering::Relaxed);
    }

    /// True when the last renewal is within the validity period.
    pub fn is_valid(&self) -> bool {
        let now = self.inner.base.elapsed().as_millis() as u64;
        let renewed = self.inner.renewed_ms.load(Ordering::Relaxed);
        now.saturating_sub(renewed) <= self.inner.validity.as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_without_renewal_and_recovers_with_it() {
        let lease = Lease::new(Duration::from_millis(30));
        assert!(lease.is_valid());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!lease.is_valid());
        lease.renew();
        assert!(lease.is_valid());
    }
}
