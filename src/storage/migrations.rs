//! Ordered schema migrations, tracked in SQLite's `user_version`.
//!
//! Migration *n* (1-based) is `MIGRATIONS[n - 1]`. A database at `user_version = k` gets
//! migrations `k+1..` applied, each in its own transaction together with the version bump, so a
//! crash mid-migration leaves the schema at a whole version. Migrations are append-only: never
//! edit one that has shipped, add a new one.

use rusqlite::Connection;

use super::email_keys::{ExistingRow, assign_keys};
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
    // 2: tombstones (DESIGN §6 F5). A delete keeps the row with `deleted = 1`, so versions never
    // repeat for an id and a create on a deleted id is refused. Email becomes unique among live
    // rows only (still case-insensitive ASCII), which needs the inline UNIQUE gone: SQLite
    // cannot drop a constraint, so the table is rebuilt and every row copied as live.
    "CREATE TABLE customers_v2 (
        id         TEXT    NOT NULL PRIMARY KEY,
        name       TEXT    NOT NULL,
        email      TEXT    NOT NULL COLLATE NOCASE,
        phone      TEXT,
        address    TEXT,
        version    INTEGER NOT NULL CHECK (version >= 1),
        deleted    INTEGER NOT NULL DEFAULT 0 CHECK (deleted IN (0, 1)),
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO customers_v2 (id, name, email, phone, address, version, deleted, created_at, updated_at)
        SELECT id, name, email, phone, address, version, 0, created_at, updated_at FROM customers;
    DROP TABLE customers;
    ALTER TABLE customers_v2 RENAME TO customers;
    CREATE UNIQUE INDEX customers_live_email ON customers (email COLLATE NOCASE) WHERE deleted = 0;",
    // 3: request ids (F1, F3, F4). `result` is 'aborted' or the JSON of the stored answer; it is
    // NULL only inside the transaction that claims the id. `body_hash` is a u64 stored as its
    // two's-complement i64. `applied_at` (wall-clock µs) serves pruning only.
    "CREATE TABLE applied_requests (
        request_id  TEXT    NOT NULL PRIMARY KEY,
        customer_id TEXT,
        body_hash   INTEGER NOT NULL,
        attempt     INTEGER NOT NULL,
        result      TEXT,
        applied_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX applied_requests_by_age ON applied_requests (applied_at);",
    // 4: leases (L1). Incarnations are u64 stored as their two's-complement i64. One row per
    // shard, created here, so grants and fences are plain UPDATEs and SELECTs of existing rows.
    "CREATE TABLE node_leases (
        node        TEXT    NOT NULL PRIMARY KEY,
        incarnation INTEGER,
        epoch       INTEGER NOT NULL CHECK (epoch >= 1),
        seq         INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE shard_leases (
        shard              INTEGER NOT NULL PRIMARY KEY CHECK (shard >= 0 AND shard < 1024),
        holder             TEXT,
        holder_incarnation INTEGER,
        holder_epoch       INTEGER,
        token              INTEGER NOT NULL DEFAULT 0
    );
    WITH RECURSIVE n(shard) AS (SELECT 0 UNION ALL SELECT shard + 1 FROM n WHERE shard < 1023)
    INSERT INTO shard_leases (shard) SELECT shard FROM n;",
    // 5: one mailbox, one customer. `email_key` is `customer::email_key(email)` (NFKC, case
    // folded, IDNA domain); SQL cannot compute it, so [`backfill_email_keys`] fills it for
    // existing rows in this migration's transaction and records collisions between live rows
    // in `email_key_conflicts` (the later row keeps a suffixed key: see `storage::email_keys`).
    "ALTER TABLE customers ADD COLUMN email_key TEXT;
    CREATE TABLE email_key_conflicts (
        id        TEXT NOT NULL PRIMARY KEY,
        kept_id   TEXT NOT NULL,
        email_key TEXT NOT NULL
    ) WITHOUT ROWID;",
    // 6: uniqueness moves from the ASCII-folded email to the key, among live rows.
    "DROP INDEX customers_live_email;
    CREATE UNIQUE INDEX customers_live_email_key ON customers (email_key) WHERE deleted = 0;",
    // 7: the set of aborted attempts per request id (F3): comma-separated attempt numbers. A
    // settle adds to it and never rewrites the row's attempt; a claim by an attempt in it is
    // refused. An id aborted before this version had one aborted attempt, the row's own.
    "ALTER TABLE applied_requests ADD COLUMN aborted_attempts TEXT NOT NULL DEFAULT '';
    UPDATE applied_requests SET aborted_attempts = CAST(attempt AS TEXT) WHERE result = 'aborted';",
    // 8: the lease TTL each node's renewer runs with (L4), written by every renew; 0 until a
    // renew of this release says.
    "ALTER TABLE node_leases ADD COLUMN ttl_ms INTEGER NOT NULL DEFAULT 0;",
];

/// The schema version whose transaction also computes `email_key` for existing rows.
pub const EMAIL_KEY_VERSION: usize = 5;

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
        if index + 1 == EMAIL_KEY_VERSION {
            backfill_email_keys(&tx)?;
        }
        tx.pragma_update(None, "user_version", index as u32 + 1)?;
        tx.commit()?;
        tracing::info!(version = index + 1, "applied schema migration");
    }
    Ok(target)
}

/// Computes `email_key` for every existing row (creation order) and records conflicts.
fn backfill_email_keys(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    let rows = {
        let mut stmt =
            tx.prepare("SELECT id, email, deleted FROM customers ORDER BY created_at, id")?;
        stmt.query_map([], |r| {
            Ok(ExistingRow {
                id: r.get(0)?,
                email: r.get(1)?,
                deleted: r.get::<_, i64>(2)? != 0,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?
    };
    let (keys, conflicts) = assign_keys(&rows);
    let mut set = tx.prepare("UPDATE customers SET email_key = ?2 WHERE id = ?1")?;
    for (id, key) in &keys {
        set.execute(rusqlite::params![id, key])?;
    }
    let mut record =
        tx.prepare("INSERT INTO email_key_conflicts (id, kept_id, email_key) VALUES (?1, ?2, ?3)")?;
    for c in &conflicts {
        record.execute(rusqlite::params![c.id, c.kept_id, c.email_key])?;
    }
    tracing::info!(
        rows = keys.len(),
        conflicts = conflicts.len(),
        "computed email keys of existing customers"
    );
    Ok(())
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
    fn shipped_migrations_are_never_edited() {
        // Append-only: a database migrated by an older binary must end up with the same schema
        // as a new one. If this fails, undo the edit and add a new migration instead; append
        // the new one's hash here.
        let hashes: Vec<u64> = MIGRATIONS
            .iter()
            .map(|sql| xxhash_rust::xxh3::xxh3_64(sql.as_bytes()))
            .collect();
        assert_eq!(hashes, GOLDEN);
    }

    const GOLDEN: [u64; 8] = [
        3_066_139_734_361_182_192,
        11_179_909_018_587_875_527,
        8_533_377_482_470_824_501,
        10_432_355_395_005_300_299,
        14_771_358_039_249_383_017,
        5_231_525_077_490_614_823,
        11_001_271_221_985_012_106,
        16_230_647_569_021_705_272,
    ];

    #[test]
    fn the_latest_schema_has_every_table_and_one_row_per_shard() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap();
        let names: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            names,
            [
                "applied_requests",
                "applied_requests_by_age",
                "customers",
                "customers_live_email_key",
                "email_key_conflicts",
                "node_leases",
                "shard_leases"
            ]
        );
        let (count, max): (u32, u32) = conn
            .query_row("SELECT count(*), max(shard) FROM shard_leases", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((count, max), (1024, 1023));
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
        assert!(migrate(&mut conn).is_err());
    }
}
