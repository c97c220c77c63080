//! The STOMP session of one connection: what each client frame does.
//!
//! Runs on the connection's shard with the connection borrowed; anything that
//! touches other connections (publishing, fan-out) is queued on the shard and
//! runs after the borrow ends (`Shard::run_work`).

use std::borrow::Cow;
use std::collections::VecDeque;

use crate::conn::{ConnRef, ConnToken, Out};
use crate::router::message::RESERVED_HEADERS;
use crate::router::{AckMode, Draft, room_of};
use crate::shard::{Confirm, ReplayFrom, Shard};
use crate::stomp::frame::{Command, Escaping, Frame, Version, escape_into};
use crate::ws::framing::CloseCode;

/// Versions we speak, for the ERROR `version` header.
pub const SUPPORTED_VERSIONS: &str = "1.0,1.1,1.2";

/// A STOMP-level failure: becomes an ERROR frame, then the connection closes.
#[derive(Debug)]
pub struct StompError {
    /// The ERROR `message` header (short, stable wording tests can match).
    pub message: Cow<'static, str>,
    /// The ERROR body.
    pub detail: String,
    /// WebSocket close code to use after the ERROR.
    pub close_code: CloseCode,
    /// Add the `version` header (failed version negotiation).
    pub version_header: bool,
}

impl StompError {
    pub fn protocol(
        message: impl Into<Cow<'static, str>>,
        detail: impl Into<String>,
    ) -> StompError {
        StompError {
            message: message.into(),
            detail: detail.into(),
            close_code: CloseCode::Protocol,
            version_header: false,
        }
    }

    pub fn limit(message: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> StompError {
        StompError {
            close_code: CloseCode::Policy,
            ..StompError::protocol(message, detail)
        }
    }

    fn missing(header: &str, command: Command) -> StompError {
        StompError::protocol(
            format!("missing header '{header}'"),
            format!("{} requires the '{header}' header", command.name()),
        )
    }

    /// Write this error as an ERROR frame and start closing.
    pub fn write(&self, out: &mut Out, receipt: Option<&str>) {
        let extra: &[(&str, &str)] = if self.version_header {
            &[("version", SUPPORTED_VERSIONS)]
        } else {
            &[]
        };
        out.error(&self.message, receipt, extra, &self.detail, self.close_code);
    }
}

/// One subscription of this connection.
#[derive(Debug)]
pub struct SubState {
    /// The client's `id`.
    pub id: Box<str>,
    /// Connection-local number, part of the `ack` ids we hand out.
    pub n: u32,
    pub room: Box<str>,
    pub mode: AckMode,
    /// Key of our entry in the shard's `LocalRoom::subs`.
    pub local_key: usize,
    /// Sequence numbers delivered and not yet acknowledged (client modes).
    pub pending: VecDeque<u64>,
}

/// A SEND/ACK/NACK held by an open transaction until COMMIT.
#[derive(Debug)]
struct Held {
    command: Command,
    headers: Vec<(Box<str>, Box<str>)>,
    body: Box<[u8]>,
}

#[derive(Debug)]
pub struct Session {
    pub connected: bool,
    pub version: Version,
    /// The user (`x-sender`): the CONNECT `login`, or `anonymous`.
    pub user: Box<str>,
    pub subs: Vec<SubState>,
    next_sub_n: u32,
    txs: Vec<(Box<str>, Vec<Held>)>,
    /// Bytes all open transactions hold (bounded by max_transaction_bytes).
    held_bytes: usize,
    /// Negotiated heart-beat intervals in ms (0 = off): how often we send,
    /// and how often we must hear from the client.
    pub hb_send_ms: u64,
    pub hb_recv_ms: u64,
    /// RECEIPTs owed for SEND/SUBSCRIBE that another shard answers later.
    pub outstanding_receipts: u32,
    /// A DISCONNECT waiting for those receipts: its own receipt (if any)
    /// and the time after which we close regardless.
    pub disconnect: Option<(Option<Box<str>>, std::time::Instant)>,
    /// COMMITs whose RECEIPT waits until all their SENDs are stored:
    /// (group, SENDs not yet stored, the COMMIT's receipt).
    groups: Vec<(u32, usize, Box<str>)>,
    next_group: u32,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            connected: false,
            version: Version::V10,
            user: "anonymous".into(),
            subs: Vec::new(),
            next_sub_n: 0,
            txs: Vec::new(),
            held_bytes: 0,
            hb_send_ms: 0,
            hb_recv_ms: 0,
            outstanding_receipts: 0,
            disconnect: None,
            groups: Vec::new(),
            next_group: 0,
        }
    }
}

/// What a frame needs from outside the connection.
pub struct Ctx<'a> {
    pub shard: &'a Shard,
    pub me: &'a ConnRef,
    pub token: ConnToken,
}

impl Session {
    pub fn escaping(&self) -> Escaping {
        Escaping::for_version(self.version)
    }

    /// A DISCONNECT arrived and waits for earlier receipts: read no further.
    pub fn disconnecting(&self) -> bool {
        self.disconnect.is_some()
    }

    /// A deferred RECEIPT was written; if a DISCONNECT waited for it and it
    /// was the last, answer the DISCONNECT and close.
    pub fn receipt_delivered(&mut self, out: &mut Out) {
        self.outstanding_receipts = self.outstanding_receipts.saturating_sub(1);
        if self.outstanding_receipts == 0 {
            self.finish_disconnect(out);
        }
    }

    /// One SEND of transaction group `group` is stored; after the last,
    /// RECEIPT the COMMIT.
    pub fn group_part_done(&mut self, group: u32, out: &mut Out) {
        let Some(i) = self.groups.iter().position(|g| g.0 == group) else {
            return;
        };
        self.groups[i].1 -= 1;
        if self.groups[i].1 == 0 {
            let (_, _, receipt) = self.groups.swap_remove(i);
            self.receipt(out, Some(&receipt));
            self.receipt_delivered(out);
        }
    }

    /// Forget group `group` (it failed); its COMMIT's receipt, for the ERROR.
    pub fn take_group(&mut self, group: u32) -> Option<Box<str>> {
        let i = self.groups.iter().position(|g| g.0 == group)?;
        Some(self.groups.swap_remove(i).2)
    }

    /// Answer a waiting DISCONNECT and close.
    pub fn finish_disconnect(&mut self, out: &mut Out) {
        if let Some((receipt, _)) = self.disconnect.take() {
            self.receipt(out, receipt.as_deref());
            out.close(CloseCode::Normal, "");
        }
    }

    /// Handle one frame. On error the caller writes the ERROR and closes.
    pub fn handle(&mut self, f: &Frame<'_>, out: &mut Out, cx: &Ctx<'_>) -> Result<(), StompError> {
        if !self.connected {
            return match f.command {
                Command::Connect | Command::Stomp => {
                    self.connect(f, out, cx)?;
                    // The spec leaves CONNECT out of receipts; we honour it
                    // anyway, after CONNECTED, so every frame behaves alike.
                    self.receipt(out, f.header("receipt"));
                    Ok(())
                }
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
        let receipt = f.header("receipt");
        match f.command {
            Command::Connect | Command::Stomp => Err(StompError::protocol(
                "already connected",
                "a second CONNECT on one connection is not allowed",
            )),
            Command::Send => {
                if let Some(tx) = f.header("transaction") {
                    self.hold(tx, f, cx)?;
                    self.receipt(out, receipt);
                    return Ok(());
                }
                let draft = self.draft(f)?;
                // RECEIPT follows once the message is stored (or, with
                // persistence off, once the owner shard sequenced it).
                if receipt.is_some() {
                    self.outstanding_receipts += 1;
                }
                cx.shard
                    .publish(draft, cx.token, receipt.map(|r| Confirm::Receipt(r.into())));
                Ok(())
            }
            Command::Subscribe => self.subscribe(f, out, cx),
            Command::Unsubscribe => {
                self.unsubscribe(f, cx)?;
                self.receipt(out, receipt);
                Ok(())
            }
            Command::Ack | Command::Nack => {
                if let Some(tx) = f.header("transaction") {
                    self.hold(tx, f, cx)?;
                } else {
                    self.ack(f)?;
                }
                self.receipt(out, receipt);
                Ok(())
            }
            Command::Begin => {
                let tx = f
                    .header("transaction")
                    .ok_or_else(|| StompError::missing("transaction", f.command))?;
                if self.txs.iter().any(|(id, _)| &**id == tx) {
                    return Err(StompError::protocol(
                        "transaction already begun",
                        format!("transaction '{tx}' is already open"),
                    ));
                }
                if self.txs.len() >= cx.shard.cfg.max_transactions {
                    return Err(StompError::limit(
                        "too many transactions",
                        format!(
                            "at most {} open transactions per connection",
                            cx.shard.cfg.max_transactions
                        ),
                    ));
                }
                self.txs.push((tx.into(), Vec::new()));
                self.receipt(out, receipt);
                Ok(())
            }
            Command::Commit => {
                let held = self.take_tx(f)?;
                // All or nothing: check every held frame first, so a bad
                // ACK cannot leave the SENDs before it published.
                enum Step {
                    Publish(Draft),
                    Ack(usize, u64),
                }
                let mut steps = Vec::with_capacity(held.len());
                for h in &held {
                    let frame = Frame {
                        command: h.command,
                        headers: h
                            .headers
                            .iter()
                            .map(|(k, v)| (Cow::Borrowed(&**k), Cow::Borrowed(&**v)))
                            .collect(),
                        body: &h.body,
                    };
                    steps.push(match h.command {
                        Command::Send => Step::Publish(self.draft(&frame)?),
                        _ => {
                            let (idx, seq) = self.ack_target(&frame)?;
                            Step::Ack(idx, seq)
                        }
                    });
                }
                // A COMMIT's RECEIPT confirms its SENDs like a SEND's own:
                // once all of them are stored.
                let sends = steps
                    .iter()
                    .filter(|s| matches!(s, Step::Publish(_)))
                    .count();
                let group = match receipt {
                    Some(r) if sends > 0 && cx.shard.persistent() => {
                        let g = self.next_group;
                        self.next_group = self.next_group.wrapping_add(1);
                        self.groups.push((g, sends, r.into()));
                        self.outstanding_receipts += 1;
                        Some(g)
                    }
                    _ => None,
                };
                for step in steps {
                    match step {
                        Step::Publish(draft) => {
                            cx.shard.publish(draft, cx.token, group.map(Confirm::Group))
                        }
                        Step::Ack(idx, seq) => self.ack_apply(idx, seq),
                    }
                }
                if group.is_none() {
                    self.receipt(out, receipt);
                }
                Ok(())
            }
            Command::Abort => {
                self.take_tx(f)?;
                self.receipt(out, receipt);
                Ok(())
            }
            Command::Disconnect => {
                // STOMP's graceful shutdown: the DISCONNECT receipt confirms
                // every earlier frame, so it waits for receipts still owed.
                let deadline = std::time::Instant::now() + crate::conn::out::CLOSE_FLUSH_TIMEOUT;
                self.disconnect = Some((receipt.map(Into::into), deadline));
                if self.outstanding_receipts == 0 {
                    self.finish_disconnect(out);
                }
                Ok(())
            }
        }
    }

    fn receipt(&self, out: &mut Out, receipt: Option<&str>) {
        if let Some(r) = receipt {
            out.frame("RECEIPT", &[("receipt-id", r)], b"", self.escaping());
        }
    }

    fn connect(&mut self, f: &Frame<'_>, out: &mut Out, cx: &Ctx<'_>) -> Result<(), StompError> {
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
        let cfg = &cx.shard.cfg;
        // STOMP 1.2 "Heart-beating": each side sends at the larger of what one
        // can do and the other wants, if neither is 0.
        self.hb_send_ms = if cfg.heartbeat_send_ms > 0 && cy_ms > 0 {
            cfg.heartbeat_send_ms.max(cy_ms)
        } else {
            0
        };
        self.hb_recv_ms = if cfg.heartbeat_receive_ms > 0 && cx_ms > 0 {
            cfg.heartbeat_receive_ms.max(cx_ms)
        } else {
            0
        };
        self.version = version;
        self.connected = true;
        out.escaping = self.escaping();
        if let Some(login) = f.header("login").filter(|l| !l.is_empty()) {
            self.user = login.into();
        }
        let hb = format!("{},{}", cfg.heartbeat_send_ms, cfg.heartbeat_receive_ms);
        let session = format!("{}-{}", cx.shard.id, cx.token.serial);
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
        Ok(())
    }

    /// Turn a SEND into a draft for the room's owner.
    fn draft(&self, f: &Frame<'_>) -> Result<Draft, StompError> {
        let dest = f
            .header("destination")
            .ok_or_else(|| StompError::missing("destination", f.command))?;
        let room = room_of(dest).ok_or_else(|| bad_destination(dest))?;
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

    fn subscribe(&mut self, f: &Frame<'_>, out: &mut Out, cx: &Ctx<'_>) -> Result<(), StompError> {
        let dest = f
            .header("destination")
            .ok_or_else(|| StompError::missing("destination", f.command))?;
        let room = room_of(dest).ok_or_else(|| bad_destination(dest))?;
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
        let max = cx.shard.cfg.max_subscriptions;
        if self.subs.len() >= max {
            return Err(StompError::limit(
                "too many subscriptions",
                format!("at most {max} subscriptions per connection"),
            ));
        }
        let replay = replay_from(f)?;
        if replay.is_some() && !cx.shard.persistent() {
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
        let (local_key, receipt_now) = cx.shard.subscribe(
            room,
            crate::router::Subscriber {
                conn: cx.me.clone(),
                sub_n: n,
                prefix: prefix.into(),
                mode,
                version: self.version,
                replay: replay.map(|_| Box::default()),
            },
            cx.token,
            receipt,
            replay,
        );
        // Most clients hold one or two subscriptions: grow one at a time
        // rather than by doubling (idle memory per session is a headline).
        self.subs.reserve_exact(1);
        self.subs.push(SubState {
            id: id.into(),
            n,
            room: room.into(),
            mode,
            local_key,
            pending: VecDeque::new(),
        });
        if receipt_now {
            self.receipt(out, receipt);
        } else {
            self.outstanding_receipts += 1;
        }
        Ok(())
    }

    fn unsubscribe(&mut self, f: &Frame<'_>, cx: &Ctx<'_>) -> Result<(), StompError> {
        let idx = match (f.header("id"), self.version) {
            (Some(id), _) => self.subs.iter().position(|s| &*s.id == id),
            (None, Version::V10) => {
                let dest = f
                    .header("destination")
                    .ok_or_else(|| StompError::missing("id", f.command))?;
                let room = room_of(dest);
                self.subs.iter().position(|s| Some(&*s.room) == room)
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
        cx.shard.unsubscribe(&sub.room, sub.local_key);
        Ok(())
    }

    /// Remove every subscription (the connection is closing).
    pub fn unsubscribe_all(&mut self, shard: &Shard) {
        for sub in self.subs.drain(..) {
            shard.unsubscribe(&sub.room, sub.local_key);
        }
        self.txs.clear();
        self.held_bytes = 0;
    }

    fn ack(&mut self, f: &Frame<'_>) -> Result<(), StompError> {
        let (sub_idx, seq) = self.ack_target(f)?;
        self.ack_apply(sub_idx, seq);
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

    fn hold(&mut self, tx: &str, f: &Frame<'_>, cx: &Ctx<'_>) -> Result<(), StompError> {
        let max = cx.shard.cfg.max_transaction_frames;
        let Some((_, held)) = self.txs.iter_mut().find(|(id, _)| &**id == tx) else {
            return Err(unknown_tx(tx));
        };
        if held.len() >= max {
            return Err(StompError::limit(
                "too many frames in transaction",
                format!("a transaction holds at most {max} frames"),
            ));
        }
        // Validate now so the client learns of a bad SEND at SEND time.
        if f.command == Command::Send {
            self.draft(f)?;
        }
        let size = frame_bytes(f);
        let budget = cx.shard.cfg.max_transaction_bytes;
        if self.held_bytes + size > budget {
            return Err(StompError::limit(
                "too many bytes in transactions",
                format!(
                    "open transactions may hold at most {budget} bytes per connection (max_transaction_bytes)"
                ),
            ));
        }
        let Some((_, held)) = self.txs.iter_mut().find(|(id, _)| &**id == tx) else {
            return Err(unknown_tx(tx));
        };
        self.held_bytes += size;
        held.push(Held {
            command: f.command,
            headers: f
                .headers
                .iter()
                .filter(|(k, _)| k != "transaction" && k != "receipt")
                .map(|(k, v)| (k.as_ref().into(), v.as_ref().into()))
                .collect(),
            body: f.body.into(),
        });
        Ok(())
    }

    fn take_tx(&mut self, f: &Frame<'_>) -> Result<Vec<Held>, StompError> {
        let tx = f
            .header("transaction")
            .ok_or_else(|| StompError::missing("transaction", f.command))?;
        let idx = self
            .txs
            .iter()
            .position(|(id, _)| &**id == tx)
            .ok_or_else(|| unknown_tx(tx))?;
        let held = self.txs.swap_remove(idx).1;
        let freed: usize = held
            .iter()
            .map(|h| {
                h.body.len()
                    + h.headers
                        .iter()
                        .map(|(k, v)| k.len() + v.len())
                        .sum::<usize>()
            })
            .sum();
        self.held_bytes = self.held_bytes.saturating_sub(freed);
        Ok(held)
    }
}

/// What holding a frame costs, for `max_transaction_bytes`: its body and
/// header text (the same sum `take_tx` gives back).
fn frame_bytes(f: &Frame<'_>) -> usize {
    f.body.len()
        + f.headers
            .iter()
            .filter(|(k, _)| k != "transaction" && k != "receipt")
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

fn unknown_tx(tx: &str) -> StompError {
    StompError::protocol("unknown transaction", format!("no open transaction '{tx}'"))
}

fn bad_destination(dest: &str) -> StompError {
    StompError::protocol(
        "invalid destination",
        format!(
            "destinations are /topic/<room> with a room of 1-128 characters from A-Z a-z 0-9 _ . ~ -; got '{dest}'"
        ),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heart_beat_header() {
        assert_eq!(parse_heart_beat("0,0"), Some((0, 0)));
        assert_eq!(parse_heart_beat("100,2000"), Some((100, 2000)));
        assert_eq!(parse_heart_beat("100"), None);
        assert_eq!(parse_heart_beat("a,1"), None);
    }
}
