//! Placement: which node owns a customer.
//!
//! Rendezvous (highest-random-weight) hashing: every member gets a score
//! `xxh3_64(member_name ‖ 0xff ‖ id_bytes)`; the highest score owns the id (ties, which need a
//! 64-bit collision, go to the larger name). Properties that matter here:
//!
//! * every node computes the same owner from the same member *set*, independent of join order;
//! * a join or leave moves exactly the keys gained or lost by that member (the ideal 1/N);
//! * balance is within about 1% over many keys, with no virtual nodes or ring tables to keep.
//!
//! The cost is O(members) hashes per lookup, ~20 ns each: irrelevant next to a network hop.
//! The hash is xxh3 with a fixed layout and a golden test, so a dependency bump can never
//! silently move customers. Never use std's `DefaultHasher` here: it may change between
//! Rust releases.
//!
//! ## Two placements, side by side
//!
//! * **Current (until the lease wiring lands): per customer id.** [`owner_of`] over the id's
//!   16 UUID bytes, used by [`Ring::owner`] and the request path today.
//! * **Next (DESIGN §3): per shard.** The id space is cut into [`SHARDS`] = 1024 shards,
//!   [`shard_of`]`(id) = xxh3_64(id bytes) % 1024` (the same 16 bytes the id placement
//!   hashes), and a shard is placed by the same rendezvous rule over member names
//!   ([`owner_of_shard`], key = the shard number as 2 big-endian bytes). Ownership is then
//!   leased per shard from the database (`cluster::lease`), in units few enough to renew
//!   cheaply and many enough to balance. The lease wiring switches [`Ring::owner`] callers to
//!   [`Ring::shard_owner`]; until then both are kept, each with its own golden table.

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use crate::customer::CustomerId;

/// Separator between member name and key bytes; 0xff never occurs in UTF-8, so
/// `("ab", "c…")` and `("a", "bc…")` cannot hash the same input.
const SEPARATOR: u8 = 0xff;

/// Score of `member` for `key`.
pub fn score(member: &str, key: &[u8]) -> u64 {
    let mut buf = Vec::with_capacity(member.len() + 1 + key.len());
    buf.extend_from_slice(member.as_bytes());
    buf.push(SEPARATOR);
    buf.extend_from_slice(key);
    xxh3_64(&buf)
}

/// The member with the highest score for `key`, or `None` when there are no members.
pub fn owner_of<'a, I>(members: I, key: &[u8]) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    members
        .into_iter()
        .map(|m| (score(m, key), m))
        .max()
        .map(|(_, m)| m)
}

/// A shard number, `0..SHARDS`.
pub type ShardId = u16;

/// How many shards the id space is cut into. A **protocol constant**: every node and every
/// `shard_leases` table must agree on it, and changing it moves almost every customer.
pub const SHARDS: u16 = 1024;

/// The shard of a key: `xxh3_64(key) % SHARDS`. For customers the key is the id's 16 UUID
/// bytes, exactly as [`owner_of`] hashes them ([`shard_of_customer`]).
pub fn shard_of(key: &[u8]) -> ShardId {
    // The remainder is below SHARDS (1024), so it always fits in a u16.
    (xxh3_64(key) % u64::from(SHARDS)) as ShardId
}

/// The shard a customer lives in.
pub fn shard_of_customer(id: &CustomerId) -> ShardId {
    shard_of(id.as_bytes())
}

/// The rendezvous key of a shard: its number as 2 big-endian bytes (fixed layout, golden-tested).
fn shard_key(shard: ShardId) -> [u8; 2] {
    shard.to_be_bytes()
}

/// The member that should own `shard` (rendezvous over member names, as [`owner_of`]), or
/// `None` when there are no members. Which member *may* serve it is the lease's decision.
pub fn owner_of_shard<'a, I>(members: I, shard: ShardId) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    owner_of(members, &shard_key(shard))
}

/// Each member's share of the id space: the fraction of the [`SHARDS`] shards placement gives
/// it (customers are placed by shard, so this is exactly the share of customers it should
/// own, and `share × SHARDS` is the number of shard leases it should hold once they settle).
pub fn shares<'a>(members: &[&'a str]) -> Vec<(&'a str, f64)> {
    let mut counts = vec![0u32; members.len()];
    for shard in 0..SHARDS {
        let owner = owner_of_shard(members.iter().copied(), shard);
        if let Some(pos) = members.iter().position(|m| Some(*m) == owner) {
            counts[pos] += 1;
        }
    }
    members
        .iter()
        .zip(counts)
        .map(|(m, c)| (*m, f64::from(c) / f64::from(SHARDS)))
        .collect()
}

/// A member as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Stable node name: the hashed identity.
    pub name: String,
    /// Cluster address peers dial.
    pub cluster_addr: String,
    /// HTTP API address.
    pub http_addr: String,
    /// Whether it hosts a Database actor.
    pub hosts_db: bool,
}

/// An immutable snapshot of the member set. Published by Membership whenever the set changes;
/// readers (HTTP handlers, Registries) take an `Arc` and never lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    /// Increments with every published change (and when this node detects it was stalled),
    /// so a customer actor can tell whether its cached state predates a membership change.
    pub epoch: u64,
    /// The name of this node.
    pub local: String,
    /// Members sorted by name; always contains the local node while it serves.
    pub members: Vec<Member>,
}

impl Ring {
    /// A ring holding only the local node.
    pub fn single(local: Member) -> Self {
        Self {
            epoch: 1,
            local: local.name.clone(),
            members: vec![local],
        }
    }

    /// The next ring with `members` (sorted and deduplicated by name).
    pub fn next(&self, mut members: Vec<Member>) -> Self {
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members.dedup_by(|a, b| a.name == b.name);
        Self {
            epoch: self.epoch + 1,
            local: self.local.clone(),
            members,
        }
    }

    /// The member that should own a customer: the owner of its shard (DESIGN §3). Leases
    /// are per shard, so routing must agree with them: a customer is never placed by its id
    /// alone.
    pub fn owner(&self, id: &CustomerId) -> Option<&Member> {
        self.shard_owner(shard_of_customer(id))
    }

    /// True when this node owns the customer.
    pub fn is_local_owner(&self, id: &CustomerId) -> bool {
        self.owner(id).is_some_and(|m| m.name == self.local)
    }

    /// The member that should own `shard` under shard placement (DESIGN §3).
    pub fn shard_owner(&self, shard: ShardId) -> Option<&Member> {
        let name = owner_of_shard(self.members.iter().map(|m| m.name.as_str()), shard)?;
        self.members.iter().find(|m| m.name == name)
    }

    /// The shards placement gives this node, ascending (the order grants lock rows in).
    pub fn local_shards(&self) -> Vec<ShardId> {
        (0..SHARDS)
            .filter(|s| self.shard_owner(*s).is_some_and(|m| m.name == self.local))
            .collect()
    }

    /// How many of the [`SHARDS`] shards have another owner in `other` than here.
    pub fn shards_moved(&self, other: &Ring) -> usize {
        (0..SHARDS)
            .filter(|s| {
                self.shard_owner(*s).map(|m| &m.name) != other.shard_owner(*s).map(|m| &m.name)
            })
            .count()
    }

    /// Member names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.name.as_str()).collect()
    }

    /// True when the member names equal `other`'s (ignoring epoch and addresses).
    pub fn same_members(&self, other: &[Member]) -> bool {
        let mut names: Vec<&str> = other.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names == self.names()
    }
}

/// Shared handle to the latest ring.
pub type RingRef = Arc<Ring>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use uuid::Uuid;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    fn keys(count: u32) -> Vec<Uuid> {
        // Deterministic UUID v7s like production ones: millisecond timestamps close together,
        // then "random" bits, so the tests never depend on the clock or an RNG.
        (0..count)
            .map(|i| {
                let random = xxh3_64(&i.to_le_bytes()).to_le_bytes();
                let mut tail = [0u8; 10];
                tail[..8].copy_from_slice(&random);
                tail[8..].copy_from_slice(&(i as u16).to_le_bytes());
                uuid::Builder::from_unix_timestamp_millis(
                    1_760_000_000_000 + u64::from(i / 4),
                    &tail,
                )
                .into_uuid()
            })
            .collect()
    }

    fn owner(members: &[String], id: &Uuid) -> String {
        owner_of(members.iter().map(String::as_str), id.as_bytes())
            .unwrap()
            .to_owned()
    }

    #[test]
    fn golden_owners_never_change() {
        // If this fails, a change moved customers between nodes. That is a data-placement
        // migration, not a refactor: do not update the table without a migration plan.
        let ids = GOLDEN_IDS;
        let three = names(3);
        let five = names(5);
        let got3: Vec<String> = ids
            .iter()
            .map(|i| owner(&three, &i.parse().unwrap()))
            .collect();
        let got5: Vec<String> = ids
            .iter()
            .map(|i| owner(&five, &i.parse().unwrap()))
            .collect();
        assert_eq!(got3, GOLDEN_3, "3-member owners moved");
        assert_eq!(got5, GOLDEN_5, "5-member owners moved");
    }

    const GOLDEN_3: [&str; 12] = [
        "n3", "n2", "n2", "n2", "n1", "n2", "n2", "n2", "n3", "n2", "n2", "n3",
    ];
    const GOLDEN_5: [&str; 12] = [
        "n3", "n5", "n2", "n2", "n1", "n2", "n2", "n2", "n3", "n2", "n2", "n3",
    ];

    #[test]
    fn estimated_shares_sum_to_one_and_are_near_even() {
        let members = ["n1", "n2", "n3"];
        let s = shares(&members);
        let total: f64 = s.iter().map(|(_, v)| v).sum();
        assert!((total - 1.0).abs() < 1e-9);
        assert!(s.iter().all(|(_, v)| (v - 1.0 / 3.0).abs() < 0.03), "{s:?}");
        assert_eq!(shares(&["solo"]), vec![("solo", 1.0)]);
    }

    #[test]
    fn the_owner_does_not_depend_on_member_order() {
        let mut members = names(5);
        let ks = keys(500);
        let before: Vec<String> = ks.iter().map(|k| owner(&members, k)).collect();
        members.reverse();
        members.swap(0, 2);
        let after: Vec<String> = ks.iter().map(|k| owner(&members, k)).collect();
        assert_eq!(before, after);
    }

    #[test]
    fn a_join_moves_at_most_one_nth_plus_two_percent_and_only_to_the_newcomer() {
        let ks = keys(20_000);
        for n in 2..=6 {
            let old = names(n);
            let new = names(n + 1);
            let moved: Vec<&Uuid> = ks
                .iter()
                .filter(|k| owner(&old, k) != owner(&new, k))
                .collect();
            let frac = moved.len() as f64 / ks.len() as f64;
            let ideal = 1.0 / (n + 1) as f64;
            assert!(
                frac <= ideal + 0.02,
                "{n}->{}: moved {frac:.4}, ideal {ideal:.4}",
                n + 1
            );
            let newcomer = format!("n{}", n + 1);
            assert!(moved.iter().all(|k| owner(&new, k) == newcomer));
        }
    }

    #[test]
    fn a_leave_moves_only_the_keys_of_the_leaver() {
        let ks = keys(10_000);
        let all = names(4);
        let without: Vec<String> = all.iter().filter(|n| *n != "n2").cloned().collect();
        for k in &ks {
            let before = owner(&all, k);
            if before != "n2" {
                assert_eq!(owner(&without, k), before);
            }
        }
    }

    #[test]
    fn ownership_is_balanced_within_two_percent() {
        let ks = keys(60_000);
        for n in [3, 5] {
            let members = names(n);
            let mut counts: HashMap<String, usize> = HashMap::new();
            for k in &ks {
                *counts.entry(owner(&members, k)).or_default() += 1;
            }
            for (m, c) in counts {
                let share = c as f64 / ks.len() as f64;
                assert!(
                    (share - 1.0 / n as f64).abs() < 0.02,
                    "{m} owns {share:.4} of {n}"
                );
            }
        }
    }

    const GOLDEN_IDS: [&str; 12] = [
        "77abc86d-5c37-7e26-8ce8-4966b29ddcc9",
        "2442ffee-de6a-7078-8f47-fb14845f2683",
        "7fc3c2c1-eb93-74af-89be-e45c15f85978",
        "336e4be6-f30c-7a46-861e-f5b3323991e1",
        "899495bb-ab1c-75f7-845b-3cd960010db2",
        "d7837a73-5e63-7450-8ca5-48bc37308f37",
        "9b531443-d9d6-76ce-8b32-263a74ea384c",
        "d1e73bb4-cd64-74b0-8d28-27587bf640ed",
        "d93d69a1-bf9d-777d-8b99-53a99fab4936",
        "b9e2abdb-9e65-7233-8d4c-d67f3f7e2d16",
        "3d199396-b28e-74c9-8417-b1849aa3bb66",
        "bcafb082-d44c-7afc-8ee8-a248d1598889",
    ];

    fn shard_owner(members: &[String], shard: ShardId) -> String {
        owner_of_shard(members.iter().map(String::as_str), shard)
            .unwrap()
            .to_owned()
    }

    #[test]
    fn golden_shards_and_shard_owners_never_change() {
        // If this fails, a change moved shards (and with them customers and leases) between
        // nodes, or changed which shard an id is in. That is a data-placement migration, not a
        // refactor: do not update the tables without a migration plan.
        let shards: Vec<ShardId> = GOLDEN_IDS
            .iter()
            .map(|i| shard_of_customer(&i.parse().unwrap()))
            .collect();
        assert_eq!(
            shards,
            [936, 37, 842, 584, 361, 575, 668, 358, 653, 900, 19, 407],
            "ids moved between shards"
        );
        let owners = |n: usize| -> Vec<String> {
            shards.iter().map(|s| shard_owner(&names(n), *s)).collect()
        };
        assert!(owners(1).iter().all(|o| o == "n1"));
        assert_eq!(owners(3), GOLDEN_SHARD_3, "3-member shard owners moved");
        assert_eq!(owners(5), GOLDEN_SHARD_5, "5-member shard owners moved");
        let edges: Vec<String> = [0, 1, 511, SHARDS - 1]
            .iter()
            .map(|s| shard_owner(&names(3), *s))
            .collect();
        assert_eq!(edges, ["n1", "n2", "n2", "n1"], "edge shards moved");
    }

    const GOLDEN_SHARD_3: [&str; 12] = [
        "n2", "n2", "n2", "n1", "n1", "n2", "n2", "n2", "n2", "n3", "n1", "n1",
    ];
    const GOLDEN_SHARD_5: [&str; 12] = [
        "n2", "n5", "n4", "n1", "n1", "n2", "n2", "n5", "n2", "n3", "n1", "n5",
    ];

    #[test]
    fn every_shard_number_is_in_range_and_every_shard_gets_customers() {
        let mut hits = vec![0u32; usize::from(SHARDS)];
        for k in keys(60_000) {
            let shard = shard_of_customer(&k);
            assert!(shard < SHARDS);
            hits[usize::from(shard)] += 1;
        }
        // 60000 / 1024 ≈ 58.6 per shard; an empty or 3x-full shard means a broken hash.
        assert!(hits.iter().all(|h| (10..180).contains(h)), "{hits:?}");
    }

    fn shard_counts(members: &[String]) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for shard in 0..SHARDS {
            *counts.entry(shard_owner(members, shard)).or_default() += 1;
        }
        counts
    }

    #[test]
    fn shards_are_balanced_within_a_few_percent() {
        for n in [3, 5] {
            let counts = shard_counts(&names(n));
            assert_eq!(counts.len(), n, "every member owns shards");
            for (m, c) in counts {
                let share = c as f64 / f64::from(SHARDS);
                assert!(
                    (share - 1.0 / n as f64).abs() < 0.04,
                    "{m} owns {share:.4} of the shards at {n} members"
                );
            }
        }
        // Customers follow their shards, so their balance is the shards' balance.
        let members = names(3);
        let mut customers: HashMap<String, usize> = HashMap::new();
        let ks = keys(30_000);
        for k in &ks {
            *customers
                .entry(shard_owner(&members, shard_of_customer(k)))
                .or_default() += 1;
        }
        for (m, c) in customers {
            let share = c as f64 / ks.len() as f64;
            assert!(
                (share - 1.0 / 3.0).abs() < 0.05,
                "{m} owns {share:.4} of customers"
            );
        }
    }

    #[test]
    fn the_shard_owner_does_not_depend_on_member_order() {
        let mut members = names(5);
        let before: Vec<String> = (0..SHARDS).map(|s| shard_owner(&members, s)).collect();
        members.reverse();
        members.swap(1, 3);
        let after: Vec<String> = (0..SHARDS).map(|s| shard_owner(&members, s)).collect();
        assert_eq!(before, after);
    }

    #[test]
    fn a_join_moves_about_one_nth_of_the_shards_and_only_to_the_newcomer() {
        for n in 2..=6 {
            let (old, new) = (names(n), names(n + 1));
            let moved: Vec<ShardId> = (0..SHARDS)
                .filter(|s| shard_owner(&old, *s) != shard_owner(&new, *s))
                .collect();
            let frac = moved.len() as f64 / f64::from(SHARDS);
            let ideal = 1.0 / (n + 1) as f64;
            assert!(
                (frac - ideal).abs() <= 0.04,
                "{n}->{}: moved {frac:.4}, ideal {ideal:.4}",
                n + 1
            );
            let newcomer = format!("n{}", n + 1);
            assert!(moved.iter().all(|s| shard_owner(&new, *s) == newcomer));
        }
    }

    #[test]
    fn a_leave_moves_only_the_shards_of_the_leaver() {
        let all = names(4);
        let without: Vec<String> = all.iter().filter(|n| *n != "n2").cloned().collect();
        let mut moved = 0;
        for shard in 0..SHARDS {
            let before = shard_owner(&all, shard);
            if before == "n2" {
                moved += 1;
            } else {
                assert_eq!(shard_owner(&without, shard), before);
            }
        }
        let frac = f64::from(moved) / f64::from(SHARDS);
        assert!((frac - 0.25).abs() < 0.04, "the leaver held {frac:.4}");
    }

    #[test]
    fn the_ring_names_shard_owners_and_lists_its_own_shards_in_order() {
        let member = |n: &str| Member {
            name: n.into(),
            cluster_addr: format!("{n}:1"),
            http_addr: format!("{n}:2"),
            hosts_db: false,
        };
        let ring = Ring::single(member("n2")).next(vec![member("n1"), member("n2"), member("n3")]);
        let mine = ring.local_shards();
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "ascending");
        for shard in 0..SHARDS {
            let owner = ring.shard_owner(shard).unwrap();
            assert_eq!(owner.name, shard_owner(&names(3), shard));
            assert_eq!(mine.contains(&shard), owner.name == "n2");
        }
        assert_eq!(
            Ring::single(member("n9")).local_shards().len(),
            usize::from(SHARDS)
        );
    }

    #[test]
    fn the_ring_finds_the_member_record_and_knows_the_local_owner() {
        let member = |n: &str| Member {
            name: n.into(),
            cluster_addr: format!("{n}:1"),
            http_addr: format!("{n}:2"),
            hosts_db: false,
        };
        let ring = Ring::single(member("n1")).next(vec![member("n3"), member("n1"), member("n2")]);
        assert_eq!(ring.names(), ["n1", "n2", "n3"]);
        assert_eq!(ring.epoch, 2);
        let id = keys(1)[0];
        let o = ring.owner(&id).unwrap();
        let by_shard = owner_of_shard(["n1", "n2", "n3"], shard_of_customer(&id)).unwrap();
        assert_eq!(o.name, by_shard);
        assert_eq!(ring.is_local_owner(&id), o.name == "n1");
        assert!(ring.same_members(&[member("n2"), member("n1"), member("n3")]));
        assert!(!ring.same_members(&[member("n2")]));
    }
}
