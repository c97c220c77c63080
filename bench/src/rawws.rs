//! A receive-only WebSocket reader for fan-out subscribers.
//!
//! tungstenite allocates a `Vec` and validates UTF-8 for every message; at
//! a million deliveries a second on two cores that alone would make the
//! generator the bottleneck. Once a subscriber's session is set up (with
//! tungstenite), its socket moves here: one 64 KiB buffer per reader,
//! frames parsed in place, no allocation per message.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

pub struct RawReader {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// A fragmented message being put together.
    partial: Vec<u8>,
    /// Where the last returned message lives.
    last: Last,
}

enum Last {
    None,
    Buf(usize, usize),
    Partial,
}

const BUF: usize = 64 * 1024;
/// Largest message the reader accepts (the fan-out bodies are small).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

impl RawReader {
    pub fn new(stream: TcpStream) -> RawReader {
        RawReader {
            stream,
            buf: vec![0; BUF],
            start: 0,
            end: 0,
            partial: Vec::new(),
            last: Last::None,
        }
    }

    /// The next data message's payload; `None` when the peer closed.
    /// Pings are answered; pongs skipped.
    pub async fn next(&mut self) -> std::io::Result<Option<&[u8]>> {
        loop {
            match self.parse()? {
                Some(true) => {
                    return Ok(Some(match self.last {
                        Last::Buf(a, b) => &self.buf[a..b],
                        Last::Partial => &self.partial,
                        Last::None => &[],
                    }));
                }
                Some(false) => return Ok(None),
                None => {}
            }
            // Need more bytes: compact, grow for a big frame, read.
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                if self.buf.len() >= MAX_MESSAGE + 14 {
                    return Err(std::io::Error::other("frame too large"));
                }
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = self.stream.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Ok(None);
            }
            self.end += n;
        }
    }

    /// Consume frames in the buffer: Some(true) = a message is ready in
    /// `last`, Some(false) = close, None = need more bytes.
    fn parse(&mut self) -> std::io::Result<Option<bool>> {
        if matches!(self.last, Last::Partial) {
            self.partial.clear();
        }
        self.last = Last::None;
        loop {
            let avail = &self.buf[self.start..self.end];
            let Some((fin, opcode, head, len)) = header(avail)? else {
                return Ok(None);
            };
            if avail.len() < head + len {
                return Ok(None);
            }
            let (a, b) = (self.start + head, self.start + head + len);
            self.start = b;
            match opcode {
                0x8 => return Ok(Some(false)),
                0x9 => {
                    // Pong with the same payload, masked with a zero key.
                    let payload = self.buf[a..b].to_vec();
                    let mut f = vec![0x8A, 0x80 | payload.len().min(125) as u8, 0, 0, 0, 0];
                    f.extend_from_slice(&payload[..payload.len().min(125)]);
                    // Best effort without awaiting: a pong that does not
                    // fit the socket buffer is dropped (the peer pings
                    // again); a broken socket shows on the next read.
                    let _ = self.stream.try_write(&f);
                }
                0xA => {}
                0x1 | 0x2 if fin => {
                    self.last = Last::Buf(a, b);
                    return Ok(Some(true));
                }
                0x0..=0x2 => {
                    if self.partial.len() + len > MAX_MESSAGE {
                        return Err(std::io::Error::other("message too large"));
                    }
                    self.partial.extend_from_slice(&self.buf[a..b]);
                    if fin {
                        self.last = Last::Partial;
                        return Ok(Some(true));
                    }
                }
                other => {
                    return Err(std::io::Error::other(format!("bad opcode {other}")));
                }
            }
        }
    }
}

/// (fin, opcode, header length, payload length) of a server frame.
fn header(b: &[u8]) -> std::io::Result<Option<(bool, u8, usize, usize)>> {
    if b.len() < 2 {
        return Ok(None);
    }
    let fin = b[0] & 0x80 != 0;
    let opcode = b[0] & 0x0F;
    if b[1] & 0x80 != 0 {
        return Err(std::io::Error::other("masked frame from server"));
    }
    let (head, len) = match b[1] & 0x7F {
        126 if b.len() < 4 => return Ok(None),
        126 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
        127 if b.len() < 10 => return Ok(None),
        127 => (
            10,
            u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
        ),
        n => (2, n as usize),
    };
    if len > MAX_MESSAGE {
        return Err(std::io::Error::other("frame too large"));
    }
    Ok(Some((fin, opcode, head, len)))
}

#[cfg(test)]
mod tests {
    use super::header;

    #[test]
    fn frame_headers() {
        assert_eq!(header(&[0x81, 5]).unwrap(), Some((true, 1, 2, 5)));
        assert_eq!(
            header(&[0x01, 126, 1, 0]).unwrap(),
            Some((false, 1, 4, 256))
        );
        assert_eq!(header(&[0x82, 127, 0]).unwrap(), None);
        assert!(header(&[0x81, 0x85]).is_err());
    }

    #[tokio::test]
    async fn reads_split_fragmented_and_ping_frames() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut s, _) = l.accept().await.unwrap();
            let mut bytes = vec![0x81, 3, b'a', b'b', b'c'];
            bytes.extend([0x89, 1, b'p']); // ping
            bytes.extend([0x01, 2, b'd', b'e', 0x80, 1, b'f']); // fragmented
            bytes.extend([0x82, 126, 0, 200]);
            bytes.extend(std::iter::repeat_n(b'z', 200));
            for chunk in bytes.chunks(3) {
                s.write_all(chunk).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            s.write_all(&[0x88, 0]).await.unwrap();
            let mut pong = [0u8; 7];
            use tokio::io::AsyncReadExt;
            s.read_exact(&mut pong).await.unwrap();
            pong
        });
        let mut r = super::RawReader::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        assert_eq!(r.next().await.unwrap(), Some(&b"abc"[..]));
        assert_eq!(r.next().await.unwrap(), Some(&b"def"[..]));
        assert_eq!(r.next().await.unwrap().map(|m| m.len()), Some(200));
        assert_eq!(r.next().await.unwrap(), None);
        assert_eq!(server.await.unwrap(), [0x8A, 0x81, 0, 0, 0, 0, b'p']);
    }
}
