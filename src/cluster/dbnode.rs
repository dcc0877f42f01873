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
//!   candidates) the one more peers follow wins: [`Standing::followers`] counts the peers
//!   hosting no SQLite database whose last `Hello` named it as the database node they follow
//!   (a plain member also counts its own choice, so a tie never moves it away from the node it
//!   follows). An equal count falls to the smaller name, so every node that sees both picks the
//!   same one. The loser exits with a message naming the winner, and nodes refuse to admit it
//!   as a member, so no shard is ever placed on it. Process start times are not compared: they
//!   are wall-clock readings of different hosts, and a newcomer whose clock lags would "be
//!   older" than the database node the cluster has followed all along and make it exit.
//!
//! What this does not give: two database nodes that both started without seeds (or were
//! confirmed by disjoint sets of peers) serve their own writes until they meet; the one that
//! loses then exits, and writes it acknowledged stay in its own file. Only a node that knows
//! no other database node confirms itself, so this needs two truly simultaneous starts or an
//! operator who starts a second cluster and joins them.
//!
//! Followers are counted among the peers in `customer-registry` now, so an established
//! database node whose members have all left the group (L7: none can renew) has no more
//! followers than a newcomer, and the name decides; so does the first meeting of two database
//! nodes nobody follows yet.
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
    /// Its process start (ms since the Unix epoch, on its own clock): tells its starts apart,
    /// never compared with another node's.
    pub incarnation: u64,
}

/// What a node ranks database nodes by: who follows which, as its peers last said.
#[derive(Debug, Clone, Copy)]
pub struct Standing<'a> {
    heard: &'a [Heard],
    own: Option<&'a DbNode>,
}

impl<'a> Standing<'a> {
    /// The standing from `heard`, plus `own`: the database node this node follows when it
    /// hosts no SQLite database itself (a database node's choice is no vote).
    pub fn new(heard: &'a [Heard], own: Option<&'a DbNode>) -> Self {
        Self { heard, own }
    }

    /// How many peers hosting no SQLite database follow the database node `name`, plus this
    /// node when it is one of them and follows it.
    pub fn followers(&self, name: &str) -> usize {
        let follows = |d: Option<&DbNode>| d.is_some_and(|d| d.name == name);
        let peers = self
            .heard
            .iter()
            .filter(|h| h.role == SqliteRole::None && follows(h.database.as_ref()))
            .count();
        peers + usize::from(follows(self.own))
    }

    /// True when `a` wins the tie-break against `b`: more followers, then the smaller name.
    /// Two starts of one name tie (neither wins).
    pub fn beats(&self, a: &DbNode, b: &DbNode) -> bool {
        let (fa, fb) = (self.followers(&a.name), self.followers(&b.name));
        fa > fb || (fa == fb && a.name < b.name)
    }

    fn best(&self, nodes: impl IntoIterator<Item = DbNode>) -> Option<DbNode> {
        nodes
            .into_iter()
            .reduce(|best, n| if self.beats(&n, &best) { n } else { best })
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
    /// Keep waiting (a candidate that has met no peer yet, or a candidate that another
    /// candidate is ahead of in the tie-break).
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
/// the winner of the tie-break among peers that said they serve. `followed` is the node this
/// node follows now, counted as its own vote when it hosts no SQLite database.
pub fn choose(me: Option<&DbNode>, heard: &[Heard], followed: Option<&DbNode>) -> Option<DbNode> {
    let serving = heard
        .iter()
        .filter(|h| h.role == SqliteRole::Serving)
        .map(|h| h.node.clone());
    Standing::new(heard, followed).best(me.into_iter().cloned().chain(serving))
}

/// Decides for a node hosting SQLite (`me`, currently `role`) from everything its peers told
/// it (see the module doc for the rules).
pub fn judge(me: &DbNode, role: SqliteRole, heard: &[Heard]) -> Decision {
    let standing = Standing::new(heard, None);
    let rival = standing.best(
        heard
            .iter()
            .flat_map(|h| {
                let own = (h.role == SqliteRole::Serving).then(|| h.node.clone());
                own.into_iter().chain(h.database.clone())
            })
            .filter(|d| d.name != me.name),
    );
    match (role, rival) {
        (SqliteRole::Serving, Some(r)) if standing.beats(&r, me) => Decision::Exit { existing: r },
        (SqliteRole::Serving, _) => Decision::Serve,
        (SqliteRole::Candidate, Some(r)) => Decision::Exit { existing: r },
        (SqliteRole::Candidate, None) => {
            let ahead = heard.iter().any(|h| {
                h.role == SqliteRole::Candidate
                    && h.node.name != me.name
                    && standing.beats(&h.node, me)
            });
            if heard.is_empty() || ahead {
                Decision::Wait
            } else {
                Decision::Serve
            }
        }
        (SqliteRole::None | SqliteRole::Refused, _) => Decision::Wait,
    }
}

/// The database node that makes `peer` unwelcome as a member, given the one this node follows
/// (`chosen`, the winner of the tie-break among the serving nodes heard, `peer` included): a
/// candidate or a refused node is a rival of any other database node, and so is a serving
/// node other than `chosen`. `None` = no objection.
pub fn rival_of(peer: &Heard, chosen: Option<&DbNode>) -> Option<DbNode> {
    let chosen = chosen.filter(|d| d.name != peer.node.name)?;
    match peer.role {
        SqliteRole::None => None,
        SqliteRole::Candidate | SqliteRole::Refused | SqliteRole::Serving => Some(chosen.clone()),
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
    fn the_node_more_members_follow_wins_then_the_smaller_name() {
        let members = [
            heard("m1", 1, SqliteRole::None, Some(node("b", 9))),
            heard("m2", 1, SqliteRole::None, Some(node("b", 9))),
            heard("a", 1, Serving, Some(node("a", 1))),
        ];
        let standing = Standing::new(&members, None);
        assert_eq!(standing.followers("b"), 2);
        assert_eq!(
            standing.followers("a"),
            0,
            "a database node's own claim is no vote"
        );
        assert!(standing.beats(&node("b", 9), &node("a", 1)));
        let nobody = Standing::new(&[], None);
        assert!(nobody.beats(&node("a", 5), &node("b", 1)));
        assert!(!nobody.beats(&node("a", 5), &node("a", 1)));
        let mine = node("b", 9);
        assert!(
            Standing::new(&[], Some(&mine)).beats(&node("b", 9), &node("a", 1)),
            "a member's own choice counts"
        );
    }

    #[test]
    fn a_newcomer_whose_clock_lags_far_behind_does_not_displace_the_database_node() {
        // n1 has served the cluster for long; d4 was started by mistake with --db-path and no
        // seeds on a host whose clock is years behind: by start times it would be "older".
        let db = node("n1", 1_700_000_000_000);
        let newcomer = node("d4", 1_000);
        let at_newcomer = [
            heard("n1", db.incarnation, Serving, Some(db.clone())),
            heard("n2", 5, SqliteRole::None, Some(db.clone())),
        ];
        assert_eq!(
            judge(&newcomer, Serving, &at_newcomer),
            Decision::Exit {
                existing: db.clone()
            }
        );
        let at_db = [
            heard("d4", newcomer.incarnation, Serving, Some(newcomer.clone())),
            heard("n2", 5, SqliteRole::None, Some(db.clone())),
        ];
        assert_eq!(judge(&db, Serving, &at_db), Decision::Serve);
        let at_member = [at_newcomer[0].clone(), at_db[0].clone()];
        assert_eq!(
            choose(None, &at_member, Some(&db)),
            Some(db.clone()),
            "the member keeps following n1"
        );
        let newcomer_heard = at_db[0].clone();
        assert_eq!(rival_of(&newcomer_heard, Some(&db)), Some(db));
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
    fn of_two_candidates_nobody_follows_the_one_with_the_larger_name_waits() {
        let older = [heard("d3", 5, Candidate, None)];
        assert_eq!(judge(&node("d4", 9), Candidate, &older), Decision::Wait);
        let younger = [heard("d4", 9, Candidate, None)];
        assert_eq!(judge(&node("d3", 5), Candidate, &younger), Decision::Serve);
    }

    #[test]
    fn a_serving_node_exits_only_for_a_serving_node_more_members_follow() {
        let me = node("b", 20);
        let followed = [heard("c", 3, SqliteRole::None, Some(node("z", 10)))];
        assert_eq!(
            judge(&me, Serving, &followed),
            Decision::Exit {
                existing: node("z", 10)
            }
        );
        let split = [
            heard("c", 3, SqliteRole::None, Some(node("z", 1))),
            heard("d", 3, SqliteRole::None, Some(node("b", 20))),
            heard("e", 3, SqliteRole::None, Some(node("b", 20))),
        ];
        assert_eq!(judge(&me, Serving, &split), Decision::Serve);
        let unfollowed = [heard("z", 1, Serving, Some(node("z", 1)))];
        assert_eq!(
            judge(&me, Serving, &unfollowed),
            Decision::Serve,
            "nobody follows either: the smaller name stays"
        );
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
            choose(None, &peers, None),
            Some(node("a", 10)),
            "reports are not relayed"
        );
        assert_eq!(
            choose(None, &peers, Some(&node("b", 20))),
            Some(node("b", 20)),
            "a tie never moves a member away from the node it follows"
        );
        assert_eq!(
            choose(Some(&node("0", 5)), &peers, None),
            Some(node("0", 5))
        );
        assert_eq!(choose(None, &[], None), None);
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
        let other = heard("d4", 1, Serving, None);
        assert_eq!(
            rival_of(&other, Some(&db)),
            Some(db.clone()),
            "a serving node other than the one followed, whatever its start time"
        );
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
