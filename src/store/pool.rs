//! The reader pool: a few plain threads, each with its own read-only
//! SQLite connection (WAL readers never block the writer or each other),
//! taking jobs from one bounded channel. Replays and history requests run
//! here, never on a shard; their results go back to the shards as messages.

use std::path::Path;

use crossbeam_channel::{Sender, TrySendError, bounded};
use rusqlite::Connection;

use super::{StoreError, open_reader};

/// A read job: runs on a pool thread with that thread's connection.
pub type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// The submitting end of the pool (cheap to clone; one per shard).
#[derive(Clone)]
pub struct Pool {
    tx: Sender<ReadJob>,
}

/// The pool's queue is full: the caller answers "busy" instead of waiting.
#[derive(Debug)]
pub struct Busy;

impl Pool {
    /// Start `threads` readers on the database in `dir`, with a queue of
    /// `capacity` jobs. The threads end when every `Pool` is dropped.
    pub fn start(dir: &Path, threads: usize, capacity: usize) -> Result<Pool, StoreError> {
        let (tx, rx) = bounded::<ReadJob>(capacity.max(1));
        for i in 0..threads.max(1) {
            let conn = open_reader(dir)?;
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("stampede-reader-{i}"))
                .spawn(move || {
                    super::lower_thread_priority();
                    while let Ok(job) = rx.recv() {
                        job(&conn);
                    }
                })
                .map_err(|e| StoreError::Thread(e.to_string()))?;
        }
        Ok(Pool { tx })
    }

    /// Jobs waiting for a reader.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Queue a job without waiting (shards).
    pub fn try_submit(&self, job: ReadJob) -> Result<(), Busy> {
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(Busy),
        }
    }

    /// Queue a job, waiting for room (plain threads only: the writer).
    pub fn submit(&self, job: ReadJob) {
        let _ = self.tx.send(job);
    }
}
