//! The shard-to-shard mesh: one bounded SPSC queue per ordered pair of
//! shards, carrying batches (`Vec<ShardMsg>`), and one doorbell per shard.
//!
//! Why not glommio's `channel_mesh`: its start-up handshake (`join`, and
//! `shared_channel::connect` under it) only makes progress when the
//! executor's reactor wakes for some other reason, and under load we saw it
//! hang for good in about 1 of 300 server starts (ARCHITECTURE.md). This mesh
//! is built completely on the main thread before any shard runs, so there is
//! no handshake to hang.
//!
//! Wake-ups: a shard's doorbell is a socketpair. A producer pushes a batch,
//! then rings the consumer's bell: one atomic swap, and a one-byte `send`
//! only if the bell was not already rung — the consumer's reader task (an
//! io_uring poll on the other end) clears the flag *before* draining, so a
//! push that lands during the drain rings again and nothing is missed. When a
//! queue is full the producer sets `want_space` for that pair; the consumer
//! rings the producer's bell once it has drained that queue.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use super::msg::ShardMsg;

/// What travels between shards: one slot per flush, not per message.
pub(crate) type Batch = Vec<ShardMsg>;

/// A shard's wake-up: a flag and the write end of its socketpair.
struct Doorbell {
    rung: AtomicBool,
    fd: OwnedFd,
}

/// Shared by all shards: every doorbell and the want-space flags.
struct Bells {
    bells: Vec<Doorbell>,
    /// `want_space[from * n + to]`: `from` found the queue to `to` full.
    want_space: Vec<AtomicBool>,
}

/// One shard's end of the mesh (built on the main thread, moved to the shard).
pub(crate) struct MeshEnd {
    pub id: usize,
    n: usize,
    /// `tx[to]`: queue from this shard to `to` (`None` for itself).
    tx: Vec<Option<Sender<Batch>>>,
    /// `rx[from]`: queue from `from` to this shard (`None` for itself).
    rx: Vec<Option<Receiver<Batch>>>,
    bells: Arc<Bells>,
    /// The read end of this shard's doorbell.
    bell_rx: Option<OwnedFd>,
}

/// Rings one shard's doorbell from any thread (the writer, the reader
/// pool, main): cheap to clone, `Send`.
#[derive(Clone)]
pub(crate) struct Ringer {
    bells: Arc<Bells>,
    id: usize,
}

impl Ringer {
    pub fn ring(&self) {
        self.bells.ring(self.id);
    }
}

impl Bells {
    fn ring(&self, to: usize) {
        let bell = &self.bells[to];
        if !bell.rung.swap(true, Ordering::SeqCst) {
            // SAFETY: a valid socket fd; a full socket buffer (EAGAIN) means
            // the bell is already ringing, which is all we need.
            unsafe {
                libc::send(
                    bell.fd.as_raw_fd(),
                    [1u8].as_ptr().cast(),
                    1,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                );
            }
        }
    }
}

/// Build the mesh for `n` shards with `capacity` batches per queue.
pub(crate) fn build(n: usize, capacity: usize) -> std::io::Result<Vec<MeshEnd>> {
    let mut bells = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for _ in 0..n {
        let (r, w) = std::os::unix::net::UnixStream::pair()?;
        r.set_nonblocking(true)?;
        w.set_nonblocking(true)?;
        readers.push(OwnedFd::from(r));
        bells.push(Doorbell {
            rung: AtomicBool::new(false),
            fd: OwnedFd::from(w),
        });
    }
    let bells = Arc::new(Bells {
        bells,
        want_space: (0..n * n).map(|_| AtomicBool::new(false)).collect(),
    });
    let mut ends: Vec<MeshEnd> = readers
        .into_iter()
        .enumerate()
        .map(|(id, r)| MeshEnd {
            id,
            n,
            tx: (0..n).map(|_| None).collect(),
            rx: (0..n).map(|_| None).collect(),
            bells: bells.clone(),
            bell_rx: Some(r),
        })
        .collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (s, r) = bounded(capacity);
                ends[from].tx[to] = Some(s);
                ends[to].rx[from] = Some(r);
            }
        }
    }
    Ok(ends)
}

/// Result of offering a batch to a peer.
pub(crate) enum Offer {
    Sent,
    /// The queue is full; the batch comes back. The peer rings our bell
    /// once it has made room.
    Full(Batch),
    /// The peer is gone (shutting down).
    Closed,
}

impl MeshEnd {
    /// Number of shards in the mesh.
    pub fn shards(&self) -> usize {
        self.n
    }

    /// The fd to wait on for this shard's doorbell (taken once).
    pub fn take_bell_fd(&mut self) -> OwnedFd {
        self.bell_rx.take().expect("doorbell taken once")
    }

    /// Offer a batch to `to` and ring its bell. Runs on this shard.
    pub fn offer(&self, to: usize, batch: Batch) -> Offer {
        let tx = self.tx[to].as_ref().expect("no queue to self");
        match tx.try_send(batch) {
            Ok(()) => {
                self.ring(to);
                Offer::Sent
            }
            Err(TrySendError::Full(batch)) => {
                self.bells.want_space[self.id * self.n + to].store(true, Ordering::SeqCst);
                // The peer may have drained between our try and the flag.
                match tx.try_send(batch) {
                    Ok(()) => {
                        self.ring(to);
                        Offer::Sent
                    }
                    Err(TrySendError::Full(batch)) => {
                        self.ring(to);
                        Offer::Full(batch)
                    }
                    Err(TrySendError::Disconnected(_)) => Offer::Closed,
                }
            }
            Err(TrySendError::Disconnected(_)) => Offer::Closed,
        }
    }

    /// Clear our doorbell; call before draining (see the module comment).
    pub fn clear_bell(&self) {
        self.bells.bells[self.id]
            .rung
            .store(false, Ordering::SeqCst);
    }

    /// Take every batch queued for us, in order per peer, while `more()`
    /// says so (checked before each batch); ring the bell of any peer that
    /// waits for space in its queue to us.
    pub fn drain(&self, mut f: impl FnMut(usize, Batch), more: impl Fn() -> bool) {
        for (from, rx) in self.rx.iter().enumerate() {
            let Some(rx) = rx else { continue };
            while more() {
                let Ok(batch) = rx.try_recv() else { break };
                f(from, batch);
            }
            if self.bells.want_space[from * self.n + self.id].swap(false, Ordering::SeqCst) {
                self.ring(from);
            }
        }
    }

    fn ring(&self, to: usize) {
        self.bells.ring(to);
    }

    /// A handle that rings this shard's doorbell from other threads.
    pub fn ringer(&self) -> Ringer {
        Ringer {
            bells: self.bells.clone(),
            id: self.id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bell_bytes(fd: &OwnedFd) -> isize {
        let mut buf = [0u8; 16];
        // SAFETY: reading into a local buffer.
        unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        }
    }

    #[test]
    fn offer_rings_once_and_full_queue_comes_back() {
        let mut ends = build(2, 2).unwrap();
        let bell1 = ends[1].take_bell_fd();
        let bell0 = ends[0].take_bell_fd();
        assert!(matches!(ends[0].offer(1, Vec::new()), Offer::Sent));
        assert!(matches!(ends[0].offer(1, Vec::new()), Offer::Sent));
        assert_eq!(bell_bytes(&bell1), 1, "rung once while not cleared");
        assert!(matches!(ends[0].offer(1, Vec::new()), Offer::Full(_)));
        ends[1].clear_bell();
        let mut got = 0;
        ends[1].drain(
            |from, _| {
                assert_eq!(from, 0);
                got += 1;
            },
            || true,
        );
        assert_eq!(got, 2);
        assert_eq!(
            bell_bytes(&bell0),
            1,
            "the producer that wanted space is rung"
        );
        assert!(matches!(ends[0].offer(1, Vec::new()), Offer::Sent));
        assert_eq!(bell_bytes(&bell1), 1);
    }
}
