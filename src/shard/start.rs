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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{Confirm, External, Owed, Shard, ShardHandle, StoreLink};
use crate::config::{Config, Listen};
use crate::conn::{ConnToken, Phase};
use crate::store::pool::Pool;
use crate::store::writer::{self, Committed};

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

/// What the running server is made of, for main: the shards' executors,
/// their inboxes (for the shutdown steps) and the writer's counters.
pub struct Running {
    pub executors: Vec<ExecutorJoinHandle<()>>,
    pub shards: Arc<[ShardHandle]>,
    pub writer: Option<Arc<WriterCounters>>,
    /// The store's links (for the last checkpoint at shutdown).
    pub store: Option<StoreLink>,
}

/// What the writer has done so far (logged by main at exit).
#[derive(Default, Debug)]
pub struct WriterCounters {
    pub batches: AtomicU64,
    pub messages: AtomicU64,
    /// Messages that could not be stored (their publishers got an ERROR).
    pub failed_messages: AtomicU64,
    pub largest_batch: AtomicU64,
}

/// Open the database, start the writer, the reader pool and retention.
fn start_store(
    cfg: &Config,
    shards: &Arc<[ShardHandle]>,
) -> io::Result<(StoreLink, Arc<WriterCounters>)> {
    let fail = |e: crate::store::StoreError| io::Error::other(e.to_string());
    let conn = crate::store::open(&cfg.data_dir, cfg.durability).map_err(fail)?;
    let want_space: Arc<[AtomicBool]> = (0..cfg.shards).map(|_| AtomicBool::new(false)).collect();
    let counters = Arc::new(WriterCounters::default());
    let on_commit = {
        let shards = shards.clone();
        let want_space = want_space.clone();
        let counters = counters.clone();
        let n = cfg.shards;
        move |c: Committed<Option<Owed>>| {
            let size = c.tags.len() as u64;
            if size > 0 {
                counters.batches.fetch_add(1, Ordering::Relaxed);
                if c.error.is_some() {
                    counters.failed_messages.fetch_add(size, Ordering::Relaxed);
                } else {
                    counters.messages.fetch_add(size, Ordering::Relaxed);
                }
                counters.largest_batch.fetch_max(size, Ordering::Relaxed);
            }
            let error: Option<Arc<str>> = c.error.map(Into::into);
            let mut per: Vec<Vec<(ConnToken, Confirm)>> = (0..n).map(|_| Vec::new()).collect();
            for o in c.tags.into_iter().flatten() {
                per[o.shard].push((o.conn, o.what));
            }
            for (i, owed) in per.into_iter().enumerate() {
                if !owed.is_empty() {
                    shards[i].send(External::Committed {
                        owed,
                        error: error.clone(),
                    });
                }
            }
            // After every commit and every job the queue has room: ring
            // the shards that found it full.
            for (i, w) in want_space.iter().enumerate() {
                if w.swap(false, Ordering::SeqCst) {
                    shards[i].bell.ring();
                }
            }
        }
    };
    let (writer, _join) = writer::spawn(conn, cfg.persist_queue, cfg.persist_batch, on_commit)?;
    let pool = Pool::start(&cfg.data_dir, cfg.read_threads, cfg.read_queue).map_err(fail)?;
    if cfg.retention_days > 0 || cfg.retention_per_room > 0 {
        crate::store::retention::spawn(
            writer.clone(),
            crate::store::retention::Policy {
                days: cfg.retention_days,
                per_room: cfg.retention_per_room,
            },
            Duration::from_secs(cfg.retention_interval_s),
        )?;
    }
    Ok((
        StoreLink {
            writer,
            pool,
            want_space,
        },
        counters,
    ))
}

/// Start every shard; returns once every shard accepts.
pub fn start(cfg: &Config, listeners: Listeners) -> io::Result<Running> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<usize>();
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .filter(|ids: &Vec<usize>| !ids.is_empty())
        .unwrap_or_else(|| vec![0]);
    let mut meshes = super::mesh::build(cfg.shards, cfg.mesh_capacity)?;
    let mut inboxes = Vec::with_capacity(cfg.shards);
    let shard_handles: Arc<[ShardHandle]> = meshes
        .iter()
        .map(|m| {
            let (tx, rx) = crossbeam_channel::unbounded();
            inboxes.push(rx);
            ShardHandle {
                tx,
                bell: m.ringer(),
            }
        })
        .collect();
    let (store, counters) = if cfg.persist {
        let (link, counters) = start_store(cfg, &shard_handles)?;
        (Some(link), Some(counters))
    } else {
        (None, None)
    };
    let mut handles = Vec::with_capacity(cfg.shards);
    for id in 0..cfg.shards {
        let cpu = cores[id % cores.len()];
        let cfg = cfg.clone();
        let mesh = meshes.remove(0);
        let inbox = inboxes.remove(0);
        let all = shard_handles.clone();
        let store = store.clone();
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
            .spawn(move || async move {
                let shard = Shard::new(cfg, mesh, inbox, all, store);
                run(shard, http, stomp, ready).await
            })
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
    Ok(Running {
        executors: handles,
        shards: shard_handles,
        writer: counters,
        store,
    })
}

/// The body of one shard's executor.
async fn run(
    mut shard: Shard,
    http: RawFd,
    stomp: Option<RawFd>,
    ready: std::sync::mpsc::Sender<usize>,
) {
    let nshards = shard.nshards;
    let bell = shard.mesh.take_bell_fd();
    let shard = Rc::new(shard);
    // The doorbell also carries the writer's, the readers' and main's
    // messages, so it is read even with a single shard.
    glommio::spawn_local(shard.clone().receive(bell)).detach();
    for to in (0..nshards).filter(|&p| p != shard.id) {
        glommio::spawn_local(shard.clone().send_to(to)).detach();
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
    // Accepting stopped (shutdown); the shard's other tasks go on until
    // the process exits. Returning would end the executor and drop them.
    futures_lite::future::pending::<()>().await;
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
    let stop = &shard.stop_accept[usize::from(phase != Phase::Http)];
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stop.wait().await;
            None
        })
        .await;
        // Shutting down: dropping the listener closes it (and a connection
        // accepted in the same instant is closed unread).
        let Some(accepted) = accepted.filter(|_| !shard.stopping.get()) else {
            return;
        };
        match accepted {
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
