//! The `stampede` binary: read the settings, bind, start the shards, wait
//! for a signal.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::ExitCode;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stampede::capacity;
use stampede::config;
use stampede::out::CLOSE_FLUSH_TIMEOUT;
use stampede::server::{Listeners, Running, StartError, Step, start};
use stampede::tls;
use tracing::{error, info, warn};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Environment variable counting start attempts (see `restart_after_stall`).
const ATTEMPT_VAR: &str = "STAMPEDE_START_ATTEMPT";
/// Start attempts before giving up.
const MAX_START_ATTEMPTS: u32 = 3;

/// A glommio executor thread occasionally parks in io_uring before it first
/// polls its shard's future and never wakes (seen about once in 1,000 starts
/// on a loaded 2-core machine; ARCHITECTURE.md, "Start-up"). Nothing has
/// been announced yet — the ready line comes after every shard accepts — so
/// the cure is to start over: re-exec this binary with the same arguments.
/// Listeners and the data-dir lock are close-on-exec and go with the old
/// image.
fn restart_after_stall(e: &StartError) -> ! {
    use std::os::unix::process::CommandExt;
    let attempt: u32 = std::env::var(ATTEMPT_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    if attempt >= MAX_START_ATTEMPTS {
        error!("{e}; giving up after {attempt} attempts");
        std::process::exit(1);
    }
    tracing::warn!("{e}; starting again (attempt {})", attempt + 1);
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "stampede".into());
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env(ATTEMPT_VAR, (attempt + 1).to_string())
        .exec();
    error!("cannot re-exec stampede: {err}");
    std::process::exit(1);
}

/// Exit status after a panic on any thread (EX_SOFTWARE in sysexits.h).
const PANIC_EXIT: i32 = 70;

/// The panic policy: a panic on any thread — a shard, the SQLite writer, a
/// reader — ends the whole process at once with status 70, after logging
/// where it happened. A shard that died while the rest served on would
/// leave its connections and rooms dark; a dead writer would never send
/// the RECEIPTs it owes. The supervisor (systemd `Restart=on-failure`, see
/// `tuning/stampede.service`) starts a fresh process, which recovers every
/// receipted message from the database. `_exit` skips destructors and
/// atexit handlers: other threads may hold state the panic left
/// half-changed.
fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        error!(
            thread = thread.name().unwrap_or("unnamed"),
            "panic: {info}; exiting with status {PANIC_EXIT}"
        );
        default(info);
        // SAFETY: _exit ends the process; nothing runs after it.
        unsafe { libc::_exit(PANIC_EXIT) };
    }));
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    exit_on_panic();

    let cfg = match config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("stampede: {e}");
            return ExitCode::from(2);
        }
    };

    // What the host's limits allow for these settings: the whole report
    // for --check-capacity (before the data-dir lock, so it runs next to a
    // live server), else one log line and a warning per limit passed.
    let report = capacity::assess(
        &capacity::Host::probe(),
        &capacity::Needs {
            shards: cfg.shards,
            max_connections: cfg.max_connections,
            max_connections_set: cfg.max_connections_set,
            listen_backlog: usize::try_from(cfg.listen_backlog).unwrap_or(0),
            io_memory_kib: cfg.io_memory_kib,
        },
    );
    if cfg.check_capacity {
        let mut out = std::io::stdout();
        let _ = out.write_all(report.details().as_bytes());
        let _ = out.flush();
        return if report.ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    info!("{report}");
    for w in report.warnings() {
        warn!("capacity: {w}");
    }

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

    let tls = match tls::from_paths(&cfg.tls_cert, &cfg.tls_key) {
        Ok(t) => t,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
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
        tls = tls.is_some(),
        "listening: http+ws on {} (STOMP at /ws), stomp on {stomp}",
        listeners.http_addr
    );
    let http_addr = listeners.http_addr;
    let metrics_addr = listeners.metrics_addr;
    let running = match start(&cfg, listeners, tls) {
        Ok(h) => h,
        Err(e @ StartError::Stalled) => restart_after_stall(&e),
        Err(e) => {
            error!("{e}");
            return ExitCode::from(1);
        }
    };
    // Signals are caught from before the ready line: a SIGHUP sent as soon
    // as it shows must reload, not end the process (its default action).
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    // Machine-readable lines (tests and scripts read the ports here): the
    // metrics listener's, if any, then the readiness line, always last.
    if let Some(addr) = metrics_addr {
        let _ = writeln!(std::io::stdout(), "stampede metrics http={addr}");
    }
    let _ = writeln!(
        std::io::stdout(),
        "stampede ready http={http_addr} stomp={stomp}"
    );
    let _ = std::io::stdout().flush();

    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            reload_tls(&cfg, &running);
            continue;
        }
        info!(signal = sig, "shutting down");
        break;
    }
    // A second signal while draining: stop at once.
    std::thread::spawn(move || {
        if signals
            .forever()
            .any(|sig| sig != signal_hook::consts::SIGHUP)
        {
            error!("second signal: exiting without finishing the shutdown");
            std::process::exit(1);
        }
    });
    shutdown(&running);
    drop(lock);
    ExitCode::SUCCESS
}

/// SIGHUP: read `--tls-cert` and `--tls-key` again and use them for new
/// connections. A file that cannot be used is logged and the current
/// certificate stays: a bad reload never takes the server down.
fn reload_tls(cfg: &config::Config, running: &Running) {
    match tls::from_paths(&cfg.tls_cert, &cfg.tls_key) {
        Ok(Some(config)) => {
            running.reload_tls(config);
            info!(cert = %cfg.tls_cert.display(), "SIGHUP: TLS certificate reloaded");
        }
        Ok(None) => info!("SIGHUP: no TLS configured (--tls-cert), nothing to reload"),
        Err(e) => error!("SIGHUP: TLS reload failed, keeping the current certificate: {e}"),
    }
}

/// How long the shutdown waits for the final WAL checkpoint.
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the shutdown waits for everything queued to be committed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Wait for up to `n` shards' reports on `rx`, at most `within` in all;
/// returns how many came.
fn reports(rx: &std::sync::mpsc::Receiver<usize>, n: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    (0..n)
        .take_while(|_| {
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_ok()
        })
        .count()
}

/// Graceful shutdown: every shard stops accepting and reading; once every
/// message handed to the writer is committed (and its RECEIPT queued),
/// every client is closed with "going away"; then we exit.
fn shutdown(running: &Running) {
    let n = running.shards();
    let flushed = reports(&running.begin(Step::Drain), n, DRAIN_TIMEOUT);
    if flushed < n {
        error!(
            "shutdown: {} of {n} shards could not hand over everything within {} s",
            n - flushed,
            DRAIN_TIMEOUT.as_secs()
        );
    }
    reports(
        &running.begin(Step::Close),
        n,
        CLOSE_FLUSH_TIMEOUT + Duration::from_millis(500),
    );
    // Fold the write-ahead log into the database, so that after a clean
    // stop `stampede.db` alone holds everything (a plain copy is a backup).
    let (tx, rx) = std::sync::mpsc::channel();
    let checkpoint = Box::new(move |conn: &mut rusqlite::Connection| {
        let _ = tx.send(conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"));
    });
    if running.after_commits(checkpoint) {
        match rx.recv_timeout(CHECKPOINT_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!("final checkpoint: {e}"),
            Err(_) => error!(
                "final checkpoint not done within {} s; the WAL is replayed at the next start",
                CHECKPOINT_TIMEOUT.as_secs()
            ),
        }
    }
    if let Some(w) = &running.writer {
        info!(
            messages = w.messages.load(Ordering::Relaxed),
            batches = w.batches.load(Ordering::Relaxed),
            largest_batch = w.largest_batch.load(Ordering::Relaxed),
            failed_messages = w.failed_messages.load(Ordering::Relaxed),
            "stored"
        );
    }
    info!("stopped");
}
