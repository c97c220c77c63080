//! `POST /v1/projects/{project}/messages:send`: FCM HTTP v1's send, with
//! FCM's checks and answers.
//!
//! A send is judged in this order, each step answering as FCM does:
//! `down` (503), the Bearer token (401), the request body (400), its size
//! (400), an injected failure (`/fake/fail`: 429/500/503), the target
//! registration token (400 invalid, 404 unregistered). A send that passes
//! is recorded and answered `{"name": "projects/P/messages/ID"}`. It is
//! judged (and recorded) on arrival; the answer leaves after the latency.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::google::{
    injected_failure, invalid_argument, json_response, unauthenticated, unregistered,
};
use crate::state::{App, Record, now_ms};

pub async fn send(
    State(app): State<Arc<App>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_flight = app.counters.enter();
    app.counters.attempts.fetch_add(1, Ordering::Relaxed);
    let latency = app.config.latency();
    let answer = judge(&app, &project, &headers, &body);
    app.counters.count_status(answer.status().as_u16());
    tokio::time::sleep(latency).await;
    answer
}

fn judge(app: &App, project: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    if app.config.is_down() {
        return injected_failure(503, None);
    }
    let Some(authorization) = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .filter(|auth| bearer_token(auth).is_some_and(|t| app.token_is_valid(t)))
    else {
        return unauthenticated();
    };
    let request = match SendRequest::parse(body) {
        Ok(request) => request,
        Err(message) => return invalid_argument(&message),
    };
    if body.len() > app.opts.max_payload_bytes {
        return invalid_argument("Message payload too large");
    }
    if let Some(failure) = app.take_failure(request.token.as_deref()) {
        return injected_failure(failure.status, failure.retry_after_s);
    }
    if let Some(token) = request.token.as_deref() {
        if token.is_empty() || app.config.is_invalid(token) {
            return invalid_argument(
                "The registration token is not a valid FCM registration token",
            );
        }
        if app.config.is_unregistered(token) {
            return unregistered();
        }
    }
    if request.validate_only {
        // FCM's answer to a dry run: a fixed name, nothing sent.
        let name = format!("projects/{project}/messages/fake_message_id");
        return json_response(StatusCode::OK, &json!({ "name": name }));
    }
    let name = format!("projects/{project}/messages/{}", app.next_message_id());
    app.record(Record {
        at_ms: now_ms(),
        project: project.to_owned(),
        authorization: authorization.to_owned(),
        name: name.clone(),
        message: request.raw_message,
    });
    app.counters.accepted.fetch_add(1, Ordering::Relaxed);
    json_response(StatusCode::OK, &json!({ "name": name }))
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive, as in RFC 6750).
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("Bearer") && !token.is_empty()).then_some(token)
}

/// A send request that passed FCM's checks.
struct SendRequest {
    /// The `message` object byte for byte, for the record.
    raw_message: Box<RawValue>,
    /// The registration token targeted, when the target is a token.
    token: Option<String>,
    validate_only: bool,
}

/// Borrows the `message` member's text out of the request body.
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow)]
    message: &'a RawValue,
}

impl SendRequest {
    /// Parses and checks a request body; `Err` is FCM's 400 message.
    fn parse(body: &[u8]) -> Result<SendRequest, String> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| format!("Invalid JSON payload received. {e}"))?;
        let Value::Object(request) = value else {
            return Err(format!(
                "Invalid JSON payload received. Expected an object, got {}.",
                kind(&value)
            ));
        };
        let mut validate_only = false;
        let mut message = None;
        for (name, value) in &request {
            match (name.as_str(), value) {
                (_, Value::Null) => {}
                ("message", Value::Object(m)) => message = Some(m),
                ("message", v) => return Err(wrong_type("message", "Message", v)),
                ("validate_only" | "validateOnly", Value::Bool(b)) => validate_only = *b,
                ("validate_only" | "validateOnly", v) => {
                    return Err(wrong_type("validate_only", "TYPE_BOOL", v));
                }
                (other, _) => return Err(unknown_field(other, None)),
            }
        }
        let message =
            message.ok_or("Request contains an invalid argument: 'message' is required.")?;
        let token = check_message(message)?;
        // The message is stored as sent; when the body cannot be borrowed
        // from (duplicate keys), the parsed value stands in for it.
        let raw_message = match serde_json::from_slice::<RawRequest>(body) {
            Ok(raw) => raw.message.to_owned(),
            Err(_) => serde_json::value::to_raw_value(message).map_err(|e| e.to_string())?,
        };
        Ok(SendRequest {
            raw_message,
            token,
            validate_only,
        })
    }
}

/// Checks a `message` object the way FCM does (the parts a server sends:
/// target, data, notification, android, apns, webpush, fcm_options).
/// Returns the registration token when the target is a token.
fn check_message(message: &Map<String, Value>) -> Result<Option<String>, String> {
    let mut target: Option<(&str, &str)> = None;
    for (name, value) in message {
        if value.is_null() {
            continue; // proto3 JSON: null is "not set"
        }
        let path = format!("message.{name}");
        match name.as_str() {
            "token" | "topic" | "condition" => {
                let v = value
                    .as_str()
                    .ok_or_else(|| wrong_type(&path, "TYPE_STRING", value))?;
                if target.is_some() {
                    return Err(format!(
                        "Invalid value at 'message' (oneof), oneof field 'target' is already \
                         set. Cannot set '{name}'"
                    ));
                }
                target = Some((name, v));
            }
            "name" => check_string(&path, value)?,
            "data" => check_data(&path, value)?,
            "notification" => {
                check_object(&path, "Notification", value, |field, v, path| match field {
                    "title" | "body" | "image" => check_string(path, v),
                    other => Err(unknown_field(other, Some("message.notification"))),
                })?
            }
            "android" => check_object(&path, "AndroidConfig", value, |field, v, path| {
                match field {
                    "collapse_key"
                    | "collapseKey"
                    | "restricted_package_name"
                    | "restrictedPackageName" => check_string(path, v),
                    "priority" => match v.as_str() {
                        Some("NORMAL" | "HIGH") => Ok(()),
                        _ => Err(wrong_type(
                            path,
                            "type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority",
                            v,
                        )),
                    },
                    "ttl" => check_duration(path, v),
                    "data" => check_data(path, v),
                    "direct_boot_ok" | "directBootOk" => match v {
                        Value::Bool(_) => Ok(()),
                        _ => Err(wrong_type(path, "TYPE_BOOL", v)),
                    },
                    // notification, fcm_options and newer fields: objects
                    // or scalars this fake does not look into.
                    _ => Ok(()),
                }
            })?,
            "apns" => check_object(&path, "ApnsConfig", value, |field, v, path| match field {
                "headers" => check_string_map(path, v),
                "payload" | "fcm_options" | "fcmOptions" => {
                    check_object(path, "Struct", v, |_, _, _| Ok(()))
                }
                _ => Ok(()),
            })?,
            "webpush" => check_object(
                &path,
                "WebpushConfig",
                value,
                |field, v, path| match field {
                    "headers" | "data" => check_string_map(path, v),
                    _ => Ok(()),
                },
            )?,
            "fcm_options" | "fcmOptions" => {
                check_object(&path, "FcmOptions", value, |field, v, path| match field {
                    "analytics_label" | "analyticsLabel" => check_string(path, v),
                    other => Err(unknown_field(other, Some("message.fcm_options"))),
                })?
            }
            other => return Err(unknown_field(other, Some("message"))),
        }
    }
    match target {
        None => Err("Recipient of the message is not set.".into()),
        Some(("token", token)) => Ok(Some(token.to_owned())),
        Some(("topic", topic)) => {
            let name = topic.strip_prefix("/topics/").unwrap_or(topic);
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~%".contains(&b));
            if ok {
                Ok(None)
            } else {
                Err(format!("Invalid topic name: {topic}"))
            }
        }
        Some(_) => Ok(None),
    }
}

/// Checks that `value` is an object and runs `check(field, value, path)`
/// on each member that is not null.
fn check_object(
    path: &str,
    type_name: &str,
    value: &Value,
    check: impl Fn(&str, &Value, &str) -> Result<(), String>,
) -> Result<(), String> {
    let Value::Object(map) = value else {
        return Err(wrong_type(
            path,
            &format!("type.googleapis.com/google.firebase.fcm.v1.{type_name}"),
            value,
        ));
    };
    for (field, v) in map.iter().filter(|(_, v)| !v.is_null()) {
        check(field, v, &format!("{path}.{field}"))?;
    }
    Ok(())
}

fn check_string(path: &str, value: &Value) -> Result<(), String> {
    match value {
        Value::String(_) => Ok(()),
        _ => Err(wrong_type(path, "TYPE_STRING", value)),
    }
}

/// A `map<string, string>`: an object whose every value is a string.
fn check_string_map(path: &str, value: &Value) -> Result<(), String> {
    let Value::Object(map) = value else {
        return Err(wrong_type(path, "map<string, string>", value));
    };
    for (i, v) in map.values().enumerate() {
        if !v.is_string() {
            return Err(wrong_type(&format!("{path}[{i}].value"), "TYPE_STRING", v));
        }
    }
    Ok(())
}

/// A data payload: a string map whose keys avoid the words FCM reserves
/// (`from`, `message_type`, anything starting with `google` or `gcm`).
fn check_data(path: &str, value: &Value) -> Result<(), String> {
    check_string_map(path, value)?;
    let reserved = |k: &str| {
        k == "from" || k == "message_type" || k.starts_with("google") || k.starts_with("gcm")
    };
    match value
        .as_object()
        .into_iter()
        .flatten()
        .find(|(k, _)| reserved(k))
    {
        Some((key, _)) => Err(format!("Invalid data payload key: {key}")),
        None => Ok(()),
    }
}

/// A protobuf `Duration` in JSON: seconds with up to nine decimals and an
/// `s` (`"3600s"`, `"0.5s"`).
fn check_duration(path: &str, value: &Value) -> Result<(), String> {
    let ok = value
        .as_str()
        .and_then(|s| s.strip_suffix('s'))
        .is_some_and(|n| {
            let (whole, frac) = n.split_once('.').unwrap_or((n, ""));
            !whole.is_empty()
                && whole.bytes().all(|b| b.is_ascii_digit())
                && frac.len() <= 9
                && frac.bytes().all(|b| b.is_ascii_digit())
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "Invalid value at '{path}' (type.googleapis.com/google.protobuf.Duration), {value}"
        ))
    }
}

fn wrong_type(path: &str, expected: &str, value: &Value) -> String {
    format!("Invalid value at '{path}' ({expected}), {value}")
}

fn unknown_field(name: &str, at: Option<&str>) -> String {
    match at {
        Some(at) => format!(
            "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."
        ),
        None => {
            format!("Invalid JSON payload received. Unknown name \"{name}\": Cannot find field.")
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<SendRequest, String> {
        SendRequest::parse(v.to_string().as_bytes())
    }

    #[test]
    fn a_typical_message_passes_and_is_kept_as_sent() {
        let body = br#"{"message":{"token":"t1","data":{"room":"r","seq":"7"},
            "notification":{"title":"T","body":"B"},
            "android":{"collapse_key":"r","priority":"HIGH","ttl":"3600s"},
            "apns":{"headers":{"apns-collapse-id":"r","apns-priority":"10"},"payload":{"aps":{}}}}}"#;
        let r = SendRequest::parse(body).unwrap();
        assert_eq!(r.token.as_deref(), Some("t1"));
        assert!(!r.validate_only);
        assert!(r.raw_message.get().starts_with(r#"{"token":"t1","data""#));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let bad = [
            json!([]),
            json!({}),
            json!({"message": "x"}),
            json!({"message": {"token": "t"}, "extra": 1}),
            json!({"message": {}}),
            json!({"message": {"token": "t", "topic": "news"}}),
            json!({"message": {"token": 5}}),
            json!({"message": {"token": "t", "data": {"n": 1}}}),
            json!({"message": {"token": "t", "data": ["x"]}}),
            json!({"message": {"token": "t", "data": {"from": "x"}}}),
            json!({"message": {"token": "t", "notification": {"title": 1}}}),
            json!({"message": {"token": "t", "notification": {"sound": "x"}}}),
            json!({"message": {"token": "t", "android": {"collapse_key": 1}}}),
            json!({"message": {"token": "t", "android": {"priority": "high"}}}),
            json!({"message": {"token": "t", "android": {"ttl": "10"}}}),
            json!({"message": {"token": "t", "apns": {"headers": {"apns-priority": 10}}}}),
            json!({"message": {"token": "t", "bogus": {}}}),
            json!({"message": {"topic": "a b"}}),
        ];
        for v in bad {
            assert!(parse(v.clone()).is_err(), "{v}");
        }
        assert!(SendRequest::parse(b"{not json").is_err());
    }

    #[test]
    fn nulls_are_unset_and_other_targets_pass() {
        let r = parse(json!({"message": {"token": null, "topic": "news", "data": null}})).unwrap();
        assert_eq!(r.token, None);
        let r = parse(json!({"validate_only": true, "message": {"condition": "'a' in topics"}}))
            .unwrap();
        assert!(r.validate_only);
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
