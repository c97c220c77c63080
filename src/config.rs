//! Settings: one list, three sources.
//!
//! Every setting is declared once in the `settings!` invocation below and is
//! then available as a CLI flag (`--max-frame-size`), an environment variable
//! (`STAMPEDE_MAX_FRAME_SIZE`) and a TOML key in `--config FILE`
//! (`max_frame_size = 65536`). Precedence: flag > env > file > default.
//! `stampede --help` prints every setting with its default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;

use serde::Deserialize;

/// How a client's CONNECT is authenticated (`--auth`, see `crate::auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// The user is the CONNECT `login`: anyone may claim any user.
    None,
    /// An HS256 JWT in `passcode` or `Authorization: Bearer`; `sub` is the user.
    Jwt,
}

/// A secret setting: `Debug` never shows it (the settings are logged).
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("(unset)")
        } else {
            write!(f, "(secret, {} bytes)", self.0.len())
        }
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// Shortest `--jwt-secret` accepted: 256 bits, as RFC 7518 §3.2 asks of an
/// HS256 key.
pub const MIN_JWT_SECRET: usize = 32;

/// Who may enter a room (`--join`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinMode {
    /// SUBSCRIBE to `/topic/<room>` makes the user a member (stored).
    Open,
    /// Only members added through the API may SUBSCRIBE or SEND.
    Invite,
}

/// Shortest `--admin-token` accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// What a commit survives (`--durability`), mapped by the store to
/// SQLite's `synchronous`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// `synchronous=FULL`: the WAL is fsynced at every commit; a committed
    /// (receipted) message survives a crash of the process *and* of the
    /// machine (power loss).
    Full,
    /// `synchronous=NORMAL`: fsync at checkpoints only; survives a crash of
    /// the process (`kill -9`), may lose the last commits on power loss.
    Normal,
    /// `synchronous=OFF`: no fsync at all; survives a crash of the process,
    /// power loss may lose recent commits or corrupt the database.
    Off,
}

/// Where a listener binds, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// The listener is disabled.
    Off,
    /// Bind this address (port 0 picks a free port, printed on start-up).
    On(SocketAddr),
}

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        s.parse::<SocketAddr>()
            .map(Listen::On)
            .map_err(|e| format!("`{s}` is neither `off` nor an address like 127.0.0.1:61613: {e}"))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Off => f.write_str("off"),
            Listen::On(a) => write!(f, "{a}"),
        }
    }
}

/// The destination prefixes that name rooms (`--destination-prefixes`):
/// each `/name/`, as Spring's `enableSimpleBroker("/topic", "/queue")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefixes(Vec<Box<str>>);

/// The prefix whose rooms keep their bare names (`/topic/lobby` is room
/// `lobby`, as before there were other prefixes).
pub const TOPIC_PREFIX: &str = "/topic/";

/// The destination of room `room` (the inverse of `room::room_of`): the
/// prefix part first, then the rest. A `/topic/` room is a bare name;
/// under any other prefix the room is the destination without its first
/// `/`.
pub fn destination_parts(room: &str) -> (&'static str, &str) {
    if room.starts_with("user/") {
        // `user/<user>/<prefix name>/<name>`: subscribers see the
        // destination they subscribed to, `/user/<prefix name>/<name>`.
        let mut cut = room.len();
        for _ in 0..2 {
            cut = room[..cut].rfind('/').unwrap_or(0);
        }
        ("/user/", &room[(cut + 1).min(room.len())..])
    } else if room.contains('/') {
        ("/", room)
    } else {
        (TOPIC_PREFIX, room)
    }
}

impl Prefixes {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|p| &**p)
    }

    pub fn contains(&self, prefix: &str) -> bool {
        self.iter().any(|p| p == prefix)
    }
}

impl Default for Prefixes {
    fn default() -> Prefixes {
        Prefixes(vec!["/topic/".into(), "/queue/".into()])
    }
}

impl FromStr for Prefixes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out: Vec<Box<str>> = Vec::new();
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let name = p
                .strip_prefix('/')
                .and_then(|p| p.strip_suffix('/'))
                .filter(|n| {
                    (1..=32).contains(&n.len())
                        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
                })
                .ok_or_else(|| {
                    format!("destination prefix `{p}` is not `/name/` with a name of 1-32 characters from a-z 0-9 _ -")
                })?;
            if name == "user" {
                return Err("`/user/` is reserved for user destinations".into());
            }
            if out.iter().any(|o| **o == *p) {
                return Err(format!("destination prefix `{p}` is given twice"));
            }
            out.push(p.into());
        }
        if out.is_empty() {
            return Err("at least one destination prefix, like /topic/".into());
        }
        Ok(Prefixes(out))
    }
}

impl std::fmt::Display for Prefixes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// `--cluster`: the Redis instances that join nodes into one cluster
/// (`redis://HOST:PORT[/DB]`, comma-separated; `off`: a single node).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster(pub Vec<Box<str>>);

impl Cluster {
    pub fn on(&self) -> bool {
        !self.0.is_empty()
    }
}

impl FromStr for Cluster {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s == "off" {
            return Ok(Cluster::default());
        }
        let mut out: Vec<Box<str>> = Vec::new();
        for url in s.split(',').map(str::trim) {
            let rest = url
                .strip_prefix("redis://")
                .ok_or_else(|| format!("cluster address `{url}` is not redis://HOST:PORT"))?;
            let hostport = rest.split('/').next().unwrap_or("");
            let ok = hostport
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok || rest.contains('@') {
                return Err(format!(
                    "cluster address `{url}` is not redis://HOST:PORT[/DB] (a password goes in STAMPEDE_CLUSTER_PASSWORD)"
                ));
            }
            if out.iter().any(|o| **o == *url) {
                return Err(format!("cluster address `{url}` is given twice"));
            }
            out.push(url.into());
        }
        if out.len() > 64 {
            return Err("at most 64 Redis instances in --cluster".into());
        }
        Ok(Cluster(out))
    }
}

impl std::fmt::Display for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("off");
        }
        f.write_str(&self.0.join(","))
    }
}

/// TOML values of these types are strings read with their `FromStr`, so
/// the file and the flag accept (and refuse) the same text.
macro_rules! deserialize_by_parse {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

deserialize_by_parse!(Listen, Prefixes, Cluster);

/// Declares the settings: the clap parser (`Cli`), the TOML file shape
/// (`FileConfig`) and the resolved `Config`, from one list.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident : $ty:ty = $default:expr, env $env:literal, default_help $dh:literal;
    )*) => {
        /// Command line. Every value is optional so that env, file and default
        /// can fill what the flag leaves out.
        #[derive(Debug, Parser)]
        #[command(name = "stampede", version, about = "Thread-per-core STOMP-over-WebSocket group-chat server")]
        pub struct Cli {
            /// TOML file with any of the settings below (keys are the flag names with `_` for `-`).
            #[arg(long, env = "STAMPEDE_CONFIG")]
            pub config: Option<PathBuf>,
            /// Print what this host's limits (open files, memory, backlog,
            /// memlock) allow for these settings, and exit: status 0 when
            /// they hold `--max-connections`, 1 when they do not.
            #[arg(long)]
            pub check_capacity: bool,
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env, long_help = concat!($($doc, "\n",)* "\n[default: ", $dh, "]"))]
                pub $name: Option<$ty>,
            )*
        }

        /// The `--config` TOML file. Unknown keys are an error, so typos do not
        /// pass silently.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            $( pub $name: Option<$ty>, )*
        }

        /// The resolved settings every part of the server reads.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
            /// `--max-connections` was given (not derived from the
            /// open-file limit).
            pub max_connections_set: bool,
            /// `--check-capacity`: report and exit.
            pub check_capacity: bool,
        }

        impl Config {
            /// Flag (or env, which clap folds into the flag) > file > default.
            pub fn resolve(cli: Cli, file: FileConfig) -> Config {
                let max_connections_set = cli.max_connections.or(file.max_connections).unwrap_or(0) > 0;
                Config {
                    check_capacity: cli.check_capacity,
                    $( $name: cli.$name.or(file.$name).unwrap_or_else(|| $default), )*
                    max_connections_set,
                }
            }
        }
    };
}

settings! {
    /// How a CONNECT is authenticated. `none`: the user is the CONNECT
    /// `login` (or `anonymous`) — only for loopback or a trusted network
    /// (see `--allow-insecure-auth`). `jwt`: an HS256 token signed with
    /// `--jwt-secret` in the CONNECT `passcode` or an `Authorization:
    /// Bearer <token>` header; its `sub` is the user, `exp` is required.
    auth: AuthMode = AuthMode::None, env "STAMPEDE_AUTH", default_help "none";
    /// The HS256 secret for `--auth jwt`, at least 32 bytes. Prefer the
    /// environment variable: a flag is visible to every user in `ps`.
    jwt_secret: Secret = Secret::default(), env "STAMPEDE_JWT_SECRET", default_help "(unset)";
    /// Clock skew allowed when checking a token's `exp` and `nbf`, seconds.
    jwt_leeway_s: u64 = 30, env "STAMPEDE_JWT_LEEWAY_S", default_help "30";
    /// Allow `--auth none` on a listener that is not loopback. Without it
    /// the server refuses to start that way: anyone reaching it could claim
    /// to be any user.
    allow_insecure_auth: bool = false, env "STAMPEDE_ALLOW_INSECURE_AUTH", default_help "false";
    /// Who may enter a room. `open`: subscribing to `/topic/<room>` makes
    /// the user a member (stored, so offline members get pushes). `invite`:
    /// only members added through `PUT /api/rooms/{room}/members/{user}`
    /// may SUBSCRIBE or SEND; anyone else gets an ERROR and is closed.
    /// Membership needs the store (`--persist true`).
    join: JoinMode = JoinMode::Open, env "STAMPEDE_JOIN", default_help "open";
    /// Bearer token for the admin calls of the HTTP API (members, any
    /// user's devices, any room's history). Unset: no admin calls. Prefer
    /// the environment variable; at least 16 bytes.
    admin_token: Secret = Secret::default(), env "STAMPEDE_ADMIN_TOKEN", default_help "(unset)";
    /// Most members one room may have. The owner shard keeps a loaded
    /// room's members in memory (~60 bytes each): 100,000 is ~6 MB for the
    /// largest room. Beyond it an API add gets 409 and, with `--join open`,
    /// a SUBSCRIBE of a newcomer an ERROR.
    max_room_members: usize = 100_000, env "STAMPEDE_MAX_ROOM_MEMBERS", default_help "100000";
    /// Most push devices (FCM tokens) one user may register; beyond it
    /// `PUT .../devices/{token}` gets 409. A person has a few phones and
    /// browsers; 16 is generous.
    max_devices_per_user: usize = 16, env "STAMPEDE_MAX_DEVICES_PER_USER", default_help "16";
    /// FCM HTTP v1 base URL (a fake for tests and benchmarks).
    fcm_endpoint: String = "https://fcm.googleapis.com".to_string(), env "STAMPEDE_FCM_ENDPOINT", default_help "https://fcm.googleapis.com";
    /// Firebase project id; defaults to the service account's `project_id`.
    fcm_project: String = String::new(), env "STAMPEDE_FCM_PROJECT", default_help "(from --fcm-credentials)";
    /// Service-account JSON file for FCM: the server signs an RS256
    /// assertion with its key and trades it at its `token_uri` for an
    /// access token, renewed before it expires. Setting this (or
    /// `--fcm-access-token`) turns push notifications on.
    fcm_credentials: PathBuf = PathBuf::new(), env "STAMPEDE_FCM_CREDENTIALS", default_help "(unset: no push)";
    /// A fixed OAuth2 access token for FCM instead of a service account
    /// (needs `--fcm-project`); it is never renewed.
    fcm_access_token: Secret = Secret::default(), env "STAMPEDE_FCM_ACCESS_TOKEN", default_help "(unset)";
    /// Push threads: each sends one FCM request at a time (blocking, with
    /// keep-alive), so pushes per second are about this divided by FCM's
    /// answer time: 64 threads at 50 ms are ~1,300/s. They sleep while they
    /// wait and run at a lower priority than the shards.
    push_threads: usize = 64, env "STAMPEDE_PUSH_THREADS", default_help "64";
    /// Push tasks (one per committed message with away members, then one
    /// per device) that may wait for a push thread. When it is full, new
    /// pushes are dropped and counted: a push is best-effort, a chat
    /// message is not, and nothing on the message path ever waits for it.
    push_queue: usize = 65_536, env "STAMPEDE_PUSH_QUEUE", default_help "65536";
    /// Retries of one push on 429, 5xx or a network error (exponential
    /// backoff with jitter, at least FCM's `Retry-After`).
    push_retries: u32 = 5, env "STAMPEDE_PUSH_RETRIES", default_help "5";
    /// Destination prefixes that name rooms, comma-separated: a
    /// destination `<prefix><name>` is a room with everything rooms have
    /// (one order, `x-seq`, history, replay). `/topic/lobby` is room
    /// `lobby`; under any other prefix the room is the destination without
    /// its first `/` (`/queue/a` is room `queue/a`, which `/topic/a` is
    /// not). As Spring's simple broker: every subscriber gets every
    /// message (no competing consumers). Anything else (e.g. Spring's
    /// `/app/`) is refused with an ERROR naming these.
    destination_prefixes: Prefixes = Prefixes::default(), env "STAMPEDE_DESTINATION_PREFIXES", default_help "/topic/,/queue/";
    /// Join other nodes through Redis (`redis://HOST:PORT[/DB]`, several
    /// comma-separated to spread rooms over instances by hash): every
    /// node's members of a room see one order (Redis sequences each room),
    /// resume on any node, and are pushed only when away from all nodes.
    /// `off`: a single node, with no Redis on any path.
    cluster: Cluster = Cluster::default(), env "STAMPEDE_CLUSTER", default_help "off";
    /// This node's name in the cluster (in presence entries and logs);
    /// empty: the listen address and a random suffix.
    cluster_node: String = String::new(), env "STAMPEDE_CLUSTER_NODE", default_help "(listen address + random)";
    /// Messages each room keeps in its Redis stream, for gap repair and
    /// for resuming on a node that was not watching the room (trimmed
    /// approximately: `XADD MAXLEN ~`). Older ones are in the stores of
    /// the nodes that saw them.
    cluster_stream_len: usize = 1_000, env "STAMPEDE_CLUSTER_STREAM_LEN", default_help "1000";
    /// Seconds a room's stream lives after its last message.
    cluster_stream_ttl_s: u64 = 86_400, env "STAMPEDE_CLUSTER_STREAM_TTL_S", default_help "86400";
    /// Publishes waiting for one Redis instance (per instance); when full
    /// the owner holds further ones in order and stops reading its clients.
    cluster_queue: usize = 16_384, env "STAMPEDE_CLUSTER_QUEUE", default_help "16384";
    /// Seconds a node's presence entries live in Redis without a refresh
    /// (refreshed every third of it): how long a crashed node's users still
    /// count as online, keeping pushes from them.
    cluster_presence_ttl_s: u64 = 30, env "STAMPEDE_CLUSTER_PRESENCE_TTL_S", default_help "30";
    /// HTTP and WebSocket listener (STOMP endpoint path `/ws`).
    listen: SocketAddr = "127.0.0.1:8080".parse().unwrap(), env "STAMPEDE_LISTEN", default_help "127.0.0.1:8080";
    /// Plain STOMP-over-TCP listener, or `off`.
    stomp_listen: Listen = Listen::On("127.0.0.1:61613".parse().unwrap()), env "STAMPEDE_STOMP_LISTEN", default_help "127.0.0.1:61613";
    /// A separate listener for `/metrics`, `/status` and `/readyz` (and
    /// `/healthz`), so they need not be reachable where clients are; when
    /// set, `--listen` no longer serves `/metrics` and `/status`. `off`:
    /// everything on `--listen`.
    metrics_listen: Listen = Listen::Off, env "STAMPEDE_METRICS_LISTEN", default_help "off";
    /// PEM certificate chain (leaf first) for TLS on `--listen` (`wss://`,
    /// `https://`) and `--stomp-listen` (STOMP over TLS); needs `--tls-key`.
    /// TLS 1.3 and 1.2 only, modern suites. SIGHUP re-reads both files:
    /// new connections get the new certificate, open sessions go on.
    /// `--metrics-listen` stays plain. Unset: no TLS.
    tls_cert: PathBuf = PathBuf::new(), env "STAMPEDE_TLS_CERT", default_help "(unset: plain TCP)";
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    tls_key: PathBuf = PathBuf::new(), env "STAMPEDE_TLS_KEY", default_help "(unset)";
    /// Number of shards (one pinned executor each). More shards than cores is
    /// allowed: they are pinned round-robin. 0 means one per core.
    shards: usize = 0, env "STAMPEDE_SHARDS", default_help "0 = number of cores";
    /// Directory for the database and the instance lock file.
    data_dir: PathBuf = PathBuf::from("data"), env "STAMPEDE_DATA_DIR", default_help "./data";
    /// Most open client connections for the whole process, split evenly over
    /// shards. 0 means the process's open-file limit minus 64 for listeners,
    /// the database and logs — the most the kernel lets us hold anyway.
    max_connections: usize = 0, env "STAMPEDE_MAX_CONNECTIONS", default_help "0 = RLIMIT_NOFILE - 64";
    /// Largest STOMP frame (command, headers and body) in bytes. 64 KiB is
    /// Spring's default message size limit, so clients moving over keep working.
    max_frame_size: usize = 64 * 1024, env "STAMPEDE_MAX_FRAME_SIZE", default_help "65536";
    /// Most headers in one frame. Chat clients send fewer than 10; 64 leaves
    /// room for application headers while bounding per-frame work.
    max_headers: usize = 64, env "STAMPEDE_MAX_HEADERS", default_help "64";
    /// Longest single header line (or command line) in bytes. 8 KiB holds a
    /// large JWT in `passcode` or `Authorization`.
    max_header_length: usize = 8 * 1024, env "STAMPEDE_MAX_HEADER_LENGTH", default_help "8192";
    /// Most subscriptions one connection may hold (a chat client subscribes to
    /// each of its rooms; a few hundred is generous).
    max_subscriptions: usize = 256, env "STAMPEDE_MAX_SUBSCRIPTIONS", default_help "256";
    /// Most open transactions one connection may hold at once.
    max_transactions: usize = 16, env "STAMPEDE_MAX_TRANSACTIONS", default_help "16";
    /// Most SEND/ACK/NACK frames one transaction may hold until COMMIT
    /// (bounds the memory a transaction pins to max_frame_size times this).
    max_transaction_frames: usize = 1024, env "STAMPEDE_MAX_TRANSACTION_FRAMES", default_help "1024";
    /// Most bytes (bodies and headers) all open transactions of one connection
    /// may hold until COMMIT. The frame-count limits alone would allow
    /// 16 x 1024 x 64 KiB; 1 MiB matches the outbound budget per connection.
    max_transaction_bytes: usize = 1024 * 1024, env "STAMPEDE_MAX_TRANSACTION_BYTES", default_help "1048576";
    /// Most delivered-but-unacknowledged messages per `client` or
    /// `client-individual` subscription; beyond it the client is told it is
    /// not acknowledging and is disconnected (8 bytes each).
    max_pending_acks: usize = 4096, env "STAMPEDE_MAX_PENDING_ACKS", default_help "4096";
    /// Most bytes queued for one connection that its socket has not taken
    /// yet. A subscriber that falls further behind is a slow consumer: it gets
    /// an ERROR and is closed, so it never slows the room or grows memory.
    /// 1 MiB is 16 maximum-size frames or ~5,000 typical chat messages.
    max_outbound_bytes: usize = 1024 * 1024, env "STAMPEDE_MAX_OUTBOUND_BYTES", default_help "1048576";
    /// Messages per second one connection may publish on average (SENDs,
    /// and the SENDs of each COMMIT); 0 = unlimited. A connection over it is
    /// not read until it is back under (its own TCP window fills, nothing is
    /// lost or refused), so one flooding client cannot take the shard's
    /// mesh, the writer or the CPU from everyone else. 1,000/s is far above
    /// any person typing and above most bots; raise it (or 0) for a backend
    /// that publishes for many users over one connection. Benchmarks that
    /// measure capacity run with 0.
    max_publish_rate: u32 = 1000, env "STAMPEDE_MAX_PUBLISH_RATE", default_help "1000";
    /// Messages one connection may publish at once before `max_publish_rate`
    /// applies (the token bucket's size): a client sending its backlog on
    /// reconnect is not slowed. Bounded below by 1.
    publish_burst: u32 = 1000, env "STAMPEDE_PUBLISH_BURST", default_help "1000";
    /// SUBSCRIBEs and UNSUBSCRIBEs per second one connection may make on
    /// average; 0 = unlimited. Each changes state on the room's owner shard
    /// (and may cross to it), so a client cycling through room names costs
    /// every client of the shard; over the rate it is not read until back
    /// under, like a publisher. A chat client changes rooms a few times a
    /// minute; 100/s is generous.
    max_subscribe_rate: u32 = 100, env "STAMPEDE_MAX_SUBSCRIBE_RATE", default_help "100";
    /// SUBSCRIBEs and UNSUBSCRIBEs one connection may make at once before
    /// `max_subscribe_rate` applies: 512 lets a client join (or leave and
    /// rejoin) all of its `max_subscriptions` rooms on connect.
    subscribe_burst: u32 = 512, env "STAMPEDE_SUBSCRIBE_BURST", default_help "512";
    /// How often the server can send heart-beats (ms), offered in CONNECTED.
    /// 10 s matches stompjs's default. 0 disables server heart-beats.
    heartbeat_send_ms: u64 = 10_000, env "STAMPEDE_HEARTBEAT_SEND_MS", default_help "10000";
    /// How often the server wants to hear from clients (ms), offered in
    /// CONNECTED. A client silent for twice the negotiated interval is closed.
    heartbeat_receive_ms: u64 = 10_000, env "STAMPEDE_HEARTBEAT_RECEIVE_MS", default_help "10000";
    /// A connection that has not completed the WebSocket upgrade and CONNECT
    /// within this many ms is closed (protects against idle or slow-loris sockets).
    connect_timeout_ms: u64 = 10_000, env "STAMPEDE_CONNECT_TIMEOUT_MS", default_help "10000";
    /// Capacity of each shard-to-shard queue, in batches (a batch is all a
    /// shard queued for that peer since its last send). glommio's notes
    /// measured 1024-slot channels as the size below which producer and
    /// consumer keep putting each other to sleep and waking each other.
    mesh_capacity: usize = 1024, env "STAMPEDE_MESH_CAPACITY", default_help "1024";
    /// Items queued for one peer shard above which connections on this shard
    /// stop being read until the queue drains (back-pressure, never loss).
    max_peer_queue: usize = 65_536, env "STAMPEDE_MAX_PEER_QUEUE", default_help "65536";
    /// Bytes of messages one shard may have on their way to another (queued
    /// for it, or in the mesh and not yet handled there) before it stops
    /// reading its connections. This is what bounds memory when a shard
    /// forwards SENDs to a room's owner faster than the owner (or its
    /// writer) takes them. 4 MiB is ~20,000 chat messages: a few
    /// milliseconds of a shard's peak rate, so throughput does not notice.
    max_peer_bytes: usize = 4 * 1024 * 1024, env "STAMPEDE_MAX_PEER_BYTES", default_help "4194304";
    /// Seconds a room may go without a message and without a subscriber on
    /// any shard before its owner frees its state (~100 bytes and the name);
    /// its next seq is read from the store when it is used again. With
    /// `--persist false` a room that has carried a message is kept (its seq
    /// could not be recovered). 60 s keeps a room that is merely between
    /// two visitors from being reloaded, while a client cycling through
    /// millions of names leaves nothing behind after a minute.
    room_idle_s: u64 = 60, env "STAMPEDE_ROOM_IDLE_S", default_help "60";
    /// Seqs a room's owner reserves in the store at a time (with
    /// persistence). A seq once given is never given again, even to a
    /// message that was delivered live but never stored (a crash, a full
    /// disk): after a crash a room continues past its reservation, so its
    /// seqs skip at most this many. More is reserved when half is used;
    /// 65,536 (the writer queue's default length) lets the writer be a
    /// full queue behind before a busy room has to wait. A clean stop gives
    /// back what was not used.
    seq_reserve: u64 = 65_536, env "STAMPEDE_SEQ_RESERVE", default_help "65536";
    /// Listen backlog per shard socket. glommio's own bind hard-codes 1024;
    /// a storm of thousands of simultaneous connects needs more (the kernel
    /// caps it at net.core.somaxconn).
    listen_backlog: i32 = 4096, env "STAMPEDE_LISTEN_BACKLOG", default_help "4096";
    /// Memory registered with io_uring per shard, in KiB. glommio's 10 MiB
    /// default costs ~10 MB RSS per shard; our sockets read into one scratch
    /// buffer and never use registered buffers, so 512 KiB (the least an
    /// executor starts with) is enough.
    io_memory_kib: usize = 512, env "STAMPEDE_IO_MEMORY_KIB", default_help "512";
    /// How long an idle shard spins before it parks (µs). Spinning cuts a
    /// cross-shard hop from ~80 µs to ~13 µs but burns CPU while idle.
    spin_before_park_us: u64 = 0, env "STAMPEDE_SPIN_BEFORE_PARK_US", default_help "0";
    /// glommio's preemption timer (ms): how often a busy shard checks for
    /// wake-ups from plain threads. 100 ms (glommio's default) delays such
    /// results by up to that; 2 ms keeps them around a millisecond.
    preempt_timer_ms: u64 = 2, env "STAMPEDE_PREEMPT_TIMER_MS", default_help "2";
    /// Store every message in SQLite (`<data-dir>/stampede.db`): history,
    /// replay and durable RECEIPTs. `false` keeps nothing: RECEIPTs mean
    /// "sequenced", `x-seq` restarts at 1, replay and the history API are
    /// refused.
    persist: bool = true, env "STAMPEDE_PERSIST", default_help "true";
    /// What a RECEIPT (a committed message) survives. `full`: the write-ahead
    /// log is fsynced at every commit; survives a process crash and power
    /// loss. `normal`: fsync at checkpoints only; survives `kill -9`, may
    /// lose the last commits on power loss. `off`: no fsync; survives
    /// `kill -9` only.
    durability: Durability = Durability::Full, env "STAMPEDE_DURABILITY", default_help "full";
    /// Messages queued for the SQLite writer (all shards together). When it
    /// is full, owner shards hold what they sequence and stop reading from
    /// publishing connections until it drains. 65,536 is a few hundred ms of
    /// the writer's peak rate: enough to ride out a slow fsync or checkpoint.
    /// The queue's slots (136 bytes each, ~9 MB here) are allocated at start.
    persist_queue: usize = 65_536, env "STAMPEDE_PERSIST_QUEUE", default_help "65536";
    /// Most messages the writer commits in one transaction (group commit:
    /// it takes whatever has queued, up to this). One fsync covers a batch;
    /// bigger batches raise throughput, and a batch is only as big as what
    /// queued while the previous one was being written.
    persist_batch: usize = 8192, env "STAMPEDE_PERSIST_BATCH", default_help "8192";
    /// Reader threads for replays and the history API (each has its own
    /// read-only SQLite connection; WAL readers never block the writer).
    read_threads: usize = 2, env "STAMPEDE_READ_THREADS", default_help "2";
    /// Read jobs (replay pages, history requests) that may wait for a reader.
    /// Beyond it a history request gets 503 and a replay an ERROR, instead
    /// of a queue that grows without bound.
    read_queue: usize = 1024, env "STAMPEDE_READ_QUEUE", default_help "1024";
    /// Messages per replay page. The next page is read when the subscriber's
    /// output buffer has drained below half of `max_outbound_bytes`, so a
    /// replay of any length never makes a slow consumer of its subscriber.
    replay_page: usize = 500, env "STAMPEDE_REPLAY_PAGE", default_help "500";
    /// Delete stored messages older than this many days (0 = keep all).
    /// Sequence numbers are kept: a room continues after its last seq.
    retention_days: u64 = 0, env "STAMPEDE_RETENTION_DAYS", default_help "0 = keep all";
    /// Keep at most this many stored messages per room (0 = keep all).
    retention_per_room: u64 = 0, env "STAMPEDE_RETENTION_PER_ROOM", default_help "0 = keep all";
    /// Milliseconds between passive WAL checkpoints, run on their own
    /// thread so that no commit (and no RECEIPT) waits for one. Each folds
    /// what the writer appended since the last into the database: 1 s
    /// keeps the WAL to about a second of writes (~50 MB at the writer's
    /// peak) while costing one database fsync a second at most.
    checkpoint_interval_ms: u64 = 1000, env "STAMPEDE_CHECKPOINT_INTERVAL_MS", default_help "1000";
    /// Seconds between retention passes (each pass deletes in chunks of
    /// 10,000 rows, in step with the writer's commits).
    retention_interval_s: u64 = 60, env "STAMPEDE_RETENTION_INTERVAL_S", default_help "60";
}

/// Parse flags and env, read the `--config` file if any, and resolve.
pub fn load() -> Result<Config, String> {
    let cli = Cli::parse();
    let file = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
            toml::from_str::<FileConfig>(&text)
                .map_err(|e| format!("bad config file {}: {e}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let mut cfg = Config::resolve(cli, file);
    cfg.finish()?;
    Ok(cfg)
}

impl Config {
    /// Fill the "0 = automatic" settings and check ranges.
    fn finish(&mut self) -> Result<(), String> {
        if self.shards == 0 {
            self.shards = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
        }
        if self.max_connections == 0 {
            self.max_connections = (nofile_limit().saturating_sub(64)).max(1);
        }
        let at_least = |v: usize, min: usize, name: &str| {
            if v < min {
                Err(format!("{name} must be at least {min} (got {v})"))
            } else {
                Ok(())
            }
        };
        at_least(self.max_frame_size, 256, "max_frame_size")?;
        at_least(self.max_headers, 4, "max_headers")?;
        at_least(self.max_header_length, 64, "max_header_length")?;
        at_least(
            self.max_outbound_bytes,
            self.max_frame_size,
            "max_outbound_bytes (>= max_frame_size)",
        )?;
        at_least(self.mesh_capacity, 2, "mesh_capacity")?;
        at_least(self.seq_reserve as usize, 2, "seq_reserve")?;
        at_least(
            self.max_peer_bytes,
            2 * self.max_frame_size,
            "max_peer_bytes (>= 2 x max_frame_size)",
        )?;
        at_least(self.io_memory_kib, 512, "io_memory_kib")?;
        at_least(self.preempt_timer_ms as usize, 1, "preempt_timer_ms")?;
        at_least(self.persist_queue, 16, "persist_queue")?;
        at_least(self.persist_batch, 1, "persist_batch")?;
        at_least(self.read_threads, 1, "read_threads")?;
        at_least(
            self.checkpoint_interval_ms as usize,
            10,
            "checkpoint_interval_ms",
        )?;
        at_least(self.read_queue, 16, "read_queue")?;
        at_least(self.replay_page, 1, "replay_page")?;
        at_least(
            self.retention_interval_s as usize,
            1,
            "retention_interval_s",
        )?;
        match self.auth {
            AuthMode::Jwt if self.jwt_secret.expose().len() < MIN_JWT_SECRET => {
                return Err(format!(
                    "--auth jwt needs --jwt-secret (or STAMPEDE_JWT_SECRET) of at least {MIN_JWT_SECRET} bytes (got {})",
                    self.jwt_secret.expose().len()
                ));
            }
            AuthMode::None if !self.allow_insecure_auth => {
                let exposed: Vec<String> = [Listen::On(self.listen), self.stomp_listen]
                    .into_iter()
                    .filter_map(|l| match l {
                        Listen::On(a) if !a.ip().is_loopback() => Some(a.to_string()),
                        _ => None,
                    })
                    .collect();
                if !exposed.is_empty() {
                    return Err(format!(
                        "--auth none on {} (not loopback) lets anyone claim any user: use --auth jwt, or --allow-insecure-auth true on a trusted network",
                        exposed.join(", ")
                    ));
                }
            }
            _ => {}
        }
        if self.join == JoinMode::Invite && !self.persist {
            return Err(
                "--join invite needs the store for its members: drop --persist false".to_string(),
            );
        }
        if self.cluster.on() {
            if !self.persist {
                return Err("--cluster needs the store (receipts follow the local commit; resume reads it): drop --persist false".to_string());
            }
            at_least(self.cluster_stream_len, 16, "cluster_stream_len")?;
            at_least(self.cluster_queue, 16, "cluster_queue")?;
            at_least(
                self.cluster_presence_ttl_s as usize,
                3,
                "cluster_presence_ttl_s",
            )?;
            at_least(
                self.cluster_stream_ttl_s as usize,
                60,
                "cluster_stream_ttl_s",
            )?;
            if self.cluster_node.len() > 64
                || self
                    .cluster_node
                    .bytes()
                    .any(|b| !(b.is_ascii_alphanumeric() || b"._-".contains(&b)))
            {
                return Err("--cluster-node is 1-64 characters from A-Z a-z 0-9 . _ -".to_string());
            }
        }
        let admin = self.admin_token.expose().len();
        if admin > 0 && admin < MIN_ADMIN_TOKEN {
            return Err(format!(
                "--admin-token must be at least {MIN_ADMIN_TOKEN} bytes (got {admin})"
            ));
        }
        if self.push_enabled() {
            if !self.persist {
                return Err(
                    "push notifications need the store (members and devices): drop --persist false"
                        .to_string(),
                );
            }
            if !self.fcm_access_token.expose().is_empty() && self.fcm_project.is_empty() {
                return Err("--fcm-access-token needs --fcm-project".to_string());
            }
            at_least(self.push_threads, 1, "push_threads")?;
            at_least(self.push_queue, 16, "push_queue")?;
        }
        at_least(self.max_room_members, 1, "max_room_members")?;
        at_least(self.max_devices_per_user, 1, "max_devices_per_user")?;
        if self.shards > 1024 {
            return Err(format!("shards must be at most 1024 (got {})", self.shards));
        }
        Ok(())
    }

    /// Whether push notifications are on (FCM credentials or a token given).
    pub fn push_enabled(&self) -> bool {
        !self.fcm_credentials.as_os_str().is_empty() || !self.fcm_access_token.expose().is_empty()
    }

    /// Connections each shard accepts (the process limit split evenly).
    pub fn max_connections_per_shard(&self) -> usize {
        self.max_connections.div_ceil(self.shards)
    }
}

/// The soft RLIMIT_NOFILE of this process.
pub(crate) fn nofile_limit() -> usize {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
        rl.rlim_cur as usize
    } else {
        1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_file_beats_default() {
        let cli = Cli::parse_from(["stampede", "--max-headers", "9"]);
        let file: FileConfig =
            toml::from_str("max_headers = 7\nmax_subscriptions = 5\nstomp_listen = \"off\"")
                .unwrap();
        let cfg = Config::resolve(cli, file);
        assert_eq!(cfg.max_headers, 9);
        assert_eq!(cfg.max_subscriptions, 5);
        assert_eq!(cfg.stomp_listen, Listen::Off);
        assert_eq!(cfg.max_frame_size, 65536);
    }

    #[test]
    fn help_gives_every_setting_its_env_var_and_default() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        let settings = Cli::command()
            .get_arguments()
            .filter(|a| a.get_long().is_some())
            .count()
            - 2; // minus --config and --check-capacity
        assert_eq!(help.matches("[default: ").count(), settings, "{help}");
        // --config has an env var too; --check-capacity (an action) not.
        assert_eq!(
            help.matches("[env: STAMPEDE_").count(),
            settings + 1,
            "{help}"
        );
    }

    #[test]
    fn auth_settings_are_checked() {
        let cfg = |args: &[&str]| {
            let mut all = vec!["stampede"];
            all.extend_from_slice(args);
            let mut c = Config::resolve(Cli::parse_from(all), FileConfig::default());
            c.finish().map(|_| c)
        };
        assert!(cfg(&[]).is_ok(), "none on loopback is the default");
        let e = cfg(&["--listen", "0.0.0.0:8080"]).unwrap_err();
        assert!(
            e.contains("--allow-insecure-auth") && e.contains("0.0.0.0:8080"),
            "{e}"
        );
        let e = cfg(&["--stomp-listen", "[::]:61613"]).unwrap_err();
        assert!(e.contains("[::]:61613"), "{e}");
        assert!(cfg(&["--listen", "0.0.0.0:8080", "--allow-insecure-auth", "true"]).is_ok());
        let e = cfg(&["--auth", "jwt", "--jwt-secret", "short"]).unwrap_err();
        assert!(
            e.contains("at least 32 bytes") && !e.contains("short"),
            "{e}"
        );
        let c = cfg(&[
            "--auth",
            "jwt",
            "--jwt-secret",
            &"k".repeat(32),
            "--listen",
            "0.0.0.0:1",
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains(&"k".repeat(32)),
            "Debug hides the secret: {shown}"
        );
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        assert!(toml::from_str::<FileConfig>("max_headerz = 7").is_err());
    }

    #[test]
    fn listen_parses_off_and_addresses() {
        assert_eq!("OFF".parse::<Listen>().unwrap(), Listen::Off);
        assert!("nonsense".parse::<Listen>().is_err());
    }
}
