//! A shard: one glommio executor pinned to a core, with its listeners, its
//! connections, its rooms and its queues to the other shards.
//!
//! Thread contract: a `Shard` lives on its executor's thread only (`Rc`,
//! `RefCell`); the only things that cross threads are `ShardMsg` batches over
//! the SPSC channel mesh and, at start-up, listener fds.
//!
//! Borrow contract: a connection is borrowed while its frames are handled;
//! anything that may touch *other* connections (sequencing and fan-out of a
//! message owned here) is queued in `work` and runs in `after_io`, after that
//! borrow ends. Remote effects go straight to the per-peer `outbox`, whose
//! order is the order of the session's frames.

mod durable;
pub mod mesh;
pub mod msg;
mod notify;
pub mod start;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use glommio::net::TcpStream;
use slab::Slab;
use tracing::{debug, warn};

use crate::config::Config;
use crate::conn::{Conn, ConnRef, ConnToken, Phase, io};
use crate::router::{AckMode, Draft, Encoded, OwnedRoom, Rooms, Sequenced, Subscriber, owner_of};
use crate::stomp::frame::{Limits, Version};
use crate::ws::framing::CloseCode;
pub use durable::{StoreLink, WriterItem};
pub use msg::{Confirm, External, Interest, Owed, ReplayFrom, ReplayReq, ShardHandle, ShardMsg};
pub use notify::Notify;

/// Longest interval between sweeps (heart-beats, timeouts). A silent client
/// is closed at most this much later than twice its heart-beat interval.
pub const MAX_SWEEP_TICK: Duration = Duration::from_millis(100);

/// The sweep interval for the configured heart-beats: a quarter of the
/// shortest one (heart-beats then go out between 3/4 of the interval and
/// the interval, never late), between 10 ms and `MAX_SWEEP_TICK`.
pub fn sweep_tick(cfg: &Config) -> Duration {
    let shortest = [cfg.heartbeat_send_ms, cfg.heartbeat_receive_ms]
        .into_iter()
        .filter(|&ms| ms > 0)
        .min()
        .unwrap_or(u64::MAX);
    Duration::from_millis((shortest / 4).clamp(10, MAX_SWEEP_TICK.as_millis() as u64))
}

/// Where a message came from, for its RECEIPT.
#[derive(Debug, Clone, Copy)]
enum Origin {
    Local(ConnToken),
    Peer(usize, ConnToken),
}

impl Origin {
    /// The publishing connection's shard and token.
    fn split(self, me: usize) -> (usize, ConnToken) {
        match self {
            Origin::Local(t) => (me, t),
            Origin::Peer(p, t) => (p, t),
        }
    }
}

/// Work deferred until no connection is borrowed (or, for a room whose
/// last stored seq is being read, until it is known).
enum Work {
    /// Sequence and fan out a message of a room this shard owns.
    Publish {
        draft: Draft,
        origin: Origin,
        confirm: Option<Confirm>,
    },
    /// Start a replay for a subscription of a room this shard owns.
    Replay(ReplayReq),
}

impl Work {
    fn room(&self) -> &str {
        match self {
            Work::Publish { draft, .. } => &draft.room,
            Work::Replay(r) => &r.room,
        }
    }
}

pub struct Shard {
    pub id: usize,
    pub nshards: usize,
    pub cfg: Config,
    pub limits: Limits,
    conns: RefCell<Slab<ConnRef>>,
    next_serial: Cell<u32>,
    rooms: RefCell<Rooms>,
    work: RefCell<VecDeque<Work>>,
    /// Messages for each peer shard (own index unused), sent as one batch.
    outbox: Vec<RefCell<Vec<ShardMsg>>>,
    outbox_ready: Vec<Notify>,
    /// Connections with queued output, flushed once per batch.
    dirty: RefCell<Vec<ConnRef>>,
    /// Wakes the flusher task (see [`Shard::after_io`]).
    flush_wanted: Notify,
    /// Connections not being read until the outboxes drain.
    paused: RefCell<Vec<ConnRef>>,
    /// This shard's end of the shard-to-shard queues.
    mesh: mesh::MeshEnd,
    /// This shard's inbox: results from the writer and the reader pool,
    /// shutdown steps from main.
    inbox: crossbeam_channel::Receiver<External>,
    /// Every shard's inbox (index = shard), for jobs that answer a shard.
    handles: Arc<[ShardHandle]>,
    /// The SQLite writer and readers; `None` with `--persist false`.
    store: Option<StoreLink>,
    /// Items for the writer that did not fit its queue yet, in order. While
    /// any wait, this shard reads neither its connections nor its peers.
    overflow: RefCell<VecDeque<WriterItem>>,
    /// Rooms whose last stored seq is being read, with the work that waits.
    loading: RefCell<HashMap<Box<str>, Vec<Work>>>,
    /// Replays waiting for their subscriber's output to drain (or for a
    /// free reader): (connection, subscription, after, upto).
    replay_stalled: RefCell<Vec<(ConnToken, u32, u64, u64)>>,
    /// Shutting down: accept nothing, read no client.
    stopping: Cell<bool>,
    /// Wake the accept loops to stop (0: HTTP, 1: STOMP).
    stop_accept: [Notify; 2],
    /// Peers that said `Quiesce`, and who to tell once all did and
    /// everything is committed.
    quiesced: Cell<usize>,
    flushed: RefCell<Option<std::sync::mpsc::Sender<usize>>>,
}

impl Shard {
    pub fn new(
        cfg: Config,
        mesh: mesh::MeshEnd,
        inbox: crossbeam_channel::Receiver<External>,
        handles: Arc<[ShardHandle]>,
        store: Option<StoreLink>,
    ) -> Shard {
        let nshards = cfg.shards;
        Shard {
            id: mesh.id,
            nshards,
            limits: Limits {
                max_frame_size: cfg.max_frame_size,
                max_headers: cfg.max_headers,
                max_header_length: cfg.max_header_length,
            },
            cfg,
            conns: RefCell::new(Slab::new()),
            next_serial: Cell::new(1),
            rooms: RefCell::new(Rooms::default()),
            work: RefCell::new(VecDeque::new()),
            outbox: (0..nshards).map(|_| RefCell::new(Vec::new())).collect(),
            outbox_ready: (0..nshards).map(|_| Notify::default()).collect(),
            dirty: RefCell::new(Vec::new()),
            flush_wanted: Notify::default(),
            paused: RefCell::new(Vec::new()),
            mesh,
            inbox,
            handles,
            store,
            overflow: RefCell::new(VecDeque::new()),
            loading: RefCell::new(HashMap::new()),
            replay_stalled: RefCell::new(Vec::new()),
            stopping: Cell::new(false),
            stop_accept: [Notify::default(), Notify::default()],
            quiesced: Cell::new(0),
            flushed: RefCell::new(None),
        }
    }

    // ---- connections -------------------------------------------------

    /// Number of connections on this shard.
    pub fn conn_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Register a connection and start its I/O task. `inbound` holds bytes
    /// already read for it, `outbound` bytes to send first (a moved
    /// connection's upgrade answer).
    pub fn register(
        self: &Rc<Self>,
        stream: TcpStream,
        phase: Phase,
        inbound: Vec<u8>,
        outbound: Vec<u8>,
    ) {
        if let Err(e) = stream.set_nodelay(true) {
            debug!("set_nodelay: {e}");
        }
        let serial = self.next_serial.get();
        self.next_serial.set(serial.wrapping_add(1).max(1));
        let mut conns = self.conns.borrow_mut();
        let entry = conns.vacant_entry();
        let token = ConnToken {
            key: entry.key() as u32,
            serial,
        };
        let conn = Rc::new(RefCell::new(Conn::new(token, stream.as_raw_fd(), phase)));
        if !outbound.is_empty() {
            conn.borrow_mut().out.buf = outbound;
            self.mark_dirty(&conn);
        }
        entry.insert(conn.clone());
        drop(conns);
        glommio::spawn_local(io::run(self.clone(), conn, stream, inbound)).detach();
    }

    /// Forget a connection whose task is ending: drop its subscriptions and
    /// make sure no later flush touches its (soon reused) fd.
    pub fn drop_conn(&self, conn: &ConnRef) {
        let mut c = conn.borrow_mut();
        c.session.unsubscribe_all(self);
        c.fd = -1;
        c.out.abort = true;
        c.waker = None;
        let token = c.token;
        drop(c);
        let mut conns = self.conns.borrow_mut();
        if conns
            .get(token.key as usize)
            .is_some_and(|c| Rc::ptr_eq(c, conn))
        {
            conns.remove(token.key as usize);
        }
    }

    fn conn(&self, token: ConnToken) -> Option<ConnRef> {
        let conns = self.conns.borrow();
        let c = conns.get(token.key as usize)?;
        (c.borrow().token == token).then(|| c.clone())
    }

    pub fn mark_dirty(&self, conn: &ConnRef) {
        self.queue_flush(conn, &mut conn.borrow_mut());
    }

    /// Put `conn` (already borrowed as `c`) on the flush list once.
    fn queue_flush(&self, conn: &ConnRef, c: &mut Conn) {
        if !c.out.dirty {
            c.out.dirty = true;
            self.dirty.borrow_mut().push(conn.clone());
        }
    }

    /// Send what each dirty connection has queued: one `send` per socket per
    /// batch, straight from here while the socket takes it; the connection's
    /// task takes over (waiting for writability) when it would block.
    pub fn flush(&self) {
        let list = std::mem::take(&mut *self.dirty.borrow_mut());
        for conn in &list {
            let mut c = conn.borrow_mut();
            c.out.dirty = false;
            if c.fd < 0 {
                continue;
            }
            if !c.out.write_blocked && c.out.pending_len() > 0 {
                let buf = c.out.pending();
                // SAFETY: fd is open (set to -1 before the stream is dropped);
                // buf is valid for its length.
                let n = unsafe {
                    libc::send(
                        c.fd,
                        buf.as_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if n >= 0 {
                    c.out.consume(n as usize);
                } else {
                    let err = std::io::Error::last_os_error();
                    if err.kind() != std::io::ErrorKind::WouldBlock {
                        debug!("send: {err}");
                        c.out.abort = true;
                    }
                }
                if c.out.pending_len() > 0 {
                    c.out.write_blocked = true;
                }
            }
            if c.out.write_blocked || c.out.is_closing() || c.out.abort {
                c.wake();
            }
        }
        let mut dirty = self.dirty.borrow_mut();
        if dirty.is_empty() {
            let mut list = list;
            list.clear();
            *dirty = list;
        }
    }

    /// After a connection's bytes or a peer batch were handled: run deferred
    /// work, then have the output flushed.
    ///
    /// The flush itself runs in the flusher task, which the wake-up puts
    /// behind every task already runnable in this reactor round: all
    /// connections whose reads completed together (and the peer batch) are
    /// handled first, and each socket then gets *one* `send` for all of
    /// their output. Under load rounds grow and so do the batches, so the
    /// cost per delivery falls as the rate rises, instead of one `send` per
    /// message per subscriber. When idle it costs one task switch.
    pub fn after_io(&self) {
        self.run_work();
        if !self.dirty.borrow().is_empty() {
            self.flush_wanted.notify();
        }
    }

    /// The flusher task: flush whenever `after_io` asks.
    pub async fn flusher(self: Rc<Self>) {
        loop {
            self.flush_wanted.wait().await;
            self.flush();
        }
    }

    /// Whether any queue towards a peer is over its limit (then connections
    /// stop being read).
    pub fn peers_congested(&self) -> bool {
        self.outbox
            .iter()
            .any(|o| o.borrow().len() >= self.cfg.max_peer_queue)
    }

    pub fn pause(&self, conn: &ConnRef) {
        conn.borrow_mut().paused = true;
        self.paused.borrow_mut().push(conn.clone());
    }

    fn maybe_resume(&self) {
        if self.paused.borrow().is_empty()
            || self.peers_congested()
            || self.persist_congested()
            || self.stopping.get()
        {
            return;
        }
        let now = Instant::now();
        for conn in self.paused.borrow_mut().drain(..) {
            let mut c = conn.borrow_mut();
            c.paused = false;
            // Its client may have been talking all along; we were not reading.
            c.last_read = now;
            c.wake();
        }
    }

    // ---- rooms ---------------------------------------------------------

    /// Add a local subscriber. Returns its key in the room and whether a
    /// requested RECEIPT may be sent now (`false`: the owner shard answers
    /// once it knows of our interest). With `replay`, the subscriber holds
    /// live messages back and the owner is asked for the stored ones.
    pub fn subscribe(
        &self,
        room: &str,
        sub: Subscriber,
        token: ConnToken,
        receipt: Option<&str>,
        replay: Option<ReplayFrom>,
    ) -> (usize, bool) {
        let owner = owner_of(room, self.nshards);
        let sub_n = sub.sub_n;
        let mut rooms = self.rooms.borrow_mut();
        let local = rooms.local.entry(room.into()).or_default();
        let first = local.subs.is_empty();
        let key = local.subs.insert(sub);
        drop(rooms);
        let replay = replay.map(|from| ReplayReq {
            room: room.into(),
            from,
            shard: self.id,
            conn: token,
            sub_n,
        });
        if owner == self.id {
            if let Some(req) = replay {
                self.work.borrow_mut().push_back(Work::Replay(req));
            }
            return (key, true);
        }
        if first || receipt.is_some() {
            self.to_peer(
                owner,
                ShardMsg::Interest {
                    room: room.into(),
                    change: if first { Interest::Add } else { Interest::Sync },
                    reply: receipt.map(|r| (token, r.into())),
                },
            );
        }
        // After the interest: from the seq the owner reads when it gets
        // this, every message of the room reaches us live.
        if let Some(req) = replay {
            self.to_peer(owner, ShardMsg::Replay(req));
        }
        (key, receipt.is_none())
    }

    pub fn unsubscribe(&self, room: &str, key: usize) {
        let mut rooms = self.rooms.borrow_mut();
        let Some(local) = rooms.local.get_mut(room) else {
            return;
        };
        local.subs.try_remove(key);
        if !local.subs.is_empty() {
            return;
        }
        rooms.local.remove(room);
        drop(rooms);
        let owner = owner_of(room, self.nshards);
        if owner != self.id {
            self.to_peer(
                owner,
                ShardMsg::Interest {
                    room: room.into(),
                    change: Interest::Remove,
                    reply: None,
                },
            );
        }
    }

    /// The owner's state of `room`, created on first use: its next seq is
    /// 1 without a store, and unknown (to be read) with one.
    fn owned_room<'r>(&self, rooms: &'r mut Rooms, room: Box<str>) -> &'r mut OwnedRoom {
        let next_seq = self.store.is_none().then_some(1);
        let nshards = self.nshards;
        rooms
            .owned
            .entry(room)
            .or_insert_with(|| OwnedRoom::new(nshards, next_seq))
    }

    /// Whether messages are stored (and RECEIPTs wait for the commit).
    pub fn persistent(&self) -> bool {
        self.store.is_some()
    }

    /// Publish a message from a local connection.
    pub fn publish(&self, draft: Draft, token: ConnToken, confirm: Option<Confirm>) {
        let owner = owner_of(&draft.room, self.nshards);
        if owner == self.id {
            self.work.borrow_mut().push_back(Work::Publish {
                draft,
                origin: Origin::Local(token),
                confirm,
            });
        } else {
            self.to_peer(
                owner,
                ShardMsg::Publish {
                    draft,
                    origin: token,
                    confirm,
                },
            );
        }
    }

    fn run_work(&self) {
        loop {
            let Some(work) = self.work.borrow_mut().pop_front() else {
                return;
            };
            self.run_one(work);
        }
    }

    fn run_one(&self, work: Work) {
        match work {
            Work::Publish {
                draft,
                origin,
                confirm,
            } => self.sequence(draft, origin, confirm),
            Work::Replay(req) => self.start_replay(req),
        }
    }

    /// Owner side: give the message its place, send it once to every shard
    /// with subscribers, deliver it here, hand it to the writer; the
    /// publisher's RECEIPT follows the commit (or, with persistence off,
    /// goes now).
    fn sequence(&self, draft: Draft, origin: Origin, confirm: Option<Confirm>) {
        let mut rooms = self.rooms.borrow_mut();
        let nshards = self.nshards;
        let room = self.owned_room(&mut rooms, draft.room.clone());
        let Some(seq) = room.next_seq else {
            drop(rooms);
            self.wait_for_room(Work::Publish {
                draft,
                origin,
                confirm,
            });
            return;
        };
        room.next_seq = Some(seq + 1);
        let msg = Sequenced {
            draft,
            seq,
            timestamp_ms: now_ms(),
        };
        let targets: Vec<usize> = (0..nshards).filter(|&p| room.remote[p]).collect();
        drop(rooms);
        for p in targets {
            self.to_peer(p, ShardMsg::Deliver(msg.clone()));
        }
        self.deliver_local(&msg);
        let (shard, conn) = origin.split(self.id);
        let owed = confirm.map(|what| Owed { shard, conn, what });
        if self.store.is_some() {
            self.persist(WriterItem::msg(msg, owed));
        } else if let Some(owed) = owed {
            match owed.what {
                Confirm::Receipt(r) if shard == self.id => self.write_receipt(conn, &r),
                Confirm::Receipt(receipt) => {
                    self.to_peer(shard, ShardMsg::Receipt { conn, receipt })
                }
                // Sessions confirm transactions at COMMIT when nothing is
                // stored; no group is ever formed.
                Confirm::Group(_) => debug_assert!(false, "group confirm without a store"),
            }
        }
    }

    /// Write a message to every local subscriber of its room (or hold it
    /// for those whose replay is still being sent).
    fn deliver_local(&self, msg: &Sequenced) {
        let mut rooms = self.rooms.borrow_mut();
        let Some(room) = rooms.local.get_mut(&*msg.draft.room) else {
            return;
        };
        let mut encoded: [Option<Encoded>; 3] = [None, None, None];
        let now = Instant::now();
        for (_, sub) in room.subs.iter_mut() {
            let mut c = sub.conn.borrow_mut();
            if c.out.is_closing() || c.fd < 0 {
                continue;
            }
            if let Some(hold) = &mut sub.replay {
                hold.bytes += msg.draft.body.len()
                    + msg
                        .draft
                        .headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>();
                hold.held.push(msg.clone());
                if hold.bytes > self.cfg.max_outbound_bytes {
                    c.out.error(
                        "slow consumer",
                        None,
                        &[],
                        &format!(
                            "more than {} bytes of live messages arrived while the replay was sent; subscribe with a later x-since-seq or use the history API",
                            self.cfg.max_outbound_bytes
                        ),
                        CloseCode::Policy,
                    );
                    self.queue_flush(&sub.conn, &mut c);
                }
                continue;
            }
            let enc = encoded[sub.version as usize].get_or_insert_with(|| msg.encode(sub.version));
            self.deliver_to(sub, &mut c, enc, msg.seq, now);
            self.queue_flush(&sub.conn, &mut c);
        }
    }

    /// Append one message to one subscriber's output: acknowledgement
    /// bookkeeping, then the frame; over a limit, ERROR and close.
    fn deliver_to(&self, sub: &Subscriber, c: &mut Conn, enc: &Encoded, seq: u64, now: Instant) {
        let max_out = self.cfg.max_outbound_bytes;
        let max_pending = self.cfg.max_pending_acks;
        let mut ack = None;
        if sub.mode != AckMode::Auto {
            let Some(state) = c.session.subs.iter_mut().find(|s| s.n == sub.sub_n) else {
                return;
            };
            if state.pending.len() >= max_pending {
                c.out.error(
                    "too many unacknowledged messages",
                    None,
                    &[],
                    &format!("subscription has {max_pending} messages without ACK; acknowledge or use ack:auto"),
                    CloseCode::Policy,
                );
            } else {
                state.pending.push_back(seq);
                if sub.version == Version::V12 {
                    ack = Some((sub.sub_n, seq));
                }
            }
        }
        if !c.out.is_closing() {
            c.out.message(&sub.prefix, ack, enc, now);
            if c.out.pending_len() > max_out {
                c.out.error(
                    "slow consumer",
                    None,
                    &[],
                    &format!(
                        "more than {max_out} bytes queued for this connection; it reads too slowly"
                    ),
                    CloseCode::Policy,
                );
            }
        }
    }

    fn write_receipt(&self, token: ConnToken, receipt: &str) {
        let Some(conn) = self.conn(token) else {
            return;
        };
        {
            let mut c = conn.borrow_mut();
            if c.out.is_closing() || c.fd < 0 {
                return;
            }
            let esc = c.session.escaping();
            c.out.frame("RECEIPT", &[("receipt-id", receipt)], b"", esc);
            let c = &mut *c;
            c.session.receipt_delivered(&mut c.out);
        }
        self.mark_dirty(&conn);
    }

    /// ERROR (answering `receipt`, if any) and close a local connection.
    fn refuse(&self, token: ConnToken, receipt: Option<&str>, message: &str, detail: &str) {
        let Some(conn) = self.conn(token) else {
            return;
        };
        conn.borrow_mut()
            .out
            .error(message, receipt, &[], detail, CloseCode::Error);
        self.mark_dirty(&conn);
    }

    // ---- the mesh ------------------------------------------------------

    /// Queue a message for a peer shard.
    pub fn to_peer(&self, peer: usize, msg: ShardMsg) {
        let mut q = self.outbox[peer].borrow_mut();
        q.push(msg);
        if q.len() == 1 {
            self.outbox_ready[peer].notify();
        }
    }

    /// Handle one message from peer shard `from`.
    fn on_peer(self: &Rc<Self>, from: usize, msg: ShardMsg) {
        match msg {
            ShardMsg::Publish {
                draft,
                origin,
                confirm,
            } => {
                self.work.borrow_mut().push_back(Work::Publish {
                    draft,
                    origin: Origin::Peer(from, origin),
                    confirm,
                });
            }
            ShardMsg::Deliver(msg) => self.deliver_local(&msg),
            ShardMsg::Receipt { conn, receipt } => self.write_receipt(conn, &receipt),
            ShardMsg::Refuse {
                conn,
                receipt,
                message,
                detail,
            } => self.refuse(conn, receipt.as_deref(), &message, &detail),
            ShardMsg::Interest {
                room,
                change,
                reply,
            } => {
                let mut rooms = self.rooms.borrow_mut();
                let owned = self.owned_room(&mut rooms, room);
                match change {
                    Interest::Add => owned.remote[from] = true,
                    Interest::Remove => owned.remote[from] = false,
                    Interest::Sync => {}
                }
                drop(rooms);
                if let Some((conn, receipt)) = reply {
                    self.to_peer(from, ShardMsg::Receipt { conn, receipt });
                }
            }
            ShardMsg::Replay(req) => self.work.borrow_mut().push_back(Work::Replay(req)),
            ShardMsg::Quiesce => self.quiesced.set(self.quiesced.get() + 1),
            ShardMsg::Adopt {
                fd,
                inbound,
                outbound,
            } => {
                use std::os::fd::IntoRawFd;
                let fd = fd.into_raw_fd();
                // SAFETY: the sender dup()ed this fd for us; we own it now.
                let stream = unsafe { TcpStream::from_raw_fd(fd) };
                if self.stopping.get() {
                    return; // shutting down: dropping the stream closes it
                }
                if self.conn_count() >= self.cfg.max_connections_per_shard() {
                    // Moved connections count against the owner's share too.
                    start::send_refusal(&stream, start::FULL_HTTP);
                    return; // dropping the stream closes the socket
                }
                self.register(stream, Phase::Ws, inbound, outbound);
            }
        }
    }

    /// Wait on this shard's doorbell; on each ring take the inbox (commit
    /// and read results, shutdown steps), hand held items to the writer,
    /// take every queued batch from every peer (unless the writer's queue
    /// is full: then peers are held back too), then let blocked senders
    /// retry.
    async fn receive(self: Rc<Self>, bell_fd: std::os::fd::RawFd) {
        use futures_lite::AsyncReadExt;
        // SAFETY: the read end of this shard's doorbell socketpair, owned
        // by this task from here on.
        let mut bell = unsafe { glommio::net::UnixStream::from_raw_fd(bell_fd) };
        let mut buf = [0u8; 64];
        loop {
            match bell.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    warn!(shard = self.id, "doorbell closed");
                    return;
                }
                Ok(_) => {}
            }
            self.mesh.clear_bell();
            while let Ok(msg) = self.inbox.try_recv() {
                self.on_external(msg);
            }
            self.drain_overflow();
            self.mesh.drain(
                |from, batch| {
                    for msg in batch {
                        self.on_peer(from, msg);
                    }
                    // Sequence now, so a full writer queue stops the drain.
                    self.run_work();
                },
                || !self.persist_congested(),
            );
            self.after_io();
            self.check_quiesced();
            for (to, q) in self.outbox.iter().enumerate() {
                if to != self.id && !q.borrow().is_empty() {
                    self.outbox_ready[to].notify();
                }
            }
        }
    }

    /// Send this shard's queued messages to one peer, a batch at a time.
    async fn send_to(self: Rc<Self>, to: usize) {
        loop {
            self.outbox_ready[to].wait().await;
            loop {
                let batch = std::mem::take(&mut *self.outbox[to].borrow_mut());
                if batch.is_empty() {
                    break;
                }
                match self.mesh.offer(to, batch) {
                    mesh::Offer::Sent => self.maybe_resume(),
                    mesh::Offer::Full(batch) => {
                        // Nothing was queued meanwhile (no await since the
                        // take), so the batch goes back as it was. The peer
                        // rings our bell when it has made room.
                        *self.outbox[to].borrow_mut() = batch;
                        break;
                    }
                    mesh::Offer::Closed => {
                        warn!(shard = self.id, peer = to, "peer shard gone");
                        return;
                    }
                }
            }
        }
    }

    // ---- timers ----------------------------------------------------------

    /// Heart-beats, heart-beat timeouts, connect timeouts and close deadlines.
    async fn sweep(self: Rc<Self>) {
        let connect_timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        let tick = sweep_tick(&self.cfg);
        loop {
            glommio::timer::sleep(tick).await;
            let now = Instant::now();
            let conns = self.conns.borrow();
            for (_, conn) in conns.iter() {
                let mut c = conn.borrow_mut();
                let c = &mut *c;
                if let Some(deadline) = c.out.closing {
                    if now >= deadline {
                        c.out.abort = true;
                        c.wake();
                    }
                    continue;
                }
                if let Some((_, deadline)) = c.session.disconnect {
                    if now >= deadline {
                        c.session.finish_disconnect(&mut c.out);
                        self.queue_flush(conn, c);
                    }
                    continue;
                }
                let s = &c.session;
                let mut touched = false;
                if !s.connected {
                    if now.duration_since(c.created) >= connect_timeout {
                        if matches!(c.phase, Phase::Http | Phase::HttpWait) {
                            c.out.abort = true;
                            c.wake();
                        } else {
                            c.out.error(
                                "not connected: CONNECT timeout",
                                None,
                                &[],
                                &format!("no CONNECT within {} ms", self.cfg.connect_timeout_ms),
                                CloseCode::Policy,
                            );
                            touched = true;
                        }
                    }
                } else {
                    // A paused connection is not read: its silence is ours.
                    if !c.paused
                        && s.hb_recv_ms > 0
                        && now.duration_since(c.last_read)
                            >= Duration::from_millis(2 * s.hb_recv_ms)
                    {
                        let detail = format!(
                            "nothing received for {} ms (twice the negotiated {} ms)",
                            2 * s.hb_recv_ms,
                            s.hb_recv_ms
                        );
                        c.out
                            .error("heart-beat timeout", None, &[], &detail, CloseCode::Policy);
                        touched = true;
                    } else if s.hb_send_ms > 0
                        && !c.out.write_blocked
                        // Up to a tick early rather than late: the client must
                        // never wait longer than the negotiated interval.
                        && now.duration_since(c.out.last_write) + tick >= Duration::from_millis(s.hb_send_ms)
                    {
                        c.out.heartbeat(now);
                        touched = true;
                    }
                }
                if touched {
                    self.queue_flush(conn, c);
                }
            }
            drop(conns);
            self.resume_replays();
            self.flush();
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
