//! The writer thread: drains a bounded channel of sequenced messages and
//! commits them in batches (group commit): it blocks for the first item,
//! then takes whatever else has queued, up to `max_batch`, and writes them
//! all in one transaction with cached prepared statements. One fsync (with
//! `--durability full`) then covers the whole batch, which is what lets a
//! durable RECEIPT cost far less than one fsync per message.
//!
//! The result of every commit goes to `on_commit` with the callers' tags,
//! in the order the messages were sent, so the owner shards can answer
//! receipts as messages, never by waiting.
//!
//! Besides messages the channel carries [`Item::After`] jobs: they run on
//! this thread with its connection once every item queued before them is
//! committed (and its `on_commit` has run). Owner shards use them as
//! barriers (a replay may read the room only once what was sequenced before
//! it is on disk), to read a room's last sequence number in order with its
//! writes, and retention uses them to delete in step with the inserts.

use std::collections::HashMap;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded};
use rusqlite::{Connection, params};

use super::StoreError;
use crate::message::Sequenced;

/// One sequenced message to store, with the caller's `tag` (who to tell).
#[derive(Debug)]
pub struct Persist<T> {
    pub msg: Sequenced,
    pub tag: T,
}

/// A job for the writer thread, run after everything queued before it.
pub type AfterJob = Box<dyn FnOnce(&mut Connection) + Send>;

/// A small write that needs no answer, batched like messages: every op
/// taken with a batch is applied in one transaction after it (one fsync
/// for all), not one commit each as an `After` job would be.
#[derive(Debug, Clone)]
pub enum Op {
    /// `user` joined `room` by subscribing (`--join open`), unless the
    /// room has `max` members already.
    AddMember {
        room: Box<str>,
        user: Box<str>,
        max: usize,
    },
}

/// What the writer's channel carries.
pub enum Item<T> {
    Msg(Persist<T>),
    After(AfterJob),
    Op(Box<Op>),
}

impl<T> Item<T> {
    pub fn msg(msg: Sequenced, tag: T) -> Item<T> {
        Item::Msg(Persist { msg, tag })
    }
}

/// The outcome of one batch: every tag, in send order. After each job the
/// writer also reports an empty `Committed` (no tags): its queue has room.
#[derive(Debug)]
pub struct Committed<T> {
    pub tags: Vec<T>,
    /// `None` when these messages are on disk; the error otherwise (none
    /// of them was stored, so none may be receipted). A batch that fails
    /// is retried message by message, so an error names only the messages
    /// that could not be stored even alone.
    pub error: Option<StoreError>,
    /// How long the batch's transaction took (its commit and, with
    /// `--durability full`, its fsync); zero for the reports without tags
    /// and for messages retried one by one.
    pub took: std::time::Duration,
}

/// What the writer did, returned when its channel closes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub batches: u64,
    pub messages: u64,
    /// Batches that failed as a whole (then retried message by message).
    pub failed_batches: u64,
    /// Messages that could not be stored even alone.
    pub failed_messages: u64,
    pub largest_batch: usize,
}

/// Run `f` on the writer's thread once everything queued before it is
/// committed, and wait for its result (plain threads only, never a shard).
/// `None`: the writer is gone.
pub fn run_after<T, R>(
    writer: &Sender<Item<T>>,
    f: impl FnOnce(&mut Connection) -> R + Send + 'static,
) -> Option<R>
where
    R: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let job: AfterJob = Box::new(move |conn| {
        let _ = tx.send(f(conn));
    });
    writer.send(Item::After(job)).ok()?;
    rx.recv().ok()
}

/// Start the writer on its own thread. It ends (returning its stats) when
/// every `Sender` is dropped and the queue is drained: all that was queued
/// is committed first, which is what a graceful shutdown needs.
///
/// `idempotent` (cluster mode): a message whose (room, seq) is stored
/// already is skipped instead of failing its batch — nodes store what
/// Redis sequenced, and the same message may reach a node twice (its own
/// publish, then the room's channel; a gap repair).
pub fn spawn<T, F>(
    conn: Connection,
    capacity: usize,
    max_batch: usize,
    idempotent: bool,
    on_commit: F,
) -> std::io::Result<(Sender<Item<T>>, JoinHandle<Stats>)>
where
    T: Send + 'static,
    F: FnMut(Committed<T>) + Send + 'static,
{
    let (tx, rx) = bounded(capacity.max(1));
    let handle = std::thread::Builder::new()
        .name("stampede-writer".into())
        .spawn(move || {
            super::lower_thread_priority();
            run(conn, rx, max_batch.max(1), idempotent, on_commit)
        })?;
    Ok((tx, handle))
}

fn run<T, F>(
    mut conn: Connection,
    rx: Receiver<Item<T>>,
    max_batch: usize,
    idempotent: bool,
    mut on_commit: F,
) -> Stats
where
    F: FnMut(Committed<T>),
{
    let mut stats = Stats::default();
    let mut batch: Vec<Persist<T>> = Vec::with_capacity(max_batch);
    let mut after: Option<AfterJob> = None;
    let mut ops: Vec<Box<Op>> = Vec::new();
    let delay = fault_delay();
    while let Ok(first) = rx.recv() {
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        match first {
            Item::Msg(m) => batch.push(m),
            Item::After(job) => after = Some(job),
            Item::Op(op) => ops.push(op),
        }
        // Take what has queued, up to the cap; a job ends the batch (it
        // must see the batch committed).
        while after.is_none() && batch.len() + ops.len() < max_batch {
            match rx.try_recv() {
                Ok(Item::Msg(m)) => batch.push(m),
                Ok(Item::After(job)) => after = Some(job),
                Ok(Item::Op(op)) => ops.push(op),
                Err(_) => break,
            }
        }
        let batch_was_empty = batch.is_empty();
        if !batch.is_empty() {
            stats.batches += 1;
            stats.largest_batch = stats.largest_batch.max(batch.len());
            let start = std::time::Instant::now();
            match write(&mut conn, &batch, idempotent) {
                Ok(()) => {
                    stats.messages += batch.len() as u64;
                    on_commit(Committed {
                        tags: batch.drain(..).map(|m| m.tag).collect(),
                        error: None,
                        took: start.elapsed(),
                    });
                }
                Err(e) => {
                    stats.failed_batches += 1;
                    tracing::error!(
                        "storing a batch of {} messages failed ({e}); storing them one by one",
                        batch.len()
                    );
                    one_by_one(
                        &mut conn,
                        &mut batch,
                        idempotent,
                        &mut stats,
                        &mut on_commit,
                    );
                }
            }
        }
        if !ops.is_empty() {
            if let Err(e) = apply(&mut conn, &ops) {
                tracing::error!("{} member writes failed: {e}", ops.len());
            }
            ops.clear();
            if batch_was_empty && after.is_none() {
                // Nothing else reports this round: say the queue has room
                // (a shard that found it full waits for this ring).
                on_commit(Committed {
                    tags: Vec::new(),
                    error: None,
                    took: std::time::Duration::ZERO,
                });
            }
        }
        if let Some(job) = after.take() {
            job(&mut conn);
            // An empty report: the queue has room again even when only jobs
            // were in it (a shard waiting for room learns of it here).
            on_commit(Committed {
                tags: Vec::new(),
                error: None,
                took: std::time::Duration::ZERO,
            });
        }
    }
    stats
}

/// Fault injection (test builds only, see `server.rs`): a writer slowed by
/// `STAMPEDE_FAULT_WRITER_DELAY_MS` per round, so tests can fill its queue.
#[cfg(feature = "fault-injection")]
fn fault_delay() -> Option<std::time::Duration> {
    std::env::var("STAMPEDE_FAULT_WRITER_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis)
}

#[cfg(not(feature = "fault-injection"))]
fn fault_delay() -> Option<std::time::Duration> {
    None
}

/// After a failed batch: store each message in its own transaction, so
/// one bad message (a duplicate seq, say) fails alone instead of taking
/// the whole batch with it. Results go out in send order, runs of stored
/// messages together.
fn one_by_one<T, F>(
    conn: &mut Connection,
    batch: &mut Vec<Persist<T>>,
    idempotent: bool,
    stats: &mut Stats,
    on_commit: &mut F,
) where
    F: FnMut(Committed<T>),
{
    let mut stored = Vec::new();
    for m in batch.drain(..) {
        match write(conn, std::slice::from_ref(&m), idempotent) {
            Ok(()) => {
                stats.messages += 1;
                stored.push(m.tag);
            }
            Err(e) => {
                let d = &m.msg.draft;
                tracing::error!(room = &*d.room, seq = m.msg.seq, "message not stored: {e}");
                if !stored.is_empty() {
                    on_commit(Committed {
                        tags: std::mem::take(&mut stored),
                        error: None,
                        took: std::time::Duration::ZERO,
                    });
                }
                stats.failed_messages += 1;
                on_commit(Committed {
                    tags: vec![m.tag],
                    error: Some(StoreError::from(e)),
                    took: std::time::Duration::ZERO,
                });
            }
        }
    }
    if !stored.is_empty() {
        on_commit(Committed {
            tags: stored,
            error: None,
            took: std::time::Duration::ZERO,
        });
    }
}

/// Apply ops in one transaction. One that fails is logged and skipped.
fn apply(conn: &mut Connection, ops: &[Box<Op>]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for op in ops {
        match &**op {
            Op::AddMember { room, user, max } => {
                if let Err(e) = super::members::add_member(&tx, room, user, *max) {
                    tracing::error!(room = &**room, "cannot store a new member: {e}");
                }
            }
        }
    }
    tx.commit()
}

/// Write one batch in one transaction (all or nothing).
fn write<T>(conn: &mut Connection, batch: &[Persist<T>], idempotent: bool) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let mut last: HashMap<&str, (u64, u64)> = HashMap::new();
    // Reused per message: the message id and the headers as JSON.
    let mut id = String::new();
    let mut headers = Vec::new();
    {
        let mut insert = tx.prepare_cached(if idempotent {
            "INSERT INTO messages (room, seq, message_id, sender, ts_ms, headers, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (room, seq) DO NOTHING"
        } else {
            "INSERT INTO messages (room, seq, message_id, sender, ts_ms, headers, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
        })?;
        for p in batch {
            let m = &p.msg;
            let d = &m.draft;
            id.clear();
            id.push_str(&d.room);
            id.push(':');
            id.push_str(itoa::Buffer::new().format(m.seq));
            headers.clear();
            super::headers_to_json(&d.headers, &mut headers);
            insert.execute(params![
                &*d.room,
                m.seq as i64,
                id,
                &*d.sender,
                m.timestamp_ms as i64,
                // Valid UTF-8: JSON of `str`s.
                std::str::from_utf8(&headers).unwrap_or("[]"),
                &*d.body
            ])?;
            let e = last.entry(&d.room).or_insert((0, m.timestamp_ms));
            e.0 = e.0.max(m.seq);
        }
        let mut room = tx.prepare_cached(
            "INSERT INTO rooms (room, last_seq, created_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (room) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
        )?;
        for (name, (seq, ts)) in &last {
            room.execute(params![name, *seq as i64, *ts as i64])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Draft;
    use crate::store::{Durability, last_seq, open};
    use std::sync::{Arc, Mutex};

    fn tmp() -> std::path::PathBuf {
        crate::store::test_dir("writer")
    }

    fn msg(room: &str, seq: u64, tag: u64) -> Item<u64> {
        Item::msg(
            Sequenced {
                draft: Draft {
                    room: room.into(),
                    sender: "alice".into(),
                    headers: vec![("x-k".into(), "v".into())],
                    body: vec![0, 1, 2, seq as u8].into(),
                },
                seq,
                timestamp_ms: 1_700_000_000_000 + seq,
                sequenced_at: None,
            },
            tag,
        )
    }

    #[test]
    fn group_commits_everything_in_order_and_sequences_survive_reopen() {
        let dir = tmp();
        let conn = open(&dir, Durability::Full).unwrap();
        let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
        let seen2 = seen.clone();
        let (tx, handle) = spawn(conn, 256, 128, false, move |c: Committed<u64>| {
            assert!(c.error.is_none(), "{:?}", c.error);
            seen2.lock().unwrap().extend(c.tags);
        })
        .unwrap();
        let rooms = ["a", "b", "c"];
        for i in 0..9_000u64 {
            tx.send(msg(rooms[(i % 3) as usize], i / 3 + 1, i)).unwrap();
        }
        drop(tx);
        let stats = handle.join().unwrap();
        assert_eq!(stats.messages, 9_000);
        assert_eq!(stats.failed_batches, 0);
        // Group commit: fewer transactions than messages, none too big.
        assert!(
            stats.batches < 9_000 && stats.largest_batch <= 128,
            "{stats:?}"
        );
        assert_eq!(*seen.lock().unwrap(), (0..9_000).collect::<Vec<_>>());

        let c = open(&dir, Durability::Full).unwrap();
        for r in rooms {
            assert_eq!(last_seq(&c, r).unwrap(), 3_000);
        }
        let (n, body): (i64, Vec<u8>) = c
            .query_row(
                "SELECT count(*), (SELECT body FROM messages WHERE room='b' AND seq=7) FROM messages",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((n, body), (9_000, vec![0, 1, 2, 7]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn jobs_run_after_earlier_commits_and_report_room() {
        let dir = tmp();
        let conn = open(&dir, Durability::Off).unwrap();
        let reports: Arc<Mutex<Vec<usize>>> = Arc::default();
        let r2 = reports.clone();
        let (tx, handle) = spawn(conn, 16, 16, false, move |c: Committed<u64>| {
            r2.lock().unwrap().push(c.tags.len());
        })
        .unwrap();
        let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
        tx.send(msg("a", 1, 1)).unwrap();
        tx.send(msg("a", 2, 2)).unwrap();
        for _ in 0..3 {
            let seen = seen.clone();
            tx.send(Item::After(Box::new(move |conn| {
                // Everything queued before the job is committed.
                seen.lock().unwrap().push(last_seq(conn, "a").unwrap());
            })))
            .unwrap();
        }
        drop(tx);
        handle.join().unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![2, 2, 2]);
        // The messages' report(s), then one empty report per job.
        let reports = reports.lock().unwrap();
        let split = reports.iter().position(|&n| n == 0).unwrap();
        assert_eq!(reports[..split].iter().sum::<usize>(), 2, "{reports:?}");
        assert_eq!(&reports[split..], &[0, 0, 0], "{reports:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A batch of ops alone still reports (a shard that found the queue
    /// full waits for a report to be rung), and the ops are stored.
    #[test]
    fn ops_alone_are_stored_and_reported() {
        let dir = tmp();
        let conn = open(&dir, Durability::Off).unwrap();
        let reports = Arc::new(Mutex::new(0usize));
        let r2 = reports.clone();
        let (tx, handle) = spawn(conn, 16, 16, false, move |c: Committed<u64>| {
            assert!(c.tags.is_empty());
            *r2.lock().unwrap() += 1;
        })
        .unwrap();
        for user in ["a", "b", "a"] {
            tx.send(Item::Op(Box::new(Op::AddMember {
                room: "r".into(),
                user: user.into(),
                max: 10,
            })))
            .unwrap();
        }
        drop(tx);
        handle.join().unwrap();
        assert!(*reports.lock().unwrap() >= 1, "no report for the ops");
        let c = open(&dir, Durability::Off).unwrap();
        assert_eq!(
            crate::store::members::list_members(&c, "r", 10).unwrap(),
            ["a", "b"]
        );
    }

    #[test]
    fn a_bad_message_fails_alone_and_the_rest_of_its_batch_is_stored() {
        let dir = tmp();
        let conn = open(&dir, Durability::Off).unwrap();
        // (tags, failed) of each report.
        type Outcomes = Arc<Mutex<Vec<(Vec<u64>, bool)>>>;
        let results: Outcomes = Arc::default();
        let r2 = results.clone();
        let (tx, handle) = spawn(conn, 16, 16, false, move |c: Committed<u64>| {
            r2.lock().unwrap().push((c.tags, c.error.is_some()));
        })
        .unwrap();
        tx.send(msg("a", 1, 1)).unwrap();
        // Wait until the first commit is done, so the next batch is known.
        while results.lock().unwrap().is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // The same (room, seq) again, between two good messages.
        for m in [msg("a", 2, 2), msg("a", 1, 3), msg("b", 1, 4)] {
            tx.send(m).unwrap();
        }
        drop(tx);
        let stats = handle.join().unwrap();
        let results = results.lock().unwrap();
        let tags: Vec<u64> = results.iter().flat_map(|r| r.0.clone()).collect();
        assert_eq!(tags, vec![1, 2, 3, 4], "every tag once, in send order");
        let failed: Vec<u64> = results
            .iter()
            .filter(|r| r.1)
            .flat_map(|r| r.0.clone())
            .collect();
        assert_eq!(failed, vec![3], "only the duplicate failed");
        assert_eq!(stats.failed_messages, 1);
        assert_eq!(stats.messages, 3);
        let c = open(&dir, Durability::Off).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(last_seq(&c, "a").unwrap(), 2);
        assert_eq!(last_seq(&c, "b").unwrap(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
