//! Room names and where rooms live.
//!
//! Room `R` is owned by shard `fnv1a64(R) % shards`: the owner gives every
//! message of `R` its sequence number. A destination names a room as
//! `/topic/<room>`, or `<prefix><name>` for the other destination prefixes
//! (`--destination-prefixes`; [`room_of`]).

#[cfg(test)]
use crate::config::destination_parts;
use std::borrow::Cow;

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

/// Where user destinations start (Spring's `UserDestinationMessageHandler`):
/// a client subscribes to `/user/<prefix name>/<name>` and receives what
/// anyone sends to `/user/<its user>/<prefix name>/<name>`.
pub const USER_PREFIX: &str = "/user/";

/// Why a destination names no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotARoom {
    /// Outside every prefix, or a bad name.
    Invalid,
    /// A SUBSCRIBE to another user's destination (`/user/<user>/…`).
    OtherUser,
}

/// The room a SEND to `destination` goes to: [`room_of`], or for
/// `/user/<user>/<prefix name>/<name>` that user's room
/// `user/<user>/<prefix name>/<name>` (the destination without its first
/// `/`; one room per user and name, on one owner shard, so every session
/// of the user gets the message in one order, with history and replay).
pub fn send_room<'a>(destination: &'a str, prefixes: &Prefixes) -> Option<&'a str> {
    match destination.strip_prefix(USER_PREFIX) {
        Some(rest) => user_target(rest, prefixes).map(|_| &destination[1..]),
        None => room_of(destination, prefixes),
    }
}

/// The room a SUBSCRIBE of `user` to `destination` reads: [`room_of`], or
/// for `/user/<prefix name>/<name>` the user's own room (see
/// [`send_room`]). Another user's `/user/<user>/…` is never theirs.
pub fn subscribe_room<'a>(
    destination: &'a str,
    prefixes: &Prefixes,
    user: &str,
) -> Result<Cow<'a, str>, NotARoom> {
    let Some(rest) = destination.strip_prefix(USER_PREFIX) else {
        return room_of(destination, prefixes)
            .map(Cow::Borrowed)
            .ok_or(NotARoom::Invalid);
    };
    if user_target(rest, prefixes).is_some() {
        return Err(NotARoom::OtherUser);
    }
    let (pname, name) = rest.split_once('/').ok_or(NotARoom::Invalid)?;
    if !valid_room(name) || !is_prefix_name(pname, prefixes) {
        return Err(NotARoom::Invalid);
    }
    Ok(Cow::Owned(format!("user/{user}/{pname}/{name}")))
}

/// `<user>/<prefix name>/<name>` of a user destination (read from the
/// right: a user id may hold a `/`): the user, if it is one.
fn user_target<'a>(rest: &'a str, prefixes: &Prefixes) -> Option<&'a str> {
    let mut parts = rest.rsplitn(3, '/');
    let (name, pname, user) = (parts.next()?, parts.next()?, parts.next()?);
    // As `auth::valid_user`: 1-128 bytes, no control or white space.
    let user_ok = !user.is_empty()
        && user.len() <= 128
        && !user.chars().any(|c| c.is_control() || c.is_whitespace());
    (user_ok && valid_room(name) && is_prefix_name(pname, prefixes)).then_some(user)
}

/// Whether `/<pname>/` is one of `prefixes`.
fn is_prefix_name(pname: &str, prefixes: &Prefixes) -> bool {
    prefixes
        .iter()
        .any(|p| p.len() == pname.len() + 2 && p[1..].starts_with(pname))
}

/// Whether `room` is a user's room (`user/<user>/<prefix name>/<name>`).
pub fn is_user_room(room: &str) -> bool {
    room.starts_with("user/")
}

/// Whether `room` is `user`'s own room.
pub fn is_room_of_user(room: &str, user: &str) -> bool {
    room.strip_prefix("user/")
        .and_then(|r| r.strip_prefix(user))
        .is_some_and(|r| r.starts_with('/') && r.matches('/').count() == 2)
}

/// Whether `room` names a room under `prefixes` (as the HTTP API and
/// `/ws?room=` take them): a bare name when `/topic/` is one of them, or
/// `<prefix name>/<name>` for another.
pub fn valid_room_key(room: &str, prefixes: &Prefixes) -> bool {
    if let Some(rest) = room.strip_prefix("user/") {
        return user_target(rest, prefixes).is_some();
    }
    match room.split_once('/') {
        None => prefixes.contains(TOPIC_PREFIX) && valid_room(room),
        Some((p, name)) => {
            valid_room(name) && TOPIC_PREFIX.trim_matches('/') != p && is_prefix_name(p, prefixes)
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
    fn user_destinations() {
        let p = Prefixes::default();
        assert_eq!(
            send_room("/user/bob/queue/dm", &p),
            Some("user/bob/queue/dm")
        );
        assert_eq!(
            send_room("/user/b/o/b/topic/x", &p),
            Some("user/b/o/b/topic/x")
        );
        assert_eq!(send_room("/user/queue/dm", &p), None, "whose?");
        assert_eq!(send_room("/user/bob/app/dm", &p), None);
        assert_eq!(send_room("/user/bob/queue/a b", &p), None);
        assert_eq!(send_room("/user/ /queue/dm", &p), None);
        assert_eq!(
            subscribe_room("/user/queue/dm", &p, "bob").unwrap(),
            "user/bob/queue/dm"
        );
        assert_eq!(
            subscribe_room("/user/bob/queue/dm", &p, "bob"),
            Err(NotARoom::OtherUser)
        );
        assert_eq!(
            subscribe_room("/user/alice/queue/dm", &p, "bob"),
            Err(NotARoom::OtherUser)
        );
        assert_eq!(
            subscribe_room("/user/app/dm", &p, "bob"),
            Err(NotARoom::Invalid)
        );
        assert_eq!(
            subscribe_room("/user/queue/", &p, "bob"),
            Err(NotARoom::Invalid)
        );
        assert_eq!(subscribe_room("/topic/a", &p, "bob").unwrap(), "a");
        // What bob subscribes to is what alice sends to.
        let room = subscribe_room("/user/queue/dm", &p, "bob").unwrap();
        assert_eq!(Some(&*room), send_room("/user/bob/queue/dm", &p));
        assert!(is_user_room(&room) && is_room_of_user(&room, "bob"));
        assert!(!is_room_of_user(&room, "bo") && !is_room_of_user(&room, "bobby"));
        assert!(valid_room_key(&room, &p));
        assert_eq!(destination_parts(&room), ("/user/", "queue/dm"));
        assert_eq!(
            destination_parts("user/b/o/b/topic/x"),
            ("/user/", "topic/x")
        );
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
