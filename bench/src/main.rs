//! `stampede-bench`: load generator for STOMP-over-WebSocket servers.
//!
//! Scenario implemented so far: `storm`, the seed's JMeter plan. N users
//! start over a ramp-up period; each opens a WebSocket, sends CONNECT,
//! reads CONNECTED, SUBSCRIBEs (no receipt: Spring sends none), sends
//! DISCONNECT with `receipt:77`, reads the RECEIPT and closes. Reported per
//! step and for the whole flow like JMeter's Summary Report.
//!
//! Users are spread over worker *processes* (this binary re-run with
//! `--worker I`), each with its own source address 127.0.0.(2+I), so
//! neither the per-process open-file limit nor one ephemeral-port range
//! caps a run. Workers print their raw samples as JSON; the parent merges.

mod fanout;
mod hold;
mod report;
mod storm;
mod ws;

use std::path::PathBuf;
use std::process::Stdio;

use clap::{Args, Parser, Subcommand};
use tokio::io::AsyncReadExt;

use report::{Samples, Summary};

#[derive(Parser)]
#[command(name = "stampede-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// The seed's JMeter plan: connect, CONNECT, SUBSCRIBE, DISCONNECT(receipt), close.
    Storm(StormArgs),
    /// N sessions connect, subscribe and stay idle; server RSS per session.
    Hold(hold::HoldArgs),
    /// R rooms x M members, P publishers: deliveries/s, latency, loss, order.
    Fanout(fanout::FanoutArgs),
}

#[derive(Args, Clone, Debug)]
pub struct StormArgs {
    /// WebSocket URL of the STOMP endpoint.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Number of users.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Seconds over which users start (JMeter's ramp-up); 0 = all at once.
    #[arg(long, default_value_t = 1.0)]
    pub ramp_up: f64,
    /// Rooms the users subscribe to (user i takes room i % rooms).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Worker processes; 0 = one per 15,000 users (each stays well under
    /// the 20,000 open files a process may hold here).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Seconds a step may take before it counts as a timeout error.
    #[arg(long, default_value_t = 10.0)]
    pub step_timeout: f64,
    /// Count a server closing the socket in answer to DISCONNECT as success
    /// (RabbitMQ Web-STOMP closes instead of sending the RECEIPT).
    #[arg(long)]
    pub close_is_receipt: bool,
    /// STOMP `login`/`passcode` and `host` header values.
    #[arg(long, default_value = "guest")]
    pub login: String,
    #[arg(long, default_value = "guest")]
    pub passcode: String,
    #[arg(long, default_value = "/")]
    pub vhost: String,
    /// Write the summary as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Internal: run as worker I of the parent's run and print samples.
    #[arg(long, hide = true)]
    pub worker: Option<usize>,
    /// Internal: how many workers the parent started.
    #[arg(long, hide = true)]
    pub worker_count: Option<usize>,
}

fn main() {
    let cli = Cli::parse();
    match cli.scenario {
        Scenario::Storm(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let code = rt.block_on(run_storm(args));
            std::process::exit(code);
        }
        Scenario::Hold(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let code = rt.block_on(run_hold(args));
            std::process::exit(code);
        }
        Scenario::Fanout(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let code = rt.block_on(fanout::run(args));
            std::process::exit(code);
        }
    }
}

async fn run_storm(args: StormArgs) -> i32 {
    let workers = match (args.worker_count, args.workers) {
        (Some(n), _) => n,
        (None, 0) => args.users.div_ceil(15_000).max(1),
        (None, n) => n,
    };
    if let Some(index) = args.worker {
        // Worker: run our slice, print samples, done.
        let samples = storm::run_slice(&args, index, workers).await;
        println!(
            "{}",
            serde_json::to_string(&samples).expect("samples serialize")
        );
        return 0;
    }
    let started = std::time::Instant::now();
    let mut children = Vec::new();
    for w in 0..workers {
        let mut cmd = tokio::process::Command::new(std::env::current_exe().expect("own path"));
        cmd.args(std::env::args_os().skip(1))
            .arg("--worker-count")
            .arg(workers.to_string())
            .arg("--worker")
            .arg(w.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("cannot start worker {w}: {e}");
                return 2;
            }
        }
    }
    let mut all = Samples::default();
    for mut child in children {
        let mut out = String::new();
        if let Some(mut so) = child.stdout.take() {
            let _ = so.read_to_string(&mut out).await;
        }
        let status = child.wait().await;
        match serde_json::from_str::<Samples>(out.trim()) {
            Ok(s) => all.merge(s),
            Err(e) => {
                eprintln!("worker failed ({status:?}): {e}");
                return 2;
            }
        }
    }
    let wall = started.elapsed();
    let summary = Summary::from_samples(
        &all,
        &["ws_open", "connect", "subscribe", "disconnect", "flow"],
    );
    println!(
        "storm: {} users, ramp-up {} s, {} worker(s), {:.2} s wall",
        args.users,
        args.ramp_up,
        workers,
        wall.as_secs_f64()
    );
    print!("{}", summary.markdown());
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "scenario": "storm",
            "url": args.url,
            "users": args.users,
            "ramp_up_s": args.ramp_up,
            "workers": workers,
            "wall_s": wall.as_secs_f64(),
            "steps": summary,
        });
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()) {
            eprintln!("cannot write {}: {e}", path.display());
            return 2;
        }
    }
    0
}

async fn run_hold(args: hold::HoldArgs) -> i32 {
    use tokio::io::AsyncBufReadExt;
    let workers = match (args.worker_count, args.workers) {
        (Some(n), _) => n,
        (None, 0) => args.sessions.div_ceil(15_000).max(1),
        (None, n) => n,
    };
    if let Some(index) = args.worker {
        hold::worker(&args, index, workers).await;
        return 0;
    }
    let before = args.server_pid.and_then(hold::rss_kib);
    let mut children = Vec::new();
    for w in 0..workers {
        let mut cmd = tokio::process::Command::new(std::env::current_exe().expect("own path"));
        cmd.args(std::env::args_os().skip(1))
            .arg("--worker-count")
            .arg(workers.to_string())
            .arg("--worker")
            .arg(w.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        match cmd.spawn() {
            Ok(c) => children.push(c),
            Err(e) => {
                eprintln!("cannot start worker {w}: {e}");
                return 2;
            }
        }
    }
    let mut total = hold::Opened::default();
    for child in &mut children {
        let mut line = String::new();
        let mut out = tokio::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let _ = out.read_line(&mut line).await;
        match serde_json::from_str::<hold::Opened>(line.trim()) {
            Ok(o) => {
                total.established += o.established;
                for (k, n) in o.errors {
                    *total.errors.entry(k).or_default() += n;
                }
            }
            Err(e) => {
                eprintln!("worker failed: {e}");
                return 2;
            }
        }
    }
    // Let the server finish the last SUBSCRIBEs, then read its RSS.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let after = args.server_pid.and_then(hold::rss_kib);
    tokio::time::sleep(std::time::Duration::from_secs_f64(
        (args.hold - 1.0).max(0.0),
    ))
    .await;
    for child in &mut children {
        drop(child.stdin.take());
    }
    for mut child in children {
        let _ = child.wait().await;
    }
    let per_session = match (before, after) {
        (Some(b), Some(a)) if total.established > 0 => {
            Some((a.saturating_sub(b) * 1024) as f64 / total.established as f64)
        }
        _ => None,
    };
    println!(
        "hold: {} sessions asked, {} established, errors {:?}; server RSS before {:?} KiB, after {:?} KiB, {} bytes per session",
        args.sessions,
        total.established,
        total.errors,
        before,
        after,
        per_session
            .map(|b| format!("{b:.0}"))
            .unwrap_or_else(|| "?".into())
    );
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "scenario": "hold",
            "url": args.url,
            "sessions": args.sessions,
            "established": total.established,
            "errors": total.errors,
            "workers": workers,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "bytes_per_session": per_session,
        });
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&doc).unwrap()) {
            eprintln!("cannot write {}: {e}", path.display());
            return 2;
        }
    }
    0
}
