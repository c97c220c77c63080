//! stampede: a thread-per-core STOMP-over-WebSocket group-chat server.
//!
//! # Layout
//! Layers, lowest first; a module names only modules of its own or a lower
//! layer (`scripts/check-layers.py` checks it in the test suite):
//!
//! 1. Foundations, naming nothing else of the crate:
//!    - `config` — every setting: flag, `STAMPEDE_*` env var, TOML key.
//!    - `clock`  — wall-clock milliseconds for `x-timestamp`.
//!    - `stomp`  — the STOMP frame codec (parse client frames, encode server frames).
//!    - `ws`     — the HTTP upgrade request and WebSocket framing (tungstenite's sans-IO parts).
//!    - `http`   — every HTTP answer the server writes.
//!    - `rate`   — the per-connection publish rate limit (GCRA).
//!    - `capacity` — what the host's limits (open files, memory, somaxconn,
//!      memlock, cores) allow for the settings: the start-up line and
//!      `--check-capacity`.
//!    - `metrics` — per-shard counters (thread-local, unshared), histograms,
//!      readiness, and the Prometheus text format.
//!    - `tls`    — `--tls-cert`/`--tls-key` read into a rustls configuration
//!      (the per-connection session lives in `conn`).
//! 2. Message types, and who a client is:
//!    - `message` — `Draft` → `Sequenced` → `Encoded`; `Confirm`, `ReplayFrom`, `AckMode`.
//!    - `room`    — room names, the room hash and `owner_of`.
//!    - `auth`    — CONNECT credentials (`--auth none|jwt`) and user ids.
//! 3. Parts that hold messages:
//!    - `store`  — SQLite history: schema, the group-commit writer thread, the
//!      reader pool, retention. On the message path: the owner shard hands
//!      every sequenced message to the writer, and RECEIPTs wait for its commit.
//!    - `index`  — a shard's local subscribers per room (generic over the subscriber).
//!    - `out`    — a connection's outbound buffer and closing state.
//!    - `push`   — push notifications to away members: the FCM HTTP v1
//!      client and its pool of blocking threads, fed after the commit
//!      (names `store`, for the devices: the one sideways edge).
//! 4. Protocol logic, testable alone:
//!    - `session` — what each STOMP frame does, behind the `Broker` trait.
//!    - `api`     — the plain HTTP endpoints (health, history), as answers or store reads.
//! 5. `conn`   — a connection: its socket (the only owner of the fd), the
//!    bytes → HTTP / WebSocket / STOMP layers, its session and output.
//! 6. `shard`  — one pinned glommio executor: connections and flush, rooms and
//!    fan-out, the mesh to other shards, the durable path, shutdown, timers.
//! 7. `server` — start-up: listeners, the store's threads, the mesh, the shards;
//!    `scrape` — the thread that answers `/metrics` (asks every shard, merges).
//!
//! The binary (`main.rs`) reads the settings, starts the server, and runs the
//! graceful shutdown. See `ARCHITECTURE.md` for the threads, who owns what
//! and the message flow.

mod api;
mod auth;
pub mod capacity;
mod clock;
mod cluster;
pub mod config;
mod conn;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod index;
pub mod message;
mod metrics;
pub mod out;
mod push;
mod rate;
mod room;
mod scrape;
pub mod server;
mod session;
mod shard;
pub mod stomp;
pub mod store;
pub mod tls;
pub mod ws;
