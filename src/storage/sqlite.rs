//! The embedded SQLite store: WAL, `synchronous=FULL`, prepared statements, parameterised SQL.
//!
//! One writer connection applies batches (see [`Store::write_batch`]); any number of read-only
//! connections serve gets and lists concurrently from WAL snapshots. Constraint violations are
//! domain outcomes (409/404), reported per write without aborting the batch; any other SQLite
//! error aborts the whole batch so that nothing in it is acknowledged.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, Row, Transaction, params};

use super::{Store, WriteOp, WriteOutcome, cas, migrations};
use crate::customer::{Customer, CustomerFields, CustomerId, is_same_create};
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
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
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

    /// Applies one write inside the batch transaction.
    fn apply(tx: &Transaction<'_>, op: &WriteOp) -> WriteOutcome {
        match op {
            WriteOp::Insert(customer) => insert(tx, customer).map(Some),
            WriteOp::Update {
                id,
                fields,
                expected_version,
                now,
            } => update(tx, id, fields, *expected_version, *now).map(Some),
            WriteOp::Delete {
                id,
                expected_version,
            } => delete(tx, id, *expected_version).map(|()| None),
        }
    }
}

impl Store for SqliteStore {
    fn write_batch(&mut self, ops: &[WriteOp]) -> Result<Vec<WriteOutcome>> {
        let tx = self.conn.transaction()?;
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            let outcome = Self::apply(&tx, op);
            if let Err(Error::Internal(msg)) = &outcome {
                // Not a domain outcome: the transaction may be unusable. Roll it all back
                // (dropping `tx`) so nothing in this batch is acknowledged.
                return Err(Error::Internal(msg.clone()));
            }
            outcomes.push(outcome);
        }
        tx.commit()?;
        Ok(outcomes)
    }

    fn get(&mut self, id: &CustomerId) -> Result<Option<Customer>> {
        select(&self.conn, id)
    }

    fn list(&mut self, after: Option<&CustomerId>, limit: u32) -> Result<Vec<Customer>> {
        let limit = limit.clamp(1, super::MAX_LIST_ROWS);
        let after = after.map(|id| id.to_string()).unwrap_or_default();
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM customers WHERE id > ?1 ORDER BY id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![after, limit], from_row)?;
        rows.map(|r| r.map_err(Error::from).and_then(|c| c))
            .collect()
    }
}

fn select(conn: &Connection, id: &CustomerId) -> Result<Option<Customer>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {COLUMNS} FROM customers WHERE id = ?1"))?;
    let row = stmt.query_row([id.to_string()], from_row).optional()?;
    row.transpose()
}

fn stored_version(tx: &Transaction<'_>, id: &CustomerId) -> Result<Option<u64>> {
    let mut stmt = tx.prepare_cached("SELECT version FROM customers WHERE id = ?1")?;
    Ok(stmt
        .query_row([id.to_string()], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|v| v as u64))
}

fn insert(tx: &Transaction<'_>, c: &Customer) -> Result<Customer> {
    if let Some(existing) = select(tx, &c.id)? {
        return if is_same_create(&existing.fields, &c.fields) {
            Ok(existing)
        } else {
            Err(Error::Conflict(format!(
                "customer {} already exists with different fields",
                c.id
            )))
        };
    }
    let mut stmt = tx.prepare_cached(&format!(
        "INSERT INTO customers ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
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
        c.updated_at
    ]);
    match res {
        Ok(_) => Ok(c.clone()),
        Err(e) => Err(constraint_or(e, &c.fields)),
    }
}

fn update(
    tx: &Transaction<'_>,
    id: &CustomerId,
    fields: &CustomerFields,
    expected: u64,
    now: i64,
) -> Result<Customer> {
    let mut stmt = tx.prepare_cached(&format!(
        "UPDATE customers
            SET name = ?1, email = ?2, phone = ?3, address = ?4,
                version = version + 1, updated_at = max(updated_at, ?5)
          WHERE id = ?6 AND version = ?7
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
                expected as i64
            ],
            from_row,
        )
        .optional();
    match res {
        Ok(Some(row)) => row,
        Ok(None) => Err(cas::explain_miss(
            id,
            stored_version(tx, id)?,
            Some(expected),
        )),
        Err(e) => Err(constraint_or(e, fields)),
    }
}

fn delete(tx: &Transaction<'_>, id: &CustomerId, expected: Option<u64>) -> Result<()> {
    let mut stmt =
        tx.prepare_cached("DELETE FROM customers WHERE id = ?1 AND (?2 IS NULL OR version = ?2)")?;
    let deleted = stmt.execute(params![id.to_string(), expected.map(|v| v as i64)])?;
    if deleted == 1 {
        Ok(())
    } else {
        Err(cas::explain_miss(id, stored_version(tx, id)?, expected))
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
    use crate::customer::{FieldsInput, new_customer_id, validate};

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("c.db")).unwrap();
        (dir, store)
    }

    fn fields(name: &str, email: &str) -> CustomerFields {
        validate(FieldsInput {
            name: Some(name.into()),
            email: Some(email.into()),
            ..Default::default()
        })
        .unwrap()
    }

    fn one(store: &mut SqliteStore, op: WriteOp) -> WriteOutcome {
        store.write_batch(&[op]).unwrap().remove(0)
    }

    #[test]
    fn insert_get_update_delete_round_trip() {
        let (_d, mut s) = store();
        let c = Customer::new(new_customer_id(), fields("Ada", "ada@x.io"), 10);
        assert_eq!(
            one(&mut s, WriteOp::Insert(c.clone())).unwrap(),
            Some(c.clone())
        );
        assert_eq!(s.get(&c.id).unwrap(), Some(c.clone()));

        let updated = one(
            &mut s,
            WriteOp::Update {
                id: c.id,
                fields: fields("Ada L", "ada@x.io"),
                expected_version: 1,
                now: 20,
            },
        )
        .unwrap()
        .unwrap();
        assert_eq!((updated.version, updated.updated_at), (2, 20));
        assert_eq!(updated.fields.name, "Ada L");

        let gone = one(
            &mut s,
            WriteOp::Delete {
                id: c.id,
                expected_version: Some(2),
            },
        );
        assert_eq!(gone, Ok(None));
        assert_eq!(s.get(&c.id).unwrap(), None);
    }

    #[test]
    fn a_stale_update_is_rejected_and_leaves_the_newer_row() {
        let (_d, mut s) = store();
        let c = Customer::new(new_customer_id(), fields("Ada", "ada@x.io"), 10);
        one(&mut s, WriteOp::Insert(c.clone())).unwrap();
        let newer = WriteOp::Update {
            id: c.id,
            fields: fields("Newer", "ada@x.io"),
            expected_version: 1,
            now: 20,
        };
        one(&mut s, newer).unwrap();
        let stale = WriteOp::Update {
            id: c.id,
            fields: fields("Stale", "ada@x.io"),
            expected_version: 1,
            now: 30,
        };
        assert_eq!(
            one(&mut s, stale),
            Err(Error::VersionConflict {
                expected: 1,
                current: 2
            })
        );
        assert_eq!(s.get(&c.id).unwrap().unwrap().fields.name, "Newer");
    }

    #[test]
    fn duplicate_email_is_a_conflict_case_insensitively() {
        let (_d, mut s) = store();
        let a = Customer::new(new_customer_id(), fields("A", "same@x.io"), 1);
        let b = Customer::new(new_customer_id(), fields("B", "SAME@x.io"), 1);
        one(&mut s, WriteOp::Insert(a)).unwrap();
        assert!(matches!(
            one(&mut s, WriteOp::Insert(b)),
            Err(Error::Conflict(_))
        ));
    }

    #[test]
    fn a_replayed_insert_is_idempotent_and_a_different_body_conflicts() {
        let (_d, mut s) = store();
        let c = Customer::new(new_customer_id(), fields("A", "a@x.io"), 1);
        one(&mut s, WriteOp::Insert(c.clone())).unwrap();
        let mut replay = c.clone();
        replay.created_at = 99; // a retry computes a new timestamp; the stored row wins
        assert_eq!(
            one(&mut s, WriteOp::Insert(replay)).unwrap(),
            Some(c.clone())
        );
        let mut other = c.clone();
        other.fields.name = "B".into();
        assert!(matches!(
            one(&mut s, WriteOp::Insert(other)),
            Err(Error::Conflict(_))
        ));
    }

    #[test]
    fn failed_writes_in_a_batch_do_not_abort_the_others() {
        let (_d, mut s) = store();
        let a = Customer::new(new_customer_id(), fields("A", "a@x.io"), 1);
        let dup = Customer::new(new_customer_id(), fields("Dup", "a@x.io"), 1);
        let b = Customer::new(new_customer_id(), fields("B", "b@x.io"), 1);
        let missing = WriteOp::Delete {
            id: new_customer_id(),
            expected_version: None,
        };
        let out = s
            .write_batch(&[
                WriteOp::Insert(a.clone()),
                WriteOp::Insert(dup),
                missing,
                WriteOp::Insert(b.clone()),
            ])
            .unwrap();
        assert!(out[0].is_ok() && out[3].is_ok());
        assert!(matches!(out[1], Err(Error::Conflict(_))));
        assert!(matches!(out[2], Err(Error::NotFound(_))));
        assert!(s.get(&a.id).unwrap().is_some() && s.get(&b.id).unwrap().is_some());
    }

    #[test]
    fn list_pages_by_id_with_a_keyset_cursor() {
        let (_d, mut s) = store();
        let mut ids = Vec::new();
        for i in 0..25 {
            let c = Customer::new(new_customer_id(), fields("C", &format!("c{i}@x.io")), 1);
            ids.push(c.id);
            one(&mut s, WriteOp::Insert(c)).unwrap();
        }
        ids.sort_by_key(|id| id.to_string());
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = s.list(after.as_ref(), 10).unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().map(|c| c.id);
            seen.extend(page.into_iter().map(|c| c.id));
        }
        assert_eq!(seen, ids);
    }

    #[test]
    fn a_reader_sees_committed_writes() {
        let (dir, mut s) = store();
        let mut r = SqliteStore::open_reader(&dir.path().join("c.db")).unwrap();
        let c = Customer::new(new_customer_id(), fields("A", "a@x.io"), 1);
        one(&mut s, WriteOp::Insert(c.clone())).unwrap();
        assert_eq!(r.get(&c.id).unwrap(), Some(c));
    }

    #[test]
    fn sql_metacharacters_and_unicode_are_stored_verbatim() {
        let (_d, mut s) = store();
        let c = Customer::new(
            new_customer_id(),
            fields("Robert'); DROP TABLE customers;-- 🐘", "bobby@x.io"),
            1,
        );
        one(&mut s, WriteOp::Insert(c.clone())).unwrap();
        assert_eq!(s.get(&c.id).unwrap(), Some(c));
    }
}
