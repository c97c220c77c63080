//! The one owner of a client socket's fd.
//!
//! `Sock` wraps the glommio stream and holds the only `unsafe` that touches
//! a connection's fd (`send` straight from the shard's flush, `shutdown`,
//! `dup` for a hand-off). Nothing else keeps a copy of the fd number: when
//! the `Sock` is dropped the fd is closed, and because no copy outlives it,
//! a later connection that gets the same fd number can never receive bytes
//! meant for this one.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use tracing::debug;

/// A client socket (TCP, non-blocking, `TCP_NODELAY`).
pub(crate) struct Sock {
    stream: TcpStream,
}

impl Sock {
    /// Take an accepted stream.
    pub fn new(stream: TcpStream) -> Sock {
        if let Err(e) = stream.set_nodelay(true) {
            debug!("set_nodelay: {e}");
        }
        Sock { stream }
    }

    /// Take a socket handed over by another shard (`dup_fd` there).
    pub fn adopt(fd: OwnedFd) -> Sock {
        // SAFETY: `fd` is an open TCP socket we own; the stream owns it
        // from here on.
        Sock::new(unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) })
    }

    /// Write what the socket takes now, without waiting (the shard's
    /// flush). `WouldBlock` when it takes nothing.
    pub fn send_now(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: our open socket; `buf` is valid for its length.
        let n = unsafe {
            libc::send(
                self.stream.as_raw_fd(),
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

    /// Shut down our sending side (the peer reads EOF after what was sent).
    pub fn shutdown_write(&self) {
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
    pub fn refuse(self, answer: &[u8]) {
        let _ = self.send_now(answer);
    }

    pub fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }

    pub fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
}
