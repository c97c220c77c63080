//! The checkpointer thread: folds the write-ahead log into the database on
//! its own connection, so the writer's commits do not carry whole
//! checkpoints.
//!
//! With SQLite's automatic checkpoints the commit that crosses the WAL
//! threshold runs the whole checkpoint (copy every page, fsync the
//! database) before it returns: every RECEIPT waiting for that commit
//! waits for the checkpoint too (hundreds of ms after a burst). Here
//! `PASSIVE` checkpoints run every `--checkpoint-interval-ms` on another
//! thread; they never wait for the writer or the readers, and the writer
//! never waits for them (WAL appends and a checkpoint go on side by side).
//!
//! A busy writer keeps appending while a pass copies, so a pass never
//! quite catches up, and SQLite starts the WAL over only when a write
//! begins with *every* frame folded in: left alone the WAL would grow
//! without end. So once the WAL holds `RESTART_FRAMES`, the thread passes
//! again at once until what is left is at most `TAIL_FRAMES` (~1 MB), and
//! then has the writer run one last pass between two batches: it copies
//! only that tail (and fsyncs the database once), and the writer's next
//! commit starts the WAL from its beginning; `journal_size_limit` trims
//! the file. The writer's automatic checkpoint stays only as a backstop
//! (`WAL_BACKSTOP_PAGES`, ~1 GiB).

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::{DB_FILE, StoreError};
use crate::config::Durability;

/// What one `PRAGMA wal_checkpoint(PASSIVE)` reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Another connection held a lock the checkpoint needed (it did what
    /// it could).
    pub busy: bool,
    /// Frames in the WAL.
    pub wal_frames: i64,
    /// Frames of it now in the database.
    pub checkpointed: i64,
}

/// Open the checkpointer's connection to the database in `dir`.
pub fn open(dir: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let path = dir.join(DB_FILE);
    let conn = Connection::open(&path).map_err(|source| StoreError::Open { path, source })?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // The checkpoint's own fsyncs follow the durability setting.
    conn.pragma_update(None, "synchronous", super::synchronous(durability))?;
    // Never checkpoints by itself: it only checkpoints when told to.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// One passive checkpoint.
pub fn pass(conn: &Connection) -> rusqlite::Result<Pass> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok(Pass {
            busy: r.get::<_, i64>(0)? != 0,
            wal_frames: r.get(1)?,
            checkpointed: r.get(2)?,
        })
    })
}

/// WAL frames (pages) from which the checkpointer has the writer finish a
/// checkpoint, so the WAL starts over: 4,096 frames = 16 MB.
pub const RESTART_FRAMES: i64 = 4096;

/// Frames a background pass may leave for the writer to copy (~1 MB: a
/// millisecond or two on the writer's thread).
pub const TAIL_FRAMES: i64 = 256;

/// Background passes in a row while catching up before the writer is asked
/// anyway (a disk slower than the writes: the writer's pass then does more).
const MAX_CATCH_UP_PASSES: usize = 8;

/// Start the checkpointer on its own thread, for as long as the process
/// runs: a passive checkpoint every `every`; and when the WAL is big, the
/// last step on the writer through `finish_on_writer`, which must run
/// `pass` on the writer's connection between batches and return once it
/// has (`false`: the writer is gone, and the thread ends). The final
/// `TRUNCATE` checkpoint at shutdown runs on the writer and waits for a
/// background pass in progress through the busy timeout.
pub fn spawn(
    conn: Connection,
    every: Duration,
    finish_on_writer: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("stampede-checkpoint".into())
        .spawn(move || {
            super::lower_thread_priority();
            let mut last_warned: Option<Instant> = None;
            loop {
                std::thread::sleep(every);
                let mut p = match pass(&conn) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!("checkpoint: {e}");
                        continue;
                    }
                };
                if p.wal_frames < RESTART_FRAMES {
                    continue;
                }
                for _ in 0..MAX_CATCH_UP_PASSES {
                    if p.wal_frames - p.checkpointed <= TAIL_FRAMES {
                        break;
                    }
                    match pass(&conn) {
                        Ok(next) => p = next,
                        Err(e) => {
                            tracing::warn!("checkpoint: {e}");
                            break;
                        }
                    }
                }
                if p.wal_frames > super::WAL_BACKSTOP_PAGES / 2
                    && last_warned.is_none_or(|t| t.elapsed() > Duration::from_secs(60))
                {
                    // Readers pinning old frames, or a disk slower than
                    // the writes: say so, at most once a minute.
                    tracing::warn!(
                        wal_frames = p.wal_frames,
                        checkpointed = p.checkpointed,
                        "the WAL is not being folded into the database as fast as it grows"
                    );
                    last_warned = Some(Instant::now());
                }
                if !finish_on_writer() {
                    return;
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_folds_the_wal_and_the_writer_then_restarts_it() {
        let dir = std::env::temp_dir().join(format!(
            "stampede-ckpt-{}-{}",
            std::process::id(),
            crate::clock::now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let writer = super::super::open(&dir, Durability::Normal).unwrap();
        let ckpt = open(&dir, Durability::Normal).unwrap();
        writer
            .execute_batch("CREATE TABLE t (x BLOB); INSERT INTO t VALUES (zeroblob(100000));")
            .unwrap();
        let p = pass(&ckpt).unwrap();
        assert!(!p.busy);
        assert!(p.wal_frames > 20, "{p:?}");
        assert_eq!(p.checkpointed, p.wal_frames, "everything folded in");
        // The writer's next commit starts the WAL over: a small commit
        // leaves a small WAL, not one on top of the old frames.
        writer.execute_batch("INSERT INTO t VALUES (1)").unwrap();
        let p = pass(&ckpt).unwrap();
        assert!(p.wal_frames < 5, "{p:?}");
        drop((writer, ckpt));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
