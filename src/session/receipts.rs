//! RECEIPTs in the order of their frames.
//!
//! Some receipts are answered later by other parts of the server — a SEND's
//! once the writer committed it, a SUBSCRIBE's to a room owned by another
//! shard once the owner answered, a COMMIT's once all its SENDs are stored
//! — and those parts answer in their own time: a commit can overtake the
//! mesh. A client that pipelines frames with receipts still gets the
//! receipts in the order of its frames: while a receipt is owed, every
//! later receipt (owed or ready at once) waits behind it.
//!
//! Nothing is allocated while no receipt is owed. At most
//! [`MAX_QUEUED_RECEIPTS`] wait; beyond that the client gets an ERROR.

use std::collections::VecDeque;
use std::time::Instant;

/// Receipts waiting behind an owed one, per connection. A client is held
/// to `--max-publish-rate` and its reads pause while the writer's queue is
/// full, so this is far beyond what a client that waits for its receipts
/// ever reaches; it only bounds one that never does.
pub(crate) const MAX_QUEUED_RECEIPTS: usize = 65_536;

/// A receipt not yet written: its id, whether it may be written (its
/// frame is done), and for a SEND's, when the SEND was read (for the
/// SEND-to-RECEIPT latency).
type Waiting = (Box<str>, bool, Option<Instant>);

/// The receipts of one session not yet written, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Receipts {
    // Boxed on purpose: 8 bytes in every session instead of a VecDeque's
    // 32 (idle memory per session is a headline); allocated only while a
    // receipt is owed.
    #[allow(clippy::box_collection)]
    queue: Option<Box<VecDeque<Waiting>>>,
}

/// The queue is at [`MAX_QUEUED_RECEIPTS`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooMany;

impl Receipts {
    /// Whether any receipt is owed (a DISCONNECT waits for them).
    pub fn any_owed(&self) -> bool {
        self.queue.as_ref().is_some_and(|q| !q.is_empty())
    }

    fn push(&mut self, id: &str, ready: bool, since: Option<Instant>) -> Result<(), TooMany> {
        let q = self.queue.get_or_insert_with(Default::default);
        if q.len() >= MAX_QUEUED_RECEIPTS {
            return Err(TooMany);
        }
        q.push_back((id.into(), ready, since));
        Ok(())
    }

    /// A receipt that is answered later ([`Receipts::settle`]).
    pub fn owe(&mut self, id: &str) -> Result<(), TooMany> {
        self.push(id, false, None)
    }

    /// A SEND's receipt, answered later; its latency from `since` is
    /// recorded when it is written.
    pub fn owe_send(&mut self, id: &str, since: Instant) -> Result<(), TooMany> {
        self.push(id, false, Some(since))
    }

    /// A receipt whose frame is done now: `Some(id)` to write at once, or
    /// `None` when it waits behind an owed one.
    pub fn ready<'a>(&mut self, id: &'a str) -> Result<Option<&'a str>, TooMany> {
        if self.any_owed() {
            self.push(id, true, None)?;
            Ok(None)
        } else {
            Ok(Some(id))
        }
    }

    /// The owed receipt `id` (the oldest owed one of that id) is answered:
    /// `write` every receipt that no longer waits, in order.
    pub fn settle(&mut self, id: &str, mut write: impl FnMut(&str)) {
        let Some(q) = self.queue.as_mut() else {
            return;
        };
        if let Some(e) = q.iter_mut().find(|(r, ready, _)| !ready && &**r == id) {
            e.1 = true;
        }
        while q.front().is_some_and(|(_, ready, _)| *ready) {
            let (r, _, since) = q.pop_front().expect("front exists");
            write(&r);
            if let Some(since) = since {
                crate::metrics::local(|m| m.send_receipt.observe(since.elapsed()));
            }
        }
        if q.is_empty() {
            self.queue = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(r: &mut Receipts, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        r.settle(id, |x| out.push(x.to_string()));
        out
    }

    #[test]
    fn later_receipts_wait_for_an_owed_one() {
        let mut r = Receipts::default();
        assert_eq!(r.ready("a"), Ok(Some("a")), "nothing owed: at once");
        r.owe("sub").unwrap();
        r.owe("send").unwrap();
        assert_eq!(r.ready("ack"), Ok(None));
        assert!(r.any_owed());
        assert!(settle(&mut r, "send").is_empty(), "sub is still owed");
        assert_eq!(settle(&mut r, "sub"), ["sub", "send", "ack"]);
        assert!(!r.any_owed());
        assert!(r.queue.is_none(), "nothing kept once empty");
    }

    #[test]
    fn a_reused_id_settles_the_oldest() {
        let mut r = Receipts::default();
        r.owe("x").unwrap();
        r.owe("x").unwrap();
        assert_eq!(settle(&mut r, "x"), ["x"]);
        assert!(r.any_owed());
        assert_eq!(settle(&mut r, "x"), ["x"]);
        assert!(settle(&mut r, "unknown").is_empty());
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut r = Receipts::default();
        r.owe("first").unwrap();
        for i in 1..MAX_QUEUED_RECEIPTS {
            assert_eq!(r.ready(&i.to_string()), Ok(None));
        }
        assert_eq!(r.owe("one more"), Err(TooMany));
        assert_eq!(r.ready("one more"), Err(TooMany));
        assert_eq!(settle(&mut r, "first").len(), MAX_QUEUED_RECEIPTS);
    }
}
