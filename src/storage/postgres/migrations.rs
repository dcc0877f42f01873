//! The schema in the PostgreSQL dialect, versioned in a `schema_version` table.
//!
//! Migration *n* (1-based) is `MIGRATIONS[n - 1]` and is the PostgreSQL twin of SQLite's
//! migration *n* ([`crate::storage::migrations`]): same tables, columns and constraints, so a
//! version number means the same schema on both engines. Differences are dialect only: ids
//! are `TEXT COLLATE "C"` (byte order, so keyset pages order exactly like SQLite's), the
//! ASCII-case-insensitive email rule of versions 1–5 was a unique index on
//! `lower(email COLLATE "C")` (the `"C"` collation folds ASCII only, like SQLite's `NOCASE`);
//! from version 6 both engines index the `email_key` column computed in Rust. Booleans are
//! `BOOLEAN`, and the 1024 shard rows come from `generate_series`.
//!
//! Several nodes start at once against one server, so migrating is serialised by a
//! transaction-scoped advisory lock ([`MIGRATION_LOCK`]): the first node applies every pending
//! step and records it in the same transaction; the others wait, then find nothing to do. A
//! schema newer than this binary knows is refused, and the node does not start.
//! Append-only, like SQLite's: never edit a shipped step, add one.

use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::storage::email_keys::{ExistingRow, KeyConflict, assign_keys};
use crate::storage::migrations::EMAIL_KEY_VERSION;

/// Advisory lock key held while migrating (any value unlikely to collide; "cc-migr").
pub const MIGRATION_LOCK: i64 = 0x0063_632d_6d69_6772;

/// The schema, one step at a time.
pub const MIGRATIONS: &[&str] = &[
    // 1: customers. `id` is the canonical hyphenated UUID; times are µs since the Unix epoch;
    // `version` is the compare-and-set token. Email is unique case-insensitively (ASCII).
    r#"CREATE TABLE customers (
        id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
        name       TEXT   NOT NULL,
        email      TEXT   NOT NULL,
        phone      TEXT,
        address    TEXT,
        version    BIGINT NOT NULL CHECK (version >= 1),
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE UNIQUE INDEX customers_email ON customers (lower(email COLLATE "C"));"#,
    // 2: tombstones (DESIGN §6 F5): a delete keeps the row; email is unique among live rows.
    r#"ALTER TABLE customers ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT FALSE;
    DROP INDEX customers_email;
    CREATE UNIQUE INDEX customers_live_email ON customers (lower(email COLLATE "C")) WHERE NOT deleted;"#,
    // 3: request ids (F1, F3, F4). `result` is 'aborted' or the JSON of the stored answer; NULL
    // only inside the transaction that claims the id. `body_hash` is a u64 stored as its
    // two's-complement i64. `applied_at` (wall-clock µs) serves pruning only.
    r#"CREATE TABLE applied_requests (
        request_id  TEXT   NOT NULL PRIMARY KEY,
        customer_id TEXT,
        body_hash   BIGINT NOT NULL,
        attempt     BIGINT NOT NULL,
        result      TEXT,
        applied_at  BIGINT NOT NULL
    );
    CREATE INDEX applied_requests_by_age ON applied_requests (applied_at);"#,
    // 4: leases (L1). Incarnations are u64 stored as their two's-complement i64. One row per
    // shard, created here, so grants and fences are plain UPDATEs and SELECTs of existing rows.
    r#"CREATE TABLE node_leases (
        node        TEXT   NOT NULL PRIMARY KEY,
        incarnation BIGINT,
        epoch       BIGINT NOT NULL CHECK (epoch >= 1),
        seq         BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE shard_leases (
        shard              INTEGER NOT NULL PRIMARY KEY CHECK (shard >= 0 AND shard < 1024),
        holder             TEXT,
        holder_incarnation BIGINT,
        holder_epoch       BIGINT,
        token              BIGINT NOT NULL DEFAULT 0
    );
    INSERT INTO shard_leases (shard) SELECT generate_series(0, 1023);"#,
    // 5: one mailbox, one customer: `email_key` is `customer::email_key(email)`, filled for
    // existing rows by [`backfill_email_keys`] in the same transaction; collisions between
    // live rows are recorded in `email_key_conflicts` (see `storage::email_keys`).
    r#"ALTER TABLE customers ADD COLUMN email_key TEXT;
    CREATE TABLE email_key_conflicts (
        id        TEXT NOT NULL PRIMARY KEY,
        kept_id   TEXT NOT NULL,
        email_key TEXT NOT NULL
    );"#,
    // 6: uniqueness moves from the ASCII-folded email to the key, among live rows.
    r#"ALTER TABLE customers ALTER COLUMN email_key SET NOT NULL;
    DROP INDEX customers_live_email;
    CREATE UNIQUE INDEX customers_live_email_key ON customers (email_key COLLATE "C") WHERE NOT deleted;"#,
    // 7: the set of aborted attempts per request id (F3). In the id's own row, so a claim and
    // a settle of one id serialise on its row lock and each sees the other's committed set.
    r#"ALTER TABLE applied_requests ADD COLUMN aborted_attempts BIGINT[] NOT NULL DEFAULT '{}';
    UPDATE applied_requests SET aborted_attempts = ARRAY[attempt] WHERE result = 'aborted';"#,
    // 8: the lease TTL each node's renewer runs with (L4), written by every renew.
    r#"ALTER TABLE node_leases ADD COLUMN ttl_ms BIGINT NOT NULL DEFAULT 0;"#,
];

/// Applies every pending migration in one transaction under [`MIGRATION_LOCK`]. Refuses a
/// database whose schema is newer than this binary. Returns the schema version reached.
pub async fn migrate(client: &mut Client) -> Result<u32> {
    let tx = client.transaction().await?;
    // Another node may hold the lock while it migrates: wait for it longer than the
    // request-path lock_timeout would allow.
    tx.batch_execute("SET LOCAL lock_timeout = '60s'").await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version    INTEGER NOT NULL PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let current: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
        .await?
        .get(0);
    let target = MIGRATIONS.len() as i32;
    if current > target {
        return Err(Error::Internal(format!(
            "database schema version {current} is newer than this binary supports ({target}); upgrade this node"
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        tx.batch_execute(sql).await?;
        if index + 1 == EMAIL_KEY_VERSION {
            backfill_email_keys(&tx).await?;
        }
        let version = index as i32 + 1;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tracing::info!(version, "applied schema migration (postgres)");
    }
    tx.commit().await?;
    Ok(target as u32)
}

/// Computes `email_key` for every existing row (creation order) and records conflicts: one
/// read, one `UPDATE … FROM unnest(…)`, one insert.
async fn backfill_email_keys(tx: &tokio_postgres::Transaction<'_>) -> Result<()> {
    let rows = tx
        .query(
            "SELECT id, email, deleted FROM customers ORDER BY created_at, id",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(ExistingRow {
                id: r.try_get(0)?,
                email: r.try_get(1)?,
                deleted: r.try_get(2)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let (keys, conflicts) = assign_keys(&rows);
    let (ids, values): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(i, k)| (i.as_str(), k.as_str())).unzip();
    tx.execute(
        "UPDATE customers c SET email_key = k.key
           FROM unnest($1::text[], $2::text[]) AS k(id, key) WHERE c.id = k.id",
        &[&ids, &values],
    )
    .await?;
    let column = |f: fn(&KeyConflict) -> &str| conflicts.iter().map(f).collect::<Vec<_>>();
    tx.execute(
        "INSERT INTO email_key_conflicts (id, kept_id, email_key)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
        &[
            &column(|c| &c.id),
            &column(|c| &c.kept_id),
            &column(|c| &c.email_key),
        ],
    )
    .await?;
    tracing::info!(
        rows = keys.len(),
        conflicts = conflicts.len(),
        "computed email keys of existing customers (postgres)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_migrations_are_never_edited() {
        // Append-only, as for SQLite: if this fails, undo the edit and add a migration.
        let hashes: Vec<u64> = MIGRATIONS
            .iter()
            .map(|sql| xxhash_rust::xxh3::xxh3_64(sql.as_bytes()))
            .collect();
        assert_eq!(hashes, GOLDEN);
    }

    #[test]
    fn both_engines_know_the_same_number_of_schema_versions() {
        assert_eq!(
            MIGRATIONS.len(),
            crate::storage::migrations::MIGRATIONS.len()
        );
    }

    const GOLDEN: [u64; 8] = [
        11_514_218_651_068_461_214,
        9_799_222_682_829_499_137,
        12_618_246_681_954_152_846,
        13_498_172_532_673_909_827,
        16_352_508_518_732_972_486,
        8_424_774_568_697_198_701,
        13_617_278_403_902_294_677,
        13_741_482_206_939_255_156,
    ];
}
