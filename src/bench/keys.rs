//! The key population the workload addresses, and unique emails for the customers it creates.
//!
//! The population is a fixed number of *slots*, one per preloaded customer; the key sampler
//! picks a slot index, so "key k" keeps its popularity rank even when the customer behind it
//! changes. A slot holds the customer's id and owner, or nothing while it is being replaced:
//!
//! ```text
//!   live(id₁, gen g) ──retire (delete op)──▶ vacant (gen g+1) ──refill──▶ live(id₂, gen g+2)
//! ```
//!
//! A request *leases* a live slot (copies id, owner and generation). A vacant slot is never
//! leased, so a deleted id is never read again expecting 200. A request that was leased before
//! a concurrent delete can still get 404; comparing its generation with the slot's tells that
//! expected race apart from a real 404. Only the deleting request can retire a slot, so two
//! deletes never race on one customer.
//!
//! Locks are per slot and held for a few field copies, never across an `.await`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// How many neighbouring slots a request tries when the sampled one is vacant.
const PROBE_LIMIT: usize = 64;

#[derive(Debug, Default)]
struct Slot {
    /// The customer now behind this key; `None` while it is being replaced.
    id: Option<String>,
    /// Index of its owner in the benchmarked node list, when known.
    owner: Option<usize>,
    /// Bumped on every retire and refill.
    generation: u64,
}

/// A request's copy of a live slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Slot index.
    pub slot: usize,
    /// Customer id.
    pub id: String,
    /// Owner node index, when known.
    pub owner: Option<usize>,
    /// Slot generation when leased.
    pub generation: u64,
}

/// The preloaded customers, by slot.
#[derive(Debug, Default)]
pub struct KeyTable {
    slots: Vec<Mutex<Slot>>,
}

impl KeyTable {
    /// A table of live slots from `(id, owner)` pairs, in key order.
    pub fn new(entries: Vec<(String, Option<usize>)>) -> Self {
        let slots = entries
            .into_iter()
            .map(|(id, owner)| {
                Mutex::new(Slot {
                    id: Some(id),
                    owner,
                    generation: 0,
                })
            })
            .collect();
        Self { slots }
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Leases the first live slot at or after `start` (wrapping); `None` if the probed slots
    /// are all vacant.
    pub fn lease(&self, start: usize) -> Option<Lease> {
        self.probe(start, |_| ())
    }

    /// Like [`KeyTable::lease`], but also marks the slot vacant for a delete: no request
    /// leases it again until [`KeyTable::refill`]. The lease carries the new generation, so
    /// [`KeyTable::changed_since`] stays false for the deleter itself.
    pub fn retire(&self, start: usize) -> Option<Lease> {
        self.probe(start, |slot| {
            slot.id = None;
            slot.generation += 1;
        })
    }

    /// Puts a replacement customer into a retired slot.
    pub fn refill(&self, slot: usize, id: String, owner: Option<usize>) {
        if let Some(mut s) = self.lock(slot) {
            s.id = Some(id);
            s.owner = owner;
            s.generation += 1;
        }
    }

    /// Whether the slot was retired or refilled since `lease` was taken.
    pub fn changed_since(&self, lease: &Lease) -> bool {
        self.lock(lease.slot)
            .is_none_or(|s| s.generation != lease.generation)
    }

    /// Records the owner a response reported, if the slot still holds the leased customer.
    pub fn note_owner(&self, lease: &Lease, owner: Option<usize>) {
        if let Some(mut s) = self.lock(lease.slot)
            && s.generation == lease.generation
            && owner.is_some()
        {
            s.owner = owner;
        }
    }

    /// Number of vacant slots (retired and not yet refilled).
    pub fn vacant(&self) -> usize {
        (0..self.len())
            .filter(|&i| self.lock(i).is_some_and(|s| s.id.is_none()))
            .count()
    }

    fn probe(&self, start: usize, on_hit: impl FnOnce(&mut Slot)) -> Option<Lease> {
        let n = self.len();
        for step in 0..PROBE_LIMIT.min(n) {
            let index = (start + step) % n;
            let Some(mut slot) = self.lock(index) else {
                continue;
            };
            let Some(id) = slot.id.clone() else {
                continue;
            };
            on_hit(&mut slot);
            return Some(Lease {
                slot: index,
                id,
                owner: slot.owner,
                generation: slot.generation,
            });
        }
        None
    }

    fn lock(&self, index: usize) -> Option<MutexGuard<'_, Slot>> {
        let slot = self.slots.get(index)?;
        Some(slot.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Unique emails for one run: `bench-<tag>-<n>@example.com`.
#[derive(Debug)]
pub struct EmailGen {
    /// Random per run, so repeated runs against the same cluster never collide.
    tag: String,
    /// Next sequence number.
    next: AtomicU64,
}

impl EmailGen {
    /// A generator for a run tagged `tag`.
    pub fn new(tag: impl Into<String>) -> Self {
        Self {
            tag: tag.into(),
            next: AtomicU64::new(0),
        }
    }

    /// The run tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// A fresh sequence number and its email address.
    pub fn next(&self) -> (u64, String) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (n, format!("bench-{}-{n}@example.com", self.tag))
    }

    /// True when `email` has this run's shape, `bench-<tag>-…`.
    pub fn made(&self, email: &str) -> bool {
        email
            .strip_prefix("bench-")
            .and_then(|rest| rest.strip_prefix(self.tag.as_str()))
            .is_some_and(|rest| rest.starts_with('-'))
    }
}

/// A random run tag: 10 hex digits from the random bits of a UUIDv7.
pub fn run_tag() -> String {
    let simple = uuid::Uuid::now_v7().simple().to_string();
    simple[simple.len() - 10..].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_recognises_its_own_emails_and_no_others() {
        let run = EmailGen::new("abc");
        let (_, mine) = run.next();
        assert!(run.made(&mine));
        assert!(!run.made(&EmailGen::new("abcd").next().1));
        assert!(!run.made(&EmailGen::new("ab").next().1));
        assert!(!run.made("abc@example.com"));
    }

    fn table(n: usize) -> KeyTable {
        KeyTable::new((0..n).map(|i| (format!("id{i}"), Some(i % 2))).collect())
    }

    #[test]
    fn a_lease_copies_the_live_slot() {
        let t = table(3);
        let l = t.lease(1).unwrap();
        assert_eq!((l.slot, l.id.as_str(), l.owner), (1, "id1", Some(1)));
        assert!(!t.changed_since(&l));
    }

    #[test]
    fn a_retired_key_is_never_leased_again_until_refilled() {
        let t = table(3);
        let gone = t.retire(1).unwrap();
        assert_eq!(t.lease(1).unwrap().id, "id2");
        assert!(t.retire(1).is_some_and(|l| l.id == "id2"));
        assert_eq!(t.vacant(), 2);
        t.refill(gone.slot, "new".into(), Some(0));
        assert_eq!(t.lease(1).unwrap().id, "new");
    }

    #[test]
    fn a_lease_taken_before_a_delete_sees_the_change() {
        let t = table(2);
        let reader = t.lease(0).unwrap();
        let deleter = t.retire(0).unwrap();
        assert!(t.changed_since(&reader));
        assert!(!t.changed_since(&deleter));
        t.refill(deleter.slot, "x".into(), None);
        assert!(t.changed_since(&reader));
    }

    #[test]
    fn probing_gives_up_when_every_slot_is_vacant() {
        let t = table(2);
        t.retire(0).unwrap();
        t.retire(0).unwrap();
        assert!(t.lease(0).is_none());
        assert!(KeyTable::new(Vec::new()).lease(0).is_none());
    }

    #[test]
    fn learned_owners_only_update_the_leased_customer() {
        let t = table(2);
        let l = t.lease(0).unwrap();
        t.note_owner(&l, Some(1));
        assert_eq!(t.lease(0).unwrap().owner, Some(1));
        let stale = t.lease(0).unwrap();
        let d = t.retire(0).unwrap();
        t.refill(d.slot, "y".into(), Some(0));
        t.note_owner(&stale, Some(1));
        assert_eq!(t.lease(0).unwrap().owner, Some(0));
    }

    #[test]
    fn emails_are_unique_and_carry_the_run_tag() {
        let gen_ = EmailGen::new("abc");
        let (a, b) = (gen_.next(), gen_.next());
        assert_eq!(a, (0, "bench-abc-0@example.com".to_owned()));
        assert_ne!(a.1, b.1);
        assert_ne!(run_tag(), run_tag());
        assert_eq!(run_tag().len(), 10);
    }
}
