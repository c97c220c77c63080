//! Every HTTP answer the server writes, in one place: the WebSocket
//! upgrade's `101`, refusals (bad upgrade, server full), and the plain
//! answers of the HTTP endpoints (text or JSON). Each is a complete
//! response with its `Content-Length` computed from its body; everything
//! but the `101` closes the connection (`Connection: close`).

/// The statuses stampede answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    UpgradeRequired,
    HeaderFieldsTooLarge,
    InternalServerError,
    ServiceUnavailable,
}

impl Status {
    /// The status line's code and reason phrase.
    pub fn line(self) -> &'static str {
        match self {
            Status::Ok => "200 OK",
            Status::BadRequest => "400 Bad Request",
            Status::Unauthorized => "401 Unauthorized",
            Status::Forbidden => "403 Forbidden",
            Status::NotFound => "404 Not Found",
            Status::MethodNotAllowed => "405 Method Not Allowed",
            Status::Conflict => "409 Conflict",
            Status::UpgradeRequired => "426 Upgrade Required",
            Status::HeaderFieldsTooLarge => "431 Request Header Fields Too Large",
            Status::InternalServerError => "500 Internal Server Error",
            Status::ServiceUnavailable => "503 Service Unavailable",
        }
    }
}

/// A complete answer that closes the connection. A 401 says which scheme
/// to use (RFC 9110 §11.6.1).
pub(crate) fn response(status: Status, content_type: &str, body: &[u8]) -> Vec<u8> {
    let challenge = if status == Status::Unauthorized {
        "WWW-Authenticate: Bearer realm=\"stampede\"\r\n"
    } else {
        ""
    };
    response_with(status, content_type, challenge, body)
}

/// A complete answer with `extra` header lines (each ending in CRLF).
fn response_with(status: Status, content_type: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {}\r\n{extra}Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        status.line(),
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// An HTML page of our own (`/status`): it may run only its own inline
/// script and talk only to this server, and is never cached.
pub(crate) fn page(html: &str) -> Vec<u8> {
    response_with(
        Status::Ok,
        "text/html; charset=utf-8",
        "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
         style-src 'unsafe-inline'; connect-src 'self'; img-src data:\r\n\
         X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n",
        html.as_bytes(),
    )
}

/// The `/metrics` answer.
pub(crate) fn metrics(body: &str, content_type: &str) -> Vec<u8> {
    response_with(
        Status::Ok,
        content_type,
        "Cache-Control: no-store\r\n",
        body.as_bytes(),
    )
}

/// A plain-text answer; a line break is added to `text`.
pub(crate) fn text(status: Status, text: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(text.len() + 1);
    body.extend_from_slice(text.as_bytes());
    body.push(b'\n');
    response(status, "text/plain", &body)
}

/// A JSON answer (one line).
pub(crate) fn json(status: Status, value: &serde_json::Value) -> Vec<u8> {
    // Serialising a `Value` into a Vec cannot fail.
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    response(status, "application/json", &body)
}

/// A JSON error answer: `{"error": message}`.
pub(crate) fn json_error(status: Status, message: &str) -> Vec<u8> {
    json(status, &serde_json::json!({ "error": message }))
}

/// The answer to a connection over `max_connections`.
pub(crate) fn server_full() -> Vec<u8> {
    text(Status::ServiceUnavailable, "server full")
}

/// The `101 Switching Protocols` answer to a WebSocket upgrade (RFC 6455
/// §4.2.2), echoing the chosen subprotocol if any.
pub(crate) fn switching_protocols(accept: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = protocol {
        r.push_str("Sec-WebSocket-Protocol: ");
        r.push_str(p);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_the_body_length() {
        assert_eq!(
            server_full(),
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nserver full\n"
        );
        let r = json_error(Status::NotFound, "no \"room\"");
        let text = std::str::from_utf8(&r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert_eq!(body, "{\"error\":\"no \\\"room\\\"\"}\n");
    }

    #[test]
    fn upgrade_answer_echoes_the_protocol() {
        let r = switching_protocols("abc=", Some("v12.stomp"));
        assert_eq!(
            r,
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: abc=\r\nSec-WebSocket-Protocol: v12.stomp\r\n\r\n"
        );
        assert!(
            !String::from_utf8(switching_protocols("abc=", None))
                .unwrap()
                .contains("Sec-WebSocket-Protocol")
        );
    }
}
