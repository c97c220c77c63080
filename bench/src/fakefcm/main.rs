//! `fake-fcm`: a fake Firebase Cloud Messaging HTTP v1 server, for tests and
//! benchmarks of push delivery.
//!
//! It answers like Google's endpoints, closely enough that an FCM HTTP v1
//! client cannot tell (point its token URI and FCM base URL here):
//!
//! - `POST /token`: the OAuth2 token endpoint of the service-account flow
//!   (RFC 7523 JWT-bearer grant, RS256 assertion), see [`oauth`];
//! - `POST /v1/projects/{project}/messages:send`: FCM's send, see [`fcm`];
//!
//! and adds control endpoints under `/fake/` ([`control`]): latency, an
//! outage, unregistered and invalid registration tokens, injected 429 / 500
//! / 503 answers, expiring every access token, the record of what was
//! accepted, counters, shutdown. See bench/README.md.
//!
//! Once bound it prints one line, `listening on http://ADDR:PORT`, to
//! stdout (and the port to `--port-file`), then serves until SIGTERM,
//! SIGINT or `POST /fake/shutdown`.

mod control;
mod fcm;
mod google;
mod oauth;
mod state;

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use clap::Parser;
use jsonwebtoken::DecodingKey;
use tokio::net::{TcpListener, TcpSocket};
use tokio::signal::unix::{Signal, SignalKind, signal};

use state::{App, Options};

/// How long in-flight requests may take to finish once asked to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A fake FCM HTTP v1 server (OAuth2 token endpoint + messages:send) with
/// fault injection and a record of what it received.
#[derive(Parser, Debug)]
#[command(name = "fake-fcm", version)]
struct Cli {
    /// Address to listen on (IP:PORT; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Delay before every answer of /token and messages:send, in ms
    /// (changeable with POST /fake/config).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// PEM file with the RSA public key (PKCS#1 or SPKI) that verifies the
    /// signature of /token assertions; without it, signatures are not checked.
    #[arg(long, value_name = "PEM_FILE")]
    public_key: Option<PathBuf>,
    /// Lifetime of the access tokens /token issues, in seconds.
    #[arg(long, default_value_t = 3600)]
    access_token_ttl_s: u64,
    /// An access token messages:send always accepts (repeatable).
    #[arg(long = "accept-token", value_name = "TOKEN")]
    accept_tokens: Vec<String>,
    /// Also write the port, once bound, to this file.
    #[arg(long, value_name = "FILE")]
    port_file: Option<PathBuf>,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Accepted messages kept for GET /fake/received (oldest dropped first).
    #[arg(long, default_value_t = 1_000_000)]
    max_records: usize,
    /// Largest messages:send request body accepted, in bytes (FCM's 4 KiB
    /// payload limit, applied here to the whole body).
    #[arg(long, default_value_t = 4096)]
    max_payload_bytes: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-fcm: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let public_key = match &cli.public_key {
        Some(path) => Some(load_public_key(path)?),
        None => None,
    };
    let app = Arc::new(App::new(Options {
        public_key,
        access_token_ttl: Duration::from_secs(cli.access_token_ttl_s),
        fixed_tokens: cli.accept_tokens.iter().cloned().collect::<HashSet<_>>(),
        max_records: cli.max_records,
        max_payload_bytes: cli.max_payload_bytes,
    }));
    app.config.set_latency_ms(cli.latency_ms);
    raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(cli, app))
}

async fn serve(cli: Cli, app: Arc<App>) -> Result<(), String> {
    let signals = StopSignals::install().map_err(|e| format!("cannot catch signals: {e}"))?;
    let listener = bind(cli.listen).map_err(|e| format!("cannot listen on {}: {e}", cli.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("no local address: {e}"))?;
    if let Some(path) = &cli.port_file {
        write_port_file(path, addr.port())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("stdout: {e}"))?;
    }

    let listener = listener.tap_io(|tcp| {
        // Small answers on keep-alive connections: never wait on Nagle.
        let _ = tcp.set_nodelay(true);
    });
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_app = app.clone();
    let server = axum::serve(listener, router(app)).with_graceful_shutdown(async move {
        signals.wait(&stop_app).await;
        let _ = stopping_tx.send(());
    });
    tokio::select! {
        result = std::future::IntoFuture::into_future(server) => {
            result.map_err(|e| format!("server: {e}"))?;
        }
        () = async {
            let _ = stopping_rx.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            eprintln!("fake-fcm: requests still open after {SHUTDOWN_GRACE:?}; stopping anyway");
        }
    }
    Ok(())
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/token", post(oauth::token))
        .route("/v1/projects/{project}/messages:send", post(fcm::send))
        .route(
            "/fake/config",
            get(control::get_config).post(control::set_config),
        )
        .route("/fake/fail", post(control::fail))
        .route("/fake/expire-tokens", post(control::expire_tokens))
        .route("/fake/received", get(control::received))
        .route("/fake/reset", post(control::reset))
        .route("/fake/stats", get(control::stats))
        .route("/fake/shutdown", post(control::shutdown))
        .with_state(app)
}

/// Binds with a deep accept backlog: hundreds of clients may connect at
/// once at the start of a benchmark.
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// SIGTERM and SIGINT, caught from the moment this is made (before the
/// ready line, so a signal sent right after it is never missed).
struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        Ok(StopSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on SIGTERM, SIGINT or `POST /fake/shutdown`.
    async fn wait(mut self, app: &App) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
            () = app.shutdown.notified() => {}
        }
    }
}

fn load_public_key(path: &Path) -> Result<DecodingKey, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    DecodingKey::from_rsa_pem(&pem)
        .map_err(|e| format!("{}: not an RSA public key in PEM: {e}", path.display()))
}

/// Writes the port atomically (a temp file renamed), so a reader polling
/// the file never sees it half written.
fn write_port_file(path: &Path, port: u16) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{port}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Lifts the soft open-file limit to the hard one: one descriptor per
/// keep-alive connection.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
