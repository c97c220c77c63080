//! The `hold` scenario: N sessions connect, subscribe and stay idle; the
//! server's RSS before and after gives its memory per idle session.
//!
//! Workers open their slice, report `{"established":…,"errors":{…}}` as one
//! JSON line, then hold every socket until the parent closes their stdin.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::SinkExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

use crate::ws::{self, Ws};

#[derive(clap::Args, Clone, Debug)]
pub struct HoldArgs {
    #[command(flatten)]
    pub endpoint: ws::Endpoint,
    /// Number of sessions to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Rooms the sessions subscribe to (session i takes room i % rooms).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Seconds over which sessions open.
    #[arg(long, default_value_t = 2.0)]
    pub ramp_up: f64,
    /// Seconds to hold the sessions once all are open.
    #[arg(long, default_value_t = 10.0)]
    pub hold: f64,
    #[command(flatten)]
    pub observe: crate::Observe,
    #[command(flatten)]
    pub workers: crate::Workers,
    /// Seconds a step may take before it counts as a timeout error.
    #[arg(long, default_value_t = 10.0)]
    pub step_timeout: f64,
}

/// What a worker reports once its sessions are open.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Opened {
    pub established: usize,
    pub errors: BTreeMap<String, u64>,
}

/// Worker: open the slice, report, hold until stdin closes.
pub async fn worker(args: &HoldArgs, index: usize, workers: usize) {
    let limit = Duration::from_secs_f64(args.step_timeout);
    let mut report = Opened::default();
    let (addr, src) = match ws::resolve(&args.endpoint.url, index) {
        Ok(x) => x,
        Err(e) => {
            report
                .errors
                .insert(e, (index..args.sessions).step_by(workers).count() as u64);
            println!("{}", serde_json::to_string(&report).unwrap());
            return;
        }
    };
    let start = tokio::time::Instant::now();
    let opened = Arc::new(AtomicU64::new(0));
    let progress = crate::workers::report_progress(opened.clone());
    let mut tasks = Vec::new();
    for i in (index..args.sessions).step_by(workers) {
        let offset = Duration::from_secs_f64(args.ramp_up * i as f64 / args.sessions.max(1) as f64);
        let args = args.clone();
        let opened = opened.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + offset).await;
            let r = open_session(i, &args, addr, src, limit).await;
            opened.fetch_add(1, Ordering::Relaxed);
            r
        }));
    }
    let mut held: Vec<Ws> = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(ws)) => held.push(ws),
            Ok(Err(kind)) => *report.errors.entry(kind).or_default() += 1,
            Err(e) => *report.errors.entry(format!("task: {e}")).or_default() += 1,
        }
    }
    progress.abort();
    report.established = held.len();
    println!("{}", serde_json::to_string(&report).unwrap());
    // Hold until the parent closes our stdin.
    let mut sink = [0u8; 16];
    let mut stdin = tokio::io::stdin();
    while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
    drop(held);
}

async fn open_session(
    i: usize,
    args: &HoldArgs,
    addr: std::net::SocketAddr,
    src: Option<std::net::IpAddr>,
    limit: Duration,
) -> Result<Ws, String> {
    let mut s = ws::open(&args.endpoint.url, addr, src, limit).await?;
    ws::login(&mut s, &args.endpoint, limit).await?;
    let sub = format!(
        "SUBSCRIBE\nid:sub-0\ndestination:/topic/room-{}\n\n\0",
        i % args.rooms.max(1)
    );
    s.send(Message::text(sub))
        .await
        .map_err(|e| format!("send: {}", ws::short(&e.to_string())))?;
    Ok(s)
}
