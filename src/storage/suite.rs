//! The behaviour suite every [`Store`] backend must pass (test builds only).
//!
//! Each behaviour is a function over `&mut dyn Store` on a fresh, migrated, empty store.
//! A backend runs the whole suite with one line in its test module, giving one `#[test]` per
//! behaviour: `crate::store_suite!(make_store());` where `make_store()` returns
//! `(guard, store)` — the guard (a temp dir, a throwaway schema) lives as long as the test.
//!
//! The behaviours are DESIGN §6 read as tests: compare-and-set, tombstones (F5), request ids
//! (F1, F3, F4), fencing (F1, §10 case 8) and leases (L1, L2, L5, L6, §10 case 12).

use crate::customer::{Customer, CustomerFields, new_customer_id};
use crate::error::Error;
use crate::storage::prune::{BATCH, MIN_RETENTION, PruneConfig};
use crate::storage::{
    Fence, Grant, Holder, Observed, Registration, Release, Renewal, RequestStamp, Settlement,
    ShardGrant, ShardId, Store, StoredResult, Takeover, Write, WriteOp, WriteOutcome,
};

/// Runs every behaviour of this module as its own `#[test]` against the store `$make` builds.
#[macro_export]
macro_rules! store_suite {
    ($make:expr) => {
        $crate::store_suite!(@each $make;
            insert_get_update_delete_round_trip,
            a_stale_update_is_rejected_and_leaves_the_newer_row,
            duplicate_email_is_a_conflict_case_insensitively,
            one_mailbox_written_four_ways_is_one_customer,
            an_update_to_another_customers_mailbox_is_a_conflict,
            a_repeated_insert_is_idempotent_and_a_different_body_conflicts,
            failed_writes_in_a_batch_do_not_abort_the_others,
            list_pages_by_id_with_a_keyset_cursor_and_skips_deleted,
            sql_metacharacters_and_unicode_are_stored_verbatim,
            a_deleted_customer_is_absent_and_its_id_cannot_be_created_again,
            versions_never_repeat_for_a_deleted_id,
            a_deleted_customers_email_is_free_again,
            a_replayed_request_returns_the_stored_result_without_applying,
            a_request_id_reused_with_another_body_is_invalid_input,
            a_stored_domain_error_is_replayed_even_after_the_cause_is_gone,
            an_aborted_request_applies_once_when_retried_as_a_new_attempt,
            settle_answers_aborted_when_inserted_and_the_stored_result_on_conflict,
            every_settled_attempt_stays_aborted_whatever_is_settled_after_it,
            request_ids_are_global_not_per_customer,
            a_version_miss_does_not_record_the_request_id,
            pruning_forgets_only_old_request_ids,
            an_id_past_the_retention_window_is_forgotten_and_one_inside_it_replays,
            a_prune_removes_one_batch_oldest_first_and_repeated_batches_remove_all,
            a_stale_token_is_fenced_and_the_retry_at_the_right_token_applies,
            a_fenced_write_and_a_duplicate_email_fail_alone_in_their_batch,
            every_shard_exists_unheld_before_any_grant,
            a_new_name_registers_at_epoch_1_and_a_live_row_is_never_overwritten,
            a_cleared_row_is_taken_over_at_a_later_epoch,
            renew_answers_renewed_lost_or_superseded,
            a_takeover_bumps_the_victims_epoch_and_grants_only_its_shards,
            two_contenders_splitting_a_dead_nodes_shards_leave_none_orphaned,
            a_takeover_with_a_stale_observed_seq_does_nothing,
            a_contender_that_is_not_current_can_neither_take_over_nor_grant,
            a_released_shard_is_granted_at_once_and_a_stale_release_does_nothing,
            the_token_grows_on_every_grant_and_release_and_never_on_renew,
            a_restarted_process_takes_its_own_row_over_only_as_observed,
            a_graceful_stop_leaves_no_shard_orphaned,
        );
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let (_guard, mut store) = $make;
                $crate::storage::suite::$name(&mut store);
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// A valid new customer at version 1 with a fresh id.
pub fn customer(name: &str, email: &str) -> Customer {
    Customer::new(new_customer_id(), fields(name, email), 1)
}

/// Valid fields with only the required name and email (shared by actor tests too).
pub fn fields(name: &str, email: &str) -> CustomerFields {
    CustomerFields {
        name: name.into(),
        email: email.into(),
        phone: None,
        address: None,
    }
}

fn update(c: &Customer, name: &str, expected_version: u64) -> WriteOp {
    WriteOp::Update {
        id: c.id,
        fields: fields(name, &c.fields.email),
        expected_version,
        now: 100 + expected_version as i64,
    }
}

fn stamp(id: &str, body_hash: u64, attempt: u32, at: i64) -> RequestStamp {
    RequestStamp {
        id: id.into(),
        body_hash,
        attempt,
        at,
    }
}

fn with(op: WriteOp, fence: Option<Fence>, request: Option<RequestStamp>) -> Write {
    Write { op, fence, request }
}

fn one(s: &mut dyn Store, write: impl Into<Write>) -> WriteOutcome {
    let mut out = s.write_batch(&[write.into()]).expect("batch commits");
    assert_eq!(out.len(), 1);
    out.remove(0)
}

/// The result of a write that must have been decided now (not replayed, not fenced).
fn decided(outcome: WriteOutcome) -> crate::error::Result<Option<Customer>> {
    match outcome {
        WriteOutcome::Decided(r) => r,
        other => panic!("expected a decided write, got {other:?}"),
    }
}

fn registered(s: &mut dyn Store, node: &str, incarnation: u64) -> Holder {
    match s.register(node, incarnation).unwrap() {
        Registration::Registered { epoch } => Holder {
            node: node.into(),
            incarnation,
            epoch,
        },
        other => panic!("{node} could not register: {other:?}"),
    }
}

fn granted(s: &mut dyn Store, to: &Holder, shards: &[ShardId]) -> Vec<ShardGrant> {
    match s.grant(to, shards).unwrap() {
        Grant::Granted(g) => g,
        Grant::NotCurrent => panic!("{to:?} is not current"),
    }
}

fn observe(s: &mut dyn Store, node: &str) -> Observed {
    s.node_table()
        .unwrap()
        .into_iter()
        .find(|n| n.node == node)
        .and_then(|n| n.observed())
        .expect("a live node row")
}

fn holder_of(s: &mut dyn Store, shard: ShardId) -> (Option<String>, u64) {
    let row = s.lease_table().unwrap().remove(usize::from(shard));
    assert_eq!(row.shard, shard);
    (row.holder, row.token)
}

fn token_of(s: &mut dyn Store, shard: ShardId) -> u64 {
    holder_of(s, shard).1
}

fn shards_of(grants: &[ShardGrant]) -> Vec<ShardId> {
    grants.iter().map(|g| g.shard).collect()
}

// ---------------------------------------------------------------------------------------------
// Customers and compare-and-set

/// Insert, read, update with CAS, delete with CAS.
pub fn insert_get_update_delete_round_trip(s: &mut dyn Store) {
    let c = customer("Ada", "ada@x.io");
    assert_eq!(
        decided(one(s, WriteOp::Insert(c.clone()))),
        Ok(Some(c.clone()))
    );
    assert_eq!(s.get(&c.id).unwrap(), Some(c.clone()));
    let updated = decided(one(s, update(&c, "Ada L", 1))).unwrap().unwrap();
    assert_eq!((updated.version, updated.updated_at), (2, 101));
    assert_eq!(updated.fields.name, "Ada L");
    assert_eq!(s.get(&c.id).unwrap(), Some(updated));
    let del = WriteOp::Delete {
        id: c.id,
        expected_version: Some(2),
    };
    assert_eq!(decided(one(s, del)), Ok(None));
    assert_eq!(s.get(&c.id).unwrap(), None);
}

/// A writer holding an old version cannot overwrite a newer row.
pub fn a_stale_update_is_rejected_and_leaves_the_newer_row(s: &mut dyn Store) {
    let c = customer("Ada", "ada@x.io");
    one(s, WriteOp::Insert(c.clone()));
    decided(one(s, update(&c, "Newer", 1))).unwrap();
    assert_eq!(
        decided(one(s, update(&c, "Stale", 1))),
        Err(Error::VersionConflict {
            expected: 1,
            current: 2
        })
    );
    assert_eq!(s.get(&c.id).unwrap().unwrap().fields.name, "Newer");
}

/// Email uniqueness ignores ASCII case.
pub fn duplicate_email_is_a_conflict_case_insensitively(s: &mut dyn Store) {
    one(s, WriteOp::Insert(customer("A", "same@x.io")));
    let b = customer("B", "SAME@x.io");
    assert!(matches!(
        decided(one(s, WriteOp::Insert(b.clone()))),
        Err(Error::Conflict(_))
    ));
    assert_eq!(s.get(&b.id).unwrap(), None);
}

/// Uniqueness is on the email key: composed, decomposed, upper-case and fullwidth forms of
/// one address are one mailbox, and the email is stored as typed.
pub fn one_mailbox_written_four_ways_is_one_customer(s: &mut dyn Store) {
    let first = customer("José", "josé@example.com");
    assert_eq!(
        decided(one(s, WriteOp::Insert(first.clone()))),
        Ok(Some(first.clone()))
    );
    for twin in [
        "jose\u{301}@example.com",
        "JOSÉ@EXAMPLE.COM",
        "\u{FF4A}osé@example.com",
    ] {
        let b = customer("Twin", twin);
        let refused = decided(one(s, WriteOp::Insert(b.clone())));
        assert!(
            matches!(refused, Err(Error::Conflict(_))),
            "{twin}: {refused:?}"
        );
        assert_eq!(s.get(&b.id).unwrap(), None, "{twin}");
    }
    let other = customer("Jose", "jose@example.com");
    assert!(decided(one(s, WriteOp::Insert(other))).is_ok());
    assert_eq!(
        s.get(&first.id).unwrap().unwrap().fields.email,
        "josé@example.com"
    );
    assert!(s.email_key_conflicts().unwrap().is_empty());
}

/// An update that moves a customer onto another live customer's mailbox is refused, and one
/// that only changes the case of its own email is not.
pub fn an_update_to_another_customers_mailbox_is_a_conflict(s: &mut dyn Store) {
    let a = customer("A", "straße@x.io");
    let b = customer("B", "b@x.io");
    one(s, WriteOp::Insert(a.clone()));
    one(s, WriteOp::Insert(b.clone()));
    let onto_a = WriteOp::Update {
        id: b.id,
        fields: fields("B", "STRASSE@x.io"),
        expected_version: 1,
        now: 5,
    };
    assert!(matches!(decided(one(s, onto_a)), Err(Error::Conflict(_))));
    let own = WriteOp::Update {
        id: a.id,
        fields: fields("A", "STRASSE@X.IO"),
        expected_version: 1,
        now: 5,
    };
    let renamed = decided(one(s, own)).unwrap().unwrap();
    assert_eq!(renamed.fields.email, "STRASSE@X.IO");
}

/// Live rows stored before schema version 5 whose emails are one mailbox written three ways,
/// plus an unrelated one: `(id, email, created_at)`. Each engine's migration test inserts
/// them into a version-4 schema, migrates, and runs
/// [`colliding_rows_are_kept_and_reported_after_migration`].
pub const COLLIDING_ROWS: [(&str, &str, i64); 4] = [
    ("00000000-0000-7000-8000-00000000000b", "JOSÉ@x.io", 2),
    ("00000000-0000-7000-8000-00000000000a", "josé@x.io", 1),
    (
        "00000000-0000-7000-8000-00000000000c",
        "jose\u{301}@x.io",
        3,
    ),
    ("00000000-0000-7000-8000-00000000000d", "ada@x.io", 4),
];

/// After the migration: every row is kept as typed, the earliest keeps the mailbox, the two
/// later ones are reported naming the earliest, the mailbox stays taken, unrelated edits of a
/// reported row work, and changing its email resolves its conflict.
pub fn colliding_rows_are_kept_and_reported_after_migration(s: &mut dyn Store) {
    let id = |i: usize| crate::customer::parse_customer_id(COLLIDING_ROWS[i].0).unwrap();
    for (i, (_, email, _)) in COLLIDING_ROWS.iter().enumerate() {
        assert_eq!(s.get(&id(i)).unwrap().unwrap().fields.email, *email);
    }
    let named = |s: &mut dyn Store| -> Vec<(String, String)> {
        let found = s.email_key_conflicts().unwrap();
        found.into_iter().map(|c| (c.id, c.kept_id)).collect()
    };
    let kept = COLLIDING_ROWS[1].0.to_owned();
    assert_eq!(
        named(s),
        [
            (COLLIDING_ROWS[0].0.to_owned(), kept.clone()),
            (COLLIDING_ROWS[2].0.to_owned(), kept.clone())
        ]
    );
    let newcomer = customer("New", "JOSÉ@X.IO");
    assert!(matches!(
        decided(one(s, WriteOp::Insert(newcomer))),
        Err(Error::Conflict(_))
    ));
    let rename = WriteOp::Update {
        id: id(0),
        fields: fields("Renamed", COLLIDING_ROWS[0].1),
        expected_version: 1,
        now: 10,
    };
    assert!(
        decided(one(s, rename)).is_ok(),
        "a name change of a reported row"
    );
    assert_eq!(named(s).len(), 2);
    let moved = WriteOp::Update {
        id: id(0),
        fields: fields("Renamed", "jose.other@x.io"),
        expected_version: 2,
        now: 11,
    };
    assert!(decided(one(s, moved)).is_ok());
    assert_eq!(named(s), [(COLLIDING_ROWS[2].0.to_owned(), kept)]);
}

/// A create retried with the same id and fields returns the stored row.
pub fn a_repeated_insert_is_idempotent_and_a_different_body_conflicts(s: &mut dyn Store) {
    let c = customer("A", "a@x.io");
    one(s, WriteOp::Insert(c.clone()));
    let mut again = c.clone();
    again.created_at = 99; // a retry computes a new timestamp; the stored row wins
    assert_eq!(decided(one(s, WriteOp::Insert(again))), Ok(Some(c.clone())));
    let mut other = c.clone();
    other.fields.name = "B".into();
    assert!(matches!(
        decided(one(s, WriteOp::Insert(other))),
        Err(Error::Conflict(_))
    ));
}

/// Domain failures are per write; the rest of the batch commits.
pub fn failed_writes_in_a_batch_do_not_abort_the_others(s: &mut dyn Store) {
    let a = customer("A", "a@x.io");
    let dup = customer("Dup", "a@x.io");
    let b = customer("B", "b@x.io");
    let missing = WriteOp::Delete {
        id: new_customer_id(),
        expected_version: None,
    };
    let batch: Vec<Write> = vec![
        WriteOp::Insert(a.clone()).into(),
        WriteOp::Insert(dup.clone()).into(),
        missing.into(),
        WriteOp::Insert(b.clone()).into(),
    ];
    let out: Vec<_> = s
        .write_batch(&batch)
        .unwrap()
        .into_iter()
        .map(decided)
        .collect();
    assert!(out[0].is_ok() && out[3].is_ok());
    assert!(matches!(out[1], Err(Error::Conflict(_))));
    assert!(matches!(out[2], Err(Error::NotFound(_))));
    assert!(s.get(&a.id).unwrap().is_some() && s.get(&b.id).unwrap().is_some());
    assert_eq!(s.get(&dup.id).unwrap(), None);
}

/// Lists page by id; deleted customers are not listed.
pub fn list_pages_by_id_with_a_keyset_cursor_and_skips_deleted(s: &mut dyn Store) {
    let mut ids = Vec::new();
    for i in 0..25 {
        let c = customer("C", &format!("c{i}@x.io"));
        one(s, WriteOp::Insert(c.clone()));
        if i % 5 == 0 {
            let del = WriteOp::Delete {
                id: c.id,
                expected_version: Some(1),
            };
            decided(one(s, del)).unwrap();
        } else {
            ids.push(c.id);
        }
    }
    ids.sort_by_key(|id| id.to_string());
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s.list(after.as_ref(), 7).unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 7);
        after = page.last().map(|c| c.id);
        seen.extend(page.into_iter().map(|c| c.id));
    }
    assert_eq!(seen, ids);
}

/// Data is data: quotes, SQL and emoji round-trip.
pub fn sql_metacharacters_and_unicode_are_stored_verbatim(s: &mut dyn Store) {
    let c = customer("Robert'); DROP TABLE customers;-- 🐘", "bobby@x.io");
    one(s, WriteOp::Insert(c.clone()));
    assert_eq!(s.get(&c.id).unwrap(), Some(c));
}

// ---------------------------------------------------------------------------------------------
// Tombstones (F5)

/// After a delete the customer is gone for reads and writes, and its id cannot be recreated.
pub fn a_deleted_customer_is_absent_and_its_id_cannot_be_created_again(s: &mut dyn Store) {
    let c = customer("A", "a@x.io");
    one(s, WriteOp::Insert(c.clone()));
    let del = WriteOp::Delete {
        id: c.id,
        expected_version: None,
    };
    assert_eq!(decided(one(s, del.clone())), Ok(None));
    assert_eq!(s.get(&c.id).unwrap(), None);
    assert!(s.list(None, 10).unwrap().is_empty());
    assert!(matches!(
        decided(one(s, WriteOp::Insert(c.clone()))),
        Err(Error::Conflict(_))
    ));
    assert!(matches!(decided(one(s, del)), Err(Error::NotFound(_))));
    assert_eq!(s.get(&c.id).unwrap(), None);
}

/// No write can ever produce a version for a deleted id again.
pub fn versions_never_repeat_for_a_deleted_id(s: &mut dyn Store) {
    let c = customer("A", "a@x.io");
    one(s, WriteOp::Insert(c.clone()));
    decided(one(s, update(&c, "B", 1))).unwrap();
    let del = WriteOp::Delete {
        id: c.id,
        expected_version: Some(2),
    };
    decided(one(s, del)).unwrap();
    for version in 1..=4 {
        assert!(
            matches!(
                decided(one(s, update(&c, "Again", version))),
                Err(Error::NotFound(_))
            ),
            "an update at version {version} of a deleted customer must not apply"
        );
    }
    assert!(matches!(
        decided(one(s, WriteOp::Insert(c.clone()))),
        Err(Error::Conflict(_))
    ));
    assert_eq!(s.get(&c.id).unwrap(), None);
}

/// Email is unique among live customers only.
pub fn a_deleted_customers_email_is_free_again(s: &mut dyn Store) {
    let a = customer("A", "a@x.io");
    one(s, WriteOp::Insert(a.clone()));
    let del = WriteOp::Delete {
        id: a.id,
        expected_version: Some(1),
    };
    decided(one(s, del)).unwrap();
    let b = customer("B", "A@X.io");
    assert_eq!(
        decided(one(s, WriteOp::Insert(b.clone()))),
        Ok(Some(b.clone()))
    );
    let c = customer("C", "a@x.io");
    assert!(matches!(
        decided(one(s, WriteOp::Insert(c))),
        Err(Error::Conflict(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// Request ids (F1, F3, F4)

/// A replay answers with the first result, applies nothing, and says it is a replay — also
/// after a newer write (§10 case 10).
pub fn a_replayed_request_returns_the_stored_result_without_applying(s: &mut dyn Store) {
    let c = customer("A", "a@x.io");
    let create = stamp("create-1", 11, 1, 10);
    let first = one(
        s,
        with(WriteOp::Insert(c.clone()), None, Some(create.clone())),
    );
    assert_eq!(decided(first), Ok(Some(c.clone())));
    let put = stamp("put-1", 22, 1, 20);
    let v2 = decided(one(s, with(update(&c, "B", 1), None, Some(put.clone()))))
        .unwrap()
        .unwrap();
    let replay = one(s, with(update(&c, "B", 1), None, Some(put.clone())));
    assert_eq!(
        replay,
        WriteOutcome::Replayed(StoredResult::Row(v2.clone()))
    );
    assert_eq!(s.get(&c.id).unwrap().unwrap().version, 2);
    // A newer write, then the replay again: the replay still answers v2 and changes nothing.
    let v3 = decided(one(s, update(&c, "C", 2))).unwrap().unwrap();
    let late = one(s, with(update(&c, "B", 1), None, Some(put)));
    assert_eq!(late, WriteOutcome::Replayed(StoredResult::Row(v2)));
    assert_eq!(s.get(&c.id).unwrap(), Some(v3));
    let create_again = one(s, with(WriteOp::Insert(c.clone()), None, Some(create)));
    assert_eq!(create_again, WriteOutcome::Replayed(StoredResult::Row(c)));
}

/// The same key with another body is refused and applies nothing.
pub fn a_request_id_reused_with_another_body_is_invalid_input(s: &mut dyn Store) {
    let c = customer("A", "a@x.io");
    one(
        s,
        with(WriteOp::Insert(c.clone()), None, Some(stamp("k", 1, 1, 0))),
    );
    let other = one(s, with(update(&c, "B", 1), None, Some(stamp("k", 2, 1, 0))));
    assert!(matches!(decided(other), Err(Error::InvalidInput(_))));
    assert_eq!(s.get(&c.id).unwrap().unwrap().version, 1);
    // The first answer is still the key's answer.
    let replay = one(
        s,
        with(WriteOp::Insert(c.clone()), None, Some(stamp("k", 1, 2, 0))),
    );
    assert_eq!(replay, WriteOutcome::Replayed(StoredResult::Row(c)));
}

/// A final domain error is the key's answer for good: one key, one final answer.
pub fn a_stored_domain_error_is_replayed_even_after_the_cause_is_gone(s: &mut dyn Store) {
    let holder = customer("Holder", "taken@x.io");
    one(s, WriteOp::Insert(holder.clone()));
    let late = customer("Late", "taken@x.io");
    let key = stamp("create-late", 5, 1, 0);
    let first = decided(one(
        s,
        with(WriteOp::Insert(late.clone()), None, Some(key.clone())),
    ));
    assert!(matches!(first, Err(Error::Conflict(_))));
    let del = WriteOp::Delete {
        id: holder.id,
        expected_version: Some(1),
    };
    decided(one(s, del)).unwrap();
    let replay = one(s, with(WriteOp::Insert(late.clone()), None, Some(key)));
    assert!(matches!(
        replay,
        WriteOutcome::Replayed(StoredResult::Failed(Error::Conflict(_)))
    ));
    assert_eq!(s.get(&late.id).unwrap(), None);
}

/// F3: an attempt settled as aborted never applies; a new attempt applies exactly once (§10
/// case 11).
pub fn an_aborted_request_applies_once_when_retried_as_a_new_attempt(s: &mut dyn Store) {
    let c = customer("A", "a@x.io");
    one(s, WriteOp::Insert(c.clone()));
    let attempt1 = stamp("put", 7, 1, 0);
    assert_eq!(s.settle(&attempt1).unwrap(), Settlement::Aborted);
    // The aborted attempt arrives late: it must not apply.
    let late = one(s, with(update(&c, "Late", 1), None, Some(attempt1)));
    assert_eq!(late, WriteOutcome::Replayed(StoredResult::Aborted));
    assert_eq!(s.get(&c.id).unwrap().unwrap().version, 1);
    // The client's retry is attempt 2: it applies.
    let retry = one(
        s,
        with(update(&c, "Retry", 1), None, Some(stamp("put", 7, 2, 0))),
    );
    let v2 = decided(retry).unwrap().unwrap();
    assert_eq!((v2.version, v2.fields.name.as_str()), (2, "Retry"));
    // Any further attempt is a replay of that.
    let third = one(
        s,
        with(update(&c, "Retry", 1), None, Some(stamp("put", 7, 3, 0))),
    );
    assert_eq!(third, WriteOutcome::Replayed(StoredResult::Row(v2)));
    assert_eq!(s.get(&c.id).unwrap().unwrap().version, 2);
}

/// F3: settle inserts an abort, or answers with what is already stored.
pub fn settle_answers_aborted_when_inserted_and_the_stored_result_on_conflict(s: &mut dyn Store) {
    let c = customer("A", "a@x.io");
    let key = stamp("create", 3, 1, 0);
    let row = decided(one(
        s,
        with(WriteOp::Insert(c.clone()), None, Some(key.clone())),
    ));
    assert_eq!(row, Ok(Some(c.clone())));
    assert_eq!(
        s.settle(&key).unwrap(),
        Settlement::Stored(StoredResult::Row(c))
    );
    let unknown = stamp("never-arrived", 4, 1, 0);
    assert_eq!(s.settle(&unknown).unwrap(), Settlement::Aborted);
    assert_eq!(
        s.settle(&unknown).unwrap(),
        Settlement::Stored(StoredResult::Aborted)
    );
    // Settling a later attempt of an aborted key aborts that attempt too.
    assert_eq!(
        s.settle(&stamp("never-arrived", 4, 2, 0)).unwrap(),
        Settlement::Aborted
    );
    assert!(matches!(
        s.settle(&stamp("never-arrived", 9, 3, 0)),
        Err(Error::InvalidInput(_))
    ));
}

/// F3: the aborted attempts of one id are a set. Settling a1 then a2 (a client that retried a
/// 503 while the database was slow) leaves both refused, whichever arrives late; only a third
/// attempt applies, and a1 arriving after that still changes nothing.
pub fn every_settled_attempt_stays_aborted_whatever_is_settled_after_it(s: &mut dyn Store) {
    let c = customer("A", "a@x.io");
    one(s, WriteOp::Insert(c.clone()));
    let a1 = stamp("slow", 5, 1, 0);
    let a2 = stamp("slow", 5, 2, 0);
    assert_eq!(s.settle(&a1).unwrap(), Settlement::Aborted);
    assert_eq!(s.settle(&a2).unwrap(), Settlement::Aborted);
    // Settling either again answers what is recorded, and records nothing new.
    assert_eq!(
        s.settle(&a1).unwrap(),
        Settlement::Stored(StoredResult::Aborted)
    );
    for late in [&a1, &a2] {
        let outcome = one(s, with(update(&c, "Late", 1), None, Some(late.clone())));
        assert_eq!(outcome, WriteOutcome::Replayed(StoredResult::Aborted));
        assert_eq!(
            s.get(&c.id).unwrap().unwrap().version,
            1,
            "{late:?} applied"
        );
    }
    let a3 = stamp("slow", 5, 3, 0);
    let v2 = decided(one(s, with(update(&c, "Retry", 1), None, Some(a3)))).unwrap();
    let v2 = v2.unwrap();
    // An acknowledged write later (its own key), then a1 arrives with a plan made from v2:
    // still refused, so it can never overwrite the acknowledged v3.
    let v3 = decided(one(
        s,
        with(update(&v2, "Next", 2), None, Some(stamp("next", 6, 1, 0))),
    ))
    .unwrap()
    .unwrap();
    let outcome = one(s, with(update(&v3, "Late", 3), None, Some(a1.clone())));
    assert_eq!(outcome, WriteOutcome::Replayed(StoredResult::Aborted));
    assert_eq!(s.get(&c.id).unwrap().unwrap().fields.name, "Next");
    // A settle of a1 now still says aborted; of a new attempt, the stored row of a3.
    assert_eq!(
        s.settle(&a1).unwrap(),
        Settlement::Stored(StoredResult::Aborted)
    );
    assert_eq!(
        s.settle(&stamp("slow", 5, 4, 0)).unwrap(),
        Settlement::Stored(StoredResult::Row(v2))
    );
}

/// F4: a create retried through another entry node (which chose another customer id) gets the
/// first create's customer back.
pub fn request_ids_are_global_not_per_customer(s: &mut dyn Store) {
    let first = customer("A", "a@x.io");
    let key = stamp("create-a", 42, 1, 0);
    one(
        s,
        with(WriteOp::Insert(first.clone()), None, Some(key.clone())),
    );
    let mut elsewhere = first.clone();
    elsewhere.id = new_customer_id();
    let retry = one(s, with(WriteOp::Insert(elsewhere.clone()), None, Some(key)));
    assert_eq!(retry, WriteOutcome::Replayed(StoredResult::Row(first)));
    assert_eq!(s.get(&elsewhere.id).unwrap(), None);
}

/// A version miss is no final answer: the writer reloads and retries under the same key.
pub fn a_version_miss_does_not_record_the_request_id(s: &mut dyn Store) {
    let c = customer("A", "a@x.io");
    one(s, WriteOp::Insert(c.clone()));
    decided(one(s, update(&c, "Other", 1))).unwrap();
    let key = stamp("put", 1, 1, 0);
    let miss = one(s, with(update(&c, "Mine", 1), None, Some(key.clone())));
    assert!(matches!(decided(miss), Err(Error::VersionConflict { .. })));
    let applied = decided(one(s, with(update(&c, "Mine", 2), None, Some(key))));
    assert_eq!(applied.unwrap().unwrap().version, 3);
}

/// F4: pruning removes ids applied before the cutoff and keeps the others.
pub fn pruning_forgets_only_old_request_ids(s: &mut dyn Store) {
    let old = customer("Old", "old@x.io");
    let new = customer("New", "new@x.io");
    let old_key = stamp("old", 1, 1, 1_000);
    let new_key = stamp("new", 2, 1, 5_000);
    one(
        s,
        with(WriteOp::Insert(old.clone()), None, Some(old_key.clone())),
    );
    one(
        s,
        with(WriteOp::Insert(new.clone()), None, Some(new_key.clone())),
    );
    assert_eq!(s.prune_requests(3_000, BATCH).unwrap(), 1);
    assert_eq!(s.prune_requests(3_000, BATCH).unwrap(), 0);
    let kept = one(s, with(WriteOp::Insert(new.clone()), None, Some(new_key)));
    assert_eq!(kept, WriteOutcome::Replayed(StoredResult::Row(new)));
    // The pruned id is unknown again: the (idempotent) create is decided afresh.
    let forgotten = one(s, with(WriteOp::Insert(old.clone()), None, Some(old_key)));
    assert_eq!(forgotten, WriteOutcome::Decided(Ok(Some(old))));
}

/// F4 with the node's window: an id stored 25 h ago is forgotten (its retry is a new request),
/// one stored 23 h ago still replays its first answer; an abort past the window goes too.
pub fn an_id_past_the_retention_window_is_forgotten_and_one_inside_it_replays(s: &mut dyn Store) {
    const HOUR: i64 = 3_600_000_000;
    let now = 30 * 24 * HOUR;
    let cutoff = PruneConfig::new(MIN_RETENTION).unwrap().cutoff(now);
    let old = customer("Old", "old@x.io");
    let young = customer("Young", "young@x.io");
    let old_key = stamp("old", 1, 1, now - 25 * HOUR);
    let young_key = stamp("young", 2, 1, now - 23 * HOUR);
    one(
        s,
        with(WriteOp::Insert(old.clone()), None, Some(old_key.clone())),
    );
    one(
        s,
        with(
            WriteOp::Insert(young.clone()),
            None,
            Some(young_key.clone()),
        ),
    );
    let aborted = stamp("aborted", 3, 1, now - 48 * HOUR);
    assert_eq!(s.settle(&aborted).unwrap(), Settlement::Aborted);
    assert_eq!(s.prune_requests(cutoff, BATCH).unwrap(), 2);
    let replayed = one(
        s,
        with(WriteOp::Insert(young.clone()), None, Some(young_key)),
    );
    assert_eq!(replayed, WriteOutcome::Replayed(StoredResult::Row(young)));
    let renamed = WriteOp::Insert(Customer {
        fields: fields("Renamed", "old@x.io"),
        ..old.clone()
    });
    let retried = one(s, with(renamed, None, Some(old_key)));
    assert!(
        matches!(retried, WriteOutcome::Decided(Err(Error::Conflict(_)))),
        "a forgotten id is decided afresh (here: the id exists with other fields): {retried:?}"
    );
}

/// F4 off the hot path: one prune statement removes at most its batch, oldest first; repeated
/// batches remove every expired id and nothing younger.
pub fn a_prune_removes_one_batch_oldest_first_and_repeated_batches_remove_all(s: &mut dyn Store) {
    let rows: Vec<(Customer, RequestStamp)> = (1..=8)
        .map(|i| {
            let c = customer(&format!("C{i}"), &format!("c{i}@x.io"));
            (c, stamp(&format!("k{i}"), i, 1, i as i64 * 1_000))
        })
        .collect();
    let writes: Vec<Write> = rows
        .iter()
        .map(|(c, k)| with(WriteOp::Insert(c.clone()), None, Some(k.clone())))
        .collect();
    s.write_batch(&writes).expect("batch commits");
    // Ids k1..k7 are past the cutoff, k8 is not.
    let replay = |s: &mut dyn Store, i: usize| one(s, writes[i].clone());
    assert_eq!(s.prune_requests(7_500, 3).unwrap(), 3);
    assert_eq!(
        replay(s, 3),
        WriteOutcome::Replayed(StoredResult::Row(rows[3].0.clone())),
        "the fourth oldest is kept by the first batch"
    );
    assert_eq!(s.prune_requests(7_500, 3).unwrap(), 3);
    assert_eq!(s.prune_requests(7_500, 3).unwrap(), 1);
    assert_eq!(s.prune_requests(7_500, 3).unwrap(), 0);
    assert_eq!(
        replay(s, 7),
        WriteOutcome::Replayed(StoredResult::Row(rows[7].0.clone()))
    );
    assert_eq!(
        replay(s, 0),
        WriteOutcome::Decided(Ok(Some(rows[0].0.clone()))),
        "the oldest is forgotten: its retry is decided afresh"
    );
}

// ---------------------------------------------------------------------------------------------
// Fencing (F1)

/// A write under a token that is no longer the shard's is fenced, leaves no trace (its request
/// id included), and the retry at the right token applies.
pub fn a_stale_token_is_fenced_and_the_retry_at_the_right_token_applies(s: &mut dyn Store) {
    let n1 = registered(s, "n1", 1);
    let token = granted(s, &n1, &[7])[0].token;
    let c = customer("A", "a@x.io");
    let key = stamp("create", 9, 1, 0);
    let stale = Fence {
        shard: 7,
        token: token - 1,
    };
    let fenced = one(
        s,
        with(WriteOp::Insert(c.clone()), Some(stale), Some(key.clone())),
    );
    assert_eq!(
        fenced,
        WriteOutcome::Fenced {
            holder: Some("n1".into()),
            token
        }
    );
    assert_eq!(s.get(&c.id).unwrap(), None);
    let right = Fence { shard: 7, token };
    let retry = one(s, with(WriteOp::Insert(c.clone()), Some(right), Some(key)));
    assert_eq!(retry, WriteOutcome::Decided(Ok(Some(c.clone()))));
    assert_eq!(s.get(&c.id).unwrap(), Some(c));
}

/// §10 case 8: a batch holding a fenced write, a duplicate email and valid writes ⇒ only the
/// first two fail.
pub fn a_fenced_write_and_a_duplicate_email_fail_alone_in_their_batch(s: &mut dyn Store) {
    let n1 = registered(s, "n1", 1);
    let token = granted(s, &n1, &[1, 2])[0].token;
    let existing = customer("E", "e@x.io");
    one(s, WriteOp::Insert(existing.clone()));
    let fence = Fence { shard: 1, token };
    let stale = Fence {
        shard: 2,
        token: token + 5,
    };
    let fenced = customer("F", "f@x.io");
    let dup = customer("D", "e@x.io");
    let fresh = customer("V", "v@x.io");
    let batch = vec![
        with(
            WriteOp::Insert(fenced.clone()),
            Some(stale),
            Some(stamp("f", 1, 1, 0)),
        ),
        with(
            WriteOp::Insert(dup.clone()),
            Some(fence),
            Some(stamp("d", 2, 1, 0)),
        ),
        with(
            WriteOp::Insert(fresh.clone()),
            Some(fence),
            Some(stamp("v", 3, 1, 0)),
        ),
        with(update(&existing, "E2", 1), Some(fence), None),
    ];
    let out = s.write_batch(&batch).unwrap();
    assert!(matches!(out[0], WriteOutcome::Fenced { .. }));
    assert!(matches!(
        out[1],
        WriteOutcome::Decided(Err(Error::Conflict(_)))
    ));
    assert_eq!(out[2], WriteOutcome::Decided(Ok(Some(fresh.clone()))));
    assert!(matches!(out[3], WriteOutcome::Decided(Ok(Some(_)))));
    assert_eq!(s.get(&fenced.id).unwrap(), None);
    assert_eq!(s.get(&dup.id).unwrap(), None);
    assert_eq!(s.get(&fresh.id).unwrap(), Some(fresh));
    assert_eq!(s.get(&existing.id).unwrap().unwrap().version, 2);
}

// ---------------------------------------------------------------------------------------------
// Leases (L1, L2, L5, L6)

/// The migration creates one row per shard, unheld, at token 0.
pub fn every_shard_exists_unheld_before_any_grant(s: &mut dyn Store) {
    let table = s.lease_table().unwrap();
    assert_eq!(table.len(), usize::from(crate::storage::leases::SHARD_ROWS));
    for (i, row) in table.iter().enumerate() {
        assert_eq!(usize::from(row.shard), i);
        assert_eq!((row.holder.as_deref(), row.token), (None, 0));
    }
    assert!(s.node_table().unwrap().is_empty());
}

/// L1: a new name starts at epoch 1; another live incarnation is reported, not overwritten; the
/// same incarnation re-registering (after LOST) moves to a new epoch.
pub fn a_new_name_registers_at_epoch_1_and_a_live_row_is_never_overwritten(s: &mut dyn Store) {
    assert_eq!(
        s.register("n1", 11).unwrap(),
        Registration::Registered { epoch: 1 }
    );
    match s.register("n1", 22).unwrap() {
        Registration::Occupied(row) => {
            assert_eq!((row.incarnation, row.epoch), (Some(11), 1));
        }
        other => panic!("a live row was taken: {other:?}"),
    }
    assert_eq!(
        s.register("n1", 11).unwrap(),
        Registration::Registered { epoch: 2 }
    );
    assert_eq!(
        s.register("n2", 33).unwrap(),
        Registration::Registered { epoch: 1 }
    );
}

/// L6 then L1: a graceful stop clears the incarnation; a restart registers at a later epoch.
pub fn a_cleared_row_is_taken_over_at_a_later_epoch(s: &mut dyn Store) {
    let old = registered(s, "n1", 1);
    assert!(!s.clear_incarnation("n1", 2).unwrap());
    assert!(s.clear_incarnation("n1", 1).unwrap());
    let new = registered(s, "n1", 2);
    assert!(new.epoch > old.epoch);
    assert!(matches!(
        s.renew(&old, 5, 2000).unwrap(),
        Renewal::Superseded { .. }
    ));
}

/// L2: a renew bumps seq and returns the node table; after revocation it is LOST; after the
/// name moved to another incarnation it is SUPERSEDED.
pub fn renew_answers_renewed_lost_or_superseded(s: &mut dyn Store) {
    let n1 = registered(s, "n1", 1);
    let n2 = registered(s, "n2", 2);
    match s.renew(&n1, 1, 10_000).unwrap() {
        Renewal::Renewed { table } => {
            let names: Vec<_> = table
                .iter()
                .map(|n| (n.node.as_str(), n.seq, n.ttl_ms))
                .collect();
            // Each row says the TTL its renewer runs with (L4); n2 has not renewed yet.
            assert_eq!(names, vec![("n1", 1, 10_000), ("n2", 0, 0)]);
        }
        other => panic!("renew failed: {other:?}"),
    }
    let seen = observe(s, "n1");
    assert!(matches!(
        s.takeover(&n2, &seen, &[]).unwrap(),
        Takeover::Done { .. }
    ));
    match s.renew(&n1, 2, 2000).unwrap() {
        Renewal::Lost { current } => assert_eq!(current.epoch, n1.epoch + 1),
        other => panic!("expected LOST, got {other:?}"),
    }
    let seen = observe(s, "n1");
    assert!(matches!(
        s.takeover_own_row(3, &seen, &[]).unwrap(),
        Takeover::Done { .. }
    ));
    match s.renew(&n1, 3, 2000).unwrap() {
        Renewal::Superseded { current } => {
            assert_eq!(current.and_then(|c| c.incarnation), Some(3));
        }
        other => panic!("expected SUPERSEDED, got {other:?}"),
    }
}

/// L5: a takeover revokes the victim (epoch + 1) and grants the contender the victim's shards,
/// each at token + 1 — never a shard a live node holds.
pub fn a_takeover_bumps_the_victims_epoch_and_grants_only_its_shards(s: &mut dyn Store) {
    let victim = registered(s, "n1", 1);
    let contender = registered(s, "n2", 2);
    let bystander = registered(s, "n3", 3);
    let theirs = granted(s, &victim, &[0, 1, 2, 3]);
    granted(s, &bystander, &[4, 5]);
    let seen = observe(s, "n1");
    let Takeover::Done {
        victim_epoch,
        granted: got,
    } = s.takeover(&contender, &seen, &[5, 3, 2, 1, 0, 4]).unwrap()
    else {
        panic!("the takeover must apply");
    };
    assert_eq!(victim_epoch, victim.epoch + 1);
    assert_eq!(observe(s, "n1").epoch, victim.epoch + 1);
    assert_eq!(shards_of(&got), vec![0, 1, 2, 3]);
    for (before, after) in theirs.iter().zip(&got) {
        assert_eq!(after.token, before.token + 1);
        assert_eq!(holder_of(s, after.shard), (Some("n2".into()), after.token));
    }
    assert_eq!(holder_of(s, 4).0.as_deref(), Some("n3"));
    assert_eq!(holder_of(s, 5).0.as_deref(), Some("n3"));
}

/// §10 case 12: two contenders split a dead node's shards; the second finds the victim already
/// revoked, and its grant still takes the shards held under the stale epoch.
pub fn two_contenders_splitting_a_dead_nodes_shards_leave_none_orphaned(s: &mut dyn Store) {
    let dead = registered(s, "n1", 1);
    let b = registered(s, "n2", 2);
    let c = registered(s, "n3", 3);
    let all: Vec<ShardId> = (0..10).collect();
    granted(s, &dead, &all);
    let seen_by_b = observe(s, "n1");
    let seen_by_c = seen_by_b.clone();
    let Takeover::Done { granted: to_b, .. } = s.takeover(&b, &seen_by_b, &all[..5]).unwrap()
    else {
        panic!("b's takeover must apply");
    };
    assert_eq!(shards_of(&to_b), all[..5].to_vec());
    assert!(matches!(
        s.takeover(&c, &seen_by_c, &all[5..]).unwrap(),
        Takeover::VictimMoved { .. }
    ));
    assert_eq!(shards_of(&granted(s, &c, &all[5..])), all[5..].to_vec());
    for shard in all {
        let (holder, _) = holder_of(s, shard);
        let expect = if shard < 5 { "n2" } else { "n3" };
        assert_eq!(holder.as_deref(), Some(expect), "shard {shard}");
    }
}

/// L5: if the victim renewed after the contender's observation, nothing at all happens.
pub fn a_takeover_with_a_stale_observed_seq_does_nothing(s: &mut dyn Store) {
    let victim = registered(s, "n1", 1);
    let contender = registered(s, "n2", 2);
    granted(s, &victim, &[3]);
    let seen = observe(s, "n1");
    assert!(matches!(
        s.renew(&victim, 1, 2000).unwrap(),
        Renewal::Renewed { .. }
    ));
    let before = s.lease_table().unwrap();
    match s.takeover(&contender, &seen, &[3]).unwrap() {
        Takeover::VictimMoved { current } => {
            assert_eq!(current.map(|c| (c.epoch, c.seq)), Some((victim.epoch, 1)));
        }
        other => panic!("a stale observation must not revoke: {other:?}"),
    }
    assert_eq!(s.lease_table().unwrap(), before);
    assert!(matches!(
        s.renew(&victim, 2, 2000).unwrap(),
        Renewal::Renewed { .. }
    ));
}

/// L5: a contender must be current itself, checked in the same transaction.
pub fn a_contender_that_is_not_current_can_neither_take_over_nor_grant(s: &mut dyn Store) {
    let victim = registered(s, "n1", 1);
    let stale = registered(s, "n2", 2);
    let n3 = registered(s, "n3", 3);
    granted(s, &victim, &[0]);
    let seen_n2 = observe(s, "n2");
    assert!(matches!(
        s.takeover(&n3, &seen_n2, &[]).unwrap(),
        Takeover::Done { .. }
    ));
    let seen_n1 = observe(s, "n1");
    assert_eq!(
        s.takeover(&stale, &seen_n1, &[0]).unwrap(),
        Takeover::NotCurrent
    );
    assert_eq!(s.grant(&stale, &[1]).unwrap(), Grant::NotCurrent);
    assert_eq!(observe(s, "n1"), seen_n1);
    assert_eq!(holder_of(s, 0).0.as_deref(), Some("n1"));
    assert_eq!(holder_of(s, 1), (None, 0));
}

/// L6: a release at the current token frees the shard for an immediate grant; a release at an
/// old token, or by another node than the holder, does nothing.
pub fn a_released_shard_is_granted_at_once_and_a_stale_release_does_nothing(s: &mut dyn Store) {
    let n1 = registered(s, "n1", 1);
    let n2 = registered(s, "n2", 2);
    let t1 = granted(s, &n1, &[9])[0].token;
    assert!(
        granted(s, &n2, &[9]).is_empty(),
        "a held shard is not grantable"
    );
    match s.release("n2", 9, t1).unwrap() {
        Release::NotHeld(row) => assert_eq!(row.holder.as_deref(), Some("n1")),
        other => panic!("a release by another node than the holder applied: {other:?}"),
    }
    assert_eq!(holder_of(s, 9), (Some("n1".into()), t1));
    assert_eq!(
        s.release("n1", 9, t1).unwrap(),
        Release::Released { token: t1 + 1 }
    );
    assert_eq!(holder_of(s, 9), (None, t1 + 1));
    match s.release("n1", 9, t1).unwrap() {
        Release::NotHeld(row) => assert_eq!(row.token, t1 + 1),
        other => panic!("a stale release applied: {other:?}"),
    }
    let t3 = granted(s, &n2, &[9])[0].token;
    assert_eq!(t3, t1 + 2);
    assert_eq!(holder_of(s, 9), (Some("n2".into()), t3));
}

/// L5: every grant and release moves the token up; a renew never touches a shard.
pub fn the_token_grows_on_every_grant_and_release_and_never_on_renew(s: &mut dyn Store) {
    let n1 = registered(s, "n1", 1);
    let n2 = registered(s, "n2", 2);
    let mut last = token_of(s, 0);
    let mut advanced = |s: &mut dyn Store, what: &str| {
        let now = token_of(s, 0);
        assert!(now > last, "{what} must raise the token ({last} -> {now})");
        last = now;
    };
    granted(s, &n1, &[0]);
    advanced(s, "a grant");
    let table = s.lease_table().unwrap();
    for k in 1..=3 {
        assert!(matches!(
            s.renew(&n1, k, 2000).unwrap(),
            Renewal::Renewed { .. }
        ));
    }
    assert_eq!(s.lease_table().unwrap(), table, "renews changed shard rows");
    let seen = observe(s, "n1");
    s.takeover(&n2, &seen, &[0]).unwrap();
    advanced(s, "a takeover");
    let token = token_of(s, 0);
    s.release("n2", 0, token).unwrap();
    advanced(s, "a release");
    granted(s, &n2, &[0]);
    advanced(s, "a grant after release");
}

/// L5 for restarts: a new incarnation of the same name takes the row over only from the row it
/// observed, and then gets the old incarnation's shards at new tokens.
pub fn a_restarted_process_takes_its_own_row_over_only_as_observed(s: &mut dyn Store) {
    let old = registered(s, "n1", 1);
    let held = granted(s, &old, &[4, 5]);
    assert!(matches!(
        s.register("n1", 2).unwrap(),
        Registration::Occupied(_)
    ));
    let seen = observe(s, "n1");
    assert!(matches!(
        s.renew(&old, 1, 2000).unwrap(),
        Renewal::Renewed { .. }
    ));
    assert!(matches!(
        s.takeover_own_row(2, &seen, &[4, 5]).unwrap(),
        Takeover::VictimMoved { .. }
    ));
    let seen = observe(s, "n1");
    let Takeover::Done {
        victim_epoch,
        granted: got,
    } = s.takeover_own_row(2, &seen, &[4, 5]).unwrap()
    else {
        panic!("the takeover of the unchanged row must apply");
    };
    assert_eq!(victim_epoch, old.epoch + 1);
    assert_eq!(shards_of(&got), vec![4, 5]);
    assert!(got.iter().zip(&held).all(|(g, h)| g.token == h.token + 1));
    let row = s.lease_table().unwrap().remove(4);
    assert_eq!(
        (row.holder_incarnation, row.holder_epoch),
        (Some(2), Some(victim_epoch))
    );
    assert!(matches!(
        s.renew(&old, 2, 2000).unwrap(),
        Renewal::Superseded { .. }
    ));
    let new = Holder {
        node: "n1".into(),
        incarnation: 2,
        epoch: victim_epoch,
    };
    assert!(matches!(
        s.renew(&new, 1, 2000).unwrap(),
        Renewal::Renewed { .. }
    ));
}

/// L6: after a graceful stop, a shard whose release was lost is grantable at once.
pub fn a_graceful_stop_leaves_no_shard_orphaned(s: &mut dyn Store) {
    let n1 = registered(s, "n1", 1);
    let n2 = registered(s, "n2", 2);
    granted(s, &n1, &[3]);
    assert!(s.clear_incarnation("n1", 1).unwrap());
    assert_eq!(shards_of(&granted(s, &n2, &[3])), vec![3]);
}
