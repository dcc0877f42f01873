//! Plain words for the transport library's warnings.
//!
//! `ractor_cluster` logs session ends as debug dumps of its handshake structs
//! (`Node session Some(NameMessage { name: "n3#…@10.0.0.3", flags: …, connection_string:
//! "10.0.0.3:4703", … }) exited with 'Some("tcp_session_closed")'`). The log formatter passes
//! each of its WARN lines through [`explain`] and prints one clear line instead: who, and what
//! the reason means. The raw line is printed as is when the node logs at DEBUG.

/// Session-end lines printed per window; the rest are counted and the count is appended to the
/// next one printed. Enough for a few restarts and evictions at once, few enough that a flood
/// of failing handshakes cannot fill the log.
pub const SESSION_LINES_PER_WINDOW: u32 = 10;

/// The window of [`SESSION_LINES_PER_WINDOW`].
pub const SESSION_LINE_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// A budget of session-end lines: at most [`SESSION_LINES_PER_WINDOW`] per
/// [`SESSION_LINE_WINDOW`]. Time is an argument.
#[derive(Debug, Default)]
pub struct SessionLineBudget {
    window_start: Option<std::time::Instant>,
    printed: u32,
    suppressed: u64,
}

impl SessionLineBudget {
    /// `Some(n)`: print this line, noting `n` lines suppressed since the last one printed;
    /// `None`: suppress it.
    pub fn admit(&mut self, now: std::time::Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|t| now.saturating_duration_since(t) >= SESSION_LINE_WINDOW);
        if fresh {
            self.window_start = Some(now);
            self.printed = 0;
        }
        if self.printed >= SESSION_LINES_PER_WINDOW {
            self.suppressed += 1;
            return None;
        }
        self.printed += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// A clear line for a known `ractor_cluster` warning, or `None` to keep the raw one.
pub fn explain(raw: &str) -> Option<String> {
    if let Some(rest) = raw.strip_prefix("Node session ") {
        let (who, reason) = rest.rsplit_once(" exited with '")?;
        let reason = quoted(reason.trim_end_matches('\'')).unwrap_or("no reason given");
        return Some(match peer(who) {
            Some((name, addr)) => {
                format!("session with {name} ({addr}) ended: {}", meaning(reason))
            }
            None => format!(
                "a cluster connection ended before the peer named itself: {}",
                meaning(reason)
            ),
        });
    }
    if let Some(rest) = raw.strip_prefix("NodeSession ") {
        if rest.contains("unknown child actor exit") {
            let who = peer(rest).map_or_else(|| "a peer".to_owned(), |(n, _)| n);
            return Some(format!(
                "session with {who}: an actor that already stopped reported its exit (harmless after a restart or an eviction)"
            ));
        }
        return None;
    }
    if let Some(err) = raw.strip_prefix("Closing cluster stream after framing error: ") {
        return Some(format!("a cluster connection closed: {err}"));
    }
    if let Some(rest) = raw.strip_prefix("Slow ping detected ") {
        let (pair, _) = rest.split_once(';').unwrap_or((rest, ""));
        return Some(format!(
            "the transport's own ping was slow: {pair} (further ones at DEBUG)"
        ));
    }
    None
}

/// What a session's exit reason means for an operator.
fn meaning(reason: &str) -> String {
    let why = match reason {
        "tcp_session_closed" => {
            "the connection closed (the peer stopped, restarted, or dropped it)"
        }
        "auth_fail" => "auth_fail: the peer's cookie does not match ours",
        "duplicate_connection" => {
            "both sides dialled each other at once; the other connection is kept (duplicate_connection)"
        }
        other if other.starts_with("evicted by") => {
            return format!("{other} (the failure detector stopped hearing it)");
        }
        other => other,
    };
    why.to_owned()
}

/// `(name, address)` out of a `Some(NameMessage { name: "n3#123@host", …,
/// connection_string: "host:port", … })` dump.
fn peer(dump: &str) -> Option<(String, String)> {
    let name = field(dump, "name: ")?;
    let name = name.split('#').next().unwrap_or(name).to_owned();
    let addr = field(dump, "connection_string: ").unwrap_or("?").to_owned();
    Some((name, addr))
}

/// The string value after `key` (`key"value"`).
fn field<'a>(dump: &'a str, key: &str) -> Option<&'a str> {
    let start = dump.find(key)? + key.len();
    quoted(&dump[start..])
}

/// The contents of the first `"…"` in `s` (after an optional `Some(`).
fn quoted(s: &str) -> Option<&str> {
    let s = s.strip_prefix("Some(").unwrap_or(s);
    let s = s.strip_prefix('"')?;
    s.split_once('"').map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_end_lines_are_budgeted_per_window_and_the_next_one_says_how_many_were_dropped() {
        let t0 = std::time::Instant::now();
        let mut budget = SessionLineBudget::default();
        for _ in 0..SESSION_LINES_PER_WINDOW {
            assert_eq!(budget.admit(t0), Some(0));
        }
        for _ in 0..25 {
            assert_eq!(budget.admit(t0 + std::time::Duration::from_secs(5)), None);
        }
        assert_eq!(budget.admit(t0 + SESSION_LINE_WINDOW), Some(25));
        assert_eq!(budget.admit(t0 + SESSION_LINE_WINDOW), Some(0));
    }

    const NAMED: &str = r#"Node session Some(NameMessage { name: "n3#1795809408352@10.213.0.3", flags: Some(NodeFlags { version: 1 }), connection_string: "10.213.0.3:4703", connection_id: 0 }) exited with 'Some("tcp_session_closed")'"#;

    #[test]
    fn a_session_end_names_the_peer_and_says_what_the_reason_means() {
        assert_eq!(
            explain(NAMED).unwrap(),
            "session with n3 (10.213.0.3:4703) ended: the connection closed (the peer stopped, restarted, or dropped it)"
        );
        let auth = NAMED.replace("tcp_session_closed", "auth_fail");
        let line = explain(&auth).unwrap();
        assert!(line.starts_with("session with n3 (10.213.0.3:4703) ended: auth_fail"));
        assert!(line.contains("cookie"));
        let evicted = NAMED.replace("tcp_session_closed", "evicted by n1: no heartbeat");
        assert!(
            explain(&evicted)
                .unwrap()
                .contains("evicted by n1: no heartbeat")
        );
    }

    #[test]
    fn an_unnamed_session_and_other_known_lines_get_plain_words() {
        let unnamed = r#"Node session None exited with 'Some("tcp_session_closed")'"#;
        assert!(
            explain(unnamed)
                .unwrap()
                .starts_with("a cluster connection ended before the peer named itself")
        );
        let child = r#"NodeSession Some(NameMessage { name: "n1#1@h", flags: None, connection_string: "h:4701", connection_id: 0 }) received an unknown child actor exit event from 0.12 - 'None'"#;
        assert!(explain(child).unwrap().starts_with("session with n1: "));
        let framing =
            "Closing cluster stream after framing error: Connection reset by peer (os error 104)";
        assert_eq!(
            explain(framing).unwrap(),
            "a cluster connection closed: Connection reset by peer (os error 104)"
        );
        assert!(explain("Slow ping detected a - b (61ms); further slow Pongs will only be logged at debug level").unwrap().contains("a - b (61ms)"));
        assert_eq!(explain("something else entirely"), None);
        assert!(!explain(NAMED).unwrap().contains("NameMessage"));
    }
}
