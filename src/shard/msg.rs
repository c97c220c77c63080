//! What shards say to each other over the SPSC mesh (`ShardMsg`, in
//! batches: one channel slot per flush, not per message), and what plain
//! threads (the SQLite writer, the reader pool, main) say to a shard
//! (`External`, through its inbox and doorbell).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crossbeam_channel::Sender;

use super::mesh::Ringer;
use crate::conn::ConnToken;
use crate::message::{Confirm, Draft, ReplayFrom, Sequenced};
use crate::push::PushJob;
use crate::store::{Page, RoomSeqs, StoreError};

/// What a room load read: where its seqs stand and, on a full load (not a
/// mere extension of the reservation), its members.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// `None` after a load of the members alone.
    pub seqs: Option<RoomSeqs>,
    pub members: Option<Vec<Box<str>>>,
}

/// A change in whether the sending shard has subscribers of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interest {
    /// The sender now has subscribers: send it the room's messages.
    Add,
    /// The sender has none left.
    Remove,
    /// No change; only the `reply` matters (it proves earlier changes landed).
    Sync,
}

/// A confirmation owed to connection `conn` on shard `shard`: the tag that
/// travels with a message through the writer.
#[derive(Debug)]
pub(crate) struct Owed {
    pub shard: usize,
    pub conn: ConnToken,
    pub what: Confirm,
}

/// What travels with a message through the writer: the confirmation owed
/// for it, and the push to its room's away members (offered to the push
/// pool only once the message is committed).
#[derive(Debug, Default)]
pub(crate) struct Tag {
    pub owed: Option<Owed>,
    pub push: Option<Box<PushJob>>,
}

/// Why a room's owner could not take a connection's SEND or SUBSCRIBE.
#[derive(Debug, Clone)]
pub(crate) enum Refusal {
    /// The room's last stored seq could not be read.
    HistoryUnavailable(Arc<StoreError>),
    /// `--join invite` and the user is not a member of the room.
    NotMember(Box<str>),
    /// `--join open`, a newcomer, and the room has `max_room_members`.
    RoomFull(Box<str>),
    /// Cluster mode: Redis refused to sequence the message.
    ClusterRefused(Box<str>),
}

impl Refusal {
    /// The ERROR frame's `message` header and body.
    pub fn error_text(&self) -> (&'static str, String) {
        match self {
            Refusal::HistoryUnavailable(e) => (
                "history unavailable",
                format!("the room's history could not be read: {e}"),
            ),
            Refusal::NotMember(room) => (
                "not a member",
                format!("only members of room '{room}' may subscribe or send to it"),
            ),
            Refusal::RoomFull(room) => (
                "room full",
                format!("room '{room}' has as many members as it may have"),
            ),
            Refusal::ClusterRefused(e) => (
                "message not sent",
                format!("the cluster's Redis refused the message: {e}"),
            ),
        }
    }
}

/// A subscription asks its room's owner to be let in: the owner checks
/// (`--join invite`) or records (`--join open`) the membership and counts
/// the user as present.
#[derive(Debug, Clone)]
pub(crate) struct JoinReq {
    pub room: Box<str>,
    pub user: Box<str>,
    /// The subscriber: its shard, connection and subscription number.
    pub shard: usize,
    pub conn: ConnToken,
    pub sub_n: u32,
    /// The SUBSCRIBE's receipt, written once it is let in.
    pub receipt: Option<Box<str>>,
}

/// An API call changes a room's members (`PUT|DELETE
/// /api/rooms/{room}/members/{user}`), answered to HTTP connection `conn`
/// of shard `shard` once stored.
#[derive(Debug, Clone)]
pub(crate) struct MemberReq {
    pub room: Box<str>,
    pub user: Box<str>,
    pub add: bool,
    pub shard: usize,
    pub conn: ConnToken,
}

/// `GET /api/rooms/{room}/online` from HTTP connection `conn` of shard
/// `shard`, for `user` (`None`: the admin), to the room's owner.
#[derive(Debug, Clone)]
pub(crate) struct OnlineReq {
    pub room: Box<str>,
    pub user: Option<Box<str>>,
    pub shard: usize,
    pub conn: ConnToken,
}

/// A subscription asks its room's owner for a replay.
#[derive(Debug, Clone)]
pub(crate) struct ReplayReq {
    pub room: Box<str>,
    /// The subscriber's user (`--join invite`: members only).
    pub user: Box<str>,
    pub from: ReplayFrom,
    /// The subscriber: its shard, connection and subscription number.
    pub shard: usize,
    pub conn: ConnToken,
    pub sub_n: u32,
}

#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// To a room's owner: sequence and fan out this message. `origin` is the
    /// publishing connection on the sending shard, for its confirmation.
    Publish {
        draft: Draft,
        origin: ConnToken,
        confirm: Option<Confirm>,
    },
    /// From a room's owner: deliver to local subscribers.
    Deliver(Sequenced),
    /// Send RECEIPT `receipt` to connection `conn` of the receiving shard.
    Receipt {
        conn: ConnToken,
        receipt: Box<str>,
    },
    /// A message of `conn` could not be taken: ERROR and close it.
    Refuse {
        conn: ConnToken,
        receipt: Option<Box<str>>,
        why: Refusal,
    },
    /// To a room's owner: the sending shard's interest in `room` changed;
    /// `reply` asks for a RECEIPT once the owner has applied it.
    Interest {
        room: Box<str>,
        change: Interest,
        reply: Option<(ConnToken, Box<str>)>,
    },
    /// To a room's owner: let a new subscription in (after its `Interest`).
    Join(JoinReq),
    /// From a room's owner: subscription `sub_n` of `conn` is let in
    /// (`Ok`) or refused. `room` and `user` let the subscriber say it left
    /// if the subscription is gone meanwhile.
    Joined {
        conn: ConnToken,
        sub_n: u32,
        room: Box<str>,
        user: Box<str>,
        result: Result<(), Refusal>,
        receipt: Option<Box<str>>,
    },
    /// To a room's owner: one subscription of `user` let in before has ended.
    Leave {
        room: Box<str>,
        user: Box<str>,
    },
    /// From a room's owner: `user` is no longer a member: end their
    /// subscriptions to `room` here (without an ERROR).
    Evict {
        room: Box<str>,
        user: Box<str>,
    },
    /// To a room's owner: an API call changes its members.
    Member(MemberReq),
    Online(OnlineReq),
    /// To a room's owner: replay stored messages to a new subscription
    /// (sent after the subscription's `Interest`, so the owner knows from
    /// which seq on the live messages reach it).
    Replay(ReplayReq),
    /// From a room's owner: the replay of subscription `sub_n` of `conn`
    /// goes up to `upto`, and every live message up to it was sent before
    /// this (the store's pages come on another channel). `empty`: nothing
    /// to read, this is the whole answer.
    Replayed {
        conn: ConnToken,
        sub_n: u32,
        upto: u64,
        empty: bool,
    },
    /// Shutdown: the sender reads no more client frames; everything it
    /// sent before this is in the channel ahead of it.
    Quiesce,
    /// Take over an upgraded WebSocket connection (fd dup()ed for the
    /// receiver), with bytes already read and bytes still to send.
    Adopt {
        /// Owned: closed if the message is dropped undelivered (shutdown).
        fd: OwnedFd,
        /// Its TLS session (`--tls-cert`), mid-stream.
        tls: Option<crate::conn::TlsSession>,
        inbound: Vec<u8>,
        outbound: Vec<u8>,
    },
}

/// What one message in a batch is counted as against `--max-peer-bytes`:
/// the slot it takes in the batch's `Vec` and its boxed parts, so many
/// tiny messages are bounded as well as a few large ones.
const MSG_OVERHEAD: usize = std::mem::size_of::<ShardMsg>();

fn draft_bytes(d: &Draft) -> usize {
    d.room.len()
        + d.sender.len()
        + d.body.len()
        + d.headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 32)
            .sum::<usize>()
}

impl ShardMsg {
    /// Bytes this message holds while it is between two shards.
    pub fn cost(&self) -> usize {
        MSG_OVERHEAD
            + match self {
                ShardMsg::Publish { draft, confirm, .. } => {
                    draft_bytes(draft)
                        + match confirm {
                            Some(Confirm::Receipt(r)) => r.len(),
                            _ => 0,
                        }
                }
                ShardMsg::Deliver(m) => draft_bytes(&m.draft),
                ShardMsg::Receipt { receipt, .. } => receipt.len(),
                ShardMsg::Refuse { receipt, .. } => receipt.as_ref().map_or(0, |r| r.len()),
                ShardMsg::Interest { room, reply, .. } => {
                    room.len() + reply.as_ref().map_or(0, |(_, r)| r.len())
                }
                ShardMsg::Replay(req) => req.room.len() + req.user.len(),
                ShardMsg::Replayed { .. } => 0,
                ShardMsg::Join(j) => {
                    j.room.len() + j.user.len() + j.receipt.as_ref().map_or(0, |r| r.len())
                }
                ShardMsg::Joined {
                    room,
                    user,
                    receipt,
                    ..
                } => room.len() + user.len() + receipt.as_ref().map_or(0, |r| r.len()),
                ShardMsg::Leave { room, user } | ShardMsg::Evict { room, user } => {
                    room.len() + user.len()
                }
                ShardMsg::Member(m) => m.room.len() + m.user.len(),
                ShardMsg::Online(o) => o.room.len() + o.user.as_ref().map_or(0, |u| u.len()),
                ShardMsg::Quiesce => 0,
                ShardMsg::Adopt {
                    inbound, outbound, ..
                } => inbound.len() + outbound.len(),
            }
    }
}

/// A `GET /metrics` on connection `conn` of shard `shard`, for the scrape
/// thread, which answers it through the shard's inbox (`External::Http`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScrapeReq {
    pub shard: usize,
    pub conn: ConnToken,
}

/// From a plain thread to a shard.
pub(crate) enum External {
    /// A writer batch with confirmations owed to this shard's connections
    /// is committed (`error: None`) or failed (nothing of it was stored).
    Committed {
        owed: Vec<(ConnToken, Confirm)>,
        error: Option<Arc<StoreError>>,
    },
    /// Where a room this shard owns stands: after a load, where its seqs
    /// continue; after an extension, how far they are now reserved.
    RoomLoaded {
        room: Box<str>,
        result: Result<Loaded, StoreError>,
    },
    /// A page of a replay for subscription `sub_n` of `conn`, covering
    /// stored seqs up to `upto` (later ones reach it live).
    ReplayPage {
        conn: ConnToken,
        sub_n: u32,
        upto: u64,
        result: Result<Page, StoreError>,
    },
    /// The answer to an HTTP request that waited for the reader pool.
    Http { conn: ConnToken, response: Vec<u8> },
    /// A scrape: send a snapshot of this shard's counters to `reply`.
    Scrape {
        reply: Sender<crate::metrics::ShardSnapshot>,
    },
    /// From the cluster's Redis threads (`--cluster`).
    Cluster(super::cluster::ClusterEvent),
    /// A new TLS configuration (SIGHUP): for connections accepted from now.
    Tls(Arc<rustls::ServerConfig>),
    /// Graceful shutdown, first step: stop accepting and reading, hand
    /// everything to the writer, then report the shard's id once all of it
    /// is committed.
    Stop {
        flushed: std::sync::mpsc::Sender<usize>,
    },
    /// Fault injection (tests only): panic on this shard's thread.
    #[cfg(feature = "fault-injection")]
    Panic,
    /// Graceful shutdown, last step: close every client (WebSocket close
    /// 1001 "going away", ERROR on plain STOMP) and report once they are
    /// gone or the close deadline passed.
    Close {
        closed: std::sync::mpsc::Sender<usize>,
    },
}

/// A shard's inbox as other threads see it: a queue and its doorbell.
///
/// The queue is a crossbeam channel without a fixed capacity, but what can
/// be in it is bounded by construction: commit results by the writer's
/// queue (`persist_queue`) plus what the owners hold back, pool results by
/// the pool's queue (`read_queue`), control messages by one per shutdown
/// step. A bounded channel here would make the writer wait on a shard,
/// which is the one wait the design forbids.
#[derive(Clone)]
pub(crate) struct ShardHandle {
    pub tx: Sender<External>,
    pub bell: Ringer,
    /// What the watchdog watches (`watchdog.rs`).
    pub alive: std::sync::Arc<super::watchdog::Liveness>,
}

impl ShardHandle {
    pub fn send(&self, msg: External) {
        if self.tx.send(msg).is_ok() {
            self.bell.ring();
        }
    }
}
