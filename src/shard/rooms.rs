//! A shard's rooms: the subscribers its connections hold (the local index),
//! and, for the rooms it owns, their sequence numbers and which other
//! shards subscribe. Fan-out to local subscribers is here.
//!
//! Runs on its shard only; nothing here waits or touches another shard
//! (the caller sends what must cross).
//!
//! Owned rooms are freed when idle: a room with no subscriber on any shard
//! and no message for `room_idle` is dropped by the sweeper (`evict_idle`),
//! so a client that cycles through millions of room names leaves nothing
//! behind. A freed room's next seq is read from the store again when it
//! comes back (the path a restart takes). Without a store there is nothing
//! to read it from, so a room that has given out seqs is kept: freeing it
//! would give the same seq to a second message.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::conns::{ConnRef, Conns};
use super::msg::Interest;
use crate::conn::Conn;
use crate::index::{Added, RoomIndex};
use crate::message::{AckMode, Encoded, Sequenced};
use crate::session::Pend;
use crate::stomp::frame::Version;
use crate::store::{Page, RoomSeqs};
use crate::ws::framing::CloseCode;

/// Slots an emptied room table may keep before it is shrunk.
const SHRINK_SLACK: usize = 1024;

/// One subscription as the local fan-out sees it.
pub(crate) struct Subscriber {
    /// The connection; the entry is removed before the connection is dropped.
    pub conn: ConnRef,
    /// The connection-local number of the subscription (used in `ack` ids).
    pub sub_n: u32,
    /// `subscription:<escaped id>\n`, written into every MESSAGE.
    pub prefix: Box<[u8]>,
    pub mode: AckMode,
    pub version: Version,
    /// Set while the owner has not let the subscription in yet, or while
    /// a replay (`x-since-seq`, `x-replay-last`) is being sent: live
    /// messages wait here until both are done.
    pub hold: Option<Box<Hold>>,
    /// The owner let it in and counts its user as present: it must be
    /// told when the subscription ends (`ShardMsg::Leave`).
    pub joined: bool,
}

/// Live messages held back from a subscription until the owner lets it in
/// and its replay is sent.
#[derive(Default)]
pub(crate) struct Hold {
    held: Vec<Sequenced>,
    /// Bytes of bodies and headers held (bounded by `max_outbound_bytes`).
    bytes: usize,
    /// Waiting for the owner's `Joined`.
    admitting: bool,
    /// Waiting for the replay's last page.
    replaying: bool,
    /// Waiting for the owner's mark on the mesh (an owner on another
    /// shard): every live message the replay covers was sent before it.
    /// The store's pages come on another channel and may overtake those.
    syncing: bool,
    /// The last seq the replay covered (held messages up to it are dropped).
    upto: u64,
}

impl Hold {
    /// A hold waiting for the owner (`admitting`) and/or a replay, and
    /// for the owner's mark if it is on another shard (`syncing`).
    pub fn new(admitting: bool, replaying: bool, syncing: bool) -> Box<Hold> {
        Box::new(Hold {
            admitting,
            replaying,
            syncing,
            ..Hold::default()
        })
    }
}

/// A room's members as its owner knows them (loaded with the room), and
/// who of them is present (has a live subscription on any shard).
#[derive(Default)]
pub(crate) struct Members {
    /// `set` holds every member (read from the store). Until then only
    /// presence is counted: `--join open` lets everyone in without it.
    loaded: bool,
    set: std::collections::HashSet<Box<str>>,
    /// Live subscriptions let in, per user.
    online: HashMap<Box<str>, u32>,
    /// Members with no live subscription, built when a message needs it
    /// and kept until presence or membership changes.
    away: Option<Arc<[Box<str>]>>,
}

/// Why the owner did not let a subscription in (`Rooms::admit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Deny {
    NotMember,
    Full,
}

/// State the owner shard keeps per room.
struct OwnedRoom {
    /// The sequence number the next message gets; `None` until the last
    /// stored one has been read (the room's messages wait meanwhile).
    next_seq: Option<u64>,
    /// Which other shards currently have subscribers (indexed by shard).
    remote: Vec<bool>,
    /// Last message or interest change: the room is freed `room_idle`
    /// after this if nobody subscribes.
    last_active: Instant,
    /// The highest seq that may be given without reserving more (in the
    /// store: a seq is never given twice, even across a crash). `u64::MAX`
    /// without a store.
    reserved: u64,
    /// More seqs are being reserved.
    extending: bool,
    /// Its members (with a store; loaded with the room).
    members: Option<Box<Members>>,
}

/// Limits the fan-out enforces per connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct FanoutLimits {
    /// `max_outbound_bytes`: queued output (and live messages held during
    /// a replay) beyond which a subscriber is a slow consumer.
    pub max_outbound_bytes: usize,
    /// `max_pending_acks`: unacknowledged messages per subscription.
    pub max_pending_acks: usize,
}

/// A message's place in its room, or why it has none yet.
pub(super) enum Seq {
    /// Sequenced: its seq, the other shards with subscribers, and, when
    /// half the room's reserved seqs are used, how far to reserve now.
    Given(u64, Vec<usize>, Option<u64>),
    /// The room is not loaded yet (where its seqs continue is unknown).
    Unknown,
    /// The room's reserved seqs are used up: wait for more, reserving
    /// them up to this seq first if that is not under way yet.
    Exhausted(Option<u64>),
}

/// How a replay page went for its subscriber.
pub(super) enum PageDone {
    /// More stored messages follow after this seq.
    More(u64),
    /// The replay is over (or its subscriber is gone).
    Finished,
}

/// All room state of one shard.
pub(super) struct Rooms {
    id: usize,
    nshards: usize,
    /// The first seq of a new owned room: 1 without a store; unknown (to be
    /// read from the store) with one.
    fresh_seq: Option<u64>,
    limits: FanoutLimits,
    local: RoomIndex<Subscriber>,
    owned: HashMap<Box<str>, OwnedRoom>,
    /// Every owned room once, oldest check first: when to look at it next.
    checks: VecDeque<(Instant, Box<str>)>,
    /// How long an owned room may sit idle before it is freed.
    room_idle: Duration,
    /// Seqs reserved at a time (`seq_reserve`).
    block: u64,
}

impl Rooms {
    pub fn new(
        id: usize,
        nshards: usize,
        persistent: bool,
        limits: FanoutLimits,
        room_idle: Duration,
        block: u64,
    ) -> Rooms {
        Rooms {
            block: block.max(2),
            id,
            nshards,
            fresh_seq: (!persistent).then_some(1),
            limits,
            local: RoomIndex::default(),
            owned: HashMap::new(),
            checks: VecDeque::new(),
            room_idle,
        }
    }

    // ---- local subscribers ----------------------------------------------

    /// Add a local subscriber of `room`.
    pub fn add_local(&mut self, room: &str, sub: Subscriber) -> Added {
        self.local.insert(room, sub)
    }

    /// Remove local subscriber `key` of `room`: whether it was the room's
    /// last one here, and whether the owner had let it in (`joined`).
    pub fn remove_local(&mut self, room: &str, key: usize) -> (bool, bool) {
        let Some((sub, last)) = self.local.remove(room, key) else {
            return (false, false);
        };
        if last && let Some(owned) = self.owned.get_mut(room) {
            // Idle from now on, not from its last message.
            owned.last_active = Instant::now();
        }
        (last, sub.joined)
    }

    /// The subscriptions to `room` here that were let in and whose
    /// connection's user is `user`: (connection, subscription key and number).
    pub fn joined_of(&self, room: &str, user: &str) -> Vec<(ConnRef, usize, u32)> {
        self.local
            .keyed(room)
            .filter(|(_, s)| s.joined && s.conn.borrow().session().user() == user)
            .map(|(key, s)| (s.conn.clone(), key, s.sub_n))
            .collect()
    }

    /// The owner let subscription `key` of `room` in (`sub_n` of `conn`):
    /// write the messages held meanwhile unless a replay still runs.
    /// Whether it was still there.
    pub fn admitted(
        &mut self,
        conn: &ConnRef,
        c: &mut Conn,
        room: &str,
        key: usize,
        sub_n: u32,
    ) -> bool {
        let limits = self.limits;
        let Some(sub) = self.local.get_mut(room, key) else {
            return false;
        };
        if sub.sub_n != sub_n || !std::rc::Rc::ptr_eq(&sub.conn, conn) {
            return false;
        }
        sub.joined = true;
        if let Some(hold) = &mut sub.hold {
            hold.admitting = false;
        }
        release(sub, c, limits);
        true
    }

    // ---- members (owned rooms, with a store) -----------------------------

    /// Whether `room`'s members are loaded (else: load them first).
    pub fn members_loaded(&mut self, room: &str) -> bool {
        self.owned(room).members.as_ref().is_some_and(|m| m.loaded)
    }

    /// Let a subscription of `user` in: `invite` checks the membership
    /// (the members must be loaded), `open` makes a newcomer a member
    /// (`Ok(true)`: store it; without the members loaded every user is
    /// stored, the store skips those it has). The user then counts as
    /// present.
    pub fn admit(
        &mut self,
        room: &str,
        user: &str,
        invite: bool,
        max: usize,
    ) -> Result<bool, Deny> {
        let m = self.members_of(room);
        let mut new = !m.loaded;
        if m.loaded && !m.set.contains(user) {
            if invite {
                return Err(Deny::NotMember);
            }
            if m.set.len() >= max {
                return Err(Deny::Full);
            }
            m.set.insert(user.into());
            new = true;
        }
        match m.online.get_mut(user) {
            Some(n) => *n += 1,
            None => {
                m.online.insert(user.into(), 1);
                m.away = None;
            }
        }
        Ok(new)
    }

    /// A subscription of `user` let in before has ended: whether that was
    /// their last here (they are away now).
    pub fn leave(&mut self, room: &str, user: &str) -> bool {
        let Some(m) = self.owned.get_mut(room).and_then(|o| o.members.as_mut()) else {
            return false;
        };
        if let Some(n) = m.online.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                m.online.remove(user);
                m.away = None;
                return true;
            }
        }
        false
    }

    /// Whether `user` has a live subscription to `room` (owned here).
    pub fn is_online(&self, room: &str, user: &str) -> bool {
        self.owned
            .get(room)
            .and_then(|o| o.members.as_ref())
            .is_some_and(|m| m.online.contains_key(user))
    }

    /// Every owned room with someone online, and who (cluster presence
    /// refresh).
    pub fn present(&self) -> Vec<(Box<str>, Vec<Box<str>>)> {
        self.owned
            .iter()
            .filter_map(|(name, o)| {
                let m = o.members.as_ref()?;
                (!m.online.is_empty()).then(|| (name.clone(), m.online.keys().cloned().collect()))
            })
            .collect()
    }

    /// An API call adds (`add`) or removes `user`: whether that changed
    /// anything, `None` when the room is full. The members must be loaded.
    pub fn change_member(&mut self, room: &str, user: &str, add: bool, max: usize) -> Option<bool> {
        let m = self.members_of(room);
        let changed = if add {
            if !m.set.contains(user) && m.set.len() >= max {
                return None;
            }
            m.set.insert(user.into())
        } else {
            m.set.remove(user)
        };
        if changed {
            m.away = None;
        }
        Some(changed)
    }

    /// Whether `user` is a member of `room`; `None` while not loaded.
    pub fn is_member(&self, room: &str, user: &str) -> Option<bool> {
        let m = self.owned.get(room)?.members.as_ref()?;
        m.loaded.then(|| m.set.contains(user))
    }

    /// Who has a live subscription to `room` (the owner's view), for
    /// `user` or the admin (`None`): `None` when the members are loaded
    /// (always so under `--join invite`) and `user` is neither one of them
    /// nor online there. Under `--join open` anyone may become a member by
    /// subscribing, so anyone may ask. A room not loaded here has nobody
    /// online. At most `max + 1` users, the first in name order (the
    /// answer shows `max` and says there are more), so a large room costs
    /// a walk and a list of references, not a copy of every name.
    pub fn online(&self, room: &str, user: Option<&str>, max: usize) -> Option<Vec<Box<str>>> {
        let Some(m) = self.owned.get(room).and_then(|o| o.members.as_ref()) else {
            return Some(Vec::new());
        };
        if let Some(u) = user
            && m.loaded
            && !m.online.contains_key(u)
            && !m.set.contains(u)
        {
            return None;
        }
        let mut users: Vec<&Box<str>> = m.online.keys().collect();
        if users.len() > max + 1 {
            users.select_nth_unstable(max);
            users.truncate(max + 1);
        }
        Some(users.into_iter().cloned().collect())
    }

    /// The members of `room` with no live subscription (`None`: nobody,
    /// or not loaded). Rebuilt only after presence or membership changed.
    pub fn away(&mut self, room: &str) -> Option<Arc<[Box<str>]>> {
        let m = self.owned.get_mut(room)?.members.as_mut()?;
        if !m.loaded {
            return None;
        }
        let away = m.away.get_or_insert_with(|| {
            m.set
                .iter()
                .filter(|u| !m.online.contains_key(*u))
                .cloned()
                .collect()
        });
        (!away.is_empty()).then(|| away.clone())
    }

    fn members_of(&mut self, room: &str) -> &mut Members {
        self.owned(room).members.get_or_insert_with(Box::default)
    }

    // ---- owned rooms -------------------------------------------------------

    fn owned(&mut self, room: &str) -> &mut OwnedRoom {
        if !self.owned.contains_key(room) {
            let now = Instant::now();
            let fresh = OwnedRoom {
                next_seq: self.fresh_seq,
                remote: vec![false; self.nshards],
                last_active: now,
                reserved: if self.fresh_seq.is_some() {
                    u64::MAX
                } else {
                    0
                },
                extending: false,
                members: None,
            };
            self.checks.push_back((now + self.room_idle, room.into()));
            return self.owned.entry(room.into()).or_insert(fresh);
        }
        self.owned.get_mut(room).expect("checked above")
    }

    /// Free owned rooms idle for `room_idle`: no subscriber here or on any
    /// other shard, no message, and no room load pending (`loading`). At
    /// most `budget` rooms are looked at per call (the sweeper calls it
    /// every tick), so a million rooms never stall the shard.
    /// Returns the freed rooms that had given seqs, with the last one
    /// given, so their unused reservations can be given back.
    pub fn evict_idle(
        &mut self,
        now: Instant,
        budget: usize,
        loading: impl Fn(&str) -> bool,
    ) -> Vec<(Box<str>, u64)> {
        let before = self.owned.len();
        let mut freed = Vec::new();
        for _ in 0..budget {
            let Some((due, _)) = self.checks.front() else {
                break;
            };
            if *due > now {
                break;
            }
            let (_, name) = self.checks.pop_front().expect("checked above");
            let Some(room) = self.owned.get(&name) else {
                continue;
            };
            let idle_until = room.last_active + self.room_idle;
            let subscribed = room.remote.iter().any(|&r| r) || self.local.has(&name);
            // Without a store a room that gave out seqs cannot be rebuilt.
            let unrecoverable = self.fresh_seq.is_some() && room.next_seq != self.fresh_seq;
            if idle_until <= now && !subscribed && !unrecoverable && !loading(&name) {
                if let Some(room) = self.owned.remove(&name)
                    && let Some(next) = room.next_seq
                    && self.fresh_seq.is_none()
                {
                    freed.push((name, next - 1));
                }
            } else if !unrecoverable {
                self.checks
                    .push_back((idle_until.max(now + self.room_idle), name));
            }
        }
        // A table never shrinks by itself: after a burst of rooms it would
        // keep their slots. Give them back once it is mostly empty (a
        // rehash of what is left; rare).
        if self.owned.len() < before {
            tracing::debug!(
                shard = self.id,
                freed = before - self.owned.len(),
                left = self.owned.len(),
                "idle rooms freed"
            );
        }
        if self.owned.len() < before && self.owned.capacity() > 4 * self.owned.len() + SHRINK_SLACK
        {
            self.owned.shrink_to_fit();
            self.checks.shrink_to_fit();
        }
        freed
    }

    /// Every loaded room with its last given seq, except those reserving
    /// more (for the clean stop's release of unused reservations).
    pub fn given(&self) -> Vec<(Box<str>, u64)> {
        if self.fresh_seq.is_some() {
            return Vec::new();
        }
        self.owned
            .iter()
            .filter(|(_, r)| !r.extending)
            .filter_map(|(name, r)| Some((name.clone(), r.next_seq? - 1)))
            .collect()
    }

    /// Shard `from` gained or lost subscribers of `room` (owned here).
    pub fn interest(&mut self, room: &str, from: usize, change: Interest) {
        let owned = self.owned(room);
        owned.last_active = Instant::now();
        match change {
            Interest::Add => owned.remote[from] = true,
            Interest::Remove => owned.remote[from] = false,
            Interest::Sync => {}
        }
    }

    /// Give the next message of `room` (owned here) its seq.
    pub fn sequence(&mut self, room: &str) -> Seq {
        let me = self.id;
        let block = self.block;
        let owned = self.owned(room);
        let Some(seq) = owned.next_seq else {
            return Seq::Unknown;
        };
        if seq > owned.reserved {
            let reserve = (!owned.extending).then(|| owned.reserved.saturating_add(block));
            owned.extending = true;
            return Seq::Exhausted(reserve);
        }
        owned.next_seq = Some(seq + 1);
        owned.last_active = Instant::now();
        let reserve = if !owned.extending && owned.reserved - seq < block / 2 {
            owned.extending = true;
            Some(owned.reserved.saturating_add(block))
        } else {
            None
        };
        let targets = (0..owned.remote.len())
            .filter(|&p| p != me && owned.remote[p])
            .collect();
        Seq::Given(seq, targets, reserve)
    }

    /// Whether `room` (owned here) has subscribers on any shard.
    pub fn has_subscribers(&self, room: &str) -> bool {
        self.local.has(room)
            || self
                .owned
                .get(room)
                .is_some_and(|o| o.remote.iter().any(|&r| r))
    }

    /// The other shards with subscribers of `room` (owned here).
    pub fn targets(&mut self, room: &str) -> Vec<usize> {
        let me = self.id;
        let owned = self.owned(room);
        owned.last_active = Instant::now();
        (0..owned.remote.len())
            .filter(|&p| p != me && owned.remote[p])
            .collect()
    }

    /// Cluster mode: Redis gave `seq` in `room`; the next publish passes
    /// at least this as its floor.
    pub fn observed(&mut self, room: &str, seq: u64) {
        let owned = self.owned(room);
        if let Some(next) = owned.next_seq {
            owned.next_seq = Some(next.max(seq + 1));
        }
    }

    /// The last seq given in `room` so far (`None`: not known yet).
    pub fn last_given(&mut self, room: &str) -> Option<u64> {
        self.owned(room).next_seq.map(|n| n - 1)
    }

    /// Where `room`'s seqs stand was read (and reserved) in the store,
    /// with its members on a full load.
    pub fn loaded(
        &mut self,
        room: &str,
        seqs: Option<RoomSeqs>,
        members: Option<Vec<Box<str>>>,
        invite: bool,
    ) {
        let owned = self.owned(room);
        if let Some(list) = members {
            let m = owned.members.get_or_insert_with(Box::default);
            if !m.loaded {
                m.loaded = true;
                m.set = list.into_iter().collect();
                // With `--join open`, users let in while this was read are
                // members too (their rows may be queued behind the read).
                if !invite {
                    let present: Vec<Box<str>> = m.online.keys().cloned().collect();
                    m.set.extend(present);
                }
                m.away = None;
            }
        }
        let Some(seqs) = seqs else { return };
        if let Some(next) = seqs.next {
            // Never back: in cluster mode seqs seen meanwhile count too.
            owned.next_seq = Some(owned.next_seq.map_or(next, |n| n.max(next)));
        }
        owned.reserved = owned.reserved.max(seqs.reserved);
        owned.extending = false;
    }

    // ---- fan-out ----------------------------------------------------------

    /// Write a message to every local subscriber of its room (or hold it
    /// for those whose replay is still being sent).
    pub fn deliver_local(&mut self, msg: &Sequenced, conns: &Conns) {
        let limits = self.limits;
        let mut encoded: [Option<Encoded>; 3] = [None, None, None];
        let now = Instant::now();
        let mut written = 0u64;
        for sub in self.local.subscribers_mut(&msg.draft.room) {
            let mut c = sub.conn.borrow_mut();
            if !c.takes_output() {
                continue;
            }
            if let Some(hold) = &mut sub.hold {
                hold.bytes += msg.draft.body.len()
                    + msg
                        .draft
                        .headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>();
                hold.held.push(msg.clone());
                if hold.bytes > limits.max_outbound_bytes {
                    c.out_mut().error(
                        "slow consumer",
                        None,
                        &[],
                        &format!(
                            "more than {} bytes of live messages arrived while the replay was sent; subscribe with a later x-since-seq or use the history API",
                            limits.max_outbound_bytes
                        ),
                        CloseCode::Policy,
                    );
                    crate::metrics::local(|m| m.slow_consumers.inc());
                    conns.queue_flush(&sub.conn, &mut c);
                }
                continue;
            }
            let enc = encoded[sub.version as usize].get_or_insert_with(|| msg.encode(sub.version));
            written += u64::from(deliver_to(sub, &mut c, enc, msg.seq, now, limits));
            conns.queue_flush(&sub.conn, &mut c);
        }
        if written > 0 {
            crate::metrics::local(|m| {
                m.delivered.add(written);
                m.frames_out.add(written);
                if let Some(at) = msg.sequenced_at {
                    m.delivered_at(at);
                }
            });
        }
    }

    /// Subscriber side of a replay: write a page to subscription `sub_n`
    /// (key `key` in `room`) of `conn`; at the end, release the live
    /// messages held meanwhile (those past `upto`).
    #[allow(clippy::too_many_arguments)]
    pub fn replay_page(
        &mut self,
        conn: &ConnRef,
        c: &mut Conn,
        room: &str,
        key: usize,
        sub_n: u32,
        upto: u64,
        page: &Page,
    ) -> PageDone {
        let limits = self.limits;
        let Some(sub) = self.replay_sub(conn, room, key, sub_n) else {
            return PageDone::Finished;
        };
        if !sub.hold.as_ref().is_some_and(|h| h.replaying) {
            return PageDone::Finished;
        }
        let now = Instant::now();
        let mut written = 0u64;
        for m in &page.messages {
            let enc = m.encode(sub.version);
            written += u64::from(deliver_to(sub, c, &enc, m.seq, now, limits));
        }
        crate::metrics::local(|m| {
            m.replayed.add(written);
            m.frames_out.add(written);
        });
        if page.more {
            return PageDone::More(page.messages.last().map(|m| m.seq).unwrap_or(upto));
        }
        let hold = sub.hold.as_mut().expect("checked above");
        hold.replaying = false;
        hold.upto = hold.upto.max(upto);
        release(sub, c, limits);
        PageDone::Finished
    }

    /// Subscription `sub_n` of `conn` at `key` in `room`, if it is still
    /// that one (a key may be reused once it ends).
    fn replay_sub(
        &mut self,
        conn: &ConnRef,
        room: &str,
        key: usize,
        sub_n: u32,
    ) -> Option<&mut Subscriber> {
        self.local
            .get_mut(room, key)
            .filter(|sub| sub.sub_n == sub_n && std::rc::Rc::ptr_eq(&sub.conn, conn))
    }

    /// The owner's mark for subscription `sub_n` of `conn` came over the
    /// mesh: every live message up to `upto` has reached this shard.
    pub fn replay_marked(
        &mut self,
        conn: &ConnRef,
        c: &mut Conn,
        room: &str,
        key: usize,
        sub_n: u32,
        upto: u64,
    ) {
        let limits = self.limits;
        let Some(sub) = self.replay_sub(conn, room, key, sub_n) else {
            return;
        };
        let Some(hold) = sub.hold.as_mut() else {
            return;
        };
        hold.syncing = false;
        hold.upto = hold.upto.max(upto);
        release(sub, c, limits);
    }

    /// Rooms owned here.
    pub fn owned_count(&self) -> usize {
        self.owned.len()
    }

    /// Subscriptions of this shard's connections.
    pub fn local_count(&self) -> usize {
        self.local.len()
    }
}

/// Once a subscription is let in and its replay is sent, write the live
/// messages held meanwhile (those the replay did not cover).
fn release(sub: &mut Subscriber, c: &mut Conn, limits: FanoutLimits) {
    if sub
        .hold
        .as_ref()
        .is_none_or(|h| h.admitting || h.replaying || h.syncing)
    {
        return;
    }
    let hold = sub.hold.take().expect("checked above");
    let now = Instant::now();
    let mut written = 0u64;
    for m in hold.held.iter().filter(|m| m.seq > hold.upto) {
        let enc = m.encode(sub.version);
        written += u64::from(deliver_to(sub, c, &enc, m.seq, now, limits));
    }
    crate::metrics::local(|m| {
        m.delivered.add(written);
        m.frames_out.add(written);
    });
}

/// Append one message to one subscriber's output: acknowledgement
/// bookkeeping, then the frame; over a limit, ERROR and close. Whether
/// the MESSAGE was written.
fn deliver_to(
    sub: &Subscriber,
    c: &mut Conn,
    enc: &Encoded,
    seq: u64,
    now: Instant,
    limits: FanoutLimits,
) -> bool {
    let mut ack = None;
    if sub.mode != AckMode::Auto {
        let (session, out) = c.session_out();
        match session.pend(sub.sub_n, seq, limits.max_pending_acks, out) {
            Pend::Deliver(a) => ack = a,
            Pend::Gone => return false,
            Pend::Refused => {}
        }
    }
    let out = c.out_mut();
    if out.is_closing() {
        return false;
    }
    out.message(&sub.prefix, ack, enc, now);
    if out.pending_len() > limits.max_outbound_bytes {
        crate::metrics::local(|m| m.slow_consumers.inc());
        out.error(
            "slow consumer",
            None,
            &[],
            &format!(
                "more than {} bytes queued for this connection; it reads too slowly",
                limits.max_outbound_bytes
            ),
            CloseCode::Policy,
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FanoutLimits = FanoutLimits {
        max_outbound_bytes: 1 << 20,
        max_pending_acks: 10,
    };
    const IDLE: Duration = Duration::from_secs(60);

    #[test]
    fn an_owned_room_counts_from_one_without_a_store() {
        let mut r = Rooms::new(0, 3, false, LIMITS, IDLE, 100);
        assert_eq!(r.last_given("a"), Some(0));
        assert!(matches!(r.sequence("a"), Seq::Given(1, ref t, None) if t.is_empty()));
        assert!(matches!(r.sequence("a"), Seq::Given(2, _, _)));
        assert!(matches!(r.sequence("b"), Seq::Given(1, _, _)));
        assert_eq!(r.last_given("a"), Some(2));
        assert_eq!(r.owned_count(), 2);
    }

    #[test]
    fn with_a_store_a_room_waits_for_its_last_stored_seq() {
        let mut r = Rooms::new(0, 2, true, LIMITS, IDLE, 100);
        assert!(matches!(r.sequence("a"), Seq::Unknown));
        assert_eq!(r.last_given("a"), None);
        r.loaded(
            "a",
            Some(RoomSeqs {
                next: Some(42),
                reserved: 141,
            }),
            None,
            false,
        );
        assert_eq!(r.last_given("a"), Some(41));
        assert!(matches!(r.sequence("a"), Seq::Given(42, _, None)));
    }

    #[test]
    fn the_online_list_holds_the_first_names_and_one_more() {
        let mut r = Rooms::new(0, 1, true, LIMITS, IDLE, 100);
        for u in ["e", "c", "a", "d", "b"] {
            r.admit("room", u, false, 100).unwrap();
        }
        let mut few = r.online("room", None, 2).unwrap();
        few.sort_unstable();
        assert_eq!(few, ["a".into(), "b".into(), "c".into()] as [Box<str>; 3]);
        assert_eq!(
            r.online("room", Some("z"), 10).unwrap().len(),
            5,
            "open: anyone asks"
        );
        assert_eq!(r.online("nowhere", None, 10).unwrap().len(), 0);
    }

    #[test]
    fn messages_go_to_the_shards_that_subscribe() {
        let mut r = Rooms::new(1, 4, false, LIMITS, IDLE, 100);
        r.interest("a", 0, Interest::Add);
        r.interest("a", 3, Interest::Add);
        r.interest("a", 3, Interest::Sync);
        assert!(matches!(r.sequence("a"), Seq::Given(1, ref t, _) if t == &[0, 3]));
        r.interest("a", 0, Interest::Remove);
        assert!(matches!(r.sequence("a"), Seq::Given(2, ref t, _) if t == &[3]));
    }

    #[test]
    fn idle_rooms_are_freed_and_subscribed_or_loading_ones_kept() {
        let mut r = Rooms::new(0, 2, true, LIMITS, IDLE, 100);
        let t0 = Instant::now();
        for room in ["quiet", "talked", "watched", "loading"] {
            r.interest(room, 1, Interest::Sync);
        }
        r.interest("watched", 1, Interest::Add);
        r.loaded(
            "talked",
            Some(RoomSeqs {
                next: Some(42),
                reserved: 141,
            }),
            None,
            false,
        );
        assert!(matches!(r.sequence("talked"), Seq::Given(42, _, _)));
        // Not idle long enough yet: nothing goes.
        r.evict_idle(t0 + IDLE / 2, 100, |_| false);
        assert_eq!(r.owned_count(), 4);
        let later = t0 + IDLE + Duration::from_secs(1);
        r.evict_idle(later, 100, |room| room == "loading");
        assert!(!r.owned.contains_key("quiet"));
        assert!(
            !r.owned.contains_key("talked"),
            "a past message does not keep a room"
        );
        assert!(
            r.owned.contains_key("watched"),
            "a subscriber elsewhere keeps it"
        );
        assert!(r.owned.contains_key("loading"), "a pending load keeps it");
        // A freed room comes back unknown: its seq is read from the store.
        assert!(matches!(r.sequence("talked"), Seq::Unknown));
        r.interest("watched", 1, Interest::Remove);
        r.evict_idle(later + IDLE * 3, 100, |_| false);
        assert_eq!(r.owned_count(), 0, "everything idle is freed in the end");
        assert!(r.checks.is_empty(), "and no check is left behind");
    }

    #[test]
    fn without_a_store_a_room_that_gave_out_seqs_is_kept() {
        let mut r = Rooms::new(0, 2, false, LIMITS, IDLE, 100);
        r.interest("only-interest", 1, Interest::Sync);
        assert!(matches!(r.sequence("talked"), Seq::Given(1, _, None)));
        let later = Instant::now() + IDLE + IDLE;
        r.evict_idle(later, 100, |_| false);
        assert_eq!(
            r.owned_count(),
            1,
            "seq 1 was given: freeing would give it again"
        );
        assert_eq!(r.last_given("talked"), Some(1));
        assert!(r.checks.is_empty(), "a kept room is not looked at again");
    }

    #[test]
    fn eviction_work_per_call_is_bounded() {
        let mut r = Rooms::new(0, 2, true, LIMITS, IDLE, 100);
        for i in 0..1000 {
            r.interest(&format!("r{i}"), 1, Interest::Sync);
        }
        let later = Instant::now() + IDLE + IDLE;
        r.evict_idle(later, 300, |_| false);
        assert_eq!(r.owned_count(), 700);
        r.evict_idle(later, 1000, |_| false);
        assert_eq!(r.owned_count(), 0);
    }

    #[test]
    fn seqs_come_from_a_reservation_that_is_extended_at_half() {
        let mut r = Rooms::new(0, 2, true, LIMITS, IDLE, 10);
        r.loaded(
            "a",
            Some(RoomSeqs {
                next: Some(101),
                reserved: 110,
            }),
            None,
            false,
        );
        for seq in 101..=105 {
            assert!(matches!(r.sequence("a"), Seq::Given(s, _, None) if s == seq));
        }
        // Fewer than half left: reserve the next block, once.
        assert!(matches!(r.sequence("a"), Seq::Given(106, _, Some(120))));
        for seq in 107..=110 {
            assert!(matches!(r.sequence("a"), Seq::Given(s, _, None) if s == seq));
        }
        // Used up before the store answered: wait, without asking twice.
        assert!(matches!(r.sequence("a"), Seq::Exhausted(None)));
        assert_eq!(r.given(), vec![], "a room reserving more is not given back");
        r.loaded(
            "a",
            Some(RoomSeqs {
                next: None,
                reserved: 120,
            }),
            None,
            false,
        );
        assert!(matches!(r.sequence("a"), Seq::Given(111, _, None)));
        assert_eq!(r.given(), vec![("a".into(), 111)]);
        // Freed: its unused reservation is given back.
        let freed = r.evict_idle(Instant::now() + IDLE * 2, 10, |_| false);
        assert_eq!(freed, vec![("a".into(), 111)]);
    }
}
