//! The `stampede` binary: read the settings, bind, start the shards, wait
//! for a signal.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use stampede::config;
use stampede::shard::start::{Listeners, start};
use tracing::{error, info};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let cfg = match config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stampede: {e}");
            return ExitCode::from(2);
        }
    };

    // One instance per data directory.
    if let Err(e) = std::fs::create_dir_all(&cfg.data_dir) {
        error!("cannot create data dir {}: {e}", cfg.data_dir.display());
        return ExitCode::from(1);
    }
    let lock_path = cfg.data_dir.join("stampede.lock");
    let lock = match OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
    {
        Ok(f) => f,
        Err(e) => {
            error!("cannot open {}: {e}", lock_path.display());
            return ExitCode::from(1);
        }
    };
    // SAFETY: flock on an fd we own; the lock lives as long as `lock`.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        error!(
            "another stampede is using data dir {} (lock {} is held)",
            cfg.data_dir.display(),
            lock_path.display()
        );
        return ExitCode::from(1);
    }

    let listeners = match Listeners::bind(&cfg) {
        Ok(l) => l,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
    let stomp = listeners
        .stomp_addr
        .map(|a| a.to_string())
        .unwrap_or_else(|| "off".into());
    info!(
        shards = cfg.shards,
        max_connections = cfg.max_connections,
        "listening: http+ws on {} (STOMP at /ws), stomp on {stomp}",
        listeners.http_addr
    );
    let http_addr = listeners.http_addr;
    let handles = match start(&cfg, listeners) {
        Ok(h) => h,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
    // Machine-readable readiness line (tests and scripts read the ports here).
    let _ = writeln!(
        std::io::stdout(),
        "stampede ready http={http_addr} stomp={stomp}"
    );
    let _ = std::io::stdout().flush();

    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(sig) = signals.forever().next() {
        info!(signal = sig, "shutting down");
    }
    drop(handles);
    drop(lock);
    ExitCode::SUCCESS
}
