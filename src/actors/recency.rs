//! Least-recently-used order of the customers active on a node: the Registry's pure core for
//! the cap on active actors (`max_active_customers`).
//!
//! Every delivery touches its customer; when an activation would exceed the cap the Registry
//! retires [`Recency::oldest`] the same way the idle sweep retires an idle one. Each touch
//! takes a fresh sequence number, so touch, remove and oldest are O(log n) however many
//! customers are active, and the order never depends on a clock.
//!
//! Deliberately not here: actors, and the decision of what to do with the oldest.

use std::collections::{BTreeMap, HashMap};

use crate::customer::CustomerId;

/// Active customers ordered by their last use.
#[derive(Debug, Default)]
pub struct Recency {
    /// The next sequence number to hand out; only grows.
    next: u64,
    /// Each tracked customer's latest sequence number.
    stamp_of: HashMap<CustomerId, u64>,
    /// The same, ordered: the first entry is the least recently used.
    by_stamp: BTreeMap<u64, CustomerId>,
}

impl Recency {
    /// Marks `id` as used now (tracking it if it was not).
    pub fn touch(&mut self, id: CustomerId) {
        let stamp = self.next;
        self.next += 1;
        if let Some(old) = self.stamp_of.insert(id, stamp) {
            self.by_stamp.remove(&old);
        }
        self.by_stamp.insert(stamp, id);
    }

    /// Stops tracking `id` (retired or stopped).
    pub fn remove(&mut self, id: &CustomerId) {
        if let Some(stamp) = self.stamp_of.remove(id) {
            self.by_stamp.remove(&stamp);
        }
    }

    /// The least recently used customer, if any.
    pub fn oldest(&self) -> Option<CustomerId> {
        self.by_stamp.first_key_value().map(|(_, id)| *id)
    }

    /// How many customers are tracked.
    pub fn len(&self) -> usize {
        self.stamp_of.len()
    }

    /// Whether no customer is tracked.
    pub fn is_empty(&self) -> bool {
        self.stamp_of.is_empty()
    }
}

/// How many of the least recently used must go before one more activation, so that at most
/// `cap` are active after it.
pub fn evictions_before_activation(active: usize, cap: usize) -> usize {
    (active + 1).saturating_sub(cap.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customer::new_customer_id;

    #[test]
    fn the_oldest_is_the_one_untouched_longest() {
        let (a, b, c) = (new_customer_id(), new_customer_id(), new_customer_id());
        let mut r = Recency::default();
        r.touch(a);
        r.touch(b);
        r.touch(c);
        assert_eq!(r.oldest(), Some(a));
        r.touch(a);
        assert_eq!(r.oldest(), Some(b));
        r.remove(&b);
        assert_eq!((r.oldest(), r.len()), (Some(c), 2));
        r.remove(&c);
        r.remove(&a);
        assert!(r.is_empty() && r.oldest().is_none());
    }

    #[test]
    fn room_is_made_only_when_the_cap_would_be_exceeded() {
        assert_eq!(evictions_before_activation(9, 10), 0);
        assert_eq!(evictions_before_activation(10, 10), 1);
        // A cap lowered below the active count is reached again by one activation.
        assert_eq!(evictions_before_activation(15, 10), 6);
        assert_eq!(evictions_before_activation(0, 0), 0);
    }
}
