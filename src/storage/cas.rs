//! The compare-and-set rules for writes, as a pure decision.
//!
//! A conditional `UPDATE … WHERE id = ? AND version = ?` that touched no row is ambiguous: the
//! row may be missing or at another version. The store then reads the stored version and asks
//! [`explain_miss`] which error that is. Keeping the rule here, apart from SQL, lets it be tested
//! exhaustively and shared by every backend.

use crate::error::Error;

/// Explains why a conditional write matched no row.
///
/// * `stored` — the version currently stored, `None` if the row does not exist.
/// * `expected` — the version the writer asserted, `None` for an unconditional delete.
pub fn explain_miss(
    id: &impl std::fmt::Display,
    stored: Option<u64>,
    expected: Option<u64>,
) -> Error {
    match (stored, expected) {
        (None, _) => Error::customer_not_found(id),
        (Some(current), Some(expected)) if current != expected => {
            Error::VersionConflict { expected, current }
        }
        // The row exists at the expected version yet the write missed it: only possible if
        // the statement itself is wrong. Never silently succeed.
        (Some(current), _) => Error::Internal(format!(
            "conditional write on {id} missed a row at version {current}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_row_is_not_found_whatever_the_writer_expected() {
        assert!(matches!(
            explain_miss(&"c1", None, Some(3)),
            Error::NotFound(_)
        ));
        assert!(matches!(
            explain_miss(&"c1", None, None),
            Error::NotFound(_)
        ));
    }

    #[test]
    fn a_stale_writer_gets_a_version_conflict_naming_both_versions() {
        assert_eq!(
            explain_miss(&"c1", Some(5), Some(4)),
            Error::VersionConflict {
                expected: 4,
                current: 5
            }
        );
    }

    #[test]
    fn a_writer_ahead_of_the_store_is_also_a_conflict() {
        // E.g. a retried write whose first attempt committed: the stored version moved on.
        assert!(matches!(
            explain_miss(&"c1", Some(2), Some(3)),
            Error::VersionConflict { .. }
        ));
    }

    #[test]
    fn a_miss_at_the_expected_version_is_an_internal_error() {
        assert!(matches!(
            explain_miss(&"c1", Some(3), Some(3)),
            Error::Internal(_)
        ));
    }
}
