//! Durable storage of customers: a synchronous store, and the engine that runs it off the
//! async runtime with group commit.
//!
//! ```text
//!  Database actor ──submit──▶ Engine ──▶ writer thread: drain queue → BEGIN → ops → COMMIT (1 fsync) → ack all
//!                                   └──▶ reader thread: get / list on a read-only connection (WAL snapshot)
//! ```
//!
//! * [`Store`] is the synchronous interface a backend implements (SQLite today: [`sqlite`]).
//!   Writes arrive as a batch and are applied in one transaction; each write is a
//!   compare-and-set on `version` (see [`cas`]), so a stale writer can never overwrite a newer row.
//! * [`engine::Engine`] owns the threads. Tokio workers never touch SQLite.
//!
//! An acknowledgement means "committed to disk": the engine replies only after `COMMIT`
//! returned, with `synchronous=FULL` in WAL mode, so an fsync has happened.
//!
//! Deliberately not here: actors, HTTP, placement. Storage knows customers and nothing else.

pub mod cas;
pub mod engine;
pub mod migrations;
pub mod sqlite;

use crate::customer::{Customer, CustomerFields, CustomerId};
use crate::error::Result;

/// Largest page a list may return; bounds memory and the size of one cluster message.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Most rows one store read returns: a full page plus one, whose presence tells the caller
/// that a next page exists (clamping to [`MAX_PAGE_SIZE`] here would make every maximal page
/// look like the last one).
pub const MAX_LIST_ROWS: u32 = MAX_PAGE_SIZE + 1;

/// One write, applied inside a batch transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Insert a new customer. Idempotent by id: if the id exists with the same fields the
    /// stored row is returned; with different fields it is a conflict.
    Insert(Customer),
    /// Replace the fields if the stored version equals `expected_version`; bumps the version.
    Update {
        /// Which customer.
        id: CustomerId,
        /// New field values (already validated).
        fields: CustomerFields,
        /// The compare-and-set token: the version the writer last saw.
        expected_version: u64,
        /// Write time, µs since the Unix epoch.
        now: i64,
    },
    /// Delete if the stored version equals `expected_version` (any version when `None`).
    Delete {
        /// Which customer.
        id: CustomerId,
        /// The compare-and-set token, if any.
        expected_version: Option<u64>,
    },
}

/// What a write produced: the stored customer after it, or `None` for a delete.
pub type WriteOutcome = Result<Option<Customer>>;

/// A storage backend. Implementations are synchronous and used from one thread at a time.
pub trait Store: Send + 'static {
    /// Applies `ops` in one transaction and commits once. Returns one outcome per op, in order,
    /// or `Err` when the transaction as a whole failed (then nothing in it is acknowledged).
    fn write_batch(&mut self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>>;

    /// Reads one customer.
    fn get(&mut self, id: &CustomerId) -> Result<Option<Customer>>;

    /// Lists customers ordered by id, strictly after `after`, at most `limit` of them (clamped
    /// to [`MAX_LIST_ROWS`]).
    fn list(&mut self, after: Option<&CustomerId>, limit: u32) -> Result<Vec<Customer>>;
}
