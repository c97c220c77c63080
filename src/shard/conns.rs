//! A shard's connections: the table that names them by token, the list of
//! those with output to flush, and the list of those paused.
//!
//! Flushing happens once per reactor round (see `Shard::after_io`): every
//! connection that got output is put on the flush list once, and `flush`
//! gives each one `send`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use slab::Slab;

use super::notify::Notify;
use crate::conn::{Conn, ConnToken, Phase, Sock};

/// Shared handle to a connection; only ever used on its own shard.
pub(crate) type ConnRef = Rc<RefCell<Conn>>;

/// Runs on its shard only.
#[derive(Default)]
pub(super) struct Conns {
    table: RefCell<Slab<ConnRef>>,
    /// Serial of the next connection (never 0), so a token outlives its slot.
    next_serial: Cell<u32>,
    /// Connections with queued output, flushed once per round.
    dirty: RefCell<Vec<ConnRef>>,
    /// Wakes the flusher task.
    flush_wanted: Notify,
    /// Connections not being read until the shard's queues drain.
    paused: RefCell<Vec<ConnRef>>,
}

impl Conns {
    /// Number of connections.
    pub fn count(&self) -> usize {
        self.table.borrow().len()
    }

    /// Add a connection; its output (`outbound`) is flushed with the next round.
    pub fn insert(&self, sock: Sock, phase: Phase, outbound: &[u8]) -> ConnRef {
        let serial = self.next_serial.get().max(1);
        self.next_serial.set(serial.wrapping_add(1).max(1));
        let mut table = self.table.borrow_mut();
        let entry = table.vacant_entry();
        let token = ConnToken {
            key: entry.key() as u32,
            serial,
        };
        let conn = Rc::new(RefCell::new(Conn::new(token, sock, phase, outbound)));
        entry.insert(conn.clone());
        drop(table);
        if !outbound.is_empty() {
            self.mark_dirty(&conn);
        }
        conn
    }

    /// Forget a connection whose task is ending (its socket is closed).
    pub fn remove(&self, conn: &ConnRef) {
        let token = {
            let mut c = conn.borrow_mut();
            c.finish();
            c.token()
        };
        let mut table = self.table.borrow_mut();
        if table
            .get(token.key as usize)
            .is_some_and(|c| Rc::ptr_eq(c, conn))
        {
            table.remove(token.key as usize);
        }
    }

    /// The connection `token` names, if it is still there.
    pub fn get(&self, token: ConnToken) -> Option<ConnRef> {
        let table = self.table.borrow();
        let c = table.get(token.key as usize)?;
        (c.borrow().token() == token).then(|| c.clone())
    }

    /// Every connection (a snapshot).
    pub fn all(&self) -> Vec<ConnRef> {
        self.table.borrow().iter().map(|(_, c)| c.clone()).collect()
    }

    /// Run `f` on every connection, each borrowed (the sweeper).
    pub fn for_each(&self, mut f: impl FnMut(&ConnRef, &mut Conn)) {
        for (_, conn) in self.table.borrow().iter() {
            f(conn, &mut conn.borrow_mut());
        }
    }

    pub fn mark_dirty(&self, conn: &ConnRef) {
        self.queue_flush(conn, &mut conn.borrow_mut());
    }

    /// Put `conn` (already borrowed as `c`) on the flush list once.
    pub fn queue_flush(&self, conn: &ConnRef, c: &mut Conn) {
        if c.out_mut().mark_queued() {
            self.dirty.borrow_mut().push(conn.clone());
        }
    }

    /// Whether any connection has output waiting for the flush.
    pub fn flush_due(&self) -> bool {
        !self.dirty.borrow().is_empty()
    }

    /// Have the flusher task flush at the end of this round.
    pub fn want_flush(&self) {
        self.flush_wanted.notify();
    }

    /// Wait until `want_flush` (the flusher task).
    pub async fn flush_wanted(&self) {
        self.flush_wanted.wait().await
    }

    /// Send what each dirty connection has queued: one `send` per socket
    /// per round, straight from here while the socket takes it; the
    /// connection's task takes over (waiting for writability) when it would
    /// block.
    pub fn flush(&self) {
        let list = std::mem::take(&mut *self.dirty.borrow_mut());
        let mut sent = 0;
        for conn in &list {
            let mut c = conn.borrow_mut();
            c.out_mut().clear_queued();
            sent += c.flush();
        }
        crate::metrics::local(|m| {
            m.bytes_out.add(sent as u64);
            m.flushed();
        });
        // Keep the list's allocation for the next round.
        let mut dirty = self.dirty.borrow_mut();
        if dirty.is_empty() {
            let mut list = list;
            list.clear();
            *dirty = list;
        }
    }

    /// Stop reading `conn` until `resume_all`.
    pub fn pause(&self, conn: &ConnRef) {
        conn.borrow_mut().pause();
        self.paused.borrow_mut().push(conn.clone());
    }

    /// Connections paused now.
    pub fn paused_count(&self) -> usize {
        self.paused.borrow().len()
    }

    /// Whether any connection is paused.
    pub fn any_paused(&self) -> bool {
        !self.paused.borrow().is_empty()
    }

    /// Read every paused connection again.
    pub fn resume_all(&self) {
        let now = Instant::now();
        for conn in self.paused.borrow_mut().drain(..) {
            conn.borrow_mut().resume(now);
        }
    }

    /// Pause every client for good (shutting down). A plain HTTP request
    /// not read yet is still read: during the drain it may ask only for
    /// health, readiness and metrics, and is answered.
    pub fn pause_all(&self) {
        for (_, conn) in self.table.borrow().iter() {
            let mut c = conn.borrow_mut();
            if c.phase() != Phase::Http {
                c.pause();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Duration;

    use super::*;

    /// A connected pair: our side as a `Sock`, the peer as a blocking std
    /// stream.
    async fn pair(listener: &std::net::TcpListener) -> (Sock, std::net::TcpStream) {
        let ours = glommio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (peer, _) = listener.accept().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        (Sock::new(ours), peer)
    }

    #[test]
    fn tokens_name_one_connection_and_a_removed_one_is_closed() {
        super::super::on_test_executor(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let conns = Conns::default();
            let (sock, mut peer_a) = pair(&listener).await;
            let a = conns.insert(sock, Phase::Stomp, b"hello");
            let ta = a.borrow().token();
            assert!(Rc::ptr_eq(&conns.get(ta).unwrap(), &a));
            assert_eq!(conns.count(), 1);
            // Output given at insert goes out with the next flush, once.
            assert!(conns.flush_due());
            conns.mark_dirty(&a);
            conns.flush();
            assert!(!conns.flush_due());
            let mut buf = [0u8; 16];
            assert_eq!(peer_a.read(&mut buf).unwrap(), 5);
            assert_eq!(&buf[..5], b"hello");

            conns.remove(&a);
            assert!(conns.get(ta).is_none());
            assert!(!a.borrow().is_open());
            // Its socket is closed: the peer reads EOF.
            assert_eq!(peer_a.read(&mut buf).unwrap(), 0);

            // The slot is reused, the token is not.
            let (sock, _peer_b) = pair(&listener).await;
            let b = conns.insert(sock, Phase::Stomp, b"");
            let tb = b.borrow().token();
            assert_eq!(tb.key, ta.key);
            assert_ne!(tb.serial, ta.serial);
            assert!(conns.get(ta).is_none(), "a stale token names nothing");
            assert!(Rc::ptr_eq(&conns.get(tb).unwrap(), &b));
            // A late write for the old connection cannot reach the new one.
            a.borrow_mut().out_mut().raw(b"late");
            a.borrow_mut().flush();
        });
    }

    #[test]
    fn paused_connections_resume_together() {
        super::super::on_test_executor(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let conns = Conns::default();
            let (s1, _p1) = pair(&listener).await;
            let (s2, _p2) = pair(&listener).await;
            let a = conns.insert(s1, Phase::Stomp, b"");
            let b = conns.insert(s2, Phase::Stomp, b"");
            assert!(!conns.any_paused());
            conns.pause(&a);
            conns.pause(&b);
            assert!(conns.any_paused());
            assert!(a.borrow().is_paused() && b.borrow().is_paused());
            conns.resume_all();
            assert!(!conns.any_paused());
            assert!(!a.borrow().is_paused() && !b.borrow().is_paused());
        });
    }
}
