//! A client connection: its socket state, inbound framing, STOMP session and
//! outbound buffer. Owned by one shard (`Rc<RefCell<Conn>>`); its I/O task
//! is in `io.rs`.
//!
//! Memory per idle connection is a headline figure, so nothing here holds a
//! buffer while idle: reads go to the shard's scratch buffer, `inbuf` holds
//! only an unfinished frame, `out` is freed once the socket took it.

pub mod io;
pub mod out;

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::Waker;
use std::time::Instant;

use crate::session::Session;
use crate::ws::framing::WsReader;
pub use out::Out;

/// Shared handle to a connection; only ever used on its own shard.
pub type ConnRef = Rc<RefCell<Conn>>;

/// Names a connection on its shard across time: slab key plus a serial, so
/// a late reply for a closed connection never reaches its slot's successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnToken {
    pub key: u32,
    pub serial: u32,
}

/// Which protocol the bytes on this socket speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
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

/// One client connection.
pub struct Conn {
    pub token: ConnToken,
    pub fd: RawFd,
    pub phase: Phase,
    /// Inbound WebSocket framing state (unused for plain STOMP).
    pub ws: WsReader,
    /// An unfinished STOMP frame (or HTTP head) carried to the next read.
    pub inbuf: Vec<u8>,
    /// Length `inbuf` must reach before re-parsing can make progress.
    pub need: usize,
    pub session: Session,
    pub out: Out,
    /// Reading is suspended because a queue towards another shard is full.
    pub paused: bool,
    /// Wakes the connection's I/O task (to write, close or resume reading).
    pub waker: Option<Waker>,
    /// When the connection was accepted (for the connect timeout).
    pub created: Instant,
    /// Last time the client sent anything (for heart-beat timeouts).
    pub last_read: Instant,
}

impl Conn {
    pub fn new(token: ConnToken, fd: RawFd, phase: Phase) -> Conn {
        let now = Instant::now();
        Conn {
            token,
            fd,
            phase,
            ws: WsReader::default(),
            inbuf: Vec::new(),
            need: 0,
            session: Session::default(),
            out: Out::new(phase == Phase::Ws, now),
            paused: false,
            waker: None,
            created: now,
            last_read: now,
        }
    }

    /// Wake the I/O task, if it waits.
    pub fn wake(&self) {
        if let Some(w) = &self.waker {
            w.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    /// Keeps an eye on the per-connection struct: it is most of an idle
    /// session's memory (the budget is 2 KiB per session in all).
    #[test]
    fn conn_stays_small() {
        let size = std::mem::size_of::<std::cell::RefCell<super::Conn>>();
        eprintln!(
            "RefCell<Conn> = {size} bytes, Session = {}, Out = {}, WsReader = {}",
            std::mem::size_of::<crate::session::Session>(),
            std::mem::size_of::<super::Out>(),
            std::mem::size_of::<crate::ws::framing::WsReader>()
        );
        assert!(size <= 512, "Conn grew to {size} bytes");
    }
}
