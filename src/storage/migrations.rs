//! Ordered schema migrations, tracked in SQLite's `user_version`.
//!
//! Migration *n* (1-based) is `MIGRATIONS[n - 1]`. A database at `user_version = k` gets
//! migrations `k+1..` applied, each in its own transaction together with the version bump, so a
//! crash mid-migration leaves the schema at a whole version. Migrations are append-only: never
//! edit one that has shipped, add a new one.

use rusqlite::Connection;

use crate::error::{Error, Result};

/// The schema, one step at a time.
pub const MIGRATIONS: &[&str] = &[
    // 1: customers. `id` is the canonical hyphenated UUID; times are µs since the Unix epoch;
    // `version` is the compare-and-set token. Email is unique case-insensitively (ASCII).
    "CREATE TABLE customers (
        id         TEXT    NOT NULL PRIMARY KEY,
        name       TEXT    NOT NULL,
        email      TEXT    NOT NULL UNIQUE COLLATE NOCASE,
        phone      TEXT,
        address    TEXT,
        version    INTEGER NOT NULL CHECK (version >= 1),
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;",
];

/// Applies every pending migration. Refuses a database from a newer release.
pub fn migrate(conn: &mut Connection) -> Result<u32> {
    let current: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let target = MIGRATIONS.len() as u32;
    if current > target {
        return Err(Error::Internal(format!(
            "database schema version {current} is newer than this binary supports ({target})"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as u32 + 1)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "applied schema migration");
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op_and_reaches_the_latest_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS.len() as u32);
        assert_eq!(migrate(&mut conn).unwrap(), MIGRATIONS.len() as u32);
        let v: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as u32);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        assert!(migrate(&mut conn).is_err());
    }
}
