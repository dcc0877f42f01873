//! Reconcile (DESIGN §6 L6): what to do with `shard_leases` rows after a grant or release
//! whose reply was lost.
//!
//! A lost reply leaves the outcome unknown: the grant may have committed (the database names
//! us, at a token we never learnt) or not; the release may have committed or not. The node
//! reads the rows naming its own `(incarnation, epoch)` and decides per shard: **adopt** at
//! the stored token when placement says the shard is ours, else **release** it at that token.
//! A shard we believe we hold but the rows no longer name is **lost** (someone else was
//! granted it). Rows naming any other holder, incarnation or epoch are none of our business:
//! they were granted to someone else, or to an earlier life of ours that a contender revoked.

use crate::cluster::placement::ShardId;

/// One `shard_leases` row as the database returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLeaseRow {
    /// Shard number.
    pub shard: ShardId,
    /// Holder node name; `None` when released.
    pub holder: Option<String>,
    /// Holder's incarnation at grant time.
    pub holder_incarnation: u64,
    /// Holder's epoch at grant time.
    pub holder_epoch: u64,
    /// Fencing token; every grant and release increments it.
    pub token: u64,
}

/// Who we are, as the rows name a holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderId {
    /// Node name.
    pub node: String,
    /// This process start.
    pub incarnation: u64,
    /// Current epoch.
    pub epoch: u64,
}

/// One reconcile decision, ascending by shard (the order grants and releases lock rows in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconciled {
    /// The row names us and placement says the shard is ours: hold it at the stored token.
    Adopt {
        /// Shard.
        shard: ShardId,
        /// Token stored in the row.
        token: u64,
    },
    /// The row names us but placement gives the shard to another node (or we are leaving):
    /// release it (`WHERE shard=$s AND token=$token`).
    Release {
        /// Shard.
        shard: ShardId,
        /// Token stored in the row.
        token: u64,
    },
    /// We believed we held it, but the row no longer names us: LOST.
    Lost {
        /// Shard.
        shard: ShardId,
    },
}

/// Decides adopt / release / lost for every row naming `me`, and for every shard in
/// `believed` (what we think we hold, with tokens) that the rows do not name. `placed_here`
/// is placement's answer for this node; pass a function returning false for every shard when
/// shutting down, so everything found is released.
pub fn reconcile(
    me: &HolderId,
    rows: &[ShardLeaseRow],
    believed: &[(ShardId, u64)],
    placed_here: impl Fn(ShardId) -> bool,
) -> Vec<Reconciled> {
    let names_me = |r: &&ShardLeaseRow| {
        r.holder.as_deref() == Some(me.node.as_str())
            && r.holder_incarnation == me.incarnation
            && r.holder_epoch == me.epoch
    };
    let mine: Vec<&ShardLeaseRow> = rows.iter().filter(names_me).collect();
    let mut decisions: Vec<Reconciled> = mine
        .iter()
        .map(|r| {
            if placed_here(r.shard) {
                Reconciled::Adopt {
                    shard: r.shard,
                    token: r.token,
                }
            } else {
                Reconciled::Release {
                    shard: r.shard,
                    token: r.token,
                }
            }
        })
        .collect();
    decisions.extend(
        believed
            .iter()
            .filter(|(shard, _)| !mine.iter().any(|r| r.shard == *shard))
            .map(|(shard, _)| Reconciled::Lost { shard: *shard }),
    );
    decisions.sort_by_key(|d| match *d {
        Reconciled::Adopt { shard, .. }
        | Reconciled::Release { shard, .. }
        | Reconciled::Lost { shard } => shard,
    });
    decisions.dedup();
    decisions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> HolderId {
        HolderId {
            node: "n1".into(),
            incarnation: 11,
            epoch: 3,
        }
    }

    fn row(
        shard: ShardId,
        holder: Option<&str>,
        inc: u64,
        epoch: u64,
        token: u64,
    ) -> ShardLeaseRow {
        ShardLeaseRow {
            shard,
            holder: holder.map(str::to_owned),
            holder_incarnation: inc,
            holder_epoch: epoch,
            token,
        }
    }

    #[test]
    fn rows_naming_us_are_adopted_at_their_stored_token_where_placement_says_us() {
        let rows = [row(5, Some("n1"), 11, 3, 42), row(2, Some("n1"), 11, 3, 7)];
        assert_eq!(
            reconcile(&me(), &rows, &[], |_| true),
            [
                Reconciled::Adopt { shard: 2, token: 7 },
                Reconciled::Adopt {
                    shard: 5,
                    token: 42
                }
            ]
        );
    }

    #[test]
    fn rows_naming_us_that_placement_gives_elsewhere_are_released_at_their_token() {
        let rows = [row(5, Some("n1"), 11, 3, 42), row(6, Some("n1"), 11, 3, 8)];
        assert_eq!(
            reconcile(&me(), &rows, &[], |s| s == 6),
            [
                Reconciled::Release {
                    shard: 5,
                    token: 42
                },
                Reconciled::Adopt { shard: 6, token: 8 }
            ]
        );
    }

    #[test]
    fn rows_of_other_holders_incarnations_or_epochs_are_ignored() {
        let rows = [
            row(1, Some("n2"), 11, 3, 1),
            row(2, Some("n1"), 10, 3, 1),
            row(3, Some("n1"), 11, 2, 1),
            row(4, None, 11, 3, 1),
        ];
        assert!(reconcile(&me(), &rows, &[], |_| true).is_empty());
    }

    #[test]
    fn a_shard_we_believe_held_but_no_row_names_us_for_is_lost() {
        let rows = [row(1, Some("n2"), 5, 1, 9), row(2, Some("n1"), 11, 3, 4)];
        assert_eq!(
            reconcile(&me(), &rows, &[(1, 8), (2, 4)], |_| true),
            [
                Reconciled::Lost { shard: 1 },
                Reconciled::Adopt { shard: 2, token: 4 }
            ]
        );
    }

    #[test]
    fn shutting_down_releases_everything_found() {
        let rows = [row(2, Some("n1"), 11, 3, 4), row(9, Some("n1"), 11, 3, 1)];
        let all_released = reconcile(&me(), &rows, &[(2, 4)], |_| false)
            .iter()
            .all(|d| matches!(d, Reconciled::Release { .. }));
        assert!(all_released);
    }
}
