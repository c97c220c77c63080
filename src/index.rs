//! The local subscriber index of one shard: for each room, the subscriptions
//! held by this shard's connections.
//!
//! Generic over the subscriber type `S` (the shard's `Subscriber` holds a
//! connection handle; tests use plain values), so this module names nothing
//! above it. A room's entry exists exactly while it has subscribers: the
//! last removal frees it, so a client cycling SUBSCRIBE/UNSUBSCRIBE over many
//! names leaves nothing behind. Owned by one shard; no locks.

use std::collections::HashMap;

use slab::Slab;

/// Rooms with local subscribers, and their subscribers.
pub(crate) struct RoomIndex<S> {
    rooms: HashMap<Box<str>, Slab<S>>,
}

impl<S> Default for RoomIndex<S> {
    fn default() -> Self {
        RoomIndex {
            rooms: HashMap::new(),
        }
    }
}

/// What adding a subscriber did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Added {
    /// The subscriber's key in its room (stable until it is removed).
    pub key: usize,
    /// It is the room's first local subscriber (the owner must learn of
    /// this shard's interest).
    pub first: bool,
}

impl<S> RoomIndex<S> {
    /// Add a subscriber of `room`.
    pub fn insert(&mut self, room: &str, sub: S) -> Added {
        let subs = match self.rooms.get_mut(room) {
            Some(subs) => subs,
            None => self.rooms.entry(room.into()).or_default(),
        };
        let first = subs.is_empty();
        Added {
            key: subs.insert(sub),
            first,
        }
    }

    /// Remove subscriber `key` of `room`; returns it and whether the room has
    /// no local subscriber left (its entry is then gone).
    pub fn remove(&mut self, room: &str, key: usize) -> Option<(S, bool)> {
        let subs = self.rooms.get_mut(room)?;
        let sub = subs.try_remove(key)?;
        let last = subs.is_empty();
        if last {
            self.rooms.remove(room);
        }
        Some((sub, last))
    }

    /// Subscriber `key` of `room`.
    pub fn get_mut(&mut self, room: &str, key: usize) -> Option<&mut S> {
        self.rooms.get_mut(room)?.get_mut(key)
    }

    /// Every subscriber of `room` (none if the room has no local entry).
    pub fn subscribers_mut(&mut self, room: &str) -> impl Iterator<Item = &mut S> {
        self.rooms
            .get_mut(room)
            .into_iter()
            .flat_map(|subs| subs.iter_mut().map(|(_, s)| s))
    }

    /// Every subscriber of `room` with its key.
    pub fn keyed(&self, room: &str) -> impl Iterator<Item = (usize, &S)> {
        self.rooms
            .get(room)
            .into_iter()
            .flat_map(|subs| subs.iter())
    }

    /// Whether `room` has a local subscriber.
    pub fn has(&self, room: &str) -> bool {
        self.rooms.contains_key(room)
    }

    /// Subscribers of every room.
    pub fn len(&self) -> usize {
        self.rooms.values().map(Slab::len).sum()
    }

    /// Rooms with at least one local subscriber.
    #[cfg(test)]
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_and_last_subscriber_of_a_room() {
        let mut ix = RoomIndex::default();
        let a = ix.insert("r", 'a');
        let b = ix.insert("r", 'b');
        let c = ix.insert("s", 'c');
        assert!(a.first && !b.first && c.first);
        assert_eq!(ix.rooms(), 2);
        let mut seen: Vec<char> = ix.subscribers_mut("r").map(|s| *s).collect();
        seen.sort();
        assert_eq!(seen, ['a', 'b']);
        assert_eq!(ix.remove("r", a.key), Some(('a', false)));
        assert_eq!(ix.remove("r", a.key), None, "removed once");
        assert_eq!(ix.remove("r", b.key), Some(('b', true)));
        assert_eq!(ix.subscribers_mut("r").count(), 0);
        assert_eq!(ix.rooms(), 1, "an empty room's entry is freed");
        *ix.get_mut("s", c.key).unwrap() = 'C';
        assert_eq!(ix.remove("s", c.key), Some(('C', true)));
        assert_eq!(ix.rooms(), 0);
        assert!(ix.get_mut("s", c.key).is_none());
    }

    #[test]
    fn a_removed_key_is_reused_only_within_its_room() {
        let mut ix = RoomIndex::default();
        let a = ix.insert("r", 1);
        ix.insert("r", 2);
        ix.remove("r", a.key);
        let again = ix.insert("r", 3);
        assert_eq!(again.key, a.key);
        assert!(!again.first);
        assert_eq!(*ix.get_mut("r", again.key).unwrap(), 3);
    }
}
