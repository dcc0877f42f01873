//! The embedded SQLite store: WAL, `synchronous=FULL`, prepared statements, parameterised SQL.
//!
//! One writer connection applies batches (see [`Store::write_batch`]) and every lease
//! operation; any number of read-only connections serve gets, lists and the lease table
//! concurrently from WAL snapshots. Because grants and fenced writes share the one writer
//! connection, the token a write checks cannot change before it commits: the fence is atomic
//! by construction (PostgreSQL needs `SELECT … FOR SHARE` for the same guarantee).
//!
//! Each write runs in its own savepoint (DESIGN §6 F1): claim the request id, check the fence,
//! compare-and-set, store the result. A fenced write or a version miss rolls its savepoint
//! back; constraint violations are domain outcomes (409/404) reported per write; any other
//! SQLite error aborts the whole batch so that nothing in it is acknowledged.
//!
//! The request-id statements are in [`requests`](self::requests), the lease statements in
//! [`leases`](self::leases).

mod leases;
mod requests;

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row, Transaction, params};

use super::email_keys::KeyConflict;
use super::leases::{
    Grant, Holder, NodeLease, Observed, Registration, Release, Renewal, ShardId, ShardLease,
    Takeover,
};
use super::requests::{RequestStamp, Settlement, StoredResult};
use super::{Store, Write, WriteOp, WriteOutcome, cas, migrations};
use crate::customer::{Customer, CustomerFields, CustomerId, email_key, is_same_create};
use crate::error::{Error, Result};

/// How long a connection waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const COLUMNS: &str = "id, name, email, phone, address, version, created_at, updated_at";

/// A SQLite-backed [`Store`].
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file for writing and migrates it.
    pub fn open(path: &Path) -> Result<Self> {
        restrict_files(path)?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Internal(format!(
                "{} cannot use WAL journaling (got {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        migrations::migrate(&mut conn)?;
        Ok(Self { conn })
    }

    /// Opens a read-only connection to a database that [`SqliteStore::open`] created.
    pub fn open_reader(path: &Path) -> Result<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(Self { conn })
    }
}

/// Owner-only access to the database before SQLite opens it: customer data (names, emails,
/// phones, addresses) must not be readable by other users of the host.
///
/// A missing directory is created 0700; the file is created 0600 (or tightened to 0600 if an
/// older version left it wider), and so are its `-wal` and `-shm` companions when present.
/// SQLite creates those companions with the main file's mode, so new ones are 0600 too.
/// Existing directories are left alone: the data directory may be shared (e.g. `.`).
fn restrict_files(path: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        if file.exists() {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// What becomes of a write's savepoint.
enum Fate {
    /// Release it: its effects join the batch.
    Keep(WriteOutcome),
    /// Roll it back, request id included: nothing of this write stays.
    Undo(WriteOutcome),
}

/// Runs one write in its own savepoint. `Err` only for errors that must abort the batch.
fn write_one(tx: &mut Transaction<'_>, write: &Write) -> Result<WriteOutcome> {
    let sp = tx.savepoint()?; // dropped without commit = rolled back
    match steps(&sp, write)? {
        Fate::Keep(outcome) => {
            sp.commit()?;
            Ok(outcome)
        }
        Fate::Undo(outcome) => {
            sp.finish()?;
            Ok(outcome)
        }
    }
}

/// F1 steps (i)–(iv) for one write.
fn steps(conn: &Connection, write: &Write) -> Result<Fate> {
    if let Some(stamp) = &write.request {
        match requests::claim(conn, stamp, &write.op.customer_id())? {
            requests::Claim::Ours => {}
            requests::Claim::Answered(Ok(stored)) => {
                return Ok(Fate::Keep(WriteOutcome::Replayed(stored)));
            }
            requests::Claim::Answered(Err(e)) => {
                return Ok(Fate::Undo(WriteOutcome::Decided(Err(e))));
            }
        }
    }
    if let Some(fence) = write.fence {
        match leases::shard_row(conn, fence.shard)? {
            Some(row) if row.token == fence.token => {}
            Some(row) => {
                return Ok(Fate::Undo(WriteOutcome::Fenced {
                    holder: row.holder,
                    token: row.token,
                }));
            }
            None => {
                let err = Error::InvalidInput(format!("no shard {}", fence.shard));
                return Ok(Fate::Undo(WriteOutcome::Decided(Err(err))));
            }
        }
    }
    let result = apply(conn, &write.op);
    if let Err(Error::Internal(msg)) = &result {
        // Not a domain outcome: the transaction may be unusable. The caller rolls it all back
        // so nothing in this batch is acknowledged.
        return Err(Error::Internal(msg.clone()));
    }
    match (&write.request, StoredResult::of(&result)) {
        (Some(stamp), Some(stored)) => {
            requests::record(conn, stamp, &stored)?;
            Ok(Fate::Keep(WriteOutcome::Decided(result)))
        }
        // A version miss is no final answer: forget the id so the writer's retry can apply.
        (Some(_), None) => Ok(Fate::Undo(WriteOutcome::Decided(result))),
        (None, _) => Ok(Fate::Keep(WriteOutcome::Decided(result))),
    }
}

/// Applies one change (F1 step iii).
fn apply(conn: &Connection, op: &WriteOp) -> Result<Option<Customer>> {
    match op {
        WriteOp::Insert(customer) => insert(conn, customer).map(Some),
        WriteOp::Update {
            id,
            fields,
            expected_version,
            now,
        } => update(conn, id, fields, *expected_version, *now).map(Some),
        WriteOp::Delete {
            id,
            expected_version,
        } => delete(conn, id, *expected_version).map(|()| None),
    }
}

impl Store for SqliteStore {
    fn write_batch(&mut self, writes: &[Write]) -> Result<Vec<WriteOutcome>> {
        let mut tx = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(writes.len());
        for write in writes {
            // An error here drops `tx`: the whole batch rolls back.
            outcomes.push(write_one(&mut tx, write)?);
        }
        tx.commit()?;
        Ok(outcomes)
    }

    fn get(&mut self, id: &CustomerId) -> Result<Option<Customer>> {
        select_live(&self.conn, id)
    }

    fn ping(&mut self) -> Result<()> {
        self.conn.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    fn list(&mut self, after: Option<&CustomerId>, limit: u32) -> Result<Vec<Customer>> {
        let limit = limit.clamp(1, super::MAX_LIST_ROWS);
        let after = after.map(|id| id.to_string()).unwrap_or_default();
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM customers WHERE id > ?1 AND deleted = 0 ORDER BY id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![after, limit], from_row)?;
        rows.map(|r| r.map_err(Error::from).and_then(|c| c))
            .collect()
    }

    fn settle(&mut self, stamp: &RequestStamp) -> Result<Settlement> {
        requests::settle(&mut self.conn, stamp)
    }

    fn settle_batch(&mut self, stamps: &[RequestStamp]) -> Result<Vec<Result<Settlement>>> {
        requests::settle_batch(&mut self.conn, stamps)
    }

    fn prune_requests(&mut self, older_than: i64, limit: u32) -> Result<u64> {
        requests::prune(&self.conn, older_than, limit)
    }

    fn register(&mut self, node: &str, incarnation: u64) -> Result<Registration> {
        leases::register(&mut self.conn, node, incarnation)
    }

    fn renew(&mut self, me: &Holder, k: u64, ttl_ms: u64) -> Result<Renewal> {
        leases::renew(&mut self.conn, me, k, ttl_ms)
    }

    fn takeover(
        &mut self,
        contender: &Holder,
        victim: &Observed,
        shards: &[ShardId],
    ) -> Result<Takeover> {
        leases::takeover(&mut self.conn, contender, victim, shards)
    }

    fn takeover_own_row(
        &mut self,
        incarnation: u64,
        observed: &Observed,
        shards: &[ShardId],
    ) -> Result<Takeover> {
        leases::takeover_own_row(&mut self.conn, incarnation, observed, shards)
    }

    fn grant(&mut self, contender: &Holder, shards: &[ShardId]) -> Result<Grant> {
        leases::grant(&mut self.conn, contender, shards)
    }

    fn release(&mut self, node: &str, shard: ShardId, token: u64) -> Result<Release> {
        leases::release(&mut self.conn, node, shard, token)
    }

    fn clear_incarnation(&mut self, node: &str, incarnation: u64) -> Result<bool> {
        leases::clear_incarnation(&self.conn, node, incarnation)
    }

    fn lease_table(&mut self) -> Result<Vec<ShardLease>> {
        leases::lease_table(&self.conn)
    }

    fn node_table(&mut self) -> Result<Vec<NodeLease>> {
        leases::node_table(&self.conn)
    }

    fn email_key_conflicts(&mut self) -> Result<Vec<KeyConflict>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT k.id, k.kept_id, k.email_key FROM email_key_conflicts k
               JOIN customers c ON c.id = k.id
              WHERE c.deleted = 0 AND c.email_key = k.email_key
              ORDER BY k.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(KeyConflict {
                id: r.get(0)?,
                kept_id: r.get(1)?,
                email_key: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// A live (not deleted) customer.
fn select_live(conn: &Connection, id: &CustomerId) -> Result<Option<Customer>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM customers WHERE id = ?1 AND deleted = 0"
    ))?;
    let row = stmt.query_row([id.to_string()], from_row).optional()?;
    row.transpose()
}

/// Whether the id exists only as a tombstone.
fn is_tombstone(conn: &Connection, id: &CustomerId) -> Result<bool> {
    let mut stmt = conn.prepare_cached("SELECT deleted FROM customers WHERE id = ?1")?;
    let deleted = stmt
        .query_row([id.to_string()], |r| r.get::<_, bool>(0))
        .optional()?;
    Ok(deleted == Some(true))
}

/// The version of a live customer; `None` if absent or deleted (so a write on a tombstone
/// explains itself as not found).
fn live_version(conn: &Connection, id: &CustomerId) -> Result<Option<u64>> {
    let mut stmt =
        conn.prepare_cached("SELECT version FROM customers WHERE id = ?1 AND deleted = 0")?;
    Ok(stmt
        .query_row([id.to_string()], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|v| v as u64))
}

fn insert(conn: &Connection, c: &Customer) -> Result<Customer> {
    if let Some(existing) = select_live(conn, &c.id)? {
        return if is_same_create(&existing.fields, &c.fields) {
            Ok(existing)
        } else {
            Err(Error::Conflict(format!(
                "customer {} already exists with different fields",
                c.id
            )))
        };
    }
    if is_tombstone(conn, &c.id)? {
        return Err(Error::Conflict(format!(
            "customer {} was deleted; its id cannot be reused",
            c.id
        )));
    }
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO customers ({COLUMNS}, email_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))?;
    let f = &c.fields;
    let res = stmt.execute(params![
        c.id.to_string(),
        f.name,
        f.email,
        f.phone,
        f.address,
        c.version as i64,
        c.created_at,
        c.updated_at,
        email_key(&f.email)
    ]);
    match res {
        Ok(_) => Ok(c.clone()),
        Err(e) => Err(constraint_or(e, &c.fields)),
    }
}

fn update(
    conn: &Connection,
    id: &CustomerId,
    fields: &CustomerFields,
    expected: u64,
    now: i64,
) -> Result<Customer> {
    let mut stmt = conn.prepare_cached(&format!(
        "UPDATE customers
            SET email_key = CASE WHEN email = ?2 COLLATE BINARY THEN email_key ELSE ?8 END,
                name = ?1, email = ?2, phone = ?3, address = ?4,
                version = version + 1, updated_at = max(updated_at, ?5)
          WHERE id = ?6 AND version = ?7 AND deleted = 0
      RETURNING {COLUMNS}"
    ))?;
    let res = stmt
        .query_row(
            params![
                fields.name,
                fields.email,
                fields.phone,
                fields.address,
                now,
                id.to_string(),
                expected as i64,
                email_key(&fields.email)
            ],
            from_row,
        )
        .optional();
    match res {
        Ok(Some(row)) => row,
        Ok(None) => Err(cas::explain_miss(
            id,
            live_version(conn, id)?,
            Some(expected),
        )),
        Err(e) => Err(constraint_or(e, fields)),
    }
}

/// Leaves a tombstone at the next version: the row and its version history stay, so the
/// version can never be handed out again for this id (F5).
fn delete(conn: &Connection, id: &CustomerId, expected: Option<u64>) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE customers SET deleted = 1, version = version + 1
          WHERE id = ?1 AND deleted = 0 AND (?2 IS NULL OR version = ?2)",
    )?;
    let deleted = stmt.execute(params![id.to_string(), expected.map(|v| v as i64)])?;
    if deleted == 1 {
        Ok(())
    } else {
        Err(cas::explain_miss(id, live_version(conn, id)?, expected))
    }
}

/// Turns a unique-email violation into a 409; anything else stays an internal error.
fn constraint_or(err: rusqlite::Error, fields: &CustomerFields) -> Error {
    match err.sqlite_error_code() {
        Some(ErrorCode::ConstraintViolation) if err.to_string().contains("email") => {
            Error::Conflict(format!("email {} is already in use", fields.email))
        }
        _ => err.into(),
    }
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<Result<Customer>> {
    let id: String = row.get(0)?;
    let version: i64 = row.get(5)?;
    let customer = CustomerId::try_parse(&id)
        .map_err(|_| Error::Internal(format!("corrupt id in database: {id:?}")))
        .map(|id| -> rusqlite::Result<Customer> {
            Ok(Customer {
                id,
                fields: CustomerFields {
                    name: row.get(1)?,
                    email: row.get(2)?,
                    phone: row.get(3)?,
                    address: row.get(4)?,
                },
                version: version.max(0) as u64,
                created_at: row.get(6)?,
                updated_at: row.get(7)?,
            })
        });
    match customer {
        Ok(inner) => inner.map(Ok),
        Err(e) => Ok(Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::suite;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn the_database_its_wal_and_shm_and_a_new_directory_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let path = data.join("c.db");
        // Opening migrates, so the WAL and shared-memory files exist once it returns.
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(mode(&data), 0o700, "data directory");
        for suffix in ["", "-wal", "-shm"] {
            let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            assert!(file.exists(), "{} missing", file.display());
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        drop(s);
        // A file an older version left world-readable is tightened on the next open.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _s = SqliteStore::open(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    // The engine-neutral behaviour suite, one test per behaviour, on a fresh SQLite file each.
    crate::store_suite!(store());

    #[test]
    fn a_reader_sees_committed_writes() {
        let (dir, mut s) = store();
        let mut r = SqliteStore::open_reader(&dir.path().join("c.db")).unwrap();
        let c = suite::customer("A", "a@x.io");
        s.write_batch(&[WriteOp::Insert(c.clone()).into()]).unwrap();
        assert_eq!(r.get(&c.id).unwrap(), Some(c));
        assert_eq!(r.lease_table().unwrap().len(), 1024);
    }

    #[test]
    fn colliding_emails_stored_before_keys_are_kept_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v4.db");
        {
            let mut conn = Connection::open(&path).unwrap();
            let tx = conn.transaction().unwrap();
            for sql in &migrations::MIGRATIONS[..4] {
                tx.execute_batch(sql).unwrap();
            }
            tx.pragma_update(None, "user_version", 4).unwrap();
            for (id, email, at) in suite::COLLIDING_ROWS {
                tx.execute(
                    &format!("INSERT INTO customers ({COLUMNS}) VALUES (?1, 'N', ?2, NULL, NULL, 1, ?3, ?3)"),
                    params![id, email, at],
                )
                .unwrap();
            }
            tx.commit().unwrap();
        }
        let mut s = SqliteStore::open(&path).unwrap();
        suite::colliding_rows_are_kept_and_reported_after_migration(&mut s);
    }

    #[test]
    fn a_version_1_database_keeps_its_rows_when_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let c = suite::customer("Old", "old@x.io");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(migrations::MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                &format!(
                    "INSERT INTO customers ({COLUMNS}) VALUES (?1, ?2, ?3, NULL, NULL, 3, 5, 6)"
                ),
                params![c.id.to_string(), c.fields.name, c.fields.email],
            )
            .unwrap();
        }
        let mut s = SqliteStore::open(&path).unwrap();
        let kept = s.get(&c.id).unwrap().unwrap();
        assert_eq!((kept.version, kept.created_at, kept.updated_at), (3, 5, 6));
        assert_eq!(kept.fields, c.fields);
        // The migrated table has the new rules: the email is taken while the row lives...
        let twin = suite::customer("Twin", "OLD@x.io");
        let taken = s
            .write_batch(&[WriteOp::Insert(twin.clone()).into()])
            .unwrap();
        assert!(matches!(
            taken[0],
            WriteOutcome::Decided(Err(Error::Conflict(_)))
        ));
        // ...and free again once it is deleted.
        let del = WriteOp::Delete {
            id: c.id,
            expected_version: Some(3),
        };
        s.write_batch(&[del.into()]).unwrap();
        let freed = s.write_batch(&[WriteOp::Insert(twin).into()]).unwrap();
        assert!(matches!(freed[0], WriteOutcome::Decided(Ok(Some(_)))));
        assert_eq!(s.lease_table().unwrap().len(), 1024);
    }
}
