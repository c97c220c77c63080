//! The outbound side of a connection: one contiguous buffer of encoded
//! frames, written with one `send` per batch, freed when drained.

use std::time::{Duration, Instant};

use crate::router::Encoded;
use crate::stomp::frame::{Escaping, encode_frame};
use crate::ws::framing::{self, CloseCode, data_opcode};

/// How long a closing connection may take to drain its buffer (a final
/// ERROR, RECEIPT or close frame) before the socket is closed regardless.
pub const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Out {
    /// Encoded frames; `buf[pos..]` is not written yet.
    pub buf: Vec<u8>,
    pub pos: usize,
    /// Frames go out wrapped in WebSocket messages.
    pub ws: bool,
    /// Queued in the shard's dirty list for the next flush.
    pub dirty: bool,
    /// The socket would block: the I/O task owns writing until drained.
    pub write_blocked: bool,
    /// Set once the connection is to close: flush, then close by this time.
    pub closing: Option<Instant>,
    /// Close now without flushing (peer gone, or flush deadline passed).
    pub abort: bool,
    /// Our side is shut down for writing (closing, everything sent).
    pub shut_wr: bool,
    /// Last time anything was queued (heart-beats are due after a silence).
    pub last_write: Instant,
    /// Header escaping of the negotiated STOMP version (none before CONNECT),
    /// for the frames `Out` writes itself (ERROR).
    pub escaping: Escaping,
}

impl Out {
    pub fn new(ws: bool, now: Instant) -> Out {
        Out {
            buf: Vec::new(),
            pos: 0,
            ws,
            dirty: false,
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

    pub fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// Queue a (non-MESSAGE) frame.
    pub fn frame(
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
    pub fn heartbeat(&mut self, now: Instant) {
        if self.ws {
            framing::write_header(&mut self.buf, data_opcode(true), 1);
        }
        self.buf.push(b'\n');
        self.last_write = now;
    }

    /// Queue a pong (WebSocket only).
    pub fn pong(&mut self, payload: &[u8]) {
        framing::write_pong(&mut self.buf, payload);
    }

    /// Start closing: queue a WebSocket close frame with `code`, flush what
    /// is queued, then close.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        if self.closing.is_some() {
            return;
        }
        if self.ws {
            framing::write_close(&mut self.buf, code, reason);
        }
        self.closing = Some(Instant::now() + CLOSE_FLUSH_TIMEOUT);
    }

    /// Queue a STOMP ERROR and close with `code`.
    pub fn error(
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
    pub fn http(&mut self, response: &[u8]) {
        self.buf.extend_from_slice(response);
        self.closing = Some(Instant::now() + CLOSE_FLUSH_TIMEOUT);
    }
}
