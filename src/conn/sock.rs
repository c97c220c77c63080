//! The one owner of a client socket's fd, and of its TLS session if the
//! listener has one.
//!
//! `Sock` wraps the glommio stream and holds the only `unsafe` that touches
//! a connection's fd (`send` straight from the shard's flush, `shutdown`,
//! `dup` for a hand-off). Nothing else keeps a copy of the fd number: when
//! the `Sock` is dropped the fd is closed, and because no copy outlives it,
//! a later connection that gets the same fd number can never receive bytes
//! meant for this one.
//!
//! With TLS (`--tls-cert`), everything above this file still sees plain
//! bytes: reads return decrypted bytes, writes take plaintext. The session
//! is per-connection state on the shard (no lock). Records rustls has made
//! but the socket has not taken yet are the *backlog*: while there is one,
//! the connection's task waits for writability ([`Sock::poll_drain`]), as it
//! does for its own unsent output; rustls bounds it (64 KiB).

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use tracing::debug;

/// A connection's TLS session, moved with the connection when it is
/// handed to another shard.
pub(crate) struct TlsSession(Box<rustls::ServerConnection>);

impl TlsSession {
    /// A session for a newly accepted connection.
    pub fn accept(config: &Arc<rustls::ServerConfig>) -> io::Result<TlsSession> {
        rustls::ServerConnection::new(config.clone())
            .map(|c| TlsSession(Box::new(c)))
            .map_err(io::Error::other)
    }
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSession")
    }
}

/// A client socket (TCP, non-blocking, `TCP_NODELAY`), plain or TLS.
pub(crate) struct Sock {
    stream: TcpStream,
    tls: Option<TlsSession>,
    /// Shut our sending side once the backlog is sent (it ends with the
    /// TLS `close_notify`).
    shut_after_drain: bool,
}

impl Sock {
    /// Take an accepted stream (plain; the tests' pairs).
    #[cfg(test)]
    pub fn new(stream: TcpStream) -> Sock {
        Sock::with_tls(stream, None)
    }

    /// Take an accepted stream; `tls`: its TLS session (handshake to come).
    pub fn with_tls(stream: TcpStream, tls: Option<TlsSession>) -> Sock {
        if let Err(e) = stream.set_nodelay(true) {
            debug!("set_nodelay: {e}");
        }
        Sock {
            stream,
            tls,
            shut_after_drain: false,
        }
    }

    /// Take a socket handed over by another shard (`dup_fd` and
    /// `take_tls` there).
    pub fn adopt(fd: OwnedFd, tls: Option<TlsSession>) -> Sock {
        // SAFETY: `fd` is an open TCP socket we own; the stream owns it
        // from here on.
        Sock::with_tls(unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) }, tls)
    }

    /// The TLS session, to hand the connection to another shard (this
    /// `Sock` is then only closed).
    pub fn take_tls(&mut self) -> Option<TlsSession> {
        self.tls.take()
    }

    /// Write what the socket takes now, without waiting (the shard's
    /// flush); the plaintext bytes taken. `WouldBlock` when it takes
    /// nothing. With TLS, bytes taken may still be in the backlog.
    pub fn send_now(&mut self, buf: &[u8]) -> io::Result<usize> {
        let fd = self.stream.as_raw_fd();
        let Some(TlsSession(tls)) = &mut self.tls else {
            return send(fd, buf);
        };
        let mut taken = 0;
        while taken < buf.len() {
            match drain_now(tls, fd) {
                Ok(()) => {}
                // The socket is full: the rest waits (what was taken is
                // taken, and must be reported so).
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
            let n = tls.writer().write(&buf[taken..])?;
            if n == 0 {
                break;
            }
            taken += n;
        }
        // Send what the last write made, if the socket takes it.
        match drain_now(tls, fd) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        if taken == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// A TLS connection whose handshake has not finished.
    pub fn tls_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.0.is_handshaking())
    }

    /// TLS records made but not yet taken by the socket.
    pub fn has_backlog(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.0.wants_write())
    }

    /// Send the backlog, waiting for writability (always ready when plain).
    pub fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(TlsSession(tls)) = &mut self.tls else {
            return Poll::Ready(Ok(()));
        };
        let mut io = PollIo {
            stream: &mut self.stream,
            cx,
        };
        while tls.wants_write() {
            match tls.write_tls(&mut io) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        if std::mem::take(&mut self.shut_after_drain) {
            self.shut_wr();
        }
        Poll::Ready(Ok(()))
    }

    /// Shut down our sending side (the peer reads EOF after what was sent).
    /// With TLS a `close_notify` alert goes first: if the socket does not
    /// take it at once it is backlog, and the shutdown follows once
    /// [`Sock::poll_drain`] has sent it.
    pub fn shutdown_write(&mut self) {
        if let Some(TlsSession(tls)) = &mut self.tls {
            tls.send_close_notify();
            if drain_now(tls, self.stream.as_raw_fd()).is_err() && tls.wants_write() {
                self.shut_after_drain = true;
                return;
            }
        }
        self.shut_wr();
    }

    fn shut_wr(&self) {
        // SAFETY: our open socket.
        unsafe { libc::shutdown(self.stream.as_raw_fd(), libc::SHUT_WR) };
    }

    /// A second, close-on-exec fd for the same socket, to hand to another
    /// shard; ours closes when this `Sock` is dropped.
    pub fn dup_fd(&self) -> io::Result<OwnedFd> {
        // SAFETY: F_DUPFD_CLOEXEC of our open socket.
        let fd = unsafe { libc::fcntl(self.stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Write `answer` if the socket takes it at once, then close (a
    /// refusal: a lost copy only means the client sees a plain close).
    /// A TLS client that has not finished its handshake cannot read an
    /// answer: it sees the close.
    pub fn refuse(mut self, answer: &[u8]) {
        if !self.tls_handshaking() {
            let _ = self.send_now(answer);
        }
    }

    /// Read (decrypted) bytes into `buf`; `Ok(0)` at the end.
    pub fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let Some(TlsSession(tls)) = &mut self.tls else {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)), // 0: close_notify
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            let mut io = PollIo {
                stream: &mut self.stream,
                cx,
            };
            match tls.read_tls(&mut io) {
                Ok(0) => return Poll::Ready(Ok(0)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
            let processed = tls.process_new_packets();
            // Handshake messages, or the alert that ends a failed one: what
            // the socket does not take now stays in the backlog.
            while tls.wants_write() {
                match tls.write_tls(&mut io) {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            if let Err(e) = processed {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }

    /// Write (plaintext) bytes from `buf`, waiting for writability.
    pub fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.tls.is_none() {
            return Pin::new(&mut self.stream).poll_write(cx, buf);
        }
        match self.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other.map(|r| r.map(|()| 0)),
        }
        let Some(TlsSession(tls)) = &mut self.tls else {
            unreachable!("checked above")
        };
        let n = tls.writer().write(buf)?;
        match self.poll_drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(n)),
        }
    }
}

/// One non-blocking `send` of `buf`.
fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: an open socket; `buf` is valid for its length.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Send as much of the backlog as the socket takes now (`WouldBlock` when
/// some is left).
fn drain_now(tls: &mut rustls::ServerConnection, fd: RawFd) -> io::Result<()> {
    let mut w = FdWriter(fd);
    while tls.wants_write() {
        if tls.write_tls(&mut w)? == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
    }
    Ok(())
}

/// The socket as `io::Write` for rustls, never blocking; its records go
/// out in one `sendmsg`.
struct FdWriter(RawFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send(self.0, buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // SAFETY: zeroed msghdr is valid; `IoSlice` is ABI-compatible
        // with `iovec`, and `bufs` outlives the call.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len() as _;
            libc::sendmsg(self.0, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The glommio stream as blocking-style I/O for rustls inside a poll:
/// "would wait" is `WouldBlock`, with the task's waker registered.
struct PollIo<'a, 'b> {
    stream: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for PollIo<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.stream).poll_read(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for PollIo<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.stream).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
