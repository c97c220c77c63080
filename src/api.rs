//! The plain HTTP endpoints on `--listen`: `GET /healthz`, the history API
//! under `/api/rooms/`, `426` for `/ws` without an upgrade, `404` for
//! everything else. [`route`] answers a request now or returns the store
//! read that will produce the answer; the shard runs that read on the
//! reader pool. This module names no shard or connection.
//!
//! The history API:
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
//! routes the request and later writes the answer.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::http::{self, Status};
use crate::message::Sequenced;
use crate::room::valid_room;
use crate::store::{Range, read_page};

/// The history API's paths.
pub(crate) const ROOMS_PREFIX: &str = "/api/rooms/";
/// Messages per answer when `limit` is not given.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// Most messages per answer.
pub(crate) const MAX_LIMIT: usize = 1000;
/// Body and header bytes per answer before it is cut short (`has_more`):
/// 1,000 messages of up to a frame each could otherwise make 64 MiB.
pub(crate) const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// A parsed history request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HistoryQuery {
    pub room: String,
    pub range: Range,
    pub limit: usize,
}

/// An HTTP error answer: status and message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ApiError(pub Status, pub String);

fn error(status: Status, msg: impl Into<String>) -> ApiError {
    ApiError(status, msg.into())
}

/// Parse `GET /api/rooms/{room}/messages?...`.
pub(crate) fn parse(
    method: &str,
    path: &str,
    query: Option<&str>,
) -> Result<HistoryQuery, ApiError> {
    let rest = path.strip_prefix(ROOMS_PREFIX).unwrap_or("");
    let Some(room) = rest.strip_suffix("/messages") else {
        return Err(error(
            Status::NotFound,
            format!("no such resource {path}; history is at /api/rooms/{{room}}/messages"),
        ));
    };
    if method != "GET" {
        return Err(error(
            Status::MethodNotAllowed,
            format!("{method} is not allowed here; use GET"),
        ));
    }
    if !valid_room(room) {
        return Err(error(
            Status::BadRequest,
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
                    Status::BadRequest,
                    format!("unknown parameter '{k}'; use after, before and limit"),
                ));
            }
        };
        if slot.is_some() {
            return Err(error(Status::BadRequest, format!("'{k}' given twice")));
        }
        let n = v.parse::<u64>().map_err(|_| {
            error(
                Status::BadRequest,
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
                Status::BadRequest,
                format!("'limit' must be between 1 and {MAX_LIMIT}, got {n}"),
            ));
        }
    };
    let range = match (after, before) {
        (Some(_), Some(_)) => {
            return Err(error(
                Status::BadRequest,
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
pub(crate) fn message_json(m: &Sequenced) -> Value {
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

fn error_response(e: &ApiError) -> Vec<u8> {
    http::json_error(e.0, &e.1)
}

/// A store read that produces an HTTP answer (runs on a reader thread).
pub(crate) type Read = Box<dyn FnOnce(&rusqlite::Connection) -> Vec<u8> + Send>;

/// How a request is answered.
pub(crate) enum Answer {
    /// With these bytes, now.
    Now(Vec<u8>),
    /// With what this store read produces.
    Read(Read),
}

/// Answer a plain HTTP request. `history`: whether messages are stored
/// (`--persist`).
pub(crate) fn route(method: &str, path: &str, query: Option<&str>, history: bool) -> Answer {
    if path.starts_with(ROOMS_PREFIX) {
        return rooms(method, path, query, history);
    }
    Answer::Now(match (method, path) {
        ("GET", "/healthz") => http::text(Status::Ok, "ok"),
        (_, "/ws") => http::text(
            Status::UpgradeRequired,
            "/ws is a STOMP-over-WebSocket endpoint; connect with a WebSocket client",
        ),
        _ => http::text(Status::NotFound, "not found"),
    })
}

/// The answer when the reader pool's queue is full.
pub(crate) fn busy() -> Vec<u8> {
    error_response(&error(
        Status::ServiceUnavailable,
        "all history readers are busy; retry shortly",
    ))
}

/// A request under `/api/rooms/`.
fn rooms(method: &str, path: &str, query: Option<&str>, history: bool) -> Answer {
    let q = match parse(method, path, query) {
        Ok(q) => q,
        Err(e) => return Answer::Now(error_response(&e)),
    };
    if !history {
        return Answer::Now(error_response(&error(
            Status::NotFound,
            "history is disabled on this server (--persist false)",
        )));
    }
    Answer::Read(Box::new(
        move |conn: &rusqlite::Connection| match read_page(
            conn,
            &q.room,
            q.range,
            q.limit,
            MAX_ANSWER_BYTES,
        ) {
            Ok(page) => http::json(
                Status::Ok,
                &json!({
                    "room": q.room,
                    "messages": page.messages.iter().map(message_json).collect::<Vec<_>>(),
                    "has_more": page.more,
                }),
            ),
            Err(e) => error_response(&error(
                Status::InternalServerError,
                format!("reading the history failed: {e}"),
            )),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Draft;

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
            assert_eq!(e.0, Status::BadRequest, "{q}: {e:?}");
        }
        assert_eq!(
            parse("GET", "/api/rooms/bad room/messages", None)
                .unwrap_err()
                .0,
            Status::BadRequest
        );
        assert_eq!(
            parse("POST", "/api/rooms/lobby/messages", None)
                .unwrap_err()
                .0,
            Status::MethodNotAllowed
        );
        assert_eq!(
            parse("GET", "/api/rooms/lobby", None).unwrap_err().0,
            Status::NotFound
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
