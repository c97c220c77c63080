//! What a connection's bytes mean, and how its task waits: reads into the
//! shard's scratch buffer, the HTTP head, WebSocket frames and STOMP frames
//! handed to the session; writing what the shard's flush could not; the
//! end of a close.

use std::cell::RefCell;
use std::task::{Context, Poll};
use std::time::Instant;

use tracing::debug;

use super::{Conn, Ev, Outcome, Phase};
use crate::http::{self, Status};
use crate::out::Out;
use crate::session::{Broker, Session, StompError};
use crate::stomp::frame::{Limits, Parsed, parse, receipt_hint, unescape_value};
use crate::ws::framing::{CloseCode, Event, WsError};
use crate::ws::handshake::{self, HeadError, Request};

/// Size of the per-shard read buffer. One read takes at most this much; 64
/// KiB matches the loopback/TCP segment sizes the kernel hands back at once.
pub(crate) const SCRATCH_SIZE: usize = 64 * 1024;

/// Stop reading a connection while this much of its own output waits for a
/// socket that does not take it. A client that sends without reading (pings,
/// receipts) then meets TCP back-pressure instead of growing our memory;
/// fan-out to it is bounded separately by `max_outbound_bytes`.
pub(crate) const READ_PAUSE_OUTBOUND: usize = 64 * 1024;

/// Reads discarded per poll while waiting for a closing peer's EOF, before
/// yielding to other tasks (a peer that keeps sending cannot hog the shard;
/// the close deadline ends it).
const DISCARD_READS_PER_POLL: usize = 16;

thread_local! {
    /// The shard-wide read buffer: connections own no read buffer while idle.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_SIZE]);
}

/// Run `f` on the first `n` bytes of the scratch buffer (what `Ev::Read(n)`
/// read).
pub(crate) fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()[..n]))
}

pub(super) fn poll(c: &mut Conn, cx: &mut Context<'_>) -> Poll<Ev> {
    if c.out.is_aborted() {
        return Poll::Ready(Ev::Done);
    }
    let Some(sock) = &mut c.sock else {
        return Poll::Ready(Ev::Done);
    };
    if c.out.is_write_blocked()
        || sock.has_backlog()
        || (c.out.is_closing() && c.out.pending_len() > 0)
    {
        // TLS records already made go first (none on a plain socket).
        let writable = match sock.poll_drain(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(_)) => return Poll::Ready(Ev::Done),
            Poll::Pending => false,
        };
        while writable && c.out.pending_len() > 0 {
            match sock.poll_write(cx, c.out.pending()) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ev::Done),
                Poll::Ready(Ok(n)) => {
                    crate::metrics::local(|m| m.bytes_out.add(n as u64));
                    c.out.consume(n)
                }
                Poll::Pending => break,
            }
        }
    }
    if c.out.is_closing() {
        // The sweeper aborts at the close deadline if this never finishes.
        if c.out.pending_len() > 0 || sock.has_backlog() {
            return Poll::Pending;
        }
        // Everything is sent. Closing a socket with unread input makes the
        // kernel answer with RST, which can destroy the ERROR or RECEIPT we
        // just sent; so half-close and read (discarding) until the peer
        // closes too.
        if c.out.take_shutdown() {
            sock.shutdown_write();
        }
        return SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            for _ in 0..DISCARD_READS_PER_POLL {
                match sock.poll_read(cx, &mut s[..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ev::Done),
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Pending => return Poll::Pending,
                }
            }
            cx.waker().wake_by_ref(); // let other tasks run, then go on
            Poll::Pending
        });
    }
    if c.paused
        || c.throttled
        || (c.out.is_write_blocked() && c.out.pending_len() >= READ_PAUSE_OUTBOUND)
    {
        return Poll::Pending;
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        match sock.poll_read(cx, &mut s[..]) {
            Poll::Ready(Ok(0)) => Poll::Ready(Ev::Done),
            Poll::Ready(Ok(n)) => {
                crate::metrics::local(|m| m.bytes_in.add(n as u64));
                Poll::Ready(Ev::Read(n))
            }
            Poll::Ready(Err(e)) => {
                debug!("read: {e}");
                if sock.tls_handshaking() {
                    let transport = c.phase.transport();
                    crate::metrics::local(|m| m.refused(transport, crate::metrics::Refused::Tls));
                }
                Poll::Ready(Ev::Done)
            }
            Poll::Pending => Poll::Pending,
        }
    })
}

impl Conn {
    /// Feed freshly read bytes to the connection's protocol layers; what
    /// the owner must do about them, if anything.
    pub fn on_bytes(
        &mut self,
        data: &mut [u8],
        broker: &impl Broker,
        limits: &Limits,
    ) -> Option<Outcome> {
        self.last_read = Instant::now();
        if self.out.is_closing() {
            return None;
        }
        match self.phase {
            Phase::Http => return self.http_bytes(data),
            Phase::HttpWait => {}
            Phase::Ws => self.ws_bytes(data, broker, limits),
            Phase::Stomp => {
                let Conn {
                    inbuf,
                    need,
                    session,
                    out,
                    ..
                } = self;
                stomp_segment(inbuf, need, session, out, data, broker, limits);
            }
        }
        None
    }

    /// Answer a plain HTTP request and close.
    pub fn answer_http(&mut self, answer: &[u8]) {
        self.out.http(answer);
    }

    /// Take a WebSocket upgrade on this connection: send `answer`, then
    /// read WebSocket frames, starting with `rest`.
    pub fn upgrade(
        &mut self,
        answer: &[u8],
        mut rest: Vec<u8>,
        broker: &impl Broker,
        limits: &Limits,
    ) {
        self.phase = Phase::Ws;
        self.out.set_ws();
        self.out.raw(answer);
        if !rest.is_empty() {
            self.ws_bytes(&mut rest, broker, limits);
        }
    }

    fn http_bytes(&mut self, data: &[u8]) -> Option<Outcome> {
        self.inbuf.extend_from_slice(data);
        let (req, len) = match handshake::parse_request(&self.inbuf) {
            Ok(None) => return None,
            Ok(Some(r)) => r,
            Err(e) => {
                let answer = match e {
                    HeadError::TooLarge => {
                        http::text(Status::HeaderFieldsTooLarge, "request head too large")
                    }
                    HeadError::Malformed => {
                        http::text(Status::BadRequest, "malformed HTTP request")
                    }
                    HeadError::BadUpgrade(why) => http::text(Status::BadRequest, why),
                };
                self.inbuf = Vec::new();
                self.out.http(&answer);
                crate::metrics::local(|m| {
                    m.refused(
                        crate::metrics::Transport::Http,
                        crate::metrics::Refused::BadRequest,
                    )
                });
                return None;
            }
        };
        let rest = self.inbuf.split_off(len);
        self.inbuf = Vec::new();
        Some(match req {
            Request::Plain {
                method,
                path,
                query,
                authorization,
            } => Outcome::Request {
                method,
                path,
                query,
                authorization,
            },
            Request::Upgrade {
                accept,
                protocol,
                room,
            } => Outcome::Upgrade {
                answer: http::switching_protocols(&accept, protocol),
                rest,
                room,
            },
        })
    }

    fn ws_bytes(&mut self, data: &mut [u8], broker: &impl Broker, limits: &Limits) {
        let Conn {
            ws,
            inbuf,
            need,
            session,
            out,
            ..
        } = self;
        let result = ws.feed::<WsError>(data, |ev| {
            match ev {
                Event::Data(seg) => {
                    if !out.is_closing() {
                        stomp_segment(inbuf, need, session, out, seg, broker, limits);
                    }
                }
                Event::Ping(payload) => {
                    if !out.is_closing() {
                        out.pong(payload);
                    }
                }
                Event::Close(code) => {
                    // Echo the peer's code (RFC 6455 §5.5.1), then close.
                    // A code the peer may not send (1005, 1006, 1015,
                    // unassigned ones) is a protocol error (RFC 6455 §7.4.1).
                    let reply = match code.map(CloseCode::from) {
                        None => CloseCode::Normal,
                        Some(c) if c.is_allowed() => c,
                        Some(_) => CloseCode::Protocol,
                    };
                    out.close(reply, "");
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            // 1002, or 1007 for a text message that is not UTF-8.
            out.close(e.close_code(), &e.to_string());
        }
    }
}

/// Parse and handle every complete STOMP frame of `inbuf` + `seg`; keep an
/// unfinished one in `inbuf`.
///
/// An unfinished frame is not re-parsed for every new segment (a frame sent
/// a byte at a time would cost quadratic time): every frame ends with NUL,
/// so parsing again is only worth it when the new bytes hold a NUL and the
/// buffer has reached `need` (the known length of a `content-length` frame),
/// or when the buffer reached the frame size limit (to refuse it).
fn stomp_segment(
    inbuf: &mut Vec<u8>,
    need: &mut usize,
    session: &mut Session,
    out: &mut Out,
    seg: &[u8],
    broker: &impl Broker,
    limits: &Limits,
) {
    if inbuf.is_empty() {
        let (used, rest_need) = handle_frames(seg, session, out, broker, limits);
        if used < seg.len() && !out.is_closing() {
            inbuf.extend_from_slice(&seg[used..]);
            *need = rest_need;
        }
    } else {
        inbuf.extend_from_slice(seg);
        let worth =
            inbuf.len() >= limits.max_frame_size || (inbuf.len() >= *need && seg.contains(&0));
        if !worth {
            return;
        }
        let (used, rest_need) = handle_frames(inbuf, session, out, broker, limits);
        *need = rest_need;
        if used >= inbuf.len() || out.is_closing() {
            *inbuf = Vec::new();
            *need = 0;
        } else {
            inbuf.drain(..used);
        }
    }
}

/// Handle the complete frames at the start of `buf`; returns bytes used and
/// the length the unfinished rest must reach before it can parse (0: unknown).
fn handle_frames(
    buf: &[u8],
    session: &mut Session,
    out: &mut Out,
    broker: &impl Broker,
    limits: &Limits,
) -> (usize, usize) {
    let mut pos = 0;
    while pos < buf.len() && !out.is_closing() && !session.disconnecting() {
        match parse(&buf[pos..], session.escaping(), limits) {
            Ok(Parsed::Incomplete) => break,
            Ok(Parsed::NeedBytes(n)) => return (pos, n),
            Ok(Parsed::HeartBeat(n)) => pos += n,
            Ok(Parsed::Frame(f, n)) => {
                pos += n;
                crate::metrics::local(|m| m.frames_in.inc());
                if let Err(e) = session.handle(&f, out, broker) {
                    e.write(out, f.header("receipt"));
                }
            }
            Err(e) => {
                let receipt = receipt_hint(&buf[pos..])
                    .map(|r| unescape_value(&r, session.escaping()).unwrap_or(r));
                StompError::parse(&e, limits).write(out, receipt.as_deref());
                break;
            }
        }
    }
    (pos, 0)
}
