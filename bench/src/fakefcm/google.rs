//! Answers in the shapes Google's endpoints give: the `google.rpc.Status`
//! error body of FCM HTTP v1, and the OAuth2 error body of the token
//! endpoint.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// `Content-Type` of every JSON answer, as Google writes it.
const JSON_UTF8: &str = "application/json; charset=UTF-8";

/// `@type` of the FCM-specific error detail.
const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";

/// A JSON answer with Google's content type.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    json_bytes(
        status,
        serde_json::to_vec(body).expect("JSON values always serialize"),
    )
}

/// An already serialized JSON answer with Google's content type.
pub fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(JSON_UTF8))],
        bytes,
    )
        .into_response()
}

/// An FCM error: `{"error":{"code","message","status","details"?}}`, with
/// an `FcmError` detail carrying `error_code` when given (fields in
/// Google's order).
pub fn fcm_error(
    code: StatusCode,
    status: &str,
    message: &str,
    error_code: Option<&str>,
) -> Response {
    let body = ErrorBody {
        error: RpcStatus {
            code: code.as_u16(),
            message,
            status,
            details: error_code.map(|error_code| {
                [FcmErrorDetail {
                    type_url: FCM_ERROR_TYPE,
                    error_code,
                }]
            }),
        },
    };
    json_response(code, &body)
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: RpcStatus<'a>,
}

/// `google.rpc.Status` as JSON.
#[derive(Serialize)]
struct RpcStatus<'a> {
    code: u16,
    message: &'a str,
    status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<[FcmErrorDetail<'a>; 1]>,
}

#[derive(Serialize)]
struct FcmErrorDetail<'a> {
    #[serde(rename = "@type")]
    type_url: &'static str,
    #[serde(rename = "errorCode")]
    error_code: &'a str,
}

/// 400 INVALID_ARGUMENT, FCM's answer to a malformed request.
pub fn invalid_argument(message: &str) -> Response {
    fcm_error(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        message,
        Some("INVALID_ARGUMENT"),
    )
}

/// 401 UNAUTHENTICATED, with the `WWW-Authenticate` challenge Google sends.
pub fn unauthenticated() -> Response {
    let mut resp = fcm_error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, \
         login cookie or other valid authentication credential. \
         See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        None,
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
    );
    resp
}

/// 404 NOT_FOUND / UNREGISTERED: the app instance is gone.
pub fn unregistered() -> Response {
    fcm_error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "Requested entity was not found.",
        Some("UNREGISTERED"),
    )
}

/// The answer to an injected failure (`/fake/fail`, or `down`): 429, 500,
/// 503 with FCM's body, and `Retry-After` when given.
pub fn injected_failure(status: u16, retry_after_s: Option<u64>) -> Response {
    let (code, rpc_status, message, error_code) = match status {
        429 => (
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute' \
             of service 'fcm.googleapis.com'.",
            "QUOTA_EXCEEDED",
        ),
        500 => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            "Internal error encountered.",
            "INTERNAL",
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "The service is currently unavailable.",
            "UNAVAILABLE",
        ),
    };
    let mut resp = fcm_error(code, rpc_status, message, Some(error_code));
    if let Some(s) = retry_after_s {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    resp
}

/// The statuses `/fake/fail` can inject.
pub const INJECTABLE: [u16; 3] = [429, 500, 503];

/// An OAuth2 error of the token endpoint (RFC 6749 §5.2, Google's wording):
/// 400 `{"error":..., "error_description":...}`.
pub fn oauth_error(error: &str, description: &str) -> Response {
    #[derive(Serialize)]
    struct OAuthError<'a> {
        error: &'a str,
        error_description: &'a str,
    }
    json_response(
        StatusCode::BAD_REQUEST,
        &OAuthError {
            error,
            error_description: description,
        },
    )
}
