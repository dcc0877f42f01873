//! The SQLite database node: which node it is, and what a second one does.
//!
//! An SQLite file is not replicated, so a cluster over SQLite has exactly one database node.
//! A second one (an operator mistake: `--db-path` on a node meant to join) must never
//! acknowledge a write, and must not stop the cluster either. The rules:
//!
//! * **Start.** A node with `--db-path` and no `--seeds` is the first database node: it is
//!   [`SqliteRole::Serving`] at once (single-node and `cluster.sh up` behaviour). With
//!   `--seeds` it starts as a [`SqliteRole::Candidate`]: its Database actor stays out of the
//!   process group and refuses every request, and its HTTP API answers 503 saying why, until
//!   it has met the cluster — finished a `Hello` with at least one peer — and learnt of no
//!   other database node. Then it serves.
//! * **Gossip.** Every `Hello` (both directions) carries the sender's own role and the serving
//!   database node it knows *directly* (itself, or an admitted peer that said it serves). So a
//!   newcomer learns of the database node from any peer, even one it cannot reach itself, and
//!   a node that sees two database nodes tells each of them which one it follows. Reports are
//!   never relayed further (only first-hand knowledge is reported), so a dead database node
//!   cannot keep circulating in reports: detection reaches one hop beyond direct connections,
//!   which, with the full mesh every node keeps, covers two database nodes that cannot see
//!   each other but share a third node.
//! * **Tie-break.** A serving node beats a candidate. Between two serving nodes (or two
//!   candidates) the older process start wins — smaller incarnation, then smaller name — so
//!   every node that sees both picks the same one. The loser exits with a message naming the
//!   winner, and nodes refuse to admit it as a member, so no shard is ever placed on it.
//!
//! What this does not give: two database nodes that both started without seeds (or were
//! confirmed by disjoint sets of peers) serve their own writes until they meet; the one that
//! loses then exits, and writes it acknowledged stay in its own file. Only a node that knows
//! no other database node confirms itself, so this needs two truly simultaneous starts or an
//! operator who starts a second cluster and joins them.
//!
//! The functions here are pure (no clock, no actors); [`DbRoleCell`] is the shared cell the
//! Database actor, the Registry, Membership and the HTTP gateway read.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// This node's part in the SQLite database question, as told to peers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SqliteRole {
    /// Hosts no SQLite database (no database, or PostgreSQL, where every node hosts one).
    #[default]
    None,
    /// Hosts one, started with seeds, not yet confirmed: serves nothing.
    Candidate,
    /// The cluster's database node.
    Serving,
    /// Lost to another database node: serves nothing and is exiting.
    Refused,
}

/// A database node: its name and the incarnation (process start) that claims the role.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DbNode {
    /// Node name.
    pub name: String,
    /// Its process start (ms since the Unix epoch): the older one wins a tie-break.
    pub incarnation: u64,
}

impl DbNode {
    /// True when `self` wins the tie-break against `other`: the older start, then the name.
    pub fn beats(&self, other: &DbNode) -> bool {
        (self.incarnation, &self.name) < (other.incarnation, &other.name)
    }
}

impl std::fmt::Display for DbNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// What one peer told us about itself in a `Hello` (either direction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    /// The peer (name and incarnation).
    pub node: DbNode,
    /// Its own role.
    pub role: SqliteRole,
    /// The serving database node it knows first-hand, if any.
    pub database: Option<DbNode>,
}

/// What a node hosting SQLite does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Keep waiting (a candidate that has met no peer yet, or a candidate that an older
    /// candidate is ahead of).
    Wait,
    /// Serve as the cluster's database node.
    Serve,
    /// Another node is the database node: exit without serving.
    Exit {
        /// The database node that won.
        existing: DbNode,
    },
}

/// The serving database node this node knows first-hand: itself when it serves (`me`), else
/// the winner of the tie-break among peers that said they serve.
pub fn choose<'a>(
    me: Option<&DbNode>,
    heard: impl IntoIterator<Item = &'a Heard>,
) -> Option<DbNode> {
    me.into_iter()
        .cloned()
        .chain(
            heard
                .into_iter()
                .filter(|h| h.role == SqliteRole::Serving)
                .map(|h| h.node.clone()),
        )
        .reduce(|best, n| if n.beats(&best) { n } else { best })
}

/// Decides for a node hosting SQLite (`me`, currently `role`) from everything its peers told
/// it (see the module doc for the rules).
pub fn judge(me: &DbNode, role: SqliteRole, heard: &[Heard]) -> Decision {
    let rival = heard
        .iter()
        .flat_map(|h| {
            let own = (h.role == SqliteRole::Serving).then(|| h.node.clone());
            own.into_iter().chain(h.database.clone())
        })
        .filter(|d| d.name != me.name)
        .reduce(|best, n| if n.beats(&best) { n } else { best });
    match (role, rival) {
        (SqliteRole::Serving, Some(r)) if r.beats(me) => Decision::Exit { existing: r },
        (SqliteRole::Serving, _) => Decision::Serve,
        (SqliteRole::Candidate, Some(r)) => Decision::Exit { existing: r },
        (SqliteRole::Candidate, None) => {
            let older_candidate = heard.iter().any(|h| {
                h.role == SqliteRole::Candidate && h.node.name != me.name && h.node.beats(me)
            });
            if heard.is_empty() || older_candidate {
                Decision::Wait
            } else {
                Decision::Serve
            }
        }
        (SqliteRole::None | SqliteRole::Refused, _) => Decision::Wait,
    }
}

/// The database node that makes `peer` unwelcome as a member, given the one this node follows
/// (`chosen`): a candidate or a refused node is a rival of any other database node; a serving
/// node is one when it loses the tie-break. `None` = no objection.
pub fn rival_of(peer: &Heard, chosen: Option<&DbNode>) -> Option<DbNode> {
    let chosen = chosen.filter(|d| d.name != peer.node.name)?;
    match peer.role {
        SqliteRole::None => None,
        SqliteRole::Candidate | SqliteRole::Refused => Some(chosen.clone()),
        SqliteRole::Serving => chosen.beats(&peer.node).then(|| chosen.clone()),
    }
}

/// The message a refused database node exits with; `served` says whether it had been serving
/// (two database nodes that met late) or was still a candidate (it never acknowledged a write).
pub fn exit_message(me: &str, existing: &DbNode, served: bool) -> String {
    let what = if served {
        "so this node (started with --db-path) stops serving and exits; writes it acknowledged on its own are only in its own file"
    } else {
        "so this node (started with --db-path) exits without having served anything"
    };
    format!(
        "refused by the cluster: node {existing} is already its database node, and an SQLite database is not replicated, {what}. Start {me} without --db-path to add it as a member, or stop {existing} first to move the database"
    )
}

/// This node's role, shared by Membership (which changes it), the Database actor and the
/// HTTP gateway (which refuse while it is not serving) and the Registry (which tells peers).
#[derive(Clone)]
pub struct DbRoleCell {
    state: Arc<Mutex<RoleState>>,
    exit_tx: Arc<watch::Sender<Option<String>>>,
}

#[derive(Debug)]
struct RoleState {
    role: SqliteRole,
    /// The serving database node known first-hand (see [`choose`]).
    chosen: Option<DbNode>,
    /// Peers heard to host a database over a shared server (PostgreSQL): always usable.
    shared_hosts: Vec<String>,
    /// Why the node is refused, once it is.
    refused: Option<String>,
}

impl DbRoleCell {
    /// A cell starting at `role`.
    pub fn new(role: SqliteRole) -> Self {
        let (exit_tx, _) = watch::channel(None);
        Self {
            state: Arc::new(Mutex::new(RoleState {
                role,
                chosen: None,
                shared_hosts: Vec::new(),
                refused: None,
            })),
            exit_tx: Arc::new(exit_tx),
        }
    }

    /// The starting role of a node: `hosts_sqlite` with seeds is a candidate, without seeds
    /// serves at once; a node without SQLite has none.
    pub fn initial_role(hosts_sqlite: bool, has_seeds: bool) -> SqliteRole {
        match (hosts_sqlite, has_seeds) {
            (false, _) => SqliteRole::None,
            (true, true) => SqliteRole::Candidate,
            (true, false) => SqliteRole::Serving,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RoleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node's role now.
    pub fn role(&self) -> SqliteRole {
        self.lock().role
    }

    /// Marks this node as the serving database node.
    pub fn serve(&self) {
        self.lock().role = SqliteRole::Serving;
    }

    /// The serving database node this node follows, if known first-hand.
    pub fn chosen(&self) -> Option<DbNode> {
        self.lock().chosen.clone()
    }

    /// Records the database node followed; true when it changed.
    pub fn set_chosen(&self, chosen: Option<DbNode>) -> bool {
        let mut s = self.lock();
        let changed = s.chosen != chosen;
        s.chosen = chosen;
        changed
    }

    /// Records the peers heard to host a database over a shared server.
    pub fn set_shared_hosts(&self, hosts: Vec<String>) {
        self.lock().shared_hosts = hosts;
    }

    /// Whether this node may send database requests to `node`'s Database actor: the SQLite
    /// database node it follows, or a peer over a shared server. A node heard of by nobody
    /// yet is not used (it may be a second SQLite database node whose `Hello` is pending).
    pub fn may_use(&self, node: &str) -> bool {
        let s = self.lock();
        s.chosen.as_ref().is_some_and(|c| c.name == node)
            || s.shared_hosts.iter().any(|h| h == node)
    }

    /// Refuses this node for good: it stops serving at once and the node exits with `why`.
    pub fn refuse(&self, why: String) {
        {
            let mut s = self.lock();
            s.role = SqliteRole::Refused;
            s.refused = Some(why.clone());
        }
        self.exit_tx.send_replace(Some(why));
    }

    /// Receives the exit message once this node is refused.
    pub fn refused_rx(&self) -> watch::Receiver<Option<String>> {
        self.exit_tx.subscribe()
    }

    /// `Ok` when this node may serve customer requests; otherwise `Unavailable` saying why
    /// (still a candidate, or refused).
    pub fn gate(&self) -> Result<()> {
        let s = self.lock();
        match s.role {
            SqliteRole::None | SqliteRole::Serving => Ok(()),
            SqliteRole::Candidate => Err(Error::Unavailable(
                "this node hosts an SQLite database (--db-path) and was started with --seeds: it serves nothing until it has met the cluster through a seed and learnt that no other node is the database node".into(),
            )),
            SqliteRole::Refused => Err(Error::Unavailable(
                s.refused.clone().unwrap_or_else(|| "refused by the cluster".into()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, incarnation: u64) -> DbNode {
        DbNode {
            name: name.into(),
            incarnation,
        }
    }

    fn heard(name: &str, incarnation: u64, role: SqliteRole, db: Option<DbNode>) -> Heard {
        Heard {
            node: node(name, incarnation),
            role,
            database: db,
        }
    }

    use SqliteRole::{Candidate, Serving};

    #[test]
    fn the_older_start_wins_then_the_smaller_name() {
        assert!(node("b", 1).beats(&node("a", 2)));
        assert!(node("a", 5).beats(&node("b", 5)));
        assert!(!node("a", 5).beats(&node("a", 5)));
    }

    #[test]
    fn a_candidate_that_has_met_nobody_waits() {
        assert_eq!(judge(&node("d4", 9), Candidate, &[]), Decision::Wait);
    }

    #[test]
    fn a_candidate_that_met_peers_without_a_database_node_serves() {
        let peers = [heard("n2", 3, SqliteRole::None, None)];
        assert_eq!(judge(&node("d4", 9), Candidate, &peers), Decision::Serve);
    }

    #[test]
    fn a_candidate_exits_when_a_peer_serves_the_database() {
        let peers = [heard("n1", 100, Serving, Some(node("n1", 100)))];
        assert_eq!(
            judge(&node("d4", 9), Candidate, &peers),
            Decision::Exit {
                existing: node("n1", 100)
            },
            "a serving node wins even against an older candidate"
        );
    }

    #[test]
    fn a_candidate_exits_when_a_peer_reports_a_database_node_it_cannot_see() {
        let peers = [heard("n2", 3, SqliteRole::None, Some(node("n1", 1)))];
        assert_eq!(
            judge(&node("d4", 9), Candidate, &peers),
            Decision::Exit {
                existing: node("n1", 1)
            }
        );
    }

    #[test]
    fn a_report_of_an_earlier_start_of_this_node_is_no_rival() {
        // The database node restarted with seeds; peers still name its previous process.
        let peers = [heard("n2", 3, SqliteRole::None, Some(node("n1", 1)))];
        assert_eq!(judge(&node("n1", 7), Candidate, &peers), Decision::Serve);
    }

    #[test]
    fn of_two_candidates_the_younger_waits_for_the_older() {
        let older = [heard("d3", 5, Candidate, None)];
        assert_eq!(judge(&node("d4", 9), Candidate, &older), Decision::Wait);
        let younger = [heard("d4", 9, Candidate, None)];
        assert_eq!(judge(&node("d3", 5), Candidate, &younger), Decision::Serve);
    }

    #[test]
    fn a_serving_node_exits_only_for_an_older_serving_node() {
        let me = node("b", 20);
        let older = [heard("c", 3, SqliteRole::None, Some(node("a", 10)))];
        assert_eq!(
            judge(&me, Serving, &older),
            Decision::Exit {
                existing: node("a", 10)
            }
        );
        let younger = [heard("c", 3, SqliteRole::None, Some(node("z", 30)))];
        assert_eq!(judge(&me, Serving, &younger), Decision::Serve);
        let candidate = [heard("a", 1, Candidate, None)];
        assert_eq!(
            judge(&me, Serving, &candidate),
            Decision::Serve,
            "a candidate never displaces a serving node"
        );
    }

    #[test]
    fn a_node_follows_itself_or_the_winning_serving_peer() {
        let peers = [
            heard("b", 20, Serving, None),
            heard("a", 10, Serving, None),
            heard("c", 1, Candidate, None),
            heard("x", 1, SqliteRole::None, Some(node("q", 0))),
        ];
        assert_eq!(
            choose(None, &peers),
            Some(node("a", 10)),
            "reports are not relayed"
        );
        assert_eq!(choose(Some(&node("m", 5)), &peers), Some(node("m", 5)));
        assert_eq!(choose(None, &[]), None);
    }

    #[test]
    fn a_second_database_node_is_not_admitted_as_a_member() {
        let db = node("n1", 10);
        let candidate = heard("d4", 1, Candidate, None);
        assert_eq!(rival_of(&candidate, Some(&db)), Some(db.clone()));
        assert_eq!(
            rival_of(&candidate, None),
            None,
            "no database node known yet"
        );
        let losing = heard("d4", 20, Serving, None);
        assert_eq!(rival_of(&losing, Some(&db)), Some(db.clone()));
        let winning = heard("d4", 5, Serving, None);
        assert_eq!(rival_of(&winning, Some(&db)), None);
        let plain = heard("n2", 1, SqliteRole::None, None);
        assert_eq!(rival_of(&plain, Some(&db)), None);
        let itself = heard("n1", 10, Serving, None);
        assert_eq!(rival_of(&itself, Some(&db)), None);
    }

    #[test]
    fn only_a_serving_node_or_one_without_sqlite_passes_the_gate() {
        assert!(DbRoleCell::new(SqliteRole::None).gate().is_ok());
        assert!(DbRoleCell::new(Serving).gate().is_ok());
        let cell = DbRoleCell::new(Candidate);
        assert!(matches!(cell.gate(), Err(Error::Unavailable(m)) if m.contains("--seeds")));
        cell.refuse(exit_message("d4", &node("n1", 1), false));
        assert!(matches!(cell.gate(), Err(Error::Unavailable(m)) if m.contains("node n1")));
        assert!(cell.refused_rx().borrow().is_some());
    }

    #[test]
    fn the_starting_role_depends_on_sqlite_and_seeds() {
        assert_eq!(DbRoleCell::initial_role(true, false), Serving);
        assert_eq!(DbRoleCell::initial_role(true, true), Candidate);
        assert_eq!(DbRoleCell::initial_role(false, true), SqliteRole::None);
    }
}
