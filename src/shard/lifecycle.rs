//! A shard's life: accepting connections, and the graceful shutdown's steps
//! (stop accepting and reading, report once everything read is committed,
//! close every client).
//!
//! Runs on its shard only.

use std::cell::{Cell, RefCell};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use tracing::{info, warn};

use super::Shard;
use super::conns::Conns;
use crate::conn::{Phase, Sock, TlsSession};
use crate::http;
use crate::metrics::{Listener, Refused, Transport};
use crate::out::CLOSE_FLUSH_TIMEOUT;
use crate::stomp::frame::{Escaping, encode_frame};
use crate::ws::framing::CloseCode;

/// How long an accept loop waits after an accept error (EMFILE and
/// friends) before trying again, instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

#[derive(Default)]
pub(super) struct Lifecycle {
    /// Shutting down: accept no STOMP client, read no client; the HTTP
    /// listeners go on (for `/readyz`, `/metrics`) until `closing`.
    stopping: Cell<bool>,
    /// The last step: every client is being closed; accept nothing.
    closing: Cell<bool>,
    /// Wake the accept loops to stop (index: `metrics::Listener`).
    stop_accept: [super::notify::Notify; 3],
    /// Peers that said `Quiesce`.
    quiesced: Cell<usize>,
    /// Who to tell once every peer quiesced and everything is committed.
    flushed: RefCell<Option<Sender<usize>>>,
}

impl Lifecycle {
    pub fn stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Stop accepting STOMP clients (the HTTP listeners go on, answering
    /// only health, readiness and metrics); `flushed` is told once
    /// `quiesced` says so.
    pub fn stop(&self, flushed: Sender<usize>) {
        self.stopping.set(true);
        self.stop_accept[Listener::Stomp as usize].notify();
        *self.flushed.borrow_mut() = Some(flushed);
    }

    /// Stop accepting on every listener.
    fn close(&self) {
        self.stopping.set(true);
        self.closing.set(true);
        for n in &self.stop_accept {
            n.notify();
        }
    }

    /// A peer said `Quiesce`.
    pub fn peer_quiesced(&self) {
        self.quiesced.set(self.quiesced.get() + 1);
    }

    /// Once stopping and every one of the other `peers` quiesced (so every
    /// message they sent us is sequenced), who to report to, once.
    pub fn quiesced(&self, peers: usize) -> Option<Sender<usize>> {
        if self.quiesced.get() < peers {
            return None;
        }
        self.flushed.borrow_mut().take()
    }
}

/// The answer to a plain STOMP connection over `max_connections`.
fn stomp_full() -> Vec<u8> {
    let detail = b"max_connections reached; retry later\n";
    let len = detail.len().to_string();
    let mut frame = Vec::new();
    encode_frame(
        &mut frame,
        "ERROR",
        &[
            ("message", "server full"),
            ("content-type", "text/plain"),
            ("content-length", &len),
        ],
        detail,
        Escaping::None,
    );
    frame
}

/// Connections the metrics listener may take beyond `--max-connections`
/// (per shard): a full server is when its metrics matter most. Each is a
/// short plain HTTP request, ended by the connect timeout if it idles.
const METRICS_ALLOWANCE: usize = 64;

/// Accept connections on `fd` (bound for this shard alone) until the
/// shard stops (STOMP) or closes its clients (HTTP, metrics).
pub(super) async fn accept_loop(shard: Rc<Shard>, fd: OwnedFd, listener: Listener) {
    use std::os::fd::FromRawFd;
    // SAFETY: a listening socket we own; glommio owns it from here on.
    let tcp = unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) };
    let (phase, transport, max) = match listener {
        Listener::Http => (
            Phase::Http,
            Transport::Http,
            shard.cfg.max_connections_per_shard(),
        ),
        Listener::Stomp => (
            Phase::Stomp,
            Transport::Stomp,
            shard.cfg.max_connections_per_shard(),
        ),
        Listener::Metrics => (
            Phase::Http,
            Transport::Http,
            shard.cfg.max_connections_per_shard() + METRICS_ALLOWANCE,
        ),
    };
    let full = if phase == Phase::Http {
        http::server_full()
    } else {
        stomp_full()
    };
    let stop = &shard.life.stop_accept[listener as usize];
    loop {
        let accepted = futures_lite::future::or(async { Some(tcp.accept().await) }, async {
            stop.wait().await;
            None
        })
        .await;
        // Shutting down: dropping the listener closes it (and a connection
        // accepted in the same instant is closed unread).
        let done = match listener {
            Listener::Stomp => shard.life.stopping(),
            Listener::Http | Listener::Metrics => shard.life.closing.get(),
        };
        let Some(accepted) = accepted.filter(|_| !done) else {
            return;
        };
        match accepted {
            Ok(stream) => {
                let tls = match listener {
                    Listener::Http | Listener::Stomp => shard.tls.borrow().clone(),
                    Listener::Metrics => None,
                };
                let sock = match tls.map(|c| TlsSession::accept(&c)).transpose() {
                    Ok(tls) => Sock::with_tls(stream, tls),
                    Err(e) => {
                        warn!(shard = shard.id, "TLS session: {e}");
                        continue;
                    }
                };
                if shard.conns.count() >= max {
                    crate::metrics::local(|m| m.refused(transport, Refused::Full));
                    sock.refuse(&full);
                    continue;
                }
                crate::metrics::local(|m| m.accepted[listener as usize].inc());
                let conn = shard.register(sock, phase, Vec::new(), &[]);
                if listener == Listener::Metrics {
                    conn.borrow_mut().set_metrics_only();
                }
            }
            Err(e) => {
                warn!(shard = shard.id, "accept: {e}");
                glommio::timer::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Close every client: WebSocket close 1001 ("going away"), an ERROR on
/// plain STOMP; report to `closed` once all are gone or the close deadline
/// passed.
pub(super) fn close_all(shard: &Rc<Shard>, closed: Sender<usize>) {
    shard.life.close();
    let conns: &Conns = &shard.conns;
    let all = conns.all();
    for conn in &all {
        let mut c = conn.borrow_mut();
        match c.phase() {
            Phase::Ws => c.out_mut().close(CloseCode::Away, "server shutting down"),
            Phase::Stomp if c.session().is_connected() => c.out_mut().error(
                "server shutting down",
                None,
                &[],
                "the server is restarting or stopping; reconnect later",
                CloseCode::Away,
            ),
            _ => c.out_mut().abort(),
        }
        c.wake();
    }
    for conn in &all {
        conns.mark_dirty(conn);
    }
    conns.flush();
    let id = shard.id;
    info!(shard = id, connections = all.len(), "closing clients");
    let deadline = Instant::now() + CLOSE_FLUSH_TIMEOUT;
    let shard = shard.clone();
    glommio::spawn_local(async move {
        while shard.conns.count() > 0 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        let _ = closed.send(id);
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_once_after_stop_and_every_peer_quiesced() {
        let life = Lifecycle::default();
        assert!(life.quiesced(0).is_none(), "not stopping yet");
        life.peer_quiesced();
        let (tx, rx) = std::sync::mpsc::channel();
        life.stop(tx);
        assert!(life.stopping());
        assert!(life.quiesced(2).is_none(), "one of two peers so far");
        life.peer_quiesced();
        let report = life.quiesced(2).expect("both peers quiesced");
        assert!(life.quiesced(2).is_none(), "reported once");
        report.send(7).unwrap();
        assert_eq!(rx.recv().unwrap(), 7);
    }

    #[test]
    fn the_stomp_refusal_is_a_complete_error_frame() {
        let f = stomp_full();
        let text = std::str::from_utf8(&f).unwrap();
        assert_eq!(
            text,
            "ERROR\nmessage:server full\ncontent-type:text/plain\ncontent-length:37\n\nmax_connections reached; retry later\n\0"
        );
    }
}
