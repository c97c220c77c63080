//! What the fake shares between requests: its fixed options, the settings
//! the control endpoints change, the access tokens it issued, the failure
//! rules, the counters and the record of accepted messages.
//!
//! Everything a send touches on its way is either an atomic or a short
//! critical section under an uncontended `Mutex`/`RwLock`, so a few
//! thousand requests per second cost next to nothing.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::DecodingKey;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Notify;

/// Options fixed on the command line.
pub struct Options {
    /// Verifies the signature of `/token` assertions; `None` = not checked.
    pub public_key: Option<DecodingKey>,
    /// Lifetime of an access token issued by `/token`.
    pub access_token_ttl: Duration,
    /// Access tokens that are always accepted (`--accept-token`).
    pub fixed_tokens: HashSet<String>,
    /// At most this many accepted messages are kept (oldest dropped first).
    pub max_records: usize,
    /// A send whose HTTP body is longer than this is refused as too large.
    pub max_payload_bytes: usize,
}

/// The settings `POST /fake/config` changes; `POST /fake/reset` keeps them.
#[derive(Default)]
pub struct Config {
    latency_ms: AtomicU64,
    down: AtomicBool,
    /// Registration tokens answered with 404 UNREGISTERED.
    unregistered: RwLock<HashSet<String>>,
    /// Registration tokens answered with 400 INVALID_ARGUMENT.
    invalid: RwLock<HashSet<String>>,
}

/// A change to [`Config`]: the fields given replace the current values
/// (the token lists are replaced whole, not merged).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigPatch {
    latency_ms: Option<u64>,
    unregistered: Option<Vec<String>>,
    invalid: Option<Vec<String>>,
    down: Option<bool>,
}

/// The current [`Config`], as `GET`/`POST /fake/config` answer it.
#[derive(Serialize)]
pub struct ConfigView {
    latency_ms: u64,
    down: bool,
    unregistered: Vec<String>,
    invalid: Vec<String>,
}

impl Config {
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::Relaxed))
    }

    pub fn set_latency_ms(&self, ms: u64) {
        self.latency_ms.store(ms, Ordering::Relaxed);
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    pub fn is_unregistered(&self, token: &str) -> bool {
        read(&self.unregistered).contains(token)
    }

    pub fn is_invalid(&self, token: &str) -> bool {
        read(&self.invalid).contains(token)
    }

    pub fn apply(&self, patch: ConfigPatch) {
        if let Some(ms) = patch.latency_ms {
            self.set_latency_ms(ms);
        }
        if let Some(down) = patch.down {
            self.down.store(down, Ordering::Relaxed);
        }
        if let Some(tokens) = patch.unregistered {
            *write(&self.unregistered) = tokens.into_iter().collect();
        }
        if let Some(tokens) = patch.invalid {
            *write(&self.invalid) = tokens.into_iter().collect();
        }
    }

    pub fn view(&self) -> ConfigView {
        let sorted = |set: &RwLock<HashSet<String>>| {
            let mut v: Vec<String> = read(set).iter().cloned().collect();
            v.sort();
            v
        };
        ConfigView {
            latency_ms: self.latency_ms.load(Ordering::Relaxed),
            down: self.is_down(),
            unregistered: sorted(&self.unregistered),
            invalid: sorted(&self.invalid),
        }
    }
}

/// A rule of `POST /fake/fail`: the next `count` sends that match it (all
/// sends, or only those to `token`) are answered with `status`.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct FailRule {
    pub status: u16,
    #[serde(default = "one")]
    pub count: u64,
    pub retry_after_s: Option<u64>,
    pub token: Option<String>,
}

fn one() -> u64 {
    1
}

/// The failure a matched [`FailRule`] prescribes for one send.
pub struct Failure {
    pub status: u16,
    pub retry_after_s: Option<u64>,
}

/// One accepted message, as `GET /fake/received` lists it.
#[derive(Serialize)]
pub struct Record {
    /// Arrival time, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub project: String,
    /// The `Authorization` header as received (`Bearer ...`).
    pub authorization: String,
    /// The `name` the send answered with (`projects/P/messages/ID`).
    pub name: String,
    /// The request's `message` object, byte for byte as received.
    pub message: Box<RawValue>,
}

/// Request counters (all reset by `POST /fake/reset` except `in_flight`).
pub struct Counters {
    /// Sends answered 200 and recorded.
    pub accepted: AtomicU64,
    /// Every `messages:send` request, whatever its answer.
    pub attempts: AtomicU64,
    /// Every `/token` request, whatever its answer.
    pub token_requests: AtomicU64,
    /// `/token` and send requests being handled (latency included).
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
    /// Sends by HTTP status answered, indexed by the status code.
    statuses: Box<[AtomicU64]>,
}

impl Counters {
    fn new() -> Self {
        Counters {
            accepted: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            statuses: (0..600).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn count_status(&self, status: u16) {
        if let Some(c) = self.statuses.get(usize::from(status)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Non-zero status counts, keyed by the code as a string (`"200"`).
    pub fn statuses(&self) -> BTreeMap<String, u64> {
        self.statuses
            .iter()
            .enumerate()
            .filter_map(|(code, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then(|| (code.to_string(), n))
            })
            .collect()
    }

    fn reset(&self) {
        for c in [&self.accepted, &self.attempts, &self.token_requests] {
            c.store(0, Ordering::Relaxed);
        }
        let now = self.in_flight.load(Ordering::Relaxed);
        self.max_in_flight.store(now, Ordering::Relaxed);
        for c in self.statuses.iter() {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a request in flight until the guard is dropped (also when the
    /// client goes away mid-request and the handler is cancelled).
    pub fn enter(&self) -> InFlight<'_> {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }
}

pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The whole shared state of the fake.
pub struct App {
    pub opts: Options,
    pub config: Config,
    pub counters: Counters,
    /// Issued access tokens and when each expires.
    tokens: Mutex<IssuedTokens>,
    rules: Mutex<VecDeque<FailRule>>,
    records: Mutex<Records>,
    /// Tells the server to stop (`POST /fake/shutdown`).
    pub shutdown: Notify,
    message_seq: AtomicU64,
}

#[derive(Default)]
struct IssuedTokens {
    expiry: HashMap<String, Instant>,
    /// Tokens issued since expired ones were last swept out.
    since_sweep: usize,
}

#[derive(Default)]
struct Records {
    kept: VecDeque<Arc<Record>>,
    /// Records dropped (oldest first) to stay within `max_records`.
    dropped: u64,
}

/// A copy of the record list, taken under the lock and serialized after.
pub struct RecordsSnapshot {
    pub messages: Vec<Arc<Record>>,
    pub dropped: u64,
}

impl App {
    pub fn new(opts: Options) -> Self {
        App {
            opts,
            config: Config::default(),
            counters: Counters::new(),
            tokens: Mutex::default(),
            rules: Mutex::default(),
            records: Mutex::default(),
            shutdown: Notify::new(),
            message_seq: AtomicU64::new(0),
        }
    }

    /// Issues a new access token, valid for the configured TTL.
    pub fn issue_token(&self) -> String {
        let token = format!("fake-{}", random_alphanumeric(40));
        let now = Instant::now();
        let mut tokens = lock(&self.tokens);
        tokens.since_sweep += 1;
        if tokens.since_sweep >= 1024 {
            tokens.since_sweep = 0;
            tokens.expiry.retain(|_, expiry| *expiry > now);
        }
        tokens
            .expiry
            .insert(token.clone(), now + self.opts.access_token_ttl);
        token
    }

    /// Whether `token` is a fixed token or an issued one not yet expired.
    pub fn token_is_valid(&self, token: &str) -> bool {
        if self.opts.fixed_tokens.contains(token) {
            return true;
        }
        let tokens = lock(&self.tokens);
        tokens
            .expiry
            .get(token)
            .is_some_and(|expiry| *expiry > Instant::now())
    }

    /// Invalidates every issued token; returns how many were still valid.
    pub fn expire_tokens(&self) -> usize {
        let now = Instant::now();
        let mut tokens = lock(&self.tokens);
        let live = tokens.expiry.values().filter(|e| **e > now).count();
        tokens.expiry.clear();
        live
    }

    pub fn add_rule(&self, rule: FailRule) -> usize {
        let mut rules = lock(&self.rules);
        rules.push_back(rule);
        rules.len()
    }

    /// Consumes one use of the first rule matching a send to `token`.
    pub fn take_failure(&self, token: Option<&str>) -> Option<Failure> {
        let mut rules = lock(&self.rules);
        let i = rules
            .iter()
            .position(|r| r.token.is_none() || r.token.as_deref() == token)?;
        let rule = &mut rules[i];
        let failure = Failure {
            status: rule.status,
            retry_after_s: rule.retry_after_s,
        };
        rule.count -= 1;
        if rule.count == 0 {
            rules.remove(i);
        }
        Some(failure)
    }

    /// A fresh message id, in the shape FCM's are (`0:<µs>%<hex>`).
    pub fn next_message_id(&self) -> String {
        let seq = self.message_seq.fetch_add(1, Ordering::Relaxed);
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros();
        let salt: u32 = rand::rng().random();
        format!("0:{micros}%{salt:08x}{seq:08x}")
    }

    pub fn record(&self, record: Record) {
        let mut records = lock(&self.records);
        if self.opts.max_records == 0 {
            records.dropped += 1;
            return;
        }
        while records.kept.len() >= self.opts.max_records {
            records.kept.pop_front();
            records.dropped += 1;
        }
        records.kept.push_back(Arc::new(record));
    }

    pub fn snapshot(&self) -> RecordsSnapshot {
        let records = lock(&self.records);
        RecordsSnapshot {
            messages: records.kept.iter().cloned().collect(),
            dropped: records.dropped,
        }
    }

    /// Clears records, counters and failure rules (not config or tokens).
    pub fn reset(&self) {
        *lock(&self.records) = Records::default();
        lock(&self.rules).clear();
        self.counters.reset();
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

fn random_alphanumeric(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

// A panic while a lock is held cannot leave these structures half-updated in
// a way that matters to a test fake, so a poisoned lock is simply reused.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
