//! A client connection: its socket, inbound framing, STOMP session and
//! outbound buffer, and what its bytes mean (`io.rs`: HTTP head → WebSocket
//! frames → STOMP frames → the session).
//!
//! A connection knows nothing of shards: what it cannot do itself (answer
//! a plain HTTP request, move to another shard after the upgrade) it hands
//! back to its owner as an [`Outcome`]; what its session needs from the
//! server goes through the session's `Broker`.
//!
//! Memory per idle connection is a headline figure, so nothing here holds a
//! buffer while idle: reads go to the shard's scratch buffer, `inbuf` holds
//! only an unfinished frame, `out` is freed once the socket took it.

mod io;
mod sock;

use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

pub(crate) use io::{READ_PAUSE_OUTBOUND, SCRATCH_SIZE, with_scratch};
pub(crate) use sock::{Sock, TlsSession};

use crate::metrics::Transport;
use crate::out::Out;
use crate::rate::{Gcra, RateLimit};
use crate::session::Session;
use crate::ws::framing::WsReader;

/// Names a connection on its shard across time: slab key plus a serial, so
/// a late reply for a closed connection never reaches its slot's successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConnToken {
    pub key: u32,
    pub serial: u32,
}

/// Which protocol the bytes on this socket speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// `--listen` before the upgrade: collecting the HTTP request head.
    Http,
    /// A plain HTTP request waiting for its answer from the reader pool
    /// (the history API); further input is ignored.
    HttpWait,
    /// WebSocket frames carrying STOMP.
    Ws,
    /// Plain STOMP over TCP.
    Stomp,
}

impl Phase {
    /// The transport the metrics count a connection in this phase under.
    pub fn transport(self) -> Transport {
        match self {
            Phase::Http | Phase::HttpWait => Transport::Http,
            Phase::Ws => Transport::Ws,
            Phase::Stomp => Transport::Stomp,
        }
    }
}

/// What the connection's task waits for next.
pub(crate) enum Ev {
    /// This many bytes were read into the scratch buffer.
    Read(usize),
    /// The connection is finished (closed, aborted, or the peer left).
    Done,
}

/// What a connection hands back to its owner after reading.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// A plain HTTP request: answer it (`Conn::answer_http`, or later).
    Request {
        method: String,
        path: String,
        query: Option<String>,
        /// The `Authorization` header, for the API's callers.
        authorization: Option<String>,
    },
    /// A valid WebSocket upgrade: take it here (`Conn::upgrade`) or move
    /// the connection to the shard that owns `room`.
    Upgrade {
        /// The `101` answer to send.
        answer: Vec<u8>,
        /// Bytes after the request head (the first WebSocket frames).
        rest: Vec<u8>,
        /// `room` from `/ws?room=R`.
        room: Option<String>,
    },
}

/// The per-connection rates (`--max-publish-rate`, `--max-subscribe-rate`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnRates {
    pub publish: RateLimit,
    pub subscribe: RateLimit,
}

/// What one read of a connection used of its rates.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Used {
    /// Messages published (SENDs, and the SENDs of each COMMIT).
    pub published: u32,
    /// SUBSCRIBEs and UNSUBSCRIBEs.
    pub sub_changes: u32,
}

impl Used {
    /// Whether the read did any of it (each also queues work for a peer
    /// shard or the store).
    pub fn any(&self) -> bool {
        self.published > 0 || self.sub_changes > 0
    }
}

/// One client connection.
pub(crate) struct Conn {
    token: ConnToken,
    /// The socket; `None` once the connection is finished (nothing may
    /// write to it any more).
    sock: Option<Sock>,
    phase: Phase,
    /// Inbound WebSocket framing state (unused for plain STOMP).
    ws: WsReader,
    /// An unfinished STOMP frame (or HTTP head) carried to the next read.
    inbuf: Vec<u8>,
    /// Length `inbuf` must reach before re-parsing can make progress.
    need: usize,
    session: Session,
    out: Out,
    /// Reading is suspended (a queue towards another shard or the writer
    /// is full, or the shard is shutting down).
    paused: bool,
    /// Its publishing against `--max-publish-rate` and its subscription
    /// changes against `--max-subscribe-rate`: while over, it is not read.
    publish: Gcra,
    subscribe: Gcra,
    /// Over a rate: not read until its task's timer ends it.
    throttled: bool,
    /// Accepted on `--metrics-listen`: only the metrics endpoints.
    metrics_only: bool,
    /// Wakes the connection's task (to write, close or resume reading).
    waker: Option<Waker>,
    /// When the connection was accepted (for the connect timeout).
    created: Instant,
    /// Last time the client sent anything (for heart-beat timeouts).
    last_read: Instant,
}

impl Conn {
    /// A connection on `sock`; `outbound` is sent first (a moved
    /// connection's upgrade answer).
    pub fn new(token: ConnToken, sock: Sock, phase: Phase, outbound: &[u8]) -> Conn {
        let now = Instant::now();
        let mut out = Out::new(phase == Phase::Ws, now);
        out.raw(outbound);
        Conn {
            token,
            sock: Some(sock),
            phase,
            ws: WsReader::default(),
            inbuf: Vec::new(),
            need: 0,
            session: Session::default(),
            out,
            paused: false,
            publish: Gcra::default(),
            subscribe: Gcra::default(),
            throttled: false,
            metrics_only: false,
            waker: None,
            created: now,
            last_read: now,
        }
    }

    pub fn token(&self) -> ConnToken {
        self.token
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Accepted on `--metrics-listen`: it may ask only for the metrics
    /// endpoints (no WebSocket, no API).
    pub fn set_metrics_only(&mut self) {
        self.metrics_only = true;
    }

    pub fn is_metrics_only(&self) -> bool {
        self.metrics_only
    }

    /// The socket is still open (the connection's task has not ended).
    pub fn is_open(&self) -> bool {
        self.sock.is_some()
    }

    /// Whether output may still be queued: open and not closing.
    pub fn takes_output(&self) -> bool {
        self.is_open() && !self.out.is_closing()
    }

    pub fn out(&self) -> &Out {
        &self.out
    }

    pub fn out_mut(&mut self) -> &mut Out {
        &mut self.out
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session and the output it writes to.
    pub fn session_out(&mut self) -> (&mut Session, &mut Out) {
        (&mut self.session, &mut self.out)
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Stop reading this connection until `resume`.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Read again; the client may have been talking all along while we
    /// were not reading, so its silence so far does not count.
    pub fn resume(&mut self, now: Instant) {
        self.paused = false;
        self.last_read = now;
        self.wake();
    }

    /// Count what one read did at `now`; if that puts the connection over
    /// a rate, stop reading it and say for how long (the caller reads it
    /// again with `unthrottle` after that).
    pub fn charge(&mut self, rates: &ConnRates, used: Used, now: Instant) -> Option<Duration> {
        self.publish.charge(&rates.publish, used.published, now);
        self.subscribe
            .charge(&rates.subscribe, used.sub_changes, now);
        let wait = self
            .publish
            .wait(&rates.publish, now)
            .max(self.subscribe.wait(&rates.subscribe, now));
        self.throttled = wait.is_some();
        wait
    }

    /// Over a rate: not read until `unthrottle`.
    pub fn is_throttled(&self) -> bool {
        self.throttled
    }

    /// Read again after a publish-rate wait; the wait was ours, so the
    /// client's silence meanwhile does not count.
    pub fn unthrottle(&mut self, now: Instant) {
        self.throttled = false;
        self.last_read = now;
    }

    pub fn created(&self) -> Instant {
        self.created
    }

    pub fn last_read(&self) -> Instant {
        self.last_read
    }

    /// The HTTP answer will come later (from the reader pool): ignore
    /// further input meanwhile.
    pub fn await_http_answer(&mut self) {
        self.phase = Phase::HttpWait;
    }

    /// Wake the connection's task, if it waits.
    pub fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }

    /// The connection is closing: remove its subscriptions, drop its
    /// transactions.
    pub fn end_session(&mut self, broker: &impl crate::session::Broker) {
        self.session.unsubscribe_all(broker);
    }

    /// The connection's task ends: close the socket (nothing can write to
    /// it afterwards), drop the waker.
    pub fn finish(&mut self) {
        self.sock = None;
        self.out.abort();
        self.waker = None;
    }

    /// The socket, to hand the connection to another shard.
    pub fn sock_mut(&mut self) -> Option<&mut Sock> {
        self.sock.as_mut()
    }

    /// Send what is queued with one `send`, straight from the shard's
    /// flush. If the socket does not take it all, the connection's task
    /// takes over (waiting for writability); it is woken whenever it has
    /// something to do (blocked output, closing, aborted). Returns the
    /// bytes sent (the shard counts them once per flush).
    pub fn flush(&mut self) -> usize {
        let Some(sock) = &mut self.sock else {
            return 0;
        };
        let mut sent = 0;
        if !self.out.is_write_blocked() && self.out.pending_len() > 0 {
            match sock.send_now(self.out.pending()) {
                Ok(n) => {
                    sent = n;
                    self.out.consume(n)
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!("send: {e}");
                    self.out.abort();
                }
            }
            if self.out.pending_len() > 0 {
                self.out.set_write_blocked();
            }
        }
        if self.out.is_write_blocked()
            || sock.has_backlog()
            || self.out.is_closing()
            || self.out.is_aborted()
        {
            self.wake();
        }
        sent
    }

    /// One poll of everything the connection's task waits for: writability
    /// while output is blocked, the end of a close, and readability (into
    /// the shard's scratch buffer).
    pub fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Ev> {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
        io::poll(self, cx)
    }
}

#[cfg(test)]
mod tests {
    /// Keeps an eye on the per-connection struct: it is most of an idle
    /// session's memory (the budget is 2 KiB per session in all). It holds
    /// the socket's stream itself, which the connection's task held before.
    #[test]
    fn conn_stays_small() {
        let size = std::mem::size_of::<std::cell::RefCell<super::Conn>>();
        eprintln!(
            "RefCell<Conn> = {size} bytes, Session = {}, Out = {}, WsReader = {}, Sock = {}",
            std::mem::size_of::<crate::session::Session>(),
            std::mem::size_of::<crate::out::Out>(),
            std::mem::size_of::<crate::ws::framing::WsReader>(),
            std::mem::size_of::<super::Sock>()
        );
        assert!(size <= 640, "Conn grew to {size} bytes");
    }
}
