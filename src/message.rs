//! A chat message on its way, and the small values that travel with it.
//!
//! `Draft` (as published) → `Sequenced` (the owner gave it a place in the
//! room) → `Encoded` (the bytes every local subscriber of one STOMP version
//! shares). `Confirm` is what its publisher is owed, `ReplayFrom` where a
//! subscription's replay starts, `AckMode` how a subscription acknowledges.
//! These are the types every layer above (store, session, shard) shares;
//! this module names nothing above the codecs.

use crate::stomp::frame::{Escaping, Version, escape_into, escape_name_into};

/// What the publisher is owed once its message is stored (or, with
/// persistence off, sequenced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Confirm {
    /// A SEND's own `receipt`.
    Receipt(Box<str>),
    /// One SEND of a transaction whose COMMIT asked for a receipt: the
    /// session counts these down and answers the COMMIT when the last is
    /// stored.
    Group(u32),
}

/// Where a replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplayFrom {
    /// `x-since-seq:N`: every stored message with seq > N.
    Since(u64),
    /// `x-replay-last:K`: the last K.
    Last(u64),
}

/// How a subscription acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckMode {
    Auto,
    /// Cumulative: an ACK covers every earlier message of the subscription.
    Client,
    ClientIndividual,
}

/// Headers the server sets on MESSAGE; a SEND cannot supply them.
pub(crate) const RESERVED_HEADERS: [&str; 10] = [
    "destination",
    "receipt",
    "transaction",
    "content-length",
    "message-id",
    "subscription",
    "ack",
    "x-seq",
    "x-sender",
    "x-timestamp",
];

/// A published message before it has a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    pub room: Box<str>,
    /// The authenticated user (`x-sender`).
    pub sender: Box<str>,
    /// User headers of the SEND, unescaped, first occurrence of each name.
    pub headers: Vec<(Box<str>, Box<str>)>,
    pub body: Box<[u8]>,
}

/// A message with its place in the room's order.
#[derive(Debug, Clone)]
pub struct Sequenced {
    pub draft: Draft,
    pub seq: u64,
    /// Milliseconds since the Unix epoch, taken by the owner.
    pub timestamp_ms: u64,
    /// When the owner sequenced it (live messages; `None` once read back
    /// from the store), for the publish-to-delivery latency.
    pub sequenced_at: Option<std::time::Instant>,
}

/// The shared tail of a MESSAGE frame: every header but `subscription` and
/// `ack`, the blank line, body and NUL. Built once per message, version and
/// shard; copied behind each subscriber's own `MESSAGE\nsubscription:..\n`.
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// Whether the frame is valid UTF-8 (then it goes out as a text message).
    pub utf8: bool,
}

impl Sequenced {
    /// Encode the shared part for subscribers of `version`.
    pub fn encode(&self, version: Version) -> Encoded {
        let esc = Escaping::for_version(version);
        let d = &self.draft;
        let mut b = Vec::with_capacity(160 + d.room.len() * 2 + d.body.len());
        let (prefix, rest) = crate::config::destination_parts(&d.room);
        b.extend_from_slice(b"destination:");
        b.extend_from_slice(prefix.as_bytes());
        b.extend_from_slice(rest.as_bytes());
        b.extend_from_slice(b"\nmessage-id:");
        // A user room's key holds the user id, which may hold `:` or `\\`.
        escape_into(&mut b, &d.room, esc);
        b.push(b':');
        b.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        b.extend_from_slice(b"\nx-seq:");
        b.extend_from_slice(itoa::Buffer::new().format(self.seq).as_bytes());
        b.extend_from_slice(b"\nx-sender:");
        escape_into(&mut b, &d.sender, esc);
        b.extend_from_slice(b"\nx-timestamp:");
        b.extend_from_slice(itoa::Buffer::new().format(self.timestamp_ms).as_bytes());
        b.push(b'\n');
        for (k, v) in &d.headers {
            escape_name_into(&mut b, k, esc);
            b.push(b':');
            escape_into(&mut b, v, esc);
            b.push(b'\n');
        }
        b.extend_from_slice(b"content-length:");
        b.extend_from_slice(itoa::Buffer::new().format(d.body.len()).as_bytes());
        b.extend_from_slice(b"\n\n");
        b.extend_from_slice(&d.body);
        b.push(0);
        Encoded {
            bytes: b,
            utf8: std::str::from_utf8(&d.body).is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_server_headers_first_and_escapes_user_headers() {
        let m = Sequenced {
            draft: Draft {
                room: "r1".into(),
                sender: "al:ice".into(),
                headers: vec![("k".into(), " v\n".into())],
                body: b"hi".to_vec().into(),
            },
            seq: 7,
            timestamp_ms: 42,
            sequenced_at: None,
        };
        let e = m.encode(Version::V12);
        assert_eq!(
            std::str::from_utf8(&e.bytes).unwrap(),
            "destination:/topic/r1\nmessage-id:r1:7\nx-seq:7\nx-sender:al\\cice\nx-timestamp:42\nk: v\\n\ncontent-length:2\n\nhi\0"
        );
        assert!(e.utf8);
        // A user room names its user in the message-id, escaped like any
        // value; the destination is the one subscribed to.
        let mut dm = m.clone();
        dm.draft.room = "user/a:b\\c/queue/dm".into();
        let text = String::from_utf8(dm.encode(Version::V12).bytes).unwrap();
        assert!(
            text.starts_with("destination:/user/queue/dm\nmessage-id:user/a\\cb\\\\c/queue/dm:7\n"),
            "{text}"
        );
        let mut bin = m.clone();
        bin.draft.body = vec![0xff, 0].into();
        assert!(!bin.encode(Version::V11).utf8);
    }
}
