//! The edge's bookkeeping of who holds what: connection and event-stream counts per source
//! address, repeated token failures per source address, and log lines that would otherwise
//! repeat once per request.
//!
//! Every decision here is a pure function of counts and a time passed in; `server`,
//! `events`, `middleware` and `error` hold the state and act on the answer.
//!
//! ```text
//! connection ─▶ ConnTable::admit(ip)  ── per-client cap (0 = off) ──▶ 429, closed
//!                                     ── global cap (minus the loopback reserve) ──▶ 503, closed
//! /v1/events ─▶ ConnTable::admit(ip)  (a second table: its own caps, no reserve)
//! wrong token ─▶ FailureThrottle::fail(ip, now) ── over 20 in 10 s ──▶ 401 + Retry-After
//! ```
//!
//! Why a loopback reserve: the per-address cap stops one source from taking every connection,
//! but many sources together still can. The last few slots of the global cap are kept for
//! loopback clients — the host's own health probe, `customer-cluster status`, a sidecar — so
//! `/health` and `/ready` stay answerable from the node's host during a flood from elsewhere.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Connections kept for loopback clients at most; a quarter of a small cap.
pub const LOOPBACK_RESERVE: usize = 16;

/// File descriptors kept out of the HTTP connection cap: the cluster listener and sessions,
/// database connections, log files, `/proc` reads.
pub const RESERVED_FDS: u64 = 256;

/// The connection cap never drops below this, whatever the file limit says.
pub const MIN_CONNECTIONS: usize = 16;

/// Wrong-token answers per source address within [`FAILURE_WINDOW`] before the next one is
/// answered 429.
pub const FAILURES_PER_WINDOW: u32 = 20;

/// The window of [`FAILURES_PER_WINDOW`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);

/// Source addresses whose failures are tracked at once; beyond that, new addresses are not
/// tracked until old windows expire (the map cannot grow without bound).
const MAX_TRACKED: usize = 10_000;

/// The caps of one [`ConnTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Most entries open at once.
    pub max: usize,
    /// Most entries open at once per source address; 0 = no such cap.
    pub per_client: usize,
    /// Entries of `max` only loopback sources may take.
    pub loopback_reserve: usize,
}

impl Caps {
    /// The HTTP connection caps: `max` with a loopback reserve of a quarter of it, at most
    /// [`LOOPBACK_RESERVE`].
    pub fn connections(max: usize, per_client: usize) -> Self {
        Self {
            max,
            per_client,
            loopback_reserve: LOOPBACK_RESERVE.min(max / 4),
        }
    }
}

/// Why an entry was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The global cap is reached (for a non-loopback source: the cap minus the reserve).
    OverCap,
    /// This source address holds its per-client cap already.
    PerClient,
}

impl Refusal {
    /// The `reason` label of the refusal metrics.
    pub fn label(self) -> &'static str {
        match self {
            Self::OverCap => "over_cap",
            Self::PerClient => "per_client",
        }
    }
}

/// Open entries, in total and per source address. Pure.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Entries open now.
    pub open: usize,
    per_client: HashMap<IpAddr, usize>,
}

impl Counts {
    /// Takes an entry for `ip` (`None`: a source not known, counted against the global cap
    /// only) if `caps` allow it.
    pub fn admit(&mut self, ip: Option<IpAddr>, caps: &Caps) -> Result<(), Refusal> {
        if let Some(ip) = ip
            && caps.per_client > 0
            && self.per_client.get(&ip).copied().unwrap_or(0) >= caps.per_client
        {
            return Err(Refusal::PerClient);
        }
        let loopback = ip.is_some_and(|ip| ip.is_loopback());
        let limit = if loopback {
            caps.max
        } else {
            caps.max.saturating_sub(caps.loopback_reserve)
        };
        if self.open >= limit {
            return Err(Refusal::OverCap);
        }
        self.open += 1;
        if let Some(ip) = ip {
            *self.per_client.entry(ip).or_default() += 1;
        }
        Ok(())
    }

    /// Gives back an entry taken for `ip`.
    pub fn release(&mut self, ip: Option<IpAddr>) {
        self.open = self.open.saturating_sub(1);
        if let Some(ip) = ip
            && let Some(n) = self.per_client.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&ip);
            }
        }
    }

    /// Source addresses holding an entry now.
    pub fn clients(&self) -> usize {
        self.per_client.len()
    }
}

/// [`Counts`] shared by the tasks that take and give back entries; waiting for it to empty is
/// how a graceful stop knows every connection has ended.
#[derive(Debug)]
pub struct ConnTable {
    counts: watch::Sender<Counts>,
    caps: Caps,
}

impl ConnTable {
    /// An empty table under `caps`.
    pub fn new(caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            counts: watch::Sender::new(Counts::default()),
            caps,
        })
    }

    /// An entry for `ip`, given back when the returned guard drops.
    pub fn admit(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<Held, Refusal> {
        let mut verdict = Ok(());
        self.counts.send_if_modified(|c| {
            verdict = c.admit(ip, &self.caps);
            verdict.is_ok()
        });
        verdict.map(|()| Held {
            table: self.clone(),
            ip,
        })
    }

    /// Entries open now.
    pub fn open(&self) -> usize {
        self.counts.borrow().open
    }

    /// Resolves once no entry is held.
    pub async fn emptied(&self) {
        let _ = self.counts.subscribe().wait_for(|c| c.open == 0).await;
    }
}

/// One entry of a [`ConnTable`], given back on drop.
#[derive(Debug)]
pub struct Held {
    table: Arc<ConnTable>,
    ip: Option<IpAddr>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let ip = self.ip;
        self.table.counts.send_modify(|c| c.release(ip));
    }
}

/// What to answer a request that presented a wrong or no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// 401, as usual.
    Unauthorized,
    /// 401 with `Retry-After`: this address failed too often; retry after this many seconds.
    Throttled(u64),
}

/// Wrong-token answers per source address in fixed windows. Pure: time is an argument. A
/// request with a correct token never consults it.
#[derive(Debug, Default)]
pub struct FailureThrottle {
    windows: HashMap<IpAddr, (Instant, u32)>,
}

impl FailureThrottle {
    /// Records a failure from `ip` at `now` and says how to answer it.
    pub fn fail(&mut self, ip: IpAddr, now: Instant) -> AuthFailure {
        if self.windows.len() >= MAX_TRACKED && !self.windows.contains_key(&ip) {
            self.windows
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < FAILURE_WINDOW);
            if self.windows.len() >= MAX_TRACKED {
                return AuthFailure::Unauthorized;
            }
        }
        let (start, count) = self.windows.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= FAILURE_WINDOW {
            *start = now;
            *count = 0;
        }
        *count += 1;
        if *count <= FAILURES_PER_WINDOW {
            return AuthFailure::Unauthorized;
        }
        let left = FAILURE_WINDOW.saturating_sub(now.saturating_duration_since(*start));
        AuthFailure::Throttled(left.as_secs_f64().ceil().max(1.0) as u64)
    }
}

/// One log line per window for a repeating condition, the next one saying how many were left
/// out. Pure: time is an argument.
#[derive(Debug, Default)]
pub struct LogEvery {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogEvery {
    /// The window: one line per 10 s.
    pub const WINDOW: Duration = Duration::from_secs(10);

    /// Nothing logged yet (usable in a `static`).
    pub const fn new() -> Self {
        Self {
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log a line now, saying `n` similar ones were left out since the last one;
    /// `None`: leave this one out.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < Self::WINDOW)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }

    /// [`admit`](Self::admit) on a shared budget, now.
    pub fn admit_shared(budget: &Mutex<LogEvery>) -> Option<u64> {
        budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(Instant::now())
    }
}

/// The connection cap to run with under an open-files soft limit of `soft`: `requested`, or
/// less when it would leave fewer than [`RESERVED_FDS`] descriptors for everything else
/// (never below [`MIN_CONNECTIONS`]). `None`: no change needed.
pub fn cap_for_open_files(requested: usize, soft: u64) -> Option<usize> {
    let room = usize::try_from(soft.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    let room = room.max(MIN_CONNECTIONS);
    (requested > room).then_some(room)
}

/// Raises this process's open-files soft limit to its hard limit; returns the soft limit in
/// force afterwards.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// `limits` fitted to the open-files limit: raises the soft limit to the hard one, then lowers
/// the connection cap, with a WARN, when the file limit could not hold it.
pub fn fit_open_files(mut limits: crate::config::HttpLimits) -> crate::config::HttpLimits {
    let soft = match raise_open_files_limit() {
        Ok(soft) => soft,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-files limit");
            return limits;
        }
    };
    if let Some(cap) = cap_for_open_files(limits.max_connections, soft) {
        tracing::warn!(
            requested = limits.max_connections,
            cap,
            open_files_limit = soft,
            "--http-max-connections lowered to fit the open-files limit (ulimit -n) minus {RESERVED_FDS}; raise the hard limit (LimitNOFILE=, ulimit -Hn) to allow more",
        );
        limits.max_connections = cap;
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn one_address_gets_at_most_its_per_client_cap_and_others_still_get_in() {
        let caps = Caps::connections(100, 2);
        let mut c = Counts::default();
        assert_eq!(c.admit(ip("10.0.0.1"), &caps), Ok(()));
        assert_eq!(c.admit(ip("10.0.0.1"), &caps), Ok(()));
        assert_eq!(c.admit(ip("10.0.0.1"), &caps), Err(Refusal::PerClient));
        assert_eq!(c.admit(ip("10.0.0.2"), &caps), Ok(()));
        c.release(ip("10.0.0.1"));
        assert_eq!(c.admit(ip("10.0.0.1"), &caps), Ok(()));
        assert_eq!(c.open, 3);
        c.release(ip("10.0.0.2"));
        assert_eq!(c.clients(), 1, "an address with nothing open is forgotten");
    }

    #[test]
    fn a_per_client_cap_of_zero_is_off() {
        let caps = Caps::connections(100, 0);
        let mut c = Counts::default();
        for _ in 0..80 {
            assert_eq!(c.admit(ip("10.0.0.1"), &caps), Ok(()));
        }
    }

    #[test]
    fn the_last_slots_of_the_global_cap_are_kept_for_loopback_clients() {
        let caps = Caps::connections(64, 0);
        assert_eq!(caps.loopback_reserve, 16);
        let mut c = Counts::default();
        for n in 0..48 {
            assert_eq!(c.admit(ip(&format!("10.0.1.{n}")), &caps), Ok(()));
        }
        assert_eq!(c.admit(ip("10.0.2.1"), &caps), Err(Refusal::OverCap));
        for _ in 0..16 {
            assert_eq!(c.admit(ip("127.0.0.1"), &caps), Ok(()));
        }
        assert_eq!(c.admit(ip("127.0.0.1"), &caps), Err(Refusal::OverCap));
        assert_eq!(c.admit(ip("::1"), &caps), Err(Refusal::OverCap));
    }

    #[test]
    fn a_small_cap_keeps_a_quarter_for_loopback() {
        assert_eq!(Caps::connections(3, 0).loopback_reserve, 0);
        assert_eq!(Caps::connections(20, 0).loopback_reserve, 5);
    }

    #[test]
    fn wrong_tokens_are_throttled_per_address_after_twenty_in_ten_seconds() {
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut t = FailureThrottle::default();
        for _ in 0..FAILURES_PER_WINDOW {
            assert_eq!(t.fail(a, t0), AuthFailure::Unauthorized);
        }
        assert_eq!(
            t.fail(a, t0 + Duration::from_secs(3)),
            AuthFailure::Throttled(7)
        );
        assert_eq!(t.fail(b, t0), AuthFailure::Unauthorized, "another address");
        assert_eq!(
            t.fail(a, t0 + FAILURE_WINDOW),
            AuthFailure::Unauthorized,
            "a new window"
        );
    }

    #[test]
    fn a_repeating_line_is_logged_once_per_window_with_the_count_left_out() {
        let t0 = Instant::now();
        let mut l = LogEvery::default();
        assert_eq!(l.admit(t0), Some(0));
        assert_eq!(l.admit(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(9)), None);
        assert_eq!(l.admit(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(l.admit(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn the_connection_cap_is_lowered_to_the_file_limit_minus_a_reserve() {
        assert_eq!(cap_for_open_files(4096, 1024), Some(768));
        assert_eq!(cap_for_open_files(4096, 1_048_576), None);
        assert_eq!(cap_for_open_files(4096, 4352), None);
        assert_eq!(cap_for_open_files(4096, 4351), Some(4095));
        assert_eq!(cap_for_open_files(500, 100), Some(MIN_CONNECTIONS));
        assert_eq!(cap_for_open_files(8, 100), None);
    }
}
