//! Durable chat history in SQLite (issue 4): one database under
//! `--data-dir`, WAL mode, schema versioned by `PRAGMA user_version` and
//! migrated at start-up, and one writer thread that commits what the owner
//! shards hand it in batches (group commit).
//!
//! Nothing here runs on a shard: shards only `try_send` into the writer's
//! bounded channel and get commit results back as messages.

pub(crate) mod checkpoint;
pub(crate) mod members;
pub(crate) mod pool;
pub(crate) mod retention;
pub mod writer;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use thiserror::Error;

pub use crate::config::Durability;
use crate::message::{Draft, Sequenced};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "stampede.db";

/// SQLite's `synchronous` value for a durability setting.
fn synchronous(d: Durability) -> &'static str {
    match d {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
        Durability::Off => "OFF",
    }
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "database schema version {found} is newer than this binary knows ({known}); refusing to touch it"
    )]
    TooNew { found: i64, known: i64 },
    #[error("cannot start a store thread: {0}")]
    Thread(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Niceness of the store's threads (writer, readers, retention). They share
/// cores with the shards; when both want a core, the shard (the message
/// path) should win, and a writer that falls behind is what back-pressure
/// is for. Linux applies `setpriority` per thread.
pub(crate) const STORE_THREAD_NICE: i32 = 10;

/// Lower the calling thread's priority to [`STORE_THREAD_NICE`].
pub(crate) fn lower_thread_priority() {
    // SAFETY: gettid and setpriority on our own thread; failure is harmless.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, STORE_THREAD_NICE);
    }
}

/// The schema, one step per version; `MIGRATIONS[i]` takes the database
/// from version `i` to `i + 1`. Never edit a released step: add one.
const MIGRATIONS: &[&str] = &[
    // 1: messages, rooms, room members and device tokens.
    "CREATE TABLE rooms (
        room        TEXT PRIMARY KEY,
        last_seq    INTEGER NOT NULL,
        created_ms  INTEGER NOT NULL
     ) WITHOUT ROWID;
     CREATE TABLE messages (
        room        TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        message_id  TEXT NOT NULL,
        sender      TEXT NOT NULL,
        ts_ms       INTEGER NOT NULL,
        headers     TEXT NOT NULL,   -- user headers of the SEND, JSON [[name, value], ...]
        body        BLOB NOT NULL,
        PRIMARY KEY (room, seq)
     ) WITHOUT ROWID;
     CREATE INDEX messages_ts ON messages (ts_ms);
     CREATE TABLE room_members (
        room        TEXT NOT NULL,
        user        TEXT NOT NULL,
        added_ms    INTEGER NOT NULL,
        PRIMARY KEY (room, user)
     ) WITHOUT ROWID;
     CREATE TABLE devices (
        user        TEXT NOT NULL,
        token       TEXT NOT NULL,
        added_ms    INTEGER NOT NULL,
        PRIMARY KEY (user, token)
     ) WITHOUT ROWID;",
    // 2: messages become a rowid table with a (room, seq) index. Keyed by
    // (room, seq) itself, every batch dirtied pages all over the table
    // (each room's rows sat together): 3.4 KB written per 100-byte message.
    // Appending rows in commit order and indexing only (room, seq) writes
    // 1.4 KB and doubles the writer's rate (benches/RESULTS.md). The
    // timestamp index goes: retention finds a room's first fresh row by
    // walking the room's rows in seq order.
    "CREATE TABLE messages_v2 (
        id          INTEGER PRIMARY KEY,
        room        TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        message_id  TEXT NOT NULL,
        sender      TEXT NOT NULL,
        ts_ms       INTEGER NOT NULL,
        headers     TEXT NOT NULL,   -- user headers of the SEND, JSON [[name, value], ...]
        body        BLOB NOT NULL
     );
     INSERT INTO messages_v2 (room, seq, message_id, sender, ts_ms, headers, body)
        SELECT room, seq, message_id, sender, ts_ms, headers, body FROM messages
        ORDER BY ts_ms, room, seq;
     DROP TABLE messages;
     ALTER TABLE messages_v2 RENAME TO messages;
     CREATE UNIQUE INDEX messages_room_seq ON messages (room, seq);",
    // 3: the seqs a room's owner may give out without asking again
    // (`reserve_seqs`): a seq once given is never given again, even to a
    // message that was delivered live and never stored (a crash, a full
    // disk), because a room continues after max(last_seq, reserved_seq).
    "ALTER TABLE rooms ADD COLUMN reserved_seq INTEGER NOT NULL DEFAULT 0;",
    // 4: a user's rooms (`GET /api/users/{user}/rooms`, the chat page's
    // room list) without scanning every membership.
    "CREATE INDEX room_members_user ON room_members (user, room);",
];

/// WAL pages (4 KiB) at which the writer checkpoints by itself, on its
/// commit path: only a backstop for a checkpointer thread that cannot keep
/// up (`checkpoint.rs`), so the WAL stays bounded (~1 GiB) whatever happens.
pub(crate) const WAL_BACKSTOP_PAGES: i64 = 262_144;

/// Bytes the WAL file is cut back to when it starts over after a complete
/// checkpoint (it would otherwise keep its high-water size on disk).
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// The schema version this binary writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Open (creating if needed) the database in `dir`, in WAL mode with the
/// given durability, and bring its schema up to date.
pub fn open(dir: &Path, durability: Durability) -> Result<Connection, StoreError> {
    let path = dir.join(DB_FILE);
    let conn = Connection::open(&path).map_err(|source| StoreError::Open {
        path: path.clone(),
        source,
    })?;
    // A reader never blocks the writer in WAL mode; a writer that finds
    // the database busy (a checkpoint) waits this long instead of failing.
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous(durability))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Checkpoints run on the checkpointer thread, off the commit path; the
    // writer's own is a backstop only.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    migrate(&conn)?;
    Ok(conn)
}

/// Apply every migration step past the database's `user_version`, each in
/// its own transaction together with the version bump.
fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (v, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", v as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// The last stored seq of `room` (0 if it has none).
pub(crate) fn last_seq(conn: &Connection, room: &str) -> Result<u64, StoreError> {
    let seq: Option<i64> = conn
        .query_row(
            "SELECT last_seq FROM rooms WHERE room = ?1",
            params![room],
            |r| r.get(0),
        )
        .optional()?;
    Ok(seq.unwrap_or(0) as u64)
}

/// Where a room's seqs stand after `load_room` or `reserve_seqs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoomSeqs {
    /// The seq its next message gets (`None` after a mere extension).
    pub next: Option<u64>,
    /// The highest seq the owner may give without reserving more.
    pub reserved: u64,
}

/// On the writer's connection: where `room` continues after a (re)start
/// or after it was freed — after its last stored seq and after every seq
/// reserved before (some may have been delivered live and never stored)
/// — and reserve the next `block` seqs for it, durably, before any is
/// given.
///
/// `block` 0 (cluster mode, where Redis gives the seqs): no reservation;
/// the room continues after its last stored seq, the floor a publish
/// passes to Redis in case Redis lost the room.
pub(crate) fn load_room(conn: &Connection, room: &str, block: u64) -> Result<RoomSeqs, StoreError> {
    if block == 0 {
        return Ok(RoomSeqs {
            next: Some(last_seq(conn, room)? + 1),
            reserved: u64::MAX,
        });
    }
    let (last, reserved): (i64, i64) = conn
        .query_row(
            "SELECT last_seq, reserved_seq FROM rooms WHERE room = ?1",
            params![room],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((0, 0));
    let next = last.max(reserved) as u64 + 1;
    let upto = next - 1 + block.max(1);
    conn.execute(
        "INSERT INTO rooms (room, last_seq, created_ms, reserved_seq) VALUES (?1, 0, ?3, ?2)
         ON CONFLICT (room) DO UPDATE SET reserved_seq = max(reserved_seq, excluded.reserved_seq)",
        params![room, upto as i64, crate::clock::now_ms() as i64],
    )?;
    Ok(RoomSeqs {
        next: Some(next),
        reserved: upto,
    })
}

/// On the writer's connection: raise `room`'s reservation to `upto`.
pub(crate) fn reserve_seqs(
    conn: &Connection,
    room: &str,
    upto: u64,
) -> Result<RoomSeqs, StoreError> {
    conn.execute(
        "UPDATE rooms SET reserved_seq = max(reserved_seq, ?2) WHERE room = ?1",
        params![room, upto as i64],
    )?;
    Ok(RoomSeqs {
        next: None,
        reserved: upto,
    })
}

/// On the writer's connection, after everything given so far is queued
/// before it: give back the seqs reserved beyond the last one given
/// (`(room, last given)` pairs), so a room freed or stopped cleanly
/// continues without a gap. One transaction.
pub(crate) fn release_seqs(
    conn: &mut Connection,
    rooms: &[(Box<str>, u64)],
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut stmt = tx.prepare_cached("UPDATE rooms SET reserved_seq = ?2 WHERE room = ?1")?;
        for (room, given) in rooms {
            stmt.execute(params![&**room, *given as i64])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Open a reader connection (for the pool): read-only, WAL, never blocks
/// the writer.
pub(crate) fn open_reader(dir: &Path) -> Result<Connection, StoreError> {
    use rusqlite::OpenFlags;
    let path = dir.join(DB_FILE);
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::Open {
        path: path.clone(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// A message's user headers as stored: a JSON array of `[name, value]`
/// pairs (an array, not an object, so their order survives).
pub(crate) fn headers_to_json(headers: &[(Box<str>, Box<str>)], out: &mut Vec<u8>) {
    // Serialising strings into a Vec cannot fail.
    let _ = serde_json::to_writer(out, headers);
}

/// The inverse of [`headers_to_json`]; a damaged value gives no headers.
pub(crate) fn headers_from_json(json: &str) -> Vec<(Box<str>, Box<str>)> {
    serde_json::from_str::<Vec<(String, String)>>(json)
        .map(|v| v.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
        .unwrap_or_default()
}

/// The seq after which the newest `k` stored messages of `room` up to
/// `upto` start (0 when it has fewer): seqs may skip numbers, so "the last
/// k" is counted in stored messages, not in seq arithmetic.
pub(crate) fn after_last_k(
    conn: &Connection,
    room: &str,
    upto: u64,
    k: u64,
) -> Result<u64, StoreError> {
    if k == 0 {
        return Ok(upto);
    }
    let seq: Option<i64> = conn
        .prepare_cached(
            "SELECT seq FROM messages WHERE room = ?1 AND seq <= ?2 ORDER BY seq DESC LIMIT 1 OFFSET ?3",
        )?
        .query_row(
            params![room, upto.min(i64::MAX as u64) as i64, (k - 1).min(i64::MAX as u64) as i64],
            |r| r.get(0),
        )
        .optional()?;
    Ok(seq.map_or(0, |s| s as u64 - 1))
}

/// Which stored messages of a room to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Range {
    /// Seqs `> after` and `<= upto`, oldest first.
    After { after: u64, upto: u64 },
    /// The newest seqs `< before`, returned oldest first.
    Before { before: u64 },
}

/// A page of stored messages, oldest first, and whether the range has more
/// beyond it (the page hit `limit` or `max_bytes`).
#[derive(Debug, Default)]
pub(crate) struct Page {
    pub messages: Vec<Sequenced>,
    pub more: bool,
}

/// Read up to `limit` messages of `room` in `range`, stopping early once
/// their bodies reach `max_bytes` (at least one message is always read).
pub(crate) fn read_page(
    conn: &Connection,
    room: &str,
    range: Range,
    limit: usize,
    max_bytes: usize,
) -> Result<Page, StoreError> {
    let limit = limit.max(1);
    // One more than asked tells whether there is more.
    let fetch = (limit + 1) as i64;
    let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
    let mut stmt;
    let mut rows = match range {
        Range::After { after, upto } => {
            stmt = conn.prepare_cached(
                "SELECT seq, sender, ts_ms, headers, body FROM messages
                 WHERE room = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4",
            )?;
            stmt.query(params![room, clamp(after), clamp(upto), fetch])?
        }
        Range::Before { before } => {
            stmt = conn.prepare_cached(
                "SELECT seq, sender, ts_ms, headers, body FROM messages
                 WHERE room = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
            )?;
            stmt.query(params![room, clamp(before), fetch])?
        }
    };
    let mut page = Page::default();
    let mut bytes = 0usize;
    while let Some(r) = rows.next()? {
        if page.messages.len() == limit || (bytes >= max_bytes && !page.messages.is_empty()) {
            page.more = true;
            break;
        }
        let headers: String = r.get(3)?;
        let body: Vec<u8> = r.get(4)?;
        bytes += body.len() + headers.len();
        page.messages.push(Sequenced {
            draft: Draft {
                room: room.into(),
                sender: r.get::<_, String>(1)?.into(),
                headers: headers_from_json(&headers),
                body: body.into(),
            },
            seq: r.get::<_, i64>(0)? as u64,
            timestamp_ms: r.get::<_, i64>(2)? as u64,
            sequenced_at: None,
        });
    }
    if matches!(range, Range::Before { .. }) {
        page.messages.reverse();
    }
    Ok(page)
}

/// A fresh directory for one test's database.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "stampede-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        test_dir("store")
    }

    #[test]
    fn creates_schema_in_wal_mode_and_reopens() {
        let dir = tmp();
        let c = open(&dir, Durability::Full).unwrap();
        let mode: String = c
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = c
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
        let v: i64 = c
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        for t in ["messages", "rooms", "room_members", "devices"] {
            let n: i64 = c
                .query_row(
                    "SELECT count(*) FROM sqlite_schema WHERE type='table' AND name=?1",
                    [t],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "{t}");
        }
        assert_eq!(last_seq(&c, "lobby").unwrap(), 0);
        drop(c);
        // Reopening applies nothing again and keeps the data.
        let c = open(&dir, Durability::Normal).unwrap();
        let sync: i64 = c
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn migrates_a_version_1_database_keeping_its_messages() {
        let dir = tmp();
        {
            let c = Connection::open(dir.join(DB_FILE)).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            for seq in 1..=3 {
                c.execute(
                    "INSERT INTO messages VALUES ('r', ?1, 'r:' || ?1, 'al', ?1, '[[\"k\",\"v\"]]', x'ff')",
                    [seq],
                )
                .unwrap();
            }
            c.execute("INSERT INTO rooms VALUES ('r', 3, 0)", [])
                .unwrap();
        }
        let c = open(&dir, Durability::Off).unwrap();
        let page = read_page(&c, "r", Range::After { after: 1, upto: 9 }, 10, 1 << 20).unwrap();
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![2, 3]);
        assert_eq!(&*page.messages[0].draft.body, &[0xff]);
        assert_eq!(
            page.messages[0].draft.headers,
            vec![("k".into(), "v".into())]
        );
        assert_eq!(last_seq(&c, "r").unwrap(), 3);
        let unique: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type='index' AND name='messages_room_seq'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(unique, 1);
        // (room, seq) stays unique.
        assert!(
            c.execute(
                "INSERT INTO messages (room, seq, message_id, sender, ts_ms, headers, body) VALUES ('r', 3, 'r:3', 'x', 0, '[]', x'')",
                []
            )
            .is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_room_continues_after_its_stored_and_its_reserved_seqs() {
        let dir = tmp();
        let mut c = open(&dir, Durability::Off).unwrap();
        let first = load_room(&c, "r", 100).unwrap();
        assert_eq!(
            first,
            RoomSeqs {
                next: Some(1),
                reserved: 100
            }
        );
        // Seqs 1..=7 given, only 1..=3 stored, then a crash: the room
        // continues after the reservation, never at 4.
        c.execute(
            "INSERT INTO rooms (room, last_seq, created_ms) VALUES ('r', 3, 0)
             ON CONFLICT (room) DO UPDATE SET last_seq = 3",
            [],
        )
        .unwrap();
        assert_eq!(load_room(&c, "r", 100).unwrap().next, Some(101));
        assert_eq!(reserve_seqs(&c, "r", 300).unwrap().reserved, 300);
        // A clean stop gives back what was not given.
        release_seqs(&mut c, &[("r".into(), 120)]).unwrap();
        assert_eq!(
            load_room(&c, "r", 10).unwrap(),
            RoomSeqs {
                next: Some(121),
                reserved: 130
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_last_k_are_counted_in_stored_messages() {
        let dir = tmp();
        let c = open(&dir, Durability::Off).unwrap();
        for seq in [1, 2, 5, 9, 10] {
            c.execute(
                "INSERT INTO messages (room, seq, message_id, sender, ts_ms, headers, body) VALUES ('r', ?1, '', '', 0, '[]', x'')",
                [seq],
            )
            .unwrap();
        }
        assert_eq!(after_last_k(&c, "r", 10, 2).unwrap(), 8, "9 and 10");
        assert_eq!(after_last_k(&c, "r", 10, 3).unwrap(), 4, "5, 9 and 10");
        assert_eq!(after_last_k(&c, "r", 8, 2).unwrap(), 1, "2 and 5");
        assert_eq!(after_last_k(&c, "r", 10, 50).unwrap(), 0, "fewer than k");
        assert_eq!(after_last_k(&c, "r", 10, 0).unwrap(), 10);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tmp();
        let c = open(&dir, Durability::Off).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(c);
        let err = open(&dir, Durability::Off).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
