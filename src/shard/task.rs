//! The task of one connection: wait for its socket, hand what it reads to
//! the connection's protocol layers, act on what they hand back (HTTP
//! requests, WebSocket upgrades that move the connection to another
//! shard), pause it while it is over its rates or adds to the shard's full
//! queues, and forget it when it ends.

use std::cell::Cell;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Context;
use std::time::{Duration, Instant};

use glommio::timer::Timer;

use tracing::debug;

use super::conns::ConnRef;
use super::msg::{External, MemberReq, OnlineReq, ScrapeReq, ShardMsg};
use super::{ConnBroker, Shard};
use crate::api::{self, Answer, Served};
use crate::config::Listen;
use crate::conn::{Conn, Ev, Outcome, READ_PAUSE_OUTBOUND, SCRATCH_SIZE, with_scratch};
use crate::room::{owner_of, valid_room_key};

/// Reads of one connection, each ready without waiting, before its task
/// lets the shard's other tasks run (see the end of `run`'s loop).
const READS_PER_TURN: u32 = 4;

/// What the task does after a read.
enum Next {
    /// Go on reading.
    Read,
    /// The connection moved to another shard: end here.
    Moved,
}

/// What a read did, as far as the task is concerned.
struct AfterRead {
    next: Next,
    /// It queued work for a peer shard or the store (see `congested`).
    queued: bool,
    /// It took the connection over a rate (publish, subscribe): read it
    /// again after this long.
    throttle: Option<Duration>,
}

/// Runs on the connection's shard until the connection closes.
pub(super) async fn run(shard: Rc<Shard>, conn: ConnRef, mut inbound: Vec<u8>) {
    // The end of a publish-rate wait; polled beside the socket, so the
    // connection still writes and closes while it is not read.
    let mut throttle: Option<Timer> = None;
    if !inbound.is_empty() {
        let after = shard.read(&conn, &mut inbound);
        debug_assert!(
            matches!(after.next, Next::Read),
            "an adopted connection is past its upgrade"
        );
        throttle = after.throttle.map(Timer::new);
        shard.conns.mark_dirty(&conn);
        shard.after_io();
    }
    // Whether the socket had to be waited for since the last read.
    let waited = Cell::new(false);
    let next_event = |throttle: &mut Option<Timer>, cx: &mut Context<'_>| {
        if let Some(t) = throttle
            && Pin::new(t).poll(cx).is_ready()
        {
            *throttle = None;
            conn.borrow_mut().unthrottle(Instant::now());
        }
        let ev = conn.borrow_mut().poll_io(cx);
        if ev.is_pending() {
            waited.set(true);
        }
        ev
    };
    let mut reads_in_row = 0;
    while let Ev::Read(n) = poll_fn(|cx| next_event(&mut throttle, cx)).await {
        if waited.replace(false) {
            reads_in_row = 0;
        }
        reads_in_row += 1;
        let after = with_scratch(n, |data| shard.read(&conn, data));
        if conn.borrow().out().pending_len() > 0 {
            shard.conns.mark_dirty(&conn);
        }
        shard.after_io();
        // The flush normally waits for the end of the reactor round; a
        // connection whose own replies already fill the read-pause budget
        // (a client pipelining without reading) is flushed now, so that
        // `write_blocked` and the pause below take effect at once.
        if conn.borrow().out().pending_len() >= READ_PAUSE_OUTBOUND {
            shard.conns.flush();
        }
        if let Next::Moved = after.next {
            break;
        }
        throttle = after.throttle.map(Timer::new);
        // Only a connection that adds to a full queue waits for it: one
        // that merely acknowledges, heart-beats or disconnects goes on.
        if after.queued && shard.congested() {
            shard.conns.pause(&conn);
        }
        // A socket that is ready again at once never makes this task wait,
        // and glommio switches tasks only when one waits: a client sending
        // flat out would hold the shard — no flush, no other connection,
        // no timer — for as long as it keeps up. Step behind the other
        // runnable tasks after a full read or a few reads in a row.
        if n == SCRATCH_SIZE || reads_in_row >= READS_PER_TURN {
            reads_in_row = 0;
            futures_lite::future::yield_now().await;
        }
    }
    shard.drop_conn(&conn);
    // Interest changes from the dropped subscriptions go out now.
    shard.after_io();
}

impl Shard {
    /// Feed bytes read for `conn` to it and act on what it hands back.
    fn read(&self, conn: &ConnRef, data: &mut [u8]) -> AfterRead {
        let mut c = conn.borrow_mut();
        let token = c.token();
        let broker = ConnBroker::new(self, conn, token);
        let next = self.act(&mut c, &broker, data);
        let used = broker.used.get();
        // A read that used nothing leaves the rates as they are (and it
        // was read, so the connection was not throttled): no clock read.
        let throttle = if used.any() {
            c.charge(&self.rates, used, Instant::now())
        } else {
            None
        };
        AfterRead {
            next,
            queued: used.any(),
            throttle,
        }
    }

    /// Hand `data` to the connection's layers and do what they ask.
    fn act(&self, c: &mut Conn, broker: &ConnBroker<'_>, data: &mut [u8]) -> Next {
        let token = broker.token;
        match c.on_bytes(data, broker, &self.frame_limits) {
            None => Next::Read,
            Some(Outcome::Request {
                method,
                path,
                query,
                authorization,
            }) => {
                let ctx = api::ApiCtx {
                    prefixes: &self.session_limits.prefixes,
                    store: self.durable.persistent(),
                    auth: &self.auth,
                    admin_token: self.cfg.admin_token.expose(),
                    max_devices: self.cfg.max_devices_per_user,
                    push: self.push.as_deref(),
                    not_ready: if path == "/readyz" {
                        self.not_ready()
                    } else {
                        None
                    },
                    served: if c.is_metrics_only() {
                        Served::Metrics
                    } else if self.cfg.metrics_listen == Listen::Off {
                        Served::All
                    } else {
                        Served::Public
                    },
                    draining: self.life.stopping(),
                };
                match api::route(
                    &method,
                    &path,
                    query.as_deref(),
                    authorization.as_deref(),
                    &ctx,
                ) {
                    Answer::Now(answer) => c.answer_http(&answer),
                    Answer::Write(write) => {
                        let inbox = self.durable.inbox();
                        self.durable
                            .persist(crate::store::writer::Item::After(Box::new(move |db| {
                                let response = write(db);
                                inbox.send(External::Http {
                                    conn: token,
                                    response,
                                });
                            })));
                        c.await_http_answer();
                    }
                    Answer::Online { room, user } => {
                        self.online_request(OnlineReq {
                            room: room.into(),
                            user,
                            shard: self.id,
                            conn: token,
                        });
                        c.await_http_answer();
                    }
                    Answer::Member { room, user, add } => {
                        self.member_request(MemberReq {
                            room: room.into(),
                            user: user.into(),
                            add,
                            shard: self.id,
                            conn: token,
                        });
                        c.await_http_answer();
                    }
                    Answer::Read(read) => {
                        let inbox = self.durable.inbox();
                        let job = Box::new(move |db: &rusqlite::Connection| {
                            let response = read(db);
                            inbox.send(External::Http {
                                conn: token,
                                response,
                            });
                        });
                        match self.durable.submit_read(job) {
                            Ok(()) => c.await_http_answer(),
                            Err(_) => {
                                crate::metrics::local(|m| m.reads_busy.inc());
                                c.answer_http(&api::busy())
                            }
                        }
                    }
                    Answer::Metrics => {
                        let req = ScrapeReq {
                            shard: self.id,
                            conn: token,
                        };
                        match self.scrape.try_send(req) {
                            Ok(()) => c.await_http_answer(),
                            Err(_) => c.answer_http(&crate::http::text(
                                crate::http::Status::ServiceUnavailable,
                                "too many scrapes at once; retry shortly",
                            )),
                        }
                    }
                }
                Next::Read
            }
            Some(Outcome::Upgrade { .. }) if c.is_metrics_only() || self.life.stopping() => {
                let why = if self.life.stopping() {
                    "the server is shutting down"
                } else {
                    "this listener (--metrics-listen) takes no WebSocket connections"
                };
                c.answer_http(&crate::http::text(
                    crate::http::Status::ServiceUnavailable,
                    why,
                ));
                Next::Read
            }
            Some(Outcome::Upgrade { answer, rest, room }) => {
                let owner = room
                    .as_deref()
                    .filter(|r| valid_room_key(r, &self.session_limits.prefixes))
                    .map(|r| owner_of(r, self.nshards))
                    .filter(|&o| o != self.id);
                let Some(owner) = owner else {
                    c.upgrade(&answer, rest, broker, &self.frame_limits);
                    return Next::Read;
                };
                // Move the upgraded connection to its room's owner: a dup
                // of the fd goes there, ours closes when the task ends.
                let Some(sock) = c.sock_mut() else {
                    return Next::Moved;
                };
                match sock.dup_fd() {
                    Ok(fd) => self.peers.send(
                        owner,
                        ShardMsg::Adopt {
                            fd,
                            // The TLS session goes along: records the
                            // socket has not taken yet and bytes it has
                            // decrypted but we have not read are in it.
                            tls: sock.take_tls(),
                            inbound: rest,
                            outbound: answer,
                        },
                    ),
                    Err(e) => {
                        debug!("dup for hand-off: {e}");
                        // Out of fds: tell the client instead of leaving
                        // it hanging.
                        let _ = sock.send_now(&crate::http::server_full());
                    }
                }
                Next::Moved
            }
        }
    }
}
