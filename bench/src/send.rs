//! The `send` scenario (the seed's planned part 2): SEND throughput and
//! RECEIPT latency. P publishers each keep up to `--window` SENDs with a
//! `receipt` outstanding, over `--rooms` rooms, at `--rate` in all (0 = as
//! fast as the window allows). Run it against a server with persistence
//! and push on, then off, to see what they cost; a RECEIPT confirms a
//! SEND (and, with durable receipts, that it is on disk).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::observe::{self, Observe};
use crate::pace::Pace;
use crate::rawws::{RawReader, now_ns, split_us};
use crate::report::Hists;
use crate::ws;

#[derive(clap::Args, Clone, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    pub endpoint: ws::Endpoint,
    /// Publisher sessions.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Rooms the SENDs go to (in turn).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Most SENDs per publisher waiting for their RECEIPT.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// SENDs per second over all publishers; 0 = as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Body bytes per SEND.
    #[arg(long, default_value_t = 100)]
    pub body_size: usize,
    /// Seconds to wait for the last RECEIPTs.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Seconds a set-up step may take.
    #[arg(long, default_value_t = 10.0)]
    pub step_timeout: f64,
    #[command(flatten)]
    pub observe: Observe,
}

/// One publisher's result.
struct Outcome {
    sent: u64,
    receipted: u64,
    errors: BTreeMap<String, u64>,
    /// RECEIPT latency (µs): total, server's and client's shares.
    hists: Hists,
    /// When it stopped sending.
    stopped: Option<Instant>,
    last_receipt: Option<Instant>,
}

impl Outcome {
    fn new() -> Outcome {
        Outcome {
            sent: 0,
            receipted: 0,
            errors: BTreeMap::new(),
            hists: Hists::new(),
            stopped: None,
            last_receipt: None,
        }
    }
}

pub async fn run(args: SendArgs) -> i32 {
    match main(&args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("send: {e}");
            2
        }
    }
}

async fn main(args: &SendArgs) -> Result<i32, String> {
    if args.endpoint.is_tls() {
        return Err(crate::rawws::SPLIT_TLS.into());
    }
    let limit = Duration::from_secs_f64(args.step_timeout);
    let (addr, src) = ws::resolve(&args.endpoint.url, 0)?;
    let run = std::process::id();
    let mut sessions = Vec::new();
    for _ in 0..args.publishers.max(1) {
        let mut s = ws::open(&args.endpoint, addr, src, limit).await?;
        ws::login(&mut s, &args.endpoint, limit).await?;
        sessions.push(s);
    }
    let cost0 = observe::Start::now(args.observe.server_pid);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration);
    let publishers = sessions.len();
    let body: String = "b".repeat(args.body_size);
    let tasks: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(p, s)| {
            let args = args.clone();
            let body = body.clone();
            tokio::spawn(async move {
                publisher(
                    p,
                    s,
                    &args,
                    run,
                    &body,
                    end,
                    Pace::new(start, p, publishers, args.rate),
                )
                .await
            })
        })
        .collect();
    let mut total = Outcome::new();
    for t in tasks {
        let o = t.await.map_err(|e| format!("publisher: {e}"))?;
        total.sent += o.sent;
        total.receipted += o.receipted;
        for (k, v) in o.errors {
            *total.errors.entry(k).or_default() += v;
        }
        total.hists.add(&o.hists);
        total.stopped = total.stopped.max(o.stopped);
        total.last_receipt = total.last_receipt.max(o.last_receipt);
    }
    let cost = cost0.cost();
    let hists = &total.hists;
    // SENDs per second while the publishers sent; receipts per second
    // from the first SEND to the last RECEIPT.
    let since_start = |t: Option<Instant>| {
        t.map(|t| t.duration_since(start).as_secs_f64())
            .unwrap_or(args.duration)
            .max(1e-9)
    };
    let send_s = since_start(total.stopped);
    let sent_per_s = total.sent as f64 / send_s;
    let secs = since_start(total.last_receipt);
    let rate = total.receipted as f64 / secs;
    let missing = total.sent - total.receipted;
    println!(
        "send: {} publishers, window {}, {} rooms, {} B bodies; target {} msg/s, achieved {sent_per_s:.0} msg/s ({} sent in {send_s:.2} s); {} receipted at {rate:.0}/s (first SEND to last RECEIPT, {secs:.2} s); missing receipts {missing}; errors {:?}",
        args.publishers,
        args.window,
        args.rooms,
        args.body_size,
        crate::report::rate_text(args.rate),
        total.sent,
        total.receipted,
        total.errors
    );
    print!("{}", hists.lines("receipt latency ms"));
    println!("{}", cost.line());
    let doc = serde_json::json!({
        "scenario": "send", "label": args.observe.label, "url": args.endpoint.url,
        "publishers": args.publishers, "window": args.window, "rooms": args.rooms,
        "rate": args.rate, "target_rate": args.rate, "body_size": args.body_size, "duration_s": args.duration,
        "sent": total.sent, "send_s": send_s, "sent_per_s": sent_per_s,
        "receipted": total.receipted, "receipt_s": secs, "missing_receipts": missing,
        "errors": total.errors, "receipts_per_s": rate,
        "latency_ms": crate::report::latency_json(&hists.total),
        "server_latency_ms": crate::report::latency_json_opt(&hists.server),
        "client_latency_ms": crate::report::latency_json_opt(&hists.client),
        "cost": cost,
    });
    observe::write_json(&args.observe, &doc)?;
    Ok(if missing > 0 || !total.errors.is_empty() {
        1
    } else {
        0
    })
}

#[allow(clippy::too_many_arguments)]
async fn publisher(
    p: usize,
    s: ws::Ws,
    args: &SendArgs,
    run: u32,
    body: &str,
    end: Instant,
    pace: Option<Pace>,
) -> Outcome {
    // Nothing is buffered in tungstenite after CONNECTED: the socket moves
    // to the raw reader (kernel receive timestamps) and writer.
    let (mut rx, mut tx) = match RawReader::split(s.into_inner()) {
        Ok(x) => x,
        Err(e) => {
            // TLS (refused before the run already).
            let mut o = Outcome::new();
            o.errors.insert(e.to_string(), 1);
            return o;
        }
    };
    let window = Arc::new(Semaphore::new(args.window.max(1)));
    // Receipt id -> send time (ns, CLOCK_REALTIME, as the kernel stamps).
    let pending: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let done = Arc::new(tokio::sync::Notify::new());

    // Reader: match RECEIPTs to their SENDs.
    let reader = {
        let window = window.clone();
        let pending = pending.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut o = Outcome::new();
            loop {
                let (data, rx_ns) = match rx.next_stamped().await {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        *o.errors.entry(ws::short(&e.to_string())).or_default() += 1;
                        break;
                    }
                };
                if data.starts_with(b"ERROR") {
                    *o.errors.entry(ws::error_kind(data)).or_default() += 1;
                    break;
                }
                let Some(id) = receipt_id(data) else { continue };
                let Some(sent_at) = pending.lock().expect("pending").remove(&id) else {
                    continue;
                };
                o.hists.record(split_us(sent_at, rx_ns, now_ns()));
                o.receipted += 1;
                o.last_receipt = Some(Instant::now());
                window.add_permits(1);
                if pending.lock().expect("pending").is_empty() {
                    done.notify_one();
                }
            }
            // No more receipts can come: release a writer waiting for one.
            window.close();
            done.notify_one();
            o
        })
    };

    // Writer.
    let mut sent = 0u64;
    let mut write_error = None;
    while Instant::now() < end {
        let Ok(permit) = window.acquire().await else {
            break;
        };
        permit.forget();
        if let Some(pace) = pace
            && !pace.wait(sent, end).await
        {
            break;
        }
        sent += 1;
        let room = (sent as usize + p) % args.rooms.max(1);
        let frame = format!(
            "SEND\ndestination:/topic/send{run}-{room}\nreceipt:{sent}\ncontent-length:{}\n\n{body}\0",
            body.len()
        );
        pending.lock().expect("pending").insert(sent, now_ns());
        if let Err(e) = tx.send_text(frame.as_bytes()).await {
            write_error = Some(ws::short(&e.to_string()));
            sent -= 1;
            break;
        }
    }
    let stopped = Instant::now();
    // Wait for the last receipts (or the drain limit).
    let drain = Duration::from_secs_f64(args.drain);
    let _ = tokio::time::timeout(drain, async {
        while !pending.lock().expect("pending").is_empty() && !window.is_closed() {
            done.notified().await;
        }
    })
    .await;
    let _ = tx.close().await;
    let mut o = match tokio::time::timeout(Duration::from_secs(5), reader).await {
        Ok(Ok(o)) => o,
        _ => Outcome::new(),
    };
    o.sent = sent;
    o.stopped = Some(stopped);
    if let Some(e) = write_error {
        *o.errors.entry(format!("write: {e}")).or_default() += 1;
    }
    o
}

/// The numeric `receipt-id` of a RECEIPT frame.
fn receipt_id(data: &[u8]) -> Option<u64> {
    if !data.starts_with(b"RECEIPT") {
        return None;
    }
    let text = std::str::from_utf8(data).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("receipt-id:"))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn receipt_ids() {
        assert_eq!(super::receipt_id(b"RECEIPT\nreceipt-id:17\n\n\0"), Some(17));
        assert_eq!(super::receipt_id(b"MESSAGE\nreceipt-id:17\n\n\0"), None);
        assert_eq!(super::receipt_id(b"RECEIPT\nreceipt-id:x\n\n\0"), None);
    }
}
