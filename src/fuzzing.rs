//! Entry points for the fuzz targets in `fuzz/` and for the corpus replay
//! in `tests/fuzz_corpus.rs`: one function per parser that reads client
//! bytes, each taking arbitrary bytes and panicking if the parser breaks its
//! property. Not part of the API; it exists only so the fuzz crate can reach
//! the crate-private parsers. See `fuzz/RESULTS.md`.

use crate::api;
use crate::stomp::frame::{Escaping, Frame, Limits, Parsed, encode_frame, parse};
use crate::ws::framing::{Event, WsError, WsReader};
use crate::ws::handshake::{MAX_REQUEST_HEAD, parse_request};

/// The STOMP frame parser. Byte 0 picks the escaping (1.0 / 1.1 / 1.2) and
/// the limits; the rest is a client byte stream, parsed frame after frame
/// until it is incomplete or an error. Every frame parsed must re-encode
/// (`encode_frame`, the escaping the parser applied) to bytes that parse to
/// the same command, headers and body, using exactly all of them.
pub fn stomp_frame(data: &[u8]) {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    let escaping = [Escaping::None, Escaping::V11, Escaping::V12][usize::from(sel % 3)];
    let limits = if sel & 0x80 == 0 {
        Limits {
            max_frame_size: 64 * 1024,
            max_headers: 64,
            max_header_length: 1024,
        }
    } else {
        // Small limits, so the fuzzer reaches every limit check.
        Limits {
            max_frame_size: 96,
            max_headers: 3,
            max_header_length: 24,
        }
    };
    let mut pos = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        match parse(rest, escaping, &limits) {
            Ok(Parsed::Incomplete) => break,
            Ok(Parsed::NeedBytes(n)) => {
                assert!(
                    n > rest.len(),
                    "NeedBytes({n}) with {} buffered",
                    rest.len()
                );
                break;
            }
            Ok(Parsed::HeartBeat(n)) => {
                assert!((1..=2).contains(&n) && n <= rest.len(), "HeartBeat({n})");
                pos += n;
            }
            Ok(Parsed::Frame(frame, n)) => {
                assert!(n > 0 && n <= rest.len(), "frame used {n} of {}", rest.len());
                assert_eq!(rest[n - 1], 0, "a frame ends in NUL");
                stomp_reencodes(&frame, escaping);
                pos += n;
            }
            Err(_) => break,
        }
    }
}

/// Re-encode `frame` and parse it again: the same frame, all bytes used.
fn stomp_reencodes(frame: &Frame<'_>, escaping: Escaping) {
    // CONNECT and STOMP are never unescaped, whatever the version.
    let applied = match frame.command.name() {
        "CONNECT" | "STOMP" => Escaping::None,
        _ => escaping,
    };
    let headers: Vec<(&str, &str)> = frame
        .headers
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    let mut out = Vec::new();
    encode_frame(
        &mut out,
        frame.command.name(),
        &headers,
        frame.body,
        applied,
    );
    // Escaping may lengthen a line (a raw `:` in a 1.1 value becomes `\c`),
    // so the second parse gets limits that just fit the encoding.
    let limits = Limits {
        max_frame_size: out.len() + 1,
        max_headers: headers.len(),
        max_header_length: out.len(),
    };
    match parse(&out, escaping, &limits) {
        Ok(Parsed::Frame(again, n)) => {
            assert_eq!(n, out.len(), "re-encoded frame not used whole: {out:?}");
            assert_eq!(again.command, frame.command, "command changed: {out:?}");
            assert_eq!(again.headers, frame.headers, "headers changed: {out:?}");
            assert_eq!(again.body, frame.body, "body changed: {out:?}");
        }
        other => panic!("re-encoded {frame:?} as {out:?}, which parses as {other:?}"),
    }
}

/// What a `WsReader` reported, with data segments joined (where the input
/// is split decides only how the data is cut into segments).
#[derive(Debug, PartialEq, Eq)]
enum WsSeen {
    Data(Vec<u8>),
    Ping(Vec<u8>),
    Close(Option<u16>),
    Error(WsError),
}

/// Feed `chunks` one after another to a fresh reader, stopping at the first
/// error (the connection is closed then).
fn ws_feed<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<WsSeen> {
    let mut reader = WsReader::default();
    let mut seen = Vec::new();
    for chunk in chunks {
        let mut bytes = chunk.to_vec();
        let result = reader.feed::<WsError>(&mut bytes, |event| {
            match event {
                Event::Data([]) => {}
                Event::Data(d) => match seen.last_mut() {
                    Some(WsSeen::Data(prev)) => prev.extend_from_slice(d),
                    _ => seen.push(WsSeen::Data(d.to_vec())),
                },
                Event::Ping(p) => seen.push(WsSeen::Ping(p.to_vec())),
                Event::Close(c) => seen.push(WsSeen::Close(c)),
            }
            Ok(())
        });
        if let Err(e) = result {
            seen.push(WsSeen::Error(e));
            break;
        }
    }
    seen
}

/// Whether two runs of the reader agree. Before an `InvalidUtf8` error the
/// data handed on may differ by the first 1–3 bytes of the character whose
/// next byte is the invalid one: a segment is handed on up to its first
/// invalid byte, so whether those bytes went out depends on where a read
/// ended (by design: the reader buffers no data). Those bytes are all
/// non-ASCII, so they cannot end a STOMP frame (no NUL, no EOL).
fn ws_agree(a: &[WsSeen], b: &[WsSeen]) -> bool {
    if a == b {
        return true;
    }
    let split = |s: &[WsSeen]| -> Option<(Vec<u8>, usize)> {
        match s {
            [.., WsSeen::Data(d), WsSeen::Error(WsError::InvalidUtf8)] => {
                Some((d.clone(), s.len() - 2))
            }
            [.., WsSeen::Error(WsError::InvalidUtf8)] => Some((Vec::new(), s.len() - 1)),
            _ => None,
        }
    };
    let (Some((da, na)), Some((db, nb))) = (split(a), split(b)) else {
        return false;
    };
    let (short, long) = if da.len() <= db.len() {
        (da, db)
    } else {
        (db, da)
    };
    a[..na] == b[..nb]
        && long.starts_with(&short)
        && long.len() - short.len() <= 3
        && long[short.len()..].iter().all(|&x| x >= 0x80)
}

/// The WebSocket frame reader. Bytes 0..4 choose two split points; the rest
/// is the client byte stream. Fed whole, in three pieces at those points,
/// and one byte at a time, the reader must report the same data, pings,
/// closes and error (up to a partial character before an `InvalidUtf8`,
/// see `ws_agree`).
pub fn ws_reader(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let (sel, input) = data.split_at(4);
    let len = input.len();
    let a = usize::from(u16::from_le_bytes([sel[0], sel[1]])) % (len + 1);
    let b = a + usize::from(u16::from_le_bytes([sel[2], sel[3]])) % (len - a + 1);
    let whole = ws_feed([input]);
    let split = ws_feed([&input[..a], &input[a..b], &input[b..]]);
    assert!(
        ws_agree(&whole, &split),
        "split at {a} and {b}: {whole:?} != {split:?}"
    );
    let bytewise = ws_feed(input.chunks(1));
    assert!(
        ws_agree(&whole, &bytewise),
        "fed one byte at a time: {whole:?} != {bytewise:?}"
    );
}

/// The HTTP upgrade parser: no panic, the same answer twice; a complete
/// head is no longer than the input and parses the same on its own (what
/// follows it belongs to the WebSocket stream); an incomplete one is within
/// `MAX_REQUEST_HEAD`.
pub fn http_upgrade(data: &[u8]) {
    let first = parse_request(data);
    assert_eq!(first, parse_request(data), "not deterministic");
    match first {
        Ok(Some((request, len))) => {
            assert!(len <= data.len(), "head of {len} bytes in {}", data.len());
            let alone = parse_request(&data[..len]);
            assert_eq!(
                alone,
                Ok(Some((request, len))),
                "head alone parses differently"
            );
        }
        Ok(None) => assert!(data.len() <= MAX_REQUEST_HEAD, "incomplete past the limit"),
        Err(_) => {}
    }
}

/// The history API's request parser. The input is `method \n path [\n
/// query]` (lossy UTF-8). No panic, the same answer twice, and an accepted
/// query has a limit within bounds.
pub fn history_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let query = parts.next();
    let prefixes = crate::config::Prefixes::default();
    let first = api::parse(method, path, query, &prefixes);
    assert_eq!(
        first,
        api::parse(method, path, query, &prefixes),
        "not deterministic"
    );
    if let Ok(q) = first {
        assert!((1..=api::MAX_LIMIT).contains(&q.limit), "limit {}", q.limit);
        assert!(
            crate::room::valid_room_key(&q.room, &prefixes),
            "room {:?} from {path:?} is not a room",
            q.room
        );
    }
}
