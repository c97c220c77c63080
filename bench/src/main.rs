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
mod observe;
mod pace;
mod plot;
mod rawws;
mod report;
mod send;
mod storm;
mod workers;
mod ws;

use clap::{Args, Parser, Subcommand};

use observe::Observe;
use report::{Samples, Summary};
use workers::{Bar, Workers};

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
    /// SEND throughput and RECEIPT latency (persistence/push on vs off).
    Send(send::SendArgs),
    /// Tables and PNG plots from a directory of result JSON files.
    Report(plot::ReportArgs),
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
    #[command(flatten)]
    pub observe: Observe,
}

fn main() {
    let cli = Cli::parse();
    let endpoint = match &cli.scenario {
        Scenario::Storm(a) => Some(&a.endpoint),
        Scenario::Hold(a) => Some(&a.endpoint),
        Scenario::Fanout(a) => Some(&a.endpoint),
        Scenario::Send(a) => Some(&a.endpoint),
        Scenario::Report(_) => None,
    };
    // A bad URL or --ca-cert fails here, once, not once per connection.
    if let Some(Err(e)) = endpoint.map(ws::Endpoint::check) {
        eprintln!("{e}");
        std::process::exit(2);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async {
        match cli.scenario {
            Scenario::Storm(args) => run_storm(args).await,
            Scenario::Hold(args) => run_hold(args).await,
            Scenario::Fanout(args) => fanout::run(args).await,
            Scenario::Send(args) => send::run(args).await,
            Scenario::Report(args) => plot::run(args),
        }
    });
    std::process::exit(code);
}

async fn run_storm(args: StormArgs) -> i32 {
    let n = args.workers.count(args.users);
    if let Some(index) = args.workers.worker {
        // Worker: run our slice, print samples, done.
        let samples = storm::run_slice(&args, index, n).await;
        println!("{}", serde_json::to_string(&samples).expect("samples"));
        return 0;
    }
    let start = observe::Start::now(args.observe.server_pid);
    let mut workers = match Workers::spawn(n) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let bar = Bar::new(n, args.users as u64, "user flows");
    let payloads = workers::payloads(&mut workers, &bar).await;
    bar.done();
    for w in workers {
        w.finish().await;
    }
    let mut all = Samples::default();
    for p in match payloads {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    } {
        match serde_json::from_str::<Samples>(&p) {
            Ok(s) => all.merge(s),
            Err(e) => {
                eprintln!("worker sent no samples: {e}");
                return 2;
            }
        }
    }
    let cost = start.cost();
    let summary = Summary::from_samples(
        &all,
        &["ws_open", "connect", "subscribe", "disconnect", "flow"],
    );
    // Server CPU per user flow: how far from the kernel's own TCP cost.
    let cpu_per_flow_us = cost
        .server_cpu_s
        .map(|s| s * 1e6 / args.users.max(1) as f64);
    println!(
        "storm: {} users, ramp-up {} s, {} worker(s), {:.2} s wall",
        args.users, args.ramp_up, n, cost.wall_s
    );
    print!("{}", summary.markdown());
    println!(
        "{}; server CPU per user flow {}",
        cost.line(),
        cpu_per_flow_us
            .map(|u| format!("{u:.0} µs"))
            .unwrap_or_else(|| "?".into())
    );
    let doc = serde_json::json!({
        "scenario": "storm",
        "label": args.observe.label,
        "url": args.endpoint.url,
        "users": args.users,
        "ramp_up_s": args.ramp_up,
        "workers": n,
        "wall_s": cost.wall_s,
        "cost": cost,
        "server_cpu_per_flow_us": cpu_per_flow_us,
        "steps": summary,
    });
    match observe::write_json(&args.observe, &doc) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

async fn run_hold(args: hold::HoldArgs) -> i32 {
    let n = args.workers.count(args.sessions);
    if let Some(index) = args.workers.worker {
        hold::worker(&args, index, n).await;
        return 0;
    }
    let pid = args.observe.server_pid;
    let start = observe::Start::now(pid);
    let before = pid.and_then(observe::rss_kib);
    let mut workers = match Workers::spawn(n) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let bar = Bar::new(n, args.sessions as u64, "sessions");
    let payloads = workers::payloads(&mut workers, &bar).await;
    bar.done();
    let mut total = workers::Opened::default();
    for p in match payloads {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    } {
        match serde_json::from_str::<workers::Opened>(&p) {
            Ok(o) => total.merge(o),
            Err(e) => {
                eprintln!("worker sent no report: {e}");
                return 2;
            }
        }
    }
    // Let the server finish the last SUBSCRIBEs, then read its RSS.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let after = pid.and_then(observe::rss_kib);
    tokio::time::sleep(std::time::Duration::from_secs_f64(
        (args.hold - 1.0).max(0.0),
    ))
    .await;
    for w in workers {
        w.finish().await;
    }
    let cost = start.cost();
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
    println!("{}", cost.line());
    let doc = serde_json::json!({
        "scenario": "hold",
        "label": args.observe.label,
        "url": args.endpoint.url,
        "sessions": args.sessions,
        "established": total.established,
        "errors": total.errors,
        "workers": n,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_session": per_session,
        "cost": cost,
    });
    match observe::write_json(&args.observe, &doc) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}
