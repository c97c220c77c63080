//! STOMP frame codec: parse client frames out of a byte stream, encode
//! server frames.
//!
//! `parse` is incremental: it looks at the bytes buffered so far and answers
//! `Incomplete` (normal, not an error), a heart-beat EOL, or one frame that
//! borrows from the buffer. Header values are unescaped per the negotiated
//! version (STOMP 1.2 "Value Encoding"); `CONNECT`/`STOMP` are never
//! unescaped. Limits are checked while the frame is still incomplete, so a
//! peer can never make us buffer more than `max_frame_size`.

use std::borrow::Cow;

use thiserror::Error;

/// A negotiated STOMP protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V10,
    V11,
    V12,
}

impl Version {
    /// The value of the `version` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V10 => "1.0",
            Version::V11 => "1.1",
            Version::V12 => "1.2",
        }
    }
}

/// Client commands (STOMP 1.2 "Client Frames").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Connect,
    Stomp,
    Send,
    Subscribe,
    Unsubscribe,
    Ack,
    Nack,
    Begin,
    Commit,
    Abort,
    Disconnect,
}

impl Command {
    fn from_bytes(b: &[u8]) -> Option<Command> {
        Some(match b {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
        }
    }
}

/// One parsed client frame, borrowing from the read buffer.
#[derive(Debug)]
pub struct Frame<'a> {
    pub command: Command,
    /// In wire order; repeated names are kept, the first one wins on lookup.
    pub headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub body: &'a [u8],
}

impl Frame<'_> {
    /// The first header with this name (STOMP: "only the first header entry
    /// SHOULD be used as the value of header entry").
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// Size limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frame_size: usize,
    pub max_headers: usize,
    pub max_header_length: usize,
}

/// Why a frame was rejected. The `Display` text becomes the ERROR `message`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("unknown command")]
    UnknownCommand,
    #[error("frame too large")]
    FrameTooLarge,
    #[error("too many headers")]
    TooManyHeaders,
    #[error("header too long")]
    HeaderTooLong,
    #[error("malformed header line (no colon)")]
    MalformedHeader,
    #[error("invalid escape sequence in header")]
    BadEscape,
    #[error("header is not valid UTF-8")]
    NotUtf8,
    /// A NUL would end the frame early wherever the header is copied to.
    #[error("header contains a NUL byte")]
    NulInHeader,
    /// A CR is only allowed as part of a CRLF line end.
    #[error("header contains a bare carriage return")]
    CrInHeader,
    #[error("invalid content-length")]
    BadContentLength,
    #[error("frame body not terminated by NUL after content-length bytes")]
    MissingNul,
}

/// What the buffered bytes hold.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// Need more bytes.
    Incomplete,
    /// A `content-length` frame whose headers are complete: nothing can
    /// change until the buffer holds this many bytes (lets the caller skip
    /// re-parsing while the body streams in).
    NeedBytes(usize),
    /// A heart-beat EOL (`\n` or `\r\n`) of this many bytes.
    HeartBeat(usize),
    /// A frame and the bytes it used (including the trailing NUL).
    Frame(Frame<'a>, usize),
}

/// How header values are unescaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escaping {
    /// CONNECT/STOMP frames and STOMP 1.0: values taken literally.
    None,
    /// STOMP 1.1: `\n`, `\c`, `\\`.
    V11,
    /// STOMP 1.2: also `\r`.
    V12,
}

impl Escaping {
    pub fn for_version(v: Version) -> Escaping {
        match v {
            Version::V10 => Escaping::None,
            Version::V11 => Escaping::V11,
            Version::V12 => Escaping::V12,
        }
    }
}

/// Parse the first frame (or heart-beat) at the start of `buf`.
/// `escaping` applies to every command but CONNECT and STOMP.
pub fn parse<'a>(
    buf: &'a [u8],
    escaping: Escaping,
    limits: &Limits,
) -> Result<Parsed<'a>, ParseError> {
    match buf.first() {
        None => return Ok(Parsed::Incomplete),
        Some(b'\n') => return Ok(Parsed::HeartBeat(1)),
        Some(b'\r') => {
            return match buf.get(1) {
                None => Ok(Parsed::Incomplete),
                Some(b'\n') => Ok(Parsed::HeartBeat(2)),
                Some(_) => Err(ParseError::UnknownCommand),
            };
        }
        Some(_) => {}
    }

    // Command line.
    let Some((cmd_line, mut pos)) = line(buf, 0, limits)? else {
        return Ok(Parsed::Incomplete);
    };
    let command = Command::from_bytes(cmd_line).ok_or(ParseError::UnknownCommand)?;
    let escaping = match command {
        Command::Connect | Command::Stomp => Escaping::None,
        _ => escaping,
    };

    // Header lines up to the blank line.
    let mut headers = Vec::new();
    loop {
        let Some((hline, next)) = line(buf, pos, limits)? else {
            return Ok(Parsed::Incomplete);
        };
        pos = next;
        if hline.is_empty() {
            break;
        }
        if headers.len() == limits.max_headers {
            return Err(ParseError::TooManyHeaders);
        }
        check_header_bytes(hline)?;
        let colon = hline
            .iter()
            .position(|&b| b == b':')
            .ok_or(ParseError::MalformedHeader)?;
        let name = unescape(&hline[..colon], escaping)?;
        let value = unescape(&hline[colon + 1..], escaping)?;
        headers.push((name, value));
    }

    // Body: exactly content-length bytes then NUL, or up to the first NUL.
    let content_length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| parse_length(v).ok_or(ParseError::BadContentLength))
        .transpose()?;
    let body_start = pos;
    let body_end = match content_length {
        Some(len) => {
            if body_start.saturating_add(len) >= limits.max_frame_size {
                return Err(ParseError::FrameTooLarge);
            }
            let end = body_start + len;
            match buf.get(end) {
                None => return Ok(Parsed::NeedBytes(end + 1)),
                Some(0) => end,
                Some(_) => return Err(ParseError::MissingNul),
            }
        }
        None => match buf[body_start..].iter().position(|&b| b == 0) {
            Some(n) => body_start + n,
            None => {
                if buf.len() >= limits.max_frame_size {
                    return Err(ParseError::FrameTooLarge);
                }
                return Ok(Parsed::Incomplete);
            }
        },
    };
    if body_end >= limits.max_frame_size {
        return Err(ParseError::FrameTooLarge);
    }
    let frame = Frame {
        command,
        headers,
        body: &buf[body_start..body_end],
    };
    Ok(Parsed::Frame(frame, body_end + 1))
}

/// Reject the bytes no header may hold, whatever the version: NUL (it ends
/// a frame, so copied into another frame it would end that one early and
/// let the rest forge a frame) and a bare CR (STOMP lines end in LF or
/// CRLF; a CR elsewhere is outside the grammar of every version). Escapes
/// (`\n`, `\c`, …) are checked when the value is unescaped.
fn check_header_bytes(line: &[u8]) -> Result<(), ParseError> {
    if line.contains(&0) {
        return Err(ParseError::NulInHeader);
    }
    if line.contains(&b'\r') {
        return Err(ParseError::CrInHeader);
    }
    Ok(())
}

/// A `content-length`: ASCII digits only (`+3`, ` 3` and `3 ` are not
/// numbers, whatever Rust's `parse` accepts).
fn parse_length(v: &str) -> Option<usize> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Best effort for an ERROR about a frame that did not parse: the raw value
/// of its first `receipt` header among the complete header lines buffered,
/// unless it holds a byte no header may (then no receipt is echoed).
pub(crate) fn receipt_hint(buf: &[u8]) -> Option<String> {
    let mut lines = buf
        .split(|&b| b == b'\n')
        .skip_while(|l| l.is_empty() || *l == b"\r");
    lines.next()?; // the command line
    for line in lines.take(1024) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix(b"receipt:") {
            check_header_bytes(v).ok()?;
            return Some(String::from_utf8_lossy(v).into_owned());
        }
    }
    None
}

/// The line starting at `start`, without its `\n` or `\r\n`, and the offset
/// after it; `None` while the line is unfinished.
fn line<'a>(
    buf: &'a [u8],
    start: usize,
    limits: &Limits,
) -> Result<Option<(&'a [u8], usize)>, ParseError> {
    let rest = &buf[start..];
    match rest.iter().position(|&b| b == b'\n') {
        Some(n) => {
            if n > limits.max_header_length {
                return Err(ParseError::HeaderTooLong);
            }
            let end = if n > 0 && rest[n - 1] == b'\r' {
                n - 1
            } else {
                n
            };
            Ok(Some((&rest[..end], start + n + 1)))
        }
        None => {
            if rest.len() > limits.max_header_length {
                return Err(ParseError::HeaderTooLong);
            }
            if buf.len() >= limits.max_frame_size {
                return Err(ParseError::FrameTooLarge);
            }
            Ok(None)
        }
    }
}

fn unescape(raw: &[u8], escaping: Escaping) -> Result<Cow<'_, str>, ParseError> {
    let text = std::str::from_utf8(raw).map_err(|_| ParseError::NotUtf8)?;
    if escaping == Escaping::None || !raw.contains(&b'\\') {
        return Ok(Cow::Borrowed(text));
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('c') => out.push(':'),
            Some('\\') => out.push('\\'),
            Some('r') if escaping == Escaping::V12 => out.push('\r'),
            _ => return Err(ParseError::BadEscape),
        }
    }
    Ok(Cow::Owned(out))
}

/// Append `s` escaped for `escaping` to `out`.
///
/// With `Escaping::None` (STOMP 1.0, CONNECTED) values go out raw — except
/// one holding a line break, which cannot be written raw and gets the 1.1
/// escapes instead (the only choice that keeps the frame intact).
pub(crate) fn escape_into(out: &mut Vec<u8>, s: &str, escaping: Escaping) {
    let escaping = if escaping == Escaping::None && s.bytes().any(|b| b == b'\n' || b == b'\r') {
        Escaping::V11
    } else {
        escaping
    };
    if escaping == Escaping::None || !s.bytes().any(|b| matches!(b, b'\n' | b'\r' | b':' | b'\\')) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for b in s.bytes() {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b':' => out.extend_from_slice(b"\\c"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            // 1.1 has no escape for CR; it cannot appear raw either, so it is
            // dropped rather than breaking the frame.
            b'\r' if escaping == Escaping::V12 => out.extend_from_slice(b"\\r"),
            b'\r' => {}
            _ => out.push(b),
        }
    }
}

/// Append a header *name*: like `escape_into`, but with no escaping a name
/// holding `:` would split differently (`a:b:v` reads as `a` = `b:v`), so it
/// gets the 1.1 escapes too.
pub(crate) fn escape_name_into(out: &mut Vec<u8>, s: &str, escaping: Escaping) {
    if escaping == Escaping::None && s.contains(':') {
        escape_into(out, s, Escaping::V11);
    } else {
        escape_into(out, s, escaping);
    }
}

/// Unescape a value per `escaping` (for a receipt id salvaged from a frame
/// that did not parse); `None` if it holds an invalid escape.
pub(crate) fn unescape_value(raw: &str, escaping: Escaping) -> Option<String> {
    unescape(raw.as_bytes(), escaping).ok().map(Cow::into_owned)
}

/// Append one server frame: command, escaped headers, blank line, body, NUL.
pub(crate) fn encode_frame(
    out: &mut Vec<u8>,
    command: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    escaping: Escaping,
) {
    out.extend_from_slice(command.as_bytes());
    out.push(b'\n');
    for (k, v) in headers {
        escape_name_into(out, k, escaping);
        out.push(b':');
        escape_into(out, v, escaping);
        out.push(b'\n');
    }
    out.push(b'\n');
    out.extend_from_slice(body);
    out.push(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits {
        max_frame_size: 1024,
        max_headers: 8,
        max_header_length: 128,
    };

    fn frame(buf: &[u8], esc: Escaping) -> (Frame<'_>, usize) {
        match parse(buf, esc, &L).unwrap() {
            Parsed::Frame(f, n) => (f, n),
            other => panic!("expected frame, got {other:?}"),
        }
    }

    #[test]
    fn parses_lf_and_crlf_frames() {
        let (f, n) = frame(b"SEND\ndestination:/topic/a\n\nhi\0rest", Escaping::V12);
        assert_eq!(f.command, Command::Send);
        assert_eq!(f.header("destination"), Some("/topic/a"));
        assert_eq!(f.body, b"hi");
        assert_eq!(n, 30);
        let (f, _) = frame(b"SEND\r\ndestination:/topic/a\r\n\r\nhi\0", Escaping::V12);
        assert_eq!(f.header("destination"), Some("/topic/a"));
        assert_eq!(f.body, b"hi");
    }

    #[test]
    fn heart_beats_and_incomplete() {
        assert!(matches!(
            parse(b"\n", Escaping::V12, &L),
            Ok(Parsed::HeartBeat(1))
        ));
        assert!(matches!(
            parse(b"\r\n", Escaping::V12, &L),
            Ok(Parsed::HeartBeat(2))
        ));
        assert!(matches!(
            parse(b"\r", Escaping::V12, &L),
            Ok(Parsed::Incomplete)
        ));
        assert!(matches!(
            parse(b"SEND\ndest", Escaping::V12, &L),
            Ok(Parsed::Incomplete)
        ));
        assert!(matches!(
            parse(b"SEND\n\nbody", Escaping::V12, &L),
            Ok(Parsed::Incomplete)
        ));
        assert!(matches!(
            parse(b"SEND\ncontent-length:3\n\na\0", Escaping::V12, &L),
            Ok(Parsed::NeedBytes(27))
        ));
    }

    #[test]
    fn content_length_body_may_hold_nul() {
        let (f, n) = frame(b"SEND\ncontent-length:3\n\na\0b\0", Escaping::V12);
        assert_eq!(f.body, b"a\0b");
        assert_eq!(n, 27);
        assert_eq!(
            parse(b"SEND\ncontent-length:2\n\nabc\0", Escaping::V12, &L).unwrap_err(),
            ParseError::MissingNul
        );
        assert_eq!(
            parse(b"SEND\ncontent-length:x\n\n\0", Escaping::V12, &L).unwrap_err(),
            ParseError::BadContentLength
        );
    }

    #[test]
    fn escapes_per_version() {
        let (f, _) = frame(b"SEND\na\\cb:x\\ny\\\\z\\r\n\n\0", Escaping::V12);
        assert_eq!(f.headers[0], (Cow::from("a:b"), Cow::from("x\ny\\z\r")));
        assert_eq!(
            parse(b"SEND\na:x\\r\n\n\0", Escaping::V11, &L).unwrap_err(),
            ParseError::BadEscape
        );
        assert_eq!(
            parse(b"SEND\na:x\\t\n\n\0", Escaping::V12, &L).unwrap_err(),
            ParseError::BadEscape
        );
        let (f, _) = frame(b"SEND\na:x\\t\n\n\0", Escaping::None);
        assert_eq!(f.header("a"), Some("x\\t"));
        // CONNECT is never unescaped.
        let (f, _) = frame(b"CONNECT\nlogin:a\\tb\n\n\0", Escaping::V12);
        assert_eq!(f.header("login"), Some("a\\tb"));
    }

    #[test]
    fn first_repeated_header_wins_and_values_are_not_trimmed() {
        let (f, _) = frame(b"SEND\nk: one \nk:two\n\n\0", Escaping::V12);
        assert_eq!(f.header("k"), Some(" one "));
        assert_eq!(f.headers.len(), 2);
    }

    #[test]
    fn limits() {
        let many = format!("SEND\n{}\n\0", "a:b\n".repeat(9));
        assert_eq!(
            parse(many.as_bytes(), Escaping::V12, &L).unwrap_err(),
            ParseError::TooManyHeaders
        );
        let long = format!("SEND\na:{}\n\n\0", "x".repeat(200));
        assert_eq!(
            parse(long.as_bytes(), Escaping::V12, &L).unwrap_err(),
            ParseError::HeaderTooLong
        );
        // An unfinished over-long line is refused before it completes.
        let partial = format!("SEND\na:{}", "x".repeat(200));
        assert_eq!(
            parse(partial.as_bytes(), Escaping::V12, &L).unwrap_err(),
            ParseError::HeaderTooLong
        );
        let big = format!("SEND\n\n{}", "x".repeat(2000));
        assert_eq!(
            parse(big.as_bytes(), Escaping::V12, &L).unwrap_err(),
            ParseError::FrameTooLarge
        );
        assert_eq!(
            parse(b"SEND\ncontent-length:5000\n\n", Escaping::V12, &L).unwrap_err(),
            ParseError::FrameTooLarge
        );
        assert_eq!(
            parse(b"FOO\n\n\0", Escaping::V12, &L).unwrap_err(),
            ParseError::UnknownCommand
        );
        assert_eq!(
            parse(b"SEND\nnocolon\n\n\0", Escaping::V12, &L).unwrap_err(),
            ParseError::MalformedHeader
        );
    }

    #[test]
    fn headers_with_nul_or_a_bare_cr_are_refused() {
        for esc in [Escaping::None, Escaping::V11, Escaping::V12] {
            for (buf, err) in [
                (&b"SEND\na:x\0MESSAGE\n\n\0"[..], ParseError::NulInHeader),
                (b"SEND\na\0b:x\n\n\0", ParseError::NulInHeader),
                (b"SEND\na:x\rMESSAGE\n\n\0", ParseError::CrInHeader),
                (b"SEND\na:x\r\r\n\n\0", ParseError::CrInHeader),
                (b"CONNECT\nlogin:eve\0x\n\n\0", ParseError::NulInHeader),
            ] {
                assert_eq!(parse(buf, esc, &L).unwrap_err(), err, "{buf:?}");
            }
        }
        // A CRLF line end is not a bare CR.
        let (f, _) = frame(b"SEND\r\na:x\r\n\r\n\0", Escaping::V12);
        assert_eq!(f.header("a"), Some("x"));
    }

    #[test]
    fn content_length_is_digits_only() {
        for v in ["+3", " 3", "3 ", "", "-0", "0x3"] {
            let buf = format!("SEND\ncontent-length:{v}\n\nabc\0");
            assert_eq!(
                parse(buf.as_bytes(), Escaping::V12, &L).unwrap_err(),
                ParseError::BadContentLength,
                "{v:?}"
            );
        }
    }

    #[test]
    fn receipt_of_an_unparsable_frame() {
        assert_eq!(
            receipt_hint(b"SEND\nk:a\\tb\nreceipt:r9\n\n\0").as_deref(),
            Some("r9")
        );
        assert_eq!(receipt_hint(b"\nSEND\r\nreceipt:r1\r\n"), Some("r1".into()));
        assert_eq!(receipt_hint(b"SEND\n\nreceipt:x\0"), None);
        assert_eq!(receipt_hint(b"SEND\nreceipt:r\0MESSAGE\n\n\0"), None);
        assert_eq!(receipt_hint(b"SEND\nreceipt:r\rx\n\n\0"), None);
    }

    #[test]
    fn encode_escapes_and_round_trips() {
        let mut out = Vec::new();
        encode_frame(
            &mut out,
            "MESSAGE",
            &[("k", "a:b\nc\\d\r")],
            b"x",
            Escaping::V12,
        );
        assert_eq!(out, b"MESSAGE\nk:a\\cb\\nc\\\\d\\r\n\nx\0");
        let mut out = Vec::new();
        encode_frame(&mut out, "CONNECTED", &[("k", "a:b")], b"", Escaping::None);
        assert_eq!(out, b"CONNECTED\nk:a:b\n\n\0");
    }
}
