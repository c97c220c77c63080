//! What shards say to each other over the SPSC mesh. Messages travel in
//! batches (`Vec<ShardMsg>`): one channel slot per flush, not per message.

use std::os::fd::OwnedFd;

use crate::conn::ConnToken;
use crate::router::{Draft, Sequenced};

/// A change in whether the sending shard has subscribers of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// The sender now has subscribers: send it the room's messages.
    Add,
    /// The sender has none left.
    Remove,
    /// No change; only the `reply` matters (it proves earlier changes landed).
    Sync,
}

#[derive(Debug)]
pub enum ShardMsg {
    /// To a room's owner: sequence and fan out this message. `origin` is the
    /// publishing connection on the sending shard, for its RECEIPT.
    Publish {
        draft: Draft,
        origin: crate::conn::ConnToken,
        receipt: Option<Box<str>>,
    },
    /// From a room's owner: deliver to local subscribers.
    Deliver(Sequenced),
    /// Send RECEIPT `receipt` to connection `conn` of the receiving shard.
    Receipt { conn: ConnToken, receipt: Box<str> },
    /// To a room's owner: the sending shard's interest in `room` changed;
    /// `reply` asks for a RECEIPT once the owner has applied it.
    Interest {
        room: Box<str>,
        change: Interest,
        reply: Option<(ConnToken, Box<str>)>,
    },
    /// Take over an upgraded WebSocket connection (fd dup()ed for the
    /// receiver), with bytes already read and bytes still to send.
    Adopt {
        /// Owned: closed if the message is dropped undelivered (shutdown).
        fd: OwnedFd,
        inbound: Vec<u8>,
        outbound: Vec<u8>,
    },
}
