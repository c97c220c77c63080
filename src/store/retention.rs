//! Retention: a background thread that, every interval, deletes stored
//! messages older than `--retention-days` and beyond the newest
//! `--retention-per-room` of each room.
//!
//! The deletes run as jobs on the writer thread (one writer, no lock
//! contention with the inserts), in chunks of at most [`CHUNK_ROWS`] rows
//! and [`CHUNK_ROOMS`] rooms per transaction, so a pass never holds up the
//! commits (and the RECEIPTs waiting for them) for long. The `rooms` table
//! keeps each room's last seq, so sequences continue after a room's
//! messages are all gone.

use std::time::Duration;

use crossbeam_channel::Sender;
use rusqlite::{Connection, OptionalExtension, params};
use tracing::{error, info};

use super::writer::{Item, run_after};

/// Most rows one retention transaction deletes.
pub const CHUNK_ROWS: u64 = 10_000;
/// Most rooms one retention transaction looks at.
pub const CHUNK_ROOMS: usize = 1_000;

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Delete messages older than this many days (0 = no age limit).
    pub days: u64,
    /// Keep at most this many messages per room (0 = no count limit).
    pub per_room: u64,
}

/// Start the retention thread.
pub fn spawn<T: Send + 'static>(
    writer: Sender<Item<T>>,
    policy: Policy,
    every: Duration,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("stampede-retention".into())
        .spawn(move || {
            super::lower_thread_priority();
            loop {
                std::thread::sleep(every);
                if !pass(&writer, policy, crate::clock::now_ms()) {
                    return; // the writer is gone
                }
            }
        })?;
    Ok(())
}

/// One retention pass over every room, chunk by chunk. `false` when the
/// writer is gone.
pub fn pass<T: Send + 'static>(writer: &Sender<Item<T>>, policy: Policy, now_ms: u64) -> bool {
    let mut cursor = String::new();
    let mut total = 0;
    loop {
        let from = cursor.clone();
        match run_after(writer, move |conn| chunk(conn, policy, &from, now_ms)) {
            Some(Ok((deleted, next))) => {
                total += deleted;
                match next {
                    Some(next) => cursor = next,
                    None => break,
                }
            }
            Some(Err(e)) => {
                error!("retention: {e}");
                break;
            }
            None => return false,
        }
    }
    if total > 0 {
        info!(deleted = total, "retention pass");
    }
    true
}

/// Delete expired messages of rooms from `from` on (inclusive), in one
/// transaction; returns rows deleted and where to go on (`None`: done).
pub fn chunk(
    conn: &mut Connection,
    policy: Policy,
    from: &str,
    now_ms: u64,
) -> rusqlite::Result<(u64, Option<String>)> {
    let cutoff = now_ms.saturating_sub(policy.days.saturating_mul(86_400_000)) as i64;
    let tx = conn.transaction()?;
    let rooms: Vec<(String, i64)> = {
        let mut st = tx.prepare_cached(
            "SELECT room, last_seq FROM rooms WHERE room >= ?1 ORDER BY room LIMIT ?2",
        )?;
        st.query_map(params![from, (CHUNK_ROOMS + 1) as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?
    };
    let mut deleted = 0u64;
    let mut next = None;
    for (i, (room, last)) in rooms.iter().enumerate() {
        if i == CHUNK_ROOMS {
            next = Some(room.clone());
            break;
        }
        let last = *last as u64;
        // The lowest seq to keep (0: keep everything).
        let mut keep_from = 0u64;
        if policy.per_room > 0 && last > policy.per_room {
            keep_from = last - policy.per_room + 1;
        }
        if policy.days > 0 {
            // Seqs rise with time in a room: the first fresh one, found by
            // walking the room's rows in key order from its oldest.
            let fresh: Option<i64> = tx
                .prepare_cached(
                    "SELECT seq FROM messages WHERE room = ?1 AND ts_ms >= ?2 ORDER BY seq LIMIT 1",
                )?
                .query_row(params![room, cutoff], |r| r.get(0))
                .optional()?;
            keep_from = keep_from.max(fresh.map(|s| s as u64).unwrap_or(last + 1));
        }
        if keep_from <= 1 {
            continue;
        }
        let oldest: Option<i64> = tx
            .prepare_cached("SELECT min(seq) FROM messages WHERE room = ?1")?
            .query_row(params![room], |r| r.get(0))?;
        let Some(oldest) = oldest.map(|s| s as u64) else {
            continue;
        };
        if oldest >= keep_from {
            continue;
        }
        let room_budget = CHUNK_ROWS - deleted;
        let upto = (keep_from - 1).min(oldest + room_budget - 1);
        let n = tx
            .prepare_cached("DELETE FROM messages WHERE room = ?1 AND seq <= ?2")?
            .execute(params![room, upto as i64])? as u64;
        deleted += n;
        if deleted >= CHUNK_ROWS {
            // This room may have more: start the next chunk with it.
            next = Some(room.clone());
            break;
        }
    }
    tx.commit()?;
    Ok((deleted, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Durability, last_seq, open, test_dir};

    fn fill(conn: &Connection, room: &str, n: u64, ts: impl Fn(u64) -> u64) {
        for seq in 1..=n {
            conn.execute(
                "INSERT INTO messages (room, seq, message_id, sender, ts_ms, headers, body)
                 VALUES (?1, ?2, ?1 || ':' || ?2, 'u', ?3, '[]', x'00')",
                params![room, seq as i64, ts(seq) as i64],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO rooms (room, last_seq, created_ms) VALUES (?1, ?2, 0)",
            params![room, n as i64],
        )
        .unwrap();
    }

    fn seqs(conn: &Connection, room: &str) -> Vec<u64> {
        let mut st = conn
            .prepare("SELECT seq FROM messages WHERE room = ?1 ORDER BY seq")
            .unwrap();
        st.query_map([room], |r| r.get::<_, i64>(0))
            .unwrap()
            .map(|r| r.unwrap() as u64)
            .collect()
    }

    #[test]
    fn keeps_the_newest_per_room_and_the_last_seq() {
        let dir = test_dir("retention-count");
        let mut c = open(&dir, Durability::Off).unwrap();
        fill(&c, "a", 25_000, |s| s);
        fill(&c, "b", 3, |s| s);
        let policy = Policy {
            days: 0,
            per_room: 10,
        };
        // In chunks: the first stops at CHUNK_ROWS and resumes with "a".
        let (n, next) = chunk(&mut c, policy, "", 0).unwrap();
        assert_eq!((n, next.as_deref()), (CHUNK_ROWS, Some("a")));
        let mut from = next.unwrap();
        loop {
            let (_, next) = chunk(&mut c, policy, &from, 0).unwrap();
            match next {
                Some(n) => from = n,
                None => break,
            }
        }
        assert_eq!(seqs(&c, "a"), (24_991..=25_000).collect::<Vec<_>>());
        assert_eq!(seqs(&c, "b"), vec![1, 2, 3]);
        assert_eq!(last_seq(&c, "a").unwrap(), 25_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn deletes_by_age() {
        let dir = test_dir("retention-age");
        let mut c = open(&dir, Durability::Off).unwrap();
        let day = 86_400_000;
        let now = 100 * day;
        // Seqs 1..=5 are 3 days old, 6..=8 fresh.
        fill(&c, "a", 8, |s| if s <= 5 { now - 3 * day } else { now });
        fill(&c, "old", 2, |_| now - 5 * day);
        let policy = Policy {
            days: 2,
            per_room: 0,
        };
        assert_eq!(chunk(&mut c, policy, "", now).unwrap(), (7, None));
        assert_eq!(seqs(&c, "a"), vec![6, 7, 8]);
        assert!(seqs(&c, "old").is_empty());
        assert_eq!(last_seq(&c, "old").unwrap(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
