//! stampede: a thread-per-core STOMP-over-WebSocket group-chat server.
//!
//! # Layout
//! - `config`   — every setting: flag, `STAMPEDE_*` env var, TOML key.
//! - `stomp`    — the STOMP frame codec (parse client frames, encode server frames).
//! - `ws`       — HTTP upgrade and WebSocket framing (tungstenite's sans-IO parts).
//! - `conn`     — a connection: its state, output buffer and I/O task.
//! - `session`  — what each STOMP frame does for one connection.
//! - `router`   — rooms: ownership by hash, sequencing, local subscriber index.
//! - `shard`    — one pinned glommio executor: accept, mesh, fan-out, timers.
//! - `store`    — SQLite history: schema and migrations, the group-commit writer
//!   thread (issue 4; not yet on the message path).
//!
//! See `ARCHITECTURE.md` for the message flow and who owns what.

pub mod api;
pub mod config;
pub mod conn;
pub mod router;
pub mod session;
pub mod shard;
pub mod stomp;
pub mod store;
pub mod ws;
