//! Start-up: bind one `SO_REUSEPORT` listener per shard and listener kind,
//! open the store and start its threads, build the shard mesh, start one
//! pinned executor per shard, and wait until every shard accepts.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

use crate::config::{Config, Listen};
use crate::conn::ConnToken;
use crate::message::Confirm;
use crate::metrics::Readiness;
use crate::push::{self, PushLink, fcm};
use crate::shard::msg::{External, ShardHandle, Tag};
use crate::shard::{Shard, ShardListeners, ShardSetup, StoreLink, mesh};
use crate::store::StoreError;
use crate::store::pool::Pool;
use crate::store::writer::{self, Committed};

/// Why the server did not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// Binding a listener or building the mesh failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The database could not be opened or its threads started.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// An executor could not be started.
    #[error("cannot start shard {shard} on cpu {cpu}: {reason}")]
    Executor {
        shard: usize,
        cpu: usize,
        reason: String,
    },
    /// Push notifications could not be set up (credentials).
    #[error("push notifications: {0}")]
    Push(String),
    /// Not every shard reported within `STARTUP_TIMEOUT` (see main: the
    /// cure is to start over).
    #[error("not every shard started within {} s", STARTUP_TIMEOUT.as_secs())]
    Stalled,
}

/// Listening sockets for every shard, bound before any executor starts so
/// that a port-0 request resolves to one port shared by all shards. Owned
/// until each is handed to its shard: nothing leaks if start-up fails.
pub struct Listeners {
    pub http_addr: SocketAddr,
    pub stomp_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    /// `http[i]`, `stomp[i]`, `metrics[i]`: the sockets shard `i` accepts on.
    http: Vec<OwnedFd>,
    stomp: Vec<OwnedFd>,
    metrics: Vec<OwnedFd>,
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
        let (metrics_addr, metrics) = match cfg.metrics_listen {
            Listen::Off => (None, Vec::new()),
            Listen::On(addr) => {
                let (a, fds) = bind_all(addr, cfg.shards, cfg.listen_backlog)?;
                (Some(a), fds)
            }
        };
        Ok(Listeners {
            http_addr,
            stomp_addr,
            metrics_addr,
            http,
            stomp,
            metrics,
        })
    }
}

/// Bind `n` SO_REUSEPORT sockets to `addr` (all to the same port when `addr`
/// asks for port 0).
fn bind_all(addr: SocketAddr, n: usize, backlog: i32) -> io::Result<(SocketAddr, Vec<OwnedFd>)> {
    // glommio always sets SO_REUSEPORT, so a second stampede on the same port
    // would silently take half the connections. A plain bind first fails
    // with "address in use" if anyone listens there already (see
    // `wait_until_free`). Port 0 always gets a fresh port: no probe.
    if addr.port() != 0 {
        wait_until_free(addr)?;
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
        fds.push(OwnedFd::from(s));
    }
    Ok((addr, fds))
}

/// How long a start waits for listeners on its port to go away before it
/// concludes that another process is serving there.
const PORT_WAIT: Duration = Duration::from_secs(2);
/// Pause between two bind probes while waiting.
const PORT_POLL: Duration = Duration::from_millis(10);

/// Probe `addr` with a plain bind (`SO_REUSEADDR`, no `SO_REUSEPORT`) until
/// it succeeds, for at most `PORT_WAIT`.
///
/// With `SO_REUSEADDR` on both sides only a socket in LISTEN makes such a
/// bind fail: the TIME_WAIT and FIN_WAIT connections a killed instance
/// leaves behind do not. But a listener also outlives the process that
/// owned it: glommio accepts through io_uring, an accept in flight holds a
/// reference to the listening socket, and after `kill -9` the kernel tears
/// the ring down in a worker *after* the process has been reaped. For that
/// moment (10–30 ms on an idle machine) the old listeners are still in LISTEN, in no
/// process's fd table, and still complete handshakes — so neither a LISTEN
/// entry in /proc/net/tcp nor a test connect can tell them from a live
/// instance's. What tells them apart is time: they go away by themselves,
/// a live instance's listener does not. Nor may we simply bind next to
/// them with SO_REUSEPORT: we would join their reuseport group, and the
/// connections the kernel hashed to them would die with them. So: retry,
/// bounded; a port still taken after `PORT_WAIT` means another process is
/// listening there, and we refuse to start.
fn wait_until_free(addr: SocketAddr) -> io::Result<()> {
    let start = std::time::Instant::now();
    let mut waited = false;
    loop {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        match probe.bind(&addr.into()) {
            Ok(()) => {
                if waited {
                    tracing::info!(
                        "waited {} ms for earlier listeners on {addr} to close",
                        start.elapsed().as_millis()
                    );
                }
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && start.elapsed() < PORT_WAIT => {
                drop(probe);
                waited = true;
                std::thread::sleep(PORT_POLL);
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot listen on {addr}: {e}; another process is still listening \
                         there after {} s (is another stampede running?)",
                        PORT_WAIT.as_secs()
                    ),
                ));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot listen on {addr}: {e}"),
                ));
            }
        }
    }
}

/// How long start-up waits for every shard to report that it accepts. A
/// shard normally starts in a few milliseconds; see `main` for what happens
/// when one does not.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the running server is made of, for main: the shards' executors,
/// their inboxes (for the shutdown steps) and the writer's counters.
pub struct Running {
    /// Kept for the life of the process (the executors run until it ends).
    _executors: Vec<ExecutorJoinHandle<()>>,
    shards: Arc<[ShardHandle]>,
    /// What the writer has done so far; `None` with `--persist false`.
    pub writer: Option<Arc<WriterCounters>>,
    /// The store's links (for the last checkpoint at shutdown).
    store: Option<StoreLink>,
    /// Told when the shutdown begins (`/readyz` answers 503 from then on).
    ready: Arc<Readiness>,
}

pub use crate::scrape::WriterCounters;

/// A step of the graceful shutdown that every shard reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Stop accepting and reading; report once everything read is committed.
    Drain,
    /// Close every client; report once all are gone (or the close deadline).
    Close,
}

impl Running {
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Start `step` on every shard; reports (a shard id each) arrive on the
    /// returned channel.
    pub fn begin(&self, step: Step) -> std::sync::mpsc::Receiver<usize> {
        if step == Step::Drain {
            self.ready.set_draining();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        for s in self.shards.iter() {
            s.send(match step {
                Step::Drain => External::Stop {
                    flushed: tx.clone(),
                },
                Step::Close => External::Close { closed: tx.clone() },
            });
        }
        rx
    }

    /// Use `config` for TLS connections accepted from now on (SIGHUP);
    /// open sessions keep theirs.
    pub fn reload_tls(&self, config: Arc<rustls::ServerConfig>) {
        for s in self.shards.iter() {
            s.send(External::Tls(config.clone()));
        }
    }

    /// Run `job` on the writer's thread after everything queued before it
    /// is committed; `false` without a store (or if the writer is gone).
    pub fn after_commits(&self, job: writer::AfterJob) -> bool {
        match &self.store {
            Some(store) => store.writer.send(writer::Item::After(job)).is_ok(),
            None => false,
        }
    }
}

/// Open the database, start the writer, the reader pool and retention.
fn start_store(
    cfg: &Config,
    shards: &Arc<[ShardHandle]>,
    push: Arc<std::sync::OnceLock<PushLink>>,
) -> Result<(StoreLink, Arc<WriterCounters>), StartError> {
    let conn = crate::store::open(&cfg.data_dir, cfg.durability)?;
    let want_space: Arc<[AtomicBool]> = (0..cfg.shards).map(|_| AtomicBool::new(false)).collect();
    let counters = Arc::new(WriterCounters::default());
    let on_commit = {
        let shards = shards.clone();
        let want_space = want_space.clone();
        let counters = counters.clone();
        let n = cfg.shards;
        let fsync = cfg.durability == crate::config::Durability::Full;
        move |c: Committed<Tag>| {
            let size = c.tags.len() as u64;
            if size > 0 {
                counters.batches.fetch_add(1, Ordering::Relaxed);
                if c.error.is_some() {
                    counters.failed_messages.fetch_add(size, Ordering::Relaxed);
                } else {
                    counters.messages.fetch_add(size, Ordering::Relaxed);
                    counters.batch_size.observe(size);
                    if !c.took.is_zero() {
                        counters.commit_seconds.observe_duration(c.took);
                    }
                    if fsync {
                        counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                    }
                }
                counters.largest_batch.fetch_max(size, Ordering::Relaxed);
            }
            let error = c.error.map(Arc::new);
            let mut per: Vec<Vec<(ConnToken, Confirm)>> = (0..n).map(|_| Vec::new()).collect();
            let stored = error.is_none();
            for tag in c.tags {
                if let Some(o) = tag.owed {
                    per[o.shard].push((o.conn, o.what));
                }
                // A push announces only a stored message.
                if let (Some(job), Some(push), true) = (tag.push, push.get(), stored) {
                    push.offer(job);
                }
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
    let (writer, _join) = writer::spawn(
        conn,
        cfg.persist_queue,
        cfg.persist_batch,
        cfg.cluster.on(),
        on_commit,
    )?;
    let pool = Pool::start(&cfg.data_dir, cfg.read_threads, cfg.read_queue)?;
    let finish_on_writer = {
        let writer = writer.clone();
        move || {
            writer::run_after(&writer, |conn| {
                if let Err(e) = crate::store::checkpoint::pass(conn) {
                    tracing::warn!("checkpoint on the writer: {e}");
                }
            })
            .is_some()
        }
    };
    crate::store::checkpoint::spawn(
        crate::store::checkpoint::open(&cfg.data_dir, cfg.durability)?,
        Duration::from_millis(cfg.checkpoint_interval_ms),
        finish_on_writer,
    )?;
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

/// Start the push pool if push is on: FCM credentials, threads. Dead
/// devices are deleted through the writer (`writer`, set once it runs).
fn start_push(
    cfg: &Config,
    writer: crossbeam_channel::Sender<crate::shard::WriterItem>,
    cluster: Option<Arc<crate::cluster::Settings>>,
) -> Result<Option<PushLink>, StartError> {
    if !cfg.push_enabled() {
        return Ok(None);
    }
    let err = |e: fcm::FcmError| StartError::Push(e.to_string());
    let (credentials, project) = if !cfg.fcm_access_token.expose().is_empty() {
        (
            fcm::Credentials::AccessToken(cfg.fcm_access_token.expose().to_string()),
            cfg.fcm_project.clone(),
        )
    } else {
        let account = fcm::ServiceAccount::from_file(&cfg.fcm_credentials).map_err(err)?;
        let project = if cfg.fcm_project.is_empty() {
            account.project_id.clone()
        } else {
            cfg.fcm_project.clone()
        };
        (fcm::Credentials::ServiceAccount(account), project)
    };
    let client = fcm::Fcm::new(fcm::FcmConfig {
        endpoint: cfg.fcm_endpoint.trim_end_matches('/').to_string(),
        project,
        credentials,
        max_retries: cfg.push_retries,
        ..fcm::FcmConfig::default()
    })
    .map_err(err)?;
    let delete: push::DeleteDevice = Arc::new(move |user: Box<str>, token: Box<str>| {
        // A plain thread: it may wait for room in the writer's queue.
        let _ = writer.send(writer::Item::After(Box::new(move |conn| {
            if let Err(e) = crate::store::members::remove_device(conn, &user, &token) {
                tracing::warn!("cannot delete a dead push device: {e}");
            }
        })));
    });
    let link = push::start(
        client,
        cfg.push_threads,
        cfg.push_queue,
        &cfg.data_dir,
        delete,
        cluster,
    )?;
    tracing::info!(threads = cfg.push_threads, endpoint = %cfg.fcm_endpoint, "push notifications on");
    Ok(Some(link))
}

/// Start the Redis threads of cluster mode (`--cluster`), which answer
/// the shards through their inboxes.
fn start_cluster(
    cfg: &Config,
    handles: &Arc<[ShardHandle]>,
) -> Result<Option<crate::shard::ClusterLink>, StartError> {
    if !cfg.cluster.on() {
        return Ok(None);
    }
    let node: Box<str> = if cfg.cluster_node.is_empty() {
        format!(
            "{}-{:04x}",
            cfg.listen.to_string().replace([':', '[', ']'], "_"),
            fastrand::u16(..)
        )
        .into()
    } else {
        cfg.cluster_node.as_str().into()
    };
    let settings = crate::cluster::Settings {
        urls: cfg.cluster.0.clone(),
        node,
        shards: cfg.shards,
        stream_len: cfg.cluster_stream_len,
        stream_ttl_s: cfg.cluster_stream_ttl_s,
        queue: cfg.cluster_queue,
        presence_ttl_s: cfg.cluster_presence_ttl_s,
    };
    tracing::info!(
        node = &*settings.node,
        redis = %cfg.cluster,
        "cluster mode: Redis sequences the rooms"
    );
    let handles = handles.clone();
    let link = crate::cluster::start(settings, move |shard, ev| {
        handles[shard].send(External::Cluster(ev))
    })?;
    Ok(Some(link))
}

/// Start every shard; returns once every shard accepts.
pub fn start(
    cfg: &Config,
    listeners: Listeners,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<Running, StartError> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<usize>();
    let cores: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .filter(|ids: &Vec<usize>| !ids.is_empty())
        .unwrap_or_else(|| vec![0]);
    let meshes = mesh::build(cfg.shards, cfg.mesh_capacity)?;
    let mut inboxes = Vec::with_capacity(cfg.shards);
    let shard_handles: Arc<[ShardHandle]> = meshes
        .iter()
        .map(|m| {
            let (tx, rx) = crossbeam_channel::unbounded();
            inboxes.push(rx);
            ShardHandle {
                tx,
                bell: m.ringer(),
                alive: Arc::default(),
            }
        })
        .collect();
    let cluster = start_cluster(cfg, &shard_handles)?;
    let push_cell = Arc::new(std::sync::OnceLock::new());
    let (store, counters) = if cfg.persist {
        let (link, counters) = start_store(cfg, &shard_handles, push_cell.clone())?;
        (Some(link), Some(counters))
    } else {
        (None, None)
    };
    // After the store (the push threads read its devices); before any
    // shard, so no commit misses it.
    let push = match &store {
        Some(link) => start_push(
            cfg,
            link.writer.clone(),
            cluster.as_ref().map(|c| c.shared_settings()),
        )?,
        None => None,
    };
    let push_stats = push.as_ref().map(|p| p.stats().clone());
    if let Some(p) = push {
        let _ = push_cell.set(p);
    }
    crate::shard::watchdog::spawn(shard_handles.iter().map(|h| h.alive.clone()).collect())?;
    let ready = Arc::new(Readiness::default());
    let (scrape_tx, scrape_rx) = crate::scrape::queue();
    crate::scrape::spawn(
        scrape_rx,
        crate::scrape::Sources {
            shards: shard_handles.clone(),
            store: store
                .as_ref()
                .zip(counters.as_ref())
                .map(|(link, counters)| {
                    let writer = link.writer.clone();
                    let pool = link.pool.clone();
                    crate::scrape::StoreQueues {
                        writer_len: Box::new(move || writer.len()),
                        writer_capacity: cfg.persist_queue,
                        reader_len: Box::new(move || pool.queued()),
                        counters: counters.clone(),
                    }
                }),
            push: push_stats.clone(),
            cluster: cluster.as_ref().map(|c| c.stats.clone()),
            ready: ready.clone(),
            max_connections: cfg.max_connections,
        },
    )?;
    let mut handles = Vec::with_capacity(cfg.shards);
    let mut stomp = listeners.stomp.into_iter();
    let mut metrics = listeners.metrics.into_iter();
    for ((id, mesh), (inbox, http)) in meshes
        .into_iter()
        .enumerate()
        .zip(inboxes.into_iter().zip(listeners.http))
    {
        let cpu = cores[id % cores.len()];
        let setup = ShardSetup {
            cfg: cfg.clone(),
            mesh,
            inbox,
            handles: shard_handles.clone(),
            store: store.clone(),
            push: push_stats.clone(),
            ready: ready.clone(),
            scrape: scrape_tx.clone(),
            tls: tls.clone(),
            cluster: cluster.clone(),
        };
        let listeners = ShardListeners {
            http,
            stomp: stomp.next(),
            metrics: metrics.next(),
        };
        let ready = ready_tx.clone();
        let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard-{id}"))
            .io_memory(cfg.io_memory_kib * 1024)
            .preempt_timer(Duration::from_millis(cfg.preempt_timer_ms.max(1)));
        if cfg.spin_before_park_us > 0 {
            builder = builder.spin_before_park(Duration::from_micros(cfg.spin_before_park_us));
        }
        let handle = builder
            .spawn(move || Shard::run(setup, listeners, ready))
            .map_err(|e| StartError::Executor {
                shard: id,
                cpu,
                reason: e.to_string(),
            })?;
        handles.push(handle);
    }
    let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
    for _ in 0..cfg.shards {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        ready_rx
            .recv_timeout(left)
            .map_err(|_| StartError::Stalled)?;
    }
    ready.set_started();
    #[cfg(feature = "fault-injection")]
    inject_faults(&shard_handles, store.as_ref());
    Ok(Running {
        _executors: handles,
        shards: shard_handles,
        writer: counters,
        store,
        ready,
    })
}

/// Fault injection, compiled only with the `fault-injection` feature (the
/// test suite builds such a binary to check the panic policy):
/// `STAMPEDE_FAULT_PANIC=shard|writer` panics shard 0's thread or the
/// writer's thread `STAMPEDE_FAULT_PANIC_AFTER_MS` (default 200) after
/// start-up.
#[cfg(feature = "fault-injection")]
fn inject_faults(shards: &Arc<[ShardHandle]>, store: Option<&StoreLink>) {
    let Ok(what) = std::env::var("STAMPEDE_FAULT_PANIC") else {
        return;
    };
    let after = std::env::var("STAMPEDE_FAULT_PANIC_AFTER_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let shard = shards[0].clone();
    let writer = store.map(|s| s.writer.clone());
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(after));
        tracing::warn!("fault injection: panicking the {what} thread");
        match (what.as_str(), writer) {
            ("writer", Some(w)) => {
                let _ = w.send(writer::Item::After(Box::new(|_| {
                    panic!("fault injection: the writer panics")
                })));
            }
            _ => shard.send(External::Panic),
        }
    });
}
