//! STOMP transactions: BEGIN opens one, SEND/ACK/NACK with a `transaction`
//! header are held until COMMIT (all applied, all or nothing) or ABORT
//! (all dropped). Held frames are bounded per connection by count
//! (`max_transactions`, `max_transaction_frames`) and bytes
//! (`max_transaction_bytes`). A COMMIT with a receipt whose SENDs must be
//! stored first forms a *group*: its RECEIPT waits until the broker has
//! confirmed every SEND of it.

use std::borrow::Cow;

use super::{Broker, Session, StompError};
use crate::message::{Confirm, Draft};
use crate::out::Out;
use crate::stomp::frame::{Command, Frame};

/// A SEND/ACK/NACK held by an open transaction until COMMIT.
#[derive(Debug)]
struct Held {
    command: Command,
    headers: Vec<(Box<str>, Box<str>)>,
    body: Box<[u8]>,
}

impl Held {
    /// What holding it costs against `max_transaction_bytes`.
    fn bytes(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// One open transaction.
#[derive(Debug)]
struct Open {
    id: Box<str>,
    held: Vec<Held>,
}

/// A COMMIT whose RECEIPT waits for its SENDs to be stored.
#[derive(Debug)]
struct Group {
    id: u32,
    /// SENDs of it not yet stored.
    left: usize,
    receipt: Box<str>,
}

/// A connection's transactions.
#[derive(Debug, Default)]
pub(super) struct Transactions {
    open: Vec<Open>,
    /// Bytes all open transactions hold (bounded by max_transaction_bytes).
    held_bytes: usize,
    groups: Vec<Group>,
    next_group: u32,
}

impl Transactions {
    /// Drop every open transaction (the connection is closing).
    pub(super) fn clear(&mut self) {
        self.open.clear();
        self.held_bytes = 0;
    }

    fn find(&mut self, tx: &str) -> Option<&mut Open> {
        self.open.iter_mut().find(|t| &*t.id == tx)
    }
}

/// What a COMMIT does, checked before any of it is applied.
enum Step {
    Publish(Draft),
    Ack(usize, u64),
}

impl Session {
    pub(super) fn begin(
        &mut self,
        f: &Frame<'_>,
        out: &mut Out,
        broker: &impl Broker,
    ) -> Result<(), StompError> {
        let tx = f
            .header("transaction")
            .ok_or_else(|| StompError::missing("transaction", f.command))?;
        if self.txs.find(tx).is_some() {
            return Err(StompError::protocol(
                "transaction already begun",
                format!("transaction '{tx}' is already open"),
            ));
        }
        let max = broker.limits().max_transactions;
        if self.txs.open.len() >= max {
            return Err(StompError::limit(
                "too many transactions",
                format!("at most {max} open transactions per connection"),
            ));
        }
        self.txs.open.push(Open {
            id: tx.into(),
            held: Vec::new(),
        });
        self.receipt(out, f.header("receipt"))?;
        Ok(())
    }

    pub(super) fn commit(
        &mut self,
        f: &Frame<'_>,
        out: &mut Out,
        broker: &impl Broker,
    ) -> Result<(), StompError> {
        let receipt = f.header("receipt");
        let held = self.take_tx(f)?;
        // All or nothing: check every held frame first, so a bad ACK cannot
        // leave the SENDs before it published.
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
                Command::Send => Step::Publish(self.draft(&frame, &broker.limits().prefixes)?),
                _ => {
                    let (idx, seq) = self.ack_target(&frame)?;
                    Step::Ack(idx, seq)
                }
            });
        }
        // A COMMIT's RECEIPT confirms its SENDs like a SEND's own: once all
        // of them are stored.
        let sends = steps
            .iter()
            .filter(|s| matches!(s, Step::Publish(_)))
            .count();
        let group = match receipt {
            Some(r) if sends > 0 && broker.persistent() => {
                let id = self.txs.next_group;
                self.txs.next_group = id.wrapping_add(1);
                self.txs.groups.push(Group {
                    id,
                    left: sends,
                    receipt: r.into(),
                });
                self.owe_receipt(r)?;
                Some(id)
            }
            _ => None,
        };
        for step in steps {
            match step {
                Step::Publish(draft) => broker.publish(draft, group.map(Confirm::Group)),
                Step::Ack(idx, seq) => self.ack_apply(idx, seq),
            }
        }
        if group.is_none() {
            self.receipt(out, receipt)?;
        }
        Ok(())
    }

    pub(super) fn abort(&mut self, f: &Frame<'_>, out: &mut Out) -> Result<(), StompError> {
        self.take_tx(f)?;
        self.receipt(out, f.header("receipt"))?;
        Ok(())
    }

    /// Hold a SEND/ACK/NACK in transaction `tx` until its COMMIT.
    pub(super) fn hold(
        &mut self,
        tx: &str,
        f: &Frame<'_>,
        broker: &impl Broker,
    ) -> Result<(), StompError> {
        let limits = broker.limits();
        let max = limits.max_transaction_frames;
        let Some(open) = self.txs.find(tx) else {
            return Err(StompError::unknown_tx(tx));
        };
        if open.held.len() >= max {
            return Err(StompError::limit(
                "too many frames in transaction",
                format!("a transaction holds at most {max} frames"),
            ));
        }
        // Validate now so the client learns of a bad SEND at SEND time.
        if f.command == Command::Send {
            self.draft(f, &limits.prefixes)?;
        }
        let held = Held {
            command: f.command,
            headers: f
                .headers
                .iter()
                .filter(|(k, _)| k != "transaction" && k != "receipt")
                .map(|(k, v)| (k.as_ref().into(), v.as_ref().into()))
                .collect(),
            body: f.body.into(),
        };
        let size = held.bytes();
        let budget = limits.max_transaction_bytes;
        if self.txs.held_bytes + size > budget {
            return Err(StompError::limit(
                "too many bytes in transactions",
                format!(
                    "open transactions may hold at most {budget} bytes per connection (max_transaction_bytes)"
                ),
            ));
        }
        self.txs.held_bytes += size;
        self.txs.find(tx).expect("found above").held.push(held);
        Ok(())
    }

    /// Close the transaction a COMMIT/ABORT names; its held frames.
    fn take_tx(&mut self, f: &Frame<'_>) -> Result<Vec<Held>, StompError> {
        let tx = f
            .header("transaction")
            .ok_or_else(|| StompError::missing("transaction", f.command))?;
        let idx = self
            .txs
            .open
            .iter()
            .position(|t| &*t.id == tx)
            .ok_or_else(|| StompError::unknown_tx(tx))?;
        let held = self.txs.open.swap_remove(idx).held;
        let freed: usize = held.iter().map(Held::bytes).sum();
        self.txs.held_bytes = self.txs.held_bytes.saturating_sub(freed);
        Ok(held)
    }

    /// One SEND of group `group` is stored; after the last, RECEIPT the
    /// COMMIT.
    pub fn group_part_done(&mut self, group: u32, out: &mut Out) {
        let groups = &mut self.txs.groups;
        let Some(i) = groups.iter().position(|g| g.id == group) else {
            return;
        };
        groups[i].left -= 1;
        if groups[i].left == 0 {
            let g = groups.swap_remove(i);
            self.deferred_receipt(out, &g.receipt);
        }
    }

    /// Forget group `group` (one of its SENDs failed); its COMMIT's
    /// receipt, for the ERROR.
    pub fn take_group(&mut self, group: u32) -> Option<Box<str>> {
        let groups = &mut self.txs.groups;
        let i = groups.iter().position(|g| g.id == group)?;
        Some(groups.swap_remove(i).receipt)
    }
}
