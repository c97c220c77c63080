//! Blocking client for the Firebase Cloud Messaging HTTP v1 API.
//!
//! The push pool's plain threads share one [`Fcm`] (behind an `Arc`) and call
//! [`Fcm::send`] for each device to notify. `send` blocks: it does network
//! I/O and sleeps between retries, so it must never run on an async shard.
//!
//! # Flow
//!
//! 1. [`payload`] renders the request body (see *Limits*).
//! 2. An OAuth2 access token is taken from [`Credentials`]: a fixed
//!    [`Credentials::AccessToken`] is used as is; with a
//!    [`Credentials::ServiceAccount`] an RS256 JWT assertion
//!    (`iss` = client email, `scope` = `firebase.messaging`, `aud` = token
//!    URI, one hour of validity) is exchanged at the account's `token_uri`
//!    (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`). The token
//!    is cached until 60 s before it expires (half its lifetime if that is
//!    shorter). One thread refreshes at a time; the others wait for it and
//!    use the fresh token (or its error).
//! 3. `POST {endpoint}/v1/projects/{project}/messages:send` with
//!    `Authorization: Bearer …`, through one shared `ureq::Agent`, so
//!    connections are kept alive and reused across threads and sends.
//!    Non-2xx statuses are read as answers, never as transport errors.
//!
//! # Limits
//!
//! * The body is at most [`MAX_PAYLOAD`] (4,096) bytes, FCM's message limit.
//!   The notification text is cut at a UTF-8 character boundary and ends
//!   with `…` to fit. If not even that fits, the text becomes a lone `…`
//!   and the sender (`data.sender`) is cut the same way, then the
//!   notification title (the room name, display only; `data.room` and the
//!   collapse keys keep it whole). Should the rest (token, room, message id) still not fit, which
//!   no real token or room name does, they are cut too so the bound always
//!   holds, and [`Fcm::send`] refuses to send such a mangled payload
//!   ([`Delivery::Failed`], no request made).
//! * `apns-collapse-id` is at most 64 bytes (Apple's limit): a longer room
//!   name is replaced by [`apns_collapse_id`], a prefix of it plus a stable
//!   64-bit FNV-1a hash.
//! * Each HTTP exchange (connect, send, read) is bounded by
//!   [`FcmConfig::timeout`]; a `send` blocks at most about
//!   `(max_retries + 2) × timeout + max_retries × max_backoff`.
//!
//! # Error policy
//!
//! Following FCM's `ErrorCode` reference; the FCM code is read from the
//! `details` entry of type `google.firebase.fcm.v1.FcmError`:
//!
//! | answer | outcome |
//! | --- | --- |
//! | 2xx | [`Delivery::Sent`] |
//! | `UNREGISTERED` (404) | [`Delivery::DeadToken`] |
//! | 400 `INVALID_ARGUMENT` about the registration token (message mentions it, or a `BadRequest` field violation on `message.token`) | [`Delivery::DeadToken`] |
//! | other 400 | [`Delivery::Failed`], no retry |
//! | 404 without `UNREGISTERED` (e.g. a wrong project or endpoint) | [`Delivery::Failed`]: never deletes devices |
//! | 401 `UNAUTHENTICATED` | service account: drop the cached token, fetch a new one, retry once; a second 401, or any 401 with a fixed access token, is [`Delivery::Failed`] |
//! | 401 `THIRD_PARTY_AUTH_ERROR` (APNs/web push credentials) | [`Delivery::Failed`]: a new OAuth token cannot help |
//! | 403 (`SENDER_ID_MISMATCH`, `PERMISSION_DENIED`), other 4xx, 3xx | [`Delivery::Failed`], no retry |
//! | 408, 429 (`QUOTA_EXCEEDED`), 5xx (`INTERNAL`, `UNAVAILABLE`), transport errors and timeouts, the same from the token endpoint | retry, at most [`FcmConfig::max_retries`] times, then [`Delivery::Failed`] |
//!
//! Retry *n* (1-based) waits a uniformly random time in
//! `[0, min(max_backoff, base_backoff × 2^(n-1))]` ("full jitter"), raised
//! to the server's `Retry-After` (delta-seconds or an HTTP date) when there
//! is one, or to [`FcmConfig::quota_backoff`] for a 429 without it, and
//! always capped at [`FcmConfig::max_backoff`].
//!
//! Neither device tokens nor access tokens are ever logged.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

/// FCM's production endpoint, the default [`FcmConfig::endpoint`].
pub const DEFAULT_ENDPOINT: &str = "https://fcm.googleapis.com";
/// Google's OAuth2 token endpoint, used when a service account file has no
/// `token_uri`.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The OAuth2 scope requested for service accounts.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Largest request body [`payload`] produces, in bytes (FCM's limit).
pub const MAX_PAYLOAD: usize = 4096;
/// Largest `apns-collapse-id` [`apns_collapse_id`] produces, in bytes
/// (Apple's limit).
pub const MAX_APNS_COLLAPSE_ID: usize = 64;

/// Lifetime asked for in the JWT assertion (Google's maximum).
const ASSERTION_LIFETIME: u64 = 3600;
/// A cached access token is refreshed this long before it expires...
const TOKEN_MARGIN: Duration = Duration::from_secs(60);
/// ...and an answer body is read up to this many bytes (FCM's error
/// bodies are far smaller; a larger one is cut off as a transport error).
const MAX_RESPONSE_BODY: u64 = 64 * 1024;
/// Idle keep-alive connections the agent keeps: enough for every thread of
/// a push pool to have one to FCM and the token endpoint.
const MAX_IDLE_CONNECTIONS: usize = 64;
/// How long an idle connection is kept for reuse.
const MAX_IDLE_AGE: Duration = Duration::from_secs(60);
const GRANT_TYPE_JWT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";
const BAD_REQUEST_TYPE: &str = "type.googleapis.com/google.rpc.BadRequest";
const ELLIPSIS: &str = "…";

/// Errors setting up the client (reading credentials, checking the
/// configuration). Sending never fails with this: see [`Delivery`].
#[derive(Debug, thiserror::Error)]
pub enum FcmError {
    /// The service account file could not be read.
    #[error("cannot read service account file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The service account JSON is malformed or misses a field.
    #[error("invalid service account JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The service account's `private_key` is not an RSA private key PEM.
    #[error("invalid service account private_key: {0}")]
    Key(#[source] jsonwebtoken::errors::Error),
    /// A configuration value is unusable; the text says which.
    #[error("invalid FCM configuration: {0}")]
    Config(String),
}

/// A Google service account, as downloaded from the Firebase console
/// (`project_id`, `client_email`, `private_key`, `private_key_id`,
/// `token_uri`). Its `Debug` output never shows the key.
#[derive(Clone)]
pub struct ServiceAccount {
    /// The Firebase/Google Cloud project, the default [`FcmConfig::project`]
    /// (empty when the file has none).
    pub project_id: String,
    /// The account's e-mail: the assertion's issuer.
    pub client_email: String,
    /// Where assertions are exchanged for access tokens.
    pub token_uri: String,
    /// The key's id (`private_key_id`), sent as the JWT `kid` when present.
    pub key_id: Option<String>,
    key: EncodingKey,
}

#[derive(Deserialize)]
struct ServiceAccountFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    project_id: String,
    private_key_id: Option<String>,
    private_key: String,
    client_email: String,
    token_uri: Option<String>,
}

impl ServiceAccount {
    /// Reads a service account JSON file (see [`ServiceAccount::from_json`]).
    pub fn from_file(path: &Path) -> Result<ServiceAccount, FcmError> {
        let text = std::fs::read_to_string(path).map_err(|source| FcmError::Read {
            path: path.to_owned(),
            source,
        })?;
        ServiceAccount::from_json(&text)
    }

    /// Parses a service account JSON document. `private_key` (a PKCS#8 or
    /// PKCS#1 RSA PEM) and `client_email` are required; `type`, when
    /// present, must be `service_account`; `token_uri` defaults to
    /// [`DEFAULT_TOKEN_URI`].
    pub fn from_json(s: &str) -> Result<ServiceAccount, FcmError> {
        let file: ServiceAccountFile = serde_json::from_str(s)?;
        if let Some(kind) = &file.kind
            && kind != "service_account"
        {
            return Err(FcmError::Config(format!(
                "credentials file has type {kind:?}, expected \"service_account\""
            )));
        }
        if file.client_email.is_empty() {
            return Err(FcmError::Config(
                "service account has an empty client_email".into(),
            ));
        }
        let key = EncodingKey::from_rsa_pem(file.private_key.as_bytes()).map_err(FcmError::Key)?;
        Ok(ServiceAccount {
            project_id: file.project_id,
            client_email: file.client_email,
            token_uri: file
                .token_uri
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned()),
            key_id: file.private_key_id.filter(|k| !k.is_empty()),
            key,
        })
    }

    /// Signs the RS256 assertion exchanged for an access token, valid from
    /// `now` (seconds since the epoch) for an hour.
    fn assertion(&self, now: u64) -> Result<String, jsonwebtoken::errors::Error> {
        #[derive(Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            scope: &'a str,
            aud: &'a str,
            iat: u64,
            exp: u64,
        }
        let mut header = Header::new(Algorithm::RS256);
        header.kid.clone_from(&self.key_id);
        let claims = Claims {
            iss: &self.client_email,
            scope: FCM_SCOPE,
            aud: &self.token_uri,
            iat: now,
            exp: now + ASSERTION_LIFETIME,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
    }
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("key_id", &self.key_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// How the client authenticates to FCM. `Debug` never shows a secret.
#[derive(Clone)]
pub enum Credentials {
    /// A ready OAuth2 access token, used as is and never refreshed (a 401
    /// is final). For tests and short runs.
    AccessToken(String),
    /// A service account whose key mints access tokens as needed.
    ServiceAccount(ServiceAccount),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::AccessToken(_) => f.write_str("AccessToken(<redacted>)"),
            Credentials::ServiceAccount(sa) => f.debug_tuple("ServiceAccount").field(sa).finish(),
        }
    }
}

/// Settings of an [`Fcm`] client; `..FcmConfig::default()` fills in the rest.
#[derive(Clone, Debug)]
pub struct FcmConfig {
    /// Base URL, `scheme://host[:port]` (a trailing `/` is ignored);
    /// default [`DEFAULT_ENDPOINT`].
    pub endpoint: String,
    /// The Firebase project to send as (`--fcm-project`, or the service
    /// account's [`ServiceAccount::project_id`]).
    pub project: String,
    /// How to authenticate.
    pub credentials: Credentials,
    /// Bound on one HTTP exchange, connect to last body byte; default 10 s.
    pub timeout: Duration,
    /// Retries of one push after a 408/429/5xx answer or a transport error
    /// (the single re-authentication after a 401 is not counted); default 5.
    pub max_retries: u32,
    /// Upper bound of the first retry's random wait, doubled for each
    /// further retry; default 1 s.
    pub base_backoff: Duration,
    /// Cap on one wait, `Retry-After` included; default 60 s.
    pub max_backoff: Duration,
    /// Least wait after a 429 that has no `Retry-After`; default 1 s. FCM's
    /// send quota is counted per minute, so a project that really hits it
    /// may want up to 60 s here.
    pub quota_backoff: Duration,
}

impl Default for FcmConfig {
    /// The defaults, with an empty project and an empty access token: set
    /// both; [`Fcm::new`] rejects them empty.
    fn default() -> FcmConfig {
        FcmConfig {
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            project: String::new(),
            credentials: Credentials::AccessToken(String::new()),
            timeout: Duration::from_secs(10),
            max_retries: 5,
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            quota_backoff: Duration::from_secs(1),
        }
    }
}

/// One push: a chat message to one device.
#[derive(Clone, Copy)]
pub struct Notification<'a> {
    /// The device's FCM registration token.
    pub token: &'a str,
    /// The room: notification title, `data.room` and the collapse keys.
    pub room: &'a str,
    /// The message's sequence number in the room (`data.seq`, as a string).
    pub seq: u64,
    /// The message's id (`data.message_id`).
    pub message_id: &'a str,
    /// Who wrote it (`data.sender`).
    pub sender: &'a str,
    /// The message text: the notification body, cut to fit.
    pub text: &'a str,
}

impl fmt::Debug for Notification<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Notification")
            .field("token", &"<redacted>")
            .field("room", &self.room)
            .field("seq", &self.seq)
            .field("message_id", &self.message_id)
            .field("sender", &self.sender)
            .field("text_len", &self.text.len())
            .finish()
    }
}

#[derive(Serialize)]
struct Body<'a> {
    message: Message<'a>,
}

#[derive(Serialize)]
struct Message<'a> {
    token: &'a str,
    notification: NotificationJson<'a>,
    data: Data<'a>,
    android: Android<'a>,
    apns: Apns<'a>,
}

#[derive(Serialize)]
struct NotificationJson<'a> {
    title: &'a str,
    body: &'a str,
}

#[derive(Serialize)]
struct Data<'a> {
    room: &'a str,
    seq: &'a str,
    message_id: &'a str,
    sender: &'a str,
}

#[derive(Serialize)]
struct Android<'a> {
    collapse_key: &'a str,
}

#[derive(Serialize)]
struct Apns<'a> {
    headers: ApnsHeaders<'a>,
}

#[derive(Serialize)]
struct ApnsHeaders<'a> {
    #[serde(rename = "apns-collapse-id")]
    collapse_id: &'a str,
}

/// The variable parts of a body, each possibly cut to fit.
struct Parts<'a> {
    token: Cow<'a, str>,
    title: Cow<'a, str>,
    text: Cow<'a, str>,
    room: Cow<'a, str>,
    seq: String,
    message_id: Cow<'a, str>,
    sender: Cow<'a, str>,
    apns_id: Cow<'a, str>,
}

impl<'a> Parts<'a> {
    fn whole(n: &Notification<'a>) -> Parts<'a> {
        Parts {
            token: Cow::Borrowed(n.token),
            title: Cow::Borrowed(n.room),
            text: Cow::Borrowed(n.text),
            room: Cow::Borrowed(n.room),
            seq: n.seq.to_string(),
            message_id: Cow::Borrowed(n.message_id),
            sender: Cow::Borrowed(n.sender),
            apns_id: apns_collapse_id(n.room),
        }
    }

    fn clear_display(&mut self) {
        self.text = Cow::Borrowed("");
        self.sender = Cow::Borrowed("");
        self.title = Cow::Borrowed("");
    }

    fn render(&self) -> Vec<u8> {
        let body = Body {
            message: Message {
                token: &self.token,
                notification: NotificationJson {
                    title: &self.title,
                    body: &self.text,
                },
                data: Data {
                    room: &self.room,
                    seq: &self.seq,
                    message_id: &self.message_id,
                    sender: &self.sender,
                },
                android: Android {
                    collapse_key: &self.room,
                },
                apns: Apns {
                    headers: ApnsHeaders {
                        collapse_id: &self.apns_id,
                    },
                },
            },
        };
        serde_json::to_vec(&body).expect("serializing a struct of strings cannot fail")
    }

    fn fits(&self) -> bool {
        self.render().len() <= MAX_PAYLOAD
    }
}

/// The JSON request body for `n`, at most [`MAX_PAYLOAD`] bytes:
///
/// ```json
/// {"message":{"token":T,"notification":{"title":ROOM,"body":TEXT},
///  "data":{"room":ROOM,"seq":"SEQ","message_id":MID,"sender":SENDER},
///  "android":{"collapse_key":ROOM},
///  "apns":{"headers":{"apns-collapse-id":ROOM or its hash}}}}
/// ```
///
/// What is cut to fit, in order: the text; then, the text reduced to `…`,
/// the sender; then the title (each at a character boundary, ending with
/// `…`). See the module doc for the last resort, which [`Fcm::send`]
/// refuses to send.
pub fn payload(n: &Notification) -> Vec<u8> {
    let mut parts = Parts::whole(n);
    let body = parts.render();
    if body.len() <= MAX_PAYLOAD {
        return body;
    }
    // Cut the display fields one after the other, each as little as
    // possible and only once the previous one is down to nothing.
    parts.text = fit(&mut parts, n.text, true, |p, v| p.text = v);
    if parts.fits() {
        return parts.render();
    }
    // No room for any text: a lone `…` still says there was some.
    if !n.text.is_empty() {
        parts.text = Cow::Borrowed(ELLIPSIS);
    }
    parts.sender = fit(&mut parts, n.sender, true, |p, v| p.sender = v);
    if parts.fits() {
        return parts.render();
    }
    parts.title = fit(&mut parts, n.room, true, |p, v| p.title = v);
    if parts.fits() {
        return parts.render();
    }
    // Last resort (nothing real gets here): cut what identifies the message,
    // so the bound holds even for garbage; `send` refuses to send it.
    parts.clear_display();
    parts.message_id = fit(&mut parts, n.message_id, false, |p, v| p.message_id = v);
    if !parts.fits() {
        parts.room = fit(&mut parts, n.room, false, |p, v| p.room = v);
    }
    if !parts.fits() {
        parts.token = fit(&mut parts, n.token, false, |p, v| p.token = v);
    }
    let body = parts.render();
    debug_assert!(body.len() <= MAX_PAYLOAD);
    body
}

/// Whether [`payload`] keeps `n`'s token, room and message id whole: they
/// fit even with an empty text, sender and title.
fn essentials_fit(n: &Notification) -> bool {
    let mut parts = Parts::whole(n);
    parts.clear_display();
    parts.fits()
}

/// The longest cut of `full` (at a char boundary, plus `…` if `ellipsis`)
/// with which `parts` fits, found by bisection over the cut point (the
/// rendered size grows with it); empty if none does. `set` stores a
/// candidate in `parts`.
fn fit<'a>(
    parts: &mut Parts<'a>,
    full: &'a str,
    ellipsis: bool,
    set: impl Fn(&mut Parts<'a>, Cow<'a, str>),
) -> Cow<'a, str> {
    let cut = |k: usize| -> Cow<'a, str> {
        let prefix = &full[..floor_char_boundary(full, k)];
        if ellipsis {
            Cow::Owned(format!("{prefix}{ELLIPSIS}"))
        } else {
            Cow::Borrowed(prefix)
        }
    };
    let mut fits_with = |candidate: Cow<'a, str>| {
        set(parts, candidate);
        parts.fits()
    };
    // Every byte of a field takes at least one byte of the body, so no cut
    // longer than the limit can fit.
    let mut hi = full.len().min(MAX_PAYLOAD);
    if !fits_with(cut(0)) {
        return Cow::Borrowed("");
    }
    let mut lo = 0; // invariant: cut(lo) fits; cuts past hi do not
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits_with(cut(mid)) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    cut(lo)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The `apns-collapse-id` for `room`: the room itself when it is at most
/// [`MAX_APNS_COLLAPSE_ID`] bytes, else its first (up to) 47 bytes, `~` and
/// the 16 hex digits of its 64-bit FNV-1a hash: stable across runs and
/// hosts, and 64 bytes at most.
pub fn apns_collapse_id(room: &str) -> Cow<'_, str> {
    if room.len() <= MAX_APNS_COLLAPSE_ID {
        return Cow::Borrowed(room);
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in room.as_bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let prefix = &room[..floor_char_boundary(room, MAX_APNS_COLLAPSE_ID - 17)];
    Cow::Owned(format!("{prefix}~{hash:016x}"))
}

/// What became of one push.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// FCM accepted the message.
    Sent,
    /// The device token is dead (`UNREGISTERED`, or `INVALID_ARGUMENT`
    /// naming the registration token): the caller should delete the device.
    /// The text is FCM's reason.
    DeadToken(String),
    /// Gave up: retries exhausted, authentication failed after a refresh,
    /// another 4xx, or a payload that cannot fit. The text says why.
    Failed(String),
}

/// The outcome of [`Fcm::send`] with counters a caller can add up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendReport {
    /// What became of the push.
    pub delivery: Delivery,
    /// `messages:send` requests made (0 if none could be made).
    pub attempts: u32,
    /// Backoff waits taken (each followed by another try), at most
    /// [`FcmConfig::max_retries`]. The re-authentication after a 401 is not
    /// one of them.
    pub retries: u32,
    /// Requests this call made to the token endpoint (a thread that waited
    /// for another's refresh counts none).
    pub token_refreshes: u32,
    /// Total time slept between tries.
    pub waited: Duration,
}

/// Why no access token could be had.
#[derive(Clone, Debug)]
enum TokenError {
    /// Worth retrying (transport error, 408/429/5xx), with the server's
    /// `Retry-After` if any.
    Transient(String, Option<Duration>),
    /// Not worth retrying (rejected assertion, bad answer).
    Fatal(String),
}

struct CachedToken {
    /// `"Bearer <token>"`, ready for the header.
    bearer: Arc<str>,
    refresh_at: Instant,
}

#[derive(Default)]
struct TokenState {
    current: Option<CachedToken>,
    /// A thread is fetching a token; others wait on `TokenCache::ready`.
    refreshing: bool,
    /// Incremented when a fetch ends, with `last_error` set by a failed one.
    epoch: u64,
    last_error: Option<TokenError>,
}

#[derive(Default)]
struct TokenCache {
    state: Mutex<TokenState>,
    ready: Condvar,
}

impl TokenCache {
    fn lock(&self) -> MutexGuard<'_, TokenState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached token, or a fresh one from `fetch` (which returns a token
    /// and its lifetime), or the error of the fetch another thread just
    /// made. Only one thread fetches at a time; `fetched` counts this
    /// thread's fetches.
    fn get(
        &self,
        fetch: impl FnOnce() -> Result<(String, Duration), TokenError>,
        fetched: &mut u32,
    ) -> Result<Arc<str>, TokenError> {
        let mut state = self.lock();
        loop {
            if let Some(token) = &state.current
                && Instant::now() < token.refresh_at
            {
                return Ok(token.bearer.clone());
            }
            if !state.refreshing {
                break;
            }
            let epoch = state.epoch;
            state = self
                .ready
                .wait_while(state, |s| s.refreshing)
                .unwrap_or_else(PoisonError::into_inner);
            if state.epoch != epoch
                && let Some(err) = &state.last_error
            {
                return Err(err.clone());
            }
        }
        state.refreshing = true;
        drop(state);

        // Resets `refreshing` even if `fetch` panics, so waiters never hang.
        struct Refreshing<'a>(&'a TokenCache, Option<Result<CachedToken, TokenError>>);
        impl Drop for Refreshing<'_> {
            fn drop(&mut self) {
                let mut state = self.0.lock();
                state.refreshing = false;
                state.epoch = state.epoch.wrapping_add(1);
                match self.1.take() {
                    Some(Ok(token)) => {
                        state.current = Some(token);
                        state.last_error = None;
                    }
                    Some(Err(err)) => {
                        state.current = None;
                        state.last_error = Some(err);
                    }
                    None => {
                        state.current = None;
                        state.last_error =
                            Some(TokenError::Fatal("access token refresh panicked".into()));
                    }
                }
                self.0.ready.notify_all();
            }
        }
        let mut guard = Refreshing(self, None);
        let started = Instant::now();
        *fetched += 1;
        let result = fetch().map(|(token, lifetime)| {
            let margin = TOKEN_MARGIN.min(lifetime / 2);
            CachedToken {
                bearer: Arc::from(format!("Bearer {token}")),
                refresh_at: started.checked_add(lifetime - margin).unwrap_or(started),
            }
        });
        let out = match &result {
            Ok(token) => Ok(token.bearer.clone()),
            Err(err) => Err(err.clone()),
        };
        guard.1 = Some(result);
        drop(guard);
        out
    }

    /// Forgets `bearer` after FCM refused it, unless another thread already
    /// replaced it.
    fn invalidate(&self, bearer: &Arc<str>) {
        let mut state = self.lock();
        if state
            .current
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(&t.bearer, bearer))
        {
            state.current = None;
        }
    }
}

enum Auth {
    /// `"Bearer <token>"` of a fixed access token.
    Fixed(Arc<str>),
    Account {
        account: Box<ServiceAccount>,
        cache: TokenCache,
    },
}

/// The FCM client: one keep-alive connection pool and one access-token
/// cache, shared by any number of threads (`Send + Sync`; put it in an
/// `Arc`).
pub struct Fcm {
    agent: ureq::Agent,
    send_url: String,
    auth: Auth,
    max_retries: u32,
    base_backoff: Duration,
    max_backoff: Duration,
    quota_backoff: Duration,
}

impl fmt::Debug for Fcm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fcm")
            .field("send_url", &self.send_url)
            .field(
                "auth",
                &match &self.auth {
                    Auth::Fixed(_) => "access token",
                    Auth::Account { .. } => "service account",
                },
            )
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

/// The next step of [`Fcm::send`] after one try.
enum Step {
    Done(Delivery),
    /// Try again after a backoff.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
        quota: bool,
    },
    /// Try again at once with a new access token (after a 401).
    Reauthenticate,
}

/// FCM's error answer: `{"error":{"code","message","status","details"}}`.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ApiError,
}

#[derive(Deserialize, Default)]
struct ApiError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

impl ApiError {
    /// The `errorCode` of the `google.firebase.fcm.v1.FcmError` detail.
    fn fcm_code(&self) -> Option<&str> {
        self.details
            .iter()
            .filter(|d| d["@type"] == FCM_ERROR_TYPE)
            .find_map(|d| d["errorCode"].as_str())
    }

    /// Whether this (400) error is about the registration token: the
    /// message mentions it, or a `BadRequest` field violation is on
    /// `message.token`.
    fn blames_token(&self) -> bool {
        let mentions = |s: &str| s.to_ascii_lowercase().contains("registration token");
        mentions(&self.message)
            || self
                .details
                .iter()
                .filter(|d| d["@type"] == BAD_REQUEST_TYPE)
                .filter_map(|d| d["fieldViolations"].as_array())
                .flatten()
                .any(|v| {
                    v["field"] == "message.token" || v["description"].as_str().is_some_and(mentions)
                })
    }

    /// `"STATUS (FCM code): message"` for logs and [`Delivery`] reasons.
    fn describe(&self, http: u16) -> String {
        let mut s = format!("HTTP {http}");
        if !self.status.is_empty() {
            s.push(' ');
            s.push_str(&self.status);
        }
        if let Some(code) = self.fcm_code() {
            s.push_str(&format!(" ({code})"));
        }
        if !self.message.is_empty() {
            s.push_str(": ");
            s.push_str(&self.message);
        }
        s
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
    token_type: Option<String>,
}

#[derive(Deserialize, Default)]
struct OAuthError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl Fcm {
    /// A client for `cfg`: checks it and sets up the shared agent (no
    /// network I/O yet).
    pub fn new(cfg: FcmConfig) -> Result<Fcm, FcmError> {
        let endpoint = cfg.endpoint.trim_end_matches('/');
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
            return Err(FcmError::Config(format!(
                "endpoint {endpoint:?} is not an http(s) URL"
            )));
        }
        if cfg.project.is_empty()
            || !cfg
                .project
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(FcmError::Config(format!(
                "project {:?} is not a valid project id",
                cfg.project
            )));
        }
        if cfg.timeout.is_zero() {
            return Err(FcmError::Config("timeout must be above zero".into()));
        }
        let auth = match cfg.credentials {
            Credentials::AccessToken(token) => {
                if !is_header_token(&token) {
                    return Err(FcmError::Config(
                        "access token is empty or has characters not allowed in a header".into(),
                    ));
                }
                Auth::Fixed(Arc::from(format!("Bearer {token}")))
            }
            Credentials::ServiceAccount(account) => Auth::Account {
                account: Box::new(account),
                cache: TokenCache::default(),
            },
        };
        let config = ureq::Agent::config_builder()
            // 4xx/5xx are answers to read, not errors.
            .http_status_as_error(false)
            .timeout_global(Some(cfg.timeout))
            // Never follow a redirect with a bearer token; a 3xx is Failed.
            .max_redirects(0)
            .max_idle_connections(MAX_IDLE_CONNECTIONS)
            .max_idle_connections_per_host(MAX_IDLE_CONNECTIONS)
            .max_idle_age(MAX_IDLE_AGE)
            .user_agent(concat!("stampede-fcm/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Fcm {
            agent: ureq::Agent::new_with_config(config),
            send_url: format!("{endpoint}/v1/projects/{}/messages:send", cfg.project),
            auth,
            max_retries: cfg.max_retries,
            base_backoff: cfg.base_backoff,
            max_backoff: cfg.max_backoff,
            quota_backoff: cfg.quota_backoff,
        })
    }

    /// Sends one push, with FCM's documented error handling (see the module
    /// doc); blocks, sleeping between retries. Never panics on a bad answer.
    pub fn send(&self, n: &Notification) -> SendReport {
        let mut report = SendReport {
            delivery: Delivery::Sent,
            attempts: 0,
            retries: 0,
            token_refreshes: 0,
            waited: Duration::ZERO,
        };
        if !essentials_fit(n) {
            report.delivery = Delivery::Failed(format!(
                "notification does not fit in {MAX_PAYLOAD} bytes even without text, sender and title"
            ));
            tracing::warn!(
                room = n.room,
                seq = n.seq,
                "FCM push not sent: token, room or message id too long"
            );
            return report;
        }
        let body = payload(n);
        let mut reauthenticated = false;
        loop {
            match self.try_once(&body, &mut report, &mut reauthenticated) {
                Step::Done(delivery) => {
                    match &delivery {
                        Delivery::Sent => {}
                        Delivery::DeadToken(why) => {
                            tracing::debug!(room = n.room, seq = n.seq, reason = %why, "FCM: dead device token");
                        }
                        Delivery::Failed(why) => {
                            tracing::warn!(room = n.room, seq = n.seq, attempts = report.attempts, reason = %why, "FCM push failed");
                        }
                    }
                    report.delivery = delivery;
                    return report;
                }
                Step::Reauthenticate => {
                    tracing::debug!("FCM answered 401: fetching a new access token");
                }
                Step::Retry {
                    reason,
                    retry_after,
                    quota,
                } => {
                    if report.retries >= self.max_retries {
                        let why = format!("{reason} (gave up after {} retries)", report.retries);
                        tracing::warn!(room = n.room, seq = n.seq, attempts = report.attempts, reason = %why, "FCM push failed");
                        report.delivery = Delivery::Failed(why);
                        return report;
                    }
                    report.retries += 1;
                    let wait = self.backoff(report.retries, retry_after, quota);
                    tracing::debug!(retry = report.retries, wait_ms = wait.as_millis() as u64, reason = %reason, "FCM: retrying");
                    std::thread::sleep(wait);
                    report.waited += wait;
                }
            }
        }
    }

    /// One try: get a token, post, classify the answer.
    fn try_once(&self, body: &[u8], report: &mut SendReport, reauthenticated: &mut bool) -> Step {
        let bearer = match self.bearer(&mut report.token_refreshes) {
            Ok(b) => b,
            Err(TokenError::Transient(reason, retry_after)) => {
                return Step::Retry {
                    reason: format!("access token: {reason}"),
                    retry_after,
                    quota: false,
                };
            }
            Err(TokenError::Fatal(reason)) => {
                return Step::Done(Delivery::Failed(format!("access token: {reason}")));
            }
        };
        report.attempts += 1;
        let answer = self
            .agent
            .post(&self.send_url)
            .header("authorization", &*bearer)
            .header("content-type", "application/json; charset=utf-8")
            .send(body)
            .and_then(read_answer);
        let (status, retry_after, answer) = match answer {
            Ok(a) => a,
            Err(e) if transport_retryable(&e) => {
                return Step::Retry {
                    reason: format!("transport: {e}"),
                    retry_after: None,
                    quota: false,
                };
            }
            Err(e) => return Step::Done(Delivery::Failed(format!("request: {e}"))),
        };
        if (200..300).contains(&status) {
            return Step::Done(Delivery::Sent);
        }
        let parsed = serde_json::from_slice::<ErrorBody>(&answer).ok();
        let error = parsed.map(|b| b.error).unwrap_or_default();
        let what = if error.status.is_empty() && error.message.is_empty() {
            format!("HTTP {status} (no FCM error body)")
        } else {
            error.describe(status)
        };
        if error.fcm_code() == Some("UNREGISTERED") {
            return Step::Done(Delivery::DeadToken("UNREGISTERED".into()));
        }
        match status {
            400 if error.blames_token() => {
                Step::Done(Delivery::DeadToken(if error.message.is_empty() {
                    "INVALID_ARGUMENT: registration token".into()
                } else {
                    format!("INVALID_ARGUMENT: {}", error.message)
                }))
            }
            401 if error.fcm_code() == Some("THIRD_PARTY_AUTH_ERROR") => {
                Step::Done(Delivery::Failed(what))
            }
            401 => match &self.auth {
                Auth::Account { cache, .. } if !*reauthenticated => {
                    *reauthenticated = true;
                    cache.invalidate(&bearer);
                    Step::Reauthenticate
                }
                Auth::Account { .. } => Step::Done(Delivery::Failed(format!(
                    "{what} (again, with a fresh access token)"
                ))),
                Auth::Fixed(_) => Step::Done(Delivery::Failed(what)),
            },
            408 | 429 | 500..=599 => Step::Retry {
                reason: what,
                retry_after,
                quota: status == 429,
            },
            _ => Step::Done(Delivery::Failed(what)),
        }
    }

    /// The `Authorization` value to use now, fetching a token if needed.
    fn bearer(&self, fetched: &mut u32) -> Result<Arc<str>, TokenError> {
        match &self.auth {
            Auth::Fixed(bearer) => Ok(bearer.clone()),
            Auth::Account { account, cache } => cache.get(|| self.fetch_token(account), fetched),
        }
    }

    /// Exchanges a fresh assertion for an access token and its lifetime.
    fn fetch_token(&self, account: &ServiceAccount) -> Result<(String, Duration), TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let assertion = account
            .assertion(now)
            .map_err(|e| TokenError::Fatal(format!("signing the assertion: {e}")))?;
        let answer = self
            .agent
            .post(&account.token_uri)
            .send_form([("grant_type", GRANT_TYPE_JWT), ("assertion", &assertion)])
            .and_then(read_answer);
        let (status, retry_after, body) = match answer {
            Ok(a) => a,
            Err(e) if transport_retryable(&e) => {
                return Err(TokenError::Transient(format!("transport: {e}"), None));
            }
            Err(e) => return Err(TokenError::Fatal(format!("request: {e}"))),
        };
        if !(200..300).contains(&status) {
            let err: OAuthError = serde_json::from_slice(&body).unwrap_or_default();
            let why = format!(
                "token endpoint answered HTTP {status} {} {}",
                err.error, err.error_description
            );
            let why = why.trim_end().to_owned();
            tracing::warn!(client_email = %account.client_email, reason = %why, "FCM access token refresh failed");
            return Err(match status {
                408 | 429 | 500..=599 => TokenError::Transient(why, retry_after),
                _ => TokenError::Fatal(why),
            });
        }
        let token: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| TokenError::Fatal(format!("token endpoint answer: {e}")))?;
        if let Some(kind) = &token.token_type
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(TokenError::Fatal(format!(
                "token endpoint gave a {kind:?} token, expected Bearer"
            )));
        }
        if !is_header_token(&token.access_token) {
            return Err(TokenError::Fatal(
                "token endpoint gave an empty or malformed access token".into(),
            ));
        }
        // Never trust a token for longer than the assertion asked for.
        let lifetime = Duration::from_secs(
            token
                .expires_in
                .unwrap_or(ASSERTION_LIFETIME)
                .min(ASSERTION_LIFETIME),
        );
        tracing::debug!(client_email = %account.client_email, expires_in_s = lifetime.as_secs(), "FCM access token refreshed");
        Ok((token.access_token, lifetime))
    }

    /// The wait before retry number `retry` (1-based).
    fn backoff(&self, retry: u32, retry_after: Option<Duration>, quota: bool) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        let ceiling = self
            .base_backoff
            .saturating_mul(factor)
            .min(self.max_backoff);
        let ceiling_ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let jittered = Duration::from_nanos(fastrand::u64(0..=ceiling_ns));
        let floor = retry_after
            .or(quota.then_some(self.quota_backoff))
            .unwrap_or_default();
        jittered.max(floor).min(self.max_backoff)
    }
}

/// An answer's status, `Retry-After` and body. The body is read whole (up
/// to [`MAX_RESPONSE_BODY`]) so the connection can go back to the pool.
fn read_answer(
    mut r: ureq::http::Response<ureq::Body>,
) -> Result<(u16, Option<Duration>, Vec<u8>), ureq::Error> {
    let retry_after = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let body = r
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_BODY)
        .read_to_vec()?;
    Ok((r.status().as_u16(), retry_after, body))
}

/// Whether a ureq error may go away on a retry (I/O, timeouts, DNS, TLS,
/// protocol) rather than being a fault of the request itself.
fn transport_retryable(e: &ureq::Error) -> bool {
    !matches!(
        e,
        ureq::Error::BadUri(_)
            | ureq::Error::Http(_)
            | ureq::Error::RequireHttpsOnly(_)
            | ureq::Error::InvalidProxyUrl
            | ureq::Error::RedirectFailed
            | ureq::Error::TooManyRedirects
            | ureq::Error::BodyExceedsLimit(_)
    )
}

/// A non-empty run of visible ASCII: usable after `Bearer ` in a header.
fn is_header_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

/// A `Retry-After` value: delta-seconds, or an IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`) taken relative to `now` (zero if it is
/// past). Other forms give `None`.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_http_date(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the epoch of an IMF-fixdate.
fn parse_http_date(s: &str) -> Option<u64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let (_, rest) = s.split_once(", ")?;
    let mut it = rest.split(' ');
    let day: u64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let mut hms = it.next()?.split(':');
    let h: u64 = hms.next()?.parse().ok()?;
    let m: u64 = hms.next()?.parse().ok()?;
    let sec: u64 = hms.next()?.parse().ok()?;
    if it.next()? != "GMT" || it.next().is_some() || hms.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + (h * 3600 + m * 60 + sec) as i64;
    u64::try_from(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};

    // TEST-ONLY key pair, generated for these tests and used nowhere else.
    // Never use it for anything real.
    const TEST_PRIVATE_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCo0Tpsk58vlkMB
9vhyOUfEtfPgbhKRhdRnJBnw+AtNZ3UOuJ1ozp4vSnyA+Z8J6I3ndPImMLg0q7WV
0avXSqmHSO5mZUdXc2FBZ7qQ9WVGLRX9YpILnTMdJKrjg7CL249aG+XBw2dcvMNA
4RyILyW3zA9PSPv7Of6PHSi8Z1P1snagbuLREgQrmWdv/oaOryH/T1Vzzm3LzxK2
DmV8mi+VwQzhpCkfuRFgMQ+ZFCHNHlLUU1a9Ak077nxB7bfPQLETVL2aLUZbhlk5
1Z9K2sic+xrNX2Cri5qost2YGxTr8b7gv9v0l6xBrr+BIA9xN9VKLOJpi3HNrCw6
3PKJjeYhAgMBAAECggEAAiYC/PPPAtqwpGYlOkQx8sqE19iSalWp8W4B8Pc4//cH
oTGVQC2moq6UHTN15yHEEjSOYb+i2OJlAz9Ew8MPD8c63DkpbrTgDRq/pcIMTkB+
JDhLFvFuhXEuADnCTo5ziYhXIeKBMBlA0HF/5YcqcgSKB50g1Xu0Zhm9vjrRa8CJ
SI8J8CS8zYmGsBK4zlypc7R1zXdPorU3pbGNgmvChWOpdji4am5tpUyv9HDIZ4Vf
hzf+bR37OxN4pee1K60ndZDHjr+hF/Gg6ymXiUsAH2p8/eYfGpcxM/hOaUVBEcis
uFl/Ah2j9bmiNwNviS/1FCO+gmDFc0y+Xt7CjlAJrQKBgQDa8HFee/EJmLpc4OKT
F+IcsrnHKYBg3VfsRBSGvP5I8F4t+zi3r6OfYcvbN3HPEn/XJZgp9nbD78ng2bFz
A8Vfwf4yu+kCMfteo8Br/Y6pBS7U0lhKArR+hNowQcJIgSt4X4bB81xXfzgfeNT5
TD/+NuBD+ZKyWN1xv4FaBlTuBQKBgQDFZMqWq+FQfERLMzDNsWgB4xcbCHRfHO05
Eda78OSj3TK6frSTYjjfObuXBRlBza6d4ICzxP1tB0JRQH2QzWs+9ckvQxr4Tq7T
wQrvGe5jrFeT7SrKA/vxJ6/n6pIlT26DaKpFBG4HJ5wYjDZ3GnGk8kZp5qkFFFu0
BbjQOAm2bQKBgQDCBIOixFkFNRgpyIxg57BT2Dpz+R4wONZ6pJZAFOmO/5umSdOo
S/jG/CZoXMj5RR6PLVycCzKSTkPrg18SWowlYMeAdC93540oABs8V9V9iP9IUCM3
axBCcj7cttmR4Q4BvT2xUJVLYIz+rtilF+I5yK2S728Fp2SOMbRSb/wBdQKBgCFG
pIBR6WHQERM8RfXm+kmXJsX/3t5J2hPM1g5IxcJ5/5tA0OAnpr661MzYpzFYox8q
QYgMpUxD9QINhR1sA7BRbuDwxxMk8IPx/w3fqThUTU86pAP6N/anYhgOiySPB2pP
sqR/4qyCGOZqfKQHaTENRqGDqOqaS/tFG6q+R6ThAoGAbtjwx2/zwAP0ZXtl882R
iAEkOvuXcyI6DNgld6EM2YlvS5gImlxEjksVf1e7lPlB+wbB0fsVBFQicds42pVL
KcBwlqKIDzkjJ34rj3iPMWI8LLnoETIpEvKL1iNQHkxGwdqhT5JHVYXIGCadaim9
jZbwpZ+9UL6zeM2lt+gs7eg=
-----END PRIVATE KEY-----
";
    const TEST_PUBLIC_KEY_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAqNE6bJOfL5ZDAfb4cjlH
xLXz4G4SkYXUZyQZ8PgLTWd1DridaM6eL0p8gPmfCeiN53TyJjC4NKu1ldGr10qp
h0juZmVHV3NhQWe6kPVlRi0V/WKSC50zHSSq44Owi9uPWhvlwcNnXLzDQOEciC8l
t8wPT0j7+zn+jx0ovGdT9bJ2oG7i0RIEK5lnb/6Gjq8h/09Vc85ty88Stg5lfJov
lcEM4aQpH7kRYDEPmRQhzR5S1FNWvQJNO+58Qe23z0CxE1S9mi1GW4ZZOdWfStrI
nPsazV9gq4uaqLLdmBsU6/G+4L/b9JesQa6/gSAPcTfVSiziaYtxzawsOtzyiY3m
IQIDAQAB
-----END PUBLIC KEY-----
";

    const PROJECT: &str = "demo-project";
    const SEND_PATH: &str = "/v1/projects/demo-project/messages:send";

    // ---- a tiny scripted HTTP/1.1 server -------------------------------

    #[derive(Clone, Debug)]
    struct Req {
        method: String,
        path: String,
        headers: HashMap<String, String>,
        body: Vec<u8>,
    }

    impl Req {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).map(String::as_str)
        }
    }

    struct Resp {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    }

    fn resp(status: u16, body: &str) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }

    struct Server {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<Req>>>,
    }

    impl Server {
        /// Serves `handler` on 127.0.0.1 until the test process ends.
        fn start(handler: impl Fn(&Req) -> Resp + Send + Sync + 'static) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let connections = Arc::new(AtomicUsize::new(0));
            let requests = Arc::new(Mutex::new(Vec::new()));
            let handler = Arc::new(handler);
            let (conns, reqs) = (connections.clone(), requests.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    conns.fetch_add(1, Ordering::SeqCst);
                    let (handler, reqs) = (handler.clone(), reqs.clone());
                    std::thread::spawn(move || {
                        let _ = serve_connection(stream, &*handler, &reqs);
                    });
                }
            });
            Server {
                addr,
                connections,
                requests,
            }
        }

        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        fn requests_to(&self, path: &str) -> Vec<Req> {
            let all = self.requests.lock().unwrap();
            all.iter().filter(|r| r.path == path).cloned().collect()
        }
    }

    fn serve_connection(
        stream: TcpStream,
        handler: &dyn Fn(&Req) -> Resp,
        requests: &Mutex<Vec<Req>>,
    ) -> std::io::Result<()> {
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(()); // client closed: keep-alive ends
            }
            let mut words = line.split_whitespace();
            let method = words.next().unwrap_or_default().to_owned();
            let path = words.next().unwrap_or_default().to_owned();
            let mut headers = HashMap::new();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h)?;
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                }
            }
            let len = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            reader.read_exact(&mut body)?;
            let req = Req {
                method,
                path,
                headers,
                body,
            };
            requests.lock().unwrap().push(req.clone());
            let r = handler(&req);
            let mut out = format!(
                "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                r.status,
                r.body.len()
            );
            for (k, v) in &r.headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            out.push_str(&r.body);
            writer.write_all(out.as_bytes())?;
            writer.flush()?;
        }
    }

    // ---- helpers ----------------------------------------------------------

    fn note() -> Notification<'static> {
        Notification {
            token: "device-token-1",
            room: "general",
            seq: 42,
            message_id: "m-42",
            sender: "alice",
            text: "hello \"world\"",
        }
    }

    fn config(endpoint: String, credentials: Credentials) -> FcmConfig {
        FcmConfig {
            endpoint,
            project: PROJECT.into(),
            credentials,
            timeout: Duration::from_secs(2),
            max_retries: 3,
            base_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(100),
            quota_backoff: Duration::from_millis(10),
        }
    }

    fn fixed(endpoint: String) -> FcmConfig {
        config(
            endpoint,
            Credentials::AccessToken("fixed-access-token".into()),
        )
    }

    fn service_account_json(token_uri: &str) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "test-key-1",
            "private_key": TEST_PRIVATE_KEY_PEM,
            "client_email": "pusher@demo-project.iam.gserviceaccount.com",
            "client_id": "1234",
            "token_uri": token_uri,
        })
        .to_string()
    }

    fn account(server: &Server) -> Credentials {
        let json = service_account_json(&format!("{}/token", server.url()));
        Credentials::ServiceAccount(ServiceAccount::from_json(&json).unwrap())
    }

    fn fcm_error(code: u16, status: &str, fcm_code: &str, message: &str) -> String {
        serde_json::json!({"error": {
            "code": code, "message": message, "status": status,
            "details": [{"@type": FCM_ERROR_TYPE, "errorCode": fcm_code}],
        }})
        .to_string()
    }

    fn form_value(body: &[u8], key: &str) -> Option<String> {
        let body = std::str::from_utf8(body).ok()?;
        body.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == key).then(|| crate::ws::handshake::percent_decode(v))
        })
    }

    #[derive(Debug, Deserialize)]
    struct SeenClaims {
        iss: String,
        scope: String,
        aud: String,
        iat: u64,
        exp: u64,
    }

    /// A token endpoint that checks the assertion with the test public key
    /// and answers `access-N` for the N-th request (1-based), `expires_in`.
    fn token_endpoint(
        req: &Req,
        counter: &AtomicUsize,
        seen: &Mutex<Vec<SeenClaims>>,
        token_uri: &str,
        expires_in: u64,
    ) -> Resp {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if form_value(&req.body, "grant_type").as_deref() != Some(GRANT_TYPE_JWT) {
            return resp(400, r#"{"error":"unsupported_grant_type"}"#);
        }
        let assertion = form_value(&req.body, "assertion").unwrap_or_default();
        let key = jsonwebtoken::DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY_PEM.as_bytes()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_audience(&[token_uri]);
        match jsonwebtoken::decode::<SeenClaims>(&assertion, &key, &validation) {
            Ok(data) => {
                assert_eq!(data.header.kid.as_deref(), Some("test-key-1"));
                seen.lock().unwrap().push(data.claims);
                resp(
                    200,
                    &format!(
                        r#"{{"access_token":"access-{n}","expires_in":{expires_in},"token_type":"Bearer"}}"#
                    ),
                )
            }
            Err(e) => resp(
                400,
                &format!(r#"{{"error":"invalid_grant","error_description":"{e}"}}"#),
            ),
        }
    }

    // ---- payload ------------------------------------------------------------

    fn parse(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).expect("payload is JSON")
    }

    #[test]
    fn payload_has_the_documented_shape() {
        let body = payload(&note());
        let v = parse(&body);
        assert_eq!(
            v,
            serde_json::json!({"message": {
                "token": "device-token-1",
                "notification": {"title": "general", "body": "hello \"world\""},
                "data": {"room": "general", "seq": "42", "message_id": "m-42", "sender": "alice"},
                "android": {"collapse_key": "general"},
                "apns": {"headers": {"apns-collapse-id": "general"}},
            }})
        );
        // Every data value is a string.
        for (_, value) in v["message"]["data"].as_object().unwrap() {
            assert!(value.is_string());
        }
    }

    fn text_of(body: &[u8]) -> String {
        parse(body)["message"]["notification"]["body"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn payload_cut_exactly_at_the_limit() {
        let empty = payload(&Notification { text: "", ..note() }).len();
        let exact = "a".repeat(MAX_PAYLOAD - empty);
        let body = payload(&Notification {
            text: &exact,
            ..note()
        });
        assert_eq!(body.len(), MAX_PAYLOAD);
        assert_eq!(text_of(&body), exact, "a text that just fits is not cut");

        let over = "a".repeat(MAX_PAYLOAD - empty + 1);
        let body = payload(&Notification {
            text: &over,
            ..note()
        });
        assert_eq!(body.len(), MAX_PAYLOAD, "ASCII cut fills the limit");
        let text = text_of(&body);
        assert!(text.ends_with(ELLIPSIS));
        assert!(over.starts_with(text.trim_end_matches(ELLIPSIS)));
    }

    #[test]
    fn payload_cuts_long_multibyte_and_escaped_text() {
        let long_texts = [
            "é".repeat(10_000),
            "😀".repeat(5_000),
            "a😀é\u{1}\"\\\n".repeat(3_000),
            "\u{1}".repeat(5_000),
            format!("x{}", "€".repeat(2_000)),
        ];
        for text in &long_texts {
            let n = Notification { text, ..note() };
            assert!(essentials_fit(&n));
            let body = payload(&n);
            assert!(body.len() <= MAX_PAYLOAD, "{}", body.len());
            // Maximal: one more character (≤ 6 bytes escaped) would not fit.
            assert!(body.len() > MAX_PAYLOAD - 6, "{}", body.len());
            let cut = text_of(&body);
            assert!(cut.ends_with(ELLIPSIS));
            assert!(text.starts_with(cut.trim_end_matches(ELLIPSIS)));
            // The rest is intact.
            let v = parse(&body);
            assert_eq!(v["message"]["data"]["sender"], "alice");
            assert_eq!(v["message"]["notification"]["title"], "general");
        }
    }

    #[test]
    fn payload_cuts_the_sender_when_even_no_text_fits() {
        let sender = "ß".repeat(3_000);
        let body = payload(&Notification {
            sender: &sender,
            text: "some text",
            ..note()
        });
        assert!(body.len() <= MAX_PAYLOAD);
        let v = parse(&body);
        assert_eq!(v["message"]["notification"]["body"], ELLIPSIS);
        let cut = v["message"]["data"]["sender"].as_str().unwrap();
        assert!(cut.ends_with(ELLIPSIS) && cut.len() > 3_000);
        assert!(sender.starts_with(cut.trim_end_matches(ELLIPSIS)));
        assert_eq!(v["message"]["data"]["room"], "general");
    }

    #[test]
    fn payload_stays_bounded_for_garbage_and_send_refuses_it() {
        let huge = "t".repeat(10_000);
        let room = "r".repeat(3_000);
        let cases = [
            Notification {
                token: &huge,
                ..note()
            },
            Notification {
                message_id: &huge,
                sender: &huge,
                text: &huge,
                ..note()
            },
            Notification {
                room: &room,
                message_id: &huge,
                token: &huge,
                sender: &huge,
                text: &huge,
                ..note()
            },
        ];
        let fcm = Fcm::new(fixed("http://127.0.0.1:9".into())).unwrap();
        for n in &cases {
            let body = payload(n);
            assert!(body.len() <= MAX_PAYLOAD);
            assert!(!essentials_fit(n));
            parse(&body);
            let report = fcm.send(n);
            assert!(matches!(report.delivery, Delivery::Failed(_)), "{report:?}");
            assert_eq!(report.attempts, 0);
        }
    }

    #[test]
    fn apns_collapse_id_is_bounded_and_stable() {
        assert_eq!(apns_collapse_id("general"), "general");
        let exactly = "x".repeat(MAX_APNS_COLLAPSE_ID);
        assert_eq!(apns_collapse_id(&exactly), exactly);
        let long = "ü".repeat(100);
        let id = apns_collapse_id(&long);
        assert!(id.len() <= MAX_APNS_COLLAPSE_ID);
        assert_eq!(id, apns_collapse_id(&long), "stable");
        let other = format!("{long}!");
        assert_ne!(id, apns_collapse_id(&other), "distinct rooms, distinct ids");
        // FNV-1a 64 of "a"×65 is fixed forever.
        let a65 = "a".repeat(65);
        let id = apns_collapse_id(&a65);
        assert_eq!(id.len(), MAX_APNS_COLLAPSE_ID);
        assert!(id.starts_with(&"a".repeat(47)));
        let body = payload(&Notification {
            room: &long,
            ..note()
        });
        let v = parse(&body);
        assert_eq!(
            v["message"]["apns"]["headers"]["apns-collapse-id"],
            *apns_collapse_id(&long)
        );
        assert_eq!(v["message"]["android"]["collapse_key"], *long);
    }

    // ---- service account ----------------------------------------------------

    #[test]
    fn service_account_parses_and_hides_its_key() {
        let sa =
            ServiceAccount::from_json(&service_account_json("https://example.test/token")).unwrap();
        assert_eq!(sa.project_id, PROJECT);
        assert_eq!(
            sa.client_email,
            "pusher@demo-project.iam.gserviceaccount.com"
        );
        assert_eq!(sa.token_uri, "https://example.test/token");
        assert_eq!(sa.key_id.as_deref(), Some("test-key-1"));
        let debug = format!("{:?}", Credentials::ServiceAccount(sa.clone()));
        assert!(
            debug.contains("<redacted>") && !debug.contains("PRIVATE KEY"),
            "{debug}"
        );
        let debug = format!("{:?}", Credentials::AccessToken("secret-xyz".into()));
        assert!(!debug.contains("secret-xyz"));

        // token_uri defaults; missing/bad key and wrong type are errors.
        let mut v: serde_json::Value = serde_json::from_str(&service_account_json("x")).unwrap();
        v.as_object_mut().unwrap().remove("token_uri");
        let sa = ServiceAccount::from_json(&v.to_string()).unwrap();
        assert_eq!(sa.token_uri, DEFAULT_TOKEN_URI);
        v["private_key"] = "-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n".into();
        assert!(matches!(
            ServiceAccount::from_json(&v.to_string()),
            Err(FcmError::Key(_))
        ));
        v.as_object_mut().unwrap().remove("private_key");
        assert!(matches!(
            ServiceAccount::from_json(&v.to_string()),
            Err(FcmError::Json(_))
        ));
        let mut v: serde_json::Value = serde_json::from_str(&service_account_json("x")).unwrap();
        v["type"] = "authorized_user".into();
        assert!(matches!(
            ServiceAccount::from_json(&v.to_string()),
            Err(FcmError::Config(_))
        ));

        let path = std::env::temp_dir().join(format!("fcm-sa-{}.json", std::process::id()));
        std::fs::write(&path, service_account_json("https://example.test/token")).unwrap();
        assert_eq!(
            ServiceAccount::from_file(&path).unwrap().project_id,
            PROJECT
        );
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            ServiceAccount::from_file(&path),
            Err(FcmError::Read { .. })
        ));
    }

    #[test]
    fn config_is_checked() {
        assert!(
            Fcm::new(FcmConfig::default()).is_err(),
            "no project, no token"
        );
        let defaults = FcmConfig {
            project: PROJECT.into(),
            credentials: Credentials::AccessToken("t".into()),
            ..FcmConfig::default()
        };
        assert_eq!(defaults.endpoint, DEFAULT_ENDPOINT);
        assert_eq!(defaults.timeout, Duration::from_secs(10));
        assert_eq!(defaults.max_retries, 5);
        assert_eq!(defaults.max_backoff, Duration::from_secs(60));
        assert!(Fcm::new(defaults).is_ok());
        let ok = fixed("http://127.0.0.1:1/".into());
        let fcm = Fcm::new(ok.clone()).unwrap();
        assert_eq!(
            fcm.send_url,
            format!("http://127.0.0.1:1{SEND_PATH}"),
            "trailing / ignored"
        );
        assert!(
            Fcm::new(FcmConfig {
                endpoint: "ftp://x".into(),
                ..ok.clone()
            })
            .is_err()
        );
        assert!(
            Fcm::new(FcmConfig {
                project: "a/b".into(),
                ..ok.clone()
            })
            .is_err()
        );
        assert!(
            Fcm::new(FcmConfig {
                timeout: Duration::ZERO,
                ..ok.clone()
            })
            .is_err()
        );
        assert!(
            Fcm::new(FcmConfig {
                credentials: Credentials::AccessToken("bad\ntoken".into()),
                ..ok
            })
            .is_err()
        );
        fn shared<T: Send + Sync>() {}
        shared::<Fcm>();
    }

    // ---- sending ----------------------------------------------------------

    #[test]
    fn service_account_token_is_fetched_cached_and_used() {
        let tokens = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let token_uri = Arc::new(Mutex::new(String::new()));
        let (t, s, u) = (tokens.clone(), seen.clone(), token_uri.clone());
        let server = Server::start(move |req| match req.path.as_str() {
            "/token" => token_endpoint(req, &t, &s, &u.lock().unwrap(), 3600),
            SEND_PATH => resp(200, r#"{"name":"projects/demo-project/messages/1"}"#),
            _ => resp(404, "{}"),
        });
        *token_uri.lock().unwrap() = format!("{}/token", server.url());
        let fcm = Fcm::new(config(server.url(), account(&server))).unwrap();

        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        for i in 0..3 {
            let report = fcm.send(&note());
            assert_eq!(report.delivery, Delivery::Sent);
            assert_eq!(report.attempts, 1);
            assert_eq!(report.retries, 0);
            assert_eq!(report.token_refreshes, u32::from(i == 0));
        }
        assert_eq!(
            tokens.load(Ordering::SeqCst),
            1,
            "token cached across sends"
        );
        let claims = seen.lock().unwrap();
        assert_eq!(claims.len(), 1);
        let c = &claims[0];
        assert_eq!(c.iss, "pusher@demo-project.iam.gserviceaccount.com");
        assert_eq!(c.scope, FCM_SCOPE);
        assert_eq!(c.aud, *token_uri.lock().unwrap());
        assert!(c.iat >= before && c.iat <= before + 5);
        assert_eq!(c.exp, c.iat + 3600);

        let sends = server.requests_to(SEND_PATH);
        assert_eq!(sends.len(), 3);
        for r in &sends {
            assert_eq!(r.method, "POST");
            assert_eq!(r.header("authorization"), Some("Bearer access-1"));
            assert_eq!(
                r.header("content-type"),
                Some("application/json; charset=utf-8")
            );
            assert_eq!(r.body, payload(&note()));
        }
        let token_req = &server.requests_to("/token")[0];
        assert_eq!(
            token_req.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            server.connections.load(Ordering::SeqCst),
            1,
            "one kept-alive connection for token and sends"
        );
    }

    #[test]
    fn concurrent_senders_share_one_refresh() {
        let tokens = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let token_uri = Arc::new(Mutex::new(String::new()));
        let (t, s, u) = (tokens.clone(), seen.clone(), token_uri.clone());
        let server = Server::start(move |req| match req.path.as_str() {
            "/token" => {
                std::thread::sleep(Duration::from_millis(200));
                token_endpoint(req, &t, &s, &u.lock().unwrap(), 3600)
            }
            _ => resp(200, "{}"),
        });
        *token_uri.lock().unwrap() = format!("{}/token", server.url());
        let fcm = Arc::new(Fcm::new(config(server.url(), account(&server))).unwrap());
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let fcm = fcm.clone();
                std::thread::spawn(move || fcm.send(&note()))
            })
            .collect();
        let reports: Vec<SendReport> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(reports.iter().all(|r| r.delivery == Delivery::Sent));
        assert_eq!(tokens.load(Ordering::SeqCst), 1);
        assert_eq!(reports.iter().map(|r| r.token_refreshes).sum::<u32>(), 1);
    }

    #[test]
    fn short_lived_tokens_are_refreshed() {
        let tokens = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let token_uri = Arc::new(Mutex::new(String::new()));
        let (t, s, u) = (tokens.clone(), seen.clone(), token_uri.clone());
        let server = Server::start(move |req| match req.path.as_str() {
            // expires_in 0: the cache keeps it for no time at all.
            "/token" => token_endpoint(req, &t, &s, &u.lock().unwrap(), 0),
            _ => resp(200, "{}"),
        });
        *token_uri.lock().unwrap() = format!("{}/token", server.url());
        let fcm = Fcm::new(config(server.url(), account(&server))).unwrap();
        assert_eq!(fcm.send(&note()).delivery, Delivery::Sent);
        assert_eq!(fcm.send(&note()).delivery, Delivery::Sent);
        assert_eq!(tokens.load(Ordering::SeqCst), 2);
        let auths: Vec<_> = server
            .requests_to(SEND_PATH)
            .iter()
            .map(|r| r.header("authorization").unwrap().to_owned())
            .collect();
        assert_eq!(auths, ["Bearer access-1", "Bearer access-2"]);
    }

    /// A server whose token endpoint mints `access-N` and whose send
    /// endpoint answers with `send(attempt, &req)` (attempt is 1-based).
    fn scripted(
        send: impl Fn(usize, &Req) -> Resp + Send + Sync + 'static,
    ) -> (Server, Arc<AtomicUsize>) {
        let tokens = Arc::new(AtomicUsize::new(0));
        let sends = AtomicUsize::new(0);
        let t = tokens.clone();
        let server = Server::start(move |req| match req.path.as_str() {
            "/token" => {
                let n = t.fetch_add(1, Ordering::SeqCst) + 1;
                resp(
                    200,
                    &format!(r#"{{"access_token":"access-{n}","expires_in":3600}}"#),
                )
            }
            _ => send(sends.fetch_add(1, Ordering::SeqCst) + 1, req),
        });
        (server, tokens)
    }

    #[test]
    fn unauthorized_refreshes_the_token_once() {
        let (server, tokens) = scripted(|attempt, _| {
            if attempt == 1 {
                resp(
                    401,
                    &fcm_error(
                        401,
                        "UNAUTHENTICATED",
                        "UNAUTHENTICATED",
                        "Request had invalid authentication credentials.",
                    ),
                )
            } else {
                resp(200, "{}")
            }
        });
        let fcm = Fcm::new(config(server.url(), account(&server))).unwrap();
        let report = fcm.send(&note());
        assert_eq!(report.delivery, Delivery::Sent);
        assert_eq!(
            (report.attempts, report.retries, report.token_refreshes),
            (2, 0, 2)
        );
        assert_eq!(tokens.load(Ordering::SeqCst), 2);
        let auths: Vec<_> = server
            .requests_to(SEND_PATH)
            .iter()
            .map(|r| r.header("authorization").unwrap().to_owned())
            .collect();
        assert_eq!(auths, ["Bearer access-1", "Bearer access-2"]);
    }

    #[test]
    fn unauthorized_twice_fails() {
        let (server, tokens) = scripted(|_, _| {
            resp(
                401,
                &fcm_error(401, "UNAUTHENTICATED", "UNAUTHENTICATED", "nope"),
            )
        });
        let fcm = Fcm::new(config(server.url(), account(&server))).unwrap();
        let report = fcm.send(&note());
        assert!(
            matches!(&report.delivery, Delivery::Failed(why) if why.contains("401")),
            "{report:?}"
        );
        assert_eq!((report.attempts, report.retries), (2, 0));
        assert_eq!(tokens.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn unauthorized_with_a_fixed_token_or_third_party_auth_fails_at_once() {
        let (server, _) = scripted(|_, _| {
            resp(
                401,
                &fcm_error(401, "UNAUTHENTICATED", "UNAUTHENTICATED", "nope"),
            )
        });
        let report = Fcm::new(fixed(server.url())).unwrap().send(&note());
        assert!(matches!(report.delivery, Delivery::Failed(_)));
        assert_eq!(report.attempts, 1);

        let (server, tokens) = scripted(|_, _| {
            resp(
                401,
                &fcm_error(
                    401,
                    "UNAUTHENTICATED",
                    "THIRD_PARTY_AUTH_ERROR",
                    "APNs certificate invalid",
                ),
            )
        });
        let report = Fcm::new(config(server.url(), account(&server)))
            .unwrap()
            .send(&note());
        assert!(
            matches!(&report.delivery, Delivery::Failed(why) if why.contains("THIRD_PARTY_AUTH_ERROR"))
        );
        assert_eq!(report.attempts, 1);
        assert_eq!(tokens.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn unregistered_is_a_dead_token() {
        let (server, _) = scripted(|_, _| {
            resp(
                404,
                &fcm_error(
                    404,
                    "NOT_FOUND",
                    "UNREGISTERED",
                    "Requested entity was not found.",
                ),
            )
        });
        let report = Fcm::new(fixed(server.url())).unwrap().send(&note());
        assert_eq!(report.delivery, Delivery::DeadToken("UNREGISTERED".into()));
        assert_eq!((report.attempts, report.retries), (1, 0));
    }

    #[test]
    fn a_404_without_unregistered_never_kills_the_token() {
        let (server, _) = scripted(|_, _| resp(404, "<html>Not Found</html>"));
        let report = Fcm::new(fixed(server.url())).unwrap().send(&note());
        assert!(matches!(report.delivery, Delivery::Failed(_)), "{report:?}");
    }

    #[test]
    fn invalid_registration_token_is_dead_but_other_400s_fail() {
        // As in FCM's documented example.
        let (server, _) = scripted(|_, _| {
            resp(
                400,
                &fcm_error(
                    400,
                    "INVALID_ARGUMENT",
                    "INVALID_ARGUMENT",
                    "The registration token is not a valid FCM registration token",
                ),
            )
        });
        let report = Fcm::new(fixed(server.url())).unwrap().send(&note());
        assert!(
            matches!(&report.delivery, Delivery::DeadToken(why) if why.contains("registration token")),
            "{report:?}"
        );

        // Generic message, but a BadRequest field violation on message.token.
        let (server, _) = scripted(|_, _| {
            resp(400, &serde_json::json!({"error": {"code": 400, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT", "details": [
                {"@type": FCM_ERROR_TYPE, "errorCode": "INVALID_ARGUMENT"},
                {"@type": BAD_REQUEST_TYPE, "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]},
            ]}}).to_string())
        });
        let report = Fcm::new(fixed(server.url())).unwrap().send(&note());
        assert!(
            matches!(report.delivery, Delivery::DeadToken(_)),
            "{report:?}"
        );

        // Another invalid argument: Failed, not retried.
        let (server, _) = scripted(|_, _| {
            resp(400, &serde_json::json!({"error": {"code": 400, "message": "Invalid value at 'message.data[0].value' (TYPE_STRING), 12", "status": "INVALID_ARGUMENT", "details": [
                {"@type": BAD_REQUEST_TYPE, "fieldViolations": [{"field": "message.data[0].value", "description": "Invalid value"}]},
            ]}}).to_string())
        });
        let report = Fcm::new(fixed(server.url())).unwrap().send(&note());
        assert!(
            matches!(&report.delivery, Delivery::Failed(why) if why.contains("INVALID_ARGUMENT")),
            "{report:?}"
        );
        assert_eq!((report.attempts, report.retries), (1, 0));
    }

    #[test]
    fn sender_id_mismatch_fails_without_retry() {
        let (server, _) = scripted(|_, _| {
            resp(
                403,
                &fcm_error(
                    403,
                    "PERMISSION_DENIED",
                    "SENDER_ID_MISMATCH",
                    "SenderId mismatch",
                ),
            )
        });
        let report = Fcm::new(fixed(server.url())).unwrap().send(&note());
        assert!(
            matches!(&report.delivery, Delivery::Failed(why) if why.contains("SENDER_ID_MISMATCH"))
        );
        assert_eq!((report.attempts, report.retries), (1, 0));
    }

    #[test]
    fn retry_after_is_honoured_on_429() {
        let (server, _) = scripted(|attempt, _| {
            if attempt == 1 {
                Resp {
                    status: 429,
                    headers: vec![("retry-after", "1".into())],
                    body: fcm_error(
                        429,
                        "RESOURCE_EXHAUSTED",
                        "QUOTA_EXCEEDED",
                        "Quota exceeded",
                    ),
                }
            } else {
                resp(200, "{}")
            }
        });
        let mut cfg = fixed(server.url());
        cfg.max_backoff = Duration::from_secs(5);
        let started = Instant::now();
        let report = Fcm::new(cfg).unwrap().send(&note());
        let elapsed = started.elapsed();
        assert_eq!(report.delivery, Delivery::Sent);
        assert_eq!((report.attempts, report.retries), (2, 1));
        assert!(report.waited >= Duration::from_secs(1), "{report:?}");
        assert!(
            elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(4),
            "{elapsed:?}"
        );
    }

    #[test]
    fn retry_after_is_capped_by_max_backoff() {
        let (server, _) = scripted(|attempt, _| {
            if attempt == 1 {
                Resp {
                    status: 503,
                    headers: vec![("retry-after", "3600".into())],
                    body: fcm_error(503, "UNAVAILABLE", "UNAVAILABLE", "overloaded"),
                }
            } else {
                resp(200, "{}")
            }
        });
        let started = Instant::now();
        let report = Fcm::new(fixed(server.url())).unwrap().send(&note());
        assert_eq!(report.delivery, Delivery::Sent);
        assert_eq!(report.waited, Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn unavailable_is_retried_up_to_max_retries() {
        let (server, _) = scripted(|attempt, _| {
            if attempt % 2 == 0 {
                resp(
                    500,
                    &fcm_error(500, "INTERNAL", "INTERNAL", "Internal error encountered."),
                )
            } else {
                resp(
                    503,
                    &fcm_error(
                        503,
                        "UNAVAILABLE",
                        "UNAVAILABLE",
                        "The service is currently unavailable.",
                    ),
                )
            }
        });
        let report = Fcm::new(fixed(server.url())).unwrap().send(&note());
        assert!(
            matches!(&report.delivery, Delivery::Failed(why) if why.contains("gave up after 3 retries")),
            "{report:?}"
        );
        assert_eq!((report.attempts, report.retries), (4, 3));
        assert_eq!(server.requests_to(SEND_PATH).len(), 4);
        assert!(report.waited <= Duration::from_millis(300));
    }

    #[test]
    fn connection_refused_is_retried_then_fails() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let report = Fcm::new(fixed(format!("http://127.0.0.1:{port}")))
            .unwrap()
            .send(&note());
        assert!(
            matches!(&report.delivery, Delivery::Failed(why) if why.contains("transport")),
            "{report:?}"
        );
        assert_eq!((report.attempts, report.retries), (4, 3));
    }

    #[test]
    fn token_endpoint_errors() {
        // Rejected assertion: Failed at once, FCM never called.
        let server = Server::start(|req| match req.path.as_str() {
            "/token" => resp(
                400,
                r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#,
            ),
            _ => resp(200, "{}"),
        });
        let report = Fcm::new(config(server.url(), account(&server)))
            .unwrap()
            .send(&note());
        assert!(
            matches!(&report.delivery, Delivery::Failed(why) if why.contains("invalid_grant")),
            "{report:?}"
        );
        assert_eq!(
            (report.attempts, report.retries, report.token_refreshes),
            (0, 0, 1)
        );

        // Token endpoint briefly down: retried like FCM itself.
        let calls = AtomicUsize::new(0);
        let server = Server::start(move |req| match req.path.as_str() {
            "/token" if calls.fetch_add(1, Ordering::SeqCst) == 0 => resp(503, "{}"),
            "/token" => resp(
                200,
                r#"{"access_token":"ok","expires_in":3600,"token_type":"Bearer"}"#,
            ),
            _ => resp(200, "{}"),
        });
        let report = Fcm::new(config(server.url(), account(&server)))
            .unwrap()
            .send(&note());
        assert_eq!(report.delivery, Delivery::Sent);
        assert_eq!(
            (report.attempts, report.retries, report.token_refreshes),
            (1, 1, 2)
        );
    }

    #[test]
    fn backoff_is_full_jitter_within_bounds() {
        let mut cfg = fixed("http://127.0.0.1:1".into());
        cfg.base_backoff = Duration::from_secs(1);
        cfg.max_backoff = Duration::from_secs(60);
        cfg.quota_backoff = Duration::from_secs(2);
        let fcm = Fcm::new(cfg).unwrap();
        for _ in 0..200 {
            assert!(fcm.backoff(1, None, false) <= Duration::from_secs(1));
            assert!(fcm.backoff(3, None, false) <= Duration::from_secs(4));
            assert!(fcm.backoff(40, None, false) <= Duration::from_secs(60));
            assert!(fcm.backoff(1, None, true) >= Duration::from_secs(2));
            let w = fcm.backoff(1, Some(Duration::from_secs(7)), true);
            assert!(w >= Duration::from_secs(7) && w <= Duration::from_secs(60));
            assert_eq!(
                fcm.backoff(1, Some(Duration::from_secs(999)), false),
                Duration::from_secs(60)
            );
        }
        let spread: Vec<_> = (0..50).map(|_| fcm.backoff(6, None, false)).collect();
        assert!(spread.iter().any(|w| *w != spread[0]), "jittered");

        // Absurd settings neither overflow nor panic.
        let mut cfg = fixed("http://127.0.0.1:1".into());
        cfg.base_backoff = Duration::MAX;
        cfg.max_backoff = Duration::MAX;
        let fcm = Fcm::new(cfg).unwrap();
        fcm.backoff(u32::MAX, Some(Duration::MAX), true);
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a past date means no wait"
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT"),
            Some(951_825_600)
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 06 Foo 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
