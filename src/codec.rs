//! The binary codec for everything that crosses nodes. The only module that names bincode.
//!
//! Cluster messages (see [`crate::cluster::protocol`]) carry their arguments and replies as
//! [`Wire<T>`]: a `Result<T, Error>` encoded with bincode 2 (serde flavour, standard config)
//! under a hard size limit. Two properties matter more than speed:
//!
//! * **Decoding never panics and never over-allocates.** Bytes from the network are untrusted;
//!   an unlimited bincode decode allocates gigabytes on an 11-byte input. Every decode runs under
//!   [`MAX_MESSAGE_BYTES`] and must consume its input exactly. A failure becomes
//!   `Wire(Err(Error::Internal(..)))`, so a garbled request is answered with an error reply and a
//!   garbled reply surfaces as an error at the caller — never a crash, never a hang.
//! * **Errors travel as values.** Rust's orphan rule forbids implementing ractor's
//!   `BytesConvertable` for `Result<T, Error>`, hence the local newtype and one generic impl.
//!
//! Not done here: compression, schema evolution beyond the protocol version checked at join
//! (`cluster::protocol::PROTOCOL_VERSION`). Nodes of different protocol versions do not talk.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use ractor::{BytesConvertable, RpcReplyPort};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Largest encoded message we produce or accept, in bytes. A list page of 1,000 customers at
/// the field limits is about 1.1 MB; 4 MiB leaves headroom while bounding what a peer can make
/// us allocate.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Largest inbound cluster frame the NodeServer accepts, in bytes: one message plus the
/// protobuf envelope ractor_cluster wraps it in. Every node must use the same value, because
/// one oversized frame tears down the whole session.
pub const MAX_FRAME_BYTES: u64 = (MAX_MESSAGE_BYTES as u64) + 64 * 1024;

type Config = Configuration<LittleEndian, Varint, Limit<MAX_MESSAGE_BYTES>>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Encodes a value. Fails only when the value exceeds [`MAX_MESSAGE_BYTES`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let bytes = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| Error::Internal(format!("encode failed: {e}")))?;
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(Error::Internal(format!(
            "message of {} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Decodes a value, requiring the whole input to be consumed.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(Error::Internal("message exceeds the size limit".into()));
    }
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(bytes, config())
        .map_err(|e| Error::Internal(format!("undecodable message: {e}")))?;
    if used != bytes.len() {
        return Err(Error::Internal(format!(
            "undecodable message: {} trailing bytes",
            bytes.len() - used
        )));
    }
    Ok(value)
}

/// A request argument or reply as it crosses nodes: the value, or the error that replaced it.
///
/// Senders wrap with `Wire(Ok(value))`; handlers reply with `Wire(result)`. Decoding failures
/// arrive as `Wire(Err(..))`, which handlers answer with an error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wire<T>(pub Result<T>);

impl<T> Wire<T> {
    /// Wraps a value for sending.
    pub fn ok(value: T) -> Self {
        Self(Ok(value))
    }

    /// Opens a request argument for a handler: the value together with its reply port, or —
    /// when the argument did not decode — `None` after answering the caller with the error,
    /// so a garbled request never leaves its caller waiting for a timeout.
    pub fn open<R>(self, reply: RpcReplyPort<Wire<R>>) -> Option<(T, RpcReplyPort<Wire<R>>)> {
        match self.0 {
            Ok(value) => Some((value, reply)),
            Err(err) => {
                tracing::warn!(error = ?err, "rejected an undecodable request");
                answer(reply, Err(err));
                None
            }
        }
    }
}

/// Answers a request. A caller that gave up (its port is closed) is not an error here.
pub fn answer<T>(reply: RpcReplyPort<Wire<T>>, result: Result<T>) {
    let _ = reply.send(Wire(result));
}

impl<T: Serialize + DeserializeOwned> BytesConvertable for Wire<T> {
    fn into_bytes(self) -> Vec<u8> {
        encode(&self.0).unwrap_or_else(|err| {
            // Too large or unencodable: send the error instead, which always fits.
            let fallback: Result<T> = Err(err);
            encode(&fallback).unwrap_or_default()
        })
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(decode::<Result<T>>(&bytes).and_then(|inner| inner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_errors_round_trip() {
        let ok = Wire::ok((42u64, "héllo".to_string()));
        let back = Wire::<(u64, String)>::from_bytes(ok.clone().into_bytes());
        assert_eq!(back, ok);

        let err: Wire<u64> = Wire(Err(Error::PreconditionFailed {
            expected: 1,
            current: 2,
        }));
        assert_eq!(Wire::<u64>::from_bytes(err.clone().into_bytes()), err);
    }

    #[test]
    fn garbage_decodes_to_an_error_not_a_panic() {
        for bytes in [
            vec![],
            vec![0xff; 11],
            vec![
                0, 0xfc, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ],
            b"not bincode at all".to_vec(),
        ] {
            let out = Wire::<(String, Vec<u64>)>::from_bytes(bytes);
            assert!(matches!(out.0, Err(Error::Internal(_))), "{out:?}");
        }
    }

    #[test]
    fn a_huge_length_prefix_is_refused_without_allocating_it() {
        // Ok variant tag, then a string claiming ~2^60 bytes.
        let mut bytes = vec![0u8, 0xfd];
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let out = Wire::<String>::from_bytes(bytes);
        assert!(out.0.is_err());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = Wire::ok(7u32).into_bytes();
        bytes.push(0);
        assert!(Wire::<u32>::from_bytes(bytes).0.is_err());
    }

    #[test]
    fn an_oversized_value_is_sent_as_an_error() {
        let big = Wire::ok("x".repeat(MAX_MESSAGE_BYTES + 1));
        let back = Wire::<String>::from_bytes(big.into_bytes());
        assert!(matches!(back.0, Err(Error::Internal(_))));
    }
}
