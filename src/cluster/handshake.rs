//! The pre-authentication part of a cluster connection, judged frame by frame.
//!
//! ractor_cluster frames every message as a big-endian `u64` length and a protobuf
//! `NetworkMessage`. Before the cookie handshake completes, only its authentication messages
//! may flow, and they are small:
//!
//! ```text
//!  dialer (client)                          listener (server)
//!  Name{name, connection_string}   ──▶       (the peer's name arrives here)
//!                                  ◀──      ServerStatus, Challenge{name, …}
//!  ChallengeReply{digest, challenge} ──▶    (last frame the client sends before auth)
//!                                  ◀──      ChallengeAck{digest} (last frame the server sends)
//! ```
//!
//! [`HandshakeParser`] follows the frames one side *receives* until that side's last
//! handshake frame, and refuses what no honest peer sends: a frame longer than
//! [`PREAUTH_FRAME_BYTES`], something other than an authentication message, more than
//! [`PREAUTH_FRAMES`] frames, or an announced node name its certificate does not carry. After
//! the last handshake frame it steps aside (authenticated traffic is the transport's concern).
//!
//! [`RefusalLog`] turns refusals into at most one log line per window.
//!
//! No I/O and no clock: `cluster::gate` feeds bytes and passes the time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::mesh::node_of_server_name;
use crate::config::is_valid_node_name;

/// Longest frame accepted before authentication, bytes. The handshake's messages carry a node
/// name, an address and a few numbers (about 100 bytes); anything longer is not a handshake.
pub const PREAUTH_FRAME_BYTES: u64 = 4096;

/// Most frames one side receives before its handshake is over (an honest one needs at most 3).
pub const PREAUTH_FRAMES: usize = 8;

/// Which end of the connection this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// We accepted the connection: the peer names itself in its first frame (`Name`).
    Inbound,
    /// We dialed: the peer names itself in its `Challenge`.
    Outbound,
}

/// Why a connection was refused before authentication. The label is the metric's `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The cap on unauthenticated connections was reached (for a stranger: the part of it
    /// not reserved for known peers).
    OverCap,
    /// The source address already holds its share of the unauthenticated connections.
    PerSource,
    /// The source address failed the cookie check repeatedly and is backing off.
    Backoff,
    /// The source address is outside `--cluster-allow`.
    NotAllowed,
    /// The handshake did not finish within the deadline.
    Timeout,
    /// A frame no honest peer sends before authentication.
    BadFrame(String),
    /// The TLS handshake failed (no certificate from our CA, a plain-TCP client, …).
    Tls(String),
    /// The peer announced a node name its certificate does not carry.
    NameMismatch {
        /// The node name in the handshake.
        announced: String,
        /// The DNS names in the peer's certificate.
        certified: Vec<String>,
    },
}

/// The `reason` label values of `customer_cluster_preauth_refused_total`, all registered at 0.
pub const REFUSAL_REASONS: [&str; 8] = [
    "over_cap",
    "per_source",
    "backoff",
    "not_allowed",
    "timeout",
    "bad_frame",
    "tls",
    "name_mismatch",
];

impl Refusal {
    /// The metric label of this refusal.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::OverCap => "over_cap",
            Refusal::PerSource => "per_source",
            Refusal::Backoff => "backoff",
            Refusal::NotAllowed => "not_allowed",
            Refusal::Timeout => "timeout",
            Refusal::BadFrame(_) => "bad_frame",
            Refusal::Tls(_) => "tls",
            Refusal::NameMismatch { .. } => "name_mismatch",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::OverCap => f.write_str("too many unauthenticated cluster connections"),
            Refusal::PerSource => {
                f.write_str("too many unauthenticated cluster connections from one address")
            }
            Refusal::Backoff => {
                f.write_str("the address failed the cookie check repeatedly; backing off")
            }
            Refusal::NotAllowed => f.write_str("the address is outside --cluster-allow"),
            Refusal::Timeout => f.write_str("the cluster handshake did not finish in time"),
            Refusal::BadFrame(why) => write!(f, "not a cluster handshake: {why}"),
            Refusal::Tls(why) => write!(f, "TLS handshake failed: {why}"),
            Refusal::NameMismatch {
                announced,
                certified,
            } => write!(
                f,
                "the peer announced node name {announced:?} but its certificate is for {}",
                if certified.is_empty() {
                    "no DNS name".to_owned()
                } else {
                    certified.join(", ")
                }
            ),
        }
    }
}

/// Where the parser stands after some bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// More handshake frames are due.
    Pending,
    /// The peer has named itself (and its certificate, if any, carries that name).
    Named(String),
    /// This side's last handshake frame went through; later bytes are not looked at.
    Done,
}

/// Checks an announced node name against the peer's identity: `Ok` when acceptable, else the
/// names the identity does carry. Without TLS every name is acceptable.
pub type NameCheck<'a> = &'a dyn Fn(&str) -> Result<(), Vec<String>>;

/// Follows the handshake frames one side receives (see the module doc).
#[derive(Debug)]
pub struct HandshakeParser {
    side: Side,
    buf: Vec<u8>,
    frames: usize,
    named: Option<String>,
    done: bool,
    /// Bytes received after this side's last handshake frame (authenticated traffic).
    rest: Vec<u8>,
}

impl HandshakeParser {
    /// A parser for the frames `side` receives.
    pub fn new(side: Side) -> Self {
        Self {
            side,
            buf: Vec::new(),
            frames: 0,
            named: None,
            done: false,
            rest: Vec::new(),
        }
    }

    /// The node name the peer announced, once it has.
    pub fn peer_name(&self) -> Option<&str> {
        self.named.as_deref()
    }

    /// Which end of the connection the parser follows.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The bytes that arrived behind this side's last handshake frame, in the same `feed`:
    /// authenticated traffic, which the caller judges next (taken once).
    pub fn take_rest(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.rest)
    }

    /// Whether this side's handshake frames are all through.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Takes the next received bytes; `check` judges the announced name.
    pub fn feed(&mut self, bytes: &[u8], check: NameCheck<'_>) -> Result<Progress, Refusal> {
        if self.done {
            return Ok(Progress::Done);
        }
        self.buf.extend_from_slice(bytes);
        while let Some(frame) = self.next_frame()? {
            self.frames += 1;
            if self.frames > PREAUTH_FRAMES {
                return Err(Refusal::BadFrame(format!(
                    "more than {PREAUTH_FRAMES} frames before authentication"
                )));
            }
            self.on_frame(frame, check)?;
            if self.done {
                self.rest = std::mem::take(&mut self.buf);
                return Ok(Progress::Done);
            }
        }
        Ok(match &self.named {
            Some(name) => Progress::Named(name.clone()),
            None => Progress::Pending,
        })
    }

    /// Cuts the next complete frame's payload off the buffer, if there is one.
    fn next_frame(&mut self) -> Result<Option<wire::AuthMsg>, Refusal> {
        let Some(header) = self.buf.first_chunk::<8>() else {
            return Ok(None);
        };
        let len = u64::from_be_bytes(*header);
        if len > PREAUTH_FRAME_BYTES {
            return Err(Refusal::BadFrame(format!(
                "a frame of {len} bytes before authentication (at most {PREAUTH_FRAME_BYTES})"
            )));
        }
        let end = 8 + len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let payload: Vec<u8> = self.buf.drain(..end).skip(8).collect();
        wire::decode_auth(&payload)
            .map(Some)
            .map_err(Refusal::BadFrame)
    }

    fn on_frame(&mut self, msg: wire::AuthMsg, check: NameCheck<'_>) -> Result<(), Refusal> {
        use wire::AuthMsg as M;
        let first = self.frames == 1;
        match (self.side, msg) {
            (Side::Inbound, M::Name(server_name)) if first => self.name(&server_name, check),
            (Side::Inbound, _) if first => Err(Refusal::BadFrame(
                "the first frame is not the peer's name".into(),
            )),
            (Side::Outbound, M::Challenge(server_name)) if self.named.is_none() => {
                self.name(&server_name, check)
            }
            (Side::Inbound, M::ClientChallenge) | (Side::Outbound, M::ServerAck) => {
                if self.named.is_none() {
                    return Err(Refusal::BadFrame("the handshake ended unnamed".into()));
                }
                self.done = true;
                Ok(())
            }
            (_, M::Name(_) | M::Challenge(_)) => {
                Err(Refusal::BadFrame("a second name in one handshake".into()))
            }
            (Side::Inbound, M::ServerAck) | (Side::Outbound, M::ClientChallenge) => Err(
                Refusal::BadFrame("the other side's handshake message".into()),
            ),
            (_, M::Other) => Ok(()),
        }
    }

    fn name(&mut self, server_name: &str, check: NameCheck<'_>) -> Result<(), Refusal> {
        let node = node_of_server_name(server_name).to_owned();
        if !is_valid_node_name(&node) {
            // Names go into logs, metrics and actor names: nothing else is a node name.
            return Err(Refusal::BadFrame(format!(
                "the node name {:?} is not 1..64 characters of [A-Za-z0-9._-]",
                node.chars().take(80).collect::<String>()
            )));
        }
        check(&node).map_err(|certified| Refusal::NameMismatch {
            announced: node.clone(),
            certified,
        })?;
        self.named = Some(node);
        Ok(())
    }
}

/// The slice of ractor_cluster's protobuf schema (`meta.proto`, `auth.proto`) the parser
/// reads. Fields it does not name are skipped by the decoder; message-typed fields it does not
/// look into are read as opaque bytes (the same wire type).
mod wire {
    use prost::Message;

    #[derive(Clone, PartialEq, Message)]
    struct NetworkMessage {
        #[prost(oneof = "Net", tags = "1, 2, 3")]
        message: Option<Net>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    enum Net {
        #[prost(message, tag = "1")]
        Auth(AuthenticationMessage),
        #[prost(bytes, tag = "2")]
        Node(Vec<u8>),
        #[prost(bytes, tag = "3")]
        Control(Vec<u8>),
    }

    #[derive(Clone, PartialEq, Message)]
    struct AuthenticationMessage {
        #[prost(oneof = "Auth", tags = "1, 2, 3, 4, 5, 6")]
        msg: Option<Auth>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    enum Auth {
        #[prost(message, tag = "1")]
        Name(Named),
        #[prost(bytes, tag = "2")]
        ServerStatus(Vec<u8>),
        #[prost(bytes, tag = "3")]
        ClientStatus(Vec<u8>),
        #[prost(message, tag = "4")]
        ServerChallenge(Named),
        #[prost(bytes, tag = "5")]
        ClientChallenge(Vec<u8>),
        #[prost(bytes, tag = "6")]
        ServerAck(Vec<u8>),
    }

    /// `NameMessage` and `Challenge` both carry the node's full name in field 1.
    #[derive(Clone, PartialEq, Message)]
    struct Named {
        #[prost(string, tag = "1")]
        name: String,
    }

    /// One pre-authentication message, as far as the parser cares.
    #[derive(Debug, PartialEq)]
    pub enum AuthMsg {
        /// Client → server: the client's NodeServer name.
        Name(String),
        /// Server → client: the server's NodeServer name.
        Challenge(String),
        /// Client → server: the client's last handshake frame.
        ClientChallenge,
        /// Server → client: the server's last handshake frame.
        ServerAck,
        /// A status message.
        Other,
    }

    /// Decodes one frame's payload; anything but an authentication message is an error.
    pub fn decode_auth(payload: &[u8]) -> Result<AuthMsg, String> {
        let msg = NetworkMessage::decode(payload).map_err(|e| format!("undecodable frame: {e}"))?;
        let Some(Net::Auth(auth)) = msg.message else {
            return Err("a message other than the handshake before authentication".into());
        };
        Ok(match auth.msg {
            Some(Auth::Name(n)) => AuthMsg::Name(n.name),
            Some(Auth::ServerChallenge(n)) => AuthMsg::Challenge(n.name),
            Some(Auth::ClientChallenge(_)) => AuthMsg::ClientChallenge,
            Some(Auth::ServerAck(_)) => AuthMsg::ServerAck,
            Some(Auth::ServerStatus(_) | Auth::ClientStatus(_)) => AuthMsg::Other,
            None => return Err("an empty handshake message".into()),
        })
    }

    /// Test helper: one framed handshake message (`kind` 1..=6 as in `auth.proto`).
    #[cfg(test)]
    pub fn frame(kind: u32, name: &str) -> Vec<u8> {
        let named = || Named { name: name.into() };
        let msg = match kind {
            1 => Auth::Name(named()),
            2 => Auth::ServerStatus(vec![]),
            3 => Auth::ClientStatus(vec![8, 1]),
            4 => Auth::ServerChallenge(named()),
            5 => Auth::ClientChallenge(vec![8, 7]),
            _ => Auth::ServerAck(vec![10, 1, 0]),
        };
        let payload = NetworkMessage {
            message: Some(Net::Auth(AuthenticationMessage { msg: Some(msg) })),
        }
        .encode_to_vec();
        let mut out = (payload.len() as u64).to_be_bytes().to_vec();
        out.extend(payload);
        out
    }

    /// Test helper: a framed non-handshake message.
    #[cfg(test)]
    pub fn control_frame() -> Vec<u8> {
        let payload = NetworkMessage {
            message: Some(Net::Control(vec![])),
        }
        .encode_to_vec();
        let mut out = (payload.len() as u64).to_be_bytes().to_vec();
        out.extend(payload);
        out
    }
}

/// At most one log line per `window` about refused unauthenticated connections: the first
/// refusal after a quiet window is logged at once, later ones are counted and summed up in the
/// next line ([`RefusalLog::record`] or, when refusals stop, [`RefusalLog::flush`]).
#[derive(Debug)]
pub struct RefusalLog {
    window: Duration,
    last_line: Option<Instant>,
    pending: BTreeMap<&'static str, u64>,
}

/// How often the refusal summary may be logged.
pub const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(10);

impl RefusalLog {
    /// A log allowing one line per `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            last_line: None,
            pending: BTreeMap::new(),
        }
    }

    /// Counts a refusal at `now`; returns the line to log, if one is due.
    pub fn record(&mut self, refusal: &Refusal, now: Instant) -> Option<String> {
        *self.pending.entry(refusal.label()).or_insert(0) += 1;
        self.flush(now)
    }

    /// Counts a failed cookie check at `now` (in the same summary as the refusals).
    pub fn record_cookie_failure(&mut self, now: Instant) -> Option<String> {
        *self.pending.entry("cookie_failure").or_insert(0) += 1;
        self.flush(now)
    }

    /// The summary of refusals not yet logged, if the window since the last line has passed.
    pub fn flush(&mut self, now: Instant) -> Option<String> {
        let due = self
            .last_line
            .is_none_or(|t| now.saturating_duration_since(t) >= self.window);
        if !due || self.pending.is_empty() {
            return None;
        }
        self.last_line = Some(now);
        let total: u64 = self.pending.values().sum();
        let parts: Vec<String> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(reason, n)| format!("{n} {reason}"))
            .collect();
        Some(format!(
            "refused {total} unauthenticated cluster connection(s) ({}); at most one such line per {} s, counts in customer_cluster_preauth_refused_total and customer_cluster_auth_failures_total",
            parts.join(", "),
            self.window.as_secs()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::wire::{control_frame, frame};
    use super::*;

    fn any_name(_: &str) -> Result<(), Vec<String>> {
        Ok(())
    }

    fn only_x(name: &str) -> Result<(), Vec<String>> {
        if name == "x" {
            Ok(())
        } else {
            Err(vec!["x".into()])
        }
    }

    #[test]
    fn an_inbound_handshake_is_named_by_its_first_frame_and_done_after_the_challenge_reply() {
        let mut p = HandshakeParser::new(Side::Inbound);
        let name = frame(1, "n2#17@127.0.0.1");
        // Byte by byte: a frame split across reads is still one frame.
        for b in &name[..name.len() - 1] {
            assert_eq!(p.feed(&[*b], &any_name), Ok(Progress::Pending));
        }
        assert_eq!(
            p.feed(&name[name.len() - 1..], &any_name),
            Ok(Progress::Named("n2".into()))
        );
        assert_eq!(
            p.feed(&frame(3, ""), &any_name),
            Ok(Progress::Named("n2".into()))
        );
        let mut rest = frame(5, "");
        rest.extend(control_frame()); // authenticated traffic right behind: handed back
        assert_eq!(p.feed(&rest, &any_name), Ok(Progress::Done));
        assert!(p.is_done());
        assert_eq!(p.take_rest(), control_frame());
        assert_eq!(p.feed(&[0xff; 64], &any_name), Ok(Progress::Done));
    }

    #[test]
    fn an_outbound_handshake_is_named_by_the_challenge_and_done_after_the_ack() {
        let mut p = HandshakeParser::new(Side::Outbound);
        assert_eq!(p.feed(&frame(2, ""), &any_name), Ok(Progress::Pending));
        assert_eq!(
            p.feed(&frame(4, "n1#5@10.0.0.1"), &any_name),
            Ok(Progress::Named("n1".into()))
        );
        assert_eq!(p.feed(&frame(6, ""), &any_name), Ok(Progress::Done));
    }

    #[test]
    fn a_long_frame_header_is_refused_before_its_payload_arrives() {
        let mut p = HandshakeParser::new(Side::Inbound);
        let header = (4 * 1024 * 1024u64).to_be_bytes();
        assert!(matches!(
            p.feed(&header, &any_name),
            Err(Refusal::BadFrame(_))
        ));
        let mut p = HandshakeParser::new(Side::Inbound);
        let at_limit = PREAUTH_FRAME_BYTES.to_be_bytes();
        assert_eq!(p.feed(&at_limit, &any_name), Ok(Progress::Pending));
    }

    #[test]
    fn anything_but_the_handshake_before_authentication_is_refused() {
        let refused = |side, bytes: Vec<u8>| {
            matches!(
                HandshakeParser::new(side).feed(&bytes, &any_name),
                Err(Refusal::BadFrame(_))
            )
        };
        assert!(refused(Side::Inbound, control_frame()));
        assert!(
            refused(Side::Inbound, frame(5, "")),
            "a reply before any name"
        );
        assert!(
            refused(Side::Outbound, frame(6, "")),
            "an ack before any name"
        );
        let mut garbage = 5u64.to_be_bytes().to_vec();
        garbage.extend([0xff; 5]);
        assert!(refused(Side::Inbound, garbage));
        let mut twice = frame(1, "a#1@h");
        twice.extend(frame(1, "b#1@h"));
        assert!(refused(Side::Inbound, twice));
        let many: Vec<u8> = std::iter::once(frame(1, "a#1@h"))
            .chain(std::iter::repeat_with(|| frame(3, "")).take(PREAUTH_FRAMES))
            .flatten()
            .collect();
        assert!(refused(Side::Inbound, many));
    }

    #[test]
    fn a_name_the_certificate_does_not_carry_is_refused_naming_both() {
        let mut p = HandshakeParser::new(Side::Inbound);
        let refusal = p.feed(&frame(1, "y#9@127.0.0.1"), &only_x).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::NameMismatch {
                announced: "y".into(),
                certified: vec!["x".into()]
            }
        );
        let line = refusal.to_string();
        assert!(
            line.contains("\"y\"") && line.contains("certificate is for x"),
            "{line}"
        );
        let mut p = HandshakeParser::new(Side::Outbound);
        assert!(matches!(
            p.feed(&frame(4, "y#9@h"), &only_x),
            Err(Refusal::NameMismatch { .. })
        ));
        let mut p = HandshakeParser::new(Side::Inbound);
        assert_eq!(
            p.feed(&frame(1, "x#9@h"), &only_x),
            Ok(Progress::Named("x".into()))
        );
    }

    #[test]
    fn a_name_that_is_not_a_node_name_is_refused_whatever_the_certificate() {
        for forged in ["zz\nERROR forged line#1@h", "", "a b#1@h", &"x".repeat(65)] {
            let mut p = HandshakeParser::new(Side::Inbound);
            let refusal = p.feed(&frame(1, forged), &any_name).unwrap_err();
            assert!(matches!(&refusal, Refusal::BadFrame(_)), "{forged:?}");
            assert!(!refusal.to_string().contains('\n'), "{refusal}");
        }
    }

    #[test]
    fn refusals_are_logged_at_most_once_per_window_and_summed_up() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut log = RefusalLog::new(Duration::from_secs(10));
        let first = log
            .record(&Refusal::OverCap, at(0))
            .expect("first is logged at once");
        assert!(
            first.contains("refused 1 ") && first.contains("1 over_cap"),
            "{first}"
        );
        for i in 0..50 {
            assert_eq!(log.record(&Refusal::Timeout, at(100 + i)), None);
        }
        assert_eq!(log.record(&Refusal::OverCap, at(9_000)), None);
        assert_eq!(log.flush(at(9_999)), None);
        let summary = log.flush(at(10_000)).expect("due after the window");
        assert!(
            summary.contains("refused 51 ")
                && summary.contains("1 over_cap")
                && summary.contains("50 timeout"),
            "{summary}"
        );
        assert_eq!(
            log.flush(at(30_000)),
            None,
            "nothing pending, nothing logged"
        );
        assert!(log.record(&Refusal::Timeout, at(30_001)).is_some());
    }
}
