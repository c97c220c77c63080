//! Room names and where rooms live.
//!
//! Room `R` is owned by shard `fnv1a64(R) % shards`: the owner gives every
//! message of `R` its sequence number. A destination names a room as
//! `/topic/<room>`, or `<prefix><name>` for the other destination prefixes
//! (`--destination-prefixes`; [`room_of`]).

#[cfg(test)]
use crate::config::destination_parts;
use crate::config::{Prefixes, TOPIC_PREFIX};

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

/// The room named by a destination: `<prefix><name>` for one of
/// `prefixes` with a name of `[A-Za-z0-9_.~-]{1,128}`. Under `/topic/` the
/// room is the name itself; under any other prefix it is the destination
/// without its leading `/` (`/queue/a` → `queue/a`): a `/` cannot be in a
/// name, so the two never meet. `None` for anything else.
pub fn room_of<'a>(destination: &'a str, prefixes: &Prefixes) -> Option<&'a str> {
    let prefix = prefixes.iter().find(|p| destination.starts_with(p))?;
    let name = &destination[prefix.len()..];
    if !valid_room(name) {
        return None;
    }
    Some(if prefix == TOPIC_PREFIX {
        name
    } else {
        &destination[1..]
    })
}

/// Whether `room` names a room under `prefixes` (as the HTTP API and
/// `/ws?room=` take them): a bare name when `/topic/` is one of them, or
/// `<prefix name>/<name>` for another.
pub fn valid_room_key(room: &str, prefixes: &Prefixes) -> bool {
    match room.split_once('/') {
        None => prefixes.contains(TOPIC_PREFIX) && valid_room(room),
        Some((p, name)) => {
            valid_room(name)
                && prefixes
                    .iter()
                    .any(|x| x != TOPIC_PREFIX && x.len() == p.len() + 2 && x[1..].starts_with(p))
        }
    }
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
        let p = Prefixes::default();
        assert_eq!(room_of("/topic/lobby-1", &p), Some("lobby-1"));
        assert_eq!(room_of("/topic/", &p), None);
        assert_eq!(room_of("/queue/x", &p), Some("queue/x"));
        assert_eq!(room_of("/queue/", &p), None);
        assert_eq!(room_of("/app/x", &p), None);
        assert_eq!(room_of("/user/queue/x", &p), None);
        assert_eq!(room_of("/topic/a/b", &p), None);
        assert_eq!(room_of("/queue/a/b", &p), None);
        assert_eq!(room_of("/topic/a:b", &p), None);
        assert!(room_of(&format!("/topic/{}", "x".repeat(129)), &p).is_none());
        assert!(room_of(&format!("/topic/{}", "x".repeat(128)), &p).is_some());
        let only_queue: Prefixes = "/queue/".parse().unwrap();
        assert_eq!(room_of("/topic/a", &only_queue), None);
        assert_eq!(room_of("/queue/a", &only_queue), Some("queue/a"));
    }

    #[test]
    fn a_room_names_its_destination_again() {
        let p: Prefixes = "/topic/,/queue/,/exchange/".parse().unwrap();
        for dest in ["/topic/a", "/queue/a", "/exchange/a.b-c"] {
            let room = room_of(dest, &p).unwrap();
            let (prefix, rest) = destination_parts(room);
            assert_eq!(format!("{prefix}{rest}"), dest);
            assert!(valid_room_key(room, &p), "{room}");
        }
        assert!(!valid_room_key("queue/a", &"/topic/".parse().unwrap()));
        assert!(!valid_room_key("a", &"/queue/".parse().unwrap()));
        assert!(!valid_room_key("topic/a", &p), "topic rooms are bare names");
        assert!(!valid_room_key("queue/", &p));
        assert!(!valid_room_key("queue/a/b", &p));
        assert!(!valid_room_key("que/a", &p));
    }

    #[test]
    fn prefixes_are_checked() {
        for bad in [
            "", "topic", "/topic", "topic/", "/To pic/", "/user/", "/a/,/a/", "//",
        ] {
            assert!(bad.parse::<Prefixes>().is_err(), "{bad:?}");
        }
        let p: Prefixes = " /topic/ , /queue/ ".parse().unwrap();
        assert_eq!(p, Prefixes::default());
        assert_eq!(p.to_string(), "/topic/,/queue/");
    }
}
