//! The crate's one error type: a small set of semantic categories that callers act on.
//!
//! Every layer returns [`Error`]: storage, actors, the cluster protocol and the HTTP API. It is
//! serializable because it travels inside remote replies (see [`crate::codec::Wire`]), so an
//! owner node's `NotFound` arrives at the entry node as the same `NotFound`.
//!
//! What this module deliberately does not do: map errors to HTTP statuses (that is
//! `api::error`, the one place that knows about HTTP), or carry backtraces and source chains
//! across the network (a remote error is a category plus a message a human can read).

use serde::{Deserialize, Serialize};

/// The result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure, by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Error {
    /// The customer (or other addressed thing) does not exist. HTTP 404.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or a field is invalid; retrying the same request cannot help.
    /// HTTP 422 (400 for unparseable input, decided by the API layer).
    #[error("{0}")]
    InvalidInput(String),
    /// The request collides with existing data, e.g. an email address already in use or a
    /// create whose id exists with a different body. HTTP 409.
    #[error("{0}")]
    Conflict(String),
    /// The client's `If-Match` version is not the current version. HTTP 412.
    #[error("version mismatch: expected {expected}, current is {current}")]
    PreconditionFailed {
        /// The version the client asserted.
        expected: u64,
        /// The version actually stored.
        current: u64,
    },
    /// A compare-and-set in the database found a different version than the writer expected.
    /// This is fencing at work: the writer's cached state is stale (a second activation during
    /// a membership change). The customer actor reloads and retries; it reaches HTTP only if
    /// retries are exhausted (409).
    #[error("stale write rejected: expected version {expected}, stored version is {current}")]
    VersionConflict {
        /// The version the writer believed current.
        expected: u64,
        /// The version in the database.
        current: u64,
    },
    /// A dependency (the database, the owner node) cannot be reached right now; retry later.
    /// HTTP 503 with `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
    /// The node asked does not hold the lease of the customer's shard right now (DESIGN §6
    /// L6): nothing was applied. The entry node retries at `holder` when one is named; after
    /// its retries the client gets HTTP 503 with `Retry-After`.
    #[error("this node does not hold the customer's shard lease (holder: {}, token {token})", .holder.as_deref().unwrap_or("unknown"))]
    NotHolder {
        /// The node that holds the shard, when the answering node knows it.
        holder: Option<String>,
        /// The shard's token as last seen by the answering node (0 when unknown).
        token: u64,
    },
    /// A call did not answer within its deadline. The operation may or may not have happened.
    /// HTTP 504.
    #[error("{0}")]
    Timeout(String),
    /// A broken invariant or an unexpected failure (I/O, corrupt data). HTTP 500; the message
    /// is logged, never shown to clients.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// Builds [`Error::NotFound`] for a customer id.
    pub fn customer_not_found(id: impl std::fmt::Display) -> Self {
        Self::NotFound(format!("customer {id} not found"))
    }

    /// True when the same request may succeed if sent again (possibly to a recomputed owner).
    /// Only errors that say "nothing was decided" are retryable: an unavailable or timed-out
    /// owner. Domain outcomes (not found, conflict) are final.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Timeout(_) | Self::NotHolder { .. }
        )
    }

    /// A short stable code for logs, metrics labels and the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::InvalidInput(_) => "invalid_input",
            Self::Conflict(_) => "conflict",
            Self::PreconditionFailed { .. } => "precondition_failed",
            Self::VersionConflict { .. } => "version_conflict",
            Self::Unavailable(_) => "unavailable",
            Self::NotHolder { .. } => "not_holder",
            Self::Timeout(_) => "timeout",
            Self::Internal(_) => "internal",
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(err: rusqlite::Error) -> Self {
        Self::Internal(format!("sqlite: {err}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Self::Internal(format!("io: {err}"))
    }
}

impl<T> From<ractor::MessagingErr<T>> for Error {
    /// A failed actor send: the target (or its node) went away, which is retryable against a
    /// new owner.
    fn from(err: ractor::MessagingErr<T>) -> Self {
        Self::Unavailable(format!("actor unreachable: {err:?}"))
    }
}

impl<T> From<ractor::RactorErr<T>> for Error {
    fn from(err: ractor::RactorErr<T>) -> Self {
        match err {
            ractor::RactorErr::Messaging(m) => m.into(),
            ractor::RactorErr::Actor(a) => Self::Unavailable(format!("actor unavailable: {a}")),
            ractor::RactorErr::Timeout => Self::Timeout("call timed out".into()),
            ractor::RactorErr::Spawn(s) => Self::Internal(format!("spawn failed: {s}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_undecided_outcomes_are_retryable() {
        assert!(Error::Unavailable("x".into()).is_retryable());
        assert!(Error::Timeout("x".into()).is_retryable());
        assert!(!Error::NotFound("x".into()).is_retryable());
        assert!(!Error::Conflict("x".into()).is_retryable());
        assert!(
            !Error::VersionConflict {
                expected: 1,
                current: 2
            }
            .is_retryable()
        );
    }

    #[test]
    fn a_call_timeout_maps_to_timeout_and_a_closed_channel_to_unavailable() {
        let timeout: Error = ractor::RactorErr::<()>::Timeout.into();
        assert_eq!(timeout.code(), "timeout");
        let closed: Error = ractor::MessagingErr::<()>::ChannelClosed.into();
        assert_eq!(closed.code(), "unavailable");
    }
}
