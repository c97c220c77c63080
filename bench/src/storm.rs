//! The `storm` scenario: one user's JMeter flow, and a worker's slice of users.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::StormArgs;
use crate::report::Samples;

/// Run the users `i` with `i % workers == index`, each at its ramp-up offset.
pub async fn run_slice(args: &StormArgs, index: usize, workers: usize) -> Samples {
    let (addr, src) = match crate::ws::resolve(&args.endpoint.url, index) {
        Ok(x) => x,
        Err(e) => {
            let mut s = Samples::default();
            for _ in (index..args.users).step_by(workers) {
                s.error("ws_open", &e);
                s.error("flow", &e);
            }
            return s;
        }
    };
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let done = Arc::new(AtomicU64::new(0));
    let progress = crate::workers::report_progress(done.clone());
    let mut tasks = Vec::new();
    for i in (index..args.users).step_by(workers) {
        let offset = if args.users > 1 {
            Duration::from_secs_f64(args.ramp_up * i as f64 / args.users as f64)
        } else {
            Duration::ZERO
        };
        let args = args.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + offset).await;
            let steps = user(i, &args, addr, src).await;
            done.fetch_add(1, Ordering::Relaxed);
            steps
        }));
    }
    let mut samples = Samples::default();
    for t in tasks {
        match t.await {
            Ok(steps) => {
                for (step, r) in steps {
                    match r {
                        Ok(us) => samples.ok(step, us),
                        Err(kind) => samples.error(step, &kind),
                    }
                }
            }
            Err(e) => samples.error("flow", &format!("task failed: {e}")),
        }
    }
    progress.abort();
    samples
}

type Step = (&'static str, Result<u64, String>);

/// One user's flow; every step that ran reports its time or error kind.
async fn user(i: usize, args: &StormArgs, addr: SocketAddr, src: Option<IpAddr>) -> Vec<Step> {
    let mut steps = Vec::with_capacity(5);
    let t0 = Instant::now();
    let r = flow(i, args, addr, src, &mut steps).await;
    steps.push(("flow", r.map(|()| t0.elapsed().as_micros() as u64)));
    steps
}

async fn flow(
    i: usize,
    args: &StormArgs,
    addr: SocketAddr,
    src: Option<IpAddr>,
    steps: &mut Vec<Step>,
) -> Result<(), String> {
    let limit = Duration::from_secs_f64(args.step_timeout);
    let mut t = Instant::now();
    let mut record =
        |steps: &mut Vec<Step>, step: &'static str, r: Result<(), String>| -> Result<(), String> {
            let out = r.clone().map(|()| t.elapsed().as_micros() as u64);
            steps.push((step, out));
            t = Instant::now();
            r
        };

    // ws_open: TCP connect + WebSocket upgrade.
    let opened = crate::ws::open(&args.endpoint, addr, src, limit).await;
    let mut ws = match opened {
        Ok(ws) => {
            record(steps, "ws_open", Ok(()))?;
            ws
        }
        Err(e) => return record(steps, "ws_open", Err(e)),
    };

    // connect: CONNECT → CONNECTED.
    let r = crate::ws::login(&mut ws, &args.endpoint, limit).await;
    record(steps, "connect", r)?;

    // subscribe: sent without a receipt (Spring answers none).
    let sub = format!(
        "SUBSCRIBE\nid:sub-0\ndestination:/topic/room-{}\n\n\0",
        i % args.rooms.max(1)
    );
    let r = ws
        .send(Message::text(sub))
        .await
        .map_err(|e| format!("send: {}", crate::ws::short(&e.to_string())));
    record(steps, "subscribe", r)?;

    // disconnect: DISCONNECT receipt:77 → RECEIPT.
    let r = async {
        ws.send(Message::text("DISCONNECT\nreceipt:77\n\n\0"))
            .await
            .map_err(|e| format!("send: {}", crate::ws::short(&e.to_string())))?;
        crate::ws::expect(&mut ws, "RECEIPT", limit, args.close_is_receipt).await
    }
    .await;
    record(steps, "disconnect", r)?;

    let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    Ok(())
}
