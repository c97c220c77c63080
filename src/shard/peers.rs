//! A shard's side of the mesh: one outbox per peer shard, sent as one batch
//! per wake-up by a task per peer, and the receiving end of the peers'
//! queues.
//!
//! An outbox keeps the order in which this shard's sessions and rooms put
//! messages in it; a full mesh queue leaves the batch in the outbox until
//! the peer makes room (it rings our doorbell). Runs on its shard only.

use std::cell::RefCell;
use std::rc::Rc;

use tracing::warn;

use super::Shard;
use super::mesh::{MeshEnd, Offer};
use super::msg::ShardMsg;
use super::notify::Notify;

pub(super) struct Peers {
    id: usize,
    /// Messages for each peer shard (own index unused), sent as one batch.
    outbox: Vec<RefCell<Vec<ShardMsg>>>,
    /// Wakes the task that sends to each peer.
    ready: Vec<Notify>,
    /// This shard's end of the shard-to-shard queues.
    mesh: MeshEnd,
    /// Soft limit on an outbox (`max_peer_queue`): beyond it, this shard's
    /// connections stop being read.
    max_queue: usize,
}

impl Peers {
    pub fn new(mesh: MeshEnd, max_queue: usize) -> Peers {
        let n = mesh.shards();
        Peers {
            id: mesh.id,
            outbox: (0..n).map(|_| RefCell::new(Vec::new())).collect(),
            ready: (0..n).map(|_| Notify::default()).collect(),
            mesh,
            max_queue,
        }
    }

    /// Queue a message for peer shard `peer`.
    pub fn send(&self, peer: usize, msg: ShardMsg) {
        let mut q = self.outbox[peer].borrow_mut();
        q.push(msg);
        if q.len() == 1 {
            self.ready[peer].notify();
        }
    }

    /// Whether any outbox is over its limit (then connections stop being
    /// read).
    pub fn congested(&self) -> bool {
        self.outbox
            .iter()
            .any(|o| o.borrow().len() >= self.max_queue)
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

    /// Take every batch the peers queued for us while `more()` says so.
    pub fn drain(&self, f: impl FnMut(usize, Vec<ShardMsg>), more: impl Fn() -> bool) {
        self.mesh.drain(f, more);
    }
}

/// The task that sends this shard's outbox for peer `to`, a batch at a time.
pub(super) async fn send_loop(shard: Rc<Shard>, to: usize) {
    let peers = &shard.peers;
    loop {
        peers.ready[to].wait().await;
        loop {
            let batch = std::mem::take(&mut *peers.outbox[to].borrow_mut());
            if batch.is_empty() {
                break;
            }
            match peers.mesh.offer(to, batch) {
                Offer::Sent => shard.maybe_resume(),
                Offer::Full(batch) => {
                    // Nothing was queued meanwhile (no await since the
                    // take), so the batch goes back as it was. The peer
                    // rings our bell when it has made room.
                    *peers.outbox[to].borrow_mut() = batch;
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
        let peers = Peers::new(ends.remove(1), 2);
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
