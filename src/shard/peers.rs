//! A shard's side of the mesh: one outbox per peer shard, sent as one batch
//! per wake-up by a task per peer, and the receiving end of the peers'
//! queues.
//!
//! An outbox keeps the order in which this shard's sessions and rooms put
//! messages in it; a full mesh queue leaves the batch in the outbox until
//! the peer makes room (it rings our doorbell).
//!
//! Bounded in bytes: what waits in an outbox plus what the peer has not yet
//! handled of what we sent it (`MeshEnd::inflight`) may reach
//! `--max-peer-bytes`; beyond it this shard stops reading its connections
//! until the peer catches up (it rings us: `want_space`). Peer batches are
//! always handled whatever our own outboxes hold, so two shards sending to
//! each other never wait on each other in a cycle. Runs on its shard only.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tracing::warn;

use super::Shard;
use super::mesh::{Batch, MeshEnd, Offer};
use super::msg::ShardMsg;
use super::notify::Notify;

pub(super) struct Peers {
    id: usize,
    /// Messages for each peer shard (own index unused), sent as one batch.
    outbox: Vec<RefCell<Vec<ShardMsg>>>,
    /// What each outbox's messages cost (`ShardMsg::cost`).
    outbox_bytes: Vec<Cell<usize>>,
    /// Wakes the task that sends to each peer.
    ready: Vec<Notify>,
    /// This shard's end of the shard-to-shard queues.
    mesh: MeshEnd,
    /// Soft limit on an outbox (`max_peer_queue`): beyond it, this shard's
    /// connections stop being read.
    max_queue: usize,
    /// Limit on bytes queued or in flight towards one peer
    /// (`max_peer_bytes`): beyond it, this shard's connections stop being
    /// read.
    max_bytes: usize,
}

impl Peers {
    pub fn new(mesh: MeshEnd, max_queue: usize, max_bytes: usize) -> Peers {
        let n = mesh.shards();
        Peers {
            id: mesh.id,
            outbox: (0..n).map(|_| RefCell::new(Vec::new())).collect(),
            outbox_bytes: (0..n).map(|_| Cell::new(0)).collect(),
            ready: (0..n).map(|_| Notify::default()).collect(),
            mesh,
            max_queue,
            max_bytes,
        }
    }

    /// Messages waiting in the outboxes (not yet handed to the mesh).
    pub fn queued(&self) -> usize {
        self.outbox.iter().map(|q| q.borrow().len()).sum()
    }

    /// Queue a message for peer shard `peer`.
    pub fn send(&self, peer: usize, msg: ShardMsg) {
        let bytes = &self.outbox_bytes[peer];
        bytes.set(bytes.get() + msg.cost());
        let mut q = self.outbox[peer].borrow_mut();
        q.push(msg);
        if q.len() == 1 {
            self.ready[peer].notify();
        }
    }

    /// Whether this shard must stop reading its connections: an outbox is
    /// over `max_peer_queue` messages, or what is queued and in flight
    /// towards a peer is over `max_peer_bytes`. A peer we are over the
    /// bytes for is asked to ring us once it has handled more.
    pub fn congested(&self) -> bool {
        let mut congested = false;
        for (to, q) in self.outbox.iter().enumerate() {
            if to == self.id {
                continue;
            }
            if q.borrow().len() >= self.max_queue {
                congested = true;
            }
            let queued = self.outbox_bytes[to].get();
            if queued + self.mesh.inflight(to) >= self.max_bytes {
                self.mesh.want_space(to);
                // Look again after asking: the peer may have handled our
                // batches, and looked at the flag, in between (it would
                // never ring).
                if queued + self.mesh.inflight(to) >= self.max_bytes {
                    congested = true;
                }
            }
        }
        congested
    }

    /// Wake the send tasks of outboxes that still hold messages (after the
    /// peers made room).
    pub fn retry_sends(&self) {
        for (to, q) in self.outbox.iter().enumerate() {
            if to != self.id && !q.borrow().is_empty() {
                self.ready[to].notify();
            }
        }
    }

    /// Clear our doorbell before draining (see `mesh`).
    pub fn clear_bell(&self) {
        self.mesh.clear_bell();
    }

    /// Take the batches the peers queued for us: at most `per_peer` from
    /// each, while `more()` says so. If some were (or may have been) left,
    /// ring our own bell so the receive task comes back for them.
    pub fn drain(
        &self,
        f: impl FnMut(usize, Vec<ShardMsg>),
        more: impl Fn() -> bool,
        per_peer: usize,
    ) {
        if self.mesh.drain(f, more, per_peer) {
            self.mesh.ring_self();
        }
    }
}

/// The task that sends this shard's outbox for peer `to`, a batch at a time.
pub(super) async fn send_loop(shard: Rc<Shard>, to: usize) {
    let peers = &shard.peers;
    loop {
        peers.ready[to].wait().await;
        loop {
            let msgs = std::mem::take(&mut *peers.outbox[to].borrow_mut());
            if msgs.is_empty() {
                break;
            }
            let bytes = peers.outbox_bytes[to].replace(0);
            match peers.mesh.offer(to, Batch { msgs, bytes }) {
                Offer::Sent => shard.maybe_resume(),
                Offer::Full(batch) => {
                    // Nothing was queued meanwhile (no await since the
                    // take), so the batch goes back as it was. The peer
                    // rings our bell when it has made room.
                    *peers.outbox[to].borrow_mut() = batch.msgs;
                    peers.outbox_bytes[to].set(batch.bytes);
                    break;
                }
                Offer::Closed => {
                    warn!(shard = peers.id, peer = to, "peer shard gone");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outbox_over_its_limit_congests_the_shard() {
        let mut ends = super::super::mesh::build(3, 4).unwrap();
        let peers = Peers::new(ends.remove(1), 2, 1 << 20);
        assert_eq!(peers.id, 1);
        assert!(!peers.congested());
        peers.send(0, ShardMsg::Quiesce);
        assert!(!peers.congested());
        peers.send(0, ShardMsg::Quiesce);
        assert!(peers.congested(), "two queued for shard 0, limit 2");
        assert_eq!(peers.outbox[0].borrow().len(), 2);
        assert!(peers.outbox[2].borrow().is_empty());
    }
}

#[cfg(test)]
mod byte_tests {
    use super::*;
    use crate::message::Draft;

    fn publish(body: usize) -> ShardMsg {
        ShardMsg::Publish {
            draft: Draft {
                room: "r".into(),
                sender: "a".into(),
                headers: Vec::new(),
                body: vec![b'x'; body].into(),
            },
            origin: crate::conn::ConnToken { key: 0, serial: 1 },
            confirm: None,
        }
    }

    #[test]
    fn bytes_queued_and_in_flight_towards_a_peer_congest_the_shard() {
        let mut ends = super::super::mesh::build(2, 64).unwrap();
        let consumer = ends.remove(1);
        let peers = Peers::new(ends.remove(0), usize::MAX, 10_000);
        peers.send(1, publish(4_000));
        assert!(!peers.congested());
        peers.send(1, publish(6_000));
        assert!(peers.congested(), "queued bytes over the budget");
        // Sent: the bytes are in flight until the peer has handled them.
        let msgs = std::mem::take(&mut *peers.outbox[1].borrow_mut());
        let bytes = peers.outbox_bytes[1].replace(0);
        assert!(bytes > 10_000);
        assert!(matches!(
            peers.mesh.offer(1, Batch { msgs, bytes }),
            Offer::Sent
        ));
        assert!(peers.congested(), "in flight counts too");
        let mut handled = 0;
        consumer.drain(|_, msgs| handled += msgs.len(), || true, usize::MAX);
        assert_eq!(handled, 2);
        assert!(!peers.congested(), "handled: nothing in flight");
    }
}
