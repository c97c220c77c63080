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
//!
//! Bytes in flight: each pair also counts the bytes of the batches the
//! producer has queued and the consumer has not finished handling
//! (`inflight`). A queue's capacity is in batches, and a batch can hold
//! thousands of messages, so that count — not the capacity — is what bounds
//! the memory between two shards: the producer stops reading its clients
//! while it is over `--max-peer-bytes` (and sets `want_space`, so that the
//! consumer rings it once it has handled more). One atomic add per batch on
//! each side, as for the doorbell.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use super::msg::ShardMsg;

/// What travels between shards: one slot per flush, not per message.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub msgs: Vec<ShardMsg>,
    /// What the messages cost (`ShardMsg::cost`), counted in flight.
    pub bytes: usize,
}

/// A shard's wake-up: a flag and the write end of its socketpair.
struct Doorbell {
    rung: AtomicBool,
    fd: OwnedFd,
}

/// Shared by all shards: every doorbell and the want-space flags.
struct Bells {
    bells: Vec<Doorbell>,
    /// `want_space[from * n + to]`: `from` found the queue to `to` full,
    /// or over its bytes in flight.
    want_space: Vec<AtomicBool>,
    /// `inflight[from * n + to]`: bytes of batches queued from `from` to
    /// `to` that `to` has not finished handling.
    inflight: Vec<AtomicUsize>,
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
        inflight: (0..n * n).map(|_| AtomicUsize::new(0)).collect(),
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
        let inflight = &self.bells.inflight[self.id * self.n + to];
        // Counted before the send: the consumer may handle the batch (and
        // subtract) before `try_send` even returns.
        let bytes = batch.bytes;
        inflight.fetch_add(bytes, Ordering::SeqCst);
        let back = |batch: Batch| {
            inflight.fetch_sub(bytes, Ordering::SeqCst);
            batch
        };
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
                        Offer::Full(back(batch))
                    }
                    Err(TrySendError::Disconnected(batch)) => {
                        back(batch);
                        Offer::Closed
                    }
                }
            }
            Err(TrySendError::Disconnected(batch)) => {
                back(batch);
                Offer::Closed
            }
        }
    }

    /// Bytes queued from this shard to `to` that `to` has not handled yet.
    pub fn inflight(&self, to: usize) -> usize {
        self.bells.inflight[self.id * self.n + to].load(Ordering::SeqCst)
    }

    /// Ask `to` to ring this shard once it has handled more of what we
    /// sent it (we are over the bytes we may have in flight).
    pub fn want_space(&self, to: usize) {
        self.bells.want_space[self.id * self.n + to].store(true, Ordering::SeqCst);
    }

    /// Clear our doorbell; call before draining (see the module comment).
    pub fn clear_bell(&self) {
        self.bells.bells[self.id]
            .rung
            .store(false, Ordering::SeqCst);
    }

    /// Take the batches queued for us, in order per peer, at most
    /// `per_peer` from each and while `more()` says so (checked before each
    /// batch); ring the bell of any peer that waits for space in its queue
    /// to us. True when some peer's queue was left at `per_peer` (it may
    /// hold more: come back).
    pub fn drain(
        &self,
        mut f: impl FnMut(usize, Vec<ShardMsg>),
        more: impl Fn() -> bool,
        per_peer: usize,
    ) -> bool {
        let mut left = false;
        for (from, rx) in self.rx.iter().enumerate() {
            let Some(rx) = rx else { continue };
            let mut taken = 0;
            while more() {
                if taken == per_peer {
                    left = true;
                    break;
                }
                let Ok(batch) = rx.try_recv() else { break };
                taken += 1;
                f(from, batch.msgs);
                self.bells.inflight[from * self.n + self.id]
                    .fetch_sub(batch.bytes, Ordering::SeqCst);
            }
            if self.bells.want_space[from * self.n + self.id].swap(false, Ordering::SeqCst) {
                self.ring(from);
            }
        }
        left
    }

    /// Ring our own bell: the receive task comes back for what it left.
    pub fn ring_self(&self) {
        self.ring(self.id);
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
        let batch = |bytes| Batch {
            msgs: Vec::new(),
            bytes,
        };
        assert!(matches!(ends[0].offer(1, batch(10)), Offer::Sent));
        assert!(matches!(ends[0].offer(1, batch(20)), Offer::Sent));
        assert_eq!(bell_bytes(&bell1), 1, "rung once while not cleared");
        assert_eq!(ends[0].inflight(1), 30);
        assert!(matches!(ends[0].offer(1, batch(40)), Offer::Full(_)));
        assert_eq!(
            ends[0].inflight(1),
            30,
            "a batch handed back is not in flight"
        );
        ends[1].clear_bell();
        let mut got = 0;
        let left = ends[1].drain(
            |from, _| {
                assert_eq!(from, 0);
                got += 1;
            },
            || true,
            1,
        );
        assert_eq!(got, 1, "at most one batch per peer this turn");
        assert!(left, "and it says one may be left");
        assert_eq!(ends[0].inflight(1), 20, "the second is still in flight");
        let left = ends[1].drain(|_, _| got += 1, || true, 1);
        assert_eq!(got, 2);
        assert!(
            left,
            "at the limit again: it cannot know the queue is empty"
        );
        assert!(!ends[1].drain(|_, _| got += 1, || true, 1), "nothing left");
        assert_eq!(got, 2);
        assert_eq!(
            ends[0].inflight(1),
            0,
            "handled batches are no longer in flight"
        );
        assert_eq!(
            bell_bytes(&bell0),
            1,
            "the producer that wanted space is rung"
        );
        assert!(matches!(ends[0].offer(1, batch(5)), Offer::Sent));
        assert_eq!(bell_bytes(&bell1), 1);
        assert_eq!(ends[1].inflight(0), 0, "counted per direction");
    }
}
