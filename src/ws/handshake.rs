//! The HTTP/1.1 request that opens a connection on `--listen`: either a
//! WebSocket upgrade (RFC 6455 §4.2) to the STOMP endpoint `/ws`, or a plain
//! HTTP request answered once and closed.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tungstenite::handshake::derive_accept_key;

/// Largest HTTP request head we buffer (request line and headers). Browsers
/// send ~1 KiB with cookies; 8 KiB is what nginx allows by default.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// STOMP subprotocols in order of preference (highest version first).
const SUBPROTOCOLS: [&str; 3] = ["v12.stomp", "v11.stomp", "v10.stomp"];

/// What the request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A valid WebSocket upgrade of `/ws`.
    Upgrade {
        /// The `Sec-WebSocket-Accept` value.
        accept: String,
        /// The subprotocol to echo, if the client offered a STOMP one.
        protocol: Option<&'static str>,
        /// `room` from `/ws?room=R`, percent-decoded.
        room: Option<String>,
    },
    /// A plain HTTP request: method, path, query (without the `?`) and
    /// its `Authorization` header.
    Plain {
        method: String,
        path: String,
        query: Option<String>,
        authorization: Option<String>,
    },
}

/// Why the head could not be used.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// More than `MAX_REQUEST_HEAD` bytes without the blank line.
    TooLarge,
    /// Not HTTP/1.x.
    Malformed,
    /// An upgrade missing a required header or using the wrong version.
    BadUpgrade(&'static str),
}

/// Parse the request head at the start of `buf`. `Ok(None)`: incomplete.
/// On success also returns the length of the head (bytes after it belong to
/// the WebSocket stream).
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_REQUEST_HEAD {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).unwrap_or(""))
    };
    let has_token = |name: &str, token: &str| {
        header(name)
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    };
    let upgrade_attempt = has_token("upgrade", "websocket");
    if path != "/ws" || !upgrade_attempt {
        return Ok(Some((
            Request::Plain {
                method,
                path: path.to_string(),
                query: query.map(str::to_string),
                authorization: header("authorization").map(str::to_string),
            },
            len,
        )));
    }
    if method != "GET" {
        return Err(HeadError::BadUpgrade("WebSocket upgrade must use GET"));
    }
    if !has_token("connection", "upgrade") {
        return Err(HeadError::BadUpgrade("missing `Connection: Upgrade`"));
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(HeadError::BadUpgrade("Sec-WebSocket-Version must be 13"));
    }
    let Some(key) = header("sec-websocket-key")
        .map(str::trim)
        .filter(|k| !k.is_empty())
    else {
        return Err(HeadError::BadUpgrade("missing Sec-WebSocket-Key"));
    };
    // RFC 6455 §4.2.1 item 4: a nonce of 16 bytes, base64-encoded (RFC 4648
    // §4: the standard alphabet, with its padding).
    if STANDARD.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(HeadError::BadUpgrade(
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
    }
    let offered: Vec<&str> = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .flat_map(|h| std::str::from_utf8(h.value).unwrap_or("").split(','))
        .map(str::trim)
        .collect();
    let protocol = SUBPROTOCOLS.into_iter().find(|p| offered.contains(p));
    let room = query.and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "room")
            .map(|(_, v)| percent_decode(v))
    });
    Ok(Some((
        Request::Upgrade {
            accept: derive_accept_key(key.as_bytes()),
            protocol,
            room,
        },
        len,
    )))
}

/// Decode `%XX` escapes (and `+` as a space); bad escapes stay as they are.
pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /ws?room=lobby%201 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v10.stomp, v11.stomp\r\nSec-WebSocket-Protocol: v12.stomp\r\n\r\nEXTRA";

    #[test]
    fn upgrade_picks_highest_protocol_and_room() {
        let (req, len) = parse_request(UPGRADE).unwrap().unwrap();
        assert_eq!(&UPGRADE[len..], b"EXTRA");
        assert_eq!(
            req,
            Request::Upgrade {
                // RFC 6455 §1.3's example key and answer.
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                protocol: Some("v12.stomp"),
                room: Some("lobby 1".into()),
            }
        );
    }

    #[test]
    fn plain_and_partial_and_errors() {
        let (req, _) = parse_request(b"GET /healthz HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(req, Request::Plain { ref path, .. } if path == "/healthz"));
        assert_eq!(parse_request(b"GET /ws HTTP/1.1\r\nHost").unwrap(), None);
        let bad = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n";
        assert!(matches!(parse_request(bad), Err(HeadError::BadUpgrade(_))));
        let huge = vec![b'a'; MAX_REQUEST_HEAD + 10];
        assert!(parse_request(&huge).is_err());
    }

    fn upgrade_with_key(key: &str) -> Result<Option<(Request, usize)>, HeadError> {
        let head = format!(
            "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        parse_request(head.as_bytes())
    }

    #[test]
    fn key_must_be_16_bytes_in_base64() {
        let bad = Err(HeadError::BadUpgrade(
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
        for key in [
            "abc",
            "dGhlIHNhbXBsZSBub25jZQ",           // no padding
            "AAECAwQFBgcICQoLDA0O",             // 15 bytes
            "AAECAwQFBgcICQoLDA0ODxA=",         // 17 bytes
            "!!!!!!!!!!!!!!!!!!!!!!==",         // not the alphabet
            "dGhlIHNhbXBs ZSBub25jZQ==",        // a space inside
            "dGhlIHNhbXBsZSBub25jZQ==dGhlIHNh", // more after the padding
        ] {
            assert_eq!(upgrade_with_key(key), bad, "{key:?}");
        }
        for key in [
            "dGhlIHNhbXBsZSBub25jZQ==",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "/////////////////////w==",
        ] {
            let got = upgrade_with_key(key).unwrap().unwrap().0;
            assert!(matches!(got, Request::Upgrade { .. }), "{key:?}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb+c%zz%"), "a/b c%zz%");
    }
}
