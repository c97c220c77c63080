//! A shard's side of persistence: handing sequenced messages to the SQLite
//! writer without ever waiting for it (holding them, and pausing readers,
//! while its queue is full), reading a room's last seq before its first
//! message, and the reads of replays.
//!
//! Runs on its shard only. Everything that crosses to the store's threads
//! is a `try_send` (or a job that answers through the shard's inbox).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Sender, TrySendError};
use tracing::error;

use super::Work;
use super::conns::Conns;
use super::msg::{External, Loaded, MemberReq, ReplayReq, ShardHandle, Tag};
use crate::conn::ConnToken;
use crate::store::members::load_members;
use crate::store::pool::{Busy, Pool, ReadJob};
use crate::store::writer::{Item, Op};
use crate::store::{Page, Range, after_last_k, load_room, read_page, release_seqs, reserve_seqs};

/// What a shard hands the writer: a message with the confirmation owed
/// for it and its push, or a job to run once everything before it is
/// committed.
pub(crate) type WriterItem = Item<Tag>;

/// A shard's links to the store (all of them `Send`, shared by shards).
#[derive(Clone)]
pub(crate) struct StoreLink {
    pub writer: Sender<WriterItem>,
    pub pool: Pool,
    /// `want_space[i]`: shard `i` found the writer's queue full; the writer
    /// rings it after its next commit.
    pub want_space: Arc<[AtomicBool]>,
}

/// A replay page that waits for its subscriber's output to drain (or for
/// a free reader).
struct StalledReplay {
    conn: ConnToken,
    sub_n: u32,
    /// The last seq written so far, and the last the replay covers.
    after: u64,
    upto: u64,
}

/// Where a replay's first page starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// After this seq (`x-since-seq`, and every later page).
    After(u64),
    /// At the newest `k` stored messages up to the replay's end
    /// (`x-replay-last`; seqs may skip numbers, so the reader counts them).
    LastK(u64),
}

/// A replay from `start` up to `upto` reads nothing: the subscriber has
/// seen it all, or the room has nothing yet.
pub(crate) fn nothing_to_replay(start: Start, upto: u64) -> bool {
    matches!(start, Start::After(after) if after >= upto) || upto == 0
}

/// Work that may wait for rooms being loaded or reserving seqs, in all
/// rooms of a shard, before the shard stops reading its clients.
const MAX_WAITING_WORK: usize = 65_536;

/// Sizes of replay pages.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplayLimits {
    /// `replay_page`: messages per page.
    pub page: usize,
    /// `max_outbound_bytes`: a page is at most a quarter of it, and the
    /// next page is read once the output is below half of it.
    pub max_outbound_bytes: usize,
}

pub(super) struct Durable {
    id: usize,
    /// The SQLite writer and readers; `None` with `--persist false`.
    store: Option<StoreLink>,
    /// Every shard's inbox (index = shard), for jobs that answer a shard.
    handles: Arc<[ShardHandle]>,
    limits: ReplayLimits,
    /// Items for the writer that did not fit its queue yet, in order. While
    /// any wait, this shard reads neither its connections nor its peers.
    overflow: RefCell<VecDeque<WriterItem>>,
    /// Rooms being loaded or reserving seqs, with the work that waits.
    loading: RefCell<HashMap<Box<str>, Vec<Work>>>,
    /// Work items waiting in `loading`, in all rooms.
    waiting: std::cell::Cell<usize>,
    /// Seqs reserved at a time (`seq_reserve`).
    block: u64,
    /// `max_room_members`: members loaded with a room at most.
    max_members: usize,
    stalled: RefCell<Vec<StalledReplay>>,
}

impl Durable {
    pub fn new(
        id: usize,
        store: Option<StoreLink>,
        handles: Arc<[ShardHandle]>,
        limits: ReplayLimits,
        block: u64,
        max_members: usize,
    ) -> Durable {
        Durable {
            id,
            store,
            handles,
            limits,
            overflow: RefCell::default(),
            loading: RefCell::default(),
            waiting: std::cell::Cell::new(0),
            block,
            max_members,
            stalled: RefCell::default(),
        }
    }

    /// Whether messages are stored (and RECEIPTs wait for the commit).
    pub fn persistent(&self) -> bool {
        self.store.is_some()
    }

    // ---- the writer's queue ---------------------------------------------

    /// Hand an item to the writer, in order with everything before it; if
    /// its queue is full, hold it (this shard then stops reading until the
    /// writer has made room: back-pressure, never loss).
    pub fn persist(&self, item: WriterItem) {
        let Some(store) = &self.store else { return };
        let mut held = self.overflow.borrow_mut();
        if !held.is_empty() {
            held.push_back(item);
            return;
        }
        let item = match store.writer.try_send(item) {
            Ok(()) => return,
            Err(TrySendError::Full(item)) => {
                store.want_space[self.id].store(true, Ordering::SeqCst);
                // The writer may have taken a batch in between.
                match store.writer.try_send(item) {
                    Ok(()) => return,
                    Err(TrySendError::Full(item)) => item,
                    Err(TrySendError::Disconnected(_)) => {
                        error!("the SQLite writer is gone");
                        return;
                    }
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                error!("the SQLite writer is gone");
                return;
            }
        };
        held.push_back(item);
    }

    /// Move held items to the writer as far as its queue takes them;
    /// whether none is held any more (readers may resume).
    pub fn drain_overflow(&self) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        let mut held = self.overflow.borrow_mut();
        if held.is_empty() {
            return false;
        }
        let mut asked = false;
        while let Some(item) = held.pop_front() {
            match store.writer.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(item)) if !asked => {
                    // Ask to be rung, then try once more: the writer may
                    // have taken its last batch, and looked at the flag,
                    // between our try and the flag (it would never ring).
                    held.push_front(item);
                    store.want_space[self.id].store(true, Ordering::SeqCst);
                    asked = true;
                }
                Err(TrySendError::Full(item)) => {
                    held.push_front(item);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    error!("the SQLite writer is gone");
                    held.clear();
                }
            }
        }
        held.is_empty()
    }

    /// Whether items wait for room in the writer's queue (then this shard
    /// reads neither its connections nor its peers' batches), or too much
    /// work waits for rooms being loaded.
    pub fn congested(&self) -> bool {
        !self.overflow.borrow().is_empty() || self.waiting.get() >= MAX_WAITING_WORK
    }

    /// Whether the writer's queue is full or this shard holds items back
    /// for it: publishers are paused (`/readyz`).
    pub fn writer_full(&self) -> bool {
        !self.overflow.borrow().is_empty()
            || self.store.as_ref().is_some_and(|s| s.writer.is_full())
    }

    /// Run `job` on the writer's thread once everything handed to it so
    /// far is committed (at once without a store).
    pub fn after_commits(&self, job: impl FnOnce() + Send + 'static) {
        if self.store.is_some() {
            self.persist(Item::After(Box::new(move |_| job())));
        } else {
            job();
        }
    }

    // ---- rooms whose last seq is not known yet --------------------------

    /// Park `work` until its room is loaded: where its seqs continue is
    /// read, and the next block reserved, by a writer job, so it sees every
    /// commit before it and never runs on this shard. If the room is
    /// already loading (or reserving), the work joins what waits.
    pub fn wait_for_room(&self, work: Work) {
        let block = self.block;
        let max = self.max_members;
        self.park(work, move |conn, room| {
            let seqs = load_room(conn, room, block)?;
            Ok(Loaded {
                seqs: Some(seqs),
                members: Some(load_members(conn, room, max)?),
            })
        });
    }

    /// Park `work` until `room`'s members are loaded (a subscription to let
    /// in, an API change): only read, by a writer job so it sees every
    /// member change queued before it, and nothing is written (a room that
    /// only has subscribers never reserves seqs). Joins a load under way.
    pub fn wait_for_members(&self, work: Work) {
        let max = self.max_members;
        self.park(work, move |conn, room| {
            Ok(Loaded {
                seqs: None,
                members: Some(load_members(conn, room, max)?),
            })
        });
    }

    /// Park `work` in its room's wait list; if the room is not loading
    /// already, run `load` as a writer job and answer `RoomLoaded`.
    fn park(
        &self,
        work: Work,
        load: impl FnOnce(&rusqlite::Connection, &str) -> Result<Loaded, crate::store::StoreError>
        + Send
        + 'static,
    ) {
        let room: Box<str> = work.room().into();
        self.waiting.set(self.waiting.get() + 1);
        let mut loading = self.loading.borrow_mut();
        if let Some(waiting) = loading.get_mut(&room) {
            waiting.push(work);
            return;
        }
        loading.insert(room.clone(), vec![work]);
        drop(loading);
        let me = self.handles[self.id].clone();
        self.persist(Item::After(Box::new(move |conn| {
            let result = load(conn, &room);
            me.send(External::RoomLoaded { room, result });
        })));
    }

    /// Store that `user` became a member of `room` (`--join open`, by
    /// subscribing); the owner has counted them already.
    pub fn store_member(&self, room: &str, user: &str) {
        self.persist(Item::Op(Box::new(Op::AddMember {
            room: room.into(),
            user: user.into(),
            max: self.max_members,
        })));
    }

    /// Store an API call's member change (`fits`: the loaded members took
    /// it) and answer the HTTP connection that asked once it is stored.
    pub fn member_change(&self, req: MemberReq, fits: bool, max: usize) {
        let to = self.handles[req.shard].clone();
        if !fits {
            to.send(External::Http {
                conn: req.conn,
                response: crate::api::member_answer(&req.room, &req.user, req.add, None, max),
            });
            return;
        }
        self.persist(Item::After(Box::new(move |conn| {
            let response = crate::api::member_write(conn, &req.room, &req.user, req.add, max);
            to.send(External::Http {
                conn: req.conn,
                response,
            });
        })));
    }

    /// Answer HTTP connection `conn` of shard `shard` (a request another
    /// shard routed here).
    pub fn answer_http(&self, shard: usize, conn: ConnToken, response: Vec<u8>) {
        self.handles[shard].send(External::Http { conn, response });
    }

    /// The room of an API member change could not be loaded.
    pub fn member_failed(&self, req: MemberReq, why: &str) {
        self.handles[req.shard].send(External::Http {
            conn: req.conn,
            response: crate::http::json_error(crate::http::Status::InternalServerError, why),
        });
    }

    /// Reserve `room`'s seqs up to `upto` (more than half of its block is
    /// used). Messages of the room that find the reservation used up wait
    /// for it (`wait_for_room` joins them).
    pub fn reserve(&self, room: &str, upto: u64) {
        let mut loading = self.loading.borrow_mut();
        if loading.contains_key(room) {
            return;
        }
        let room: Box<str> = room.into();
        loading.insert(room.clone(), Vec::new());
        drop(loading);
        let me = self.handles[self.id].clone();
        self.persist(Item::After(Box::new(move |conn| {
            let result = reserve_seqs(conn, &room, upto).map(|seqs| Loaded {
                seqs: Some(seqs),
                members: None,
            });
            me.send(External::RoomLoaded { room, result });
        })));
    }

    /// Give back reserved seqs beyond the last given, `(room, last given)`
    /// (rooms freed, or a clean stop), once everything before is queued.
    pub fn release(&self, rooms: Vec<(Box<str>, u64)>) {
        if self.store.is_none() || rooms.is_empty() {
            return;
        }
        self.persist(Item::After(Box::new(move |conn| {
            if let Err(e) = release_seqs(conn, &rooms) {
                // Harmless: those rooms' seqs skip the unused reservation.
                error!("cannot give back reserved seqs: {e}");
            }
        })));
    }

    /// Whether `room` is being loaded or is reserving seqs.
    pub fn is_loading(&self, room: &str) -> bool {
        self.loading.borrow().contains_key(room)
    }

    /// The work that waited for `room`.
    pub fn room_loaded(&self, room: &str) -> Vec<Work> {
        let works = self.loading.borrow_mut().remove(room).unwrap_or_default();
        self.waiting
            .set(self.waiting.get().saturating_sub(works.len()));
        works
    }

    // ---- replay ------------------------------------------------------------

    /// Owner side: replay the room from `start` up to `upto` to the
    /// subscription `req` names, read once everything up to `upto` is
    /// committed.
    pub fn start_replay(&self, req: ReplayReq, start: Start, upto: u64) {
        let ReplayReq {
            room,
            shard,
            conn,
            sub_n,
            ..
        } = req;
        let to = self.handles[shard].clone();
        let Some(store) = &self.store else { return };
        if nothing_to_replay(start, upto) {
            to.send(External::ReplayPage {
                conn,
                sub_n,
                upto,
                result: Ok(Page::default()),
            });
            return;
        }
        let job = self.replay_job(room, conn, sub_n, (start, upto), to);
        let pool = store.pool.clone();
        // A barrier: the read starts once all before it is committed.
        self.persist(Item::After(Box::new(move |_| pool.submit(job))));
    }

    /// The read job for one replay page of subscription `sub_n` of `token`:
    /// stored messages after `after` up to `upto`, at most `replay_page` of
    /// them and a quarter of the subscriber's output budget in bytes,
    /// answered to the subscriber's shard `to`.
    fn replay_job(
        &self,
        room: Box<str>,
        token: ConnToken,
        sub_n: u32,
        (start, upto): (Start, u64),
        to: ShardHandle,
    ) -> ReadJob {
        let limit = self.limits.page;
        let max_bytes = (self.limits.max_outbound_bytes / 4).max(1);
        Box::new(move |conn| {
            let after = match start {
                Start::After(after) => Ok(after),
                Start::LastK(k) => after_last_k(conn, &room, upto, k),
            };
            let result = after.and_then(|after| {
                read_page(conn, &room, Range::After { after, upto }, limit, max_bytes)
            });
            to.send(External::ReplayPage {
                conn: token,
                sub_n,
                upto,
                result,
            });
        })
    }

    /// Subscriber side: ask the pool for the next page once the
    /// subscriber's output has room for it; until then (or while the pool
    /// is busy) the sweeper retries.
    pub fn next_replay_page(
        &self,
        conns: &Conns,
        token: ConnToken,
        sub_n: u32,
        after: u64,
        upto: u64,
    ) {
        let Some(conn) = conns.get(token) else { return };
        let Some(store) = &self.store else { return };
        let (room, ready) = {
            let c = conn.borrow();
            if !c.takes_output() {
                return;
            }
            let Some((room, _)) = c.session().subscription(sub_n) else {
                return;
            };
            (
                Box::<str>::from(room),
                c.out().pending_len() <= self.limits.max_outbound_bytes / 2,
            )
        };
        if ready {
            let to = self.handles[self.id].clone();
            let job = self.replay_job(room, token, sub_n, (Start::After(after), upto), to);
            if store.pool.try_submit(job).is_ok() {
                return;
            }
        }
        self.stalled.borrow_mut().push(StalledReplay {
            conn: token,
            sub_n,
            after,
            upto,
        });
    }

    /// From the sweeper: retry replays that waited for output room.
    pub fn resume_replays(&self, conns: &Conns) {
        let stalled = std::mem::take(&mut *self.stalled.borrow_mut());
        for r in stalled {
            self.next_replay_page(conns, r.conn, r.sub_n, r.after, r.upto);
        }
    }

    // ---- the history API ----------------------------------------------------

    /// Run a read on the reader pool; `Busy` when its queue is full, or
    /// with `--persist false`.
    pub fn submit_read(&self, job: ReadJob) -> Result<(), Busy> {
        match &self.store {
            Some(store) => store.pool.try_submit(job),
            None => Err(Busy),
        }
    }

    /// This shard's inbox, for jobs that answer it.
    pub fn inbox(&self) -> ShardHandle {
        self.handles[self.id].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Draft, Sequenced};

    /// A `Durable` for shard 0 of 1 whose writer queue holds `capacity`
    /// items and is never drained (the test reads it by hand).
    fn durable(capacity: usize) -> (Durable, crossbeam_channel::Receiver<WriterItem>) {
        let dir = crate::store::test_dir("durable");
        drop(crate::store::open(&dir, crate::config::Durability::Off).unwrap());
        let (writer, rx) = crossbeam_channel::bounded(capacity);
        let (inbox, _) = crossbeam_channel::unbounded();
        let mesh = super::super::mesh::build(1, 2).unwrap();
        let handles: Arc<[ShardHandle]> = vec![ShardHandle {
            tx: inbox,
            bell: mesh[0].ringer(),
            alive: Arc::default(),
        }]
        .into();
        let link = StoreLink {
            writer,
            pool: Pool::start(&dir, 1, 16).unwrap(),
            want_space: vec![AtomicBool::new(false)].into(),
        };
        let limits = ReplayLimits {
            page: 10,
            max_outbound_bytes: 1 << 20,
        };
        (Durable::new(0, Some(link), handles, limits, 100, 1000), rx)
    }

    fn msg(seq: u64) -> WriterItem {
        Item::msg(
            Sequenced {
                draft: Draft {
                    room: "r".into(),
                    sender: "a".into(),
                    headers: Vec::new(),
                    body: Box::default(),
                },
                seq,
                timestamp_ms: 0,
                sequenced_at: None,
            },
            Tag::default(),
        )
    }

    fn seq(item: WriterItem) -> u64 {
        match item {
            Item::Msg(p) => p.msg.seq,
            Item::After(_) | Item::Op(_) => 0,
        }
    }

    #[test]
    fn a_full_writer_queue_holds_items_in_order_and_asks_for_space() {
        let (d, rx) = durable(2);
        for s in 1..=5 {
            d.persist(msg(s));
        }
        assert!(d.congested(), "3 items wait for the writer");
        let want = &d.store.as_ref().unwrap().want_space[0];
        assert!(want.load(Ordering::SeqCst), "the writer is asked to ring");
        // The writer takes one: one held item moves in, two stay held.
        assert_eq!(seq(rx.try_recv().unwrap()), 1);
        want.store(false, Ordering::SeqCst); // the writer rang
        assert!(!d.drain_overflow(), "still holding");
        assert!(want.load(Ordering::SeqCst), "asked to be rung again");
        assert!(d.congested());
        // A new item queues behind the held ones, never ahead of them.
        d.persist(msg(6));
        let mut got = Vec::new();
        while d.congested() {
            while let Ok(item) = rx.try_recv() {
                got.push(seq(item));
            }
            d.drain_overflow();
        }
        while let Ok(item) = rx.try_recv() {
            got.push(seq(item));
        }
        assert_eq!(got, [2, 3, 4, 5, 6]);
    }

    #[test]
    fn work_waits_for_its_room_once_per_room() {
        let (d, rx) = durable(16);
        let publish = |room: &str| Work::Publish {
            draft: Draft {
                room: room.into(),
                sender: "a".into(),
                headers: Vec::new(),
                body: Box::default(),
            },
            origin: super::super::Origin::Local(ConnToken { key: 0, serial: 1 }),
            confirm: None,
        };
        d.wait_for_room(publish("a"));
        d.wait_for_room(publish("a"));
        d.wait_for_room(publish("b"));
        // One read of the last seq per room, as a writer job.
        let jobs: Vec<_> = rx.try_iter().collect();
        assert_eq!(jobs.len(), 2);
        assert!(jobs.iter().all(|j| matches!(j, Item::After(_))));
        assert_eq!(d.room_loaded("a").len(), 2);
        assert_eq!(d.room_loaded("a").len(), 0);
        assert_eq!(d.room_loaded("b").len(), 1);
    }

    /// The writer's queue is a crossbeam array channel: its slots are
    /// allocated up front (`persist_queue` of them), so their size is
    /// memory the server holds from the start (README: `--persist-queue`).
    #[test]
    fn writer_queue_slot_stays_small() {
        let size = std::mem::size_of::<super::WriterItem>();
        eprintln!("WriterItem = {size} bytes");
        assert!(size <= 160, "WriterItem grew to {size} bytes");
    }
}
