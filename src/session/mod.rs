//! The STOMP session of one connection: what each client frame does.
//!
//! `Session::handle` takes one parsed frame and dispatches it to one small
//! function per frame kind (transactions in `transaction.rs`). The session
//! writes its own answers (CONNECTED, RECEIPT, ERROR) to the connection's
//! `Out` and reaches the rest of the server only through a [`Broker`]
//! (`broker.rs`), so it runs — and is tested — without a shard. It names
//! nothing above the message types and the outbound buffer.

mod broker;
mod error;
mod receipts;
#[cfg(test)]
mod tests;
mod transaction;

use std::collections::VecDeque;
use std::time::Instant;

pub(crate) use broker::{Broker, NewSub, SessionLimits, Subscribed};
pub(crate) use error::StompError;

use crate::config::Prefixes;
use crate::message::{AckMode, Confirm, Draft, RESERVED_HEADERS, ReplayFrom};
use crate::out::{CLOSE_FLUSH_TIMEOUT, Out};
use crate::room::{NotARoom, send_room, subscribe_room};
use crate::stomp::frame::{Command, Escaping, Frame, Version, escape_into};
use crate::ws::framing::CloseCode;
use error::SUPPORTED_VERSIONS;
use receipts::Receipts;
use transaction::Transactions;

/// One subscription of this connection.
#[derive(Debug)]
struct SubState {
    /// The client's `id`.
    id: Box<str>,
    /// Connection-local number, part of the `ack` ids we hand out.
    n: u32,
    room: Box<str>,
    mode: AckMode,
    /// The broker's key for it (`Broker::unsubscribe`).
    key: usize,
    /// Sequence numbers delivered and not yet acknowledged (client modes).
    pending: VecDeque<u64>,
}

/// A DISCONNECT waiting for the receipts still owed for earlier frames.
#[derive(Debug)]
struct Disconnect {
    /// The DISCONNECT's own receipt.
    receipt: Option<Box<str>>,
    /// When we close regardless.
    deadline: Instant,
}

/// What `Session::pend` decided for a message to a client-ack subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pend {
    /// Deliver it; with STOMP 1.2 with this `ack` id (subscription, seq).
    Deliver(Option<(u32, u64)>),
    /// The subscription is gone (unsubscribed meanwhile): skip it.
    Gone,
    /// Too many unacknowledged messages: the session has written an ERROR.
    Refused,
}

/// The protocol state of one connection.
#[derive(Debug)]
pub(crate) struct Session {
    connected: bool,
    version: Version,
    /// The authenticated user (`x-sender`): see `crate::auth`.
    user: Box<str>,
    subs: Vec<SubState>,
    next_sub_n: u32,
    /// Open transactions and COMMITs waiting for their SENDs to be stored.
    txs: Transactions,
    /// Negotiated heart-beat intervals in ms (0 = off): how often we send,
    /// and how often we must hear from the client.
    hb_send_ms: u64,
    hb_recv_ms: u64,
    /// RECEIPTs not yet written: owed ones (SEND, SUBSCRIBE, COMMIT the
    /// broker answers later) and those waiting behind them, in frame order.
    receipts: Receipts,
    disconnect: Option<Disconnect>,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            connected: false,
            version: Version::V10,
            user: "anonymous".into(),
            subs: Vec::new(),
            next_sub_n: 0,
            txs: Transactions::default(),
            hb_send_ms: 0,
            hb_recv_ms: 0,
            receipts: Receipts::default(),
            disconnect: None,
        }
    }
}

impl Session {
    // ---- state the connection and the shard read ------------------------

    pub fn escaping(&self) -> Escaping {
        Escaping::for_version(self.version)
    }

    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The negotiated heart-beats in ms (0 = off): (we send every, we must
    /// hear from the client every).
    pub fn heartbeats(&self) -> (u64, u64) {
        (self.hb_send_ms, self.hb_recv_ms)
    }

    /// A DISCONNECT arrived and waits for earlier receipts: read no further.
    pub fn disconnecting(&self) -> bool {
        self.disconnect.is_some()
    }

    /// When a waiting DISCONNECT is answered regardless.
    pub fn disconnect_deadline(&self) -> Option<Instant> {
        self.disconnect.as_ref().map(|d| d.deadline)
    }

    /// The authenticated user (`x-sender`).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The room's owner ended subscription `sub_n` (its user is no longer
    /// a member) and the shard removed it: forget it, without a frame.
    pub fn forget_subscription(&mut self, sub_n: u32) {
        if let Some(i) = self.subs.iter().position(|s| s.n == sub_n) {
            self.subs.swap_remove(i);
        }
    }

    /// The room and broker key of subscription `sub_n`, if it still exists.
    pub fn subscription(&self, sub_n: u32) -> Option<(&str, usize)> {
        self.subs
            .iter()
            .find(|s| s.n == sub_n)
            .map(|s| (&*s.room, s.key))
    }

    // ---- results the broker brings back ---------------------------------

    /// A RECEIPT the broker owed (for a SEND or SUBSCRIBE): write it and
    /// every later one that waited behind it; if a DISCONNECT waited for
    /// them, answer it and close.
    pub fn deferred_receipt(&mut self, out: &mut Out, receipt: &str) {
        let escaping = self.escaping();
        self.receipts
            .settle(receipt, |r| write_receipt(out, r, escaping));
        if !self.receipts.any_owed() {
            self.finish_disconnect(out);
        }
    }

    /// A message is about to be delivered to subscription `sub_n`: for the
    /// client ack modes, remember it as pending (at most `max_pending`;
    /// beyond that, ERROR).
    pub fn pend(&mut self, sub_n: u32, seq: u64, max_pending: usize, out: &mut Out) -> Pend {
        let Some(state) = self.subs.iter_mut().find(|s| s.n == sub_n) else {
            return Pend::Gone;
        };
        if state.mode == AckMode::Auto {
            return Pend::Deliver(None);
        }
        if state.pending.len() >= max_pending {
            out.error(
                "too many unacknowledged messages",
                None,
                &[],
                &format!(
                    "subscription has {max_pending} messages without ACK; acknowledge or use ack:auto"
                ),
                CloseCode::Policy,
            );
            return Pend::Refused;
        }
        state.pending.push_back(seq);
        Pend::Deliver((self.version == Version::V12).then_some((sub_n, seq)))
    }

    /// Answer a waiting DISCONNECT and close (receipts still owed at its
    /// deadline are given up).
    pub fn finish_disconnect(&mut self, out: &mut Out) {
        if let Some(d) = self.disconnect.take() {
            if let Some(r) = &d.receipt {
                write_receipt(out, r, self.escaping());
            }
            out.close(CloseCode::Normal, "");
        }
    }

    /// Remove every subscription (the connection is closing).
    pub fn unsubscribe_all(&mut self, broker: &impl Broker) {
        for sub in self.subs.drain(..) {
            broker.unsubscribe(&sub.room, sub.key, &self.user);
        }
        self.txs.clear();
    }

    // ---- client frames ----------------------------------------------------

    /// Handle one frame. On error the caller writes the ERROR and closes.
    pub fn handle(
        &mut self,
        f: &Frame<'_>,
        out: &mut Out,
        broker: &impl Broker,
    ) -> Result<(), StompError> {
        if !self.connected {
            return match f.command {
                Command::Connect | Command::Stomp => self.connect(f, out, broker),
                _ => Err(StompError::protocol(
                    "not connected",
                    format!("{} before CONNECT; send CONNECT first", f.command.name()),
                )),
            };
        }
        if !f.body.is_empty() && f.command != Command::Send {
            return Err(StompError::protocol(
                "frame must not have a body",
                format!("only SEND may carry a body, not {}", f.command.name()),
            ));
        }
        match f.command {
            Command::Connect | Command::Stomp => Err(StompError::protocol(
                "already connected",
                "a second CONNECT on one connection is not allowed",
            )),
            Command::Send => self.send(f, out, broker),
            Command::Subscribe => self.subscribe(f, out, broker),
            Command::Unsubscribe => self.unsubscribe(f, out, broker),
            Command::Ack | Command::Nack => self.ack(f, out, broker),
            Command::Begin => self.begin(f, out, broker),
            Command::Commit => self.commit(f, out, broker),
            Command::Abort => self.abort(f, out),
            Command::Disconnect => {
                self.disconnect(f, out);
                Ok(())
            }
        }
    }

    /// The RECEIPT of a frame done now: written at once, or after the
    /// receipts still owed for earlier frames.
    fn receipt(&mut self, out: &mut Out, receipt: Option<&str>) -> Result<(), StompError> {
        let Some(r) = receipt else { return Ok(()) };
        if let Some(r) = self
            .receipts
            .ready(r)
            .map_err(|_| StompError::too_many_receipts())?
        {
            write_receipt(out, r, self.escaping());
        }
        Ok(())
    }

    /// A RECEIPT that the broker answers later (`deferred_receipt`).
    fn owe_receipt(&mut self, receipt: &str) -> Result<(), StompError> {
        self.receipts
            .owe(receipt)
            .map_err(|_| StompError::too_many_receipts())
    }

    fn connect(
        &mut self,
        f: &Frame<'_>,
        out: &mut Out,
        broker: &impl Broker,
    ) -> Result<(), StompError> {
        let version = match f.header("accept-version") {
            None => Version::V10,
            Some(list) => {
                let offered: Vec<&str> = list.split(',').map(str::trim).collect();
                [Version::V12, Version::V11, Version::V10]
                    .into_iter()
                    .find(|v| offered.contains(&v.as_str()))
                    .ok_or_else(|| StompError {
                        version_header: true,
                        ..StompError::protocol(
                            "unsupported protocol version",
                            format!(
                                "supported versions are {SUPPORTED_VERSIONS}; client offered {list}"
                            ),
                        )
                    })?
            }
        };
        let (cx_ms, cy_ms) = match f.header("heart-beat") {
            None => (0, 0),
            Some(hb) => parse_heart_beat(hb).ok_or_else(|| {
                StompError::protocol(
                    "invalid heart-beat header",
                    format!("expected two integers like 10000,10000, got '{hb}'"),
                )
            })?,
        };
        let user = broker
            .auth()
            .user(
                f.header("login"),
                f.header("passcode"),
                // STOMP header names are case-sensitive; HTTP's is not.
                f.header("Authorization")
                    .or_else(|| f.header("authorization")),
            )
            .map_err(|e| {
                tracing::debug!(session = %broker.session_id(), "CONNECT refused: {e}");
                StompError::auth()
            })?;
        let limits = broker.limits();
        // STOMP 1.2 "Heart-beating": each side sends at the larger of what one
        // can do and the other wants, if neither is 0.
        self.hb_send_ms = if limits.heartbeat_send_ms > 0 && cy_ms > 0 {
            limits.heartbeat_send_ms.max(cy_ms)
        } else {
            0
        };
        self.hb_recv_ms = if limits.heartbeat_receive_ms > 0 && cx_ms > 0 {
            limits.heartbeat_receive_ms.max(cx_ms)
        } else {
            0
        };
        self.version = version;
        self.connected = true;
        out.set_escaping(self.escaping());
        self.user = user;
        let hb = format!(
            "{},{}",
            limits.heartbeat_send_ms, limits.heartbeat_receive_ms
        );
        let session = broker.session_id();
        out.frame(
            "CONNECTED",
            &[
                ("version", version.as_str()),
                ("heart-beat", &hb),
                ("server", concat!("stampede/", env!("CARGO_PKG_VERSION"))),
                ("session", &session),
                ("user-name", &self.user),
            ],
            b"",
            Escaping::None,
        );
        // The spec leaves CONNECT out of receipts; we honour it anyway,
        // after CONNECTED, so every frame behaves alike.
        self.receipt(out, f.header("receipt"))?;
        Ok(())
    }

    fn send(
        &mut self,
        f: &Frame<'_>,
        out: &mut Out,
        broker: &impl Broker,
    ) -> Result<(), StompError> {
        let receipt = f.header("receipt");
        if let Some(tx) = f.header("transaction") {
            self.hold(tx, f, broker)?;
            self.receipt(out, receipt)?;
            return Ok(());
        }
        let draft = self.draft(f, &broker.limits().prefixes)?;
        // RECEIPT follows once the message is stored (or, with persistence
        // off, once the owner shard sequenced it).
        if let Some(r) = receipt {
            self.receipts
                .owe_send(r, Instant::now())
                .map_err(|_| StompError::too_many_receipts())?;
        }
        broker.publish(draft, receipt.map(|r| Confirm::Receipt(r.into())));
        Ok(())
    }

    /// Turn a SEND into a draft for the room's owner.
    fn draft(&self, f: &Frame<'_>, prefixes: &Prefixes) -> Result<Draft, StompError> {
        let dest = f
            .header("destination")
            .ok_or_else(|| StompError::missing("destination", f.command))?;
        let room =
            send_room(dest, prefixes).ok_or_else(|| StompError::bad_destination(dest, prefixes))?;
        let mut headers: Vec<(Box<str>, Box<str>)> = Vec::new();
        for (k, v) in &f.headers {
            if RESERVED_HEADERS.contains(&k.as_ref()) || headers.iter().any(|(n, _)| **n == **k) {
                continue;
            }
            headers.push((k.as_ref().into(), v.as_ref().into()));
        }
        Ok(Draft {
            room: room.into(),
            sender: self.user.clone(),
            headers,
            body: f.body.into(),
        })
    }

    fn subscribe(
        &mut self,
        f: &Frame<'_>,
        out: &mut Out,
        broker: &impl Broker,
    ) -> Result<(), StompError> {
        let dest = f
            .header("destination")
            .ok_or_else(|| StompError::missing("destination", f.command))?;
        let prefixes = &broker.limits().prefixes;
        let room = match subscribe_room(dest, prefixes, &self.user) {
            Ok(room) => room,
            Err(NotARoom::Invalid) => return Err(StompError::bad_destination(dest, prefixes)),
            Err(NotARoom::OtherUser) => return Err(StompError::other_users_destination(dest)),
        };
        let room = &*room;
        let id = match f.header("id") {
            Some(id) => id,
            // STOMP 1.0 makes `id` optional; the destination then names it.
            None if self.version == Version::V10 => dest,
            None => return Err(StompError::missing("id", f.command)),
        };
        let mode = match f.header("ack").unwrap_or("auto") {
            "auto" => AckMode::Auto,
            "client" => AckMode::Client,
            "client-individual" => AckMode::ClientIndividual,
            other => {
                return Err(StompError::protocol(
                    "invalid ack mode",
                    format!("ack must be auto, client or client-individual, not '{other}'"),
                ));
            }
        };
        if self.subs.iter().any(|s| &*s.id == id) {
            return Err(StompError::protocol(
                "subscription id already in use",
                format!("this connection already has a subscription with id '{id}'"),
            ));
        }
        let max = broker.limits().max_subscriptions;
        if self.subs.len() >= max {
            return Err(StompError::limit(
                "too many subscriptions",
                format!("at most {max} subscriptions per connection"),
            ));
        }
        let replay = replay_from(f)?;
        if replay.is_some() && !broker.persistent() {
            return Err(StompError::protocol(
                "history is disabled",
                "x-since-seq and x-replay-last need stored messages; this server runs with --persist false",
            ));
        }
        let n = self.next_sub_n;
        self.next_sub_n = self.next_sub_n.wrapping_add(1);
        let mut prefix = b"subscription:".to_vec();
        escape_into(&mut prefix, id, self.escaping());
        prefix.push(b'\n');
        let receipt = f.header("receipt");
        let done = broker.subscribe(NewSub {
            room,
            user: &self.user,
            sub_n: n,
            prefix: prefix.into(),
            mode,
            version: self.version,
            receipt,
            replay,
        });
        // Most clients hold one or two subscriptions: grow one at a time
        // rather than by doubling (idle memory per session is a headline).
        self.subs.reserve_exact(1);
        self.subs.push(SubState {
            id: id.into(),
            n,
            room: room.into(),
            mode,
            key: done.key,
            pending: VecDeque::new(),
        });
        if done.receipt_now {
            self.receipt(out, receipt)?;
        } else if let Some(r) = receipt {
            self.owe_receipt(r)?;
        }
        Ok(())
    }

    fn unsubscribe(
        &mut self,
        f: &Frame<'_>,
        out: &mut Out,
        broker: &impl Broker,
    ) -> Result<(), StompError> {
        let idx = match (f.header("id"), self.version) {
            (Some(id), _) => self.subs.iter().position(|s| &*s.id == id),
            (None, Version::V10) => {
                let dest = f
                    .header("destination")
                    .ok_or_else(|| StompError::missing("id", f.command))?;
                let room = subscribe_room(dest, &broker.limits().prefixes, &self.user).ok();
                self.subs
                    .iter()
                    .position(|s| Some(&*s.room) == room.as_deref())
            }
            (None, _) => return Err(StompError::missing("id", f.command)),
        };
        let Some(idx) = idx else {
            return Err(StompError::protocol(
                "unknown subscription",
                format!(
                    "no subscription '{}' on this connection",
                    f.header("id").unwrap_or("")
                ),
            ));
        };
        let sub = self.subs.swap_remove(idx);
        broker.unsubscribe(&sub.room, sub.key, &self.user);
        self.receipt(out, f.header("receipt"))?;
        Ok(())
    }

    fn ack(
        &mut self,
        f: &Frame<'_>,
        out: &mut Out,
        broker: &impl Broker,
    ) -> Result<(), StompError> {
        if let Some(tx) = f.header("transaction") {
            self.hold(tx, f, broker)?;
        } else {
            let (sub_idx, seq) = self.ack_target(f)?;
            self.ack_apply(sub_idx, seq);
        }
        self.receipt(out, f.header("receipt"))?;
        Ok(())
    }

    /// The subscription and sequence number an ACK/NACK names, if pending.
    fn ack_target(&self, f: &Frame<'_>) -> Result<(usize, u64), StompError> {
        let unknown = |what: &str| {
            StompError::protocol(
                "unknown ack id",
                format!(
                    "{} {what} does not name a message pending acknowledgement",
                    f.command.name()
                ),
            )
        };
        let (sub_idx, seq) = match self.version {
            Version::V12 => {
                let id = f
                    .header("id")
                    .ok_or_else(|| StompError::missing("id", f.command))?;
                let (n, seq) = id
                    .split_once('-')
                    .and_then(|(n, s)| Some((n.parse::<u32>().ok()?, s.parse::<u64>().ok()?)))
                    .ok_or_else(|| unknown(id))?;
                let idx = self
                    .subs
                    .iter()
                    .position(|s| s.n == n)
                    .ok_or_else(|| unknown(id))?;
                (idx, seq)
            }
            v => {
                let mid = f
                    .header("message-id")
                    .ok_or_else(|| StompError::missing("message-id", f.command))?;
                let (room, seq) = mid
                    .rsplit_once(':')
                    .and_then(|(r, s)| Some((r, s.parse::<u64>().ok()?)))
                    .ok_or_else(|| unknown(mid))?;
                let idx = match f.header("subscription") {
                    Some(sid) => self
                        .subs
                        .iter()
                        .position(|s| &*s.id == sid && &*s.room == room),
                    None if v == Version::V10 => self
                        .subs
                        .iter()
                        .position(|s| &*s.room == room && s.pending.contains(&seq)),
                    None => return Err(StompError::missing("subscription", f.command)),
                };
                (idx.ok_or_else(|| unknown(mid))?, seq)
            }
        };
        if !self.subs[sub_idx].pending.contains(&seq) {
            return Err(unknown(&seq.to_string()));
        }
        Ok((sub_idx, seq))
    }

    /// Acknowledge `seq` on subscription `sub_idx` (cumulatively in `client`
    /// mode). A seq no longer pending is ignored (an earlier cumulative ACK
    /// of the same COMMIT covered it).
    fn ack_apply(&mut self, sub_idx: usize, seq: u64) {
        let sub = &mut self.subs[sub_idx];
        let Some(pos) = sub.pending.iter().position(|&s| s == seq) else {
            return;
        };
        match sub.mode {
            AckMode::Client => {
                sub.pending.drain(..=pos);
            }
            _ => {
                sub.pending.remove(pos);
            }
        }
    }

    /// STOMP's graceful shutdown: the DISCONNECT receipt confirms every
    /// earlier frame, so it waits for receipts still owed.
    fn disconnect(&mut self, f: &Frame<'_>, out: &mut Out) {
        self.disconnect = Some(Disconnect {
            receipt: f.header("receipt").map(Into::into),
            deadline: Instant::now() + CLOSE_FLUSH_TIMEOUT,
        });
        if !self.receipts.any_owed() {
            self.finish_disconnect(out);
        }
    }
}

fn write_receipt(out: &mut Out, id: &str, escaping: Escaping) {
    out.frame("RECEIPT", &[("receipt-id", id)], b"", escaping);
}

/// The replay a SUBSCRIBE asks for: `x-since-seq:N` (every stored message
/// after seq N) or `x-replay-last:K` (the last K), not both.
fn replay_from(f: &Frame<'_>) -> Result<Option<ReplayFrom>, StompError> {
    let num = |name: &str| -> Result<Option<u64>, StompError> {
        f.header(name)
            .map(|v| {
                v.trim().parse::<u64>().map_err(|_| {
                    StompError::protocol(
                        format!("invalid {name} header"),
                        format!("{name} must be a non-negative integer, got '{v}'"),
                    )
                })
            })
            .transpose()
    };
    match (num("x-since-seq")?, num("x-replay-last")?) {
        (Some(_), Some(_)) => Err(StompError::protocol(
            "conflicting replay headers",
            "use either x-since-seq or x-replay-last, not both",
        )),
        (Some(n), None) => Ok(Some(ReplayFrom::Since(n))),
        (None, Some(k)) => Ok(Some(ReplayFrom::Last(k))),
        (None, None) => Ok(None),
    }
}

/// `cx,cy` as two integers of milliseconds.
fn parse_heart_beat(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}
