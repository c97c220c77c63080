//! What a session needs from the rest of the server: the `Broker` trait.
//!
//! A `Session` turns client frames into calls on a broker and writes its
//! own answers (CONNECTED, RECEIPT, ERROR) to the connection's `Out`. The
//! shard implements the broker for one connection (`shard::ConnBroker`);
//! the session's unit tests use a fake that records the calls. Everything
//! a broker does that touches other connections (sequencing, fan-out) runs
//! later, after the session's frame is handled; results come back through
//! the session's methods (`deferred_receipt`, `group_part_done`, …).
//!
//! ACK and NACK need nothing from the broker: a topic message has no other
//! consumer, so acknowledgement is bookkeeping inside the session (the
//! pending list the broker's fan-out fills through `Session::pend`).

use crate::config::{Config, Prefixes};
use crate::message::{AckMode, Confirm, Draft, ReplayFrom};
use crate::stomp::frame::Version;

/// The settings a session enforces (from `Config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionLimits {
    /// Subscriptions per connection (`max_subscriptions`).
    pub max_subscriptions: usize,
    /// Open transactions per connection (`max_transactions`).
    pub max_transactions: usize,
    /// Frames one transaction may hold (`max_transaction_frames`).
    pub max_transaction_frames: usize,
    /// Bytes all open transactions of a connection may hold.
    pub max_transaction_bytes: usize,
    /// Our heart-beat offer: how often we can send, in ms (0 = never).
    pub heartbeat_send_ms: u64,
    /// How often we want to hear from the client, in ms (0 = never).
    pub heartbeat_receive_ms: u64,
    /// The destination prefixes that name rooms.
    pub prefixes: Prefixes,
}

impl SessionLimits {
    pub fn from_config(cfg: &Config) -> SessionLimits {
        SessionLimits {
            max_subscriptions: cfg.max_subscriptions,
            max_transactions: cfg.max_transactions,
            max_transaction_frames: cfg.max_transaction_frames,
            max_transaction_bytes: cfg.max_transaction_bytes,
            heartbeat_send_ms: cfg.heartbeat_send_ms,
            heartbeat_receive_ms: cfg.heartbeat_receive_ms,
            prefixes: cfg.destination_prefixes.clone(),
        }
    }
}

/// A subscription the session asks the broker to add.
#[derive(Debug)]
pub(crate) struct NewSub<'a> {
    pub room: &'a str,
    /// The session's user (the owner lets them in, or not).
    pub user: &'a str,
    /// The connection-local number of the subscription (used in `ack` ids
    /// and to find it again when messages or replay pages arrive).
    pub sub_n: u32,
    /// `subscription:<escaped id>\n`, written into every MESSAGE.
    pub prefix: Box<[u8]>,
    pub mode: AckMode,
    pub version: Version,
    /// The SUBSCRIBE's receipt, if it asked for one.
    pub receipt: Option<&'a str>,
    /// Replay stored messages first (`x-since-seq`, `x-replay-last`).
    pub replay: Option<ReplayFrom>,
}

/// What the broker did with a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Subscribed {
    /// Its key, for `Broker::unsubscribe`.
    pub key: usize,
    /// A requested RECEIPT may be written now; `false`: the broker answers
    /// it later (`Session::deferred_receipt`), once every later message of
    /// the room is sure to reach the subscription.
    pub receipt_now: bool,
}

/// The server as one session sees it.
pub(crate) trait Broker {
    /// The limits this session enforces.
    fn limits(&self) -> &SessionLimits;
    /// Who a CONNECT's credentials prove the client to be (`--auth`).
    fn auth(&self) -> &crate::auth::Authenticator;
    /// Whether messages are stored: RECEIPTs of SENDs then wait for the
    /// commit, and SUBSCRIBE may ask for a replay.
    fn persistent(&self) -> bool;
    /// The CONNECTED frame's `session` header.
    fn session_id(&self) -> String;
    /// Publish a message to its room. With `confirm`, the broker later
    /// calls back (`deferred_receipt`, `group_part_done`) or refuses the
    /// message with an ERROR.
    fn publish(&self, draft: Draft, confirm: Option<Confirm>);
    /// Add a subscription.
    fn subscribe(&self, sub: NewSub<'_>) -> Subscribed;
    /// Remove subscription `key` of `room`, held by `user`.
    fn unsubscribe(&self, room: &str, key: usize, user: &str);
}
