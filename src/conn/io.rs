//! The I/O task of one connection: read into the shard's scratch buffer,
//! hand the bytes to the protocol layers, write what the shard's flush could
//! not, close.

use std::cell::RefCell;
use std::future::poll_fn;
use std::os::fd::{AsRawFd, FromRawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use tracing::debug;

use super::{Conn, ConnRef, Phase};
use crate::router::{owner_of, room_of};
use crate::session::{Ctx, StompError};
use crate::shard::{Shard, ShardMsg};
use crate::stomp::frame::{ParseError, Parsed, parse};
use crate::ws::framing::{CloseCode, Event, WsError};
use crate::ws::handshake::{self, HeadError, Request, http_response};

/// Size of the per-shard read buffer. One read takes at most this much; 64
/// KiB matches the loopback/TCP segment sizes the kernel hands back at once.
pub const SCRATCH_SIZE: usize = 64 * 1024;

/// Stop reading a connection while this much of its own output waits for a
/// socket that does not take it. A client that sends without reading (pings,
/// receipts) then meets TCP back-pressure instead of growing our memory;
/// fan-out to it is bounded separately by `max_outbound_bytes`.
pub const READ_PAUSE_OUTBOUND: usize = 64 * 1024;

/// Reads discarded per poll while waiting for a closing peer's EOF, before
/// yielding to other tasks (a peer that keeps sending cannot hog the shard;
/// the close deadline ends it).
const DISCARD_READS_PER_POLL: usize = 16;

thread_local! {
    /// The shard-wide read buffer: connections own no read buffer while idle.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_SIZE]);
}

enum Ev {
    Read(usize),
    Done,
}

/// A connection to move to another shard after its upgrade.
struct Handoff {
    owner: usize,
    inbound: Vec<u8>,
    outbound: Vec<u8>,
}

/// Runs on the connection's shard until the connection closes.
pub async fn run(shard: Rc<Shard>, conn: ConnRef, mut stream: TcpStream, mut inbound: Vec<u8>) {
    if !inbound.is_empty() {
        let handoff = on_bytes(&shard, &conn, &mut inbound);
        debug_assert!(
            handoff.is_none(),
            "an adopted connection is past its upgrade"
        );
        shard.mark_dirty(&conn);
        shard.after_io();
    }
    while let Ev::Read(n) = poll_fn(|cx| poll_conn(&conn, &mut stream, cx)).await {
        let handoff = SCRATCH.with(|s| on_bytes(&shard, &conn, &mut s.borrow_mut()[..n]));
        if conn.borrow().out.pending_len() > 0 {
            shard.mark_dirty(&conn);
        }
        shard.after_io();
        // The flush normally waits for the end of the reactor round; a
        // connection whose own replies already fill the read-pause budget
        // (a client pipelining without reading) is flushed now, so that
        // `write_blocked` and the pause below take effect at once.
        if conn.borrow().out.pending_len() >= READ_PAUSE_OUTBOUND {
            shard.flush();
        }
        if let Some(h) = handoff {
            hand_off(&shard, &stream, h);
            break;
        }
        if shard.peers_congested() || shard.persist_congested() {
            shard.pause(&conn);
        }
    }
    shard.drop_conn(&conn);
    drop(stream);
    // Interest changes from the dropped subscriptions go out now.
    shard.after_io();
}

/// One poll of everything the connection waits for: writability while
/// output is blocked, the close deadline, and readability.
fn poll_conn(conn: &ConnRef, stream: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Ev> {
    let mut c = conn.borrow_mut();
    if !c.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        c.waker = Some(cx.waker().clone());
    }
    if c.out.abort {
        return Poll::Ready(Ev::Done);
    }
    if c.out.write_blocked || (c.out.is_closing() && c.out.pending_len() > 0) {
        while c.out.pending_len() > 0 {
            match Pin::new(&mut *stream).poll_write(cx, c.out.pending()) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ev::Done),
                Poll::Ready(Ok(n)) => c.out.consume(n),
                Poll::Pending => break,
            }
        }
    }
    if c.out.is_closing() {
        // The sweeper aborts at the close deadline if this never finishes.
        if c.out.pending_len() > 0 {
            return Poll::Pending;
        }
        // Everything is sent. Closing a socket with unread input makes the
        // kernel answer with RST, which can destroy the ERROR or RECEIPT we
        // just sent; so half-close and read (discarding) until the peer
        // closes too.
        if !c.out.shut_wr {
            // SAFETY: our open socket.
            unsafe { libc::shutdown(c.fd, libc::SHUT_WR) };
            c.out.shut_wr = true;
        }
        drop(c);
        return SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            for _ in 0..DISCARD_READS_PER_POLL {
                match Pin::new(&mut *stream).poll_read(cx, &mut s[..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Ev::Done),
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Pending => return Poll::Pending,
                }
            }
            cx.waker().wake_by_ref(); // let other tasks run, then go on
            Poll::Pending
        });
    }
    if c.paused || (c.out.write_blocked && c.out.pending_len() >= READ_PAUSE_OUTBOUND) {
        return Poll::Pending;
    }
    drop(c);
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        match Pin::new(&mut *stream).poll_read(cx, &mut s[..]) {
            Poll::Ready(Ok(0)) => Poll::Ready(Ev::Done),
            Poll::Ready(Ok(n)) => Poll::Ready(Ev::Read(n)),
            Poll::Ready(Err(e)) => {
                debug!("read: {e}");
                Poll::Ready(Ev::Done)
            }
            Poll::Pending => Poll::Pending,
        }
    })
}

/// Feed freshly read bytes to the connection's protocol layers.
fn on_bytes(shard: &Shard, me: &ConnRef, data: &mut [u8]) -> Option<Handoff> {
    let mut guard = me.borrow_mut();
    let c = &mut *guard;
    c.last_read = Instant::now();
    if c.out.is_closing() {
        return None;
    }
    match c.phase {
        Phase::Http => return http_bytes(shard, me, c, data),
        Phase::HttpWait => {}
        Phase::Ws => ws_bytes(shard, me, c, data),
        Phase::Stomp => stomp_bytes(shard, me, c, data),
    }
    None
}

fn http_bytes(shard: &Shard, me: &ConnRef, c: &mut Conn, data: &mut [u8]) -> Option<Handoff> {
    c.inbuf.extend_from_slice(data);
    let (req, len) = match handshake::parse_request(&c.inbuf) {
        Ok(None) => return None,
        Ok(Some(r)) => r,
        Err(e) => {
            let resp = match e {
                HeadError::TooLarge => http_response(
                    "431 Request Header Fields Too Large",
                    "text/plain",
                    b"request head too large\n",
                ),
                HeadError::Malformed => {
                    http_response("400 Bad Request", "text/plain", b"malformed HTTP request\n")
                }
                HeadError::BadUpgrade(why) => http_response(
                    "400 Bad Request",
                    "text/plain",
                    format!("{why}\n").as_bytes(),
                ),
            };
            c.inbuf = Vec::new();
            c.out.http(&resp);
            return None;
        }
    };
    match req {
        Request::Plain {
            method,
            path,
            query,
        } => {
            c.inbuf = Vec::new();
            if path.starts_with(crate::api::ROOMS_PREFIX) {
                match crate::api::rooms(shard, c.token, &method, &path, query.as_deref()) {
                    Some(resp) => c.out.http(&resp),
                    None => c.phase = Phase::HttpWait,
                }
                return None;
            }
            let resp = match (method.as_str(), path.as_str()) {
                ("GET", "/healthz") => http_response("200 OK", "text/plain", b"ok\n"),
                (_, "/ws") => http_response(
                    "426 Upgrade Required",
                    "text/plain",
                    b"/ws is a STOMP-over-WebSocket endpoint; connect with a WebSocket client\n",
                ),
                _ => http_response("404 Not Found", "text/plain", b"not found\n"),
            };
            c.inbuf = Vec::new();
            c.out.http(&resp);
            None
        }
        Request::Upgrade {
            accept,
            protocol,
            room,
        } => {
            let response = handshake::upgrade_response(&accept, protocol);
            let mut rest = c.inbuf.split_off(len);
            c.inbuf = Vec::new();
            let owner = room
                .as_deref()
                .filter(|r| room_of(&format!("/topic/{r}")).is_some())
                .map(|r| owner_of(r, shard.nshards));
            if let Some(owner) = owner.filter(|&o| o != shard.id) {
                return Some(Handoff {
                    owner,
                    inbound: rest,
                    outbound: response,
                });
            }
            c.phase = Phase::Ws;
            c.out.ws = true;
            c.out.buf.extend_from_slice(&response);
            if !rest.is_empty() {
                ws_bytes(shard, me, c, &mut rest);
            }
            None
        }
    }
}

fn ws_bytes(shard: &Shard, me: &ConnRef, c: &mut Conn, data: &mut [u8]) {
    let Conn {
        ws,
        inbuf,
        need,
        session,
        out,
        token,
        ..
    } = c;
    let cx = Ctx {
        shard,
        me,
        token: *token,
    };
    let result = ws.feed::<WsError>(data, |ev| {
        match ev {
            Event::Data(seg) => {
                if !out.is_closing() {
                    stomp_segment(shard, &cx, inbuf, need, session, out, seg);
                }
            }
            Event::Ping(payload) => {
                if !out.is_closing() {
                    out.pong(payload);
                }
            }
            Event::Close(code) => {
                // Echo the peer's code (RFC 6455 §5.5.1), then close.
                // A code the peer may not send (1005, 1006, 1015, unassigned
                // ones) is a protocol error (RFC 6455 §7.4.1).
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
        out.close(CloseCode::Protocol, &e.to_string());
    }
}

fn stomp_bytes(shard: &Shard, me: &ConnRef, c: &mut Conn, data: &[u8]) {
    let Conn {
        inbuf,
        need,
        session,
        out,
        token,
        ..
    } = c;
    let cx = Ctx {
        shard,
        me,
        token: *token,
    };
    stomp_segment(shard, &cx, inbuf, need, session, out, data);
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
    shard: &Shard,
    cx: &Ctx<'_>,
    inbuf: &mut Vec<u8>,
    need: &mut usize,
    session: &mut crate::session::Session,
    out: &mut super::Out,
    seg: &[u8],
) {
    if inbuf.is_empty() {
        let (used, rest_need) = handle_frames(shard, cx, seg, session, out);
        if used < seg.len() && !out.is_closing() {
            inbuf.extend_from_slice(&seg[used..]);
            *need = rest_need;
        }
    } else {
        inbuf.extend_from_slice(seg);
        let worth = inbuf.len() >= shard.limits.max_frame_size
            || (inbuf.len() >= *need && seg.contains(&0));
        if !worth {
            return;
        }
        let (used, rest_need) = handle_frames(shard, cx, inbuf, session, out);
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
    shard: &Shard,
    cx: &Ctx<'_>,
    buf: &[u8],
    session: &mut crate::session::Session,
    out: &mut super::Out,
) -> (usize, usize) {
    let mut pos = 0;
    while pos < buf.len() && !out.is_closing() && !session.disconnecting() {
        match parse(&buf[pos..], session.escaping(), &shard.limits) {
            Ok(Parsed::Incomplete) => break,
            Ok(Parsed::NeedBytes(n)) => return (pos, n),
            Ok(Parsed::HeartBeat(n)) => pos += n,
            Ok(Parsed::Frame(f, n)) => {
                pos += n;
                if let Err(e) = session.handle(&f, out, cx) {
                    e.write(out, f.header("receipt"));
                }
            }
            Err(e) => {
                let receipt = crate::stomp::frame::receipt_hint(&buf[pos..]).map(|r| {
                    crate::stomp::frame::unescape_value(&r, session.escaping()).unwrap_or(r)
                });
                parse_error(&e, shard).write(out, receipt.as_deref());
                break;
            }
        }
    }
    (pos, 0)
}

fn parse_error(e: &ParseError, shard: &Shard) -> StompError {
    let l = &shard.limits;
    match e {
        ParseError::FrameTooLarge => StompError {
            close_code: CloseCode::Size,
            ..StompError::limit(
                "frame too large",
                format!(
                    "frames are limited to {} bytes (max_frame_size)",
                    l.max_frame_size
                ),
            )
        },
        ParseError::TooManyHeaders => StompError::limit(
            "too many headers",
            format!("at most {} headers per frame (max_headers)", l.max_headers),
        ),
        ParseError::HeaderTooLong => StompError::limit(
            "header too long",
            format!(
                "header lines are limited to {} bytes (max_header_length)",
                l.max_header_length
            ),
        ),
        other => StompError::protocol(
            other.to_string(),
            "the frame does not follow the STOMP specification",
        ),
    }
}

/// Move an upgraded connection to its room's owner shard: dup() the fd for
/// the owner, who rebuilds the stream; our copy closes with `stream`.
fn hand_off(shard: &Shard, stream: &TcpStream, h: Handoff) {
    // SAFETY: F_DUPFD_CLOEXEC of an fd we own.
    let fd = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        debug!("dup for hand-off: {}", std::io::Error::last_os_error());
        // Out of fds: tell the client instead of leaving it hanging.
        crate::shard::start::send_refusal(stream, crate::shard::start::FULL_HTTP);
        return;
    }
    // SAFETY: a fresh fd from F_DUPFD_CLOEXEC, owned from here on.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    shard.to_peer(
        h.owner,
        ShardMsg::Adopt {
            fd,
            inbound: h.inbound,
            outbound: h.outbound,
        },
    );
}
