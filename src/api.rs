//! The plain HTTP endpoints on `--listen`: the chat page (`GET /`),
//! `GET /healthz`, the history API
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

use crate::auth::{Authenticator, same_secret, valid_user};
use crate::config::Prefixes;
use crate::http::{self, Status};
use crate::message::Sequenced;
use crate::push::PushStats;
use crate::room::{is_room_of_user, valid_room_key};
use crate::store::members::{self, Added};
use crate::store::{Range, read_page};
use crate::ws::handshake::percent_decode;

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
    prefixes: &Prefixes,
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
    let room = room_segment(room, prefixes)?;
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

/// A store write that produces an HTTP answer (runs on the writer's
/// thread, in order with the messages).
pub(crate) type Write = Box<dyn FnOnce(&rusqlite::Connection) -> Vec<u8> + Send>;

/// How a request is answered.
pub(crate) enum Answer {
    /// With these bytes, now.
    Now(Vec<u8>),
    /// With what this store read produces.
    Read(Read),
    /// With what this store write produces.
    Write(Write),
    /// By the room's owner shard, which keeps the members of a loaded room
    /// and ends a removed member's subscriptions: add or remove `user`.
    Member {
        room: String,
        user: String,
        add: bool,
    },
    /// With the metrics of every shard (the scrape thread gathers them).
    Metrics,
    /// By the room's owner shard, which knows who has a live subscription:
    /// the room's online users, for `user` (a member) or the admin (`None`).
    Online {
        room: String,
        user: Option<Box<str>>,
    },
}

/// What the API needs from the server.
pub(crate) struct ApiCtx<'a> {
    /// Whether messages (and members, devices) are stored (`--persist`).
    pub store: bool,
    pub auth: &'a Authenticator,
    /// `--admin-token` (empty: no admin calls).
    pub admin_token: &'a str,
    /// `--max-devices-per-user`.
    pub max_devices: usize,
    /// The push pool's counters, when push is on.
    pub push: Option<&'a PushStats>,
    /// Why the server should get no new clients now (`/readyz`), if so.
    pub not_ready: Option<&'a str>,
    /// Where the request came in (which endpoints it may reach).
    pub served: Served,
    /// Shutting down: only health, readiness and metrics are answered.
    pub draining: bool,
    /// The destination prefixes that name rooms (how rooms are written).
    pub prefixes: &'a Prefixes,
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// `--listen` with everything (no `--metrics-listen`).
    All,
    /// `--listen` while `--metrics-listen` serves the metrics: no
    /// `/metrics`, no `/status`.
    Public,
    /// `--metrics-listen`: `/metrics`, `/status`, `/readyz`, `/healthz` only.
    Metrics,
}

/// The chat page (`GET /`), from the binary; `__STAMPEDE_CONFIG__` is
/// replaced with what the page must know of the server.
const CHAT_PAGE: &str = include_str!("chat.html");

/// Rooms listed per user (`GET /api/users/{user}/rooms`), newest first.
pub(crate) const MAX_USER_ROOMS_LISTED: usize = 500;
/// Online users listed per room (`GET /api/rooms/{room}/online`).
pub(crate) const MAX_ONLINE_LISTED: usize = 1000;

/// The chat page with the server's settings it needs: how a user signs in
/// (`auth`) and whether there is history (`history`).
fn chat_page(ctx: &ApiCtx<'_>) -> Vec<u8> {
    let config = json!({
        "auth": if ctx.auth.is_jwt() { "jwt" } else { "none" },
        "history": ctx.store,
    })
    .to_string();
    http::page(&CHAT_PAGE.replace("__STAMPEDE_CONFIG__", &config))
}

/// The live status page (`GET /status`), from the binary.
const STATUS_PAGE: &str = include_str!("status.html");

/// Who makes a request, from its `Authorization: Bearer` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The admin token.
    Admin,
    /// A user (their JWT under `--auth jwt`; their id under `--auth none`).
    User(Box<str>),
    /// No credentials.
    Nobody,
}

impl Caller {
    /// Identify the caller; credentials given and not valid are a 401.
    pub fn of(authorization: Option<&str>, ctx: &ApiCtx<'_>) -> Result<Caller, ApiError> {
        let Some(value) = authorization else {
            return Ok(Caller::Nobody);
        };
        let Some(credential) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
        else {
            return Err(error(
                Status::Unauthorized,
                "use Authorization: Bearer <token>",
            ));
        };
        if !ctx.admin_token.is_empty()
            && same_secret(credential.as_bytes(), ctx.admin_token.as_bytes())
        {
            return Ok(Caller::Admin);
        }
        ctx.auth
            .bearer_user(credential)
            .map(Caller::User)
            .map_err(|e| {
                tracing::debug!("HTTP credentials refused: {e}");
                error(Status::Unauthorized, "the credentials were not accepted")
            })
    }

    /// Admin only: 401 without credentials, 403 for a user.
    fn admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::User(_) => Err(error(Status::Forbidden, "this call needs the admin token")),
            Caller::Nobody => Err(unauthorized()),
        }
    }

    /// Admin or `user` themselves.
    fn admin_or(&self, user: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::User(u) if **u == *user => Ok(()),
            Caller::User(_) => Err(error(
                Status::Forbidden,
                "only that user (or the admin) may do this",
            )),
            Caller::Nobody => Err(unauthorized()),
        }
    }

    /// Admin, or a member of `room` (checked by the store read): the user
    /// to check, `None` for the admin.
    fn admin_or_member(&self) -> Result<Option<Box<str>>, ApiError> {
        match self {
            Caller::Admin => Ok(None),
            Caller::User(u) => Ok(Some(u.clone())),
            Caller::Nobody => Err(unauthorized()),
        }
    }
}

fn unauthorized() -> ApiError {
    error(
        Status::Unauthorized,
        "credentials needed: Authorization: Bearer <token>",
    )
}

fn not_a_member() -> Vec<u8> {
    error_response(&error(
        Status::Forbidden,
        "only members of the room (or the admin) may do this",
    ))
}

/// Longest FCM registration token accepted (they are ~160 bytes today).
pub(crate) const MAX_DEVICE_TOKEN: usize = 512;
/// Members listed per `GET .../members` answer.
pub(crate) const MAX_MEMBERS_LISTED: usize = 100_000;

/// A device token: 1–512 characters from A-Z a-z 0-9 `_ - : .` (FCM's
/// alphabet), so it can travel in a path unescaped.
pub(crate) fn valid_device_token(t: &str) -> bool {
    (1..=MAX_DEVICE_TOKEN).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'))
}

/// A user id from a path segment (percent-decoded), validated.
fn user_segment(seg: &str) -> Result<String, ApiError> {
    let user = percent_decode(seg);
    if valid_user(&user) {
        Ok(user)
    } else {
        Err(error(
            Status::BadRequest,
            "invalid user id: 1-128 bytes without spaces or control characters",
        ))
    }
}

/// A room in a path: the room of `/topic/<name>` is `<name>`; under
/// another destination prefix it is `<prefix name>/<name>`, with its `/`
/// written `%2F` (`/api/rooms/queue%2Fa/messages` for `/queue/a`).
fn room_segment(seg: &str, prefixes: &Prefixes) -> Result<String, ApiError> {
    let room = percent_decode(seg);
    if valid_room_key(&room, prefixes) {
        Ok(room)
    } else {
        Err(error(
            Status::BadRequest,
            format!(
                "invalid room '{room}': a name of 1-128 characters from A-Z a-z 0-9 _ . ~ - (a /topic/ room), or <prefix>%2F<name> for the other destination prefixes ({prefixes})"
            ),
        ))
    }
}

/// Answer a plain HTTP request.
pub(crate) fn route(
    method: &str,
    path: &str,
    query: Option<&str>,
    authorization: Option<&str>,
    ctx: &ApiCtx<'_>,
) -> Answer {
    let observe = matches!(path, "/healthz" | "/readyz" | "/metrics" | "/status");
    if ctx.served == Served::Metrics && !observe {
        return Answer::Now(http::text(
            Status::NotFound,
            "not found: this listener (--metrics-listen) serves /metrics, /status, /readyz and /healthz",
        ));
    }
    if ctx.draining && !observe {
        return Answer::Now(http::text(
            Status::ServiceUnavailable,
            "the server is shutting down",
        ));
    }
    if path.starts_with("/api/") {
        return match api(method, path, query, authorization, ctx) {
            Ok(a) => a,
            Err(e) => Answer::Now(error_response(&e)),
        };
    }
    if observe && method != "GET" {
        return Answer::Now(http::text(Status::NotFound, "not found"));
    }
    let metrics_here = ctx.served != Served::Public;
    Answer::Now(match path {
        "/healthz" => http::text(Status::Ok, "ok"),
        "/readyz" => match ctx.not_ready {
            None => http::text(Status::Ok, "ready"),
            Some(why) => http::text(Status::ServiceUnavailable, &format!("not ready: {why}")),
        },
        "/metrics" | "/status" if !metrics_here => http::text(
            Status::NotFound,
            &format!("{path} is served on the --metrics-listen address"),
        ),
        "/metrics" => return Answer::Metrics,
        "/status" => http::page(STATUS_PAGE),
        "/" | "/index.html" if method == "GET" => chat_page(ctx),
        "/ws" => http::text(
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

/// Only `allowed` methods here.
fn method_is(method: &str, allowed: &[&str]) -> Result<(), ApiError> {
    if allowed.contains(&method) {
        Ok(())
    } else {
        Err(error(
            Status::MethodNotAllowed,
            format!("{method} is not allowed here; use {}", allowed.join(" or ")),
        ))
    }
}

/// A request under `/api/`.
fn api(
    method: &str,
    path: &str,
    query: Option<&str>,
    authorization: Option<&str>,
    ctx: &ApiCtx<'_>,
) -> Result<Answer, ApiError> {
    let segs: Vec<&str> = path["/api/".len()..].split('/').collect();
    let no_store = || {
        error(
            Status::NotFound,
            "history, members and devices are disabled on this server (--persist false)",
        )
    };
    match segs.as_slice() {
        ["rooms", _, "messages"] => {
            let q = parse(method, path, query, ctx.prefixes)?;
            let caller = Caller::of(authorization, ctx)?;
            let member = match caller.admin_or_member()? {
                // A user reads their own user room (`/user/…`) as its owner.
                Some(u) if is_room_of_user(&q.room, &u) => None,
                member => member,
            };
            if !ctx.store {
                return Err(no_store());
            }
            Ok(Answer::Read(history(q, member)))
        }
        ["rooms", room, "members"] => {
            method_is(method, &["GET"])?;
            let room = room_segment(room, ctx.prefixes)?;
            let member = Caller::of(authorization, ctx)?.admin_or_member()?;
            if !ctx.store {
                return Err(no_store());
            }
            Ok(Answer::Read(Box::new(move |db| {
                if let Some(u) = &member {
                    match members::is_member(db, &room, u) {
                        Ok(true) => {}
                        Ok(false) => return not_a_member(),
                        Err(e) => return store_failed(e),
                    }
                }
                match members::list_members(db, &room, MAX_MEMBERS_LISTED) {
                    Ok(list) => http::json(Status::Ok, &json!({"room": room, "members": list})),
                    Err(e) => store_failed(e),
                }
            })))
        }
        ["rooms", room, "online"] => {
            method_is(method, &["GET"])?;
            let room = room_segment(room, ctx.prefixes)?;
            let user = Caller::of(authorization, ctx)?.admin_or_member()?;
            if !ctx.store {
                return Err(no_store()); // presence is tracked with members
            }
            Ok(Answer::Online { room, user })
        }
        ["users", user, "rooms"] => {
            method_is(method, &["GET"])?;
            let user = user_segment(user)?;
            Caller::of(authorization, ctx)?.admin_or(&user)?;
            if !ctx.store {
                return Err(no_store());
            }
            Ok(Answer::Read(Box::new(
                move |db| match members::list_user_rooms(db, &user, MAX_USER_ROOMS_LISTED) {
                    Ok(list) => {
                        let rooms: Vec<Value> = list
                            .into_iter()
                            .map(|r| {
                                json!({"room": r.room, "last_seq": r.last_seq,
                                       "last_timestamp": r.last_ts_ms})
                            })
                            .collect();
                        http::json(Status::Ok, &json!({"user": user, "rooms": rooms}))
                    }
                    Err(e) => store_failed(e),
                },
            )))
        }
        ["rooms", room, "members", user] => {
            method_is(method, &["PUT", "DELETE"])?;
            let room = room_segment(room, ctx.prefixes)?;
            let user = user_segment(user)?;
            Caller::of(authorization, ctx)?.admin()?;
            if !ctx.store {
                return Err(no_store());
            }
            Ok(Answer::Member {
                room,
                user,
                add: method == "PUT",
            })
        }
        ["users", user, "devices"] => {
            method_is(method, &["GET"])?;
            let user = user_segment(user)?;
            Caller::of(authorization, ctx)?.admin_or(&user)?;
            if !ctx.store {
                return Err(no_store());
            }
            let max = ctx.max_devices;
            Ok(Answer::Read(Box::new(
                move |db| match members::list_devices(db, &user, max) {
                    Ok(list) => http::json(Status::Ok, &json!({"user": user, "devices": list})),
                    Err(e) => store_failed(e),
                },
            )))
        }
        ["users", user, "devices", token] => {
            method_is(method, &["PUT", "DELETE"])?;
            let user = user_segment(user)?;
            if !valid_device_token(token) {
                return Err(error(
                    Status::BadRequest,
                    format!(
                        "invalid device token: 1-{MAX_DEVICE_TOKEN} characters from A-Z a-z 0-9 _ - : ."
                    ),
                ));
            }
            Caller::of(authorization, ctx)?.admin_or(&user)?;
            if !ctx.store {
                return Err(no_store());
            }
            let token = token.to_string();
            let max = ctx.max_devices;
            let add = method == "PUT";
            Ok(Answer::Write(Box::new(move |db| {
                device_write(db, &user, &token, add, max)
            })))
        }
        ["push"] => {
            method_is(method, &["GET"])?;
            Caller::of(authorization, ctx)?.admin()?;
            match ctx.push {
                Some(stats) => Ok(Answer::Now(http::json(Status::Ok, &stats.json()))),
                None => Err(error(
                    Status::NotFound,
                    "push is off on this server (no --fcm-credentials or --fcm-access-token)",
                )),
            }
        }
        _ => Err(error(
            Status::NotFound,
            format!(
                "no such resource {path}; see /api/rooms/{{room}}/messages, /api/rooms/{{room}}/members[/{{user}}], /api/rooms/{{room}}/online, /api/users/{{user}}/rooms, /api/users/{{user}}/devices[/{{token}}]"
            ),
        )),
    }
}

fn store_failed(e: crate::store::StoreError) -> Vec<u8> {
    error_response(&error(
        Status::InternalServerError,
        format!("the store failed: {e}"),
    ))
}

/// `PUT|DELETE /api/users/{user}/devices/{token}` on the writer.
fn device_write(
    db: &rusqlite::Connection,
    user: &str,
    token: &str,
    add: bool,
    max: usize,
) -> Vec<u8> {
    let result = if add {
        members::add_device(db, user, token, max).map(Added::changed)
    } else {
        members::remove_device(db, user, token).map(Some)
    };
    match result {
        Ok(Some(changed)) => http::json(
            Status::Ok,
            &json!({"user": user, "device": token, "registered": add, "changed": changed}),
        ),
        Ok(None) => error_response(&error(
            Status::Conflict,
            format!("{user} has {max} devices already (--max-devices-per-user); remove one first"),
        )),
        Err(e) => store_failed(e),
    }
}

/// The answer of the owner shard's member change, once it is stored:
/// `changed` is whether it changed anything, `None` when the room is full.
pub(crate) fn member_answer(
    room: &str,
    user: &str,
    add: bool,
    changed: Option<bool>,
    max: usize,
) -> Vec<u8> {
    match changed {
        Some(changed) => http::json(
            Status::Ok,
            &json!({"room": room, "user": user, "member": add, "changed": changed}),
        ),
        None => error_response(&error(
            Status::Conflict,
            format!("room {room} has {max} members already (--max-room-members)"),
        )),
    }
}

/// A member change on the writer: `Some(changed)`, `None` when full.
pub(crate) fn member_write(
    db: &rusqlite::Connection,
    room: &str,
    user: &str,
    add: bool,
    max: usize,
) -> Vec<u8> {
    let result = if add {
        members::add_member(db, room, user, max).map(Added::changed)
    } else {
        members::remove_member(db, room, user).map(Some)
    };
    match result {
        Ok(changed) => member_answer(room, user, add, changed, max),
        Err(e) => store_failed(e),
    }
}

/// The history read; `member`: the user who must be a member (not the admin).
fn history(q: HistoryQuery, member: Option<Box<str>>) -> Read {
    Box::new(move |conn: &rusqlite::Connection| {
        if let Some(u) = &member {
            match members::is_member(conn, &q.room, u) {
                Ok(true) => {}
                Ok(false) => return not_a_member(),
                Err(e) => return store_failed(e),
            }
        }
        match read_page(conn, &q.room, q.range, q.limit, MAX_ANSWER_BYTES) {
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
        }
    })
}

/// The answer to `GET /api/rooms/{room}/online`, from the room's owner:
/// `online` (users with a live subscription, sorted, at most
/// [`MAX_ONLINE_LISTED`]) or `None` when the caller is not a member.
pub(crate) fn online_answer(room: &str, online: Option<Vec<Box<str>>>) -> Vec<u8> {
    match online {
        Some(mut users) => {
            users.sort_unstable();
            let more = users.len() > MAX_ONLINE_LISTED;
            users.truncate(MAX_ONLINE_LISTED);
            http::json(
                Status::Ok,
                &json!({"room": room, "online": users, "has_more": more}),
            )
        }
        None => not_a_member(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Draft;

    fn p(q: &str) -> Result<HistoryQuery, ApiError> {
        parse(
            "GET",
            "/api/rooms/lobby/messages",
            Some(q),
            &Prefixes::default(),
        )
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
            parse(
                "GET",
                "/api/rooms/bad room/messages",
                None,
                &Prefixes::default()
            )
            .unwrap_err()
            .0,
            Status::BadRequest
        );
        assert_eq!(
            parse(
                "POST",
                "/api/rooms/lobby/messages",
                None,
                &Prefixes::default()
            )
            .unwrap_err()
            .0,
            Status::MethodNotAllowed
        );
        assert_eq!(
            parse("GET", "/api/rooms/lobby", None, &Prefixes::default())
                .unwrap_err()
                .0,
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
            sequenced_at: None,
        };
        let v = message_json(&m);
        assert_eq!(v["body"], "/wA=");
        assert_eq!(v["base64"], true);
        assert_eq!(v["message_id"], "r:3");
        assert_eq!(v["headers"]["k"], "v");
    }
}
