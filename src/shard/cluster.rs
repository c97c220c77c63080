//! Cluster mode on a shard (`--cluster`): for the rooms this shard owns,
//! publishing through Redis and delivering what the room's channel brings
//! in seq order, with gap repair, epochs, resume across nodes and
//! presence. The Redis side is `crate::cluster` (threads); this part
//! holds the per-room state and the queue towards those threads.
//!
//! A room is *watched* (its channel subscribed on this node) while it has
//! subscribers on any shard of this node. Until Redis has confirmed the
//! subscription and said where the room's seq stands (`Head`), the room
//! is not *live*: subscriptions to it (`Work::Join`, `Work::Replay`) wait,
//! so a SUBSCRIBE's RECEIPT still means "every later message reaches
//! you". Once live, each message must be `last + 1`; a later one waits in
//! `pending` while the gap is read from the room's stream (`XRANGE`);
//! what the stream no longer has is counted lost and skipped.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use tracing::warn;

use super::durable::Start;
use super::msg::{Owed, Refusal, ReplayReq, Tag};
use super::{Origin, Shard, ShardMsg, Work, WriterItem, receipt_of};
use crate::cluster::{Cmd, Event, Link, PresenceChange, Remote, wire};
use crate::message::{Confirm, Draft, ReplayFrom, Sequenced};

/// Live messages of one room waiting for a gap to be repaired, at most
/// (count, and bytes of bodies).
const MAX_PENDING: usize = 65_536;
const MAX_PENDING_BYTES: usize = 16 << 20;

/// What travels with a command through the Redis threads and back.
pub(crate) enum CTag {
    /// A message to sequence.
    Publish {
        draft: Draft,
        origin: Origin,
        confirm: Option<Confirm>,
        ts: u64,
    },
    /// Missing live messages, up to this seq.
    Gap(u64),
    /// The part of a replay this node did not see live (read from the
    /// stream and stored before the store is read).
    Backfill {
        req: ReplayReq,
        start: Start,
        upto: u64,
    },
}

pub(crate) type ClusterLink = Link<CTag>;
pub(crate) type ClusterEvent = Event<CTag>;

/// A watched room.
#[derive(Default)]
struct Watched {
    /// Subscribed and its head read: messages flow.
    live: bool,
    /// The last seq delivered here.
    last: u64,
    epoch: Option<Box<str>>,
    /// The seq the room stood at when this node started watching it:
    /// this node's store has (or is writing) every later message.
    live_from: u64,
    /// Messages after a gap (or before the room is live), by seq.
    pending: BTreeMap<u64, Box<Remote>>,
    /// Bytes of bodies in `pending` (bounded by `MAX_PENDING_BYTES`).
    pending_bytes: usize,
    /// A `Range` for a gap is under way.
    filling: bool,
    /// The highest seq known to exist (a message seen, a head read): a
    /// gap up to it is asked for again until it is closed.
    want_to: u64,
    /// Subscriptions (joins, replays) waiting for the room to be live.
    parked: Vec<Work>,
    /// Replays from a seq this node has not delivered yet (the client
    /// came from a node that was ahead): they start once it has.
    ahead: Vec<(u64, ReplayReq, Start)>,
}

/// Cluster state of one shard.
pub(super) struct Cluster {
    link: ClusterLink,
    watched: RefCell<HashMap<Box<str>, Watched>>,
    /// Commands that found their instance's queue full, in order; while
    /// any wait the shard reads no client (like the writer's overflow).
    overflow: RefCell<VecDeque<(Box<str>, Cmd<CTag>)>>,
    /// Publishes sent and not answered (shutdown waits for them).
    in_flight: Cell<usize>,
    next_presence: Cell<Instant>,
    /// Rooms whose head or gap read failed: asked again by the sweeper.
    retry: RefCell<Vec<Box<str>>>,
}

impl Cluster {
    pub fn new(link: ClusterLink) -> Cluster {
        Cluster {
            link,
            watched: RefCell::default(),
            overflow: RefCell::default(),
            in_flight: Cell::new(0),
            next_presence: Cell::new(Instant::now()),
            retry: RefCell::default(),
        }
    }

    fn node(&self) -> &str {
        &self.link.settings().node
    }

    /// Queue a command for `room`'s instance, in order with those before.
    fn send(&self, shard: usize, room: &str, cmd: Cmd<CTag>) {
        let mut held = self.overflow.borrow_mut();
        let cmd = if held.is_empty() {
            match self.link.try_send(shard, room, cmd) {
                Ok(()) => return,
                Err(cmd) => cmd,
            }
        } else {
            cmd
        };
        held.push_back((room.into(), cmd));
    }

    /// Move held commands on (`Event::Space`); whether none is held.
    pub fn drain(&self, shard: usize) -> bool {
        let mut held = self.overflow.borrow_mut();
        while let Some((room, cmd)) = held.pop_front() {
            if let Err(cmd) = self.link.try_send(shard, &room, cmd) {
                held.push_front((room, cmd));
                return false;
            }
        }
        true
    }

    pub fn congested(&self) -> bool {
        !self.overflow.borrow().is_empty()
    }

    /// Publishes still waiting for Redis (a clean stop waits for them).
    pub fn busy(&self) -> bool {
        self.in_flight.get() > 0
    }

    /// Rooms watched here (`/metrics`).
    pub fn watched_count(&self) -> usize {
        self.watched.borrow().len()
    }

    /// Whether a Redis instance is unreachable (`/readyz`).
    pub fn down(&self) -> bool {
        self.link
            .stats
            .down
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    }
}

impl Shard {
    fn cl(&self) -> &Cluster {
        self.cluster.as_ref().expect("cluster mode")
    }

    /// Owner side, cluster mode: hand the message to Redis, which gives its
    /// seq; it comes back as `Published` (persisted, then the RECEIPT) and,
    /// on every node watching the room, on the room's channel.
    pub(super) fn cluster_publish(
        &self,
        floor: u64,
        draft: Draft,
        origin: Origin,
        confirm: Option<Confirm>,
    ) {
        let cl = self.cl();
        let ts = crate::clock::now_ms();
        let blob = wire::encode(&draft, cl.node(), ts);
        let room = draft.room.clone();
        cl.in_flight.set(cl.in_flight.get() + 1);
        cl.send(
            self.id,
            &room,
            Cmd::Publish {
                shard: self.id,
                room: room.clone(),
                floor,
                blob,
                tag: CTag::Publish {
                    draft,
                    origin,
                    confirm,
                    ts,
                },
            },
        );
    }

    /// The last seq of watched `room` delivered here (`None`: not watched).
    pub(super) fn cluster_last(&self, room: &str) -> Option<u64> {
        let w = self.cluster.as_ref()?.watched.borrow();
        w.get(room).filter(|w| w.live).map(|w| w.last)
    }

    /// Whether `work` (a join or replay) must wait for its room to be
    /// live: then it is parked and the room watched if it was not.
    pub(super) fn cluster_park(&self, work: Work) -> Option<Work> {
        let Some(cl) = &self.cluster else {
            return Some(work);
        };
        self.cluster_check(work.room());
        let mut watched = cl.watched.borrow_mut();
        match watched.get_mut(work.room()) {
            Some(w) if !w.live => {
                w.parked.push(work);
                None
            }
            _ => Some(work),
        }
    }

    /// Watch `room` while it has subscribers here, and only then.
    pub(super) fn cluster_check(&self, room: &str) {
        let Some(cl) = &self.cluster else { return };
        let wanted = self.rooms.borrow().has_subscribers(room);
        let mut watched = cl.watched.borrow_mut();
        let on = match (wanted, watched.contains_key(room)) {
            (true, false) => {
                watched.insert(room.into(), Watched::default());
                true
            }
            (false, true) => {
                let w = watched.remove(room).expect("checked above");
                // Their subscriptions are gone; answering lets their
                // shards clean up. Queued, not run: a connection may be
                // borrowed here (an UNSUBSCRIBE being handled).
                self.work.borrow_mut().extend(w.parked);
                false
            }
            _ => return,
        };
        drop(watched);
        cl.send(
            self.id,
            room,
            Cmd::Watch {
                room: room.into(),
                on,
            },
        );
    }

    /// Ask where `room` stands in Redis (answered by `Event::Head`).
    fn ask_head(&self, room: &str) {
        self.cl().send(
            self.id,
            room,
            Cmd::Head {
                shard: self.id,
                room: room.into(),
            },
        );
    }

    /// Presence: `user` came to (`true`) or left `room` on this node.
    pub(super) fn cluster_presence(&self, room: &str, user: &str, here: bool) {
        let Some(cl) = &self.cluster else { return };
        let (add, remove) = if here {
            (vec![user.into()], Vec::new())
        } else {
            (Vec::new(), vec![user.into()])
        };
        cl.send(
            self.id,
            room,
            Cmd::Presence(vec![PresenceChange {
                room: room.into(),
                add,
                remove,
            }]),
        );
    }

    /// Sweeper: refresh this node's presence entries every third of
    /// their lifetime.
    pub(super) fn cluster_tick(&self, now: Instant) {
        let Some(cl) = &self.cluster else { return };
        // Heads and gaps whose read failed, asked again (once per sweeper
        // tick, not in a loop while Redis is down).
        let retry = std::mem::take(&mut *cl.retry.borrow_mut());
        for room in retry {
            let (live, to) = match cl.watched.borrow().get(&room) {
                Some(w) => (w.live, w.want_to),
                None => continue,
            };
            if live {
                self.request_gap(&room, to);
            } else {
                self.ask_head(&room);
            }
        }
        if now < cl.next_presence.get() {
            return;
        }
        let settings = cl.link.settings();
        let ttl = settings.presence_ttl_s;
        cl.next_presence
            .set(now + Duration::from_millis(ttl * 1000 / 3));
        // One command per instance for up to 512 users.
        let mut per: HashMap<usize, (usize, Vec<PresenceChange>)> = HashMap::new();
        for (room, users) in self.rooms.borrow().present() {
            for chunk in users.chunks(512) {
                let (n, changes) = per.entry(settings.instance_of(&room)).or_default();
                *n += chunk.len();
                changes.push(PresenceChange {
                    room: room.clone(),
                    add: chunk.to_vec(),
                    remove: Vec::new(),
                });
                if *n >= 512 {
                    *n = 0;
                    let changes = std::mem::take(changes);
                    let to = changes[0].room.clone();
                    cl.send(self.id, &to, Cmd::Presence(changes));
                }
            }
        }
        for (_, (_, changes)) in per {
            if let Some(to) = changes.first().map(|c| c.room.clone()) {
                cl.send(self.id, &to, Cmd::Presence(changes));
            }
        }
    }

    /// Owner side of a replay in cluster mode. A client that saw more
    /// than this node has delivered yet (it comes from a node that was
    /// ahead) waits until this node catches up, so nothing reaches it
    /// twice. Then what this node did not see live is read from the
    /// room's stream and stored first, and the store is read as on a
    /// single node.
    pub(super) fn cluster_replay(&self, req: ReplayReq, start: Start, upto: u64) {
        let cl = self.cl();
        if let ReplayFrom::Since(n) = req.from
            && n > upto
        {
            let mut watched = cl.watched.borrow_mut();
            if let Some(w) = watched.get_mut(&req.room) {
                let room = req.room.clone();
                w.ahead.push((n, req, start));
                drop(watched);
                // Is the cluster really that far? The head says (a client
                // claiming more than there is does not wait forever).
                self.ask_head(&room);
                return;
            }
        }
        let live_from = cl.watched.borrow().get(&req.room).map(|w| w.live_from);
        let after = match req.from {
            ReplayFrom::Since(n) => n,
            ReplayFrom::Last(k) => upto.saturating_sub(k),
        };
        match live_from {
            Some(from) if after < from && after < upto => {
                let room = req.room.clone();
                cl.send(
                    self.id,
                    &room,
                    Cmd::Range {
                        shard: self.id,
                        room: room.clone(),
                        from: after + 1,
                        to: from.min(upto),
                        tag: CTag::Backfill { req, start, upto },
                    },
                );
            }
            _ => self.replay(req, start, upto),
        }
    }

    /// Start the replays waiting for this node to reach their seq, once it
    /// has (or once Redis says the room is not that far: `head`).
    fn release_ahead(&self, room: &str, head: Option<u64>) {
        let cl = self.cl();
        let mut watched = cl.watched.borrow_mut();
        let Some(w) = watched.get_mut(room) else {
            return;
        };
        if w.ahead.is_empty() {
            return;
        }
        let last = w.last;
        let (go, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut w.ahead)
            .into_iter()
            .partition(|(n, ..)| *n <= last || head.is_some_and(|h| *n > h));
        w.ahead = wait;
        drop(watched);
        for (_, req, start) in go {
            // Replayed up to where this node is; for a client ahead of the
            // cluster, that is all there is.
            self.replay(req, start, last);
        }
    }

    /// An event from the Redis threads about a room owned here.
    pub(super) fn on_cluster(&self, ev: ClusterEvent) {
        match ev {
            Event::Published { room, tag, result } => self.published(&room, tag, result),
            Event::Message(m) => {
                self.cl().link.taken(self.id);
                self.channel_message(m)
            }
            Event::Subscribed { room } => {
                let cl = self.cl();
                if cl.watched.borrow().contains_key(&room) {
                    self.ask_head(&room);
                }
            }
            Event::Head { room, result } => match result {
                Ok((seq, epoch)) => self.head(&room, seq, epoch),
                Err(e) => {
                    warn!(room = &*room, "cannot read the room's head in Redis: {e}");
                    self.cl().retry.borrow_mut().push(room);
                }
            },
            Event::Range { room, tag, result } => self.range(&room, tag, result),
            Event::Space => {
                if self.cl().drain(self.id) {
                    self.maybe_resume();
                }
            }
        }
    }

    fn published(&self, room: &str, tag: CTag, result: Result<(u64, Box<str>), String>) {
        let CTag::Publish {
            draft,
            origin,
            confirm,
            ts,
        } = tag
        else {
            return;
        };
        let cl = self.cl();
        cl.in_flight.set(cl.in_flight.get().saturating_sub(1));
        let (shard, conn) = origin.split(self.id);
        let (seq, _epoch) = match result {
            Ok(r) => r,
            Err(e) => {
                warn!(room, "Redis refused a publish: {e}");
                let receipt = receipt_of(confirm);
                self.refuse_at(shard, conn, receipt, Refusal::ClusterRefused(e.into()));
                return;
            }
        };
        crate::metrics::local(|m| m.published.inc());
        let mut rooms = self.rooms.borrow_mut();
        rooms.observed(room, seq);
        let push = self.push_job(&mut rooms, &draft, seq);
        drop(rooms);
        let msg = Sequenced {
            draft,
            seq,
            timestamp_ms: ts,
            sequenced_at: None,
        };
        let owed = confirm.map(|what| Owed { shard, conn, what });
        self.durable
            .persist(WriterItem::msg(msg, Tag { owed, push }));
        self.check_quiesced();
    }

    fn head(&self, room: &str, seq: u64, epoch: Option<Box<str>>) {
        let cl = self.cl();
        let mut watched = cl.watched.borrow_mut();
        let Some(w) = watched.get_mut(room) else {
            return;
        };
        if !w.live {
            w.live = true;
            w.last = seq;
            w.live_from = seq;
            w.want_to = w.want_to.max(seq);
            w.epoch = epoch;
            let parked = std::mem::take(&mut w.parked);
            drop(watched);
            self.rooms.borrow_mut().observed(room, seq);
            self.drain_pending(room);
            for work in parked {
                self.run_one(work);
            }
            return;
        }
        // Live already: a resubscription after a reconnect, or a replay
        // from ahead asking. Anything published meanwhile is read from the
        // stream (a new epoch shows on the messages themselves).
        w.want_to = w.want_to.max(seq);
        drop(watched);
        self.request_gap(room, seq);
        self.release_ahead(room, Some(seq));
    }

    /// Ask for `last + 1 ..= to` from the stream unless a request is out
    /// (then `want_to` remembers it, and it is asked when that one ends).
    fn request_gap(&self, room: &str, to: u64) {
        let cl = self.cl();
        let mut watched = cl.watched.borrow_mut();
        let Some(w) = watched.get_mut(room) else {
            return;
        };
        w.want_to = w.want_to.max(to);
        if w.filling || w.want_to <= w.last {
            return;
        }
        w.filling = true;
        let (from, to) = (w.last + 1, w.want_to);
        drop(watched);
        cl.send(
            self.id,
            room,
            Cmd::Range {
                shard: self.id,
                room: room.into(),
                from,
                to,
                tag: CTag::Gap(to),
            },
        );
    }

    fn channel_message(&self, m: Box<Remote>) {
        let room = m.msg.draft.room.clone();
        let cl = self.cl();
        let mut watched = cl.watched.borrow_mut();
        let Some(w) = watched.get_mut(&room) else {
            return; // not watched (any more)
        };
        if m.msg.seq <= w.last && w.live && Some(&m.epoch) == w.epoch.as_ref() {
            return; // had it (a gap repair was faster)
        }
        w.pending_bytes += m.msg.draft.body.len();
        w.pending.insert(m.msg.seq, m);
        if w.pending.len() > MAX_PENDING || w.pending_bytes > MAX_PENDING_BYTES {
            if w.live {
                // A gap Redis does not close for this long: give it up to
                // the oldest waiting message (the nodes that saw it have it
                // in their stores) and go on from there.
                let first = *w.pending.keys().next().expect("just inserted");
                if first > w.last + 1 {
                    let lost = first - w.last - 1;
                    warn!(
                        room = &*room,
                        from = w.last + 1,
                        lost,
                        "too much waits for a gap; it is skipped"
                    );
                    crate::metrics::local(|m| m.cluster_lost.add(lost));
                    w.last = first - 1;
                }
            } else if let Some((_, oldest)) = w.pending.pop_first() {
                // Not live yet: the head will be past it anyway.
                w.pending_bytes -= oldest.msg.draft.body.len();
            }
        }
        let live = w.live;
        drop(watched);
        if live {
            self.drain_pending(&room);
        }
    }

    /// Deliver the pending messages that follow `last`; at a gap, ask for
    /// it from the stream.
    fn drain_pending(&self, room: &str) {
        loop {
            let cl = self.cl();
            let mut watched = cl.watched.borrow_mut();
            let Some(w) = watched.get_mut(room) else {
                return;
            };
            let Some(first) = w.pending.first_entry() else {
                break;
            };
            let m = first.get();
            let seq = m.msg.seq;
            if w.epoch.is_some() && Some(&m.epoch) != w.epoch.as_ref() {
                // Redis lost the room (restart without persistence, an
                // eviction): a new epoch. Seqs continue after the floor the
                // publisher passed; what the old epoch still had in flight
                // is not in the new stream.
                warn!(
                    room,
                    seq,
                    "the room's epoch changed in Redis (its state there was lost); continuing at the new epoch"
                );
                crate::metrics::local(|m| m.cluster_epoch_changes.inc());
                w.epoch = Some(m.epoch.clone());
                if seq <= w.last {
                    w.last = seq - 1;
                }
            }
            if seq <= w.last {
                let m = first.remove();
                w.pending_bytes -= m.msg.draft.body.len();
                continue;
            }
            if seq > w.last + 1 {
                drop(watched);
                self.request_gap(room, seq - 1);
                break;
            }
            let m = first.remove();
            w.pending_bytes -= m.msg.draft.body.len();
            w.last = seq;
            w.want_to = w.want_to.max(seq);
            if w.epoch.is_none() {
                w.epoch = Some(m.epoch.clone());
            }
            drop(watched);
            self.deliver_remote(m.msg);
        }
        self.release_ahead(room, None);
    }

    /// Deliver a message of a watched room to this node's subscribers and
    /// store it (stored already when published here: the second insert is
    /// skipped).
    fn deliver_remote(&self, msg: Sequenced) {
        crate::metrics::local(|m| m.cluster_received.inc());
        let mut rooms = self.rooms.borrow_mut();
        rooms.observed(&msg.draft.room, msg.seq);
        for p in rooms.targets(&msg.draft.room) {
            self.peers.send(p, ShardMsg::Deliver(msg.clone()));
        }
        rooms.deliver_local(&msg, &self.conns);
        drop(rooms);
        self.durable.persist(WriterItem::msg(msg, Tag::default()));
    }

    fn range(&self, room: &str, tag: CTag, result: Result<Vec<Remote>, String>) {
        let msgs = match result {
            Ok(msgs) => msgs,
            Err(e) => {
                warn!(room, "cannot read the room's stream: {e}");
                match tag {
                    // What the store has is still sent.
                    CTag::Backfill { req, start, upto } => self.replay(req, start, upto),
                    CTag::Gap(_) => {
                        if let Some(w) = self.cl().watched.borrow_mut().get_mut(room) {
                            w.filling = false;
                        }
                        // Asked again by the sweeper.
                        self.cl().retry.borrow_mut().push(room.into());
                    }
                    CTag::Publish { .. } => {}
                }
                return;
            }
        };
        match tag {
            CTag::Gap(to) => {
                let cl = self.cl();
                let mut watched = cl.watched.borrow_mut();
                let Some(w) = watched.get_mut(room) else {
                    return;
                };
                w.filling = false;
                for m in msgs {
                    if m.msg.seq > w.last && !w.pending.contains_key(&m.msg.seq) {
                        w.pending_bytes += m.msg.draft.body.len();
                        w.pending.insert(m.msg.seq, Box::new(m));
                    }
                }
                drop(watched);
                crate::metrics::local(|m| m.cluster_gaps.inc());
                self.close_range(room, to);
            }
            CTag::Backfill { req, start, upto } => {
                for m in msgs {
                    self.durable.persist(WriterItem::msg(m.msg, Tag::default()));
                }
                self.replay(req, start, upto);
            }
            CTag::Publish { .. } => {}
        }
    }

    /// After a gap was read up to `to`: deliver what is pending up to
    /// there in order, skipping (and counting) the seqs the stream no
    /// longer had; then go on with what follows, and ask again if more is
    /// known to exist.
    fn close_range(&self, room: &str, to: u64) {
        let cl = self.cl();
        let mut lost = 0;
        loop {
            let mut watched = cl.watched.borrow_mut();
            let Some(w) = watched.get_mut(room) else {
                return;
            };
            let Some(first) = w.pending.first_entry() else {
                break;
            };
            let seq = *first.key();
            if seq > to {
                break;
            }
            let m = first.remove();
            w.pending_bytes -= m.msg.draft.body.len();
            if seq <= w.last {
                continue;
            }
            lost += seq - w.last - 1;
            w.last = seq;
            if w.epoch.as_ref() != Some(&m.epoch) {
                w.epoch = Some(m.epoch.clone());
            }
            drop(watched);
            self.deliver_remote(m.msg);
        }
        let want = {
            let mut watched = cl.watched.borrow_mut();
            let Some(w) = watched.get_mut(room) else {
                return;
            };
            if w.last < to {
                lost += to - w.last;
                w.last = to;
            }
            w.want_to
        };
        if lost > 0 {
            warn!(
                room,
                lost,
                upto = to,
                "messages missing from the room's stream are skipped"
            );
            crate::metrics::local(|m| m.cluster_lost.add(lost));
        }
        self.drain_pending(room);
        self.request_gap(room, want);
    }
}
