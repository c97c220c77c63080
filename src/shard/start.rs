//! Start-up: bind one `SO_REUSEPORT` listener per shard and listener kind,
//! start one pinned executor per shard, wire the channel mesh.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use glommio::net::TcpListener;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use super::Shard;
use crate::config::{Config, Listen};
use crate::conn::Phase;

/// Listening sockets for every shard, bound before any executor starts so
/// that a port-0 request resolves to one port shared by all shards.
pub struct Listeners {
    pub http_addr: SocketAddr,
    pub stomp_addr: Option<SocketAddr>,
    /// `http[i]`, `stomp[i]`: the fds shard `i` accepts on.
    http: Vec<RawFd>,
    stomp: Vec<RawFd>,
}

impl Listeners {
    pub fn bind(cfg: &Config) -> io::Result<Listeners> {
        let (http_addr, http) = bind_all(cfg.listen, cfg.shards, cfg.listen_backlog)?;
        let (stomp_addr, stomp) = match cfg.stomp_listen {
            Listen::Off => (None, Vec::new()),
            Listen::On(addr) => {
                let (a, fds) = bind_all(addr, cfg.shards, cfg.listen_backlog)?;
                (Some(a), fds)
            }
        };
        Ok(Listeners {
            http_addr,
            stomp_addr,
            http,
            stomp,
        })
    }
}

/// Bind `n` SO_REUSEPORT sockets to `addr` (all to the same port when `addr`
/// asks for port 0).
fn bind_all(addr: SocketAddr, n: usize, backlog: i32) -> io::Result<(SocketAddr, Vec<RawFd>)> {
    // glommio always sets SO_REUSEPORT, so a second stampede on the same port
    // would silently take half the connections. A plain bind first fails
    // with "address in use" if anyone listens there already.
    if addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe
            .bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    }
    let mut addr = addr;
    let mut fds = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        s.listen(backlog)?;
        if addr.port() == 0 {
            addr = s.local_addr()?.as_socket().expect("an inet socket");
        }
        fds.push(s.into_raw_fd());
    }
    Ok((addr, fds))
}

/// How long start-up waits for every shard to report that it accepts. A
/// shard normally starts in a few milliseconds; see `main` for what happens
/// when one does not.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Start every shard; returns their join handles once every shard accepts.
pub fn start(cfg: &Config, listeners: Listeners) -> io::Result<Vec<ExecutorJoinHandle<()>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<usize>();
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .filter(|ids: &Vec<usize>| !ids.is_empty())
        .unwrap_or_else(|| vec![0]);
    let mut meshes = super::mesh::build(cfg.shards, cfg.mesh_capacity)?;
    let mut handles = Vec::with_capacity(cfg.shards);
    for id in 0..cfg.shards {
        let cpu = cores[id % cores.len()];
        let cfg = cfg.clone();
        let mesh = meshes.remove(0);
        let http = listeners.http[id];
        let stomp = listeners.stomp.get(id).copied();
        let ready = ready_tx.clone();
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard-{id}"))
            .io_memory(cfg.io_memory_kib * 1024)
            .preempt_timer(Duration::from_millis(cfg.preempt_timer_ms.max(1)));
        if cfg.spin_before_park_us > 0 {
            builder = builder.spin_before_park(Duration::from_micros(cfg.spin_before_park_us));
        }
        let handle = builder
            .spawn(move || async move { run(cfg, mesh, http, stomp, ready).await })
            .map_err(|e| io::Error::other(format!("cannot start shard {id} on cpu {cpu}: {e}")))?;
        handles.push(handle);
    }
    let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
    for _ in 0..cfg.shards {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        ready_rx.recv_timeout(left).map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "not every shard started within {} s",
                    STARTUP_TIMEOUT.as_secs()
                ),
            )
        })?;
    }
    Ok(handles)
}

/// The body of one shard's executor.
async fn run(
    cfg: Config,
    mut mesh: super::mesh::MeshEnd,
    http: RawFd,
    stomp: Option<RawFd>,
    ready: std::sync::mpsc::Sender<usize>,
) {
    let nshards = cfg.shards;
    let bell = mesh.take_bell_fd();
    let shard = Rc::new(Shard::new(cfg, mesh));
    if nshards > 1 {
        glommio::spawn_local(shard.clone().receive(bell)).detach();
        for to in (0..nshards).filter(|&p| p != shard.id) {
            glommio::spawn_local(shard.clone().send_to(to)).detach();
        }
    } else {
        // SAFETY: our own doorbell fd, unused with a single shard.
        drop(unsafe { std::os::fd::OwnedFd::from_raw_fd(bell) });
    }
    let id = shard.id;
    glommio::spawn_local(shard.clone().flusher()).detach();
    glommio::spawn_local(shard.clone().sweep()).detach();
    if let Some(fd) = stomp {
        glommio::spawn_local(accept_loop(shard.clone(), fd, Phase::Stomp)).detach();
    }
    info!(shard = id, "shard started");
    let _ = ready.send(id);
    accept_loop(shard, http, Phase::Http).await;
}

/// Write `msg` to a socket we are about to drop without waiting or
/// signalling (a refusal: a lost copy only means the client sees a close).
pub(crate) fn send_refusal(stream: &glommio::net::TcpStream, msg: &[u8]) {
    // SAFETY: an open socket we own; the buffer is valid for its length.
    unsafe {
        libc::send(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            msg.as_ptr().cast(),
            msg.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
    }
}

/// The refusal written to a connection over `max_connections`.
pub(crate) const FULL_HTTP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nserver full\n";
const FULL_STOMP: &[u8] = b"ERROR\nmessage:server full\ncontent-type:text/plain\ncontent-length:37\n\nmax_connections reached; retry later\n\0";

async fn accept_loop(shard: Rc<Shard>, fd: RawFd, phase: Phase) {
    // SAFETY: the fd is a listening socket bound for this shard alone.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    let max = shard.cfg.max_connections_per_shard();
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if shard.conn_count() >= max {
                    let msg = if phase == Phase::Http {
                        FULL_HTTP
                    } else {
                        FULL_STOMP
                    };
                    send_refusal(&stream, msg);
                    continue;
                }
                shard.register(stream, phase, Vec::new(), Vec::new());
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: back off instead of spinning.
                warn!(shard = shard.id, "accept: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
