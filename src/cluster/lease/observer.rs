//! The contender's side of the lease: when may another node's record be revoked (L5)?
//!
//! Every renew reply carries the `node_leases` table. The [`Observer`] remembers, per node,
//! the `(incarnation, epoch, seq)` it last saw and when — on this node's raw monotonic clock —
//! the first reply showing that exact value was *received*. A record becomes revocable once a
//! reply received at least TTL after that first receipt still shows it unchanged.
//!
//! Why receipt and not send: the value may have been committed just before the database read
//! it, i.e. after our request left; only the reply's arrival is certainly after the commit,
//! and so after the holder recorded `s_k`. Why the raw clock without suspend time: a contender
//! must never *over*-estimate how much real time passed, and the suspend offset Linux reports
//! is only accurate to about a second; leaving it out can only make us wait longer.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::clock::HolderInstant;

/// One row of `node_leases`, as a renew reply carries it. Rows whose incarnation was cleared
/// (a graceful leave) name no live process and are not passed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLeaseRow {
    /// Stable node name.
    pub node: String,
    /// Random per process start.
    pub incarnation: u64,
    /// Bumped by every revocation (and registration).
    pub epoch: u64,
    /// The holder's last renew number.
    pub seq: u64,
    /// The TTL the holder runs with, as its renews record it (zero when unknown). The
    /// observer waits the longer of this and its own TTL (L4).
    pub ttl: Duration,
}

/// Permission to revoke one exact record: the takeover statement must match all four fields
/// (`WHERE node=$A AND incarnation=$i AND epoch=$e AND seq=$n`), so a renew that landed
/// meanwhile makes it match nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// Node to revoke.
    pub node: String,
    /// Incarnation seen.
    pub incarnation: u64,
    /// Epoch seen.
    pub epoch: u64,
    /// Renew number seen.
    pub seq: u64,
}

#[derive(Debug, Clone)]
struct Sighting {
    incarnation: u64,
    epoch: u64,
    seq: u64,
    /// How long this record must stay unchanged: the longer of the observer's TTL and the
    /// one the holder records (L4).
    wait: Duration,
    /// Receipt of the first reply that showed this exact value.
    first: Duration,
    /// Receipt of the latest reply that showed it.
    last: Duration,
}

/// Watches the `node_leases` table through renew replies and says which records a contender
/// may revoke.
#[derive(Debug, Clone)]
pub struct Observer {
    ttl: Duration,
    node: String,
    incarnation: u64,
    sightings: BTreeMap<String, Sighting>,
    latest_receipt: Option<Duration>,
}

/// The contender's clock: the raw monotonic part of a holder-clock reading, suspend excluded.
pub fn contender_reading(at: HolderInstant) -> Duration {
    at.at.saturating_sub(at.suspended)
}

impl Observer {
    /// An observer for this process (`node`, `incarnation`), whose own record it never revokes.
    pub fn new(ttl: Duration, node: &str, incarnation: u64) -> Self {
        Self {
            ttl,
            node: node.to_owned(),
            incarnation,
            sightings: BTreeMap::new(),
            latest_receipt: None,
        }
    }

    /// Feeds the table carried by one reply, received at `received_at`. A reply received
    /// before one already fed is ignored (its order against the others is unknown; the next
    /// reply shows whatever it would have).
    pub fn observe(&mut self, rows: &[NodeLeaseRow], received_at: HolderInstant) {
        let now = contender_reading(received_at);
        if self.latest_receipt.is_some_and(|latest| now < latest) {
            return;
        }
        self.latest_receipt = Some(now);
        self.sightings
            .retain(|node, _| rows.iter().any(|r| &r.node == node));
        for row in rows {
            if self.is_me(row) {
                self.sightings.remove(&row.node);
                continue;
            }
            let fresh = Sighting {
                incarnation: row.incarnation,
                epoch: row.epoch,
                seq: row.seq,
                wait: self.ttl.max(row.ttl),
                first: now,
                last: now,
            };
            let seen = self
                .sightings
                .entry(row.node.clone())
                .or_insert(fresh.clone());
            let same = (seen.incarnation, seen.epoch, seen.seq, seen.wait)
                == (row.incarnation, row.epoch, row.seq, fresh.wait);
            if same {
                seen.last = now;
            } else {
                *seen = fresh;
            }
        }
    }

    /// Records that may be revoked at `now`: seen unchanged from a first receipt to a receipt
    /// at least TTL later. A restarted process treats its own old incarnation like any other
    /// node's record; its current incarnation's record is never listed.
    pub fn revocable(&self, now: HolderInstant) -> Vec<Revocation> {
        let now = contender_reading(now);
        self.sightings
            .iter()
            .filter(|(_, s)| s.last >= s.first + s.wait && now >= s.first + s.wait)
            .map(|(node, s)| Revocation {
                node: node.clone(),
                incarnation: s.incarnation,
                epoch: s.epoch,
                seq: s.seq,
            })
            .collect()
    }

    fn is_me(&self, row: &NodeLeaseRow) -> bool {
        row.node == self.node && row.incarnation == self.incarnation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_millis(2000);

    fn at(ms: u64) -> HolderInstant {
        HolderInstant {
            at: Duration::from_millis(ms),
            suspended: Duration::ZERO,
        }
    }

    fn row(node: &str, incarnation: u64, epoch: u64, seq: u64) -> NodeLeaseRow {
        NodeLeaseRow {
            node: node.into(),
            incarnation,
            epoch,
            seq,
            ttl: Duration::ZERO,
        }
    }

    fn revocation(node: &str, incarnation: u64, epoch: u64, seq: u64) -> Revocation {
        Revocation {
            node: node.into(),
            incarnation,
            epoch,
            seq,
        }
    }

    /// B's observer, fed A's unchanged row at each of `times`.
    fn watching_a(times: &[u64]) -> Observer {
        let mut obs = Observer::new(TTL, "b", 2);
        for t in times {
            obs.observe(&[row("a", 1, 1, 5), row("b", 2, 1, 9)], at(*t));
        }
        obs
    }

    #[test]
    fn a_record_unchanged_for_a_ttl_and_confirmed_by_a_later_reply_is_revocable() {
        let obs = watching_a(&[100, 600, 1100, 1600, 2100]);
        assert_eq!(obs.revocable(at(2100)), vec![revocation("a", 1, 1, 5)]);
    }

    #[test]
    fn the_count_starts_at_the_receipt_of_the_first_reply_that_showed_the_record() {
        let obs = watching_a(&[100, 2099]);
        assert!(obs.revocable(at(2099)).is_empty());
        let obs = watching_a(&[100, 2100]);
        assert_eq!(obs.revocable(at(2100)).len(), 1);
    }

    #[test]
    fn a_holder_recording_a_longer_ttl_is_waited_for_that_long_not_the_observers_own() {
        // A runs with a 10 s TTL (it serves up to 10 s − m after its last renew); B's own is 2 s.
        let a = NodeLeaseRow {
            ttl: Duration::from_millis(10_000),
            ..row("a", 1, 1, 5)
        };
        let mut obs = Observer::new(TTL, "b", 2);
        for t in [100, 2100, 5000, 10_099] {
            obs.observe(std::slice::from_ref(&a), at(t));
        }
        assert!(obs.revocable(at(10_099)).is_empty());
        obs.observe(std::slice::from_ref(&a), at(10_100));
        assert_eq!(obs.revocable(at(10_100)), vec![revocation("a", 1, 1, 5)]);
        // A shorter recorded TTL never shortens the observer's own wait.
        let short = NodeLeaseRow {
            ttl: Duration::from_millis(500),
            ..row("c", 3, 1, 5)
        };
        let mut obs = Observer::new(TTL, "b", 2);
        for t in [100, 1000, 2099] {
            obs.observe(std::slice::from_ref(&short), at(t));
        }
        assert!(obs.revocable(at(2099)).is_empty());
    }

    #[test]
    fn waiting_without_a_confirming_reply_is_not_enough() {
        let obs = watching_a(&[100, 600]);
        assert!(obs.revocable(at(10_000)).is_empty());
    }

    #[test]
    fn any_change_of_seq_epoch_or_incarnation_restarts_the_count() {
        for changed in [row("a", 1, 1, 6), row("a", 1, 2, 5), row("a", 7, 1, 5)] {
            let mut obs = watching_a(&[0, 1000]);
            obs.observe(std::slice::from_ref(&changed), at(1500));
            obs.observe(std::slice::from_ref(&changed), at(3000));
            assert!(obs.revocable(at(3000)).is_empty(), "{changed:?}");
            obs.observe(std::slice::from_ref(&changed), at(3500));
            assert_eq!(
                obs.revocable(at(3500)),
                vec![revocation(
                    "a",
                    changed.incarnation,
                    changed.epoch,
                    changed.seq
                )]
            );
        }
    }

    #[test]
    fn a_node_absent_from_the_latest_table_is_dropped() {
        let mut obs = watching_a(&[0, 1000]);
        obs.observe(&[row("b", 2, 1, 9)], at(1500));
        obs.observe(&[row("a", 1, 1, 5)], at(2500));
        assert!(
            obs.revocable(at(2500)).is_empty(),
            "the count started again"
        );
    }

    #[test]
    fn our_own_record_is_never_revocable() {
        let mut obs = Observer::new(TTL, "b", 2);
        for t in [0, 1000, 5000, 10_000] {
            obs.observe(&[row("b", 2, 1, 9)], at(t));
        }
        assert!(obs.revocable(at(10_000)).is_empty());
    }

    #[test]
    fn a_restarted_process_may_take_over_its_own_old_incarnation_after_a_ttl() {
        let mut obs = Observer::new(TTL, "a", 99);
        obs.observe(&[row("a", 1, 4, 70)], at(0));
        obs.observe(&[row("a", 1, 4, 70)], at(1999));
        assert!(obs.revocable(at(1999)).is_empty(), "not before a TTL");
        obs.observe(&[row("a", 1, 4, 70)], at(2000));
        assert_eq!(obs.revocable(at(2000)), vec![revocation("a", 1, 4, 70)]);
        // Once the takeover wrote our incarnation, the row is ours and never revocable.
        obs.observe(&[row("a", 99, 5, 0)], at(2100));
        obs.observe(&[row("a", 99, 5, 0)], at(9000));
        assert!(obs.revocable(at(9000)).is_empty());
    }

    #[test]
    fn a_reply_received_out_of_order_is_ignored() {
        let mut obs = watching_a(&[1000]);
        obs.observe(&[row("a", 1, 1, 5)], at(500));
        obs.observe(&[row("a", 1, 1, 5)], at(2999));
        assert!(
            obs.revocable(at(2999)).is_empty(),
            "counted from 1000, not 500"
        );
        obs.observe(&[row("a", 1, 1, 5)], at(3000));
        assert_eq!(obs.revocable(at(3000)).len(), 1);
    }

    #[test]
    fn time_spent_suspended_does_not_count_towards_a_takeover() {
        let mut obs = watching_a(&[0]);
        let woke = HolderInstant {
            at: Duration::from_millis(2500),
            suspended: Duration::from_millis(1000),
        };
        obs.observe(&[row("a", 1, 1, 5)], woke);
        assert!(
            obs.revocable(woke).is_empty(),
            "only 1.5 s of raw clock passed"
        );
    }
}
