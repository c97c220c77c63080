//! The `fanout` scenario: R rooms x M members, P publishers.
//!
//! Members live in worker processes (each from its own source address, so
//! a run is not capped at one process's 20,000 files); publishers run in
//! the parent. Each body is `<seq> <send time ns>` (padded to
//! `--body-size`), `seq` counting 1, 2, … per room from the room's one
//! publisher. So loss and per-room order are checked from the body, which
//! works with any broker (only stampede numbers messages with `x-seq`).
//!
//! Worker protocol (lines on stdout, see `workers`): progress while
//! subscribing, an [`Opened`] line, then the parent writes a [`Published`]
//! line to stdin; progress while deliveries arrive, then a [`Tally`] line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

use crate::observe::{self, Observe};
use crate::rawws::{RawReader, now_ns};
use crate::report::Hists;
use crate::workers::{self, Bar, Opened, Workers};
use crate::ws;

#[derive(clap::Args, Clone, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub endpoint: ws::Endpoint,
    /// Rooms.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Subscribers per room.
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// More nodes of one cluster (`stampede --cluster`), repeatable: members
    /// are spread round-robin over `--url` and these, publisher p uses node
    /// p and its probe the next node (so the window follows delivery
    /// across nodes). Same path and credentials as `--url`.
    #[arg(long = "node-url")]
    pub node_urls: Vec<String>,
    /// Publisher sessions; each room is fed by one of them (so its order is
    /// defined). More publishers than rooms are not used.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Messages per second over all publishers; 0 = as fast as they can.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Most seconds to wait for stragglers after publishing stops (the run
    /// ends earlier once every delivery has arrived).
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Most messages per room a publisher may be ahead of what its probe
    /// (one more member of its rooms) has received. Keeps "as fast as
    /// possible" to what members can take: beyond the server's outbound
    /// limit per subscriber, stampede (and Spring) drop a slow subscriber.
    /// Larger windows batch more (higher rate, higher latency).
    #[arg(long, default_value_t = 40)]
    pub window: usize,
    /// Pad bodies to this many bytes.
    #[arg(long, default_value_t = 0)]
    pub body_size: usize,
    /// Seconds over which members connect.
    #[arg(long, default_value_t = 1.0)]
    pub ramp_up: f64,
    /// SUBSCRIBE without a receipt and wait `--settle` seconds instead
    /// (Spring's SimpleBroker answers no receipt for SUBSCRIBE).
    #[arg(long)]
    pub no_subscribe_receipt: bool,
    /// Seconds to wait after subscribing without receipts.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Report per-room reordering but do not fail on it (Spring does not
    /// keep per-subscriber order by default).
    #[arg(long)]
    pub allow_reorder: bool,
    /// Seconds a set-up step may take.
    #[arg(long, default_value_t = 10.0)]
    pub step_timeout: f64,
    /// Name the rooms `fo<RUN_ID>-<r>` with this id instead of the
    /// generator's pid, so a script can set up the rooms (members,
    /// devices) before the run.
    #[arg(long)]
    pub run_id: Option<u64>,
    /// Each member logs in as `<login>-<n>` (a user of its own) instead of
    /// all as `<login>`: a room then has as many present users as members.
    #[arg(long)]
    pub distinct_logins: bool,
    #[command(flatten)]
    pub workers: Workers,
    #[command(flatten)]
    pub observe: Observe,
}

/// The parent's word to the workers once publishing ended.
#[derive(Debug, Serialize, Deserialize)]
struct Published {
    per_room: Vec<u64>,
    drain_s: f64,
}

/// What a worker's members received.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    delivered: u64,
    expected: u64,
    /// Deliveries whose room seq was not the one after the previous.
    out_of_order: u64,
    /// Members that received a different count than was published.
    short: u64,
    /// Sessions that ended (closed or failed) before the end.
    dropped: u64,
    /// Why they ended (the server's ERROR message, or the read error).
    drop_reasons: BTreeMap<String, u64>,
    /// When the last delivery arrived (ns since the epoch).
    last_ns: u64,
    /// Latency histogram (µs) as (value, count) pairs: publisher's send
    /// time to the member parsing the message.
    latency_us: Vec<(u64, u64)>,
    /// The server's share: send time to the kernel's arrival timestamp of
    /// the read that completed the message (messages with a timestamp).
    #[serde(default)]
    server_latency_us: Vec<(u64, u64)>,
    /// The member's own share: that arrival to parsing.
    #[serde(default)]
    client_latency_us: Vec<(u64, u64)>,
}

fn room_dest(run_id: u64, r: usize) -> String {
    format!("/topic/fo{run_id}-{r}")
}

pub async fn run(args: FanoutArgs) -> i32 {
    let sessions = args.rooms * args.members;
    let n = args.workers.count(sessions);
    if let Some(index) = args.workers.worker {
        return worker(&args, index, n).await;
    }
    match parent(&args, n).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fanout: {e}");
            2
        }
    }
}

async fn parent(args: &FanoutArgs, n: usize) -> Result<i32, String> {
    let sessions = args.rooms * args.members;
    let start = observe::Start::now(args.observe.server_pid);
    let mut workers = Workers::spawn(n)?;
    let bar = Bar::new(n, sessions as u64, "subscribed");
    let mut ready = Opened::default();
    for p in workers::payloads(&mut workers, &bar).await? {
        ready.merge(serde_json::from_str(&p).map_err(|e| format!("worker: {e}"))?);
    }
    if ready.established != sessions {
        // A result too: the target could not hold this many members.
        bar.done();
        for w in workers {
            w.finish().await;
        }
        let why = format!(
            "{} of {sessions} members subscribed; errors {:?}",
            ready.established, ready.errors
        );
        let doc = serde_json::json!({
            "scenario": "fanout", "label": args.observe.label, "url": args.endpoint.url,
            "rooms": args.rooms, "members": args.members, "rate": args.rate,
            "failed": why, "subscribed": ready.established, "subscribe_errors": ready.errors,
            "cost": start.cost(),
        });
        observe::write_json(&args.observe, &doc)?;
        return Err(why);
    }
    if args.no_subscribe_receipt {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    }
    let subscribe_s = start.cost().wall_s;

    // Publish.
    bar.phase((args.duration * 1000.0) as u64, "publishing ms");
    let published_at = Instant::now();
    let published_ns = now_ns();
    let (per_room, stopped) = publish(args, &bar).await?;
    for why in &stopped {
        eprintln!("fanout: a publisher stopped early: {why}");
    }
    let publish_s = published_at.elapsed().as_secs_f64();
    let sent: u64 = per_room.iter().sum();
    let expected = sent * args.members as u64;

    // Tell the workers what to expect; collect their tallies.
    bar.phase(expected, "delivered");
    let word = serde_json::to_string(&Published {
        per_room,
        drain_s: args.drain,
    })
    .expect("json");
    for w in &mut workers {
        w.tell(&word).await?;
    }
    let mut tally = Tally::default();
    let mut hists = Hists::new();
    for p in workers::payloads(&mut workers, &bar).await? {
        let t: Tally = serde_json::from_str(&p).map_err(|e| format!("worker: {e}"))?;
        tally.delivered += t.delivered;
        tally.expected += t.expected;
        tally.out_of_order += t.out_of_order;
        tally.short += t.short;
        tally.dropped += t.dropped;
        for (k, v) in t.drop_reasons {
            *tally.drop_reasons.entry(k).or_default() += v;
        }
        tally.last_ns = tally.last_ns.max(t.last_ns);
        for (h, pairs) in [
            (&mut hists.total, &t.latency_us),
            (&mut hists.server, &t.server_latency_us),
            (&mut hists.client, &t.client_latency_us),
        ] {
            for &(v, c) in pairs {
                h.record_n(v, c).expect("auto-resizing histogram");
            }
        }
    }
    bar.done();
    for w in workers {
        w.finish().await;
    }
    let cost = start.cost();
    // Deliveries per second from the first publish to the last delivery.
    let deliver_s = (tally.last_ns.saturating_sub(published_ns) as f64 / 1e9).max(publish_s);
    let rate = tally.delivered as f64 / deliver_s;
    let published_per_s = sent as f64 / publish_s;
    let lost = expected.saturating_sub(tally.delivered);
    println!(
        "fanout: {} rooms x {} members, {} publishers, window {}/room; target {} msg/s, achieved {published_per_s:.0} msg/s ({sent} sent in {publish_s:.2} s); delivered {}/{expected} at {rate:.0}/s (first publish to last delivery, {deliver_s:.2} s); lost {lost}; out of order {}; members short {}; sessions dropped {} {:?}",
        args.rooms,
        args.members,
        args.publishers.min(args.rooms),
        args.window,
        crate::report::rate_text(args.rate),
        tally.delivered,
        tally.out_of_order,
        tally.short,
        tally.dropped,
        tally.drop_reasons,
    );
    print!("{}", hists.lines("latency ms"));
    println!("{}", cost.line());
    let doc = serde_json::json!({
        "scenario": "fanout", "label": args.observe.label, "url": args.endpoint.url,
        "node_urls": args.node_urls,
        "rooms": args.rooms, "members": args.members,
        "publishers": args.publishers.min(args.rooms), "rate": args.rate, "target_rate": args.rate,
        "window": args.window, "body_size": args.body_size, "duration_s": args.duration,
        "workers": n, "subscribe_s": subscribe_s,
        "sent": sent, "publish_s": publish_s, "published_per_s": published_per_s,
        "deliver_s": deliver_s, "delivered": tally.delivered, "expected": expected,
        "lost": lost, "out_of_order": tally.out_of_order,
        "subscribers_short": tally.short, "sessions_dropped": tally.dropped,
        "publishers_stopped": stopped,
        "drop_reasons": tally.drop_reasons,
        "deliveries_per_s": rate,
        "latency_ms": crate::report::latency_json(&hists.total),
        "server_latency_ms": crate::report::latency_json_opt(&hists.server),
        "client_latency_ms": crate::report::latency_json_opt(&hists.client),
        "cost": cost,
    });
    observe::write_json(&args.observe, &doc)?;
    let failed = lost > 0
        || tally.short > 0
        || !stopped.is_empty()
        || (tally.out_of_order > 0 && !args.allow_reorder);
    Ok(if failed { 1 } else { 0 })
}

/// Run the publishers for `--duration`; messages sent per room.
/// Also says why publishers stopped early (their probe was dropped).
async fn publish(args: &FanoutArgs, bar: &Bar) -> Result<(Vec<u64>, Vec<String>), String> {
    let limit = Duration::from_secs_f64(args.step_timeout);
    let addrs = node_addrs(args, 0)?;
    let run_id = run_id(args);
    let publishers = args.publishers.clamp(1, args.rooms.max(1));
    // Open every publisher (and its probe) first, so they start together.
    // Publisher p feeds the rooms r with r % publishers == p; its probe is
    // one more member of those rooms, whose lag holds the publisher back.
    let mut sessions = Vec::new();
    for p in 0..publishers {
        let mine: Vec<usize> = (p..args.rooms).step_by(publishers).collect();
        let dests: Vec<String> = mine.iter().map(|&r| room_dest(run_id, r)).collect();
        let addr = addrs[p % addrs.len()].0;
        let mut s = ws::open(&args.endpoint, addr, None, limit).await?;
        ws::login(&mut s, &args.endpoint, limit).await?;
        let probe_at = addrs[(p + 1) % addrs.len()].0;
        let probe = Probe::start(member(args, &dests, probe_at, None).await?);
        sessions.push((mine, dests, s, probe));
    }
    if args.no_subscribe_receipt {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::new();
    for (p, (mine, dests, mut s, probe)) in sessions.into_iter().enumerate() {
        let pace = crate::pace::Pace::new(start, p, publishers, args.rate);
        let body_size = args.body_size;
        let window = (args.window * mine.len()) as u64;
        tasks.push(tokio::spawn(async move {
            let mut seqs = vec![0u64; mine.len()];
            let mut stopped = None;
            let mut n: u64 = 0;
            let mut body = String::with_capacity(body_size.max(48));
            while Instant::now() < end {
                if n >= probe.seen() + window {
                    // Too far ahead of what members receive: wait (the
                    // server would otherwise drop them as slow consumers).
                    s.flush().await.map_err(|e| e.to_string())?;
                    if let Err(why) = probe.wait_below(n - window, limit).await {
                        // Members no longer receive: publishing on would
                        // measure nothing. Stop; the tally shows the loss.
                        stopped = Some(why);
                        break;
                    }
                    continue;
                }
                if let Some(pace) = pace
                    && !pace.wait(n, end).await
                {
                    break;
                }
                let k = (n as usize) % mine.len();
                seqs[k] += 1;
                body.clear();
                use std::fmt::Write;
                let _ = write!(body, "{} {}", seqs[k], now_ns());
                while body.len() < body_size {
                    body.push('x');
                }
                let frame = format!(
                    "SEND\ndestination:{}\ncontent-length:{}\n\n{}\0",
                    dests[k],
                    body.len(),
                    body
                );
                n += 1;
                if pace.is_some() {
                    s.send(Message::text(frame))
                        .await
                        .map_err(|e| e.to_string())?;
                } else {
                    // As fast as we can: batch writes, flush every 64.
                    s.feed(Message::text(frame))
                        .await
                        .map_err(|e| e.to_string())?;
                    if n.is_multiple_of(64) {
                        s.flush().await.map_err(|e| e.to_string())?;
                    }
                }
            }
            s.flush().await.map_err(|e| e.to_string())?;
            // DISCONNECT with a receipt: every SEND before it was taken
            // (servers that close instead count too).
            s.send(Message::text("DISCONNECT\nreceipt:bye\n\n\0"))
                .await
                .map_err(|e| e.to_string())?;
            let _ = ws::expect(&mut s, "RECEIPT", Duration::from_secs(30), true).await;
            Ok::<_, String>((mine.into_iter().zip(seqs).collect::<Vec<_>>(), stopped))
        }));
    }
    // Move the bar with the clock while the publishers run.
    let ticker = {
        let started = start;
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                bar.set(0, started.elapsed().as_millis() as u64);
            }
        }
    };
    let joined = async {
        let mut per_room = vec![0u64; args.rooms];
        let mut stopped = Vec::new();
        for t in tasks {
            let (counts, why) = t.await.map_err(|e| format!("publisher: {e}"))??;
            for (r, count) in counts {
                per_room[r] = count;
            }
            stopped.extend(why);
        }
        Ok::<_, String>((per_room, stopped))
    };
    tokio::select! {
        r = joined => r,
        _ = ticker => unreachable!("the ticker never ends"),
    }
}

/// A publisher's own member of its rooms: counts what reaches members.
struct Probe {
    seen: Arc<AtomicU64>,
    moved: Arc<tokio::sync::Notify>,
    /// Why the probe's session ended, once it has.
    ended: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    fn start(mut reader: RawReader) -> Probe {
        let seen = Arc::new(AtomicU64::new(0));
        let moved = Arc::new(tokio::sync::Notify::new());
        let ended = Arc::new(Mutex::new(None));
        let task = {
            let (seen, moved, ended) = (seen.clone(), moved.clone(), ended.clone());
            tokio::spawn(async move {
                let why = loop {
                    match reader.next().await {
                        Ok(Some(m)) if m.starts_with(b"MESSAGE") => {
                            seen.fetch_add(1, Ordering::Relaxed);
                            moved.notify_one();
                        }
                        Ok(Some(m)) if m.starts_with(b"ERROR") => break ws::error_kind(m),
                        Ok(Some(_)) => {}
                        Ok(None) => break "closed".to_string(),
                        Err(e) => break format!("read: {e}"),
                    }
                };
                *ended.lock().expect("probe") = Some(why);
                moved.notify_one();
            })
        };
        Probe {
            seen,
            moved,
            ended,
            task,
        }
    }

    fn seen(&self) -> u64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// Wait until more than `n` messages have reached the probe.
    async fn wait_below(&self, n: u64, limit: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        while self.seen() <= n {
            if let Some(why) = self.ended.lock().expect("probe").clone() {
                return Err(format!("probe session ended ({why}): members dropped"));
            }
            if tokio::time::timeout_at(deadline, self.moved.notified())
                .await
                .is_err()
            {
                return Err(format!("probe saw nothing for {limit:?}: members stalled"));
            }
        }
        Ok(())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One id per run, shared by the parent and its workers: the parent's pid
/// (workers see it as their ppid), so back-to-back runs use fresh rooms.
fn run_id(args: &FanoutArgs) -> u64 {
    if let Some(id) = args.run_id {
        id
    } else if args.workers.worker.is_some() {
        std::os::unix::process::parent_id() as u64
    } else {
        std::process::id() as u64
    }
}

/// One member's session, set up and ready to read.
/// `--url` and every `--node-url`, resolved (with the source address of
/// worker `index`).
fn node_addrs(
    args: &FanoutArgs,
    index: usize,
) -> Result<Vec<(std::net::SocketAddr, Option<std::net::IpAddr>)>, String> {
    std::iter::once(&args.endpoint.url)
        .chain(&args.node_urls)
        .map(|u| ws::resolve(u, index))
        .collect()
}

async fn member(
    args: &FanoutArgs,
    dests: &[String],
    addr: std::net::SocketAddr,
    src: Option<std::net::IpAddr>,
) -> Result<RawReader, String> {
    let limit = Duration::from_secs_f64(args.step_timeout);
    let mut s = ws::open(&args.endpoint, addr, src, limit).await?;
    ws::login(&mut s, &args.endpoint, limit).await?;
    let receipt = if args.no_subscribe_receipt {
        ""
    } else {
        "receipt:live\n"
    };
    for (id, dest) in dests.iter().enumerate() {
        s.send(Message::text(format!(
            "SUBSCRIBE\nid:{id}\ndestination:{dest}\n{receipt}\n\0"
        )))
        .await
        .map_err(|e| format!("send: {}", ws::short(&e.to_string())))?;
        if !args.no_subscribe_receipt {
            ws::expect(&mut s, "RECEIPT", limit, false).await?;
        }
    }
    // Nothing more is buffered in tungstenite: publishing has not started.
    Ok(RawReader::new(s.into_inner()))
}

/// What one member saw.
#[derive(Default)]
struct Seen {
    room: usize,
    received: u64,
    out_of_order: u64,
    dropped: Option<String>,
    last_ns: u64,
}

/// One delivery's latency in µs: (total, Some((server, client))), from
/// [`crate::rawws::split_us`].
type Sample = (u64, Option<(u64, u64)>);

/// Latencies go into a few shared histograms, in batches, instead of one
/// histogram per member (tens of KiB each).
struct Latencies {
    shards: Vec<Mutex<Hists>>,
}

impl Latencies {
    fn add(&self, who: usize, batch: &mut Vec<Sample>) {
        let mut h = self.shards[who % self.shards.len()]
            .lock()
            .expect("histogram lock");
        for &sample in batch.iter() {
            h.record(sample);
        }
        batch.clear();
    }
}

async fn worker(args: &FanoutArgs, index: usize, n: usize) -> i32 {
    let sessions = args.rooms * args.members;
    let run_id = run_id(args);
    let slice = (index..sessions).step_by(n);
    let addrs = match node_addrs(args, index) {
        Ok(x) => x,
        Err(e) => {
            let r = Opened::all_failed(e, slice.count());
            println!("{}", serde_json::to_string(&r).expect("json"));
            return 2;
        }
    };

    // Subscribe our slice over the ramp-up.
    let (members, ready) = workers::open_slice(slice, sessions, args.ramp_up, |i| {
        let mut args = args.clone();
        if args.distinct_logins {
            args.endpoint.login = format!("{}-{i}", args.endpoint.login);
        }
        let room = i % args.rooms;
        let (addr, src) = addrs[i % addrs.len()];
        async move {
            let reader = member(&args, &[room_dest(run_id, room)], addr, src).await?;
            Ok((room, reader))
        }
    })
    .await;
    println!("{}", serde_json::to_string(&ready).expect("json"));

    // Read deliveries until told to stop.
    let received = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Latencies {
        shards: (0..8).map(|_| Mutex::new(Hists::new())).collect(),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let readers: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(who, (room, mut reader))| {
            let received = received.clone();
            let lat = lat.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let mut seen = Seen {
                    room,
                    ..Seen::default()
                };
                let mut last = 0u64;
                let mut batch = Vec::with_capacity(256);
                loop {
                    let (data, rx_ns) = tokio::select! {
                        biased;
                        _ = stop.changed() => break,
                        m = reader.next_stamped() => match m {
                            Ok(Some(d)) => d,
                            Ok(None) => {
                                seen.dropped.get_or_insert_with(|| "closed".into());
                                break;
                            }
                            Err(e) => {
                                seen.dropped.get_or_insert_with(|| format!("read: {e}"));
                                break;
                            }
                        },
                    };
                    if data.starts_with(b"ERROR") {
                        seen.dropped = Some(ws::error_kind(data));
                        continue;
                    }
                    let Some((seq, sent_ns)) = parse_message(data) else {
                        continue;
                    };
                    let now = now_ns();
                    seen.last_ns = now;
                    batch.push(crate::rawws::split_us(sent_ns, rx_ns, now));
                    if batch.len() == batch.capacity() {
                        lat.add(who, &mut batch);
                    }
                    if seq != last + 1 {
                        seen.out_of_order += 1;
                    }
                    last = last.max(seq);
                    seen.received += 1;
                    received.fetch_add(1, Ordering::Relaxed);
                }
                lat.add(who, &mut batch);
                seen
            })
        })
        .collect();

    // Wait for the parent's word: what was published.
    let mut line = String::new();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let word: Published = match stdin.read_line(&mut line).await {
        Ok(n) if n > 0 => match serde_json::from_str(line.trim()) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("worker {index}: bad word from parent: {e}");
                return 2;
            }
        },
        _ => return 0, // parent gave up
    };
    let mut per_member_rooms = vec![0u64; args.rooms];
    for r in (index..sessions).step_by(n).map(|i| i % args.rooms) {
        per_member_rooms[r] += 1;
    }
    let expected: u64 = per_member_rooms
        .iter()
        .zip(&word.per_room)
        .map(|(m, p)| m * p)
        .sum();
    let progress = workers::report_progress(received.clone());
    let deadline = Instant::now() + Duration::from_secs_f64(word.drain_s);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A little longer for duplicates or extras to show.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = stop_tx.send(true);
    let mut tally = Tally {
        expected,
        ..Tally::default()
    };
    for r in readers {
        let seen = match r.await {
            Ok(s) => s,
            Err(_) => {
                tally.dropped += 1;
                continue;
            }
        };
        tally.delivered += seen.received;
        tally.out_of_order += seen.out_of_order;
        tally.short += (seen.received != word.per_room[seen.room]) as u64;
        if let Some(why) = seen.dropped {
            tally.dropped += 1;
            *tally.drop_reasons.entry(why).or_default() += 1;
        }
        tally.last_ns = tally.last_ns.max(seen.last_ns);
    }
    progress.abort();
    let mut hists = Hists::new();
    for h in &lat.shards {
        hists.add(&h.lock().expect("histogram lock"));
    }
    let pairs = |h: &Histogram<u64>| {
        h.iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    };
    tally.latency_us = pairs(&hists.total);
    tally.server_latency_us = pairs(&hists.server);
    tally.client_latency_us = pairs(&hists.client);
    println!("{}", serde_json::to_string(&tally).expect("json"));
    0
}

/// The room seq and send time (ns) from a MESSAGE's body `<seq> <ns>…`.
fn parse_message(data: &[u8]) -> Option<(u64, u64)> {
    if !data.starts_with(b"MESSAGE") {
        return None;
    }
    let head_end = data.windows(2).position(|w| w == b"\n\n")?;
    let body = &data[head_end + 2..];
    let mut nums = body
        .split(|&b| b == b' ' || b == b'x' || b == 0)
        .filter(|s| !s.is_empty());
    let num = |s: &[u8]| std::str::from_utf8(s).ok()?.parse().ok();
    let seq = num(nums.next()?)?;
    let sent = num(nums.next()?)?;
    Some((seq, sent))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_seq_and_send_time() {
        let m = b"MESSAGE\nsubscription:0\ncontent-length:9\n\n42 123xxx\0";
        assert_eq!(super::parse_message(m), Some((42, 123)));
        assert_eq!(super::parse_message(b"MESSAGE\n\n7 9\0"), Some((7, 9)));
        assert_eq!(super::parse_message(b"RECEIPT\nreceipt-id:1\n\n\0"), None);
        assert_eq!(super::parse_message(b"MESSAGE\n\nhello\0"), None);
    }
}
