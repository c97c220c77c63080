//! WebSocket framing (RFC 6455 §5) without a per-connection read buffer.
//!
//! Bytes arrive in the shard's scratch buffer. `WsReader::feed` walks them,
//! parses frame headers with tungstenite's `FrameHeader::parse`, unmasks
//! payloads in place and hands data payload segments straight to the STOMP
//! layer — text and binary alike, since STOMP frames may span messages. Only
//! a split frame header (≤ 14 bytes) and control-frame payloads (≤ 125 bytes)
//! are kept per connection.

use std::io::Cursor;

use thiserror::Error;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

pub use tungstenite::protocol::frame::coding::CloseCode;

/// A WebSocket protocol violation by the client; answered with close 1002.
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

/// Per-connection inbound framing state (≈ 48 bytes when idle).
#[derive(Debug, Default)]
pub struct WsReader {
    /// Header bytes split across reads.
    head: [u8; 14],
    head_len: u8,
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    /// The current frame's mask and our position in it.
    mask: [u8; 4],
    mask_pos: u8,
    /// The current frame is a control frame of this kind.
    control: Option<Control>,
    /// Whether the current frame header has been read.
    in_frame: bool,
    /// A fragmented data message is open (its FIN has not come yet).
    in_message: bool,
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
            OpCode::Data(Data::Text | Data::Binary) => {
                if self.in_message {
                    return Err(WsError::BadContinuation);
                }
                self.in_message = !hdr.is_final;
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
        self.mask_pos = 0;
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
        let mut p = self.mask_pos as usize;
        for b in seg.iter_mut() {
            *b ^= self.mask[p & 3];
            p += 1;
        }
        self.mask_pos = (p & 3) as u8;
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
