//! Keys for rows stored before emails had one (schema version 5), and the conflicts that
//! brings to light.
//!
//! Before version 5 emails were unique only up to ASCII case, so two live customers may hold
//! one mailbox written two ways (`josé@…` and `jose\u{301}@…`). SQL cannot compute NFKC, so
//! the migration reads every row, computes [`customer::email_key`](crate::customer::email_key)
//! here, and writes the keys back in the same transaction.
//!
//! **Policy on a collision: keep everything, merge nothing, report it.** Rows are taken in
//! creation order (then id); the first live row with a key keeps it; every later live row with
//! the same key gets it with a suffix that no valid email can produce ([`CONFLICT_MARK`], a
//! control character, then its own id), so both rows stay readable and writable and the
//! unique index can be built. Each such row is recorded in `email_key_conflicts` with the id
//! that kept the key; the node logs every unresolved one at start and exports the count as
//! `customer_email_key_conflicts`. Changing the email of the later row (or deleting either)
//! resolves it: a write recomputes the key, and a write that still collides is a 409 like any
//! other. Tombstones get their plain key (uniqueness is among live rows only).
//!
//! Deliberately not here: SQL (each engine reads and writes the rows in its own dialect).

use std::collections::HashSet;

use crate::customer::email_key;

/// Separates a conflicting row's key from its id. Validation refuses control characters in
/// emails and neither NFKC nor case folding produces one, so no real key contains it.
pub const CONFLICT_MARK: char = '\u{1}';

/// A row as the migration reads it, in creation order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingRow {
    /// Customer id (canonical text).
    pub id: String,
    /// The email as stored.
    pub email: String,
    /// Tombstone: not subject to uniqueness.
    pub deleted: bool,
}

/// A live row whose email has the same key as an earlier live row's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConflict {
    /// The later row, which got the suffixed key.
    pub id: String,
    /// The earlier row, which kept the plain key.
    pub kept_id: String,
    /// The suffixed key `id` was given.
    pub email_key: String,
}

/// The key of every row (`(id, key)`, in input order) and the conflicts among live rows.
pub fn assign_keys(rows: &[ExistingRow]) -> (Vec<(String, String)>, Vec<KeyConflict>) {
    let mut owner_of: std::collections::HashMap<String, &str> = Default::default();
    let mut keys = Vec::with_capacity(rows.len());
    let mut conflicts = Vec::new();
    for row in rows {
        let key = email_key(&row.email);
        if row.deleted {
            keys.push((row.id.clone(), key));
            continue;
        }
        match owner_of.get(&key) {
            None => {
                owner_of.insert(key.clone(), &row.id);
                keys.push((row.id.clone(), key));
            }
            Some(kept) => {
                let suffixed = conflict_key(&key, &row.id);
                conflicts.push(KeyConflict {
                    id: row.id.clone(),
                    kept_id: (*kept).to_owned(),
                    email_key: suffixed.clone(),
                });
                keys.push((row.id.clone(), suffixed));
            }
        }
    }
    debug_assert!(unique_live(&keys, rows));
    (keys, conflicts)
}

/// The key a conflicting row is given: its plain key, the mark, its own id.
pub fn conflict_key(key: &str, id: &str) -> String {
    format!("{key}{CONFLICT_MARK}{id}")
}

fn unique_live(keys: &[(String, String)], rows: &[ExistingRow]) -> bool {
    let mut seen = HashSet::new();
    keys.iter()
        .zip(rows)
        .filter(|(_, r)| !r.deleted)
        .all(|((_, k), _)| seen.insert(k.as_str()))
}

/// Logs each unresolved conflict (naming both ids) and sets the gauge to their number.
pub fn report(conflicts: &[KeyConflict]) {
    metrics::gauge!("customer_email_key_conflicts").set(conflicts.len() as f64);
    for c in conflicts {
        tracing::warn!(
            customer = %c.id,
            kept_by = %c.kept_id,
            "email of customer {} is the same mailbox as customer {}'s; both are kept, the later one under a suffixed key until its email changes or one is deleted",
            c.id,
            c.kept_id
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, email: &str, deleted: bool) -> ExistingRow {
        ExistingRow {
            id: id.into(),
            email: email.into(),
            deleted,
        }
    }

    #[test]
    fn the_earlier_row_keeps_the_key_and_the_later_one_is_reported() {
        let rows = [
            row("a", "josé@x.io", false),
            row("b", "jose\u{301}@x.io", false),
            row("c", "other@x.io", false),
            row("d", "JOSÉ@x.io", false),
        ];
        let (keys, conflicts) = assign_keys(&rows);
        assert_eq!(keys[0], ("a".into(), "josé@x.io".into()));
        assert_eq!(keys[1], ("b".into(), "josé@x.io\u{1}b".into()));
        assert_eq!(keys[2], ("c".into(), "other@x.io".into()));
        assert_eq!(keys[3].1, "josé@x.io\u{1}d");
        let named: Vec<(&str, &str)> = conflicts
            .iter()
            .map(|c| (c.id.as_str(), c.kept_id.as_str()))
            .collect();
        assert_eq!(named, [("b", "a"), ("d", "a")]);
    }

    #[test]
    fn tombstones_take_their_plain_key_and_conflict_with_nobody() {
        let rows = [row("a", "JOSÉ@x.io", true), row("b", "josé@x.io", false)];
        let (keys, conflicts) = assign_keys(&rows);
        assert_eq!(keys[0].1, "josé@x.io");
        assert_eq!(keys[1].1, "josé@x.io");
        assert!(conflicts.is_empty());
    }
}
