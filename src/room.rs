//! Room names and where rooms live.
//!
//! Room `R` is owned by shard `fnv1a64(R) % shards`: the owner gives every
//! message of `R` its sequence number. A destination names a room as
//! `/topic/<room>`.

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
    valid_room(room).then_some(room)
}

/// Whether `room` is a room name: `[A-Za-z0-9_.~-]{1,128}`.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_LEN
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'~' | b'-'))
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
