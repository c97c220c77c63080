//! `/fake/*`: the control endpoints a test or benchmark drives the fake
//! with (settings, failure injection, token expiry, the record, counters,
//! shutdown). JSON in and out; no latency; a malformed body gets 400
//! `{"error": "..."}`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};
use serde_json::json;

use crate::google::{INJECTABLE, json_bytes, json_response};
use crate::state::{App, ConfigPatch, FailRule, Record};

/// `GET /fake/config`: the current settings.
pub async fn get_config(State(app): State<Arc<App>>) -> Response {
    json_response(StatusCode::OK, &app.config.view())
}

/// `POST /fake/config`: change any of `latency_ms`, `down`,
/// `unregistered`, `invalid`; answers the settings now in force.
pub async fn set_config(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let patch: ConfigPatch = match parse(&body, true) {
        Ok(patch) => patch,
        Err(e) => return bad_request(&e),
    };
    app.config.apply(patch);
    json_response(StatusCode::OK, &app.config.view())
}

/// `POST /fake/fail`: `{"status", "count"?, "retry_after_s"?, "token"?}`.
pub async fn fail(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let rule: FailRule = match parse(&body, false) {
        Ok(rule) => rule,
        Err(e) => return bad_request(&e),
    };
    if !INJECTABLE.contains(&rule.status) {
        return bad_request(&format!(
            "status must be one of {INJECTABLE:?}, not {}",
            rule.status
        ));
    }
    if rule.count == 0 {
        return bad_request("count must be at least 1");
    }
    let pending_rules = app.add_rule(rule);
    json_response(StatusCode::OK, &json!({ "pending_rules": pending_rules }))
}

/// `POST /fake/expire-tokens`: every issued access token stops working.
pub async fn expire_tokens(State(app): State<Arc<App>>) -> Response {
    let expired = app.expire_tokens();
    json_response(StatusCode::OK, &json!({ "expired": expired }))
}

/// `GET /fake/received`: every accepted message, oldest first, and the
/// counters.
pub async fn received(State(app): State<Arc<App>>) -> Response {
    let snapshot = app.snapshot();
    let c = &app.counters;
    let attempts = c.attempts.load(Ordering::Relaxed);
    let token_requests = c.token_requests.load(Ordering::Relaxed);
    let statuses = c.statuses();
    // A million records take a while to write out: not on a worker thread.
    let body = tokio::task::spawn_blocking(move || {
        serde_json::to_vec(&Received {
            messages: RecordList(&snapshot.messages),
            dropped: snapshot.dropped,
            attempts,
            token_requests,
            statuses,
        })
    })
    .await;
    match body {
        Ok(Ok(bytes)) => json_bytes(StatusCode::OK, bytes),
        Ok(Err(e)) => internal(&e.to_string()),
        Err(e) => internal(&e.to_string()),
    }
}

/// `GET /fake/stats`: the counters alone (cheap to poll).
pub async fn stats(State(app): State<Arc<App>>) -> Response {
    let c = &app.counters;
    json_response(
        StatusCode::OK,
        &json!({
            "accepted": c.accepted.load(Ordering::Relaxed),
            "attempts": c.attempts.load(Ordering::Relaxed),
            "token_requests": c.token_requests.load(Ordering::Relaxed),
            "in_flight": c.in_flight.load(Ordering::Relaxed),
            "max_in_flight": c.max_in_flight.load(Ordering::Relaxed),
        }),
    )
}

/// `POST /fake/reset`: clears records, counters and failure rules; keeps
/// the settings and the issued tokens.
pub async fn reset(State(app): State<Arc<App>>) -> Response {
    app.reset();
    json_response(StatusCode::OK, &json!({ "ok": true }))
}

/// `POST /fake/shutdown`: answers, then stops the server.
pub async fn shutdown(State(app): State<Arc<App>>) -> Response {
    app.shutdown.notify_one();
    json_response(StatusCode::OK, &json!({ "ok": true }))
}

/// The answer of `GET /fake/received`.
#[derive(Serialize)]
struct Received<'a> {
    messages: RecordList<'a>,
    /// Records dropped, oldest first, to stay within `--max-records`.
    dropped: u64,
    attempts: u64,
    token_requests: u64,
    statuses: BTreeMap<String, u64>,
}

/// Serializes shared records without copying them.
struct RecordList<'a>(&'a [Arc<Record>]);

impl Serialize for RecordList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|r| &**r))
    }
}

/// Parses a JSON body (any content type); an empty body is `{}` when
/// `empty_ok`.
fn parse<T: DeserializeOwned>(body: &[u8], empty_ok: bool) -> Result<T, String> {
    let body = if empty_ok && body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn bad_request(message: &str) -> Response {
    json_response(StatusCode::BAD_REQUEST, &json!({ "error": message }))
}

fn internal(message: &str) -> Response {
    json_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({ "error": message }),
    )
}
