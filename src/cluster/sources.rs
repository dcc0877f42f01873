//! Who may hold the cluster port's pre-authentication slots, judged by source address.
//!
//! The cluster port (`cluster::gate`) has a fixed number of slots for connections that have
//! not authenticated yet. Without a per-source rule, one address holding them all (64 silent
//! sockets, reconnected as soon as they close) keeps every new node out. [`Sources`] decides at
//! accept, with no I/O and the time passed in:
//!
//! ```text
//!  accept from ip ──▶ --cluster-allow set and ip outside it? ──▶ refuse (not_allowed)
//!                 ──▶ ip in a cookie-failure backoff?          ──▶ refuse (backoff)
//!                 ──▶ ip has --cluster-max-unauthenticated-per-source pending? ──▶ refuse (per_source)
//!                 ──▶ all slots taken, or only the known-peer reserve left and ip unknown?
//!                                                             ──▶ refuse (over_cap)
//!                 ──▶ admitted; the slot is released when its handshake ends either way
//! ```
//!
//! *Known* sources are addresses that completed a cookie handshake with this node (either
//! direction) within the last [`KNOWN_FOR`]: members, seeds and nodes that restart. They are
//! not held to the per-source cap (many nodes may share a host, or a NAT), may use the
//! [`reserved`](SourcePolicy::reserved) slots strangers cannot, get the full handshake
//! deadline instead of [`FIRST_FRAME_TIMEOUT`] for their first frame, and never enter a backoff
//! (a misconfigured node on a member's host must not lock its neighbours out).
//!
//! A *cookie failure* is a connection that sent its whole side of the handshake and was closed
//! without this node's acknowledgement. [`FAILURES_BEFORE_BACKOFF`] of them from one unknown
//! address within [`FAILURE_WINDOW`] refuse that address for a backoff that doubles per further
//! failure, up to [`MAX_BACKOFF`]: guessing a cookie online costs seconds per guess instead of
//! a thousand guesses a second.
//!
//! What this does not do: tell apart clients behind one NAT address (they share its cap; raise
//! `--cluster-max-unauthenticated-per-source` or list them in `--cluster-allow`), or limit
//! authenticated sessions (a cookie holder is a node; see `cluster::gate`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use super::handshake::Refusal;

/// How long an address stays known after its last completed handshake.
pub const KNOWN_FOR: Duration = Duration::from_secs(3600);

/// Deadline for an unknown source's first frame (its name), from accept. An honest dialer
/// sends it right after connecting (after TLS, a few round trips); a silent socket holds its
/// slot this long instead of the whole handshake deadline.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(1);

/// Cookie failures from one unknown address, within [`FAILURE_WINDOW`], before it backs off.
pub const FAILURES_BEFORE_BACKOFF: u32 = 5;

/// Window in which cookie failures from one address are counted.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The first backoff; each further failure doubles it.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Most addresses remembered (known ones, and ones with failures): a flood from many
/// addresses cannot grow the table without bound; the stalest entries go first.
pub const MAX_REMEMBERED: usize = 4096;

/// An address range, `10.0.0.0/8` or `fd00::/8`; a bare address is a range of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this range (an IPv4 address also matches as IPv4-mapped IPv6).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), self.prefix, 32)
                    == masked(u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), self.prefix, 128)
                    == masked(u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let shift = width - prefix;
    bits >> shift
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address range such as 10.0.0.0/8 or 127.0.0.1");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let net = net.to_canonical();
        let width = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(bad)?,
            None => width,
        };
        Ok(Self { net, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The limits (from the node's flags).
#[derive(Debug, Clone)]
pub struct SourcePolicy {
    /// All pre-authentication slots (`--cluster-max-unauthenticated`).
    pub total: usize,
    /// Pending connections one unknown address may hold
    /// (`--cluster-max-unauthenticated-per-source`; 0 = no per-address cap).
    pub per_source: usize,
    /// Slots only known addresses may take: a quarter of `total`.
    pub reserved: usize,
    /// If not empty, only these ranges may connect at all (`--cluster-allow`).
    pub allow: Vec<Cidr>,
}

impl SourcePolicy {
    /// The policy for `total` slots, `per_source` per unknown address, and an allow list.
    pub fn new(total: usize, per_source: usize, allow: Vec<Cidr>) -> Self {
        Self {
            total,
            per_source,
            reserved: total / 4,
            allow,
        }
    }
}

/// What the table remembers of one address.
#[derive(Debug, Default)]
struct Entry {
    /// Connections from it in their handshake now.
    pending: usize,
    /// Its last completed handshake, if any.
    known_at: Option<Instant>,
    /// Cookie failures in the current window, and when the window started.
    failures: u32,
    window_start: Option<Instant>,
    /// Refused until then.
    backoff_until: Option<Instant>,
    /// Last time anything happened (for eviction).
    touched: Option<Instant>,
}

/// The per-address state of the cluster port (see the module doc).
#[derive(Debug)]
pub struct Sources {
    policy: SourcePolicy,
    entries: HashMap<IpAddr, Entry>,
    pending: usize,
}

impl Sources {
    /// An empty table under `policy`.
    pub fn new(policy: SourcePolicy) -> Self {
        Self {
            policy,
            entries: HashMap::new(),
            pending: 0,
        }
    }

    /// Whether `ip` completed a handshake within [`KNOWN_FOR`] of `now`.
    pub fn is_known(&self, ip: IpAddr, now: Instant) -> bool {
        self.entries
            .get(&ip.to_canonical())
            .and_then(|e| e.known_at)
            .is_some_and(|at| now.saturating_duration_since(at) < KNOWN_FOR)
    }

    /// Connections in their handshake now, from all addresses.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Decides on a connection from `ip` at `now`; when admitted it holds a slot until
    /// [`release`](Self::release).
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        let ip = ip.to_canonical();
        if !self.policy.allow.is_empty() && !self.policy.allow.iter().any(|c| c.contains(ip)) {
            return Err(Refusal::NotAllowed);
        }
        let known = self.is_known(ip, now);
        let entry = self.entries.get(&ip);
        if !known && entry.and_then(|e| e.backoff_until).is_some_and(|t| now < t) {
            return Err(Refusal::Backoff);
        }
        let mine = entry.map_or(0, |e| e.pending);
        if !known && self.policy.per_source > 0 && mine >= self.policy.per_source {
            return Err(Refusal::PerSource);
        }
        let usable = if known {
            self.policy.total
        } else {
            self.policy.total - self.policy.reserved
        };
        if self.pending >= usable {
            return Err(Refusal::OverCap);
        }
        self.pending += 1;
        self.entry(ip, now).pending += 1;
        Ok(())
    }

    /// A connection admitted from `ip` ended its handshake (either way).
    pub fn release(&mut self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if let Some(entry) = self.entries.get_mut(&ip)
            && entry.pending > 0
        {
            entry.pending -= 1;
            self.pending = self.pending.saturating_sub(1);
        }
    }

    /// `ip` completed a cookie handshake with us (inbound or outbound): it is known, and its
    /// failures are forgotten.
    pub fn authenticated(&mut self, ip: IpAddr, now: Instant) {
        let entry = self.entry(ip.to_canonical(), now);
        entry.known_at = Some(now);
        entry.failures = 0;
        entry.window_start = None;
        entry.backoff_until = None;
    }

    /// A connection from `ip` failed the cookie check; returns the backoff it started, if any.
    pub fn cookie_failed(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let ip = ip.to_canonical();
        let known = self.is_known(ip, now);
        let entry = self.entry(ip, now);
        if entry
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= FAILURE_WINDOW)
        {
            entry.window_start = Some(now);
            entry.failures = 0;
        }
        entry.failures += 1;
        if known || entry.failures < FAILURES_BEFORE_BACKOFF {
            return None;
        }
        let doublings = (entry.failures - FAILURES_BEFORE_BACKOFF).min(16);
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF);
        entry.backoff_until = Some(now + backoff);
        Some(backoff)
    }

    /// How long a connection from `ip` may take to send its first frame.
    pub fn first_frame_timeout(&self, ip: IpAddr, now: Instant, handshake: Duration) -> Duration {
        if self.is_known(ip, now) {
            handshake
        } else {
            handshake.min(FIRST_FRAME_TIMEOUT)
        }
    }

    fn entry(&mut self, ip: IpAddr, now: Instant) -> &mut Entry {
        if !self.entries.contains_key(&ip) && self.entries.len() >= MAX_REMEMBERED {
            self.evict(now);
        }
        let entry = self.entries.entry(ip).or_default();
        entry.touched = Some(now);
        entry
    }

    /// Drops entries that hold nothing any more; if none, the stalest idle one.
    fn evict(&mut self, now: Instant) {
        let before = self.entries.len();
        self.entries.retain(|_, e| {
            e.pending > 0
                || e.known_at
                    .is_some_and(|at| now.saturating_duration_since(at) < KNOWN_FOR)
                || e.backoff_until.is_some_and(|t| now < t)
                || e.window_start
                    .is_some_and(|s| now.saturating_duration_since(s) < FAILURE_WINDOW)
        });
        if self.entries.len() < before {
            return;
        }
        let stalest = self
            .entries
            .iter()
            .filter(|(_, e)| e.pending == 0)
            .min_by_key(|(_, e)| e.touched)
            .map(|(ip, _)| *ip);
        if let Some(ip) = stalest {
            self.entries.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn table(total: usize, per_source: usize) -> Sources {
        Sources::new(SourcePolicy::new(total, per_source, Vec::new()))
    }

    #[test]
    fn one_address_holds_at_most_its_share_of_the_slots() {
        let now = Instant::now();
        let mut t = table(64, 4);
        for _ in 0..4 {
            t.admit(ip("10.0.0.9"), now).unwrap();
        }
        assert_eq!(t.admit(ip("10.0.0.9"), now), Err(Refusal::PerSource));
        t.admit(ip("10.0.0.10"), now).unwrap();
        t.release(ip("10.0.0.9"));
        t.admit(ip("10.0.0.9"), now).unwrap();
        assert_eq!(t.pending(), 5);
    }

    #[test]
    fn strangers_leave_the_reserve_to_known_peers() {
        let now = Instant::now();
        let mut t = table(8, 0);
        t.authenticated(ip("10.0.0.1"), now);
        for i in 0..6 {
            t.admit(ip(&format!("10.0.1.{i}")), now).unwrap();
        }
        assert_eq!(t.admit(ip("10.0.1.99"), now), Err(Refusal::OverCap));
        t.admit(ip("10.0.0.1"), now).unwrap();
        t.admit(ip("10.0.0.1"), now).unwrap();
        assert_eq!(t.admit(ip("10.0.0.1"), now), Err(Refusal::OverCap));
    }

    #[test]
    fn a_known_peer_is_not_held_to_the_per_source_cap() {
        let now = Instant::now();
        let mut t = table(64, 2);
        t.authenticated(ip("127.0.0.1"), now);
        for _ in 0..10 {
            t.admit(ip("127.0.0.1"), now).unwrap();
        }
        assert!(!t.is_known(ip("127.0.0.1"), now + KNOWN_FOR));
        assert_eq!(
            t.admit(ip("127.0.0.1"), now + KNOWN_FOR),
            Err(Refusal::PerSource)
        );
    }

    #[test]
    fn repeated_cookie_failures_back_off_with_doubling_up_to_the_cap() {
        let now = Instant::now();
        let mut t = table(64, 4);
        let guesser = ip("10.0.0.66");
        for _ in 1..FAILURES_BEFORE_BACKOFF {
            assert_eq!(t.cookie_failed(guesser, now), None);
        }
        assert_eq!(t.cookie_failed(guesser, now), Some(FIRST_BACKOFF));
        assert_eq!(t.admit(guesser, now), Err(Refusal::Backoff));
        assert_eq!(t.cookie_failed(guesser, now), Some(FIRST_BACKOFF * 2));
        for _ in 0..20 {
            t.cookie_failed(guesser, now);
        }
        assert_eq!(t.cookie_failed(guesser, now), Some(MAX_BACKOFF));
        assert!(t.admit(guesser, now + MAX_BACKOFF).is_ok());
        // Others are not affected.
        assert!(t.admit(ip("10.0.0.67"), now).is_ok());
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_back_off() {
        let mut now = Instant::now();
        let mut t = table(64, 4);
        for _ in 0..20 {
            assert_eq!(t.cookie_failed(ip("10.0.0.5"), now), None);
            now += FAILURE_WINDOW / (FAILURES_BEFORE_BACKOFF - 1);
        }
    }

    #[test]
    fn a_known_peer_never_backs_off_and_a_success_forgets_failures() {
        let now = Instant::now();
        let mut t = table(64, 4);
        t.authenticated(ip("10.0.0.1"), now);
        for _ in 0..10 {
            assert_eq!(t.cookie_failed(ip("10.0.0.1"), now), None);
        }
        assert!(t.admit(ip("10.0.0.1"), now).is_ok());
        let other = ip("10.0.0.2");
        for _ in 1..FAILURES_BEFORE_BACKOFF {
            t.cookie_failed(other, now);
        }
        t.authenticated(other, now);
        assert_eq!(t.cookie_failed(other, now), None);
    }

    #[test]
    fn the_allow_list_refuses_everything_outside_it() {
        let now = Instant::now();
        let allow = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        let mut t = Sources::new(SourcePolicy::new(64, 4, allow));
        assert!(t.admit(ip("10.1.2.3"), now).is_ok());
        assert!(t.admit(ip("fd12::1"), now).is_ok());
        assert!(t.admit(ip("::ffff:10.9.9.9"), now).is_ok());
        assert_eq!(t.admit(ip("192.168.0.1"), now), Err(Refusal::NotAllowed));
        assert_eq!(t.admit(ip("fe80::1"), now), Err(Refusal::NotAllowed));
    }

    #[test]
    fn address_ranges_parse_or_say_what_is_wrong() {
        assert_eq!(
            "127.0.0.1".parse::<Cidr>().unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!(
            "example.com/8"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        assert!(
            !"10.0.0.0/8"
                .parse::<Cidr>()
                .unwrap()
                .contains(ip("11.0.0.0"))
        );
    }

    #[test]
    fn unknown_sources_get_a_short_first_frame_deadline() {
        let now = Instant::now();
        let mut t = table(64, 4);
        let long = Duration::from_secs(5);
        assert_eq!(
            t.first_frame_timeout(ip("10.0.0.1"), now, long),
            FIRST_FRAME_TIMEOUT
        );
        t.authenticated(ip("10.0.0.1"), now);
        assert_eq!(t.first_frame_timeout(ip("10.0.0.1"), now, long), long);
        assert_eq!(
            t.first_frame_timeout(ip("10.0.0.2"), now, Duration::from_millis(300)),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn a_flood_from_many_addresses_does_not_grow_the_table_without_bound() {
        let now = Instant::now();
        let mut t = table(64, 4);
        for i in 0..(MAX_REMEMBERED as u32 + 500) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            t.cookie_failed(ip, now);
        }
        assert!(t.entries.len() <= MAX_REMEMBERED);
    }
}
