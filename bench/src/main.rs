//! `stampede-bench`: load generator for STOMP-over-WebSocket servers.
//!
//! Scenarios: `storm` (the seed's JMeter plan, reported per step like
//! JMeter's Summary Report), `hold` (server memory per idle session) and
//! `fanout` (deliveries/s, latency, loss and order). See bench/README.md.
//!
//! `storm` and `hold` spread users over worker *processes* (this binary
//! re-run with `--worker I`), each with its own source address
//! 127.0.0.(2+I), so neither the per-process open-file limit nor one
//! ephemeral-port range caps a run. Workers print JSON; the parent merges.

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
    #[command(flatten)]
    pub endpoint: ws::Endpoint,
    /// Number of users.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Seconds over which users start (JMeter's ramp-up); 0 = all at once.
    #[arg(long, default_value_t = 1.0)]
    pub ramp_up: f64,
    /// Rooms the users subscribe to (user i takes room i % rooms).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    #[command(flatten)]
    pub workers: Workers,
    /// Seconds a step may take before it counts as a timeout error.
    #[arg(long, default_value_t = 10.0)]
    pub step_timeout: f64,
    /// Count a server closing the socket in answer to DISCONNECT as success
    /// (RabbitMQ Web-STOMP closes instead of sending the RECEIPT).
    #[arg(long)]
    pub close_is_receipt: bool,
    /// Write the summary as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// How a scenario's users are spread over worker processes.
#[derive(Args, Clone, Debug)]
pub struct Workers {
    /// Worker processes; 0 = one per 15,000 users (each stays well under
    /// the 20,000 open files a process may hold here).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Internal: run as worker I of the parent's run.
    #[arg(long, hide = true)]
    pub worker: Option<usize>,
    /// Internal: how many workers the parent started.
    #[arg(long, hide = true)]
    pub worker_count: Option<usize>,
}

impl Workers {
    /// How many workers share `users`.
    pub fn count(&self, users: usize) -> usize {
        match (self.worker_count, self.workers) {
            (Some(n), _) => n,
            (None, 0) => users.div_ceil(15_000).max(1),
            (None, n) => n,
        }
    }

    /// Start `n` workers: this binary with the parent's arguments plus the
    /// worker's index; stdout piped (and stdin, for workers the parent
    /// stops by closing it).
    fn spawn(n: usize, stdin: bool) -> Result<Vec<tokio::process::Child>, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
        (0..n)
            .map(|w| {
                tokio::process::Command::new(&exe)
                    .args(std::env::args_os().skip(1))
                    .arg("--worker-count")
                    .arg(n.to_string())
                    .arg("--worker")
                    .arg(w.to_string())
                    .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|e| format!("cannot start worker {w}: {e}"))
            })
            .collect()
    }
}

fn main() {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async {
        match cli.scenario {
            Scenario::Storm(args) => run_storm(args).await,
            Scenario::Hold(args) => run_hold(args).await,
            Scenario::Fanout(args) => fanout::run(args).await,
        }
    });
    std::process::exit(code);
}

async fn run_storm(args: StormArgs) -> i32 {
    let workers = args.workers.count(args.users);
    if let Some(index) = args.workers.worker {
        // Worker: run our slice, print samples, done.
        let samples = storm::run_slice(&args, index, workers).await;
        println!(
            "{}",
            serde_json::to_string(&samples).expect("samples serialize")
        );
        return 0;
    }
    let started = std::time::Instant::now();
    let children = match Workers::spawn(workers, false) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
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
            "url": args.endpoint.url,
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
    let workers = args.workers.count(args.sessions);
    if let Some(index) = args.workers.worker {
        hold::worker(&args, index, workers).await;
        return 0;
    }
    let before = args.server_pid.and_then(hold::rss_kib);
    let mut children = match Workers::spawn(workers, true) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
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
            "url": args.endpoint.url,
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
