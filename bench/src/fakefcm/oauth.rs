//! `POST /token`: Google's OAuth2 token endpoint for service accounts (the
//! JWT-bearer grant of RFC 7523), as `https://oauth2.googleapis.com/token`
//! answers it.
//!
//! The client posts `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`
//! and `assertion=<JWT>`, a JWT it signed with RS256 with the service
//! account's private key, claiming `iss` (the account), `scope`, `aud` (the
//! token endpoint's URL), `iat` and `exp` (at most an hour later). The
//! answer is a Bearer access token for `messages:send`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::google::{json_response, oauth_error};
use crate::state::App;

pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Scopes that allow sending with FCM: the FCM scope itself, or the
/// all-of-Cloud scope that Google also accepts for FCM.
const FCM_SCOPES: [&str; 2] = [
    "https://www.googleapis.com/auth/firebase.messaging",
    "https://www.googleapis.com/auth/cloud-platform",
];

/// Longest lifetime Google allows an assertion (`exp - iat`), seconds.
const MAX_ASSERTION_LIFETIME_S: f64 = 3600.0;

/// How far in the future `iat` may be (clock skew), seconds.
const IAT_SKEW_S: f64 = 300.0;

const TIMEFRAME: &str = "Invalid JWT: Token must be a short-lived token (60 minutes) and in a \
                         reasonable timeframe. Check your iat and exp values in the JWT claim.";

/// Why a token request is refused: an OAuth2 `error` code and Google's
/// `error_description`.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    pub error: &'static str,
    pub description: String,
}

fn refuse(error: &'static str, description: impl Into<String>) -> Refusal {
    Refusal {
        error,
        description: description.into(),
    }
}

fn invalid_grant(description: impl Into<String>) -> Refusal {
    refuse("invalid_grant", description)
}

#[derive(Serialize)]
struct TokenAnswer<'a> {
    access_token: &'a str,
    expires_in: u64,
    token_type: &'static str,
}

pub async fn token(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let _in_flight = app.counters.enter();
    app.counters
        .token_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Judged on arrival; the answer leaves after the configured latency.
    let latency = app.config.latency();
    let now = crate::state::now_ms() as f64 / 1000.0;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let answer = match check_request(&body, app.opts.public_key.as_ref(), now, host) {
        Ok(()) => {
            let token = app.issue_token();
            json_response(
                StatusCode::OK,
                &TokenAnswer {
                    access_token: &token,
                    expires_in: app.opts.access_token_ttl.as_secs(),
                    token_type: "Bearer",
                },
            )
        }
        Err(r) => oauth_error(r.error, &r.description),
    };
    tokio::time::sleep(latency).await;
    answer
}

/// Checks a form-encoded token request; `now` in seconds since the epoch,
/// `host` only words the audience error.
pub fn check_request(
    body: &[u8],
    key: Option<&DecodingKey>,
    now: f64,
    host: &str,
) -> Result<(), Refusal> {
    let mut grant_type = None;
    let mut assertion = None;
    for (name, value) in form_urlencoded::parse(body) {
        match &*name {
            "grant_type" if grant_type.is_none() => grant_type = Some(value),
            "assertion" if assertion.is_none() => assertion = Some(value),
            _ => {}
        }
    }
    let grant_type = grant_type.unwrap_or_default();
    if grant_type != JWT_BEARER {
        return Err(refuse(
            "unsupported_grant_type",
            format!("Invalid grant_type: {grant_type}"),
        ));
    }
    let Some(assertion) = assertion.filter(|a| !a.is_empty()) else {
        return Err(refuse(
            "invalid_request",
            "Missing required parameter: assertion",
        ));
    };
    let claims = decode_assertion(&assertion, key)?;
    check_claims(&claims, now, host)
}

/// Decodes the assertion's claims: an RS256 JWT, its signature verified
/// when a public key is configured (else only present).
fn decode_assertion(
    assertion: &str,
    key: Option<&DecodingKey>,
) -> Result<Map<String, Value>, Refusal> {
    let malformed = || invalid_grant("Invalid JWT: malformed assertion");
    let header = jsonwebtoken::decode_header(assertion).map_err(|_| malformed())?;
    if header.alg != Algorithm::RS256 {
        return Err(invalid_grant(format!(
            "Invalid JWT: signing algorithm must be RS256, not {:?}",
            header.alg
        )));
    }
    let claims = match key {
        Some(key) => {
            let mut validation = Validation::new(Algorithm::RS256);
            // The claims are checked below, with Google's answers.
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.validate_aud = false;
            jsonwebtoken::decode::<Map<String, Value>>(assertion, key, &validation).map_err(
                |e| match e.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidKeyFormat => invalid_grant("Invalid JWT Signature."),
                    _ => malformed(),
                },
            )?
        }
        None => {
            let signature = assertion.rsplit('.').next().unwrap_or_default();
            if signature.is_empty() {
                return Err(invalid_grant("Invalid JWT Signature."));
            }
            jsonwebtoken::dangerous::insecure_decode::<Map<String, Value>>(assertion)
                .map_err(|_| malformed())?
        }
    };
    Ok(claims.claims)
}

fn check_claims(claims: &Map<String, Value>, now: f64, host: &str) -> Result<(), Refusal> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or_default();
    if text("iss").is_empty() {
        return Err(invalid_grant("Invalid grant: account not found"));
    }
    if !text("scope")
        .split_ascii_whitespace()
        .any(|s| FCM_SCOPES.contains(&s))
    {
        return Err(refuse(
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        ));
    }
    if !text("aud").ends_with("/token") {
        return Err(invalid_grant(format!(
            "Invalid JWT: Failed audience check. The expected audience is http://{host}/token."
        )));
    }
    let (Some(iat), Some(exp)) = (
        claims.get("iat").and_then(Value::as_f64),
        claims.get("exp").and_then(Value::as_f64),
    ) else {
        return Err(invalid_grant(TIMEFRAME));
    };
    let timely =
        iat < exp && exp - iat <= MAX_ASSERTION_LIFETIME_S && exp > now && iat <= now + IAT_SKEW_S;
    if !timely {
        return Err(invalid_grant(TIMEFRAME));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: f64 = 1_700_000_000.0;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn good() -> Value {
        json!({
            "iss": "svc@p.iam.gserviceaccount.com",
            "scope": "https://www.googleapis.com/auth/firebase.messaging",
            "aud": "http://127.0.0.1:1234/token",
            "iat": NOW,
            "exp": NOW + 3600.0,
        })
    }

    fn check(v: Value) -> Result<(), &'static str> {
        check_claims(&claims(v), NOW, "h").map_err(|r| r.error)
    }

    #[test]
    fn good_claims_pass() {
        assert_eq!(check(good()), Ok(()));
        let mut v = good();
        v["scope"] = json!("openid https://www.googleapis.com/auth/cloud-platform");
        assert_eq!(check(v), Ok(()));
    }

    #[test]
    fn each_bad_claim_is_refused() {
        let cases: [(&str, Value, &str); 7] = [
            ("iss", json!(""), "invalid_grant"),
            (
                "scope",
                json!("https://www.googleapis.com/auth/userinfo"),
                "invalid_scope",
            ),
            ("aud", json!("https://example.com/"), "invalid_grant"),
            ("exp", json!(NOW + 3601.0), "invalid_grant"),
            ("exp", json!(NOW - 1.0), "invalid_grant"),
            ("iat", json!(NOW + 3000.0), "invalid_grant"),
            ("iat", json!("yesterday"), "invalid_grant"),
        ];
        for (field, value, error) in cases {
            let mut v = good();
            v[field] = value;
            assert_eq!(check(v), Err(error), "{field}");
        }
    }

    #[test]
    fn the_grant_type_and_assertion_are_required() {
        let r = check_request(b"grant_type=password", None, NOW, "h").unwrap_err();
        assert_eq!(r.error, "unsupported_grant_type");
        let body = format!("grant_type={}", JWT_BEARER.replace(':', "%3A"));
        let r = check_request(body.as_bytes(), None, NOW, "h").unwrap_err();
        assert_eq!(r.error, "invalid_request");
        let r =
            check_request(format!("{body}&assertion=a.b").as_bytes(), None, NOW, "h").unwrap_err();
        assert_eq!(r.error, "invalid_grant");
    }
}
