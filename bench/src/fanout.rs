//! The `fanout` scenario: R rooms x M members, P publishers. Each MESSAGE
//! body carries its send time; subscribers measure publish-to-delivery
//! latency, count deliveries and check that every room's `x-seq` arrives
//! complete and in order. One process for now (≤ ~19,000 sessions).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

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
    /// Publisher sessions (each sends to the rooms in turn).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Messages per second over all publishers; 0 = as fast as they can.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds to wait for stragglers after publishing stops.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// What one subscriber saw.
struct Seen {
    room: usize,
    received: u64,
    out_of_order: u64,
    hist: Histogram<u64>,
}

pub async fn run(args: FanoutArgs) -> i32 {
    let limit = Duration::from_secs(10);
    let (addr, _) = match ws::resolve(&args.endpoint.url, 0) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let run_id = now_ns() % 1_000_000_007;
    let room_name = |r: usize| format!("fo{run_id}-{r}");

    // Subscribers: open all, each SUBSCRIBEs with a receipt so publishing
    // starts only when every subscription is live.
    let stop = Arc::new(AtomicBool::new(false));
    let mut subs = Vec::new();
    for i in 0..args.rooms * args.members {
        let room = i % args.rooms;
        let dest = format!("/topic/{}", room_name(room));
        let endpoint = args.endpoint.clone();
        let stop = stop.clone();
        // Spread source addresses so no single port range caps a big run.
        let src = Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
            127,
            0,
            0,
            2 + (i / 20_000) as u8,
        )));
        subs.push(tokio::spawn(async move {
            let mut s = ws::open(&endpoint.url, addr, src, limit).await?;
            ws::login(&mut s, &endpoint, limit).await?;
            s.send(Message::text(format!(
                "SUBSCRIBE\nid:0\ndestination:{dest}\nreceipt:live\n\n\0"
            )))
            .await
            .map_err(|e| e.to_string())?;
            ws::expect(&mut s, "RECEIPT", limit, false).await?;
            Ok::<_, String>((room, s, stop))
        }));
    }
    let mut ready = Vec::new();
    for t in subs {
        match t.await {
            Ok(Ok(x)) => ready.push(x),
            Ok(Err(e)) => {
                eprintln!("subscriber failed: {e}");
                return 2;
            }
            Err(e) => {
                eprintln!("subscriber task: {e}");
                return 2;
            }
        }
    }
    let readers: Vec<_> = ready
        .into_iter()
        .map(|(room, mut s, stop)| {
            tokio::spawn(async move {
                let mut seen = Seen {
                    room,
                    received: 0,
                    out_of_order: 0,
                    hist: Histogram::new(3).expect("histogram"),
                };
                let mut last_seq = 0u64;
                loop {
                    let next = tokio::time::timeout(Duration::from_millis(200), s.next()).await;
                    let msg = match next {
                        Err(_) if stop.load(Ordering::Relaxed) => break,
                        Err(_) => continue,
                        Ok(None) | Ok(Some(Err(_))) => break,
                        Ok(Some(Ok(m))) => m,
                    };
                    let data: &[u8] = match &msg {
                        Message::Text(t) => t.as_bytes(),
                        Message::Binary(b) => b,
                        _ => continue,
                    };
                    if !data.starts_with(b"MESSAGE") {
                        continue;
                    }
                    let Some((seq, sent_ns)) = parse_message(data) else {
                        continue;
                    };
                    let lat_us = now_ns().saturating_sub(sent_ns) / 1000;
                    let _ = seen.hist.record(lat_us.max(1));
                    if seq != last_seq + 1 {
                        seen.out_of_order += 1;
                    }
                    last_seq = seq;
                    seen.received += 1;
                }
                seen
            })
        })
        .collect();

    // Publishers.
    let published: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.rooms).map(|_| AtomicU64::new(0)).collect());
    let started = Instant::now();
    let end = started + Duration::from_secs_f64(args.duration);
    let mut pubs = Vec::new();
    for p in 0..args.publishers {
        let endpoint = args.endpoint.clone();
        let published = published.clone();
        let rooms: Vec<String> = (0..args.rooms)
            .map(|r| format!("/topic/{}", room_name(r)))
            .collect();
        let per_pub_rate = if args.rate > 0.0 {
            args.rate / args.publishers as f64
        } else {
            0.0
        };
        pubs.push(tokio::spawn(async move {
            let mut s = ws::open(&endpoint.url, addr, None, limit).await?;
            ws::login(&mut s, &endpoint, limit).await?;
            let mut n: u64 = 0;
            let t0 = Instant::now();
            while Instant::now() < end {
                // Each publisher owns the rooms r with r % publishers == p,
                // so a room's messages come from one publisher in order.
                let mine: Vec<usize> = (0..rooms.len())
                    .filter(|r| r % args.publishers == p)
                    .collect();
                if mine.is_empty() {
                    break;
                }
                let r = mine[(n as usize) % mine.len()];
                let body = now_ns().to_string();
                let frame = format!(
                    "SEND\ndestination:{}\ncontent-length:{}\n\n{}\0",
                    rooms[r],
                    body.len(),
                    body
                );
                s.send(Message::text(frame))
                    .await
                    .map_err(|e| e.to_string())?;
                published[r].fetch_add(1, Ordering::Relaxed);
                n += 1;
                if per_pub_rate > 0.0 {
                    let due = t0 + Duration::from_secs_f64(n as f64 / per_pub_rate);
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            let _ = s.close(None).await;
            Ok::<u64, String>(n)
        }));
    }
    let mut sent = 0;
    for t in pubs {
        match t.await {
            Ok(Ok(n)) => sent += n,
            other => {
                eprintln!("publisher failed: {other:?}");
                return 2;
            }
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.drain)).await;
    stop.store(true, Ordering::Relaxed);

    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let (mut delivered, mut expected, mut out_of_order, mut short) = (0u64, 0u64, 0u64, 0u64);
    for r in readers {
        let seen = r.await.expect("reader task");
        let want = published[seen.room].load(Ordering::Relaxed);
        expected += want;
        delivered += seen.received;
        out_of_order += seen.out_of_order;
        if seen.received != want {
            short += 1;
        }
        hist.add(&seen.hist).expect("merge histograms");
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let rate = delivered as f64 / publish_secs;
    println!(
        "fanout: {} rooms x {} members, {} publishers, {} sent in {:.2} s; delivered {}/{} ({:.0}/s); lost {}; out of order {}; subscribers short {}",
        args.rooms,
        args.members,
        args.publishers,
        sent,
        publish_secs,
        delivered,
        expected,
        rate,
        expected.saturating_sub(delivered),
        out_of_order,
        short
    );
    println!(
        "latency ms: p50 {:.3} p90 {:.3} p99 {:.3} max {:.3}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        hist.max() as f64 / 1000.0
    );
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "scenario": "fanout", "url": args.endpoint.url, "rooms": args.rooms, "members": args.members,
            "publishers": args.publishers, "rate": args.rate, "sent": sent, "publish_s": publish_secs,
            "delivered": delivered, "expected": expected,
            "lost": expected.saturating_sub(delivered), "out_of_order": out_of_order,
            "subscribers_short": short, "deliveries_per_s": rate,
            "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": hist.max() as f64 / 1000.0},
        });
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()) {
            eprintln!("cannot write {}: {e}", path.display());
            return 2;
        }
    }
    if expected != delivered || out_of_order > 0 {
        1
    } else {
        0
    }
}

/// `x-seq` and the body (send time in ns) of a MESSAGE frame.
fn parse_message(data: &[u8]) -> Option<(u64, u64)> {
    let head_end = data.windows(2).position(|w| w == b"\n\n")?;
    let head = std::str::from_utf8(&data[..head_end]).ok()?;
    let seq = head
        .lines()
        .find_map(|l| l.strip_prefix("x-seq:"))?
        .parse()
        .ok()?;
    let body = &data[head_end + 2..];
    let body = body.strip_suffix(b"\0").unwrap_or(body);
    let sent = std::str::from_utf8(body).ok()?.trim().parse().ok()?;
    Some((seq, sent))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_seq_and_send_time() {
        let m = b"MESSAGE\nsubscription:0\nx-seq:42\ncontent-length:3\n\n123\0";
        assert_eq!(super::parse_message(m), Some((42, 123)));
    }
}
