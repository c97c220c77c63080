//! The watchdog: wakes a shard whose executor has gone to sleep with work
//! waiting.
//!
//! Measured here (`bench/results/2026-12-03-stress-stall/`): about one
//! fan-out run in ninety, a shard's executor thread parks in
//! `io_uring_enter` and stays there — its sweeper timer long due, a byte
//! unread on its doorbell, clients' bytes unread in its sockets, its
//! io_uring completion queue empty and nothing of stampede's (pauses,
//! throttles, writer space) holding it. The cause is below our code, in
//! glommio 0.9's sleep path or the kernel (the same shape as the start-up
//! stall in `ARCHITECTURE.md` and as glommio issues #326/#547). A debugger
//! attaching — a signal — ended it every time.
//!
//! So each shard's sweeper beats (`Liveness::beat`) every tick (≤ 100 ms),
//! and one plain thread checks the beats; a shard silent for
//! `STALL_AFTER` whose thread has not been running meanwhile (its CPU time
//! from `/proc/self/task/TID/schedstat`; a busy shard is only logged) gets
//! a signal (a no-op handler, installed without
//! `SA_RESTART`), which makes its `io_uring_enter` return `EINTR` so the
//! executor looks at its timers and completions again. A shard that is
//! merely busy loses nothing: the signal interrupts no blocking call on a
//! shard (its socket calls are non-blocking). Each wake is logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the watchdog looks.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// A shard whose sweeper has not beaten for this long is woken: five of
/// its longest ticks.
pub(crate) const STALL_AFTER: Duration = Duration::from_millis(500);

/// What a shard shows of itself to the watchdog.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    /// Its executor thread's id (0 before it starts; a shard's thread lives
    /// as long as the process, so the id is never reused).
    tid: AtomicI32,
    /// Sweeper ticks so far.
    beats: AtomicU64,
    /// Times the watchdog woke it.
    wakes: AtomicU64,
}

impl Liveness {
    /// On the shard's thread, when it starts.
    pub fn started(&self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
        self.tid.store(tid, Ordering::Relaxed);
    }

    /// Once per sweeper tick.
    pub fn beat(&self) {
        self.beats.fetch_add(1, Ordering::Relaxed);
    }
}

/// The signal that wakes a parked shard.
fn wake_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

extern "C" fn on_wake_signal(_: libc::c_int) {}

/// Install the no-op handler (without `SA_RESTART`, so a parked
/// `io_uring_enter` returns `EINTR`).
fn install_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction with a handler that does nothing is valid;
    // sigaction only reads it.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_wake_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        sa.sa_flags = 0;
        if libc::sigaction(wake_signal(), &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Signal thread `tid` of this process.
fn wake(tid: i32) -> bool {
    // SAFETY: tgkill only targets a thread of our own process.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, wake_signal()) == 0 }
}

/// Nanoseconds thread `tid` of this process has run on a CPU, and has
/// waited runnable for one.
fn cpu_ns(tid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// A silent shard whose thread ran less than this since the last look is
/// parked, not busy.
const PARKED_CPU: Duration = Duration::from_millis(5);

/// Which shards are silent now: not beaten for `STALL_AFTER`. `seen`
/// holds, per shard, the last beat count and when it changed.
fn stalled(alive: &[Arc<Liveness>], seen: &mut [(u64, Instant)], now: Instant) -> Vec<usize> {
    let mut due = Vec::new();
    for (i, (a, s)) in alive.iter().zip(seen.iter_mut()).enumerate() {
        let beats = a.beats.load(Ordering::Relaxed);
        if beats != s.0 || a.tid.load(Ordering::Relaxed) == 0 {
            *s = (beats, now);
        } else if now.duration_since(s.1) >= STALL_AFTER {
            due.push(i);
            s.1 = now; // the next wake, if needed, another STALL_AFTER on
        }
    }
    due
}

/// Start the watchdog thread over `alive` (index = shard). It runs for as
/// long as the process.
pub(crate) fn spawn(alive: Vec<Arc<Liveness>>) -> std::io::Result<()> {
    install_handler()?;
    std::thread::Builder::new()
        .name("stampede-watchdog".into())
        .spawn(move || {
            let now = Instant::now();
            let mut seen = vec![(0, now); alive.len()];
            // Each shard thread's CPU time at the last look.
            let mut cpu = vec![(0u64, 0u64); alive.len()];
            let mut busy_logged: Vec<Option<Instant>> = vec![None; alive.len()];
            loop {
                std::thread::sleep(CHECK_EVERY);
                let due = stalled(&alive, &mut seen, Instant::now());
                for (i, a) in alive.iter().enumerate() {
                    let tid = a.tid.load(Ordering::Relaxed);
                    let was = cpu[i];
                    let (ran, waited) = match cpu_ns(tid) {
                        Some(ns) => {
                            cpu[i] = ns;
                            (
                                Duration::from_nanos(ns.0.saturating_sub(was.0)),
                                Duration::from_nanos(ns.1.saturating_sub(was.1)),
                            )
                        }
                        None => (Duration::MAX, Duration::ZERO), // cannot tell: leave it be
                    };
                    if tid == 0 || !due.contains(&i) {
                        continue;
                    }
                    if ran >= PARKED_CPU {
                        // Busy, not parked: its timers waited behind its own
                        // work, or the machine gave it too little CPU (the
                        // run-queue wait tells which; a tail-latency
                        // matter, not a hang).
                        if busy_logged[i].is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                            tracing::info!(
                                shard = i,
                                ran_ms = ran.as_millis() as u64,
                                waited_for_cpu_ms = waited.as_millis() as u64,
                                "shard busy for {} ms without its sweeper running (CPU it got and waited for over the last {} ms)",
                                STALL_AFTER.as_millis(),
                                CHECK_EVERY.as_millis()
                            );
                            busy_logged[i] = Some(Instant::now());
                        }
                        continue;
                    }
                    if wake(tid) {
                        let n = a.wakes.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::warn!(
                            shard = i,
                            wakes = n,
                            "shard parked for {} ms with its timers due: woke its executor (a glommio park that missed its wake-up)",
                            STALL_AFTER.as_millis()
                        );
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_started_shard_without_beats_for_the_whole_span_is_due() {
        let alive: Vec<Arc<Liveness>> = (0..3).map(|_| Arc::default()).collect();
        alive[0].tid.store(11, Ordering::Relaxed);
        alive[1].tid.store(12, Ordering::Relaxed);
        // alive[2] never started.
        let t0 = Instant::now();
        let mut seen = vec![(0, t0); 3];
        assert!(stalled(&alive, &mut seen, t0 + STALL_AFTER / 2).is_empty());
        alive[1].beat();
        assert!(stalled(&alive, &mut seen, t0 + STALL_AFTER / 2).is_empty());
        // Shard 0 has not beaten since t0; shard 1 beat half-way.
        assert_eq!(stalled(&alive, &mut seen, t0 + STALL_AFTER), vec![0]);
        // Shard 1's span since its beat ends now; shard 0, just woken, is
        // not woken again before another full span.
        assert_eq!(
            stalled(&alive, &mut seen, t0 + STALL_AFTER * 3 / 2),
            vec![1]
        );
        assert_eq!(stalled(&alive, &mut seen, t0 + STALL_AFTER * 2), vec![0]);
    }

    #[test]
    fn the_signal_interrupts_a_blocked_wait() {
        // A thread blocked in a syscall (here a pipe read) returns EINTR
        // when woken — what a parked io_uring_enter does too.
        install_handler().unwrap();
        let mut fds = [0; 2];
        // SAFETY: a fresh pipe.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let alive = Arc::new(Liveness::default());
        let a = alive.clone();
        let reader = std::thread::spawn(move || {
            a.started();
            let mut b = [0u8; 1];
            // SAFETY: reading into a local buffer.
            let r = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
            (r, std::io::Error::last_os_error().raw_os_error())
        });
        while alive.tid.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(wake(alive.tid.load(Ordering::Relaxed)));
        let (r, errno) = reader.join().unwrap();
        assert_eq!((r, errno), (-1, Some(libc::EINTR)));
        // SAFETY: closing our pipe.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
