//! The sweeper: one task per shard that sends heart-beats, closes silent
//! clients, enforces the connect timeout and the close deadline, and
//! retries replay pages that waited for room.
//!
//! It walks all of the shard's connections every tick (20,000 checks take
//! well under a millisecond); a timer wheel would make it O(due) if that
//! ever shows up.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::Shard;
use crate::config::Config;
use crate::conn::{Conn, Phase};
use crate::metrics::{Refused, Transport};
use crate::ws::framing::CloseCode;

/// Longest interval between sweeps (heart-beats, timeouts). A silent client
/// is closed at most this much later than twice its heart-beat interval.
const MAX_SWEEP_TICK: Duration = Duration::from_millis(100);

/// The sweep interval for the configured heart-beats: a quarter of the
/// shortest one (heart-beats then go out between 3/4 of the interval and
/// the interval, never late), between 10 ms and `MAX_SWEEP_TICK`.
fn sweep_tick(cfg: &Config) -> Duration {
    let shortest = [cfg.heartbeat_send_ms, cfg.heartbeat_receive_ms]
        .into_iter()
        .filter(|&ms| ms > 0)
        .min()
        .unwrap_or(u64::MAX);
    Duration::from_millis((shortest / 4).clamp(10, MAX_SWEEP_TICK.as_millis() as u64))
}

/// Owned rooms looked at per tick for freeing (`Rooms::evict_idle`): at
/// 10–100 ticks a second that is up to a million rooms a second, while one
/// tick's share costs well under a millisecond.
const EVICT_PER_TICK: usize = 10_000;

/// The sweeper task.
pub(super) async fn sweep(shard: Rc<Shard>) {
    let connect_timeout = Duration::from_millis(shard.cfg.connect_timeout_ms);
    let tick = sweep_tick(&shard.cfg);
    loop {
        glommio::timer::sleep(tick).await;
        shard.alive.beat();
        let now = Instant::now();
        shard.conns.for_each(|conn, c| {
            if check(c, now, tick, connect_timeout) {
                shard.conns.queue_flush(conn, c);
            }
        });
        shard.durable.resume_replays(&shard.conns);
        let freed = shard
            .rooms
            .borrow_mut()
            .evict_idle(now, EVICT_PER_TICK, |room| shard.durable.is_loading(room));
        shard.durable.release(freed);
        shard.cluster_tick(now);
        shard.conns.flush();
    }
}

/// What one connection is due at `now`; whether it has output to flush.
fn check(c: &mut Conn, now: Instant, tick: Duration, connect_timeout: Duration) -> bool {
    if let Some(deadline) = c.out().close_deadline() {
        if now >= deadline {
            c.out_mut().abort();
            c.wake();
        }
        return false;
    }
    if let Some(deadline) = c.session().disconnect_deadline() {
        if now >= deadline {
            let (session, out) = c.session_out();
            session.finish_disconnect(out);
            return true;
        }
        return false;
    }
    if !c.session().is_connected() {
        if now.duration_since(c.created()) < connect_timeout {
            return false;
        }
        if matches!(c.phase(), Phase::Http | Phase::HttpWait) {
            if c.phase() == Phase::Http {
                crate::metrics::local(|m| m.refused(Transport::Http, Refused::HandshakeTimeout));
            }
            c.out_mut().abort();
            c.wake();
            return false;
        }
        let transport = c.phase().transport();
        crate::metrics::local(|m| m.refused(transport, Refused::ConnectTimeout));
        c.out_mut().error(
            "not connected: CONNECT timeout",
            None,
            &[],
            &format!("no CONNECT within {} ms", connect_timeout.as_millis()),
            CloseCode::Policy,
        );
        return true;
    }
    let (hb_send_ms, hb_recv_ms) = c.session().heartbeats();
    // A paused or throttled connection is not read: its silence is ours.
    if !c.is_paused()
        && !c.is_throttled()
        && hb_recv_ms > 0
        && now.duration_since(c.last_read()) >= Duration::from_millis(2 * hb_recv_ms)
    {
        let detail = format!(
            "nothing received for {} ms (twice the negotiated {hb_recv_ms} ms)",
            2 * hb_recv_ms
        );
        c.out_mut()
            .error("heart-beat timeout", None, &[], &detail, CloseCode::Policy);
        crate::metrics::local(|m| m.heartbeat_timeouts.inc());
        return true;
    }
    if hb_send_ms > 0
        && !c.out().is_write_blocked()
        // Up to a tick early rather than late: the client must never wait
        // longer than the negotiated interval.
        && now.duration_since(c.out().last_write()) + tick >= Duration::from_millis(hb_send_ms)
    {
        c.out_mut().heartbeat(now);
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{ConnToken, Sock};

    #[test]
    fn the_tick_is_a_quarter_of_the_shortest_heart_beat_within_bounds() {
        let mut cfg = crate::config::Config::resolve(
            <crate::config::Cli as clap::Parser>::parse_from(["stampede"]),
            crate::config::FileConfig::default(),
        );
        cfg.heartbeat_send_ms = 200;
        cfg.heartbeat_receive_ms = 0;
        assert_eq!(sweep_tick(&cfg), Duration::from_millis(50));
        cfg.heartbeat_send_ms = 0;
        assert_eq!(sweep_tick(&cfg), MAX_SWEEP_TICK, "no heart-beats");
        cfg.heartbeat_receive_ms = 8;
        assert_eq!(
            sweep_tick(&cfg),
            Duration::from_millis(10),
            "at least 10 ms"
        );
    }

    #[test]
    fn a_silent_connection_is_refused_after_the_connect_timeout() {
        super::super::on_test_executor(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let ours = glommio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let _peer = listener.accept().unwrap();
            let token = ConnToken { key: 0, serial: 1 };
            let mut c = Conn::new(token, Sock::new(ours), Phase::Stomp, b"");
            let tick = Duration::from_millis(100);
            let timeout = Duration::from_secs(10);
            let start = c.created();
            assert!(!check(
                &mut c,
                start + Duration::from_secs(9),
                tick,
                timeout
            ));
            assert!(!c.out().is_closing());
            assert!(check(&mut c, start + timeout, tick, timeout));
            assert!(c.out().is_closing());
            let text = String::from_utf8(c.out().pending().to_vec()).unwrap();
            assert!(
                text.starts_with("ERROR\nmessage:not connected: CONNECT timeout\n"),
                "{text}"
            );
            assert!(text.ends_with("no CONNECT within 10000 ms\0"), "{text}");
            // Closing: after the close deadline it is aborted, not written to.
            let deadline = c.out().close_deadline().unwrap();
            assert!(!check(&mut c, deadline, tick, timeout));
            assert!(c.out().is_aborted());
        });
    }
}
