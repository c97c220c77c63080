//! A shard's side of persistence: handing sequenced messages to the SQLite
//! writer without ever waiting for it (holding them, and pausing readers,
//! while its queue is full), reading a room's last seq before its first
//! message, replays, results from the writer and the reader pool, and the
//! graceful shutdown steps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError};
use tracing::{error, info};

use super::{External, Owed, ReplayFrom, ReplayReq, Shard, ShardHandle, ShardMsg, Work};
use crate::conn::{ConnToken, Phase};
use crate::shard::Confirm;
use crate::store::pool::{Pool, ReadJob};
use crate::store::writer::Item;
use crate::store::{Page, Range, read_page};
use crate::ws::framing::CloseCode;

/// What a shard hands the writer: a message with the confirmation owed
/// for it, or a job to run once everything before it is committed.
pub type WriterItem = Item<Option<Owed>>;

/// A shard's links to the store (all of them `Send`, shared by shards).
#[derive(Clone)]
pub struct StoreLink {
    pub writer: Sender<WriterItem>,
    pub pool: Pool,
    /// `want_space[i]`: shard `i` found the writer's queue full; the writer
    /// rings it after its next commit.
    pub want_space: Arc<[AtomicBool]>,
}

impl Shard {
    /// The read job for one replay page of subscription `sub_n` of `token`:
    /// stored messages after `after` up to `upto`, at most `replay_page` of
    /// them and a quarter of the subscriber's output budget in bytes,
    /// answered to the subscriber's shard `to`.
    fn replay_job(
        &self,
        room: Box<str>,
        token: ConnToken,
        sub_n: u32,
        (after, upto): (u64, u64),
        to: ShardHandle,
    ) -> ReadJob {
        let limit = self.cfg.replay_page;
        let max_bytes = (self.cfg.max_outbound_bytes / 4).max(1);
        Box::new(move |conn| {
            let result = read_page(conn, &room, Range::After { after, upto }, limit, max_bytes)
                .map_err(|e| e.to_string());
            to.send(External::ReplayPage {
                conn: token,
                sub_n,
                upto,
                result,
            });
        })
    }

    /// The reader pool (`None` with `--persist false`).
    pub fn read_pool(&self) -> Option<&Pool> {
        self.store.as_ref().map(|s| &s.pool)
    }

    /// This shard's inbox, for jobs that answer it.
    pub fn inbox_handle(&self) -> ShardHandle {
        self.handles[self.id].clone()
    }

    // ---- the writer's queue ---------------------------------------------

    /// Hand an item to the writer, in order with everything before it; if
    /// its queue is full, hold it (this shard then stops reading until the
    /// writer has made room: back-pressure, never loss).
    pub(super) fn persist(&self, item: WriterItem) {
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

    /// Move held items to the writer as far as its queue takes them.
    pub(super) fn drain_overflow(&self) {
        let Some(store) = &self.store else { return };
        let mut held = self.overflow.borrow_mut();
        if held.is_empty() {
            return;
        }
        while let Some(item) = held.pop_front() {
            match store.writer.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(item)) => {
                    held.push_front(item);
                    store.want_space[self.id].store(true, Ordering::SeqCst);
                    break;
                }
                Err(TrySendError::Disconnected(_)) => {
                    error!("the SQLite writer is gone");
                    held.clear();
                }
            }
        }
        let empty = held.is_empty();
        drop(held);
        if empty {
            self.maybe_resume();
        }
    }

    /// Whether items wait for room in the writer's queue (then this shard
    /// reads neither its connections nor its peers' batches).
    pub fn persist_congested(&self) -> bool {
        !self.overflow.borrow().is_empty()
    }

    // ---- rooms whose last seq is not known yet --------------------------

    /// Park `work` until its room's last stored seq is read. The read goes
    /// through the writer's queue, so it sees every commit before it and
    /// never runs on this shard.
    pub(super) fn wait_for_room(&self, work: Work) {
        let room: Box<str> = work.room().into();
        let mut loading = self.loading.borrow_mut();
        if let Some(waiting) = loading.get_mut(&room) {
            waiting.push(work);
            return;
        }
        loading.insert(room.clone(), vec![work]);
        drop(loading);
        let me = self.handles[self.id].clone();
        self.persist(Item::After(Box::new(move |conn| {
            let result = crate::store::last_seq(conn, &room).map_err(|e| e.to_string());
            me.send(External::RoomLoaded { room, result });
        })));
    }

    fn room_loaded(&self, room: Box<str>, result: Result<u64, String>) {
        let works = self.loading.borrow_mut().remove(&room).unwrap_or_default();
        match result {
            Ok(last) => {
                self.owned_room(&mut self.rooms.borrow_mut(), room).next_seq = Some(last + 1);
                for w in works {
                    self.run_one(w);
                }
            }
            Err(e) => {
                error!(room = &*room, "cannot read the room's last seq: {e}");
                let detail = format!("the room's history could not be read: {e}");
                for w in works {
                    let (shard, conn, receipt) = match w {
                        Work::Publish {
                            origin, confirm, ..
                        } => {
                            let (shard, conn) = origin.split(self.id);
                            let receipt = match confirm {
                                Some(Confirm::Receipt(r)) => Some(r),
                                _ => None,
                            };
                            (shard, conn, receipt)
                        }
                        Work::Replay(req) => (req.shard, req.conn, None),
                    };
                    self.refuse_at(shard, conn, receipt, "history unavailable", &detail);
                }
            }
        }
    }

    /// ERROR and close connection `conn` of shard `shard`.
    fn refuse_at(
        &self,
        shard: usize,
        conn: ConnToken,
        receipt: Option<Box<str>>,
        message: &str,
        detail: &str,
    ) {
        if shard == self.id {
            self.refuse(conn, receipt.as_deref(), message, detail);
        } else {
            self.to_peer(
                shard,
                ShardMsg::Refuse {
                    conn,
                    receipt,
                    message: message.into(),
                    detail: detail.into(),
                },
            );
        }
    }

    // ---- replay ------------------------------------------------------------

    /// Owner side: fix where the replay ends (the last seq given so far;
    /// later ones reach the subscriber live) and read it once everything
    /// up to there is committed.
    pub(super) fn start_replay(&self, req: ReplayReq) {
        let next = self
            .owned_room(&mut self.rooms.borrow_mut(), req.room.clone())
            .next_seq;
        let Some(next) = next else {
            self.wait_for_room(Work::Replay(req));
            return;
        };
        let upto = next - 1;
        let after = match req.from {
            ReplayFrom::Since(n) => n,
            ReplayFrom::Last(k) => upto.saturating_sub(k),
        };
        let to = self.handles[req.shard].clone();
        let Some(store) = &self.store else { return };
        if after >= upto {
            to.send(External::ReplayPage {
                conn: req.conn,
                sub_n: req.sub_n,
                upto,
                result: Ok(Page::default()),
            });
            return;
        }
        let job = self.replay_job(req.room, req.conn, req.sub_n, (after, upto), to);
        let pool = store.pool.clone();
        // A barrier: the read starts once all before it is committed.
        self.persist(Item::After(Box::new(move |_| pool.submit(job))));
    }

    /// Subscriber side: write a page; ask for the next or, at the end,
    /// release the live messages held meanwhile (those past `upto`).
    fn on_replay_page(
        &self,
        token: ConnToken,
        sub_n: u32,
        upto: u64,
        result: Result<Page, String>,
    ) {
        let Some(conn) = self.conn(token) else { return };
        let mut c = conn.borrow_mut();
        if c.out.is_closing() || c.fd < 0 {
            return;
        }
        let Some(state) = c.session.subs.iter().find(|s| s.n == sub_n) else {
            return; // unsubscribed meanwhile
        };
        let (room, key) = (state.room.clone(), state.local_key);
        let page = match result {
            Ok(p) => p,
            Err(e) => {
                c.out.error(
                    "replay failed",
                    None,
                    &[],
                    &format!("stored messages could not be read: {e}"),
                    CloseCode::Error,
                );
                self.queue_flush(&conn, &mut c);
                return;
            }
        };
        let mut rooms = self.rooms.borrow_mut();
        let Some(sub) = rooms.local.get_mut(&room).and_then(|r| r.subs.get_mut(key)) else {
            return;
        };
        if sub.sub_n != sub_n || sub.replay.is_none() || !std::rc::Rc::ptr_eq(&sub.conn, &conn) {
            return;
        }
        let now = Instant::now();
        for m in &page.messages {
            let enc = m.encode(sub.version);
            self.deliver_to(sub, &mut c, &enc, m.seq, now);
        }
        if page.more {
            let after = page.messages.last().map(|m| m.seq).unwrap_or(upto);
            drop(rooms);
            self.queue_flush(&conn, &mut c);
            drop(c);
            self.next_replay_page(token, sub_n, after, upto);
            return;
        }
        let hold = sub.replay.take().expect("checked above");
        for m in hold.held.iter().filter(|m| m.seq > upto) {
            let enc = m.encode(sub.version);
            self.deliver_to(sub, &mut c, &enc, m.seq, now);
        }
        drop(rooms);
        self.queue_flush(&conn, &mut c);
    }

    /// Ask the pool for the next page once the subscriber's output has room
    /// for it; until then (or while the pool is busy) the sweeper retries.
    fn next_replay_page(&self, token: ConnToken, sub_n: u32, after: u64, upto: u64) {
        let Some(conn) = self.conn(token) else { return };
        let Some(store) = &self.store else { return };
        let (room, ready) = {
            let c = conn.borrow();
            if c.out.is_closing() || c.fd < 0 {
                return;
            }
            let Some(state) = c.session.subs.iter().find(|s| s.n == sub_n) else {
                return;
            };
            (
                state.room.clone(),
                c.out.pending_len() <= self.cfg.max_outbound_bytes / 2,
            )
        };
        if ready {
            let job = self.replay_job(room, token, sub_n, (after, upto), self.inbox_handle());
            if store.pool.try_submit(job).is_ok() {
                return;
            }
        }
        self.replay_stalled
            .borrow_mut()
            .push((token, sub_n, after, upto));
    }

    /// From the sweeper: retry replays that waited for output room.
    pub(super) fn resume_replays(&self) {
        let stalled = std::mem::take(&mut *self.replay_stalled.borrow_mut());
        for (token, sub_n, after, upto) in stalled {
            self.next_replay_page(token, sub_n, after, upto);
        }
    }

    // ---- results from plain threads ---------------------------------------

    pub(super) fn on_external(self: &std::rc::Rc<Self>, msg: External) {
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
                                    .conn(token)
                                    .and_then(|c| c.borrow_mut().session.take_group(g)),
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
            External::RoomLoaded { room, result } => self.room_loaded(room, result),
            External::ReplayPage {
                conn,
                sub_n,
                upto,
                result,
            } => self.on_replay_page(conn, sub_n, upto, result),
            External::Http { conn, response } => {
                if let Some(conn) = self.conn(conn) {
                    conn.borrow_mut().out.http(&response);
                    self.mark_dirty(&conn);
                }
            }
            External::Stop { flushed } => self.stop(flushed),
            External::Close { closed } => self.close_all(closed),
        }
    }

    /// One SEND of a transaction is stored; answer the COMMIT after the last.
    fn group_done(&self, token: ConnToken, group: u32) {
        let Some(conn) = self.conn(token) else { return };
        {
            let mut c = conn.borrow_mut();
            let c = &mut *c;
            if c.out.is_closing() || c.fd < 0 {
                return;
            }
            c.session.group_part_done(group, &mut c.out);
        }
        self.mark_dirty(&conn);
    }

    // ---- graceful shutdown --------------------------------------------------

    /// Stop accepting and reading; tell every peer (after all we sent it).
    fn stop(&self, flushed: std::sync::mpsc::Sender<usize>) {
        self.stopping.set(true);
        for n in &self.stop_accept {
            n.notify();
        }
        for (_, conn) in self.conns.borrow().iter() {
            conn.borrow_mut().paused = true;
        }
        for p in (0..self.nshards).filter(|&p| p != self.id) {
            self.to_peer(p, ShardMsg::Quiesce);
        }
        *self.flushed.borrow_mut() = Some(flushed);
        self.check_quiesced();
    }

    /// Once every peer said `Quiesce` (so every message they sent us is
    /// sequenced), report after the writer has committed all we gave it.
    pub(super) fn check_quiesced(&self) {
        if self.quiesced.get() + 1 < self.nshards {
            return;
        }
        let Some(flushed) = self.flushed.borrow_mut().take() else {
            return;
        };
        let id = self.id;
        if self.store.is_some() {
            self.persist(Item::After(Box::new(move |_| {
                let _ = flushed.send(id);
            })));
        } else {
            let _ = flushed.send(id);
        }
    }

    /// Close every client: WebSocket close 1001 ("going away"), an ERROR on
    /// plain STOMP; report once all are gone or the close deadline passed.
    fn close_all(self: &std::rc::Rc<Self>, closed: std::sync::mpsc::Sender<usize>) {
        let conns: Vec<_> = self.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
        for conn in &conns {
            let mut c = conn.borrow_mut();
            match c.phase {
                Phase::Ws => c.out.close(CloseCode::Away, "server shutting down"),
                Phase::Stomp if c.session.connected => c.out.error(
                    "server shutting down",
                    None,
                    &[],
                    "the server is restarting or stopping; reconnect later",
                    CloseCode::Away,
                ),
                _ => c.out.abort = true,
            }
            c.wake();
        }
        for conn in &conns {
            self.mark_dirty(conn);
        }
        self.flush();
        let id = self.id;
        let count = conns.len();
        info!(shard = id, connections = count, "closing clients");
        let deadline = Instant::now() + crate::conn::out::CLOSE_FLUSH_TIMEOUT;
        let shard = self.clone();
        glommio::spawn_local(async move {
            while shard.conn_count() > 0 && Instant::now() < deadline {
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
            let _ = closed.send(id);
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
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
