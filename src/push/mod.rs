//! Push notifications to members who are away, through FCM HTTP v1.
//!
//! The owner shard decides who is away when it sequences a message (the
//! room's members without a live subscription: `shard::rooms`) and hands a
//! [`PushJob`] to the writer together with the message. Only once the
//! message is committed does the writer's commit callback offer the job
//! here, so a push never announces a message that is not in the history.
//! A failed commit drops it.
//!
//! The pool is a bounded queue of tasks and `--push-threads` plain threads,
//! each with its own read-only SQLite connection and one blocking FCM
//! request at a time (ureq, keep-alive; see `fcm.rs`). A task is either a
//! job to expand (find the away members' devices, one query per member)
//! or one device's push. Offering never waits: when the queue is full the
//! job (or the device push) is dropped and counted (`dropped`). A push is
//! best-effort; chat never waits for one.
//!
//! A device FCM calls dead (`UNREGISTERED`, or an invalid token) is
//! deleted through the writer.

pub(crate) mod fcm;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use serde_json::{Value, json};

use crate::store::{StoreError, open_reader};

/// Bytes of a message body kept for its notification text (FCM's whole
/// payload is at most 4 KiB; `fcm::payload` cuts the text to fit).
pub(crate) const MAX_TEXT: usize = 2048;

/// One committed message to announce to a room's away members.
#[derive(Debug)]
pub(crate) struct PushJob {
    pub room: Box<str>,
    pub seq: u64,
    pub sender: Box<str>,
    /// The start of the body (`MAX_TEXT` bytes at most, valid UTF-8).
    pub text: Box<str>,
    /// Members without a live subscription when the message was
    /// sequenced (may include the sender, who is skipped).
    pub away: Arc<[Box<str>]>,
}

impl PushJob {
    /// The notification text for a message body: its start, cut at a
    /// character boundary; a body that is not UTF-8 is not shown.
    pub fn text_of(body: &[u8]) -> Box<str> {
        let cut = &body[..body.len().min(MAX_TEXT)];
        match std::str::from_utf8(cut) {
            Ok(t) => t.into(),
            // Cut inside a character: keep what is whole.
            Err(e) if e.error_len().is_none() => std::str::from_utf8(&cut[..e.valid_up_to()])
                .unwrap_or("")
                .into(),
            Err(_) => "(binary message)".into(),
        }
    }
}

/// What the pool did, for the API (`GET /api/push`) and the logs.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Jobs taken into the queue (committed messages with away members).
    pub jobs: AtomicU64,
    /// Device pushes queued.
    pub queued: AtomicU64,
    /// Jobs or device pushes dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Pushes FCM accepted.
    pub sent: AtomicU64,
    /// Pushes given up (retries exhausted, refused, auth failed).
    pub failed: AtomicU64,
    /// Devices deleted because FCM called their token dead.
    pub dead_tokens: AtomicU64,
    /// HTTP requests to FCM, retries included.
    pub attempts: AtomicU64,
    /// Tasks in the queue now (bounded by `--push-queue`).
    pub waiting: AtomicU64,
}

impl PushStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters as JSON (with the queue's length, if known).
    pub fn json(&self) -> Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({
            "jobs": get(&self.jobs),
            "queued": get(&self.queued),
            "dropped": get(&self.dropped),
            "sent": get(&self.sent),
            "failed": get(&self.failed),
            "dead_tokens": get(&self.dead_tokens),
            "attempts": get(&self.attempts),
            "waiting": get(&self.waiting),
        })
    }
}

/// What the pool's threads do.
enum Task {
    /// Find the devices of a job's away members.
    Expand(Box<PushJob>),
    /// Push one message to one device of `user`.
    Send {
        msg: Arc<PushJob>,
        user: Box<str>,
        token: Box<str>,
    },
}

/// Deletes a dead device `(user, token)` (through the writer).
pub(crate) type DeleteDevice = Arc<dyn Fn(Box<str>, Box<str>) + Send + Sync>;

/// The offering end of the pool (cheap to clone).
#[derive(Clone)]
pub(crate) struct PushLink {
    tx: Sender<Task>,
    stats: Arc<PushStats>,
}

impl PushLink {
    /// Offer a committed message's job; never waits (full: dropped, counted).
    pub fn offer(&self, job: Box<PushJob>) {
        match self.tx.try_send(Task::Expand(job)) {
            Ok(()) => {
                PushStats::add(&self.stats.jobs, 1);
                PushStats::add(&self.stats.waiting, 1);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                PushStats::add(&self.stats.dropped, 1)
            }
        }
    }

    pub fn stats(&self) -> &Arc<PushStats> {
        &self.stats
    }
}

/// Start `threads` push threads with a queue of `queue` tasks, reading
/// devices from the database in `dir`.
pub(crate) fn start(
    fcm: fcm::Fcm,
    threads: usize,
    queue: usize,
    dir: &Path,
    delete: DeleteDevice,
    cluster: Option<Arc<crate::cluster::Settings>>,
) -> Result<PushLink, StoreError> {
    let (tx, rx) = bounded::<Task>(queue.max(1));
    let stats = Arc::new(PushStats::default());
    let fcm = Arc::new(fcm);
    for i in 0..threads.max(1) {
        let db = open_reader(dir)?;
        let worker = Worker {
            rx: rx.clone(),
            tx: tx.clone(),
            stats: stats.clone(),
            fcm: fcm.clone(),
            delete: delete.clone(),
            presence: cluster.clone().map(crate::cluster::Presence::new),
        };
        std::thread::Builder::new()
            .name(format!("stampede-push-{i}"))
            .stack_size(512 * 1024)
            .spawn(move || {
                idle_priority();
                worker.run(&db);
            })
            .map_err(|e| StoreError::Thread(e.to_string()))?;
    }
    Ok(PushLink { tx, stats })
}

/// Run the calling thread under `SCHED_IDLE`: it gets a core only when
/// nothing else wants it, and a shard waking up takes the core from it at
/// once. A niced thread (like the store's) still holds the core until the
/// scheduler's next tick, which showed in chat's tail latency while pushes
/// were being expanded and sent (bench/results/*-push). Pushes are
/// best-effort: if chat keeps every core busy they wait (and the queue
/// drops), which is the order the design asks for.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the calling thread's (pid 0) policy; failure is harmless.
    let ok = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } == 0;
    if !ok {
        crate::store::lower_thread_priority();
    }
}

struct Worker {
    rx: Receiver<Task>,
    /// To queue the device pushes a job expands to.
    tx: Sender<Task>,
    stats: Arc<PushStats>,
    fcm: Arc<fcm::Fcm>,
    delete: DeleteDevice,
    /// Cluster mode: who is online on any node (they get no push).
    presence: Option<crate::cluster::Presence>,
}

impl Worker {
    fn run(mut self, db: &rusqlite::Connection) {
        // The queue's other senders are the shards' links and the other
        // workers: it ends when the server drops its links and every
        // worker is idle, i.e. with the process.
        while let Ok(task) = self.rx.recv() {
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            match task {
                Task::Expand(job) => self.expand(db, job),
                Task::Send { msg, user, token } => self.send(&msg, user, token),
            }
        }
    }

    fn expand(&mut self, db: &rusqlite::Connection, job: Box<PushJob>) {
        let msg: Arc<PushJob> = Arc::from(job);
        // Cluster mode: away from this node may be online on another.
        let elsewhere = match &mut self.presence {
            None => Default::default(),
            Some(p) => match p.online(&msg.room) {
                Ok(set) => set,
                Err(e) => {
                    tracing::warn!(
                        room = &*msg.room,
                        "cannot read presence from Redis ({e}); no push for this message"
                    );
                    PushStats::add(&self.stats.dropped, 1);
                    return;
                }
            },
        };
        for user in msg
            .away
            .iter()
            .filter(|u| **u != msg.sender && !elsewhere.contains(*u))
        {
            let tokens = match crate::store::members::list_devices(db, user, usize::MAX >> 1) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(user = &**user, "cannot read push devices: {e}");
                    continue;
                }
            };
            for token in tokens {
                let task = Task::Send {
                    msg: msg.clone(),
                    user: user.clone(),
                    token: token.into(),
                };
                match self.tx.try_send(task) {
                    Ok(()) => {
                        PushStats::add(&self.stats.queued, 1);
                        PushStats::add(&self.stats.waiting, 1);
                    }
                    Err(_) => PushStats::add(&self.stats.dropped, 1),
                }
            }
        }
    }

    fn send(&self, msg: &PushJob, user: Box<str>, token: Box<str>) {
        let message_id = format!("{}:{}", msg.room, msg.seq);
        let n = fcm::Notification {
            token: &token,
            room: &msg.room,
            seq: msg.seq,
            message_id: &message_id,
            sender: &msg.sender,
            text: &msg.text,
        };
        let report = self.fcm.send(&n);
        PushStats::add(&self.stats.attempts, u64::from(report.attempts));
        match report.delivery {
            fcm::Delivery::Sent => PushStats::add(&self.stats.sent, 1),
            fcm::Delivery::DeadToken(why) => {
                tracing::info!(user = &*user, "push device removed: {why}");
                PushStats::add(&self.stats.dead_tokens, 1);
                (self.delete)(user, token);
            }
            fcm::Delivery::Failed(why) => {
                tracing::warn!(room = &*msg.room, seq = msg.seq, "push failed: {why}");
                PushStats::add(&self.stats.failed, 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_text_is_cut_at_a_character() {
        assert_eq!(&*PushJob::text_of(b"hi"), "hi");
        let long = "é".repeat(MAX_TEXT); // 2 bytes each
        let t = PushJob::text_of(long.as_bytes());
        assert!(t.len() <= MAX_TEXT && t.chars().all(|c| c == 'é'));
        let mut odd = vec![b'a'];
        odd.extend_from_slice(long.as_bytes());
        let t = PushJob::text_of(&odd);
        assert_eq!(t.len(), MAX_TEXT - 1, "the cut character is left out");
        assert_eq!(&*PushJob::text_of(&[0xff, 0xfe]), "(binary message)");
    }
}
