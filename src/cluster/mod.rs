//! Cluster mode (`--cluster redis://…`): nodes share rooms through Redis,
//! the way Centrifugo's Redis engine does.
//!
//! - **Redis is each room's sequencer.** A room's owner shard on the
//!   publishing node hands the message to the command thread of the Redis
//!   instance chosen by hash(room); that thread runs the publish script
//!   (`wire::PUBLISH_LUA`: `HINCRBY` seq, `XADD` to a bounded stream,
//!   `PUBLISH room:R`) for a whole batch in one pipeline (`EVALSHA`), and
//!   returns each message's seq and epoch to its owner.
//! - **Delivery comes back through the channel.** A node `SUBSCRIBE`s to
//!   `room:R` while it has subscribers of R (`Cmd::Watch`); the
//!   instance's pubsub thread hands every message to R's owner shard,
//!   which delivers in seq order and repairs gaps from the stream
//!   (`Cmd::Range`). A node's own publishes take the same path.
//! - **Presence** for push: per-room sorted sets of `node:user` scored by
//!   expiry, refreshed by the owners (`Cmd::Presence`), read by the push
//!   threads (`Presence`).
//!
//! Threads only (blocking `redis` connections); nothing here runs on a
//! shard. What a shard gets back goes through `sink(shard, Event)`, which
//! the server turns into an inbox message. Connection loss: reconnect
//! with back-off (100 ms doubling to 5 s), reload the script, run the
//! batch again (a publish whose answer was lost may be sequenced twice:
//! at-least-once, never lost), resubscribe and report `Subscribed` again
//! so owners check for gaps.

pub(crate) mod wire;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, unbounded};
use redis::Value;

use crate::message::Sequenced;

/// Commands of one pipeline at most.
const MAX_PIPELINE: usize = 512;
/// Channel messages one shard's inbox may hold before the pubsub thread
/// drops more (they come back from the stream as a gap).
const MAX_INBOX_MESSAGES: usize = 65_536;
/// How often the pubsub thread looks at its watch list while no message
/// arrives (its read timeout).
const WATCH_POLL: Duration = Duration::from_millis(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A reply that takes longer means Redis is gone: reconnect.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// A channel connection that has heard nothing for this long sends a
/// `PING`. A subscriber only reads, so without it a connection whose
/// other end vanished without a FIN (the Redis host crashed, its address
/// moved to a promoted replica, a middlebox forgot the flow) would wait
/// for messages forever; the `PING` gets an RST at once, or no reply
/// within [`REPLY_TIMEOUT`], and the thread reconnects and resubscribes.
const CHANNEL_PING: Duration = Duration::from_secs(1);

/// What cluster mode is started with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub urls: Vec<Box<str>>,
    pub node: Box<str>,
    pub shards: usize,
    pub stream_len: usize,
    pub stream_ttl_s: u64,
    pub queue: usize,
    pub presence_ttl_s: u64,
}

impl Settings {
    /// The instance that holds `room` (by the same hash as shards, over
    /// instances).
    pub fn instance_of(&self, room: &str) -> usize {
        crate::room::owner_of(room, self.urls.len())
    }
}

/// A command for one Redis instance, from a room's owner shard.
pub(crate) enum Cmd<T> {
    /// Run the publish script; answer `Published` with `tag`.
    Publish {
        shard: usize,
        room: Box<str>,
        floor: u64,
        blob: Vec<u8>,
        tag: T,
    },
    /// Where the room's seq stands in Redis: answer `Head`.
    Head { shard: usize, room: Box<str> },
    /// Messages `from..=to` from the room's stream: answer `Range`.
    Range {
        shard: usize,
        room: Box<str>,
        from: u64,
        to: u64,
        tag: T,
    },
    /// Start (`on`) or stop receiving the room's channel on this node.
    Watch { room: Box<str>, on: bool },
    /// Presence changes of rooms on one instance.
    Presence(Vec<PresenceChange>),
}

/// Users of this node who came (`add`) or left (`remove`) a room, or are
/// still there (a refresh is an `add`).
pub(crate) struct PresenceChange {
    pub room: Box<str>,
    pub add: Vec<Box<str>>,
    pub remove: Vec<Box<str>>,
}

/// A message of a room as Redis gave it.
pub(crate) struct Remote {
    pub msg: Sequenced,
    pub epoch: Box<str>,
}

/// What the cluster threads tell a shard (the owner of `room`).
pub(crate) enum Event<T> {
    /// A publish was sequenced (`Ok((seq, epoch))`) or Redis refused it.
    Published {
        room: Box<str>,
        tag: T,
        result: Result<(u64, Box<str>), String>,
    },
    /// A message from the room's channel.
    Message(Box<Remote>),
    /// This node now receives the room's channel (also after a reconnect:
    /// messages may have been missed meanwhile).
    Subscribed { room: Box<str> },
    /// Where the room stands in Redis: its seq and epoch (0 and none:
    /// Redis has no seq), or why it could not be read.
    Head {
        room: Box<str>,
        result: Result<(u64, Option<Box<str>>), String>,
    },
    /// The stream's messages of a `Range` (those still in it).
    Range {
        room: Box<str>,
        tag: T,
        result: Result<Vec<Remote>, String>,
    },
    /// The command queue has room again (this shard found it full).
    Space,
}

/// Counters of the cluster threads (`/metrics`).
#[derive(Default)]
pub(crate) struct Stats {
    pub published: AtomicU64,
    pub received: AtomicU64,
    pub pipelines: AtomicU64,
    pub reconnects: AtomicU64,
    /// Instances currently not connected (commands or channels).
    pub down: AtomicU64,
    /// Channel messages dropped because their shard's inbox was full
    /// (repaired from the stream).
    pub shed: AtomicU64,
}

/// The shards' end: one bounded command queue per instance.
pub(crate) struct Link<T> {
    settings: Arc<Settings>,
    queues: Vec<Sender<Cmd<T>>>,
    /// Per shard: it found a queue full and wants `Event::Space`.
    want_space: Arc<[AtomicBool]>,
    /// Per shard: channel messages in its inbox (`taken` counts them off).
    backlog: Arc<[AtomicUsize]>,
    pub stats: Arc<Stats>,
}

impl<T> Clone for Link<T> {
    fn clone(&self) -> Self {
        Link {
            settings: self.settings.clone(),
            queues: self.queues.clone(),
            want_space: self.want_space.clone(),
            backlog: self.backlog.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<T: Send + 'static> Link<T> {
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn shared_settings(&self) -> Arc<Settings> {
        self.settings.clone()
    }

    /// Shard `shard` took a channel message from its inbox.
    pub fn taken(&self, shard: usize) {
        self.backlog[shard].fetch_sub(1, Ordering::Relaxed);
    }

    /// Queue `cmd` for the instance of `room`; full: handed back (the
    /// shard holds it in order and is told `Space` when there is room).
    pub fn try_send(&self, shard: usize, room: &str, cmd: Cmd<T>) -> Result<(), Cmd<T>> {
        let q = &self.queues[self.settings.instance_of(room)];
        match q.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(cmd)) => {
                self.want_space[shard].store(true, Ordering::SeqCst);
                // The thread may have drained between the try and the flag.
                q.try_send(cmd).map_err(|e| e.into_inner())
            }
            Err(TrySendError::Disconnected(_)) => Ok(()),
        }
    }
}

/// Start the threads: per instance one command thread and one pubsub
/// thread. `sink(shard, event)` hands an event to a shard.
pub(crate) fn start<T, F>(settings: Settings, sink: F) -> std::io::Result<Link<T>>
where
    T: Send + 'static,
    F: Fn(usize, Event<T>) + Send + Sync + 'static,
{
    let settings = Arc::new(settings);
    let sink = Arc::new(sink);
    let stats = Arc::new(Stats::default());
    let want_space: Arc<[AtomicBool]> = (0..settings.shards)
        .map(|_| AtomicBool::new(false))
        .collect();
    let backlog: Arc<[AtomicUsize]> = (0..settings.shards).map(|_| AtomicUsize::new(0)).collect();
    let mut queues = Vec::new();
    for (i, url) in settings.urls.iter().enumerate() {
        let (tx, rx) = bounded::<Cmd<T>>(settings.queue);
        let (wtx, wrx) = unbounded::<(Box<str>, bool)>();
        let client = redis::Client::open(&**url)
            .map_err(|e| std::io::Error::other(format!("--cluster {url}: {e}")))?;
        let cmd = Commands {
            instance: i,
            client: client.clone(),
            settings: settings.clone(),
            sink: sink.clone(),
            stats: stats.clone(),
            want_space: want_space.clone(),
            watch: wtx,
            sha: String::new(),
            con: None,
            _commands: std::marker::PhantomData,
        };
        std::thread::Builder::new()
            .name(format!("stampede-redis-{i}"))
            .spawn(move || cmd.run(rx))?;
        let subs = Channels {
            instance: i,
            client,
            settings: settings.clone(),
            sink: sink.clone(),
            stats: stats.clone(),
            wanted: HashSet::new(),
            backlog: backlog.clone(),
        };
        std::thread::Builder::new()
            .name(format!("stampede-redis-sub-{i}"))
            .spawn(move || subs.run(wrx))?;
        queues.push(tx);
    }
    Ok(Link {
        settings,
        queues,
        want_space,
        backlog,
        stats,
    })
}

/// Whether one connection of an instance is counted in `Stats::down`, so
/// each outage is counted (and logged) once.
#[derive(Default)]
struct Outage {
    down: bool,
}

impl Outage {
    /// The connection failed: whether that starts an outage.
    fn fail(&mut self, stats: &Stats) -> bool {
        if self.down {
            return false;
        }
        self.down = true;
        stats.down.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Connected: whether that ends an outage.
    fn recover(&mut self, stats: &Stats) -> bool {
        if !self.down {
            return false;
        }
        self.down = false;
        stats.down.fetch_sub(1, Ordering::Relaxed);
        true
    }
}

/// Sleep before the next connect attempt; doubles the back-off.
fn back_off(backoff: &mut Duration) {
    let jitter = fastrand::u64(0..=backoff.as_millis() as u64 / 4);
    std::thread::sleep(*backoff + Duration::from_millis(jitter));
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
}

fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
    con.set_read_timeout(Some(REPLY_TIMEOUT))?;
    con.set_write_timeout(Some(REPLY_TIMEOUT))?;
    Ok(con)
}

fn text(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// A fresh epoch for a room new to Redis: unique enough across nodes and
/// restarts (time and randomness), no spaces.
fn new_epoch() -> String {
    format!("{:x}{:08x}", crate::clock::now_ms(), fastrand::u32(..))
}

/// Decode an `XRANGE` reply of `room`.
fn decode_range(room: &str, v: &Value) -> Result<Vec<Remote>, String> {
    let Value::Array(entries) = v else {
        return Err(format!("unexpected XRANGE reply {v:?}"));
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Value::Array(pair) = e else { continue };
        let (Some(id), Some(Value::Array(fields))) = (pair.first().and_then(text), pair.get(1))
        else {
            continue;
        };
        let Some(seq) = id.split('-').next().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        let mut epoch = None;
        let mut blob = None;
        for kv in fields.chunks(2) {
            match (kv.first().and_then(text), kv.get(1)) {
                (Some("e"), Some(v)) => epoch = text(v),
                (Some("m"), Some(Value::BulkString(b))) => blob = Some(b),
                _ => {}
            }
        }
        let (Some(epoch), Some(blob)) = (epoch, blob) else {
            continue;
        };
        if let Some(msg) = wire::decode(room, seq, blob) {
            out.push(Remote {
                msg,
                epoch: epoch.into(),
            });
        }
    }
    Ok(out)
}

/// One instance's command thread: pipelines what the shards queue.
struct Commands<T, F> {
    instance: usize,
    client: redis::Client,
    settings: Arc<Settings>,
    sink: Arc<F>,
    stats: Arc<Stats>,
    want_space: Arc<[AtomicBool]>,
    /// To the pubsub thread of the same instance.
    watch: Sender<(Box<str>, bool)>,
    /// The publish script's SHA1 (loaded on every connect).
    sha: String,
    con: Option<redis::Connection>,
    _commands: std::marker::PhantomData<fn(T)>,
}

impl<T, F> Commands<T, F>
where
    T: Send + 'static,
    F: Fn(usize, Event<T>) + Send + Sync + 'static,
{
    fn run(mut self, rx: Receiver<Cmd<T>>) {
        let mut batch: Vec<Cmd<T>> = Vec::with_capacity(MAX_PIPELINE);
        while let Ok(first) = rx.recv() {
            batch.push(first);
            while batch.len() < MAX_PIPELINE {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            // Room in the queue again: ring the shards that found it full.
            for (shard, w) in self.want_space.iter().enumerate() {
                if w.swap(false, Ordering::SeqCst) {
                    (self.sink)(shard, Event::Space);
                }
            }
            batch.retain(|c| match c {
                Cmd::Watch { room, on } => {
                    let _ = self.watch.send((room.clone(), *on));
                    false
                }
                _ => true,
            });
            if !batch.is_empty() {
                self.execute(&mut batch);
            }
        }
    }

    /// Connected, with the script loaded; retried with back-off until so.
    fn connection(&mut self) -> &mut redis::Connection {
        let mut backoff = BACKOFF_MIN;
        let mut outage = Outage::default();
        while self.con.is_none() {
            match connect(&self.client).and_then(|mut con| {
                let sha: String = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(wire::PUBLISH_LUA)
                    .query(&mut con)?;
                Ok((con, sha))
            }) {
                Ok((con, sha)) => {
                    if outage.recover(&self.stats) {
                        tracing::info!(instance = self.instance, "Redis reachable again");
                    }
                    self.sha = sha;
                    self.con = Some(con);
                }
                Err(e) => {
                    if outage.fail(&self.stats) {
                        tracing::warn!(
                            instance = self.instance,
                            "Redis unreachable ({e}); publishes wait and are retried"
                        );
                    }
                    back_off(&mut backoff);
                }
            }
        }
        self.con.as_mut().expect("connected above")
    }

    fn pipeline(&self, batch: &[Cmd<T>]) -> redis::Pipeline {
        let s = &self.settings;
        let now = crate::clock::now_ms();
        let expiry = now + s.presence_ttl_s * 1000;
        // Used only by a room new to Redis; one per pipeline is unique enough.
        let epoch = new_epoch();
        let mut p = redis::pipe();
        p.ignore_errors();
        for c in batch {
            match c {
                Cmd::Publish {
                    room, floor, blob, ..
                } => {
                    p.cmd("EVALSHA")
                        .arg(&self.sha)
                        .arg(2)
                        .arg(wire::meta_key(room))
                        .arg(wire::stream_key(room))
                        .arg(*floor)
                        .arg(&epoch)
                        .arg(s.stream_len)
                        .arg(s.stream_ttl_s)
                        .arg(&blob[..])
                        .arg(wire::channel(room));
                }
                Cmd::Head { room, .. } => {
                    p.cmd("HMGET")
                        .arg(wire::meta_key(room))
                        .arg("seq")
                        .arg("epoch");
                }
                Cmd::Range { room, from, to, .. } => {
                    p.cmd("XRANGE")
                        .arg(wire::stream_key(room))
                        .arg(format!("{from}-0"))
                        .arg(format!("{to}-1"))
                        .arg("COUNT")
                        .arg(s.stream_len.max(1) * 2);
                }
                Cmd::Presence(changes) => {
                    for PresenceChange { room, add, remove } in changes {
                        let key = wire::presence_key(room);
                        let member = |u: &str| format!("{}:{u}", s.node);
                        if !add.is_empty() {
                            let mut z = redis::cmd("ZADD");
                            z.arg(&key);
                            for u in add {
                                z.arg(expiry).arg(member(u));
                            }
                            p.add_command(z).ignore();
                        }
                        if !remove.is_empty() {
                            let mut z = redis::cmd("ZREM");
                            z.arg(&key);
                            for u in remove {
                                z.arg(member(u));
                            }
                            p.add_command(z).ignore();
                        }
                        p.cmd("ZREMRANGEBYSCORE")
                            .arg(&key)
                            .arg("-inf")
                            .arg(now)
                            .ignore();
                        p.cmd("PEXPIRE")
                            .arg(&key)
                            .arg(s.presence_ttl_s * 2000)
                            .ignore();
                    }
                }
                Cmd::Watch { .. } => unreachable!("watches go to the pubsub thread"),
            }
        }
        p
    }

    /// Run `batch` (no watches) in one pipeline and answer every command;
    /// on a connection error reconnect and run it again.
    fn execute(&mut self, batch: &mut Vec<Cmd<T>>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let pipe = self.pipeline(batch);
            let con = self.connection();
            match pipe.query::<Vec<redis::RedisResult<Value>>>(con) {
                Ok(replies) => {
                    self.stats.pipelines.fetch_add(1, Ordering::Relaxed);
                    let rerun = self.answer(std::mem::take(batch), replies);
                    if rerun.is_empty() {
                        return;
                    }
                    // NOSCRIPT (a SCRIPT FLUSH, a failover to a replica
                    // without it): those publishes did not run; load the
                    // script again and rerun only them.
                    tracing::warn!(
                        instance = self.instance,
                        "Redis lost the publish script; loading it again"
                    );
                    *batch = rerun;
                    self.con = None;
                    back_off(&mut backoff);
                }
                Err(e) => {
                    tracing::warn!(
                        instance = self.instance,
                        "Redis pipeline failed ({e}); reconnecting and retrying {} commands",
                        batch.len()
                    );
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    self.con = None;
                    back_off(&mut backoff);
                }
            }
        }
    }

    /// Answer each command from its reply (`ignore()`d commands have
    /// none; the rest come in batch order). Returns the publishes Redis
    /// answered `NOSCRIPT` (not run), to run again.
    fn answer(&self, batch: Vec<Cmd<T>>, replies: Vec<redis::RedisResult<Value>>) -> Vec<Cmd<T>> {
        let mut replies = replies.into_iter();
        let mut rerun = Vec::new();
        for c in batch {
            match c {
                Cmd::Publish { .. } => {
                    let reply = replies.next();
                    if matches!(&reply, Some(Err(e)) if e.code() == Some("NOSCRIPT")) {
                        rerun.push(c);
                        continue;
                    }
                    let Cmd::Publish {
                        shard, room, tag, ..
                    } = c
                    else {
                        unreachable!("matched above")
                    };
                    let result = match reply {
                        Some(Ok(Value::Array(v))) => {
                            match (v.first().and_then(int), v.get(1).and_then(text)) {
                                (Some(seq), Some(epoch)) => Ok((seq, epoch.into())),
                                _ => Err(format!("unexpected publish reply {v:?}")),
                            }
                        }
                        Some(Ok(v)) => Err(format!("unexpected publish reply {v:?}")),
                        Some(Err(e)) => Err(e.to_string()),
                        None => Err("no reply".into()),
                    };
                    if result.is_ok() {
                        self.stats.published.fetch_add(1, Ordering::Relaxed);
                    }
                    (self.sink)(shard, Event::Published { room, tag, result });
                }
                Cmd::Head { shard, room } => {
                    let result = match replies.next() {
                        Some(Ok(Value::Array(v))) => Ok((
                            v.first().and_then(int).unwrap_or(0),
                            v.get(1).and_then(text).map(Into::into),
                        )),
                        other => Err(format!("unexpected HMGET reply {other:?}")),
                    };
                    (self.sink)(shard, Event::Head { room, result });
                }
                Cmd::Range {
                    shard, room, tag, ..
                } => {
                    let result = match replies.next() {
                        Some(Ok(v)) => decode_range(&room, &v),
                        Some(Err(e)) => Err(e.to_string()),
                        None => Err("no reply".into()),
                    };
                    (self.sink)(shard, Event::Range { room, tag, result });
                }
                Cmd::Presence(_) | Cmd::Watch { .. } => {}
            }
        }
        rerun
    }
}

/// One instance's pubsub thread: the channels of the rooms this node
/// watches.
struct Channels<F> {
    instance: usize,
    client: redis::Client,
    settings: Arc<Settings>,
    sink: Arc<F>,
    stats: Arc<Stats>,
    wanted: HashSet<Box<str>>,
    /// Channel messages in each shard's inbox, not yet taken.
    backlog: Arc<[AtomicUsize]>,
}

impl<F> Channels<F> {
    fn run<T>(mut self, watch: Receiver<(Box<str>, bool)>)
    where
        T: Send + 'static,
        F: Fn(usize, Event<T>) + Send + Sync + 'static,
    {
        let mut backoff = BACKOFF_MIN;
        let mut outage = Outage::default();
        loop {
            let mut con = match connect(&self.client) {
                Ok(c) => c,
                Err(e) => {
                    if outage.fail(&self.stats) {
                        tracing::warn!(
                            instance = self.instance,
                            "Redis channels unreachable ({e})"
                        );
                    }
                    back_off(&mut backoff);
                    continue;
                }
            };
            if outage.recover(&self.stats) {
                backoff = BACKOFF_MIN;
                tracing::info!(
                    instance = self.instance,
                    "Redis channels reachable again; resubscribing"
                );
            }
            match self.serve::<T>(&mut con, &watch) {
                Ok(()) => return, // the shards are gone
                Err(e) => {
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    outage.fail(&self.stats);
                    tracing::warn!(
                        instance = self.instance,
                        "Redis channels lost ({e}); reconnecting"
                    );
                    back_off(&mut backoff);
                }
            }
        }
    }

    /// Subscribe to what is wanted, then receive until the connection
    /// fails (`Err`) or the watch queue is closed (`Ok`).
    fn serve<T>(
        &mut self,
        con: &mut redis::Connection,
        watch: &Receiver<(Box<str>, bool)>,
    ) -> redis::RedisResult<()>
    where
        T: Send + 'static,
        F: Fn(usize, Event<T>) + Send + Sync + 'static,
    {
        let shards = self.settings.shards;
        let mut ps = con.as_pubsub();
        // Everything wanted, again after a reconnect: owners check for
        // gaps. One channel per SUBSCRIBE, so each reply is its own
        // confirmation (a multi-channel SUBSCRIBE answers once per channel).
        let all: Vec<Box<str>> = self.wanted.iter().cloned().collect();
        for room in all {
            ps.subscribe(wire::channel(&room))?;
            (self.sink)(
                crate::room::owner_of(&room, shards),
                Event::Subscribed { room },
            );
        }
        ps.set_read_timeout(Some(WATCH_POLL))?;
        let mut heard = Instant::now();
        loop {
            loop {
                match watch.try_recv() {
                    Ok((room, true)) => {
                        // Wanted first: if the connection fails now, the
                        // reconnect subscribes it (and reports it).
                        self.wanted.insert(room.clone());
                        // A reply may take longer than the poll interval:
                        // wait for it with the reply timeout.
                        ps.set_read_timeout(Some(REPLY_TIMEOUT))?;
                        ps.subscribe(wire::channel(&room))?;
                        ps.set_read_timeout(Some(WATCH_POLL))?;
                        // Always reported: the owner waits for
                        // `Subscribed` after each watch it asked for.
                        (self.sink)(
                            crate::room::owner_of(&room, shards),
                            Event::Subscribed { room },
                        );
                    }
                    Ok((room, false)) => {
                        if self.wanted.remove(&room) {
                            ps.set_read_timeout(Some(REPLY_TIMEOUT))?;
                            ps.unsubscribe(wire::channel(&room))?;
                            ps.set_read_timeout(Some(WATCH_POLL))?;
                        }
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return Ok(()),
                }
            }
            let msg = match ps.get_message() {
                Ok(m) => m,
                Err(e) if e.is_timeout() => {
                    if heard.elapsed() >= CHANNEL_PING {
                        // Messages that come before the pong wait in the
                        // connection for the next `get_message`.
                        ps.set_read_timeout(Some(REPLY_TIMEOUT))?;
                        ps.ping::<Value>()?;
                        ps.set_read_timeout(Some(WATCH_POLL))?;
                        heard = Instant::now();
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            heard = Instant::now();
            let Some(room) = msg.get_channel_name().strip_prefix(wire::CHANNEL_PREFIX) else {
                continue;
            };
            if !self.wanted.contains(room) {
                continue; // unsubscribed meanwhile
            }
            let Some((seq, epoch, blob)) = wire::split_published(msg.get_payload_bytes()) else {
                tracing::warn!(room, "a message on the room's channel is not ours; ignored");
                continue;
            };
            let Some(msg) = wire::decode(room, seq, blob) else {
                tracing::warn!(
                    room,
                    seq,
                    "a damaged message on the room's channel; ignored"
                );
                continue;
            };
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            let owner = crate::room::owner_of(room, shards);
            // A shard that falls behind the rooms' combined rate does not
            // get an ever longer inbox: beyond the bound the message is
            // dropped here and repaired from the stream as a gap.
            if self.backlog[owner].fetch_add(1, Ordering::Relaxed) >= MAX_INBOX_MESSAGES {
                self.backlog[owner].fetch_sub(1, Ordering::Relaxed);
                self.stats.shed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            (self.sink)(
                owner,
                Event::Message(Box::new(Remote {
                    msg,
                    epoch: epoch.into(),
                })),
            );
        }
    }
}

/// Who is online in a room on any node, for the push threads: one
/// connection per instance, opened on first use and again after an error.
pub(crate) struct Presence {
    settings: Arc<Settings>,
    clients: Vec<redis::Client>,
    cons: Vec<Option<redis::Connection>>,
    /// When the last failure was, so a down Redis is not dialled per push.
    failed_at: Vec<Option<Instant>>,
}

impl Presence {
    pub fn new(settings: Arc<Settings>) -> Presence {
        let clients: Vec<redis::Client> = settings
            .urls
            .iter()
            .map(|u| redis::Client::open(&**u).expect("opened once by `start`"))
            .collect();
        let n = clients.len();
        Presence {
            settings,
            clients,
            cons: (0..n).map(|_| None).collect(),
            failed_at: vec![None; n],
        }
    }

    /// The users online in `room` on any node (entries not yet expired).
    /// `Err`: Redis could not be asked (the caller pushes to nobody
    /// rather than to users who may be online).
    pub fn online(&mut self, room: &str) -> Result<HashSet<Box<str>>, String> {
        let i = self.settings.instance_of(room);
        if self.cons[i].is_none() {
            if self.failed_at[i].is_some_and(|t| t.elapsed() < BACKOFF_MAX) {
                return Err("Redis unreachable".into());
            }
            match connect(&self.clients[i]) {
                Ok(c) => self.cons[i] = Some(c),
                Err(e) => {
                    self.failed_at[i] = Some(Instant::now());
                    return Err(e.to_string());
                }
            }
        }
        let con = self.cons[i].as_mut().expect("connected above");
        let members: Result<Vec<String>, _> = redis::cmd("ZRANGEBYSCORE")
            .arg(wire::presence_key(room))
            .arg(crate::clock::now_ms())
            .arg("+inf")
            .query(con);
        match members {
            Ok(m) => Ok(m
                .into_iter()
                .filter_map(|e| e.split_once(':').map(|(_, u)| u.into()))
                .collect()),
            Err(e) => {
                self.cons[i] = None;
                self.failed_at[i] = Some(Instant::now());
                Err(e.to_string())
            }
        }
    }
}
