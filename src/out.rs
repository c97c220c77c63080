//! The outbound side of a connection: one contiguous buffer of encoded
//! frames, written with one `send` per batch, freed when drained; and the
//! connection's closing state (a connection closes by flushing what is
//! queued, a WebSocket close frame last).
//!
//! Owned by the connection; whoever writes to the socket (the shard's flush,
//! the connection's task) takes `pending()` and reports `consume(n)`.

use std::time::{Duration, Instant};

use crate::message::Encoded;
use crate::stomp::frame::{Escaping, encode_frame};
use crate::ws::framing::{self, CloseCode, data_opcode};

/// How long a closing connection may take to drain its buffer (a final
/// ERROR, RECEIPT or close frame) before the socket is closed regardless.
pub const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection's queued output and closing state.
pub struct Out {
    /// Encoded frames; `buf[pos..]` is not written yet.
    buf: Vec<u8>,
    pos: usize,
    /// Frames go out wrapped in WebSocket messages.
    ws: bool,
    /// Queued in the shard's flush list for the next flush.
    queued: bool,
    /// The socket would block: the I/O task owns writing until drained.
    write_blocked: bool,
    /// Set once the connection is to close: flush, then close by this time.
    closing: Option<Instant>,
    /// Close now without flushing (peer gone, or flush deadline passed).
    abort: bool,
    /// Our side is shut down for writing (closing, everything sent).
    shut_wr: bool,
    /// Last time anything was queued (heart-beats are due after a silence).
    last_write: Instant,
    /// Header escaping of the negotiated STOMP version (none before CONNECT),
    /// for the frames `Out` writes itself (ERROR).
    escaping: Escaping,
}

impl Out {
    pub fn new(ws: bool, now: Instant) -> Out {
        Out {
            buf: Vec::new(),
            pos: 0,
            ws,
            queued: false,
            write_blocked: false,
            closing: None,
            abort: false,
            shut_wr: false,
            last_write: now,
            escaping: Escaping::None,
        }
    }

    /// Bytes not yet written.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub fn pending_len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// `n` bytes were written; release the buffer once all were.
    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            // Freed, not kept: an idle connection must not pin a buffer.
            self.buf = Vec::new();
            self.pos = 0;
            self.write_blocked = false;
        }
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// When a closing connection is closed even if not everything was sent.
    pub(crate) fn close_deadline(&self) -> Option<Instant> {
        self.closing
    }

    /// Close at once without flushing.
    pub(crate) fn abort(&mut self) {
        self.abort = true;
    }

    pub(crate) fn is_aborted(&self) -> bool {
        self.abort
    }

    /// The socket did not take everything: its owner waits for writability.
    pub(crate) fn set_write_blocked(&mut self) {
        self.write_blocked = true;
    }

    pub(crate) fn is_write_blocked(&self) -> bool {
        self.write_blocked
    }

    /// Closing and everything sent: whether our sending side still has to
    /// be shut down (true once; the caller shuts it down).
    pub(crate) fn take_shutdown(&mut self) -> bool {
        let due = self.closing.is_some() && self.pending_len() == 0 && !self.shut_wr;
        self.shut_wr |= due;
        due
    }

    /// Last time anything was queued.
    pub(crate) fn last_write(&self) -> Instant {
        self.last_write
    }

    /// Put the connection on its shard's flush list: true if it was not
    /// there yet (the caller adds it).
    pub(crate) fn mark_queued(&mut self) -> bool {
        !std::mem::replace(&mut self.queued, true)
    }

    /// Taken off the flush list.
    pub(crate) fn clear_queued(&mut self) {
        self.queued = false;
    }

    /// From now on frames go out as WebSocket messages (after the upgrade).
    pub(crate) fn set_ws(&mut self) {
        self.ws = true;
    }

    /// Header escaping for the frames written here (set at CONNECT).
    pub(crate) fn set_escaping(&mut self, escaping: Escaping) {
        self.escaping = escaping;
    }

    /// Queue bytes as they are (an HTTP answer before any framing).
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Queue a (non-MESSAGE) frame.
    pub(crate) fn frame(
        &mut self,
        command: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        escaping: Escaping,
    ) {
        if !self.ws {
            encode_frame(&mut self.buf, command, headers, body, escaping);
        } else {
            let mut tmp = Vec::with_capacity(64 + body.len());
            encode_frame(&mut tmp, command, headers, body, escaping);
            let utf8 = std::str::from_utf8(&tmp).is_ok();
            framing::write_header(&mut self.buf, data_opcode(utf8), tmp.len());
            self.buf.extend_from_slice(&tmp);
        }
        self.last_write = Instant::now();
        crate::metrics::local(|m| m.frames_out.inc());
    }

    /// Queue a MESSAGE: `MESSAGE\n`, the subscriber's own headers, then the
    /// shared encoded tail. No allocation beyond growing `buf`.
    pub fn message(&mut self, prefix: &[u8], ack: Option<(u32, u64)>, enc: &Encoded, now: Instant) {
        let mut ack_buf = [0u8; 48];
        let ack_len = match ack {
            Some((n, seq)) => {
                use std::io::Write;
                let mut cur = std::io::Cursor::new(&mut ack_buf[..]);
                writeln!(cur, "ack:{n}-{seq}").expect("48 bytes hold two integers");
                cur.position() as usize
            }
            None => 0,
        };
        let len = 8 + prefix.len() + ack_len + enc.bytes.len();
        if self.ws {
            framing::write_header(&mut self.buf, data_opcode(enc.utf8), len);
        }
        self.buf.reserve(len);
        self.buf.extend_from_slice(b"MESSAGE\n");
        self.buf.extend_from_slice(prefix);
        self.buf.extend_from_slice(&ack_buf[..ack_len]);
        self.buf.extend_from_slice(&enc.bytes);
        self.last_write = now;
    }

    /// Queue a heart-beat EOL (a text message `\n` over WebSocket).
    pub(crate) fn heartbeat(&mut self, now: Instant) {
        if self.ws {
            framing::write_header(&mut self.buf, data_opcode(true), 1);
        }
        self.buf.push(b'\n');
        self.last_write = now;
    }

    /// Queue a pong (WebSocket only).
    pub(crate) fn pong(&mut self, payload: &[u8]) {
        framing::write_pong(&mut self.buf, payload);
    }

    /// Start closing: queue a WebSocket close frame with `code`, flush what
    /// is queued, then close.
    pub(crate) fn close(&mut self, code: CloseCode, reason: &str) {
        if self.closing.is_some() {
            return;
        }
        if self.ws {
            framing::write_close(&mut self.buf, code, reason);
        }
        self.closing = Some(Instant::now() + CLOSE_FLUSH_TIMEOUT);
    }

    /// Queue a STOMP ERROR and close with `code`.
    pub(crate) fn error(
        &mut self,
        message: &str,
        receipt: Option<&str>,
        extra: &[(&str, &str)],
        detail: &str,
        code: CloseCode,
    ) {
        if self.closing.is_some() {
            return;
        }
        crate::metrics::local(|m| m.error_sent(message));
        let mut headers: Vec<(&str, &str)> = vec![("message", message)];
        if let Some(r) = receipt {
            headers.push(("receipt-id", r));
        }
        headers.extend_from_slice(extra);
        headers.push(("content-type", "text/plain"));
        let len = detail.len().to_string();
        headers.push(("content-length", &len));
        self.frame("ERROR", &headers, detail.as_bytes(), self.escaping);
        self.close(code, "");
    }

    /// Plain HTTP answer then close (before any WebSocket framing).
    pub(crate) fn http(&mut self, response: &[u8]) {
        self.buf.extend_from_slice(response);
        self.closing = Some(Instant::now() + CLOSE_FLUSH_TIMEOUT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_buffer_is_freed_and_unblocks() {
        let mut out = Out::new(false, Instant::now());
        out.frame("RECEIPT", &[("receipt-id", "r1")], b"", Escaping::None);
        assert_eq!(out.pending(), b"RECEIPT\nreceipt-id:r1\n\n\0");
        out.set_write_blocked();
        out.consume(3);
        assert!(out.is_write_blocked(), "not all written yet");
        assert_eq!(out.pending(), b"EIPT\nreceipt-id:r1\n\n\0");
        out.consume(out.pending_len());
        assert!(!out.is_write_blocked());
        assert_eq!(out.buf.capacity(), 0, "an idle connection pins no buffer");
    }

    #[test]
    fn an_error_closes_once_and_ends_with_a_close_frame_over_websocket() {
        let mut out = Out::new(true, Instant::now());
        out.error("bad", Some("r9"), &[], "why", CloseCode::Policy);
        assert!(out.is_closing());
        let first = out.pending_len();
        // A second error (or close) while closing adds nothing.
        out.error("again", None, &[], "", CloseCode::Protocol);
        out.close(CloseCode::Normal, "");
        assert_eq!(out.pending_len(), first);
        let bytes = out.pending();
        // A text message with the ERROR frame, then a close frame 1008.
        let frame = b"ERROR\nmessage:bad\nreceipt-id:r9\ncontent-type:text/plain\ncontent-length:3\n\nwhy\0";
        assert_eq!(bytes[0], 0x81);
        assert_eq!(bytes[1] as usize, frame.len());
        assert_eq!(&bytes[2..2 + frame.len()], frame);
        assert_eq!(&bytes[2 + frame.len()..], [0x88, 0x02, 0x03, 0xf0]);
    }

    #[test]
    fn shutdown_is_due_once_after_everything_is_sent() {
        let mut out = Out::new(false, Instant::now());
        assert!(!out.take_shutdown(), "not closing");
        out.http(b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(!out.take_shutdown(), "still sending");
        out.consume(out.pending_len());
        assert!(out.take_shutdown());
        assert!(!out.take_shutdown(), "once");
    }

    #[test]
    fn the_flush_list_mark_is_taken_once() {
        let mut out = Out::new(false, Instant::now());
        assert!(out.mark_queued());
        assert!(!out.mark_queued());
        out.clear_queued();
        assert!(out.mark_queued());
    }
}
