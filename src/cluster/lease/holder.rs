//! The holder's side of the lease: what this incarnation may serve, decided from its own
//! renews and its own clock only (DESIGN §6 L2, L3, L6, L7).
//!
//! [`HolderLease`] is fed every event of the lease's life by the actor that talks to the
//! database — registration, renew sent, renew replied, grant, fence, release, renew-path ping —
//! each with a [`HolderInstant`] read at the edge, and answers one question per request:
//! [`HolderLease::shard_state`] — may this shard be served from cache right now, under which
//! token, until when? Everything else it returns is an instruction for the caller (stop these
//! shards' actors, re-register, exit, leave the registry, rejoin).

use std::collections::BTreeMap;
use std::time::Duration;

use super::config::LeaseConfig;
use super::reconcile::{HolderId, Reconciled, ShardLeaseRow, reconcile};
use crate::clock::{HolderInstant, suspend_changed};
use crate::cluster::placement::ShardId;

/// Most renews kept waiting for a reply. Each new renew supersedes older ones (a later send
/// time earns more), so only a handful can matter; older ones are dropped.
pub const MAX_PENDING_RENEWS: usize = 16;

/// Renew-path pings, each answered within TTL/4, needed in a row before a node that stopped
/// renewing may rejoin (L7).
pub const REJOIN_PINGS: u32 = 3;

/// What the caller must put in renew statement `k` (L2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renew {
    /// This incarnation's renew number: strictly increasing, never reused (a resend gets a
    /// new one), so a value a contender saw can never disappear and come back.
    pub k: u64,
    /// The epoch the renew is for (`WHERE epoch = $e`).
    pub epoch: u64,
}

/// The result of a successful renew reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Earned {
    /// Validity of the current epoch now reaches `valid_until` (a holder-clock reading).
    Extended {
        /// New end of validity, on the holder clock (`HolderInstant::at` axis).
        valid_until: Duration,
    },
    /// The renew succeeded in the database but earns this holder nothing.
    Nothing(Unearned),
}

/// Why a successful renew earned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unearned {
    /// No renew `k` is waiting (never sent, already answered, or dropped as superseded).
    UnknownRenew,
    /// It was sent under an epoch this node no longer holds; validity never crosses epochs.
    StaleEpoch,
    /// The host was suspended between send and reply; the suspend length is known only to
    /// about a second, so the send time cannot be trusted (L3).
    SuspendedMeanwhile,
    /// A later renew already earned more.
    AlreadyLater,
}

/// What the caller must do after a renew matched 0 rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterLoss {
    /// Our incarnation is still in the row but the epoch moved: a contender revoked us. Every
    /// listed shard is LOST (stop its actors, drop caches); register again at a new epoch.
    ReRegister {
        /// Shards that were held or releasing, ascending.
        lost: Vec<ShardId>,
    },
    /// The renew was for an epoch we had already left: nothing to do.
    Stale,
}

/// The answer to "may I serve this shard now?" (L6, R1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardState {
    /// HELD and within validity: serve (cache reads only for rows loaded under `token`),
    /// every write carries `token`, and nothing may be served at or after `valid_until`.
    Serve {
        /// Fencing token of our grant.
        token: u64,
        /// End of validity on the holder clock.
        valid_until: Duration,
    },
    /// Anything else: answer `not_holder` at once, never queue, never start a write.
    NotHolder,
}

/// Full per-shard status, for the caller's bookkeeping and for `status` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardStatus {
    /// Granted under the current epoch and the clock is before `valid_until`.
    Held {
        /// Fencing token.
        token: u64,
        /// Epoch the grant was made under.
        epoch: u64,
        /// End of validity on the holder clock.
        valid_until: Duration,
    },
    /// Granted under the current epoch but validity ran out; HELD again when that epoch is
    /// renewed (caches kept).
    Lapsed {
        /// Fencing token.
        token: u64,
        /// Epoch the grant was made under.
        epoch: u64,
    },
    /// Revoked or fenced: the shard's actors must stop and their caches go.
    Lost {
        /// The token we had.
        token: u64,
    },
    /// Being handed back: no new requests, no cache reads; release with this token.
    Releasing {
        /// Token the release statement names (`WHERE token = $T`).
        token: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shard {
    Held { token: u64, epoch: u64 },
    Lost { token: u64 },
    Releasing { token: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registration {
    /// No epoch (start, or after a loss): register before renewing.
    Unregistered,
    /// Registered at `epoch`; `valid_until` is that epoch's validity (None = none earned yet),
    /// earned while the host's suspend offset was `earned_at_offset`: a suspend since then
    /// (the offset changed) ends it until a renew sent after the suspend succeeds (L3).
    Registered {
        epoch: u64,
        valid_until: Option<Duration>,
        earned_at_offset: Duration,
    },
    /// Another process runs with our name and a newer incarnation: exit.
    Superseded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    Renewing,
    Stopped { good_pings: u32 },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    sent: HolderInstant,
    epoch: u64,
}

/// The lease as this incarnation holds it: epoch, validity, renews in flight, shard states.
#[derive(Debug, Clone)]
pub struct HolderLease {
    config: LeaseConfig,
    incarnation: u64,
    registration: Registration,
    next_k: u64,
    pending: BTreeMap<u64, Pending>,
    shards: BTreeMap<ShardId, Shard>,
    /// Per shard, the highest token this incarnation stopped serving: a release was begun at
    /// it, or a write under it was fenced, or it was found lost. A release whose reply is late
    /// or lost may still commit after any lease-table read, and a fence proves the row moved,
    /// so a row naming us at such a token proves nothing: it is never adopted or served
    /// again, only released again (L6). Grants always carry a newer token.
    spent: BTreeMap<ShardId, u64>,
    liveness: Liveness,
    /// Holder-clock time of the last registration or validity extension (L7).
    last_progress: Duration,
}

impl HolderLease {
    /// A fresh incarnation, unregistered, counting L7 progress from `now`.
    pub fn new(config: LeaseConfig, incarnation: u64, now: HolderInstant) -> Self {
        Self {
            config,
            incarnation,
            registration: Registration::Unregistered,
            next_k: 1,
            pending: BTreeMap::new(),
            shards: BTreeMap::new(),
            spent: BTreeMap::new(),
            liveness: Liveness::Renewing,
            last_progress: now.at,
        }
    }

    /// This process start's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The epoch we are registered at, if any.
    pub fn epoch(&self) -> Option<u64> {
        match self.registration {
            Registration::Registered { epoch, .. } => Some(epoch),
            _ => None,
        }
    }

    /// End of the current epoch's validity on the holder clock, if any renew earned one.
    pub fn valid_until(&self) -> Option<Duration> {
        match self.registration {
            Registration::Registered { valid_until, .. } => valid_until,
            _ => None,
        }
    }

    /// True once another process with our name and a newer incarnation took the row: the
    /// caller must exit.
    pub fn is_superseded(&self) -> bool {
        self.registration == Registration::Superseded
    }

    /// Our `node_leases` row now names us at `epoch`. Validity starts empty (it belongs to
    /// the epoch it was earned under), and shards still held under an older epoch are LOST.
    pub fn registered(&mut self, epoch: u64, now: HolderInstant) {
        if self.is_superseded() {
            return;
        }
        self.registration = Registration::Registered {
            epoch,
            valid_until: None,
            earned_at_offset: now.suspended,
        };
        self.pending.clear();
        self.last_progress = now.at;
        for shard in self.shards.values_mut() {
            if let Shard::Held { token, epoch: e } = *shard
                && e != epoch
            {
                *shard = Shard::Lost { token };
            }
        }
    }

    /// Records `s_k` just before renew `k` is sent and returns what to send; `None` when there
    /// is nothing to renew (unregistered, superseded, or stopped by L7). Every call is a new
    /// `k`: a resend is a new renew.
    pub fn renew_sent(&mut self, at: HolderInstant) -> Option<Renew> {
        let epoch = self.epoch()?;
        if self.liveness != Liveness::Renewing {
            return None;
        }
        let k = self.next_k;
        self.next_k += 1;
        let validity = self.config.validity();
        self.pending.retain(|_, p| p.sent.at + validity > at.at);
        while self.pending.len() >= MAX_PENDING_RENEWS {
            self.pending.pop_first();
        }
        self.pending.insert(k, Pending { sent: at, epoch });
        Some(Renew { k, epoch })
    }

    /// Renew `k` for `epoch` updated our row; `at_reply` is when the reply arrived. Extends
    /// the epoch's validity to `max(valid_until, s_k + TTL − m)` when it was earned under the
    /// current epoch and no suspend happened in between.
    pub fn renew_succeeded(&mut self, k: u64, epoch: u64, at_reply: HolderInstant) -> Earned {
        let Some(p) = self.pending.remove(&k).filter(|p| p.epoch == epoch) else {
            return Earned::Nothing(Unearned::UnknownRenew);
        };
        // Older renews can only earn less than this one.
        self.pending.retain(|older, _| *older > k);
        let Registration::Registered {
            epoch: current,
            valid_until,
            earned_at_offset,
        } = &mut self.registration
        else {
            return Earned::Nothing(Unearned::StaleEpoch);
        };
        if *current != epoch {
            return Earned::Nothing(Unearned::StaleEpoch);
        }
        if suspend_changed(at_reply.suspended, p.sent.suspended) {
            return Earned::Nothing(Unearned::SuspendedMeanwhile);
        }
        let earned = p.sent.at + self.config.validity();
        // Validity earned before a suspend is void (see `shard_status`), so a renew sent after
        // one replaces it outright, even if it reaches less far.
        let same_offset = !suspend_changed(*earned_at_offset, p.sent.suspended);
        if same_offset && valid_until.is_some_and(|v| v >= earned) {
            return Earned::Nothing(Unearned::AlreadyLater);
        }
        *valid_until = Some(earned);
        *earned_at_offset = p.sent.suspended;
        self.last_progress = at_reply.at;
        Earned::Extended {
            valid_until: earned,
        }
    }

    /// Renew for `epoch` matched 0 rows and our incarnation is still in the row: a contender
    /// revoked this node (L2). Every shard is LOST and the node must register again.
    pub fn renew_lost(&mut self, epoch: u64) -> AfterLoss {
        if self.epoch() != Some(epoch) {
            return AfterLoss::Stale;
        }
        self.registration = Registration::Unregistered;
        self.pending.clear();
        AfterLoss::ReRegister {
            lost: self.lose_all(),
        }
    }

    /// A renew found a different incarnation in our row: this process is a stale duplicate of
    /// a restarted node. Every shard is LOST and the caller must exit; returns the shards.
    pub fn renew_superseded(&mut self) -> Vec<ShardId> {
        self.registration = Registration::Superseded;
        self.pending.clear();
        self.lose_all()
    }

    fn lose_all(&mut self) -> Vec<ShardId> {
        let mut lost = Vec::new();
        for (id, shard) in &mut self.shards {
            match *shard {
                Shard::Held { token, .. } | Shard::Releasing { token } => {
                    *shard = Shard::Lost { token };
                    lost.push(*id);
                }
                Shard::Lost { .. } => {}
            }
        }
        lost
    }

    /// A grant (or a reconcile adoption) gave us `shard` at `token` under `epoch`. Refused
    /// (false) when `epoch` is not our current epoch: such a grant can never be served, and
    /// the caller should reconcile or release it.
    pub fn granted(&mut self, shard: ShardId, token: u64, epoch: u64) -> bool {
        if self.epoch() != Some(epoch) || self.is_spent(shard, token) {
            return false;
        }
        self.shards.insert(shard, Shard::Held { token, epoch });
        true
    }

    /// A write on `shard` carrying `token` was fenced: the shard moved. LOST, unless we have
    /// since been granted it again under a newer token (then the old write's fence says
    /// nothing about the new grant). Returns true when the shard became LOST.
    pub fn on_fenced(&mut self, shard: ShardId, token: u64) -> bool {
        let Some(entry) = self.shards.get_mut(&shard) else {
            return false;
        };
        let live = matches!(entry, Shard::Held { .. } | Shard::Releasing { .. });
        if !live || entry.token() != token {
            return false;
        }
        *entry = Shard::Lost { token };
        self.spend(shard, token);
        true
    }

    /// Starts handing `shard` back (graceful move or SIGTERM): no new requests, no cache
    /// reads. Returns the token the release statement must name, or `None` if not held.
    pub fn begin_release(&mut self, shard: ShardId) -> Option<u64> {
        let entry = self.shards.get_mut(&shard)?;
        match *entry {
            Shard::Held { token, .. } | Shard::Releasing { token } => {
                *entry = Shard::Releasing { token };
                self.spend(shard, token);
                Some(token)
            }
            Shard::Lost { .. } => None,
        }
    }

    /// Records that `shard` is never to be served again at `token` or below.
    fn spend(&mut self, shard: ShardId, token: u64) {
        let highest = self.spent.entry(shard).or_insert(token);
        *highest = (*highest).max(token);
    }

    /// Whether `shard`'s grant at `token` was given up (released, fenced or lost): that grant
    /// may be gone even if a lease-table read still names us at it.
    fn is_spent(&self, shard: ShardId, token: u64) -> bool {
        self.spent.get(&shard).is_some_and(|&r| token <= r)
    }

    /// Forgets `shard` (its release committed, or its LOST actors are stopped).
    pub fn forget(&mut self, shard: ShardId) {
        self.shards.remove(&shard);
    }

    /// May `shard` be served at `now`? Only in HELD under the current epoch with
    /// `now < valid_until(e)` (L6, R1); the check and the read belong in one actor turn.
    pub fn shard_state(&self, shard: ShardId, now: HolderInstant) -> ShardState {
        match self.shard_status(shard, now) {
            Some(ShardStatus::Held {
                token, valid_until, ..
            }) => ShardState::Serve { token, valid_until },
            _ => ShardState::NotHolder,
        }
    }

    /// The full status of `shard` at `now`; `None` when we have no record of it.
    pub fn shard_status(&self, shard: ShardId, now: HolderInstant) -> Option<ShardStatus> {
        Some(match *self.shards.get(&shard)? {
            Shard::Held { token, epoch } => match self.registration {
                Registration::Registered {
                    epoch: current,
                    valid_until: Some(valid_until),
                    earned_at_offset,
                } if current == epoch
                    && now.at < valid_until
                    && !suspend_changed(now.suspended, earned_at_offset) =>
                {
                    ShardStatus::Held {
                        token,
                        epoch,
                        valid_until,
                    }
                }
                _ => ShardStatus::Lapsed { token, epoch },
            },
            Shard::Lost { token } => ShardStatus::Lost { token },
            Shard::Releasing { token } => ShardStatus::Releasing { token },
        })
    }

    /// Reconciles after a grant or release reply was lost (L6): decides per shard from the
    /// rows and placement, adopts what it should at the stored token, marks LOST what the
    /// rows no longer give us, and returns every decision for the caller to act on (stop
    /// actors of LOST shards, send the releases). Empty when unregistered.
    pub fn reconcile(
        &mut self,
        node: &str,
        rows: &[ShardLeaseRow],
        placed_here: impl Fn(ShardId) -> bool,
    ) -> Vec<Reconciled> {
        let Some(epoch) = self.epoch() else {
            return Vec::new();
        };
        let me = HolderId {
            node: node.to_owned(),
            incarnation: self.incarnation,
            epoch,
        };
        let adoptable = |shard: ShardId| {
            placed_here(shard)
                && rows
                    .iter()
                    .find(|r| r.shard == shard)
                    .is_some_and(|r| !self.is_spent(shard, r.token))
        };
        let decisions = reconcile(&me, rows, &self.held(), adoptable);
        for d in &decisions {
            match *d {
                Reconciled::Adopt { shard, token } => {
                    self.shards.insert(shard, Shard::Held { token, epoch });
                }
                Reconciled::Release { shard, token } => {
                    self.shards.insert(shard, Shard::Releasing { token });
                    self.spend(shard, token);
                }
                Reconciled::Lost { shard } => {
                    if let Some(entry) = self.shards.get_mut(&shard) {
                        let token = entry.token();
                        *entry = Shard::Lost { token };
                        self.spend(shard, token);
                    }
                }
            }
        }
        decisions
    }

    /// Shards we hold or are releasing under the current epoch, with their tokens, ascending:
    /// what reconcile compares the database rows against.
    pub fn held(&self) -> Vec<(ShardId, u64)> {
        let Some(epoch) = self.epoch() else {
            return Vec::new();
        };
        self.shards
            .iter()
            .filter_map(|(id, s)| match *s {
                Shard::Held { token, epoch: e } if e == epoch => Some((*id, token)),
                Shard::Releasing { token } => Some((*id, token)),
                _ => None,
            })
            .collect()
    }

    /// Shards in RELEASING, with the token each release names: a LeaseKeeper that
    /// (re)starts sends their releases again, since the list of releases it owed was its
    /// own state (a release at a token that moved on changes nothing).
    pub fn releasing(&self) -> Vec<(ShardId, u64)> {
        self.shards
            .iter()
            .filter_map(|(id, s)| match *s {
                Shard::Releasing { token } => Some((*id, token)),
                _ => None,
            })
            .collect()
    }

    /// L7: true when no renew (or registration) has made progress for a whole TTL. The caller
    /// then calls [`stop_renewing`](Self::stop_renewing) and leaves `customer-registry`, so
    /// that others may take over instead of everyone waiting on a node that cannot renew.
    pub fn should_stop_renewing(&self, now: HolderInstant) -> bool {
        self.liveness == Liveness::Renewing && now.at >= self.last_progress + self.config.ttl
    }

    /// The caller stopped renewing and left the registry; rejoining now needs
    /// [`REJOIN_PINGS`] good renew-path pings in a row.
    pub fn stop_renewing(&mut self) {
        self.liveness = Liveness::Stopped { good_pings: 0 };
    }

    /// True while stopped by L7.
    pub fn is_stopped(&self) -> bool {
        matches!(self.liveness, Liveness::Stopped { .. })
    }

    /// A renew-path ping came back after `rtt`. Counts towards rejoining only when within
    /// TTL/4; a slower answer starts the count again.
    pub fn ping_answered(&mut self, rtt: Duration) {
        if let Liveness::Stopped { good_pings } = &mut self.liveness {
            *good_pings = if rtt <= self.config.ttl / 4 {
                good_pings.saturating_add(1)
            } else {
                0
            };
        }
    }

    /// A renew-path ping failed or timed out: the count starts again.
    pub fn ping_failed(&mut self) {
        if let Liveness::Stopped { good_pings } = &mut self.liveness {
            *good_pings = 0;
        }
    }

    /// True when a stopped node has seen [`REJOIN_PINGS`] good pings in a row.
    pub fn may_rejoin(&self) -> bool {
        matches!(self.liveness, Liveness::Stopped { good_pings } if good_pings >= REJOIN_PINGS)
    }

    /// The caller rejoined `customer-registry`: renew again, with a fresh TTL to make
    /// progress. (If a contender revoked us meanwhile, the next renew reports the loss.)
    pub fn rejoined(&mut self, now: HolderInstant) {
        self.liveness = Liveness::Renewing;
        self.last_progress = now.at;
    }
}

impl Shard {
    fn token(&self) -> u64 {
        match *self {
            Shard::Held { token, .. } | Shard::Lost { token } | Shard::Releasing { token } => token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INC: u64 = 0xfeed;

    fn at(ms: u64) -> HolderInstant {
        HolderInstant {
            at: Duration::from_millis(ms),
            suspended: Duration::ZERO,
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Registered at epoch 1 at t=0, holding shard 7 at token 3.
    fn holding() -> HolderLease {
        let mut lease = HolderLease::new(LeaseConfig::default(), INC, at(0));
        lease.registered(1, at(0));
        assert!(lease.granted(7, 3, 1));
        lease
    }

    /// Sends a renew at `sent` and has it succeed at `reply`.
    fn renew(lease: &mut HolderLease, sent: u64, reply: u64) -> Earned {
        let r = lease.renew_sent(at(sent)).unwrap();
        lease.renew_succeeded(r.k, r.epoch, at(reply))
    }

    #[test]
    fn a_granted_shard_is_not_served_before_any_renew_succeeded() {
        let lease = holding();
        assert_eq!(lease.shard_state(7, at(1)), ShardState::NotHolder);
        assert_eq!(
            lease.shard_status(7, at(1)),
            Some(ShardStatus::Lapsed { token: 3, epoch: 1 })
        );
    }

    #[test]
    fn a_renew_makes_the_shard_servable_until_its_send_time_plus_ttl_minus_margin() {
        let mut lease = holding();
        // Sent at 100, answered at 400: validity counts from the send, not the reply.
        assert_eq!(
            renew(&mut lease, 100, 400),
            Earned::Extended {
                valid_until: ms(2050)
            }
        );
        let serve = ShardState::Serve {
            token: 3,
            valid_until: ms(2050),
        };
        assert_eq!(lease.shard_state(7, at(400)), serve);
        assert_eq!(lease.shard_state(7, at(2049)), serve);
        assert_eq!(lease.shard_state(7, at(2050)), ShardState::NotHolder);
    }

    #[test]
    fn a_lapsed_shard_is_held_again_when_the_same_epoch_is_renewed() {
        let mut lease = holding();
        renew(&mut lease, 0, 10);
        assert_eq!(
            lease.shard_status(7, at(3000)),
            Some(ShardStatus::Lapsed { token: 3, epoch: 1 })
        );
        renew(&mut lease, 3000, 3010);
        assert_eq!(
            lease.shard_state(7, at(3010)),
            ShardState::Serve {
                token: 3,
                valid_until: ms(4950)
            }
        );
    }

    #[test]
    fn validity_only_grows_even_when_replies_arrive_out_of_order() {
        let mut lease = holding();
        let early = lease.renew_sent(at(0)).unwrap();
        let late = lease.renew_sent(at(500)).unwrap();
        assert!(late.k > early.k, "renew numbers increase");
        assert_eq!(
            lease.renew_succeeded(late.k, 1, at(600)),
            Earned::Extended {
                valid_until: ms(2450)
            }
        );
        // The earlier renew was superseded by the later one's success.
        assert_eq!(
            lease.renew_succeeded(early.k, 1, at(700)),
            Earned::Nothing(Unearned::UnknownRenew)
        );
        assert_eq!(lease.valid_until(), Some(ms(2450)));
    }

    #[test]
    fn an_earlier_renew_answered_first_still_earns_and_the_later_one_extends_further() {
        let mut lease = holding();
        let early = lease.renew_sent(at(0)).unwrap();
        let late = lease.renew_sent(at(500)).unwrap();
        lease.renew_succeeded(early.k, 1, at(100));
        assert_eq!(lease.valid_until(), Some(ms(1950)));
        lease.renew_succeeded(late.k, 1, at(600));
        assert_eq!(lease.valid_until(), Some(ms(2450)));
    }

    #[test]
    fn a_renew_number_is_never_reused_even_across_epochs() {
        let mut lease = holding();
        let a = lease.renew_sent(at(0)).unwrap();
        lease.renew_lost(1);
        lease.registered(2, at(10));
        let b = lease.renew_sent(at(20)).unwrap();
        assert!(b.k > a.k);
        assert_eq!(b.epoch, 2);
        // A reply can only be used once.
        assert!(matches!(
            lease.renew_succeeded(b.k, 2, at(30)),
            Earned::Extended { .. }
        ));
        assert_eq!(
            lease.renew_succeeded(b.k, 2, at(31)),
            Earned::Nothing(Unearned::UnknownRenew)
        );
    }

    #[test]
    fn a_renew_straddling_a_suspend_earns_nothing() {
        let mut lease = holding();
        let r = lease.renew_sent(at(0)).unwrap();
        let after_suspend = HolderInstant {
            at: ms(5000),
            suspended: ms(4000),
        };
        assert_eq!(
            lease.renew_succeeded(r.k, r.epoch, after_suspend),
            Earned::Nothing(Unearned::SuspendedMeanwhile)
        );
        assert_eq!(lease.shard_state(7, after_suspend), ShardState::NotHolder);
    }

    #[test]
    fn a_suspend_offset_that_only_jitters_between_send_and_reply_still_earns_validity() {
        // A host suspended once (or a time namespace): the offset is large and its readings
        // differ by nanoseconds.
        let offset = ms(3_600_000);
        let mut lease = HolderLease::new(LeaseConfig::default(), INC, at(0));
        let sent = HolderInstant {
            at: ms(10) + offset,
            suspended: offset,
        };
        lease.registered(1, sent);
        assert!(lease.granted(7, 3, 1));
        let r = lease.renew_sent(sent).unwrap();
        let reply = HolderInstant {
            at: ms(20) + offset + Duration::from_nanos(30),
            suspended: offset + Duration::from_nanos(30),
        };
        assert!(matches!(
            lease.renew_succeeded(r.k, r.epoch, reply),
            Earned::Extended { .. }
        ));
        let later = HolderInstant {
            at: ms(500) + offset,
            suspended: offset - Duration::from_nanos(45),
        };
        assert!(matches!(
            lease.shard_state(7, later),
            ShardState::Serve { token: 3, .. }
        ));
    }

    #[test]
    fn a_suspend_after_the_renew_ends_its_validity_until_a_renew_sent_after_it_succeeds() {
        let mut lease = holding();
        renew(&mut lease, 0, 10);
        // The host slept 1.9 s but the kernel counted only 1 s: the clock says 1.5 s, well
        // inside the validity earned at 0, yet the offset moved.
        let woke = HolderInstant {
            at: ms(1500),
            suspended: ms(1000),
        };
        assert_eq!(lease.shard_state(7, woke), ShardState::NotHolder);
        assert!(matches!(
            lease.shard_status(7, woke),
            Some(ShardStatus::Lapsed { .. })
        ));
        // A renew sent after the wake-up brings it back.
        let r = lease.renew_sent(woke).unwrap();
        let reply = HolderInstant {
            at: ms(1510),
            suspended: ms(1000),
        };
        assert!(matches!(
            lease.renew_succeeded(r.k, r.epoch, reply),
            Earned::Extended { .. }
        ));
        assert!(matches!(
            lease.shard_state(7, reply),
            ShardState::Serve { token: 3, .. }
        ));
    }

    #[test]
    fn a_suspend_counts_as_elapsed_time_so_the_lease_lapses_through_it() {
        let mut lease = holding();
        renew(&mut lease, 0, 10);
        let woke = HolderInstant {
            at: ms(20) + ms(3000),
            suspended: ms(3000),
        };
        assert_eq!(lease.shard_state(7, woke), ShardState::NotHolder);
    }

    #[test]
    fn a_renew_lost_loses_every_shard_and_asks_for_a_new_epoch() {
        let mut lease = holding();
        assert!(lease.granted(9, 4, 1));
        assert_eq!(lease.begin_release(9), Some(4));
        renew(&mut lease, 0, 10);
        assert_eq!(
            lease.renew_lost(1),
            AfterLoss::ReRegister { lost: vec![7, 9] }
        );
        assert_eq!(lease.epoch(), None);
        assert_eq!(lease.shard_state(7, at(20)), ShardState::NotHolder);
        assert_eq!(
            lease.shard_status(7, at(20)),
            Some(ShardStatus::Lost { token: 3 })
        );
        assert_eq!(
            lease.renew_sent(at(30)),
            None,
            "nothing to renew until registered"
        );
    }

    #[test]
    fn validity_belongs_to_its_epoch_and_resets_when_the_epoch_changes() {
        let mut lease = holding();
        let pending = lease.renew_sent(at(0)).unwrap();
        renew(&mut lease, 100, 110);
        lease.renew_lost(1);
        lease.registered(2, at(200));
        assert_eq!(lease.valid_until(), None, "epoch 2 starts with no validity");
        // A late reply from epoch 1 earns nothing for epoch 2.
        assert_eq!(
            lease.renew_succeeded(pending.k, 1, at(210)),
            Earned::Nothing(Unearned::UnknownRenew)
        );
        // Epoch 2 validity does not revive the shard held under epoch 1 (a delayed LOST).
        renew(&mut lease, 300, 310);
        assert_eq!(lease.shard_state(7, at(320)), ShardState::NotHolder);
        assert!(lease.granted(7, 5, 2));
        assert_eq!(
            lease.shard_state(7, at(320)),
            ShardState::Serve {
                token: 5,
                valid_until: ms(2250)
            }
        );
    }

    #[test]
    fn a_shard_held_under_an_old_epoch_is_lost_on_re_registration() {
        let mut lease = holding();
        lease.registered(2, at(10));
        assert_eq!(
            lease.shard_status(7, at(10)),
            Some(ShardStatus::Lost { token: 3 })
        );
    }

    #[test]
    fn a_late_renew_loss_from_an_old_epoch_is_ignored() {
        let mut lease = holding();
        lease.renew_lost(1);
        lease.registered(2, at(10));
        assert!(lease.granted(8, 1, 2));
        assert_eq!(lease.renew_lost(1), AfterLoss::Stale);
        assert_eq!(lease.epoch(), Some(2));
    }

    #[test]
    fn a_grant_under_an_epoch_we_left_is_refused() {
        let mut lease = holding();
        assert!(!lease.granted(8, 1, 0));
        assert_eq!(lease.shard_status(8, at(0)), None);
    }

    #[test]
    fn a_superseded_process_loses_everything_and_never_renews_again() {
        let mut lease = holding();
        renew(&mut lease, 0, 10);
        assert_eq!(lease.renew_superseded(), vec![7]);
        assert!(lease.is_superseded());
        assert_eq!(lease.shard_state(7, at(20)), ShardState::NotHolder);
        lease.registered(5, at(30));
        assert_eq!(lease.renew_sent(at(40)), None);
    }

    #[test]
    fn a_fenced_write_loses_the_shard_unless_it_was_granted_again_since() {
        let mut lease = holding();
        renew(&mut lease, 0, 10);
        assert!(!lease.on_fenced(7, 2), "a fence of an older token");
        assert!(matches!(
            lease.shard_state(7, at(20)),
            ShardState::Serve { .. }
        ));
        assert!(lease.on_fenced(7, 3));
        assert_eq!(lease.shard_state(7, at(20)), ShardState::NotHolder);
        assert!(!lease.on_fenced(42, 1), "unknown shard");
    }

    #[test]
    fn a_releasing_shard_is_not_served_and_names_its_token() {
        let mut lease = holding();
        renew(&mut lease, 0, 10);
        assert_eq!(lease.begin_release(7), Some(3));
        assert_eq!(lease.shard_state(7, at(20)), ShardState::NotHolder);
        assert_eq!(lease.held(), vec![(7, 3)]);
        lease.forget(7);
        assert_eq!(lease.shard_status(7, at(20)), None);
        assert_eq!(lease.begin_release(7), None);
    }

    #[test]
    fn renews_waiting_for_replies_are_bounded() {
        let mut lease = holding();
        let first = lease.renew_sent(at(0)).unwrap();
        for i in 1..100 {
            lease.renew_sent(at(i)).unwrap();
        }
        assert!(lease.pending.len() <= MAX_PENDING_RENEWS);
        assert_eq!(
            lease.renew_succeeded(first.k, 1, at(200)),
            Earned::Nothing(Unearned::UnknownRenew)
        );
    }

    #[test]
    fn reconcile_adopts_rows_naming_us_releases_misplaced_ones_and_loses_the_rest() {
        let mut lease = holding();
        renew(&mut lease, 0, 10);
        let row = |shard, holder: &str, inc, token| ShardLeaseRow {
            shard,
            holder: Some(holder.into()),
            holder_incarnation: inc,
            holder_epoch: 1,
            token,
        };
        // The grant of 8 committed but its reply was lost; 9 is ours but placed elsewhere;
        // 7 (which we believed held) was granted to n2 meanwhile.
        let rows = [
            row(7, "n2", 5, 4),
            row(8, "n1", INC, 12),
            row(9, "n1", INC, 2),
        ];
        let decisions = lease.reconcile("n1", &rows, |s| s != 9);
        assert_eq!(
            decisions,
            [
                Reconciled::Lost { shard: 7 },
                Reconciled::Adopt {
                    shard: 8,
                    token: 12
                },
                Reconciled::Release { shard: 9, token: 2 },
            ]
        );
        assert_eq!(lease.shard_state(7, at(20)), ShardState::NotHolder);
        assert_eq!(
            lease.shard_state(8, at(20)),
            ShardState::Serve {
                token: 12,
                valid_until: ms(1950)
            }
        );
        assert_eq!(
            lease.shard_status(9, at(20)),
            Some(ShardStatus::Releasing { token: 2 })
        );
    }

    /// A lease-table read that predates our own release (or a fence) still names us at the
    /// old token. Adopting it would serve a cache from before the shard moved away and back
    /// — stale reads until the next write. Such a row is released again, never adopted.
    #[test]
    fn a_row_naming_us_at_a_token_we_released_or_saw_fenced_is_never_adopted() {
        let mut lease = holding();
        renew(&mut lease, 0, 10);
        assert!(lease.granted(8, 5, 1));
        assert_eq!(lease.begin_release(7), Some(3));
        assert!(lease.on_fenced(8, 5));
        let row = |shard, token| ShardLeaseRow {
            shard,
            holder: Some("n1".into()),
            holder_incarnation: INC,
            holder_epoch: 1,
            token,
        };
        // Placement gives both shards back to us; the (stale) rows still name us.
        let decisions = lease.reconcile("n1", &[row(7, 3), row(8, 5)], |_| true);
        assert_eq!(
            decisions,
            [
                Reconciled::Release { shard: 7, token: 3 },
                Reconciled::Release { shard: 8, token: 5 },
            ]
        );
        assert_eq!(lease.shard_state(7, at(20)), ShardState::NotHolder);
        assert_eq!(lease.shard_state(8, at(20)), ShardState::NotHolder);
        // Nor does a grant reply at a spent token bring it back; a newer grant does.
        assert!(!lease.granted(7, 3, 1));
        assert!(lease.granted(7, 6, 1));
        assert_eq!(
            lease.shard_state(7, at(20)),
            ShardState::Serve {
                token: 6,
                valid_until: ms(1950)
            }
        );
    }

    #[test]
    fn a_node_whose_renews_made_no_progress_for_a_ttl_stops_renewing() {
        let mut lease = holding();
        renew(&mut lease, 0, 100);
        assert!(!lease.should_stop_renewing(at(2099)));
        assert!(lease.should_stop_renewing(at(2100)));
        // A renew that succeeds but earns nothing is not progress.
        let r = lease.renew_sent(at(1000)).unwrap();
        let suspended = HolderInstant {
            at: ms(1100),
            suspended: ms(1),
        };
        lease.renew_succeeded(r.k, 1, suspended);
        assert!(lease.should_stop_renewing(at(2100)));
        lease.stop_renewing();
        assert!(lease.is_stopped());
        assert!(!lease.should_stop_renewing(at(9000)), "already stopped");
        assert_eq!(lease.renew_sent(at(2200)), None);
    }

    #[test]
    fn a_stopped_node_rejoins_after_three_quick_pings_in_a_row() {
        let mut lease = holding();
        lease.stop_renewing();
        let quick = ms(500); // TTL/4
        lease.ping_answered(quick);
        lease.ping_answered(quick);
        lease.ping_answered(ms(501));
        assert!(!lease.may_rejoin(), "a slow ping restarts the count");
        lease.ping_answered(quick);
        lease.ping_failed();
        lease.ping_answered(quick);
        lease.ping_answered(quick);
        assert!(!lease.may_rejoin(), "a failed ping restarts the count");
        lease.ping_answered(quick);
        assert!(lease.may_rejoin());
        lease.rejoined(at(5000));
        assert!(!lease.is_stopped());
        assert!(!lease.should_stop_renewing(at(6999)));
        assert!(lease.should_stop_renewing(at(7000)));
        assert!(lease.renew_sent(at(5000)).is_some());
    }
}
