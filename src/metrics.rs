//! What `/metrics` reports: counters and histograms kept per shard, plain
//! and unshared, gathered only when scraped; and the Prometheus text format
//! they are written in.
//!
//! Every shard is one thread, so a shard's counters are a thread-local
//! [`Local`] of plain `Cell`s: counting on the message path is an add to
//! memory only that thread touches — no atomic, no lock, no sharing. A
//! scrape asks every shard for a [`ShardSnapshot`] (through its inbox; see
//! `scrape.rs`), which copies them, and merges. What is not counted but
//! *is* (open connections, subscriptions, queue depths) is read by the
//! shard when it makes its snapshot.
//!
//! The text format (0.0.4) is written by hand: it is a few lines of
//! escaping, and the client crates' metric types are shared atomics, which
//! is what the shards must not pay for. `promtool check metrics` checks
//! the output in the tests.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Upper bounds (seconds) of the latency histograms' buckets: 100 µs to
/// 2.5 s, where a chat server's latencies live (sub-millisecond delivery,
/// an fsync of a few milliseconds, a stalled disk in seconds).
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// `LATENCY_BOUNDS` in nanoseconds.
const LATENCY_BOUNDS_NS: [u64; 14] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
];

/// Upper bounds of the writer's batch-size histogram (messages).
pub const BATCH_BOUNDS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// Deliveries whose publish-to-send latency one flush records; beyond
/// that a flush samples the first ones (a round rarely holds this many).
const MAX_TIMED_PER_FLUSH: usize = 4096;

/// Distinct ERROR kinds counted per shard; later ones count as `other`.
/// Every kind is a fixed text of ours, so there are about twenty.
const MAX_ERROR_KINDS: usize = 48;

/// A counter only its shard's thread touches.
#[derive(Debug)]
pub struct Counter(Cell<u64>);

impl Counter {
    pub const fn new() -> Counter {
        Counter(Cell::new(0))
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0.set(self.0.get().wrapping_add(n));
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl Default for Counter {
    fn default() -> Self {
        Counter::new()
    }
}

/// A latency histogram only its shard's thread touches.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Per bucket (not cumulative); the last is +Inf.
    counts: [Counter; LATENCY_BOUNDS.len() + 1],
    sum_ns: Counter,
}

impl LatencyHistogram {
    pub const fn new() -> LatencyHistogram {
        LatencyHistogram {
            counts: [const { Counter::new() }; LATENCY_BOUNDS.len() + 1],
            sum_ns: Counter::new(),
        }
    }

    #[inline]
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_NS.partition_point(|&b| b < ns);
        self.counts[i].inc();
        self.sum_ns.add(ns);
    }

    pub fn snapshot(&self) -> Histogram {
        Histogram {
            bounds: &LATENCY_BOUNDS,
            counts: self.counts.iter().map(Counter::get).collect(),
            sum: self.sum_ns.get() as f64 / 1e9,
        }
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

/// A histogram for plain threads (the writer), counted per batch: its
/// atomics are written by one thread and read by the scrape.
#[derive(Debug)]
pub struct SharedHistogram {
    bounds: &'static [f64],
    /// `bounds` in the unit values are observed in.
    raw_bounds: Vec<u64>,
    /// Units per reported unit (1e9 for seconds observed in ns).
    scale: f64,
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
}

impl SharedHistogram {
    /// Buckets `bounds`, values observed in units of `1 / scale`.
    pub fn new(bounds: &'static [f64], scale: f64) -> SharedHistogram {
        SharedHistogram {
            bounds,
            raw_bounds: bounds.iter().map(|b| (b * scale).round() as u64).collect(),
            scale,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Seconds, for a histogram made with [`LATENCY_BOUNDS`] and scale 1e9.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    pub fn observe(&self, raw: u64) {
        let i = self.raw_bounds.partition_point(|&b| b < raw);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(raw, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Histogram {
        Histogram {
            bounds: self.bounds,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed) as f64 / self.scale,
        }
    }
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub bounds: &'static [f64],
    /// Per bucket, not cumulative; one more than `bounds` (+Inf).
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl Histogram {
    /// Add another snapshot of the same buckets.
    pub fn merge(&mut self, other: &Histogram) {
        debug_assert_eq!(self.bounds, other.bounds);
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The listener a connection was accepted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `--listen`: HTTP, WebSocket.
    Http = 0,
    /// `--stomp-listen`.
    Stomp = 1,
    /// `--metrics-listen`.
    Metrics = 2,
}

const LISTENERS: [&str; 3] = ["http", "stomp", "metrics"];

/// What a connection speaks (for open connections and refusals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A plain HTTP request, or a connection not upgraded yet.
    Http = 0,
    Ws = 1,
    Stomp = 2,
}

const TRANSPORTS: [&str; 3] = ["http", "ws", "stomp"];

/// Why a connection was refused or ended before it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `--max-connections` reached.
    Full = 0,
    /// No complete HTTP request (upgrade) within the connect timeout.
    HandshakeTimeout = 1,
    /// Upgraded (or plain STOMP) but no CONNECT within the connect timeout.
    ConnectTimeout = 2,
    /// A malformed request or WebSocket upgrade (400, 431).
    BadRequest = 3,
    /// A TLS handshake that failed (no protocol or suite in common, not
    /// TLS at all, a bad record).
    Tls = 4,
}

const REFUSALS: [&str; 5] = [
    "full",
    "handshake_timeout",
    "connect_timeout",
    "bad_request",
    "tls",
];

/// Which refusals happen on which transport (the series written).
const REFUSED_SERIES: [(Transport, Refused); 8] = [
    (Transport::Http, Refused::Full),
    (Transport::Stomp, Refused::Full),
    (Transport::Http, Refused::HandshakeTimeout),
    (Transport::Http, Refused::BadRequest),
    (Transport::Ws, Refused::ConnectTimeout),
    (Transport::Stomp, Refused::ConnectTimeout),
    (Transport::Http, Refused::Tls),
    (Transport::Stomp, Refused::Tls),
];

/// One shard's counters (thread-local: see the module doc).
#[derive(Debug)]
pub struct Local {
    pub accepted: [Counter; 3],
    refused: [[Counter; REFUSALS.len()]; 3],
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Messages this shard sequenced (as their room's owner).
    pub published: Counter,
    /// MESSAGE frames written to live subscribers here.
    pub delivered: Counter,
    /// MESSAGE frames written from stored history (replays).
    pub replayed: Counter,
    pub slow_consumers: Counter,
    pub heartbeat_timeouts: Counter,
    /// History API reads refused because the reader pool was full.
    pub reads_busy: Counter,
    /// Cluster mode: messages delivered here from their room's channel.
    pub cluster_received: Counter,
    /// Cluster mode: gaps in a room's channel repaired from its stream.
    pub cluster_gaps: Counter,
    /// Cluster mode: messages the stream no longer had for a gap.
    pub cluster_lost: Counter,
    /// Cluster mode: rooms whose epoch changed (Redis lost their state).
    pub cluster_epoch_changes: Counter,
    /// Owner sequencing → the shard's flush that sent the delivery.
    pub publish_delivery: LatencyHistogram,
    /// A SEND read → its RECEIPT written.
    pub send_receipt: LatencyHistogram,
    errors: RefCell<Vec<(Box<str>, u64)>>,
    /// When each message delivered since the last flush was sequenced.
    to_time: RefCell<Vec<Instant>>,
}

thread_local! {
    static LOCAL: Local = const { Local::new() };
}

/// This thread's (shard's) counters.
#[inline]
pub fn local<R>(f: impl FnOnce(&Local) -> R) -> R {
    LOCAL.with(f)
}

impl Local {
    const fn new() -> Local {
        Local {
            accepted: [const { Counter::new() }; 3],
            refused: [const { [const { Counter::new() }; REFUSALS.len()] }; 3],
            frames_in: Counter::new(),
            frames_out: Counter::new(),
            bytes_in: Counter::new(),
            bytes_out: Counter::new(),
            published: Counter::new(),
            delivered: Counter::new(),
            replayed: Counter::new(),
            slow_consumers: Counter::new(),
            heartbeat_timeouts: Counter::new(),
            reads_busy: Counter::new(),
            cluster_received: Counter::new(),
            cluster_gaps: Counter::new(),
            cluster_lost: Counter::new(),
            cluster_epoch_changes: Counter::new(),
            publish_delivery: LatencyHistogram::new(),
            send_receipt: LatencyHistogram::new(),
            errors: RefCell::new(Vec::new()),
            to_time: RefCell::new(Vec::new()),
        }
    }

    pub fn refused(&self, transport: Transport, why: Refused) {
        self.refused[transport as usize][why as usize].inc();
    }

    /// An ERROR frame with this `message` header was written.
    pub fn error_sent(&self, kind: &str) {
        let mut errors = self.errors.borrow_mut();
        if let Some(e) = errors.iter_mut().find(|(k, _)| **k == *kind) {
            e.1 += 1;
            return;
        }
        if errors.len() < MAX_ERROR_KINDS {
            errors.push((kind.into(), 1));
        } else if let Some(e) = errors.iter_mut().find(|(k, _)| &**k == "other") {
            e.1 += 1;
        } else {
            // The last slot becomes `other`.
            let last = errors.last_mut().expect("MAX_ERROR_KINDS > 0");
            *last = ("other".into(), last.1 + 1);
        }
    }

    /// A message sequenced at `at` was written to subscribers here; its
    /// latency is taken at the next flush.
    #[inline]
    pub fn delivered_at(&self, at: Instant) {
        let mut t = self.to_time.borrow_mut();
        if t.len() < MAX_TIMED_PER_FLUSH {
            t.push(at);
        }
    }

    /// The shard flushed its connections: record the latency of what it
    /// delivered since the last flush.
    #[inline]
    pub fn flushed(&self) {
        let mut t = self.to_time.borrow_mut();
        if t.is_empty() {
            return;
        }
        let now = Instant::now();
        for at in t.drain(..) {
            self.publish_delivery
                .observe(now.saturating_duration_since(at));
        }
    }

    /// A copy of the counters, with the shard's gauges.
    pub fn snapshot(&self, shard: usize, gauges: Gauges) -> ShardSnapshot {
        ShardSnapshot {
            shard,
            accepted: self.accepted.each_ref().map(Counter::get),
            refused: self
                .refused
                .each_ref()
                .map(|r| r.each_ref().map(Counter::get)),
            frames_in: self.frames_in.get(),
            frames_out: self.frames_out.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            published: self.published.get(),
            delivered: self.delivered.get(),
            replayed: self.replayed.get(),
            slow_consumers: self.slow_consumers.get(),
            heartbeat_timeouts: self.heartbeat_timeouts.get(),
            reads_busy: self.reads_busy.get(),
            cluster_received: self.cluster_received.get(),
            cluster_gaps: self.cluster_gaps.get(),
            cluster_lost: self.cluster_lost.get(),
            cluster_epoch_changes: self.cluster_epoch_changes.get(),
            publish_delivery: self.publish_delivery.snapshot(),
            send_receipt: self.send_receipt.snapshot(),
            errors: self.errors.borrow().clone(),
            gauges,
        }
    }
}

/// What a shard reads of its state when it makes a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Open connections by [`Transport`].
    pub connections: [u64; 3],
    /// STOMP sessions (CONNECTED).
    pub sessions: u64,
    pub subscriptions: u64,
    pub rooms_owned: u64,
    /// Messages waiting in this shard's outboxes towards its peers.
    pub mesh_queued: u64,
    pub paused_readers: u64,
    /// Cluster mode: rooms whose channel this shard receives (as owner).
    pub rooms_watched: u64,
}

/// One shard's counters and gauges at one moment (sent to the scrape).
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    pub shard: usize,
    pub accepted: [u64; 3],
    pub refused: [[u64; REFUSALS.len()]; 3],
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub published: u64,
    pub delivered: u64,
    pub replayed: u64,
    pub slow_consumers: u64,
    pub heartbeat_timeouts: u64,
    pub reads_busy: u64,
    pub cluster_received: u64,
    pub cluster_gaps: u64,
    pub cluster_lost: u64,
    pub cluster_epoch_changes: u64,
    pub publish_delivery: Histogram,
    pub send_receipt: Histogram,
    pub errors: Vec<(Box<str>, u64)>,
    pub gauges: Gauges,
}

/// Whether the server should get traffic (`/readyz`): set by start-up and
/// the shutdown; read by the shards.
#[derive(Debug, Default)]
pub struct Readiness {
    started: AtomicBool,
    draining: AtomicBool,
}

impl Readiness {
    /// Every shard accepts.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    /// The graceful shutdown began.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Why not ready, if not: starting or draining.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.draining.load(Ordering::Acquire) {
            Some("draining: the server is shutting down")
        } else if !self.started.load(Ordering::Acquire) {
            Some("starting")
        } else {
            None
        }
    }
}

// ---- the text format --------------------------------------------------------

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metrics page being written.
#[derive(Debug, Default)]
pub struct Text {
    out: String,
}

/// Label pairs of one sample.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

impl Text {
    pub fn into_string(self) -> String {
        self.out
    }

    /// `# HELP` and `# TYPE` of a family (`kind`: counter, gauge, histogram).
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, labels: Labels<'_>, value: f64) {
        self.out.push_str(name);
        self.labels(labels, None);
        self.out.push(' ');
        push_value(&mut self.out, value);
        self.out.push('\n');
    }

    fn labels(&mut self, labels: Labels<'_>, le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().copied().chain(le.map(|l| ("le", l))) {
            if !first {
                self.out.push(',');
            }
            first = false;
            self.out.push_str(k);
            self.out.push_str("=\"");
            for ch in v.chars() {
                match ch {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        self.out.push('}');
    }

    /// A family of one sample without labels.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A histogram's samples (`_bucket`, `_sum`, `_count`).
    pub fn histogram(&mut self, name: &str, labels: Labels<'_>, h: &Histogram) {
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (i, c) in h.counts.iter().enumerate() {
            cumulative += c;
            let le = match h.bounds.get(i) {
                Some(b) => format_bound(*b),
                None => "+Inf".to_string(),
            };
            self.out.push_str(&bucket);
            self.labels(labels, Some(&le));
            let _ = writeln!(self.out, " {cumulative}");
        }
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

fn format_bound(b: f64) -> String {
    let mut s = String::new();
    push_value(&mut s, b);
    s
}

fn push_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 9.007e15 {
        let _ = write!(out, "{}", v as i64);
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A per-shard family with one value per shard: name, type, help, value.
type Scalar = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardSnapshot) -> u64,
);

/// The per-shard scalar families written before the ERROR counts...
const SCALARS_A: &[Scalar] = &[
    (
        "stampede_sessions",
        "gauge",
        "STOMP sessions (CONNECTED).",
        |s| s.gauges.sessions,
    ),
    (
        "stampede_subscriptions",
        "gauge",
        "Subscriptions of this shard's connections.",
        |s| s.gauges.subscriptions,
    ),
    (
        "stampede_rooms_owned",
        "gauge",
        "Rooms this shard owns (sequences) now.",
        |s| s.gauges.rooms_owned,
    ),
    (
        "stampede_frames_received_total",
        "counter",
        "STOMP frames received from clients (heart-beats not counted).",
        |s| s.frames_in,
    ),
    (
        "stampede_frames_sent_total",
        "counter",
        "STOMP frames sent to clients (heart-beats not counted).",
        |s| s.frames_out,
    ),
    (
        "stampede_received_bytes_total",
        "counter",
        "Bytes read from client sockets.",
        |s| s.bytes_in,
    ),
    (
        "stampede_sent_bytes_total",
        "counter",
        "Bytes written to client sockets.",
        |s| s.bytes_out,
    ),
    (
        "stampede_messages_published_total",
        "counter",
        "Messages sequenced by this shard as their room's owner.",
        |s| s.published,
    ),
    (
        "stampede_messages_delivered_total",
        "counter",
        "MESSAGE frames written to live subscribers on this shard.",
        |s| s.delivered,
    ),
    (
        "stampede_messages_replayed_total",
        "counter",
        "MESSAGE frames written from stored history (x-since-seq, x-replay-last).",
        |s| s.replayed,
    ),
];

/// ...and those written after the disconnects.
const SCALARS_B: &[Scalar] = &[
    (
        "stampede_mesh_queued_messages",
        "gauge",
        "Messages waiting in this shard's queues towards other shards.",
        |s| s.gauges.mesh_queued,
    ),
    (
        "stampede_paused_readers",
        "gauge",
        "Connections not read because a queue towards another shard or the writer is full.",
        |s| s.gauges.paused_readers,
    ),
    (
        "stampede_history_reads_busy_total",
        "counter",
        "History API requests answered 503 because the reader pool's queue was full.",
        |s| s.reads_busy,
    ),
    (
        "stampede_cluster_rooms_watched",
        "gauge",
        "Cluster mode: rooms whose Redis channel this node receives, by owner shard.",
        |s| s.gauges.rooms_watched,
    ),
    (
        "stampede_cluster_received_total",
        "counter",
        "Cluster mode: messages delivered from their room's Redis channel (or stream, for a gap).",
        |s| s.cluster_received,
    ),
    (
        "stampede_cluster_gaps_total",
        "counter",
        "Cluster mode: gaps in a room's channel read back from its Redis stream.",
        |s| s.cluster_gaps,
    ),
    (
        "stampede_cluster_lost_total",
        "counter",
        "Cluster mode: messages of a gap the Redis stream no longer had (skipped; they are in the stores of the nodes that saw them).",
        |s| s.cluster_lost,
    ),
    (
        "stampede_cluster_epoch_changes_total",
        "counter",
        "Cluster mode: rooms whose state Redis lost (a new epoch).",
        |s| s.cluster_epoch_changes,
    ),
];

/// Write every shard's families: per-shard series (label `shard`) for
/// counters and gauges, histograms merged over the shards.
pub fn render_shards(t: &mut Text, shards: &[ShardSnapshot]) {
    let ids: Vec<String> = shards.iter().map(|s| s.shard.to_string()).collect();
    let each = |t: &mut Text, scalars: &[Scalar]| {
        for (name, kind, help, get) in scalars {
            t.family(name, kind, help);
            for (s, id) in shards.iter().zip(&ids) {
                t.sample(name, &[("shard", id)], get(s) as f64);
            }
        }
    };
    t.family(
        "stampede_connections",
        "gauge",
        "Open client connections, by shard and transport (http: plain requests and connections not upgraded yet).",
    );
    for (s, id) in shards.iter().zip(&ids) {
        for (i, tr) in TRANSPORTS.iter().enumerate() {
            t.sample(
                "stampede_connections",
                &[("shard", id), ("transport", tr)],
                s.gauges.connections[i] as f64,
            );
        }
    }
    t.family(
        "stampede_connections_accepted_total",
        "counter",
        "Connections accepted, by shard and listener.",
    );
    for (s, id) in shards.iter().zip(&ids) {
        for (i, l) in LISTENERS.iter().enumerate() {
            t.sample(
                "stampede_connections_accepted_total",
                &[("shard", id), ("listener", l)],
                s.accepted[i] as f64,
            );
        }
    }
    t.family(
        "stampede_connections_refused_total",
        "counter",
        "Connections refused or closed before their session began, by shard, transport and reason.",
    );
    for (s, id) in shards.iter().zip(&ids) {
        for (tr, why) in REFUSED_SERIES {
            t.sample(
                "stampede_connections_refused_total",
                &[
                    ("shard", id),
                    ("transport", TRANSPORTS[tr as usize]),
                    ("reason", REFUSALS[why as usize]),
                ],
                s.refused[tr as usize][why as usize] as f64,
            );
        }
    }
    each(t, SCALARS_A);
    t.family(
        "stampede_errors_sent_total",
        "counter",
        "STOMP ERROR frames sent, by shard and kind (the frame's message header).",
    );
    for (s, id) in shards.iter().zip(&ids) {
        for (kind, n) in &s.errors {
            t.sample(
                "stampede_errors_sent_total",
                &[("shard", id), ("kind", kind)],
                *n as f64,
            );
        }
    }
    t.family(
        "stampede_disconnects_total",
        "counter",
        "Sessions the server ended, by shard and reason.",
    );
    for (s, id) in shards.iter().zip(&ids) {
        for (reason, n) in [
            ("slow_consumer", s.slow_consumers),
            ("heartbeat_timeout", s.heartbeat_timeouts),
        ] {
            t.sample(
                "stampede_disconnects_total",
                &[("shard", id), ("reason", reason)],
                n as f64,
            );
        }
    }
    each(t, SCALARS_B);
    let merged = |get: &dyn Fn(&ShardSnapshot) -> &Histogram| {
        let mut h = Histogram {
            bounds: &LATENCY_BOUNDS,
            counts: vec![0; LATENCY_BOUNDS.len() + 1],
            sum: 0.0,
        };
        for s in shards {
            h.merge(get(s));
        }
        h
    };
    t.family(
        "stampede_publish_delivery_seconds",
        "histogram",
        "From the owner shard sequencing a message to the flush that sends it to a subscriber's socket, per message and shard.",
    );
    t.histogram(
        "stampede_publish_delivery_seconds",
        &[],
        &merged(&|s| &s.publish_delivery),
    );
    t.family(
        "stampede_send_receipt_seconds",
        "histogram",
        "From reading a SEND with a receipt header to writing its RECEIPT (stored, with a store).",
    );
    t.histogram(
        "stampede_send_receipt_seconds",
        &[],
        &merged(&|s| &s.send_receipt),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_hold_values_up_to_their_bound() {
        let h = LatencyHistogram::new();
        h.observe(Duration::from_micros(100)); // on the first bound
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(10)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.counts[0], 1);
        assert_eq!(s.counts[1], 1);
        assert_eq!(s.counts[LATENCY_BOUNDS.len()], 1);
        assert_eq!(s.count(), 3);
        assert!((s.sum - 10.000201).abs() < 1e-9);
    }

    #[test]
    fn shared_histograms_count_in_their_unit() {
        let h = SharedHistogram::new(&BATCH_BOUNDS, 1.0);
        for n in [1, 3, 4, 5000] {
            h.observe(n);
        }
        let s = h.snapshot();
        assert_eq!(s.counts[0], 1, "1 <= 1");
        assert_eq!(s.counts[2], 2, "3 and 4 <= 4");
        assert_eq!(s.counts[BATCH_BOUNDS.len()], 1, "5000 > 4096");
        assert_eq!(s.sum, 5008.0);
    }

    #[test]
    fn error_kinds_are_bounded() {
        let l = Local::new();
        for i in 0..MAX_ERROR_KINDS + 10 {
            l.error_sent(&format!("kind {i}"));
        }
        l.error_sent("kind 0");
        let errors = l.errors.borrow();
        assert_eq!(errors.len(), MAX_ERROR_KINDS);
        assert_eq!(errors[0], ("kind 0".into(), 2));
        let other = errors.iter().find(|(k, _)| &**k == "other").unwrap();
        assert_eq!(other.1, 11, "the displaced kind and the ten beyond");
    }

    #[test]
    fn delivery_latency_is_taken_at_the_flush_and_bounded() {
        let l = Local::new();
        let at = Instant::now();
        for _ in 0..MAX_TIMED_PER_FLUSH + 5 {
            l.delivered_at(at);
        }
        l.flushed();
        assert_eq!(
            l.publish_delivery.snapshot().count(),
            MAX_TIMED_PER_FLUSH as u64
        );
        l.flushed();
        assert_eq!(
            l.publish_delivery.snapshot().count(),
            MAX_TIMED_PER_FLUSH as u64,
            "nothing new"
        );
    }

    #[test]
    fn the_text_format_escapes_labels_and_writes_cumulative_buckets() {
        let mut t = Text::default();
        t.family("x_total", "counter", "a \\ help\nline");
        t.sample("x_total", &[("kind", "say \"hi\"\\\n")], 3.0);
        t.sample("x_total", &[], 0.5);
        let h = Histogram {
            bounds: &[0.5, 1.0],
            counts: vec![1, 2, 3],
            sum: 7.25,
        };
        t.family("h_seconds", "histogram", "h");
        t.histogram("h_seconds", &[("a", "b")], &h);
        assert_eq!(
            t.into_string(),
            "# HELP x_total a \\\\ help\\nline\n# TYPE x_total counter\n\
             x_total{kind=\"say \\\"hi\\\"\\\\\\n\"} 3\n\
             x_total 0.5\n\
             # HELP h_seconds h\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{a=\"b\",le=\"0.5\"} 1\n\
             h_seconds_bucket{a=\"b\",le=\"1\"} 3\n\
             h_seconds_bucket{a=\"b\",le=\"+Inf\"} 6\n\
             h_seconds_sum{a=\"b\"} 7.25\n\
             h_seconds_count{a=\"b\"} 6\n"
        );
    }

    #[test]
    fn readiness_starts_not_ready_and_ends_draining() {
        let r = Readiness::default();
        assert_eq!(r.not_ready(), Some("starting"));
        r.set_started();
        assert_eq!(r.not_ready(), None);
        r.set_draining();
        assert!(r.not_ready().unwrap().starts_with("draining"));
    }
}
