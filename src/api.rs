//! The HTTP API under `/api/rooms/`: a room's stored history.
//!
//! `GET /api/rooms/{room}/messages` with at most one of `after=N` (seqs
//! above N, oldest first: reading forward) and `before=N` (the newest seqs
//! below N: paging back; without either, the newest messages), and
//! `limit=M` (1..=1000, default 100). The answer is JSON:
//!
//! ```json
//! {"room":"lobby","messages":[{"seq":7,"message_id":"lobby:7",
//!   "sender":"alice","timestamp":1764400000000,"headers":{"k":"v"},
//!   "body":"hi","base64":false}],"has_more":true}
//! ```
//!
//! Messages are always oldest first. A body that is not UTF-8 is base64
//! (standard alphabet, padded) with `"base64": true`. `has_more` says the
//! range holds more: read on with `after` = the last seq, or page back with
//! `before` = the first. Bad parameters get 400, other methods 405, with a
//! JSON `{"error": "..."}`. The read runs on the reader pool; the shard only
//! parses the request and later writes the answer.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::conn::ConnToken;
use crate::router::{Sequenced, room_of};
use crate::shard::{External, Shard};
use crate::store::{Range, read_page};
use crate::ws::handshake::http_response;

/// Paths this module answers.
pub const ROOMS_PREFIX: &str = "/api/rooms/";
/// Messages per answer when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Most messages per answer.
pub const MAX_LIMIT: usize = 1000;
/// Body and header bytes per answer before it is cut short (`has_more`):
/// 1,000 messages of up to a frame each could otherwise make 64 MiB.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// A parsed history request.
#[derive(Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    pub room: String,
    pub range: Range,
    pub limit: usize,
}

/// An HTTP error answer: status line and message.
#[derive(Debug, PartialEq, Eq)]
pub struct ApiError(pub &'static str, pub String);

fn error(status: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError(status, msg.into())
}

/// Parse `GET /api/rooms/{room}/messages?...`.
pub fn parse(method: &str, path: &str, query: Option<&str>) -> Result<HistoryQuery, ApiError> {
    let rest = path.strip_prefix(ROOMS_PREFIX).unwrap_or("");
    let Some(room) = rest.strip_suffix("/messages") else {
        return Err(error(
            "404 Not Found",
            format!("no such resource {path}; history is at /api/rooms/{{room}}/messages"),
        ));
    };
    if method != "GET" {
        return Err(error(
            "405 Method Not Allowed",
            format!("{method} is not allowed here; use GET"),
        ));
    }
    if room_of(&format!("/topic/{room}")).is_none() {
        return Err(error(
            "400 Bad Request",
            format!("invalid room '{room}': 1-128 characters from A-Z a-z 0-9 _ . ~ -"),
        ));
    }
    let (mut after, mut before, mut limit) = (None, None, None);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match k {
            "after" => &mut after,
            "before" => &mut before,
            "limit" => &mut limit,
            _ => {
                return Err(error(
                    "400 Bad Request",
                    format!("unknown parameter '{k}'; use after, before and limit"),
                ));
            }
        };
        if slot.is_some() {
            return Err(error("400 Bad Request", format!("'{k}' given twice")));
        }
        let n = v.parse::<u64>().map_err(|_| {
            error(
                "400 Bad Request",
                format!("'{k}' must be a non-negative integer, got '{v}'"),
            )
        })?;
        *slot = Some(n);
    }
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT as u64).contains(&n) => n as usize,
        Some(n) => {
            return Err(error(
                "400 Bad Request",
                format!("'limit' must be between 1 and {MAX_LIMIT}, got {n}"),
            ));
        }
    };
    let range = match (after, before) {
        (Some(_), Some(_)) => {
            return Err(error(
                "400 Bad Request",
                "give 'after' (read forward) or 'before' (page back), not both",
            ));
        }
        (Some(after), None) => Range::After {
            after,
            upto: u64::MAX,
        },
        (None, Some(before)) => Range::Before { before },
        (None, None) => Range::Before { before: u64::MAX },
    };
    Ok(HistoryQuery {
        room: room.to_string(),
        range,
        limit,
    })
}

/// One stored message as JSON.
pub fn message_json(m: &Sequenced) -> Value {
    let headers: Map<String, Value> = m
        .draft
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    let (body, base64) = match std::str::from_utf8(&m.draft.body) {
        Ok(text) => (text.to_string(), false),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&m.draft.body),
            true,
        ),
    };
    json!({
        "seq": m.seq,
        "message_id": format!("{}:{}", m.draft.room, m.seq),
        "sender": &*m.draft.sender,
        "timestamp": m.timestamp_ms,
        "headers": headers,
        "body": body,
        "base64": base64,
    })
}

fn json_response(status: &str, value: &Value) -> Vec<u8> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    http_response(status, "application/json", &body)
}

fn error_response(e: &ApiError) -> Vec<u8> {
    json_response(e.0, &json!({ "error": e.1 }))
}

/// Answer a request under `/api/rooms/`: `Some(response)` now, or `None`
/// when the read was handed to the pool (the answer comes back to the
/// shard as `External::Http`).
pub fn rooms(
    shard: &Shard,
    token: ConnToken,
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Option<Vec<u8>> {
    let q = match parse(method, path, query) {
        Ok(q) => q,
        Err(e) => return Some(error_response(&e)),
    };
    let Some(pool) = shard.read_pool() else {
        return Some(error_response(&error(
            "404 Not Found",
            "history is disabled on this server (--persist false)",
        )));
    };
    let to = shard.inbox_handle();
    let job = Box::new(move |conn: &rusqlite::Connection| {
        let response = match read_page(conn, &q.room, q.range, q.limit, MAX_ANSWER_BYTES) {
            Ok(page) => json_response(
                "200 OK",
                &json!({
                    "room": q.room,
                    "messages": page.messages.iter().map(message_json).collect::<Vec<_>>(),
                    "has_more": page.more,
                }),
            ),
            Err(e) => error_response(&error(
                "500 Internal Server Error",
                format!("reading the history failed: {e}"),
            )),
        };
        to.send(External::Http {
            conn: token,
            response,
        });
    });
    match pool.try_submit(job) {
        Ok(()) => None,
        Err(_) => Some(error_response(&error(
            "503 Service Unavailable",
            "all history readers are busy; retry shortly",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Draft;

    fn p(q: &str) -> Result<HistoryQuery, ApiError> {
        parse("GET", "/api/rooms/lobby/messages", Some(q))
    }

    #[test]
    fn parses_ranges_and_limits() {
        assert_eq!(
            p("after=5&limit=10").unwrap(),
            HistoryQuery {
                room: "lobby".into(),
                range: Range::After {
                    after: 5,
                    upto: u64::MAX
                },
                limit: 10
            }
        );
        assert_eq!(p("before=9").unwrap().range, Range::Before { before: 9 });
        assert_eq!(p("").unwrap().range, Range::Before { before: u64::MAX });
        assert_eq!(p("").unwrap().limit, DEFAULT_LIMIT);
    }

    #[test]
    fn refuses_bad_parameters() {
        for q in [
            "after=x",
            "after=-1",
            "limit=0",
            "limit=1001",
            "after=1&before=2",
            "after=1&after=2",
            "since=3",
        ] {
            let e = p(q).unwrap_err();
            assert_eq!(e.0, "400 Bad Request", "{q}: {e:?}");
        }
        assert_eq!(
            parse("GET", "/api/rooms/bad room/messages", None)
                .unwrap_err()
                .0,
            "400 Bad Request"
        );
        assert_eq!(
            parse("POST", "/api/rooms/lobby/messages", None)
                .unwrap_err()
                .0,
            "405 Method Not Allowed"
        );
        assert_eq!(
            parse("GET", "/api/rooms/lobby", None).unwrap_err().0,
            "404 Not Found"
        );
    }

    #[test]
    fn binary_bodies_are_base64_with_a_flag() {
        let m = Sequenced {
            draft: Draft {
                room: "r".into(),
                sender: "bob".into(),
                headers: vec![("k".into(), "v".into())],
                body: vec![0xff, 0x00].into(),
            },
            seq: 3,
            timestamp_ms: 9,
        };
        let v = message_json(&m);
        assert_eq!(v["body"], "/wA=");
        assert_eq!(v["base64"], true);
        assert_eq!(v["message_id"], "r:3");
        assert_eq!(v["headers"]["k"], "v");
    }
}
