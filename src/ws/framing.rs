//! WebSocket framing (RFC 6455 §5) without a per-connection read buffer.
//!
//! Bytes arrive in the shard's scratch buffer. `WsReader::feed` walks them,
//! parses frame headers with tungstenite's `FrameHeader::parse`, unmasks
//! payloads in place and hands data payload segments straight to the STOMP
//! layer — text and binary alike, since STOMP frames may span messages. Only
//! a split frame header (≤ 14 bytes) and control-frame payloads (≤ 125 bytes)
//! are kept per connection.
//!
//! Text messages are checked to be UTF-8 (RFC 6455 §8.1) as their segments
//! pass, without buffering: `Utf8` is the state of a small automaton (one
//! byte) that carries a character split across segments, fragments or reads.
//! A segment is handed on up to its first invalid byte, then the reader
//! fails; a final fragment that ends inside a character fails too.

use std::io::Cursor;

use thiserror::Error;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

pub use tungstenite::protocol::frame::coding::CloseCode;

/// A WebSocket protocol violation by the client; answered with the close
/// code of `WsError::close_code` (1002, or 1007 for a text message that is
/// not UTF-8).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WsError {
    #[error("client frame not masked (RFC 6455 §5.1)")]
    Unmasked,
    #[error("reserved bits set without an extension")]
    ReservedBits,
    #[error("invalid opcode")]
    BadOpcode,
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControl,
    #[error("continuation frame without a message, or new message inside a fragmented one")]
    BadContinuation,
    #[error("payload length not in its shortest form (RFC 6455 §5.2)")]
    LongLength,
    #[error("64-bit payload length with its most significant bit set (RFC 6455 §5.2)")]
    LengthMsb,
    #[error("text message is not valid UTF-8 (RFC 6455 §8.1)")]
    InvalidUtf8,
}

impl WsError {
    /// The close code this error is answered with (RFC 6455 §7.4.1): 1007
    /// for data inconsistent with the message type, 1002 for the rest.
    pub fn close_code(&self) -> CloseCode {
        match self {
            WsError::InvalidUtf8 => CloseCode::Invalid,
            _ => CloseCode::Protocol,
        }
    }
}

/// What `feed` reports besides data.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Unmasked payload bytes of a text, binary or continuation frame.
    Data(&'a [u8]),
    /// A complete ping with its payload.
    Ping(&'a [u8]),
    /// A complete close frame: the status code if the peer sent one.
    Close(Option<u16>),
}

/// Per-connection inbound framing state (56 bytes, of which the control
/// payload's `Vec` holds nothing when idle).
#[derive(Debug, Default)]
pub struct WsReader {
    /// Header bytes split across reads.
    head: [u8; 14],
    head_len: u8,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// The current frame's mask, rotated to where the next byte falls in it.
    mask: [u8; 4],
    /// The current frame is a control frame of this kind.
    control: Option<Control>,
    /// Whether the current frame header has been read.
    in_frame: bool,
    /// A fragmented data message is open (its FIN has not come yet).
    in_message: bool,
    /// The current data message is text: where its UTF-8 check stands.
    utf8: Option<Utf8>,
    /// Payload of the control frame being read (≤ 125 bytes).
    control_buf: Vec<u8>,
}

impl WsReader {
    /// Walk `data`, calling `on` for every data segment and complete control
    /// frame. Stops at the first error from the protocol or from `on`.
    pub fn feed<E: From<WsError>>(
        &mut self,
        data: &mut [u8],
        mut on: impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut i = 0;
        while i < data.len() {
            if !self.in_frame {
                i += self.read_header(&data[i..])?;
                if !self.in_frame {
                    break; // header incomplete: kept in self.head
                }
                if self.remaining == 0 {
                    self.finish_frame(&mut on)?;
                }
                continue;
            }
            let n = (data.len() - i).min(self.remaining.min(usize::MAX as u64) as usize);
            let seg = &mut data[i..i + n];
            self.unmask(seg);
            i += n;
            self.remaining -= n as u64;
            if self.control.is_some() {
                self.control_buf.extend_from_slice(seg);
            } else {
                if let Some(state) = self.utf8 {
                    match state.check(seg) {
                        Ok(next) => self.utf8 = Some(next),
                        Err(valid) => {
                            // What precedes the first invalid byte is a
                            // valid stream: hand it on, then fail.
                            if valid > 0 {
                                on(Event::Data(&seg[..valid]))?;
                            }
                            return Err(WsError::InvalidUtf8.into());
                        }
                    }
                }
                on(Event::Data(seg))?;
            }
            if self.remaining == 0 {
                self.finish_frame(&mut on)?;
            }
        }
        Ok(())
    }

    /// Consume header bytes from `data`; returns how many were used.
    fn read_header(&mut self, data: &[u8]) -> Result<usize, WsError> {
        let had = self.head_len as usize;
        let take = (14 - had).min(data.len());
        self.head[had..had + take].copy_from_slice(&data[..take]);
        let avail = had + take;
        let mut cur = Cursor::new(&self.head[..avail]);
        let parsed = FrameHeader::parse(&mut cur).map_err(|_| WsError::BadOpcode)?;
        let Some((hdr, len)) = parsed else {
            self.head_len = avail as u8;
            return Ok(take);
        };
        let used = cur.position() as usize - had;
        self.head_len = 0;
        // `FrameHeader::parse` takes any extended length as it comes.
        match self.head[1] & 0x7F {
            126 if len < 126 => return Err(WsError::LongLength),
            127 if len >> 63 != 0 => return Err(WsError::LengthMsb),
            127 if len < 0x1_0000 => return Err(WsError::LongLength),
            _ => {}
        }
        if hdr.rsv1 || hdr.rsv2 || hdr.rsv3 {
            return Err(WsError::ReservedBits);
        }
        let Some(mask) = hdr.mask else {
            return Err(WsError::Unmasked);
        };
        self.control = match hdr.opcode {
            OpCode::Control(c @ (Control::Close | Control::Ping | Control::Pong)) => {
                if !hdr.is_final || len > 125 {
                    return Err(WsError::BadControl);
                }
                Some(c)
            }
            OpCode::Data(d @ (Data::Text | Data::Binary)) => {
                if self.in_message {
                    return Err(WsError::BadContinuation);
                }
                self.in_message = !hdr.is_final;
                self.utf8 = (d == Data::Text).then_some(Utf8::Ready);
                None
            }
            OpCode::Data(Data::Continue) => {
                if !self.in_message {
                    return Err(WsError::BadContinuation);
                }
                self.in_message = !hdr.is_final;
                None
            }
            _ => return Err(WsError::BadOpcode),
        };
        self.mask = mask;
        self.remaining = len;
        self.in_frame = true;
        Ok(used)
    }

    fn finish_frame<E: From<WsError>>(
        &mut self,
        on: &mut impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.in_frame = false;
        let Some(control) = self.control.take() else {
            // The end of a data frame; of its message too without `in_message`.
            if !self.in_message && self.utf8.take().is_some_and(|s| s != Utf8::Ready) {
                return Err(WsError::InvalidUtf8.into()); // ends inside a character
            }
            return Ok(());
        };
        let payload = std::mem::take(&mut self.control_buf);
        match control {
            Control::Ping => on(Event::Ping(&payload)),
            Control::Close => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                on(Event::Close(code))
            }
            _ => Ok(()), // unsolicited pong: ignored (§5.5.3)
        }
    }

    fn unmask(&mut self, seg: &mut [u8]) {
        for (i, b) in seg.iter_mut().enumerate() {
            *b ^= self.mask[i & 3];
        }
        // The next segment starts where this one ended in the mask.
        self.mask.rotate_left(seg.len() & 3);
    }
}

/// Where an incremental UTF-8 check stands between two bytes: the states of
/// the automaton of the Unicode Standard's table 3-7 (well-formed byte
/// sequences). `Ready` is between characters; the others are inside one,
/// naming what the next byte must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Utf8 {
    Ready,
    /// 1, 2 or 3 continuation bytes (80..=BF) to come.
    Tail1,
    Tail2,
    Tail3,
    /// After E0: A0..=BF (no overlong 3-byte form), then one more.
    E0,
    /// After ED: 80..=9F (no UTF-16 surrogates), then one more.
    Ed,
    /// After F0: 90..=BF (no overlong 4-byte form), then two more.
    F0,
    /// After F4: 80..=8F (nothing above U+10FFFF), then two more.
    F4,
}

impl Utf8 {
    /// The state after byte `b`, or `None` if `b` cannot come here.
    fn step(self, b: u8) -> Option<Utf8> {
        use Utf8::*;
        Some(match (self, b) {
            (Ready, 0x00..=0x7F) => Ready,
            (Ready, 0xC2..=0xDF) => Tail1,
            (Ready, 0xE0) => E0,
            (Ready, 0xE1..=0xEC | 0xEE..=0xEF) => Tail2,
            (Ready, 0xED) => Ed,
            (Ready, 0xF0) => F0,
            (Ready, 0xF1..=0xF3) => Tail3,
            (Ready, 0xF4) => F4,
            (Tail1, 0x80..=0xBF) => Ready,
            (Tail2, 0x80..=0xBF) | (E0, 0xA0..=0xBF) | (Ed, 0x80..=0x9F) => Tail1,
            (Tail3, 0x80..=0xBF) | (F0, 0x90..=0xBF) | (F4, 0x80..=0x8F) => Tail2,
            _ => return None,
        })
    }

    /// Check the next `seg` of a text message: the state after it, or how
    /// many of its bytes come before the invalid sequence.
    fn check(self, seg: &[u8]) -> Result<Utf8, usize> {
        // Finish a character begun in an earlier segment, byte by byte.
        let mut state = self;
        let mut i = 0;
        while state != Utf8::Ready {
            let Some(&b) = seg.get(i) else {
                return Ok(state);
            };
            state = state.step(b).ok_or(0usize)?;
            i += 1;
        }
        // The rest at the standard library's speed (ASCII a word at a time).
        let err = match std::str::from_utf8(&seg[i..]) {
            Ok(_) => return Ok(Utf8::Ready),
            Err(e) => e,
        };
        let at = i + err.valid_up_to();
        if err.error_len().is_some() {
            return Err(at);
        }
        // The segment ends inside a character (≤ 3 bytes): carry its state.
        seg[at..]
            .iter()
            .try_fold(Utf8::Ready, |s, &b| s.step(b))
            .ok_or(at)
    }
}

/// Append an unmasked server frame header for a payload of `len` bytes.
pub(crate) fn write_header(out: &mut Vec<u8>, opcode: OpCode, len: usize) {
    let hdr = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    hdr.format(len as u64, out)
        .expect("writing to a Vec cannot fail");
}

/// Length of the header `write_header` writes for `len` payload bytes.
#[cfg(test)]
fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// The opcode of an outbound STOMP frame: text when it is valid UTF-8.
pub(crate) fn data_opcode(utf8: bool) -> OpCode {
    OpCode::Data(if utf8 { Data::Text } else { Data::Binary })
}

/// Append a complete close frame.
pub(crate) fn write_close(out: &mut Vec<u8>, code: CloseCode, reason: &str) {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    write_header(out, OpCode::Control(Control::Close), 2 + reason.len());
    out.extend_from_slice(&u16::from(code).to_be_bytes());
    out.extend_from_slice(reason);
}

/// Append a pong answering `payload`.
pub(crate) fn write_pong(out: &mut Vec<u8>, payload: &[u8]) {
    write_header(out, OpCode::Control(Control::Pong), payload.len());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut v = vec![first];
        match payload.len() {
            n @ 0..=125 => v.push(0x80 | n as u8),
            n => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    fn collect(r: &mut WsReader, bytes: &[u8]) -> Result<Vec<String>, WsError> {
        let mut data = bytes.to_vec();
        let mut got = Vec::new();
        r.feed::<WsError>(&mut data, |e| {
            got.push(match e {
                Event::Data(d) => format!("D:{}", String::from_utf8_lossy(d)),
                Event::Ping(p) => format!("P:{}", String::from_utf8_lossy(p)),
                Event::Close(c) => format!("C:{c:?}"),
            });
            Ok(())
        })?;
        Ok(got)
    }

    #[test]
    fn frames_split_anywhere_reassemble() {
        let mut all = client_frame(0x81, b"hello");
        all.extend(client_frame(0x89, b"pp"));
        all.extend(client_frame(0x02, &[b'x'; 300])); // binary, not final
        all.extend(client_frame(0x80, b"end")); // continuation, final
        all.extend(client_frame(0x88, &[0x03, 0xe8]));
        for split in 0..all.len() {
            let mut r = WsReader::default();
            let mut got = collect(&mut r, &all[..split]).unwrap();
            got.extend(collect(&mut r, &all[split..]).unwrap());
            let text: String = got.iter().filter_map(|g| g.strip_prefix("D:")).collect();
            assert_eq!(
                text,
                format!("hello{}end", "x".repeat(300)),
                "split at {split}"
            );
            assert!(got.contains(&"P:pp".to_string()));
            assert_eq!(got.last().unwrap(), "C:Some(1000)");
        }
    }

    #[test]
    fn protocol_errors() {
        let mut r = WsReader::default();
        assert_eq!(collect(&mut r, &[0x81, 0x01, b'a']), Err(WsError::Unmasked));
        let mut r = WsReader::default();
        assert_eq!(
            collect(&mut r, &client_frame(0x80, b"a")),
            Err(WsError::BadContinuation)
        );
        let mut r = WsReader::default();
        assert_eq!(
            collect(&mut r, &client_frame(0x09, b"a")),
            Err(WsError::BadControl)
        );
        let mut r = WsReader::default();
        assert_eq!(
            collect(&mut r, &client_frame(0xC1, b"a")),
            Err(WsError::ReservedBits)
        );
        let mut r = WsReader::default();
        let mut two = client_frame(0x01, b"a");
        two.extend(client_frame(0x81, b"b"));
        assert_eq!(collect(&mut r, &two), Err(WsError::BadContinuation));
    }

    /// Feed `bytes` in the pieces `cuts` makes; the data handed on, and how
    /// it ended.
    fn feed_cut(bytes: &[u8], cuts: &[usize]) -> (Vec<u8>, Result<(), WsError>) {
        let mut r = WsReader::default();
        let mut got = Vec::new();
        let mut data = bytes.to_vec();
        let mut start = 0;
        for &end in cuts.iter().chain([&bytes.len()]) {
            let res = r.feed::<WsError>(&mut data[start..end], |e| {
                if let Event::Data(d) = e {
                    got.extend_from_slice(d);
                }
                Ok(())
            });
            if res.is_err() {
                return (got, res);
            }
            start = end;
        }
        (got, Ok(()))
    }

    /// `payload` as one text frame, or as text + continuation fragments cut
    /// at `frag` (with a ping between them).
    fn text_message(payload: &[u8], frag: Option<usize>) -> Vec<u8> {
        match frag {
            None => client_frame(0x81, payload),
            Some(at) => {
                let mut v = client_frame(0x01, &payload[..at]);
                v.extend(client_frame(0x89, b"p"));
                v.extend(client_frame(0x80, &payload[at..]));
                v
            }
        }
    }

    const MULTI: &str = "a\u{e9}\u{2603}\u{1F600}\u{10FFFF}\u{800}\u{FFFD}z\u{D7FF}\u{E000}";

    #[test]
    fn valid_text_split_at_every_byte_and_fragment() {
        let payload = MULTI.as_bytes();
        for frag in [None].into_iter().chain((0..=payload.len()).map(Some)) {
            let wire = text_message(payload, frag);
            for cut in 0..=wire.len() {
                let (got, res) = feed_cut(&wire, &[cut]);
                assert_eq!(res, Ok(()), "fragment at {frag:?}, read cut at {cut}");
                assert_eq!(got, payload, "fragment at {frag:?}, read cut at {cut}");
            }
        }
        // and one byte per read
        let wire = text_message(payload, Some(5));
        let cuts: Vec<usize> = (1..wire.len()).collect();
        assert_eq!(feed_cut(&wire, &cuts), (payload.to_vec(), Ok(())));
    }

    #[test]
    fn invalid_text_fails_at_every_split() {
        // (payload, how many bytes precede the invalid sequence)
        let cases: [(&[u8], usize); 10] = [
            (b"ab\xff", 2),
            (b"ab\x80cd", 2),
            (b"\xc0\xafxx", 0),         // overlong
            (b"x\xe0\x9f\xbf", 1),      // overlong, 3 bytes
            (b"x\xed\xa0\x80", 1),      // surrogate
            (b"\xf0\x8f\xbf\xbfok", 0), // overlong, 4 bytes
            (b"\xf4\x90\x80\x80", 0),   // above U+10FFFF
            (b"\xf5\x80\x80\x80", 0),
            (b"\xe2\x98\xe2\x98\x83", 0), // cut short by a new character
            (b"\xc3\xa9\xc3(", 2),
        ];
        for (payload, valid) in cases {
            for frag in [None].into_iter().chain((0..=payload.len()).map(Some)) {
                let wire = text_message(payload, frag);
                for cut in 0..=wire.len() {
                    let (got, res) = feed_cut(&wire, &[cut]);
                    let ctx = format!("{payload:x?} fragment at {frag:?}, read cut at {cut}");
                    assert_eq!(res, Err(WsError::InvalidUtf8), "{ctx}");
                    // Never beyond the invalid sequence; all of what precedes
                    // it, but for the start of the sequence when it arrived
                    // in an earlier piece.
                    assert!(got.len() <= payload.len(), "{ctx}");
                    assert_eq!(got[..], payload[..got.len()], "{ctx}");
                    assert!(got.len() >= valid, "{ctx}");
                    assert!(got.len() <= valid + 3, "{ctx}");
                    if frag.is_none() && cut <= wire.len() - payload.len() {
                        assert_eq!(got.len(), valid, "{ctx}");
                    }
                }
            }
        }
    }

    #[test]
    fn text_ending_inside_a_character_fails_at_the_final_fragment() {
        for payload in [&b"ok\xe2\x98"[..], b"\xf0", b"\xf0\x9f\x98", b"\xc3"] {
            for frag in [None].into_iter().chain((0..=payload.len()).map(Some)) {
                let wire = text_message(payload, frag);
                for cut in 0..=wire.len() {
                    let (got, res) = feed_cut(&wire, &[cut]);
                    let ctx = format!("{payload:x?} fragment at {frag:?}, read cut at {cut}");
                    assert_eq!(res, Err(WsError::InvalidUtf8), "{ctx}");
                    assert_eq!(got, payload, "{ctx}: all bytes were possibly valid");
                }
            }
        }
        // an empty final fragment after an unfinished character
        let mut wire = client_frame(0x01, b"\xe2\x98");
        wire.extend(client_frame(0x80, b""));
        assert_eq!(feed_cut(&wire, &[]).1, Err(WsError::InvalidUtf8));
        // while a non-final fragment may end inside one
        let wire = client_frame(0x01, b"\xe2\x98");
        assert_eq!(feed_cut(&wire, &[]), (b"\xe2\x98".to_vec(), Ok(())));
    }

    #[test]
    fn binary_is_not_checked_and_text_after_it_is_checked_alone() {
        let mut wire = client_frame(0x02, b"\xff\xe2");
        wire.extend(client_frame(0x80, b"\xc0\xaf\xe2"));
        assert_eq!(
            feed_cut(&wire, &[]),
            (b"\xff\xe2\xc0\xaf\xe2".to_vec(), Ok(()))
        );
        // a text message cannot finish a character a binary one began
        wire.extend(client_frame(0x81, b"\x98\x83"));
        assert_eq!(feed_cut(&wire, &[]).1, Err(WsError::InvalidUtf8));
        // a text message after a binary one is checked from its start
        let mut wire = client_frame(0x82, b"\xe2");
        wire.extend(client_frame(0x81, "\u{2603}".as_bytes()));
        assert_eq!(feed_cut(&wire, &[]).1, Ok(()));
    }

    /// The automaton agrees with the standard library on every sequence of
    /// up to 4 bytes drawn from the bytes at the edges of table 3-7, fed
    /// whole and a byte at a time.
    #[test]
    fn utf8_automaton_matches_std() {
        let edges: Vec<u8> = vec![
            0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0,
            0xE1, 0xEC, 0xED, 0xEE, 0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF,
        ];
        let mut seqs: Vec<Vec<u8>> = vec![vec![]];
        for _ in 0..4 {
            let longer: Vec<Vec<u8>> = seqs
                .iter()
                .filter(|s| s.len() == seqs.last().unwrap().len())
                .flat_map(|s| {
                    edges.iter().map(move |&b| {
                        let mut t = s.clone();
                        t.push(b);
                        t
                    })
                })
                .collect();
            seqs.extend(longer);
        }
        let complete = |st: Result<Utf8, usize>| matches!(st, Ok(Utf8::Ready));
        for seq in &seqs {
            let std_ok = std::str::from_utf8(seq).is_ok();
            assert_eq!(complete(Utf8::Ready.check(seq)), std_ok, "{seq:x?}");
            let bytewise = seq.iter().try_fold(Utf8::Ready, |s, b| {
                s.check(std::slice::from_ref(b)).map_err(|_| ())
            });
            assert_eq!(bytewise == Ok(Utf8::Ready), std_ok, "{seq:x?}");
        }
    }

    /// A masked client header declaring `len` in the given length form.
    fn header_with_length(form: u8, len: u64) -> Vec<u8> {
        let mut v = vec![0x81];
        match form {
            7 => v.push(0x80 | len as u8),
            16 => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                v.push(0x80 | 127);
                v.extend_from_slice(&len.to_be_bytes());
            }
        }
        v.extend_from_slice(&[1, 2, 3, 4]);
        v
    }

    #[test]
    fn lengths_must_be_shortest_and_63_bits() {
        let cases = [
            (16, 0, Err(WsError::LongLength)),
            (16, 125, Err(WsError::LongLength)),
            (16, 126, Ok(())),
            (16, 65535, Ok(())),
            (64, 0, Err(WsError::LongLength)),
            (64, 65535, Err(WsError::LongLength)),
            (64, 65536, Ok(())),
            (64, (1 << 63) - 1, Ok(())),
            (64, 1 << 63, Err(WsError::LengthMsb)),
            (64, u64::MAX, Err(WsError::LengthMsb)),
        ];
        for (form, len, want) in cases {
            let wire = header_with_length(form, len);
            for cut in 0..=wire.len() {
                assert_eq!(
                    feed_cut(&wire, &[cut]).1,
                    want,
                    "{form}-bit {len}, cut {cut}"
                );
            }
        }
    }

    #[test]
    fn close_codes() {
        assert_eq!(WsError::InvalidUtf8.close_code(), CloseCode::Invalid);
        assert_eq!(u16::from(WsError::InvalidUtf8.close_code()), 1007);
        for e in [
            WsError::LongLength,
            WsError::LengthMsb,
            WsError::Unmasked,
            WsError::BadContinuation,
        ] {
            assert_eq!(u16::from(e.close_code()), 1002, "{e:?}");
        }
    }

    #[test]
    fn server_headers() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let mut out = Vec::new();
            write_header(&mut out, data_opcode(true), len);
            assert_eq!(out.len(), header_len(len));
            assert_eq!(out[0], 0x81);
        }
        let mut out = Vec::new();
        write_close(&mut out, CloseCode::Normal, "");
        assert_eq!(out, [0x88, 0x02, 0x03, 0xe8]);
    }
}
