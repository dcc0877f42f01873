//! Shard leases with fencing tokens: the pure decision core (DESIGN §6 L1–L7).
//!
//! No async, no actors, no I/O and no clock reads here: every function takes the time as an
//! argument ([`HolderInstant`] readings of [`crate::clock::holder_now`] taken at the actor
//! edge), so every rule below is unit-tested with synthetic time and clocks that drift.
//!
//! # The story of a lease
//!
//! Node A starts with a random **incarnation** and registers a row in `node_leases`
//! `(node, incarnation, epoch, seq)`. From then on it **renews** every renew interval:
//! renew *k* is `UPDATE … SET seq=k WHERE node=A AND incarnation=i AND epoch=e`, *k* strictly
//! increasing and never reused ([`HolderLease::renew_sent`] hands out *k* and records the
//! send time `s_k` just before the send). When renew *k* succeeds, A may serve until
//! `s_k + TTL − m` on its **holder clock** — counted from the *send*, because the contender may
//! have started counting the instant the new `seq` committed, which is after `s_k` but may be
//! long before the reply arrived. Validity belongs to the epoch it was earned under.
//!
//! Shards are granted to A in `shard_leases` with a **fencing token** that every grant bumps.
//! A serves a shard only while it is HELD at the current epoch and the clock is before
//! `valid_until(e)`; every write carries the token, and the database refuses a write whose
//! token is no longer the shard's (the fence).
//!
//! Contender B sees A's row in every renew reply's copy of the table ([`Observer`]). If A's
//! `(incarnation, epoch, seq)` stays unchanged for TTL on B's clock — counted from the
//! *receipt* of the first reply showing it, confirmed by a reply received ≥ TTL later — A
//! cannot have earned validity past that point: its last successful renew was sent before
//! that value committed, and `TTL − m` on A's clock ends before `TTL` on B's clock as long as
//! both run within ±ρ of real time and `m ≥ TTL·2ρ/(1+ρ)` ([`LeaseConfig::validate`]). B then
//! bumps A's epoch (conditional on the exact record it saw) and is granted A's shards with new
//! tokens, in one transaction.
//!
//! Per shard, on the holder:
//!
//! ```text
//!   grant, or adopt on reconcile
//!        │
//!        ▼          holder clock ≥ valid_until(e)
//!   HELD(T, e) ──────────────────────────────────▶ LAPSED(T, e)   not_holder at once,
//!    │   ▲                                          │             caches kept
//!    │   └──────── a renew of epoch e extends ──────┘
//!    │
//!    ├── graceful move / SIGTERM ──▶ RELEASING(T) ── writes settled, release at T ──▶ forgotten
//!    │                               no new requests, no cache reads
//!    │
//!    └── (from HELD, LAPSED or RELEASING) renew hit 0 rows, write with T fenced,
//!        new epoch registered, or superseded ──▶ LOST: stop actors, drop caches ──▶ forgotten
//! ```
//!
//! Only HELD serves ([`HolderLease::shard_state`] answers `Serve { token, valid_until }`);
//! every other state answers `not_holder` at once, so a request never waits on a lease.
//!
//! # What each rule protects against
//!
//! * **Counting from the send (L3)** — a reply delayed by seconds must not make the holder
//!   believe it was renewed later than it was.
//! * **Holder clock = raw monotonic + suspend (L3)** — NTP slewing cannot stretch a lease, and a
//!   suspended host wakes up lapsed instead of serving from a lease that expired while it
//!   slept. A renew straddling a suspend earns nothing (the suspend length is imprecise).
//! * **Validity per epoch** — after a revocation and re-registration, a delayed message about
//!   a shard held under the old epoch can never be served from the new epoch's validity.
//! * **Never-reused renew numbers (L2)** — a record a contender saw cannot disappear and come
//!   back (a rolled-back batch, a restored backup, a resend), so "unchanged" means unchanged.
//! * **Counting from receipt, confirming ≥ TTL later (L5)** — the contender never credits
//!   itself with time before it could have known the value.
//! * **Margin (L4)** — clock-rate error between the two hosts up to `m/TTL` (2.5% as shipped).
//! * **Superseded ⇒ exit** — a hung old process of a restarted node must not keep serving.
//! * **L7** — a node that cannot renew stops renewing and leaves the registry, so its shards
//!   move in ~TTL instead of waiting on it; it rejoins only after the path is healthy again.
//!
//! # Deliberately not here
//!
//! * No SQL and no storage: the statements live with the store; this module only decides.
//! * No wall clock and no instant sent to another host: only durations and own-clock readings.
//! * No "lease extension" on grant or registration: validity comes from renews only, so one
//!   rule covers every path (a registration costs at most one renew interval of availability).
//! * No protection against a hypervisor pause the guest cannot see: run `--read-mode=db` there.
//!
//! Drift and schedule simulations (the proof that the pieces fit) are in `sim`, tests only.

pub mod config;
pub mod holder;
pub mod observer;
pub mod reconcile;
#[cfg(test)]
mod sim;

pub use config::{LeaseConfig, RHO_PPM};
pub use holder::{AfterLoss, Earned, HolderLease, Renew, ShardState, ShardStatus, Unearned};
pub use observer::{NodeLeaseRow, Observer, Revocation};
pub use reconcile::{HolderId, Reconciled, ShardLeaseRow, reconcile};

#[doc(no_inline)]
pub use crate::clock::HolderInstant;
