//! The scrape thread: answers `GET /metrics`. A shard that gets the
//! request hands it here (`ScrapeReq`); this thread asks every shard for a
//! snapshot of its counters through its inbox, adds what the process as a
//! whole knows (the writer's and the reader pool's queues and counters, the
//! push pool's, memory and open files), writes the text, and gives the
//! answer back to the asking shard for its connection.
//!
//! Everything that is more than a copy — walking `/proc`, merging,
//! formatting — happens here, on a plain thread, never on a shard. Requests
//! that arrive while a gather runs share the next one, and the queue is
//! bounded (a full queue is a 503 from the shard), so scraping often cannot
//! make the shards do more than one snapshot each per gather.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::metrics::{
    BATCH_BOUNDS, CONTENT_TYPE, LATENCY_BOUNDS, ShardSnapshot, SharedHistogram, Text,
};
use crate::push::PushStats;
use crate::shard::msg::{External, ScrapeReq, ShardHandle};

/// Scrape requests that may wait for the thread; beyond, 503.
pub(crate) const SCRAPE_QUEUE: usize = 64;

/// How long a gather waits for every shard's snapshot. A shard that does
/// not answer in time (stalled: the watchdog's business) is left out and
/// counted in `stampede_scrape_missing_shards`.
const GATHER_TIMEOUT: Duration = Duration::from_secs(2);

/// What the SQLite writer has done (written by its thread once per batch,
/// read by the scrape and by main at exit).
#[derive(Debug)]
pub struct WriterCounters {
    pub batches: AtomicU64,
    pub messages: AtomicU64,
    /// Messages that could not be stored (their publishers got an ERROR).
    pub failed_messages: AtomicU64,
    pub largest_batch: AtomicU64,
    /// Commits that fsynced the WAL (`--durability full`: every one).
    pub fsyncs: AtomicU64,
    /// Messages per committed batch.
    pub batch_size: SharedHistogram,
    /// How long each batch's transaction took.
    pub commit_seconds: SharedHistogram,
}

impl Default for WriterCounters {
    fn default() -> Self {
        WriterCounters {
            batches: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            failed_messages: AtomicU64::new(0),
            largest_batch: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            batch_size: SharedHistogram::new(&BATCH_BOUNDS, 1.0),
            commit_seconds: SharedHistogram::new(&LATENCY_BOUNDS, 1e9),
        }
    }
}

/// The store's queues, for their depth: the writer's and the readers'.
pub(crate) struct StoreQueues {
    pub writer_len: Box<dyn Fn() -> usize + Send>,
    pub writer_capacity: usize,
    pub reader_len: Box<dyn Fn() -> usize + Send>,
    pub counters: Arc<WriterCounters>,
}

/// What the scrape thread reads besides the shards.
pub(crate) struct Sources {
    pub shards: Arc<[ShardHandle]>,
    pub store: Option<StoreQueues>,
    pub push: Option<Arc<PushStats>>,
    /// The Redis threads' counters (`--cluster`).
    pub cluster: Option<Arc<crate::cluster::Stats>>,
    pub ready: Arc<crate::metrics::Readiness>,
    pub max_connections: usize,
}

/// Start the scrape thread; its queue is what the shards send `ScrapeReq`s to.
pub(crate) fn spawn(rx: Receiver<ScrapeReq>, sources: Sources) -> std::io::Result<()> {
    let started = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    std::thread::Builder::new()
        .name("stampede-scrape".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                // Everyone waiting now shares this gather.
                let mut asking = vec![first];
                asking.extend(rx.try_iter());
                let body = gather(&sources, started);
                let response = crate::http::metrics(&body, CONTENT_TYPE);
                for req in asking {
                    sources.shards[req.shard].send(External::Http {
                        conn: req.conn,
                        response: response.clone(),
                    });
                }
            }
        })?;
    Ok(())
}

/// The queue the shards send scrape requests to.
pub(crate) fn queue() -> (Sender<ScrapeReq>, Receiver<ScrapeReq>) {
    bounded(SCRAPE_QUEUE)
}

/// Ask every shard for its snapshot, add the process's figures, write the text.
fn gather(s: &Sources, started: f64) -> String {
    let n = s.shards.len();
    let (tx, rx) = bounded::<ShardSnapshot>(n);
    for h in s.shards.iter() {
        h.send(External::Scrape { reply: tx.clone() });
    }
    drop(tx);
    let deadline = Instant::now() + GATHER_TIMEOUT;
    let mut snaps: Vec<ShardSnapshot> = Vec::with_capacity(n);
    while snaps.len() < n {
        match rx.recv_deadline(deadline) {
            Ok(snap) => snaps.push(snap),
            Err(_) => break,
        }
    }
    snaps.sort_by_key(|s| s.shard);
    let mut t = Text::default();
    crate::metrics::render_shards(&mut t, &snaps);
    t.single(
        "stampede_scrape_missing_shards",
        "gauge",
        "Shards that did not answer this scrape in time (their series are missing).",
        (n - snaps.len()) as f64,
    );
    process(&mut t, s, started);
    t.into_string()
}

/// Process-wide figures: store, push, memory, files, build, readiness.
fn process(t: &mut Text, s: &Sources, started: f64) {
    if let Some(q) = &s.store {
        let w = &q.counters;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        t.single(
            "stampede_writer_queue_depth",
            "gauge",
            "Items waiting in the SQLite writer's queue.",
            (q.writer_len)() as f64,
        );
        t.single(
            "stampede_writer_queue_capacity",
            "gauge",
            "Capacity of the writer's queue (--persist-queue); when it is full, publishers are paused.",
            q.writer_capacity as f64,
        );
        for (name, help, v) in [
            (
                "stampede_writer_commits_total",
                "Batches of messages committed by the writer.",
                &w.batches,
            ),
            (
                "stampede_writer_fsyncs_total",
                "Commits that fsynced the write-ahead log (every commit with --durability full; checkpoints not counted).",
                &w.fsyncs,
            ),
            (
                "stampede_writer_stored_messages_total",
                "Messages committed to the database.",
                &w.messages,
            ),
            (
                "stampede_writer_failed_messages_total",
                "Messages the database refused (their publishers got an ERROR).",
                &w.failed_messages,
            ),
        ] {
            t.single(name, "counter", help, get(v));
        }
        t.family(
            "stampede_writer_batch_messages",
            "histogram",
            "Messages per committed batch (group commit).",
        );
        t.histogram(
            "stampede_writer_batch_messages",
            &[],
            &w.batch_size.snapshot(),
        );
        t.family(
            "stampede_writer_commit_seconds",
            "histogram",
            "Time to write and commit one batch.",
        );
        t.histogram(
            "stampede_writer_commit_seconds",
            &[],
            &w.commit_seconds.snapshot(),
        );
        t.single(
            "stampede_reader_queue_depth",
            "gauge",
            "Read jobs (replays, history requests) waiting for a reader thread.",
            (q.reader_len)() as f64,
        );
    }
    if let Some(p) = &s.push {
        counters(
            t,
            &[
                (
                    "stampede_push_jobs_total",
                    "Committed messages with away members handed to the push pool.",
                    &p.jobs,
                ),
                (
                    "stampede_push_queued_total",
                    "Device pushes queued.",
                    &p.queued,
                ),
                (
                    "stampede_push_dropped_total",
                    "Jobs or pushes dropped because the push queue was full.",
                    &p.dropped,
                ),
                ("stampede_push_sent_total", "Pushes FCM accepted.", &p.sent),
                (
                    "stampede_push_failed_total",
                    "Pushes given up (retries exhausted, refused).",
                    &p.failed,
                ),
                (
                    "stampede_push_dead_tokens_total",
                    "Devices deleted because FCM called their token dead.",
                    &p.dead_tokens,
                ),
                (
                    "stampede_push_requests_total",
                    "HTTP requests to FCM, retries included.",
                    &p.attempts,
                ),
            ],
        );
        t.single(
            "stampede_push_queue_depth",
            "gauge",
            "Push tasks waiting for a push thread.",
            get(&p.waiting),
        );
    }
    if let Some(c) = &s.cluster {
        counters(
            t,
            &[
                (
                    "stampede_cluster_published_total",
                    "Cluster mode: messages Redis sequenced for this node's publishers.",
                    &c.published,
                ),
                (
                    "stampede_cluster_channel_messages_total",
                    "Cluster mode: messages received on the Redis channels of watched rooms.",
                    &c.received,
                ),
                (
                    "stampede_cluster_pipelines_total",
                    "Cluster mode: command pipelines sent to Redis.",
                    &c.pipelines,
                ),
                (
                    "stampede_cluster_shed_total",
                    "Cluster mode: channel messages dropped because their shard's inbox was full (read back from the stream as a gap).",
                    &c.shed,
                ),
                (
                    "stampede_cluster_reconnects_total",
                    "Cluster mode: Redis connections lost (commands or channels).",
                    &c.reconnects,
                ),
            ],
        );
        t.single(
            "stampede_cluster_redis_down",
            "gauge",
            "Cluster mode: Redis connections (commands or channels) currently not established.",
            get(&c.down),
        );
    }
    let page = page_size();
    if let Some(rss) = statm_resident() {
        t.single(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            (rss * page) as f64,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        t.single(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            dir.count() as f64,
        );
    }
    t.single(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors (soft RLIMIT_NOFILE).",
        crate::config::nofile_limit() as f64,
    );
    t.single(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch in seconds.",
        started,
    );
    t.family(
        "stampede_build_info",
        "gauge",
        "The running build: version and git commit.",
    );
    t.sample(
        "stampede_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", env!("STAMPEDE_COMMIT")),
        ],
        1.0,
    );
    t.single(
        "stampede_ready",
        "gauge",
        "1 while every shard accepts and the server is not draining (see /readyz, which also answers 503 while the writer's queue is full).",
        if s.ready.not_ready().is_none() {
            1.0
        } else {
            0.0
        },
    );
    t.single(
        "stampede_shards",
        "gauge",
        "Shards (pinned executors).",
        s.shards.len() as f64,
    );
    t.single(
        "stampede_max_connections",
        "gauge",
        "Most open client connections (--max-connections).",
        s.max_connections as f64,
    );
}

fn get(c: &AtomicU64) -> f64 {
    c.load(Ordering::Relaxed) as f64
}

/// Process-wide counters kept as atomics by plain threads: `(name, help,
/// counter)`.
fn counters(t: &mut Text, list: &[(&str, &str, &AtomicU64)]) {
    for (name, help, v) in list {
        t.single(name, "counter", help, get(v));
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the system.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

/// Resident pages, from `/proc/self/statm`.
fn statm_resident() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}
