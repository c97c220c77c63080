//! Rooms: who owns them, who subscribes where, and fan-out.
//!
//! Room `R` is owned by shard `fnv1a64(R) % shards`. The owner gives every
//! message of `R` its sequence number and knows which *shards* have
//! subscribers (`OwnedRoom::remote`), so a message crosses to each such shard
//! once. Every shard keeps its own subscribers per room (`LocalRoom`) and
//! writes to their sockets. All of it is owned by one shard: no locks.

pub mod message;

use std::collections::HashMap;

use slab::Slab;

use crate::conn::ConnRef;
use crate::stomp::frame::Version;
pub use message::{Draft, Encoded, Sequenced};

/// Longest room name we accept. Room names become SQLite keys, metric labels
/// and `message-id` prefixes; 128 bytes is plenty for ids and slugs.
pub const MAX_ROOM_LEN: usize = 128;

/// The stable hash that places rooms on shards (FNV-1a, 64-bit). Tests and
/// load generators reproduce it to predict a room's owner.
pub fn room_hash(room: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The shard that owns `room`.
pub fn owner_of(room: &str, shards: usize) -> usize {
    (room_hash(room) % shards as u64) as usize
}

/// The room named by a destination: `/topic/<room>` with a room of
/// `[A-Za-z0-9_.~-]{1,128}`. `None` for anything else.
pub fn room_of(destination: &str) -> Option<&str> {
    let room = destination.strip_prefix("/topic/")?;
    let ok = !room.is_empty()
        && room.len() <= MAX_ROOM_LEN
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'~' | b'-'));
    ok.then_some(room)
}

/// How a subscription acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    Auto,
    /// Cumulative: an ACK covers every earlier message of the subscription.
    Client,
    ClientIndividual,
}

/// One subscription as the local fan-out sees it.
pub struct Subscriber {
    /// The connection; the entry is removed before the connection is dropped.
    pub conn: ConnRef,
    /// The connection-local number of the subscription (used in `ack` ids).
    pub sub_n: u32,
    /// `subscription:<escaped id>\n`, written into every MESSAGE.
    pub prefix: Box<[u8]>,
    pub mode: AckMode,
    pub version: Version,
    /// Set while a replay (`x-since-seq`, `x-replay-last`) is being sent:
    /// live messages wait here until it ends.
    pub replay: Option<Box<ReplayHold>>,
}

/// Live messages held back while a subscription's replay is sent.
#[derive(Default)]
pub struct ReplayHold {
    pub held: Vec<Sequenced>,
    /// Bytes of bodies and headers held (bounded by `max_outbound_bytes`).
    pub bytes: usize,
}

/// Subscribers of one room on this shard.
#[derive(Default)]
pub struct LocalRoom {
    pub subs: Slab<Subscriber>,
}

/// State the owner shard keeps per room.
pub struct OwnedRoom {
    /// The sequence number the next message gets; `None` until the last
    /// stored one has been read (the room's messages wait meanwhile).
    pub next_seq: Option<u64>,
    /// Which other shards currently have subscribers (indexed by shard).
    pub remote: Vec<bool>,
}

impl OwnedRoom {
    /// `next_seq` is `Some(1)` when nothing is stored (persistence off).
    pub fn new(shards: usize, next_seq: Option<u64>) -> OwnedRoom {
        OwnedRoom {
            next_seq,
            remote: vec![false; shards],
        }
    }
}

/// All room state of one shard.
#[derive(Default)]
pub struct Rooms {
    pub local: HashMap<Box<str>, LocalRoom>,
    pub owned: HashMap<Box<str>, OwnedRoom>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_values() {
        // Reference values of FNV-1a 64 (from the FNV test suite).
        assert_eq!(room_hash(""), 0xcbf29ce484222325);
        assert_eq!(room_hash("a"), 0xaf63dc4c8601ec8c);
        assert_eq!(room_hash("foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn destinations() {
        assert_eq!(room_of("/topic/lobby-1"), Some("lobby-1"));
        assert_eq!(room_of("/topic/"), None);
        assert_eq!(room_of("/queue/x"), None);
        assert_eq!(room_of("/topic/a/b"), None);
        assert_eq!(room_of("/topic/a:b"), None);
        assert!(room_of(&format!("/topic/{}", "x".repeat(129))).is_none());
        assert!(room_of(&format!("/topic/{}", "x".repeat(128))).is_some());
    }
}
