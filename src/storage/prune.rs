//! Pruning of request ids (DESIGN §6 F4): how long an id is kept, and when the writer removes
//! the ones past that window.
//!
//! Every write and every settle leaves a row in `applied_requests`. A row is needed only while
//! a retry of its request may still arrive; after the retention window (at least
//! [`MIN_RETENTION`], 24 h) it is removed. The engine's writer does that itself
//! ([`crate::storage::engine`]), off the hot path:
//!
//! * **Small batches.** One statement removes at most [`BATCH`] ids, oldest first (through the
//!   `applied_at` index), in its own short transaction; while a batch comes back full, the next
//!   follows after [`PAUSE`]. A pass ends with the first batch that is not full.
//! * **Lowest priority.** A due batch runs only when neither a lease job (renews first) nor a
//!   write is queued, so a renew waits behind at most one batch. Only a batch that has waited
//!   [`STARVED_AFTER`] for an idle writer runs between two write batches (never before a
//!   queued lease job), so a writer that is never idle still prunes.
//! * **Spread.** A pass starts every [`INTERVAL`] plus a random jitter of up to half of it (the
//!   first one within one interval of start), so nodes over one PostgreSQL server, which all
//!   prune, rarely meet; when they do, the deletes are by age and skip rows another transaction
//!   holds, so each row is removed once and nobody waits.
//!
//! The cutoff is this node's wall clock minus the retention, compared with `applied_at`, the
//! wall clock of the owner that stored the row. Wall clocks are used for nothing else: a
//! skew between hosts shortens or lengthens the window by the skew, which is why the window is
//! a day and not a retry horizon of seconds.
//!
//! This module holds the rules and the schedule (a pure core: time is an argument); the
//! statements are in each backend, the loop in the engine.
//!
//! Deliberately not here: pruning customers or tombstones (they are never physically deleted,
//! F5), or any way to shorten the window below [`MIN_RETENTION`] outside tests.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

pub use super::requests::MIN_RETENTION;

/// Most ids one prune statement removes: small enough that the writer is busy with it for
/// milliseconds (a renew queued meanwhile waits that long at most), large enough to keep up
/// with thousands of writes per second.
pub const BATCH: u32 = 500;

/// Time between the end of one prune pass and the start of the next (plus jitter).
pub const INTERVAL: Duration = Duration::from_secs(60);

/// Pause between two batches of one pass, while batches come back full: gives queued renews
/// and writes the writer, and spreads the I/O of a large backlog.
pub const PAUSE: Duration = Duration::from_millis(50);

/// How long a due batch waits for an idle writer before it runs between two write batches
/// anyway (it still never goes before a queued lease job).
pub const STARVED_AFTER: Duration = Duration::from_secs(1);

/// Longest accepted retention: ten years. Longer ones would overflow the µs arithmetic and
/// mean "never prune", which is what this module exists to prevent.
pub const MAX_RETENTION: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// How request ids are pruned. Built with [`PruneConfig::new`], which refuses a window shorter
/// than [`MIN_RETENTION`]: only test builds can shorten it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneConfig {
    /// Ids applied longer ago than this are removed.
    retention: Duration,
    /// Time between passes (before jitter).
    interval: Duration,
    /// Pause between full batches of one pass.
    pause: Duration,
    /// Most ids per statement.
    batch: u32,
}

impl Default for PruneConfig {
    /// The design values: 24 h retention, a pass a minute, batches of [`BATCH`].
    fn default() -> Self {
        Self {
            retention: MIN_RETENTION,
            interval: INTERVAL,
            pause: PAUSE,
            batch: BATCH,
        }
    }
}

impl PruneConfig {
    /// Pruning with `retention`, which must be from [`MIN_RETENTION`] to [`MAX_RETENTION`]: a
    /// shorter window would forget ids whose retries may still arrive (a retried create or
    /// update would then apply twice).
    pub fn new(retention: Duration) -> Result<Self> {
        if retention < MIN_RETENTION {
            return Err(Error::InvalidInput(format!(
                "request retention of {} s is below the minimum of {} s (24 h, DESIGN §6 F4): a retry arriving later would apply twice",
                retention.as_secs(),
                MIN_RETENTION.as_secs()
            )));
        }
        if retention > MAX_RETENTION {
            return Err(Error::InvalidInput(format!(
                "request retention of {} s is above the maximum of {} s (10 years)",
                retention.as_secs(),
                MAX_RETENTION.as_secs()
            )));
        }
        Ok(Self {
            retention,
            ..Self::default()
        })
    }

    /// Test builds only: any retention, interval and batch size, so a test sees rows pruned
    /// in milliseconds. Production code cannot name it.
    #[cfg(test)]
    pub fn for_tests(retention: Duration, interval: Duration, batch: u32) -> Self {
        Self {
            retention,
            interval,
            pause: interval.min(PAUSE),
            batch,
        }
    }

    /// The retention window.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Most ids per statement.
    pub fn batch(&self) -> u32 {
        self.batch
    }

    /// The largest jitter added to a pass's start: half the interval.
    pub fn max_jitter(&self) -> Duration {
        self.interval / 2
    }

    /// The prune cutoff at wall-clock time `now_micros`: ids applied strictly before it are
    /// past the window.
    pub fn cutoff(&self, now_micros: i64) -> i64 {
        let window = i64::try_from(self.retention.as_micros()).unwrap_or(i64::MAX);
        now_micros.saturating_sub(window)
    }
}

/// What one finished pass removed, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Ids removed in the pass.
    pub removed: u64,
    /// Statements it took.
    pub batches: u32,
}

/// When the writer prunes next, and the tally of the pass under way.
#[derive(Debug, Clone)]
pub struct Schedule {
    config: PruneConfig,
    /// When the next batch is due.
    next: Instant,
    /// Removed so far in the pass under way.
    removed: u64,
    /// Batches so far in the pass under way.
    batches: u32,
}

impl Schedule {
    /// The schedule of a writer started at `now`: the first pass is due after `jitter` (pass
    /// a value below the interval, so restarted nodes do not prune in step).
    pub fn new(config: PruneConfig, now: Instant, jitter: Duration) -> Self {
        Self {
            next: now + jitter.min(config.interval),
            config,
            removed: 0,
            batches: 0,
        }
    }

    /// The pruning settings.
    pub fn config(&self) -> &PruneConfig {
        &self.config
    }

    /// When the next batch is due; the writer runs it once it has nothing else queued.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// Whether the due batch has waited [`STARVED_AFTER`] for an idle writer: then it runs
    /// between write batches.
    pub fn starved(&self, now: Instant) -> bool {
        now >= self.next + STARVED_AFTER
    }

    /// Records a batch that removed `removed` ids at `now`. A full batch means more may be
    /// left: the next follows after the pause. Otherwise the pass is over: it is returned and
    /// the next pass is due an interval plus `jitter` later.
    pub fn batch_done(&mut self, removed: u64, now: Instant, jitter: Duration) -> Option<Pass> {
        self.removed += removed;
        self.batches += 1;
        if removed >= u64::from(self.config.batch) {
            self.next = now + self.config.pause;
            return None;
        }
        Some(self.end_pass(now, jitter))
    }

    /// Records a batch that failed at `now` (the database is unreachable, say): the pass ends
    /// with what it removed so far, and the next is tried an interval plus `jitter` later.
    pub fn batch_failed(&mut self, now: Instant, jitter: Duration) -> Pass {
        self.end_pass(now, jitter)
    }

    fn end_pass(&mut self, now: Instant, jitter: Duration) -> Pass {
        self.next = now + self.config.interval + jitter.min(self.config.max_jitter());
        Pass {
            removed: std::mem::take(&mut self.removed),
            batches: std::mem::take(&mut self.batches),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_retention_below_a_day_is_refused_and_a_day_or_more_is_kept() {
        let err = PruneConfig::new(MIN_RETENTION - S).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("below the minimum of 86400 s")),
            "{err}"
        );
        assert!(PruneConfig::new(MAX_RETENTION + S).is_err());
        let week = PruneConfig::new(7 * 24 * 3600 * S).unwrap();
        assert_eq!(week.retention(), 7 * 24 * 3600 * S);
        assert_eq!(week.batch(), BATCH);
        assert_eq!(PruneConfig::default().retention(), MIN_RETENTION);
    }

    #[test]
    fn the_cutoff_is_the_retention_before_now_and_never_overflows() {
        let day_us = 86_400_000_000;
        let c = PruneConfig::default();
        assert_eq!(c.cutoff(3 * day_us), 2 * day_us);
        assert_eq!(c.cutoff(i64::MIN), i64::MIN);
    }

    #[test]
    fn the_first_pass_is_due_within_one_interval_of_start() {
        let t0 = Instant::now();
        let s = Schedule::new(PruneConfig::default(), t0, 7 * S);
        assert_eq!(s.due(), t0 + 7 * S);
        let s = Schedule::new(PruneConfig::default(), t0, 3600 * S);
        assert_eq!(s.due(), t0 + INTERVAL);
    }

    #[test]
    fn a_full_batch_is_followed_by_another_after_the_pause() {
        let t0 = Instant::now();
        let mut s = Schedule::new(PruneConfig::default(), t0, S);
        assert_eq!(s.batch_done(u64::from(BATCH), t0 + S, S), None);
        assert_eq!(s.due(), t0 + S + PAUSE);
        assert_eq!(s.batch_done(u64::from(BATCH), t0 + 2 * S, S), None);
        let pass = s.batch_done(3, t0 + 3 * S, 5 * S).unwrap();
        assert_eq!(
            pass,
            Pass {
                removed: 2 * u64::from(BATCH) + 3,
                batches: 3
            }
        );
        assert_eq!(s.due(), t0 + 3 * S + INTERVAL + 5 * S);
    }

    #[test]
    fn an_empty_pass_and_a_failed_one_wait_an_interval_plus_at_most_half_an_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(PruneConfig::default(), t0, S);
        let pass = s.batch_done(0, t0, 3600 * S).unwrap();
        assert_eq!(pass.removed, 0);
        assert_eq!(s.due(), t0 + INTERVAL + INTERVAL / 2);
        assert_eq!(s.batch_done(u64::from(BATCH), t0, S), None);
        let failed = s.batch_failed(t0 + S, S);
        assert_eq!(
            failed,
            Pass {
                removed: u64::from(BATCH),
                batches: 1
            }
        );
        assert_eq!(s.due(), t0 + S + INTERVAL + S);
    }

    #[test]
    fn a_due_batch_counts_as_starved_only_after_waiting_a_second() {
        let t0 = Instant::now();
        let s = Schedule::new(PruneConfig::default(), t0, S);
        assert!(!s.starved(t0 + S));
        assert!(!s.starved(t0 + S + STARVED_AFTER - Duration::from_millis(1)));
        assert!(s.starved(t0 + S + STARVED_AFTER));
    }
}
