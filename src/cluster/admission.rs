//! Peer admission: the pure rule that turns a finished `Hello` exchange into a decision.
//!
//! Membership greets every remote Registry that appears in `customer-registry.v5` and hands
//! the outcome here, together with what it already knows: the node name the Registry is
//! registered under, whether its session is still open, and the incarnation of the member of
//! that name it already has, if any. The rules, in the order they apply:
//!
//! 1. A failed exchange (timeout, dropped reply, garbled answer) admits nothing.
//! 2. A peer speaking another [`PROTOCOL_VERSION`](super::protocol::PROTOCOL_VERSION) is refused
//!    ([`check_peer`]): its messages would be mis-decoded.
//! 3. A peer whose answer names another node than its registered Registry name, or names this
//!    node, is refused: two processes sharing one `--name` would split placement silently.
//! 4. A peer whose session closed while we greeted it is dropped quietly; the group leave has
//!    already been (or will be) handled.
//! 5. A peer hosting a second SQLite database is refused ([`rival_of`]): a candidate, or a
//!    serving node other than the database node this node follows (the tie-break winner).
//!    It exits by itself once it hears of that node; meanwhile no shard is placed on it.
//! 6. For a name we already hold: an older incarnation is a stale session of an earlier process
//!    start and is ignored; the same incarnation is the same process over another session (a
//!    duplicate-connection election), so only the route changes; a newer incarnation is a
//!    restart and replaces the member.
//! 7. Anything else is a new member.
//!
//! No clock, no actors, no I/O: Membership performs the outcome (log, dial, publish).

use super::dbnode::{DbNode, Heard, rival_of};
use super::frames::is_host_port;
use super::protocol::{NodeInfo, check_peer};
use crate::config::is_valid_node_name;
use crate::error::{Error, Result};

/// What Membership knows about a finished `Hello` exchange.
#[derive(Debug)]
pub struct Greeting<'a> {
    /// This node's name.
    pub me: &'a str,
    /// The node name in the greeted Registry's registered actor name, if it has one.
    pub claimed: Option<&'a str>,
    /// The peer's answer (or why there is none).
    pub answer: Result<NodeInfo>,
    /// Whether the greeted Registry (hence its session) is still alive.
    pub alive: bool,
    /// Incarnation of the member already known under the answered name, if any.
    pub known_incarnation: Option<u64>,
    /// Whether that member is reached over another session that is still open.
    pub known_live_elsewhere: bool,
    /// The serving SQLite database node this node follows, if any.
    pub database: Option<&'a DbNode>,
}

/// Why a peer was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The exchange failed, or the peer speaks another protocol version.
    Failed(Error),
    /// The answer names this node, or a node other than the Registry's registered name.
    NameClash {
        /// The node name the peer answered with.
        announced: String,
        /// The node name its Registry is registered under.
        registered: Option<String>,
    },
    /// The peer hosts a second SQLite database while `existing` is the database node.
    RivalDatabase {
        /// The refused peer.
        peer: String,
        /// The database node this node follows.
        existing: DbNode,
    },
}

/// The decision about one greeted peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Not a member: log why and do nothing else.
    Refused(Refusal),
    /// The Registry stopped while we greeted it: nothing to do.
    Gone,
    /// An older process start of a member we hold: ignore this session.
    Stale(NodeInfo),
    /// A newer process start while the member's session is still open: not yet.
    Waiting(NodeInfo),
    /// The member we hold, reached over another session: swap the route, same member set.
    SameProcess(NodeInfo),
    /// A new member, or a known name that restarted (`restarted`): add it, publish a view.
    Admit {
        /// The peer.
        info: NodeInfo,
        /// True when it replaces an older incarnation of the same name.
        restarted: bool,
    },
}

/// Applies the admission rules (see the module doc) to one greeting.
pub fn admit(greeting: Greeting<'_>) -> Admission {
    let info = match greeting
        .answer
        .and_then(|info| check_peer(&info).map(|()| info))
    {
        Ok(info) => info,
        Err(err) => return Admission::Refused(Refusal::Failed(err)),
    };
    if !is_valid_node_name(&info.name)
        || !is_host_port(&info.cluster_addr)
        || !is_host_port(&info.http_addr)
    {
        return Admission::Refused(Refusal::Failed(Error::InvalidInput(format!(
            "a peer answered with a malformed name or address: {:?} {:?} {:?}",
            info.name.chars().take(80).collect::<String>(),
            info.cluster_addr.chars().take(80).collect::<String>(),
            info.http_addr.chars().take(80).collect::<String>(),
        ))));
    }
    if greeting.claimed != Some(info.name.as_str()) || info.name == greeting.me {
        return Admission::Refused(Refusal::NameClash {
            announced: info.name,
            registered: greeting.claimed.map(str::to_owned),
        });
    }
    if !greeting.alive {
        return Admission::Gone;
    }
    if let Some(existing) = rival_of(&heard(&info), greeting.database) {
        return Admission::Refused(Refusal::RivalDatabase {
            peer: info.name,
            existing,
        });
    }
    match greeting.known_incarnation {
        Some(known) if known > info.incarnation => Admission::Stale(info),
        Some(known) if known == info.incarnation => Admission::SameProcess(info),
        Some(_) if greeting.known_live_elsewhere => Admission::Waiting(info),
        known => Admission::Admit {
            info,
            restarted: known.is_some(),
        },
    }
}

/// What a peer's `Hello` says about the SQLite database question.
pub fn heard(info: &NodeInfo) -> Heard {
    Heard {
        node: DbNode {
            name: info.name.clone(),
            incarnation: info.incarnation,
        },
        role: info.sqlite,
        database: info.database.clone(),
    }
}

/// A well-formed `Hello` answer for tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::cluster::dbnode::SqliteRole;
    use crate::cluster::protocol::PROTOCOL_VERSION;

    /// The answer of node `name`.
    pub fn info(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            protocol_version: PROTOCOL_VERSION,
            cluster_addr: "127.0.0.1:4701".into(),
            http_addr: "127.0.0.1:8081".into(),
            hosts_db: false,
            incarnation: 1,
            sqlite: SqliteRole::None,
            database: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::dbnode::SqliteRole;
    use crate::cluster::protocol::PROTOCOL_VERSION;

    fn peer(name: &str, incarnation: u64) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            protocol_version: PROTOCOL_VERSION,
            cluster_addr: format!("{name}:4701"),
            http_addr: format!("{name}:8081"),
            hosts_db: false,
            incarnation,
            sqlite: SqliteRole::None,
            database: None,
        }
    }

    /// A greeting by n1 of a live Registry registered as "n2" that answered `answer`.
    fn greeting(answer: Result<NodeInfo>, known_incarnation: Option<u64>) -> Greeting<'static> {
        Greeting {
            me: "n1",
            claimed: Some("n2"),
            answer,
            alive: true,
            known_incarnation,
            known_live_elsewhere: false,
            database: None,
        }
    }

    #[test]
    fn an_unknown_peer_speaking_our_protocol_is_admitted_as_new() {
        assert_eq!(
            admit(greeting(Ok(peer("n2", 5)), None)),
            Admission::Admit {
                info: peer("n2", 5),
                restarted: false
            }
        );
    }

    #[test]
    fn a_failed_exchange_admits_nothing() {
        let err = Error::Timeout("no reply within 3000 ms".into());
        assert_eq!(
            admit(greeting(Err(err.clone()), None)),
            Admission::Refused(Refusal::Failed(err))
        );
    }

    #[test]
    fn a_peer_of_another_protocol_version_is_refused() {
        let mut info = peer("n2", 5);
        info.protocol_version = PROTOCOL_VERSION + 1;
        assert!(matches!(
            admit(greeting(Ok(info), None)),
            Admission::Refused(Refusal::Failed(Error::InvalidInput(_)))
        ));
    }

    #[test]
    fn a_peer_answering_with_another_name_than_its_registry_is_refused() {
        assert_eq!(
            admit(greeting(Ok(peer("n3", 5)), None)),
            Admission::Refused(Refusal::NameClash {
                announced: "n3".into(),
                registered: Some("n2".into()),
            })
        );
        let unnamed = Greeting {
            claimed: None,
            ..greeting(Ok(peer("n2", 5)), None)
        };
        assert!(matches!(
            admit(unnamed),
            Admission::Refused(Refusal::NameClash {
                registered: None,
                ..
            })
        ));
    }

    #[test]
    fn a_peer_claiming_this_nodes_name_is_refused() {
        let impostor = Greeting {
            claimed: Some("n1"),
            ..greeting(Ok(peer("n1", 5)), None)
        };
        assert_eq!(
            admit(impostor),
            Admission::Refused(Refusal::NameClash {
                announced: "n1".into(),
                registered: Some("n1".into()),
            })
        );
    }

    #[test]
    fn a_peer_whose_session_closed_during_the_greeting_is_dropped_quietly() {
        let gone = Greeting {
            alive: false,
            ..greeting(Ok(peer("n2", 5)), None)
        };
        assert_eq!(admit(gone), Admission::Gone);
    }

    #[test]
    fn an_older_incarnation_of_a_known_member_is_stale() {
        assert_eq!(
            admit(greeting(Ok(peer("n2", 4)), Some(5))),
            Admission::Stale(peer("n2", 4))
        );
    }

    #[test]
    fn the_same_incarnation_over_another_session_only_swaps_the_route() {
        assert_eq!(
            admit(greeting(Ok(peer("n2", 5)), Some(5))),
            Admission::SameProcess(peer("n2", 5))
        );
    }

    #[test]
    fn a_newer_incarnation_of_a_known_member_is_a_restart() {
        assert_eq!(
            admit(greeting(Ok(peer("n2", 6)), Some(5))),
            Admission::Admit {
                info: peer("n2", 6),
                restarted: true
            }
        );
    }

    #[test]
    fn a_newer_incarnation_waits_while_the_members_own_session_is_open() {
        let rival = Greeting {
            known_live_elsewhere: true,
            ..greeting(Ok(peer("n2", u64::MAX)), Some(5))
        };
        assert_eq!(admit(rival), Admission::Waiting(peer("n2", u64::MAX)));
    }

    #[test]
    fn an_answer_with_a_malformed_name_or_address_is_refused() {
        let mut forged = peer("n2", 5);
        forged.name = "n2\nERROR forged".into();
        let named = Greeting {
            claimed: Some("n2\nERROR forged"),
            ..greeting(Ok(forged), None)
        };
        assert!(matches!(
            admit(named),
            Admission::Refused(Refusal::Failed(Error::InvalidInput(_)))
        ));
        for addr in ["127.0.0.1:1\nERROR x", "nowhere", "h:0"] {
            let mut bad = peer("n2", 5);
            bad.cluster_addr = addr.into();
            assert!(matches!(
                admit(greeting(Ok(bad), None)),
                Admission::Refused(Refusal::Failed(_))
            ));
        }
    }

    #[test]
    fn identity_is_checked_before_liveness_and_incarnation() {
        // An impostor is reported even if its session is gone and the name is known.
        let impostor = Greeting {
            me: "n2",
            alive: false,
            ..greeting(Ok(peer("n2", 9)), Some(5))
        };
        assert!(matches!(
            admit(impostor),
            Admission::Refused(Refusal::NameClash { .. })
        ));
    }

    #[test]
    fn a_second_sqlite_database_node_is_refused_while_another_serves() {
        let db = DbNode {
            name: "n1".into(),
            incarnation: 3,
        };
        let mut candidate = peer("n2", 5);
        candidate.sqlite = SqliteRole::Candidate;
        candidate.hosts_db = true;
        let followed = Greeting {
            database: Some(&db),
            ..greeting(Ok(candidate.clone()), None)
        };
        assert_eq!(
            admit(followed),
            Admission::Refused(Refusal::RivalDatabase {
                peer: "n2".into(),
                existing: db.clone(),
            })
        );
        // With no database node known, the candidate is an ordinary new member.
        assert!(matches!(
            admit(greeting(Ok(candidate), None)),
            Admission::Admit { .. }
        ));
    }
}
