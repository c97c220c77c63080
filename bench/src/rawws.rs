//! A receive-only WebSocket reader for fan-out subscribers (and the
//! `send` publishers' RECEIPTs), with kernel receive timestamps.
//!
//! tungstenite allocates a `Vec` and validates UTF-8 for every message; at
//! a million deliveries a second on two cores that alone would make the
//! generator the bottleneck. Once a subscriber's session is set up (with
//! tungstenite), its socket moves here: one 64 KiB buffer per reader,
//! frames parsed in place, no allocation per message.
//!
//! Every read is a `recvmsg(2)` on a socket with `SO_TIMESTAMPNS` on, so
//! the kernel says when the newest segment of the bytes read arrived
//! (CLOCK_REALTIME, the clock of [`now_ns`] and of the send times in the
//! bodies). A message is stamped with the timestamp of the read that
//! brought its last byte: the kernel's side of its latency ends there; what
//! follows (the reader task's wake-up, scheduling, parsing) is the
//! client's own share. One timestamp per read, none per message.
//!
//! Over `wss://` the reader reads the TLS stream (decrypted by rustls)
//! into the same buffer instead: no kernel timestamps (the bytes the
//! kernel stamps are TLS records, not the messages), so only the total
//! latency is measured; and pings are not answered (there is no way to
//! write without awaiting; the servers do not ping sessions that asked
//! for heart-beats 0,0). [`RawReader::split`] is plain TCP only.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;

use crate::ws::Stream;

/// Now in ns since the epoch on CLOCK_REALTIME: the clock of the send
/// times in the bodies and of the kernel's `SO_TIMESTAMPNS` stamps.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A message's latency in µs and, when its read had a kernel timestamp,
/// the server's and the client's shares of it: `sent_ns` the publisher's
/// send time, `rx_ns` the kernel's arrival timestamp of the read that
/// completed the message (0 = none), `parsed_ns` when it was parsed, all
/// on CLOCK_REALTIME. The arrival time is clamped into `[sent, parsed]`,
/// so the shares are never negative and add up to the total.
pub fn split_us(sent_ns: u64, rx_ns: u64, parsed_ns: u64) -> (u64, Option<(u64, u64)>) {
    let total = parsed_ns.saturating_sub(sent_ns);
    if rx_ns == 0 {
        return (total / 1000, None);
    }
    let rx = rx_ns.clamp(sent_ns, parsed_ns.max(sent_ns));
    let server = rx - sent_ns;
    (total / 1000, Some((server / 1000, (total - server) / 1000)))
}

pub struct RawReader {
    source: Source,
    /// Where pongs go when a [`RawWriter`] shares the socket (it sends
    /// them before its next frame, so they never cut into one of its
    /// frames); `None`: the reader answers pings itself.
    pongs: Option<Arc<Mutex<Vec<u8>>>>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Kernel arrival timestamp (ns, CLOCK_REALTIME) of the latest read;
    /// 0 when the kernel gave none.
    rx_ns: u64,
    /// A fragmented message being put together.
    partial: Vec<u8>,
    /// Where the last returned message lives.
    last: Last,
}

/// Where the bytes come from.
enum Source {
    /// `ws://`: `recvmsg` with kernel timestamps; shared with a [`RawWriter`].
    Plain(Arc<TcpStream>),
    /// `wss://`: reads through rustls; no timestamps.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
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
    /// A reader of a session's stream, set up and with nothing buffered
    /// above it (tungstenite's `into_inner` once the set-up is answered).
    pub fn new(stream: impl Into<Stream>) -> RawReader {
        let source = match stream.into() {
            Stream::Plain(s) => {
                enable_rx_timestamps(s.as_raw_fd());
                Source::Plain(Arc::new(s))
            }
            Stream::Tls(s) => Source::Tls(s),
        };
        RawReader {
            source,
            pongs: None,
            buf: vec![0; BUF],
            start: 0,
            end: 0,
            rx_ns: 0,
            partial: Vec::new(),
            last: Last::None,
        }
    }

    /// A reader and a writer sharing one socket (the `send` publishers);
    /// plain TCP only: refused for a TLS stream.
    pub fn split(stream: impl Into<Stream>) -> std::io::Result<(RawReader, RawWriter)> {
        let stream = match stream.into() {
            Stream::Plain(s) => s,
            Stream::Tls(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    SPLIT_TLS,
                ));
            }
        };
        let mut r = RawReader::new(stream);
        let Source::Plain(shared) = &r.source else {
            unreachable!("a plain stream makes a plain reader");
        };
        let pongs = Arc::new(Mutex::new(Vec::new()));
        let w = RawWriter {
            stream: shared.clone(),
            pongs: pongs.clone(),
            buf: Vec::new(),
        };
        r.pongs = Some(pongs);
        Ok((r, w))
    }

    /// The next data message's payload; `None` when the peer closed.
    /// Pings are answered (not over TLS: see the module's doc); pongs
    /// skipped.
    pub async fn next(&mut self) -> std::io::Result<Option<&[u8]>> {
        Ok(self.next_stamped().await?.map(|(m, _)| m))
    }

    /// The next data message's payload and the kernel's arrival timestamp
    /// (ns, CLOCK_REALTIME; 0 = none) of the read that brought its last
    /// byte; `None` when the peer closed.
    pub async fn next_stamped(&mut self) -> std::io::Result<Option<(&[u8], u64)>> {
        loop {
            // Every message in the buffer is parsed before the next read,
            // so a message returned here was completed by the latest read.
            match self.parse()? {
                Some(true) => {
                    let m = match self.last {
                        Last::Buf(a, b) => &self.buf[a..b],
                        Last::Partial => &self.partial,
                        Last::None => &[],
                    };
                    return Ok(Some((m, self.rx_ns)));
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
            let (n, stamp) = self.read().await?;
            if n == 0 {
                return Ok(None);
            }
            self.end += n;
            self.rx_ns = stamp.unwrap_or(0);
        }
    }

    /// One read into the free end of the buffer: bytes read and, on
    /// plain TCP (a `recvmsg`, when the socket is readable), their kernel
    /// timestamp.
    async fn read(&mut self) -> std::io::Result<(usize, Option<u64>)> {
        let free = &mut self.buf[self.end..];
        let stream = match &mut self.source {
            Source::Plain(s) => s,
            Source::Tls(s) => return Ok((s.read(free).await?, None)),
        };
        let fd = stream.as_raw_fd();
        loop {
            stream.readable().await?;
            match stream.try_io(Interest::READABLE, || recv_stamped(fd, free)) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                r => return r,
            }
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
                    let payload = &self.buf[a..b];
                    let payload = &payload[..payload.len().min(125)];
                    match (&self.pongs, &self.source) {
                        (Some(pongs), _) => {
                            let mut out = pongs.lock().expect("pongs");
                            if out.len() < 4096 {
                                client_frame(0xA, payload, &mut out);
                            }
                        }
                        // Not answered over TLS (see the module's doc).
                        (None, Source::Tls(_)) => {}
                        (None, Source::Plain(stream)) => {
                            let mut f = Vec::with_capacity(payload.len() + 6);
                            client_frame(0xA, payload, &mut f);
                            // Best effort without awaiting: a pong that does
                            // not fit the socket buffer is dropped (the peer
                            // pings again); a broken socket shows on the
                            // next read. Nothing else writes this socket.
                            let _ = stream.try_write(&f);
                        }
                    }
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

/// Why [`RawReader::split`] refuses a TLS stream.
pub const SPLIT_TLS: &str = "the send scenario does not support wss:// yet";

/// The writing side of [`RawReader::split`]: text frames, masked with a
/// zero key (the payload goes out as is), and the reader's pongs.
pub struct RawWriter {
    stream: Arc<TcpStream>,
    pongs: Arc<Mutex<Vec<u8>>>,
    buf: Vec<u8>,
}

impl RawWriter {
    /// Send one text message (with any pongs owed before it).
    pub async fn send_text(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.send(0x1, payload).await
    }

    /// Send a close frame (status 1000).
    pub async fn close(&mut self) -> std::io::Result<()> {
        self.send(0x8, &1000u16.to_be_bytes()).await
    }

    async fn send(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        self.buf.clear();
        {
            let mut pongs = self.pongs.lock().expect("pongs");
            self.buf.extend_from_slice(&pongs);
            pongs.clear();
        }
        client_frame(opcode, payload, &mut self.buf);
        let mut rest = &self.buf[..];
        while !rest.is_empty() {
            self.stream.writable().await?;
            match self.stream.try_write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Append a final client frame (masked with a zero key) to `out`.
fn client_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// Ask the kernel for a software receive timestamp (CLOCK_REALTIME, ns)
/// with every read. Best effort: without it reads carry no timestamp.
fn enable_rx_timestamps(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own with a c_int option value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Room for the control messages of one read: `SCM_TIMESTAMPNS` is one
/// `timespec` (CMSG_SPACE 32 on 64-bit Linux); twice that for slack.
/// `u64`s keep it aligned for `cmsghdr`.
type Control = [u64; 8];

/// `recvmsg` into `buf` (non-blocking socket): bytes read and the kernel's
/// receive timestamp of the newest segment read (ns, CLOCK_REALTIME).
fn recv_stamped(fd: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<u64>)> {
    let mut control: Control = [0; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of::<Control>() as _;
    // SAFETY: iov points into `buf` and msg_control into `control`, both
    // alive and of the lengths given, for the duration of the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `msg` (controllen ≤ our buffer's size).
    let stamp = unsafe { rx_timestamp(&msg) };
    Ok((n as usize, stamp))
}

/// The `SCM_TIMESTAMPNS` timestamp (ns) among a received message's
/// control messages, if there is one.
///
/// # Safety
/// `msg.msg_control` must point to `msg.msg_controllen` readable bytes,
/// aligned for `cmsghdr`, holding control messages as the kernel writes
/// them.
unsafe fn rx_timestamp(msg: &libc::msghdr) -> Option<u64> {
    // SAFETY: per the contract above; the CMSG_* macros stay within
    // msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::SOL_SOCKET
                && h.cmsg_type == libc::SCM_TIMESTAMPNS
                && h.cmsg_len as usize
                    >= libc::CMSG_LEN(std::mem::size_of::<libc::timespec>() as u32) as usize
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                if ts.tv_sec <= 0 {
                    return None;
                }
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
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
    use super::{header, rx_timestamp, split_us};

    /// A control buffer as the kernel fills it: the given (level, type,
    /// data) messages, and a msghdr over it.
    fn control(msgs: &[(i32, i32, &[u8])]) -> (Box<[u64; 16]>, libc::msghdr) {
        let mut buf = Box::new([0u64; 16]);
        // SAFETY: zeroed msghdr is valid; CMSG_* stay within the 128 bytes
        // (the messages here are small).
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_control = buf.as_mut_ptr().cast();
            let space: u32 = msgs
                .iter()
                .map(|(_, _, d)| libc::CMSG_SPACE(d.len() as u32))
                .sum();
            msg.msg_controllen = space as _;
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            for (level, ty, data) in msgs {
                (*c).cmsg_level = *level;
                (*c).cmsg_type = *ty;
                (*c).cmsg_len = libc::CMSG_LEN(data.len() as u32) as _;
                std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(c), data.len());
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            (buf, msg)
        }
    }

    fn timespec(sec: i64, nsec: i64) -> Vec<u8> {
        let ts = libc::timespec {
            tv_sec: sec as _,
            tv_nsec: nsec as _,
        };
        // SAFETY: timespec is plain data.
        unsafe {
            std::slice::from_raw_parts(
                (&ts as *const libc::timespec).cast::<u8>(),
                std::mem::size_of::<libc::timespec>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn timestamp_from_control_messages() {
        let ts = timespec(1_700_000_000, 123_456_789);
        let (_b, m) = control(&[(libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS, &ts)]);
        assert_eq!(unsafe { rx_timestamp(&m) }, Some(1_700_000_000_123_456_789));
        // Found after another control message; others alone are ignored.
        let other = 7i32.to_ne_bytes();
        let (_b, m) = control(&[
            (libc::IPPROTO_IP, libc::IP_TTL, &other),
            (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS, &ts),
        ]);
        assert_eq!(unsafe { rx_timestamp(&m) }, Some(1_700_000_000_123_456_789));
        let (_b, m) = control(&[(libc::IPPROTO_IP, libc::IP_TTL, &other)]);
        assert_eq!(unsafe { rx_timestamp(&m) }, None);
        // A zero timestamp (none taken) and no control data at all.
        let (_b, m) = control(&[(libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS, &timespec(0, 0))]);
        assert_eq!(unsafe { rx_timestamp(&m) }, None);
        let (_b, m) = control(&[]);
        assert_eq!(unsafe { rx_timestamp(&m) }, None);
    }

    #[test]
    fn latency_split() {
        // Sent at 1 ms, arrived at 3.5 ms, parsed at 10 ms.
        assert_eq!(
            split_us(1_000_000, 3_500_000, 10_000_000),
            (9000, Some((2500, 6500)))
        );
        // No timestamp: the total only.
        assert_eq!(split_us(1_000_000, 0, 10_000_000), (9000, None));
        // An arrival outside [sent, parsed] is clamped into it.
        assert_eq!(
            split_us(1_000_000, 500_000, 10_000_000),
            (9000, Some((0, 9000)))
        );
        assert_eq!(
            split_us(1_000_000, 12_000_000, 10_000_000),
            (9000, Some((9000, 0)))
        );
        // Parsed "before" sent (clock step): zero, not an underflow.
        assert_eq!(split_us(5_000_000, 4_000_000, 3_000_000), (0, Some((0, 0))));
    }

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
        let before = super::now_ns();
        let (m, rx) = r.next_stamped().await.unwrap().unwrap();
        assert_eq!(m, b"abc");
        // The kernel's arrival time of the last chunk, on our clock.
        let after = super::now_ns();
        assert!(before < rx && rx <= after, "{before} {rx} {after}");
        assert_eq!(r.next().await.unwrap(), Some(&b"def"[..]));
        assert_eq!(r.next().await.unwrap().map(|m| m.len()), Some(200));
        assert_eq!(r.next().await.unwrap(), None);
        assert_eq!(server.await.unwrap(), [0x8A, 0x81, 0, 0, 0, 0, b'p']);
    }

    #[tokio::test]
    async fn split_writes_frames_and_reads_stamped() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = vec![0u8; 8 + 8 + 200];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(&[0x89, 1, b'p', 0x81, 2, b'o', b'k'])
                .await
                .unwrap();
            // The pong comes before the writer's next frame.
            let mut more = vec![0u8; 7 + 6 + 1];
            s.read_exact(&mut more).await.unwrap();
            (got, more)
        });
        let (mut r, mut w) =
            super::RawReader::split(tokio::net::TcpStream::connect(addr).await.unwrap()).unwrap();
        w.send_text(b"hi").await.unwrap();
        w.send_text(&[b'z'; 200]).await.unwrap();
        let (m, rx) = r.next_stamped().await.unwrap().unwrap();
        assert_eq!(m, b"ok");
        assert!(rx > 0);
        w.send_text(b"x").await.unwrap();
        let (got, more) = server.await.unwrap();
        assert_eq!(&got[..8], &[0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
        assert_eq!(&got[8..16], &[0x81, 0xFE, 0, 200, 0, 0, 0, 0]);
        assert!(got[16..].iter().all(|&b| b == b'z'));
        assert_eq!(
            more,
            [0x8A, 0x81, 0, 0, 0, 0, b'p', 0x81, 0x81, 0, 0, 0, 0, b'x']
        );
    }
}
