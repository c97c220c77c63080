//! The `hold` scenario: N sessions connect, subscribe and stay idle; the
//! server's RSS before and after gives its memory per idle session.
//!
//! Workers open their slice, report `{"established":…,"errors":{…}}` as one
//! JSON line, then hold every socket until the parent closes their stdin.

use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

use crate::workers::{Opened, open_slice};
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

/// Worker: open the slice, report, hold until stdin closes.
pub async fn worker(args: &HoldArgs, index: usize, workers: usize) {
    let limit = Duration::from_secs_f64(args.step_timeout);
    let slice = (index..args.sessions).step_by(workers);
    let (addr, src) = match ws::resolve(&args.endpoint.url, index) {
        Ok(x) => x,
        Err(e) => {
            let report = Opened::all_failed(e, slice.count());
            println!("{}", serde_json::to_string(&report).expect("json"));
            return;
        }
    };
    let (held, report) = open_slice(slice, args.sessions, args.ramp_up, |i| {
        let args = args.clone();
        async move { open_session(i, &args, addr, src, limit).await }
    })
    .await;
    println!("{}", serde_json::to_string(&report).expect("json"));
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
    let mut s = ws::open(&args.endpoint, addr, src, limit).await?;
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
