//! A shard: one glommio executor pinned to a core, with its listeners, its
//! connections, its rooms and its queues to the other shards.
//!
//! The shard is made of parts, each owning its own state in its own file:
//! - `conns`     — the connection table, the flush list, paused readers;
//! - `task`      — the task that drives one connection's socket;
//! - `rooms`     — local subscribers, owned rooms (sequencing), fan-out;
//! - `peers`     — outboxes to the other shards over the `mesh`;
//! - `durable`   — the writer's queue and its overflow, room loads, replays;
//! - `lifecycle` — accepting, and the graceful shutdown's steps;
//! - `sweep`     — heart-beats and timeouts.
//!
//! `Shard` holds one of each and routes between them: this file has what
//! crosses parts (publishing, subscribing, the messages from peers and
//! from plain threads) and the session's broker (`ConnBroker`).
//!
//! Thread contract: a `Shard` lives on its executor's thread only (`Rc`,
//! `RefCell`); what crosses threads are `ShardMsg` batches over the mesh
//! and `External` messages through the inbox.
//!
//! Borrow contract: a connection is borrowed while its frames are handled;
//! anything that may touch *other* connections (sequencing and fan-out of a
//! message owned here) is queued in `work` and runs in `after_io`, after that
//! borrow ends. Remote effects go straight to the per-peer outbox, whose
//! order is the order of the session's frames.

mod cluster;
mod conns;
mod durable;
mod lifecycle;
pub(crate) mod mesh;
pub(crate) mod msg;
mod notify;
mod peers;
mod rooms;
mod sweep;
mod task;
pub(crate) mod watchdog;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;

use tracing::{error, warn};

use crate::clock::now_ms;
use crate::config::Config;
use crate::conn::{ConnRates, ConnToken, Phase, Sock, Used};
use crate::message::{Confirm, Draft, ReplayFrom, Sequenced};
use crate::metrics::{Gauges, Listener, Readiness, ShardSnapshot};
use crate::out::Out;
use crate::push::{PushJob, PushStats};
use crate::rate::RateLimit;
use crate::room::owner_of;
use crate::session::{Broker, NewSub, Session, SessionLimits, Subscribed};
use crate::stomp::frame::Limits;
use crate::store::{Page, StoreError};
use crate::ws::framing::CloseCode;
pub(crate) use cluster::ClusterLink;
use conns::{ConnRef, Conns};
use durable::{Durable, ReplayLimits, Start};
pub(crate) use durable::{StoreLink, WriterItem};
use lifecycle::Lifecycle;
use msg::{
    External, Interest, JoinReq, Loaded, MemberReq, OnlineReq, Owed, Refusal, ReplayReq, ScrapeReq,
    ShardHandle, ShardMsg, Tag,
};
use peers::Peers;
use rooms::{Deny, FanoutLimits, Hold, PageDone, Rooms, Seq, Subscriber};

/// Where a message came from, for its RECEIPT.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Origin {
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
    /// Let a subscription of a room this shard owns in (or not).
    Join(JoinReq),
    /// Change the members of a room this shard owns (an API call).
    Member(MemberReq),
}

impl Work {
    fn room(&self) -> &str {
        match self {
            Work::Publish { draft, .. } => &draft.room,
            Work::Replay(r) => &r.room,
            Work::Join(j) => &j.room,
            Work::Member(m) => &m.room,
        }
    }
}

/// The listeners a shard accepts on (bound by the server for this shard).
pub(crate) struct ShardListeners {
    pub http: OwnedFd,
    pub stomp: Option<OwnedFd>,
    pub metrics: Option<OwnedFd>,
}

/// What a shard is started with (built on the main thread).
pub(crate) struct ShardSetup {
    pub cfg: Config,
    pub mesh: mesh::MeshEnd,
    pub inbox: crossbeam_channel::Receiver<External>,
    /// Every shard's inbox (index = shard), for jobs that answer a shard.
    pub handles: Arc<[ShardHandle]>,
    /// The SQLite writer and readers; `None` with `--persist false`.
    pub store: Option<StoreLink>,
    /// The push pool's counters, when push is on (`GET /api/push`).
    pub push: Option<Arc<PushStats>>,
    /// Started and not draining (`/readyz`).
    pub ready: Arc<Readiness>,
    /// The scrape thread's queue (`GET /metrics`).
    pub scrape: crossbeam_channel::Sender<ScrapeReq>,
    /// TLS for `--listen` and `--stomp-listen` (`--tls-cert`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The Redis threads' queues (`--cluster`).
    pub cluster: Option<ClusterLink>,
}

pub(crate) struct Shard {
    id: usize,
    nshards: usize,
    /// Beaten by the sweeper, watched by the watchdog.
    alive: Arc<watchdog::Liveness>,
    cfg: Config,
    frame_limits: Limits,
    session_limits: SessionLimits,
    auth: crate::auth::Authenticator,
    /// Members are tracked (there is a store): subscriptions are let in by
    /// the room's owner, which knows who is present.
    tracking: bool,
    /// `--join invite`.
    invite: bool,
    /// The push pool's counters; `Some`: push is on, so messages carry
    /// the room's away members to the writer.
    push: Option<Arc<PushStats>>,
    /// `--max-publish-rate`, `--max-subscribe-rate` and their bursts.
    rates: ConnRates,
    conns: Conns,
    rooms: RefCell<Rooms>,
    peers: Peers,
    durable: Durable,
    life: Lifecycle,
    /// Sequencing and replays of rooms owned here, run after the current
    /// connection's borrow ends.
    work: RefCell<VecDeque<Work>>,
    /// This shard's inbox: results from the writer and the reader pool,
    /// shutdown steps from main.
    inbox: crossbeam_channel::Receiver<External>,
    /// Started and not draining (`/readyz`).
    ready: Arc<Readiness>,
    /// The scrape thread's queue (`GET /metrics`).
    scrape: crossbeam_channel::Sender<ScrapeReq>,
    /// TLS for connections accepted on `--listen` and `--stomp-listen`,
    /// with this shard's own session cache; replaced on SIGHUP.
    tls: RefCell<Option<Arc<rustls::ServerConfig>>>,
    /// Cluster mode (`--cluster`): Redis sequences the rooms owned here.
    cluster: Option<cluster::Cluster>,
}

impl Shard {
    fn new(setup: ShardSetup) -> Shard {
        let ShardSetup {
            cfg,
            mesh,
            inbox,
            handles,
            store,
            push,
            ready,
            scrape,
            tls,
            cluster,
        } = setup;
        let id = mesh.id;
        let nshards = cfg.shards;
        let persistent = store.is_some();
        Shard {
            id,
            nshards,
            alive: handles[id].alive.clone(),
            frame_limits: Limits {
                max_frame_size: cfg.max_frame_size,
                max_headers: cfg.max_headers,
                max_header_length: cfg.max_header_length,
            },
            session_limits: SessionLimits::from_config(&cfg),
            auth: crate::auth::Authenticator::from_config(&cfg),
            tracking: persistent,
            invite: cfg.join == crate::config::JoinMode::Invite,
            push,
            rates: ConnRates {
                publish: RateLimit::new(cfg.max_publish_rate, cfg.publish_burst),
                subscribe: RateLimit::new(cfg.max_subscribe_rate, cfg.subscribe_burst),
            },
            conns: Conns::default(),
            rooms: RefCell::new(Rooms::new(
                id,
                nshards,
                persistent,
                FanoutLimits {
                    max_outbound_bytes: cfg.max_outbound_bytes,
                    max_pending_acks: cfg.max_pending_acks,
                },
                std::time::Duration::from_secs(cfg.room_idle_s),
                cfg.seq_reserve,
            )),
            peers: Peers::new(mesh, cfg.max_peer_queue, cfg.max_peer_bytes),
            durable: Durable::new(
                id,
                store,
                handles,
                ReplayLimits {
                    page: cfg.replay_page,
                    max_outbound_bytes: cfg.max_outbound_bytes,
                },
                // Cluster mode: Redis gives the seqs, nothing is reserved.
                if cluster.is_some() {
                    0
                } else {
                    cfg.seq_reserve
                },
                cfg.max_room_members,
            ),
            life: Lifecycle::default(),
            work: RefCell::default(),
            inbox,
            ready,
            scrape,
            tls: RefCell::new(tls.as_deref().map(crate::tls::for_shard)),
            cluster: cluster.map(cluster::Cluster::new),
            cfg,
        }
    }

    /// The body of one shard's executor: start its tasks, report `ready`,
    /// accept until shutdown.
    pub(crate) async fn run(
        mut setup: ShardSetup,
        listeners: ShardListeners,
        ready: std::sync::mpsc::Sender<usize>,
    ) {
        let bell = setup.mesh.take_bell_fd();
        let shard = Rc::new(Shard::new(setup));
        shard.alive.started();
        // The doorbell also carries the writer's, the readers' and main's
        // messages, so it is read even with a single shard.
        glommio::spawn_local(shard.clone().receive(bell)).detach();
        for to in (0..shard.nshards).filter(|&p| p != shard.id) {
            glommio::spawn_local(peers::send_loop(shard.clone(), to)).detach();
        }
        glommio::spawn_local(shard.clone().flusher()).detach();
        glommio::spawn_local(sweep::sweep(shard.clone())).detach();
        if let Some(fd) = listeners.stomp {
            glommio::spawn_local(lifecycle::accept_loop(shard.clone(), fd, Listener::Stomp))
                .detach();
        }
        if let Some(fd) = listeners.metrics {
            glommio::spawn_local(lifecycle::accept_loop(shard.clone(), fd, Listener::Metrics))
                .detach();
        }
        tracing::info!(shard = shard.id, "shard started");
        let _ = ready.send(shard.id);
        lifecycle::accept_loop(shard, listeners.http, Listener::Http).await;
        // Accepting stopped (shutdown); the shard's other tasks go on until
        // the process exits. Returning would end the executor and drop them.
        futures_lite::future::pending::<()>().await;
    }

    // ---- connections -------------------------------------------------

    /// Register a connection and start its task. `inbound` holds bytes
    /// already read for it, `outbound` bytes to send first (a moved
    /// connection's upgrade answer).
    fn register(
        self: &Rc<Self>,
        sock: Sock,
        phase: Phase,
        inbound: Vec<u8>,
        outbound: &[u8],
    ) -> ConnRef {
        let conn = self.conns.insert(sock, phase, outbound);
        // Spawned, not run yet: the caller may still set up the connection.
        glommio::spawn_local(task::run(self.clone(), conn.clone(), inbound)).detach();
        conn
    }

    /// Forget a connection whose task is ending: drop its subscriptions and
    /// close its socket (so no later flush can touch it).
    fn drop_conn(&self, conn: &ConnRef) {
        let token = conn.borrow().token();
        let broker = ConnBroker::new(self, conn, token);
        conn.borrow_mut().end_session(&broker);
        self.conns.remove(conn);
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
    fn after_io(&self) {
        self.run_work();
        if self.conns.flush_due() {
            self.conns.want_flush();
        }
    }

    /// The flusher task: flush whenever `after_io` asks.
    async fn flusher(self: Rc<Self>) {
        loop {
            self.conns.flush_wanted().await;
            self.conns.flush();
        }
    }

    /// Whether this shard must stop reading its connections: a queue
    /// towards a peer is over its limit, or items wait for the writer.
    fn congested(&self) -> bool {
        self.peers.congested()
            || self.durable.congested()
            || self.cluster.as_ref().is_some_and(|c| c.congested())
    }

    /// Read paused connections again once nothing holds them back.
    fn maybe_resume(&self) {
        if self.conns.any_paused() && !self.congested() && !self.life.stopping() {
            self.conns.resume_all();
        }
    }

    // ---- publishing and subscribing ------------------------------------

    /// Publish a message from a local connection.
    fn publish(&self, draft: Draft, token: ConnToken, confirm: Option<Confirm>) {
        let owner = owner_of(&draft.room, self.nshards);
        if owner == self.id {
            self.work.borrow_mut().push_back(Work::Publish {
                draft,
                origin: Origin::Local(token),
                confirm,
            });
        } else {
            self.peers.send(
                owner,
                ShardMsg::Publish {
                    draft,
                    origin: token,
                    confirm,
                },
            );
        }
    }

    /// Add a local subscriber. With a store, the room's owner must let it
    /// in first (`Work::Join`); with `replay`, it is sent the stored
    /// messages. Until both are done it holds live messages back.
    fn subscribe(&self, me: &ConnRef, token: ConnToken, sub: NewSub<'_>) -> Subscribed {
        let owner = owner_of(sub.room, self.nshards);
        let tracking = self.tracking;
        let replay = sub.replay.is_some();
        let hold =
            (tracking || replay).then(|| Hold::new(tracking, replay, replay && owner != self.id));
        let added = self.rooms.borrow_mut().add_local(
            sub.room,
            Subscriber {
                conn: me.clone(),
                sub_n: sub.sub_n,
                prefix: sub.prefix,
                mode: sub.mode,
                version: sub.version,
                hold,
                joined: false,
            },
        );
        let join = tracking.then(|| JoinReq {
            room: sub.room.into(),
            user: sub.user.into(),
            shard: self.id,
            conn: token,
            sub_n: sub.sub_n,
            receipt: sub.receipt.map(Into::into),
        });
        let replay = sub.replay.map(|from| ReplayReq {
            room: sub.room.into(),
            user: sub.user.into(),
            from,
            shard: self.id,
            conn: token,
            sub_n: sub.sub_n,
        });
        if owner == self.id {
            let mut work = self.work.borrow_mut();
            if let Some(j) = join {
                work.push_back(Work::Join(j));
            }
            if let Some(req) = replay {
                work.push_back(Work::Replay(req));
            }
            return Subscribed {
                key: added.key,
                receipt_now: !tracking,
            };
        }
        // Without a store the owner's answer to the interest carries the
        // receipt; with one, its answer to the join does.
        let reply = if tracking { None } else { sub.receipt };
        if added.first || reply.is_some() {
            self.peers.send(
                owner,
                ShardMsg::Interest {
                    room: sub.room.into(),
                    change: if added.first {
                        Interest::Add
                    } else {
                        Interest::Sync
                    },
                    reply: reply.map(|r| (token, r.into())),
                },
            );
        }
        // After the interest: from the seq the owner reads when it gets
        // these, every message of the room reaches us live.
        if let Some(j) = join {
            self.peers.send(owner, ShardMsg::Join(j));
        }
        if let Some(req) = replay {
            self.peers.send(owner, ShardMsg::Replay(req));
        }
        Subscribed {
            key: added.key,
            receipt_now: sub.receipt.is_none(),
        }
    }

    fn unsubscribe(&self, room: &str, key: usize, user: &str) {
        let (last, joined) = self.rooms.borrow_mut().remove_local(room, key);
        let owner = owner_of(room, self.nshards);
        if joined {
            self.leave(room, user);
        }
        if last && owner != self.id {
            self.peers.send(
                owner,
                ShardMsg::Interest {
                    room: room.into(),
                    change: Interest::Remove,
                    reply: None,
                },
            );
        } else if last {
            self.cluster_check(room);
        }
    }

    /// Tell `room`'s owner that a subscription of `user` it let in ended.
    fn leave(&self, room: &str, user: &str) {
        let owner = owner_of(room, self.nshards);
        if owner == self.id {
            self.left(room, user);
        } else {
            self.peers.send(
                owner,
                ShardMsg::Leave {
                    room: room.into(),
                    user: user.into(),
                },
            );
        }
    }

    /// Owner side: a subscription of `user` let in before has ended.
    fn left(&self, room: &str, user: &str) {
        if self.rooms.borrow_mut().leave(room, user) {
            self.cluster_presence(room, user, false);
        }
    }

    // ---- members ------------------------------------------------------------

    /// Whether only members may enter `room`: `--join invite`, except a
    /// user's own room (`/user/…`), which its user subscribes to and
    /// anyone may send to (Spring's user destinations).
    fn invite_only(&self, room: &str) -> bool {
        self.invite && !crate::room::is_user_room(room)
    }

    /// Owner side: let a subscription in (`--join invite`: members only;
    /// `open`: a newcomer becomes a member) and count its user present.
    fn join(&self, req: JoinReq) {
        let Some(Work::Join(req)) = self.cluster_park(Work::Join(req)) else {
            return; // waits for the room to be live in the cluster
        };
        let mut rooms = self.rooms.borrow_mut();
        let invite = self.invite_only(&req.room);
        // `--join open` lets everyone in: no need to wait for the members.
        if invite && !rooms.members_loaded(&req.room) {
            drop(rooms);
            self.durable.wait_for_members(Work::Join(req));
            return;
        }
        let was_online = rooms.is_online(&req.room, &req.user);
        let admitted = rooms.admit(&req.room, &req.user, invite, self.cfg.max_room_members);
        drop(rooms);
        if admitted.is_ok() && !was_online {
            self.cluster_presence(&req.room, &req.user, true);
        }
        let result = match admitted {
            Ok(new) => {
                if new {
                    self.durable.store_member(&req.room, &req.user);
                }
                Ok(())
            }
            Err(Deny::NotMember) => Err(Refusal::NotMember(req.room.clone())),
            Err(Deny::Full) => Err(Refusal::RoomFull(req.room.clone())),
        };
        if req.shard == self.id {
            self.joined(
                req.conn,
                req.sub_n,
                &req.room,
                &req.user,
                result,
                req.receipt,
            );
        } else {
            self.peers.send(
                req.shard,
                ShardMsg::Joined {
                    conn: req.conn,
                    sub_n: req.sub_n,
                    room: req.room,
                    user: req.user,
                    result,
                    receipt: req.receipt,
                },
            );
        }
    }

    /// Subscriber side: the owner let subscription `sub_n` of `token` in
    /// (write what it held and the SUBSCRIBE's receipt) or refused it
    /// (ERROR and close). Gone meanwhile: tell the owner it left.
    fn joined(
        &self,
        token: ConnToken,
        sub_n: u32,
        room: &str,
        user: &str,
        result: Result<(), Refusal>,
        receipt: Option<Box<str>>,
    ) {
        let found = self.conns.get(token).and_then(|conn| {
            let key = match conn.borrow().session().subscription(sub_n) {
                Some((r, key)) if r == room => key,
                _ => return None,
            };
            Some((conn, key))
        });
        match (found, result) {
            (None, Ok(())) => self.leave(room, user),
            (None, Err(_)) => {}
            (Some((conn, key)), Ok(())) => {
                {
                    let mut c = conn.borrow_mut();
                    if !self
                        .rooms
                        .borrow_mut()
                        .admitted(&conn, &mut c, room, key, sub_n)
                    {
                        drop(c);
                        return self.leave(room, user);
                    }
                    self.conns.queue_flush(&conn, &mut c);
                }
                if let Some(r) = receipt {
                    self.write_receipt(token, &r);
                }
            }
            (Some(_), Err(why)) => {
                self.refuse_for(token, receipt.as_deref(), &why);
            }
        }
    }

    /// `user` is no longer a member of `room`: end their subscriptions to
    /// it on this shard, silently (a later SEND gets the ERROR).
    fn evict(&self, room: &str, user: &str) {
        let subs = self.rooms.borrow().joined_of(room, user);
        for (conn, key, sub_n) in subs {
            conn.borrow_mut().session_out().0.forget_subscription(sub_n);
            self.unsubscribe(room, key, user);
        }
    }

    /// An API call to change a room's members: to the room's owner.
    fn member_request(&self, req: MemberReq) {
        let owner = owner_of(&req.room, self.nshards);
        if owner == self.id {
            self.work.borrow_mut().push_back(Work::Member(req));
        } else {
            self.peers.send(owner, ShardMsg::Member(req));
        }
    }

    /// `GET /api/rooms/{room}/online`: answered by the room's owner.
    fn online_request(&self, req: OnlineReq) {
        let owner = owner_of(&req.room, self.nshards);
        if owner == self.id {
            self.online(req);
        } else {
            self.peers.send(owner, ShardMsg::Online(req));
        }
    }

    /// Owner side of `GET /api/rooms/{room}/online`.
    fn online(&self, req: OnlineReq) {
        let online = self.rooms.borrow().online(
            &req.room,
            req.user.as_deref(),
            crate::api::MAX_ONLINE_LISTED,
        );
        self.durable.answer_http(
            req.shard,
            req.conn,
            crate::api::online_answer(&req.room, online),
        );
    }

    /// Owner side of `PUT|DELETE /api/rooms/{room}/members/{user}`:
    /// change the loaded members at once, end a removed member's
    /// subscriptions everywhere, store the change and answer once stored.
    fn member(&self, req: MemberReq) {
        let mut rooms = self.rooms.borrow_mut();
        if !rooms.members_loaded(&req.room) {
            drop(rooms);
            self.durable.wait_for_members(Work::Member(req));
            return;
        }
        let max = self.cfg.max_room_members;
        let changed = rooms.change_member(&req.room, &req.user, req.add, max);
        drop(rooms);
        if changed == Some(true) && !req.add {
            for p in (0..self.nshards).filter(|&p| p != self.id) {
                self.peers.send(
                    p,
                    ShardMsg::Evict {
                        room: req.room.clone(),
                        user: req.user.clone(),
                    },
                );
            }
            self.evict(&req.room, &req.user);
        }
        self.durable.member_change(req, changed.is_some(), max);
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
            Work::Join(req) => self.join(req),
            Work::Member(req) => self.member(req),
        }
    }

    /// Owner side: give the message its place, send it once to every shard
    /// with subscribers, deliver it here, hand it to the writer; the
    /// publisher's RECEIPT follows the commit (or, with persistence off,
    /// goes now).
    fn sequence(&self, draft: Draft, origin: Origin, confirm: Option<Confirm>) {
        let mut rooms = self.rooms.borrow_mut();
        if self.invite_only(&draft.room)
            && rooms.is_member(&draft.room, &draft.sender) == Some(false)
        {
            drop(rooms);
            let (shard, conn) = origin.split(self.id);
            let receipt = receipt_of(confirm);
            self.refuse_at(shard, conn, receipt, Refusal::NotMember(draft.room));
            return;
        }
        if self.cluster.is_some() {
            let Some(floor) = rooms.last_given(&draft.room) else {
                drop(rooms);
                return self.durable.wait_for_room(Work::Publish {
                    draft,
                    origin,
                    confirm,
                });
            };
            drop(rooms);
            return self.cluster_publish(floor, draft, origin, confirm);
        }
        let (seq, targets) = match rooms.sequence(&draft.room) {
            Seq::Given(seq, targets, reserve) => {
                if let Some(upto) = reserve {
                    self.durable.reserve(&draft.room, upto);
                }
                (seq, targets)
            }
            Seq::Unknown | Seq::Exhausted(_) if !self.durable.persistent() => {
                unreachable!("without a store every room starts at 1 with no limit")
            }
            Seq::Unknown => {
                drop(rooms);
                self.durable.wait_for_room(Work::Publish {
                    draft,
                    origin,
                    confirm,
                });
                return;
            }
            Seq::Exhausted(reserve) => {
                drop(rooms);
                if let Some(upto) = reserve {
                    self.durable.reserve(&draft.room, upto);
                }
                // Joins what waits for the reservation.
                self.durable.wait_for_room(Work::Publish {
                    draft,
                    origin,
                    confirm,
                });
                return;
            }
        };
        crate::metrics::local(|m| m.published.inc());
        let msg = Sequenced {
            draft,
            seq,
            timestamp_ms: now_ms(),
            sequenced_at: Some(std::time::Instant::now()),
        };
        for p in targets {
            self.peers.send(p, ShardMsg::Deliver(msg.clone()));
        }
        rooms.deliver_local(&msg, &self.conns);
        let push = self.push_job(&mut rooms, &msg.draft, seq);
        drop(rooms);
        let (shard, conn) = origin.split(self.id);
        let owed = confirm.map(|what| Owed { shard, conn, what });
        if self.durable.persistent() {
            self.durable
                .persist(WriterItem::msg(msg, Tag { owed, push }));
        } else if let Some(owed) = owed {
            match owed.what {
                Confirm::Receipt(r) if shard == self.id => self.write_receipt(conn, &r),
                Confirm::Receipt(receipt) => {
                    self.peers.send(shard, ShardMsg::Receipt { conn, receipt })
                }
                // Sessions confirm transactions at COMMIT when nothing is
                // stored; no group is ever formed.
                Confirm::Group(_) => debug_assert!(false, "group confirm without a store"),
            }
        }
    }

    /// The push a stored message owes its room's away members (push on,
    /// someone away besides the sender).
    fn push_job(&self, rooms: &mut Rooms, draft: &Draft, seq: u64) -> Option<Box<PushJob>> {
        self.push.as_ref()?;
        let away = rooms.away(&draft.room)?;
        if away.len() == 1 && away[0] == draft.sender {
            return None;
        }
        Some(Box::new(PushJob {
            room: draft.room.clone(),
            seq,
            sender: draft.sender.clone(),
            text: PushJob::text_of(&draft.body),
            away,
        }))
    }

    /// Owner side: fix where the replay ends (the last seq given so far;
    /// later ones reach the subscriber live) and read it once everything
    /// up to there is committed.
    fn start_replay(&self, req: ReplayReq) {
        let Some(Work::Replay(req)) = self.cluster_park(Work::Replay(req)) else {
            return; // waits for the room to be live in the cluster
        };
        let mut rooms = self.rooms.borrow_mut();
        let Some(mut upto) = rooms.last_given(&req.room) else {
            drop(rooms);
            self.durable.wait_for_room(Work::Replay(req));
            return;
        };
        // Cluster mode: the last seq delivered here from the room's channel.
        if let Some(last) = self.cluster_last(&req.room) {
            upto = last;
        }
        let refused =
            self.invite_only(&req.room) && rooms.is_member(&req.room, &req.user) != Some(true);
        if refused {
            // Refused (or removed since): an empty replay, so the
            // subscription's hold ends; the refusal or eviction follows.
            upto = 0;
        }
        drop(rooms);
        let start = match req.from {
            ReplayFrom::Since(n) => Start::After(n),
            ReplayFrom::Last(k) => Start::LastK(k),
        };
        if self.cluster.is_some() && !refused {
            return self.cluster_replay(req, start, upto);
        }
        self.replay(req, start, upto);
    }

    /// Replay `req` from `start` up to `upto`. A subscriber on another
    /// shard also gets a mark over the mesh, behind the live messages up
    /// to `upto` sent there before: the store's pages come on another
    /// channel and could overtake them, and its hold ends only once both
    /// are in (else one the client has seen could get through). With
    /// nothing to read, the mark is the whole answer.
    fn replay(&self, req: ReplayReq, start: Start, upto: u64) {
        if req.shard == self.id {
            return self.durable.start_replay(req, start, upto);
        }
        let empty = durable::nothing_to_replay(start, upto);
        let ReplayReq { conn, sub_n, .. } = req;
        self.peers.send(
            req.shard,
            ShardMsg::Replayed {
                conn,
                sub_n,
                upto,
                empty,
            },
        );
        if !empty {
            self.durable.start_replay(req, start, upto);
        }
    }

    /// The local connection, room and key of subscription `sub_n` of
    /// `token`, for what its replay brings (`None`: gone or closing, or
    /// unsubscribed meanwhile).
    fn replay_target(&self, token: ConnToken, sub_n: u32) -> Option<(ConnRef, Box<str>, usize)> {
        let conn = self.conns.get(token)?;
        let c = conn.borrow();
        if !c.takes_output() {
            return None;
        }
        let (room, key) = c.session().subscription(sub_n)?;
        let room: Box<str> = room.into();
        drop(c);
        Some((conn, room, key))
    }

    /// The owner's mark for a replay (`ShardMsg::Replayed`); `empty`: it
    /// is the whole replay, the last (empty) page too.
    fn on_replay_mark(&self, token: ConnToken, sub_n: u32, upto: u64, empty: bool) {
        let Some((conn, room, key)) = self.replay_target(token, sub_n) else {
            return;
        };
        let mut c = conn.borrow_mut();
        let mut rooms = self.rooms.borrow_mut();
        rooms.replay_marked(&conn, &mut c, &room, key, sub_n, upto);
        if empty {
            rooms.replay_page(&conn, &mut c, &room, key, sub_n, upto, &Page::default());
        }
        drop(rooms);
        self.conns.queue_flush(&conn, &mut c);
    }

    /// A room's last stored seq was read (or could not be): run what waited.
    fn room_loaded(&self, room: &str, result: Result<Loaded, StoreError>) {
        let works = self.durable.room_loaded(room);
        match result {
            Ok(loaded) => {
                self.rooms.borrow_mut().loaded(
                    room,
                    loaded.seqs,
                    loaded.members,
                    self.invite_only(room),
                );
                for w in works {
                    self.run_one(w);
                }
            }
            Err(e) => {
                error!(room, "cannot read the room's last seq: {e}");
                let why = Refusal::HistoryUnavailable(Arc::new(e));
                for w in works {
                    let (shard, conn, receipt) = match w {
                        Work::Publish {
                            origin, confirm, ..
                        } => {
                            let (shard, conn) = origin.split(self.id);
                            let receipt = receipt_of(confirm);
                            (shard, conn, receipt)
                        }
                        Work::Replay(req) => (req.shard, req.conn, None),
                        Work::Join(req) => (req.shard, req.conn, req.receipt),
                        Work::Member(req) => {
                            self.durable.member_failed(req, &e_text(&why));
                            continue;
                        }
                    };
                    self.refuse_at(shard, conn, receipt, why.clone());
                }
            }
        }
    }

    /// Subscriber side of a replay: write a page; ask for the next or, at
    /// the end, release the live messages held meanwhile.
    fn on_replay_page(
        &self,
        token: ConnToken,
        sub_n: u32,
        upto: u64,
        result: Result<Page, StoreError>,
    ) {
        let Some((conn, room, key)) = self.replay_target(token, sub_n) else {
            return;
        };
        let mut c = conn.borrow_mut();
        let page = match result {
            Ok(p) => p,
            Err(e) => {
                c.out_mut().error(
                    "replay failed",
                    None,
                    &[],
                    &format!("stored messages could not be read: {e}"),
                    CloseCode::Error,
                );
                self.conns.queue_flush(&conn, &mut c);
                return;
            }
        };
        let done = self
            .rooms
            .borrow_mut()
            .replay_page(&conn, &mut c, &room, key, sub_n, upto, &page);
        self.conns.queue_flush(&conn, &mut c);
        drop(c);
        if let PageDone::More(after) = done {
            self.durable
                .next_replay_page(&self.conns, token, sub_n, after, upto);
        }
    }

    // ---- answers to connections ------------------------------------------

    /// A RECEIPT owed to local connection `token`.
    fn write_receipt(&self, token: ConnToken, receipt: &str) {
        self.answer(token, |session, out| session.deferred_receipt(out, receipt));
    }

    /// One SEND of a transaction is stored; answer the COMMIT after the last.
    fn group_done(&self, token: ConnToken, group: u32) {
        self.answer(token, |session, out| session.group_part_done(group, out));
    }

    /// Let local connection `token`'s session write an answer, if the
    /// connection still takes output, and have it flushed.
    fn answer(&self, token: ConnToken, f: impl FnOnce(&mut Session, &mut Out)) {
        let Some(conn) = self.conns.get(token) else {
            return;
        };
        {
            let mut c = conn.borrow_mut();
            if !c.takes_output() {
                return;
            }
            let (session, out) = c.session_out();
            f(session, out);
        }
        self.conns.mark_dirty(&conn);
    }

    /// ERROR (answering `receipt`, if any) and close a local connection.
    fn refuse(&self, token: ConnToken, receipt: Option<&str>, message: &str, detail: &str) {
        let Some(conn) = self.conns.get(token) else {
            return;
        };
        conn.borrow_mut()
            .out_mut()
            .error(message, receipt, &[], detail, CloseCode::Error);
        self.conns.mark_dirty(&conn);
    }

    /// ERROR for `why` (answering `receipt`, if any) and close a local
    /// connection: a policy close (1008) for a refusal of who the client
    /// is, an internal error (1011) for the server's own failure.
    fn refuse_for(&self, token: ConnToken, receipt: Option<&str>, why: &Refusal) {
        let Some(conn) = self.conns.get(token) else {
            return;
        };
        let (message, detail) = why.error_text();
        let code = match why {
            Refusal::HistoryUnavailable(_) | Refusal::ClusterRefused(_) => CloseCode::Error,
            Refusal::NotMember(_) | Refusal::RoomFull(_) => CloseCode::Policy,
        };
        conn.borrow_mut()
            .out_mut()
            .error(message, receipt, &[], &detail, code);
        self.conns.mark_dirty(&conn);
    }

    /// ERROR and close connection `conn` of shard `shard`.
    fn refuse_at(&self, shard: usize, conn: ConnToken, receipt: Option<Box<str>>, why: Refusal) {
        if shard == self.id {
            self.refuse_for(conn, receipt.as_deref(), &why);
        } else {
            self.peers
                .send(shard, ShardMsg::Refuse { conn, receipt, why });
        }
    }

    // ---- messages from peers and from plain threads ----------------------

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
            ShardMsg::Deliver(msg) => self.rooms.borrow_mut().deliver_local(&msg, &self.conns),
            ShardMsg::Receipt { conn, receipt } => self.write_receipt(conn, &receipt),
            ShardMsg::Refuse { conn, receipt, why } => {
                self.refuse_for(conn, receipt.as_deref(), &why);
            }
            ShardMsg::Interest {
                room,
                change,
                reply,
            } => {
                self.rooms.borrow_mut().interest(&room, from, change);
                if change == Interest::Remove {
                    self.cluster_check(&room);
                }
                if let Some((conn, receipt)) = reply {
                    self.peers.send(from, ShardMsg::Receipt { conn, receipt });
                }
            }
            ShardMsg::Replay(req) => self.work.borrow_mut().push_back(Work::Replay(req)),
            ShardMsg::Replayed {
                conn,
                sub_n,
                upto,
                empty,
            } => self.on_replay_mark(conn, sub_n, upto, empty),
            ShardMsg::Join(req) => self.work.borrow_mut().push_back(Work::Join(req)),
            ShardMsg::Member(req) => self.work.borrow_mut().push_back(Work::Member(req)),
            ShardMsg::Online(req) => self.online(req),
            ShardMsg::Joined {
                conn,
                sub_n,
                room,
                user,
                result,
                receipt,
            } => self.joined(conn, sub_n, &room, &user, result, receipt),
            ShardMsg::Leave { room, user } => self.left(&room, &user),
            ShardMsg::Evict { room, user } => self.evict(&room, &user),
            ShardMsg::Quiesce => self.life.peer_quiesced(),
            ShardMsg::Adopt {
                fd,
                tls,
                inbound,
                outbound,
            } => {
                let sock = Sock::adopt(fd, tls);
                if self.life.stopping() {
                    return; // shutting down: dropping the socket closes it
                }
                if self.conns.count() >= self.cfg.max_connections_per_shard() {
                    // Moved connections count against the owner's share too.
                    crate::metrics::local(|m| {
                        m.refused(
                            crate::metrics::Transport::Http,
                            crate::metrics::Refused::Full,
                        )
                    });
                    sock.refuse(&crate::http::server_full());
                    return;
                }
                self.register(sock, Phase::Ws, inbound, &outbound);
            }
        }
    }

    /// Handle one message from a plain thread (writer, reader pool, main).
    fn on_external(self: &Rc<Self>, msg: External) {
        match msg {
            External::Committed { owed, error } => {
                for (token, what) in owed {
                    match (&error, what) {
                        (None, Confirm::Receipt(r)) => self.write_receipt(token, &r),
                        (None, Confirm::Group(g)) => self.group_done(token, g),
                        (Some(e), what) => {
                            let receipt = match what {
                                Confirm::Receipt(r) => Some(r),
                                Confirm::Group(g) => self
                                    .conns
                                    .get(token)
                                    .and_then(|c| c.borrow_mut().session_out().0.take_group(g)),
                            };
                            self.refuse(
                                token,
                                receipt.as_deref(),
                                "message not stored",
                                &format!("the database refused the message: {e}"),
                            );
                        }
                    }
                }
            }
            External::RoomLoaded { room, result } => self.room_loaded(&room, result),
            External::ReplayPage {
                conn,
                sub_n,
                upto,
                result,
            } => self.on_replay_page(conn, sub_n, upto, result),
            External::Http { conn, response } => {
                if let Some(conn) = self.conns.get(conn) {
                    conn.borrow_mut().answer_http(&response);
                    self.conns.mark_dirty(&conn);
                }
            }
            External::Scrape { reply } => {
                let _ = reply.try_send(self.snapshot());
            }
            External::Cluster(ev) => self.on_cluster(ev),
            External::Tls(config) => {
                *self.tls.borrow_mut() = Some(crate::tls::for_shard(&config));
            }
            External::Stop { flushed } => self.stop(flushed),
            External::Close { closed } => lifecycle::close_all(self, closed),
            #[cfg(feature = "fault-injection")]
            External::Panic => panic!("fault injection: shard {} panics", self.id),
        }
    }

    /// This shard's counters, and its gauges read now (one walk over its
    /// connections per scrape; a scrape costs the server 1.3-2 ms of CPU in
    /// all, a third of it on the shards, `bench/results/2026-12-03-scrape`).
    fn snapshot(&self) -> ShardSnapshot {
        let mut g = Gauges::default();
        self.conns.for_each(|_, c| {
            g.connections[c.phase().transport() as usize] += 1;
            g.sessions += u64::from(c.session().is_connected());
        });
        {
            let rooms = self.rooms.borrow();
            g.subscriptions = rooms.local_count() as u64;
            g.rooms_owned = rooms.owned_count() as u64;
        }
        g.mesh_queued = self.peers.queued() as u64;
        g.paused_readers = self.conns.paused_count() as u64;
        g.rooms_watched = self.cluster.as_ref().map_or(0, |c| c.watched_count()) as u64;
        crate::metrics::local(|m| m.snapshot(self.id, g))
    }

    /// Why this server should not get new clients now, if so: starting,
    /// draining, or publishers paused on a full writer queue.
    fn not_ready(&self) -> Option<&'static str> {
        if let Some(why) = self.ready.not_ready() {
            return Some(why);
        }
        if self.life.stopping() {
            return Some("draining: the server is shutting down");
        }
        if self.durable.writer_full() {
            return Some("the writer's queue is full: publishers are paused");
        }
        if self.cluster.as_ref().is_some_and(|c| c.down()) {
            return Some("a Redis instance of the cluster is unreachable");
        }
        None
    }

    /// Shutdown, first step: stop accepting and reading; tell every peer
    /// (after all we sent it).
    fn stop(&self, flushed: std::sync::mpsc::Sender<usize>) {
        self.life.stop(flushed);
        self.conns.pause_all();
        for p in (0..self.nshards).filter(|&p| p != self.id) {
            self.peers.send(p, ShardMsg::Quiesce);
        }
        self.check_quiesced();
    }

    /// Once every peer said `Quiesce` (so every message they sent us is
    /// sequenced), report after the writer has committed all we gave it.
    fn check_quiesced(&self) {
        if self.cluster.as_ref().is_some_and(|c| c.busy()) {
            return; // publishes still wait for Redis's seqs
        }
        if let Some(flushed) = self.life.quiesced(self.nshards - 1) {
            // Nothing more is sequenced: give back the seqs reserved
            // beyond the last given, so the rooms continue without a gap.
            self.durable.release(self.rooms.borrow().given());
            let id = self.id;
            self.durable.after_commits(move || {
                let _ = flushed.send(id);
            });
        }
    }

    /// Wait on this shard's doorbell; on each ring take the inbox (commit
    /// and read results, shutdown steps), hand held items to the writer,
    /// take every queued batch from every peer (unless the writer's queue
    /// is full: then peers are held back too), then let blocked senders
    /// retry.
    async fn receive(self: Rc<Self>, bell: OwnedFd) {
        use futures_lite::AsyncReadExt;
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: the read end of this shard's doorbell socketpair, owned
        // by this task from here on.
        let mut bell = unsafe { glommio::net::UnixStream::from_raw_fd(bell.into_raw_fd()) };
        let mut buf = [0u8; 64];
        loop {
            match bell.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    warn!(shard = self.id, "doorbell closed");
                    return;
                }
                Ok(_) => {}
            }
            self.peers.clear_bell();
            while let Ok(msg) = self.inbox.try_recv() {
                self.on_external(msg);
            }
            if self.durable.drain_overflow() {
                self.maybe_resume();
            }
            self.peers.drain(
                |from, batch| {
                    for msg in batch {
                        self.on_peer(from, msg);
                    }
                    // Sequence now, so a full writer queue stops the drain.
                    self.run_work();
                },
                // Not while the writer's or Redis's queue holds items
                // back: publishes from peers would pile up here.
                || {
                    !self.durable.congested()
                        && !self.cluster.as_ref().is_some_and(|c| c.congested())
                },
                PEER_BATCHES_PER_TURN,
            );
            self.after_io();
            self.check_quiesced();
            self.peers.retry_sends();
            // A peer rings us, too, when it has handled what we were over
            // our bytes in flight for.
            self.maybe_resume();
            // Rung again meanwhile, the doorbell reads at once and this
            // task would never wait: let the flush and the connections
            // run between two rounds.
            futures_lite::future::yield_now().await;
        }
    }
}

/// The RECEIPT a refused SEND still owes (a transaction's part owes none:
/// its COMMIT is answered by the ERROR).
fn receipt_of(confirm: Option<Confirm>) -> Option<Box<str>> {
    match confirm {
        Some(Confirm::Receipt(r)) => Some(r),
        _ => None,
    }
}

/// The text of a refusal, for an HTTP answer.
fn e_text(why: &Refusal) -> String {
    why.error_text().1
}

/// Batches taken from each peer per turn of the receive task: a peer that
/// keeps its queue to us full would otherwise hold this shard's receive
/// task (and so the shard) for as long as it keeps up. A batch is one
/// peer flush, up to thousands of messages.
const PEER_BATCHES_PER_TURN: usize = 8;

/// Run `fut` to completion on a small glommio executor (unit tests of the
/// parts that need a real socket).
#[cfg(test)]
fn on_test_executor<F: std::future::Future<Output = ()>>(fut: F) {
    glommio::LocalExecutorBuilder::default()
        .io_memory(512 * 1024)
        .make()
        .unwrap()
        .run(fut);
}

/// The session's broker for one connection of this shard.
struct ConnBroker<'a> {
    shard: &'a Shard,
    /// The connection (borrowed by its session while this is used: the
    /// broker only clones the handle, never borrows it).
    me: &'a ConnRef,
    token: ConnToken,
    /// What it used of the connection's rates: publishes and
    /// subscription changes, which are also all the work it queues for a
    /// peer shard or the store (a read that queued none needs no pause
    /// when those queues are full).
    used: Cell<Used>,
}

impl<'a> ConnBroker<'a> {
    fn new(shard: &'a Shard, me: &'a ConnRef, token: ConnToken) -> ConnBroker<'a> {
        ConnBroker {
            shard,
            me,
            token,
            used: Cell::new(Used::default()),
        }
    }

    /// Record a use of the connection's rates.
    fn count(&self, f: impl FnOnce(&mut Used)) {
        let mut used = self.used.get();
        f(&mut used);
        self.used.set(used);
    }
}

impl Broker for ConnBroker<'_> {
    fn limits(&self) -> &SessionLimits {
        &self.shard.session_limits
    }

    fn auth(&self) -> &crate::auth::Authenticator {
        &self.shard.auth
    }

    fn persistent(&self) -> bool {
        self.shard.durable.persistent()
    }

    fn session_id(&self) -> String {
        format!("{}-{}", self.shard.id, self.token.serial)
    }

    fn publish(&self, draft: Draft, confirm: Option<Confirm>) {
        self.count(|u| u.published = u.published.saturating_add(1));
        self.shard.publish(draft, self.token, confirm);
    }

    fn subscribe(&self, sub: NewSub<'_>) -> Subscribed {
        self.count(|u| u.sub_changes = u.sub_changes.saturating_add(1));
        self.shard.subscribe(self.me, self.token, sub)
    }

    fn unsubscribe(&self, room: &str, key: usize, user: &str) {
        self.count(|u| u.sub_changes = u.sub_changes.saturating_add(1));
        self.shard.unsubscribe(room, key, user);
    }
}
