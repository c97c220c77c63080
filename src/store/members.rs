//! Room members and push devices (tables `room_members` and `devices`,
//! there since schema 1). Writes run on the writer's connection (as
//! `Item::After` jobs, in order with the messages); reads on a reader's.
//!
//! Nothing here checks who asks: the API and the owner shard do.

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;

/// What adding something that is bounded did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    /// It is new.
    New,
    /// It was there already.
    Exists,
    /// It is new, and the bound is reached: not added.
    Full,
}

impl Added {
    /// For an answer: whether it changed anything, `None` when full.
    pub fn changed(self) -> Option<bool> {
        match self {
            Added::New => Some(true),
            Added::Exists => Some(false),
            Added::Full => None,
        }
    }
}

/// Every member of `room`, at most `max` of them (the rest, if a lower
/// bound than when they were added is configured now, are left out).
pub(crate) fn load_members(
    conn: &Connection,
    room: &str,
    max: usize,
) -> Result<Vec<Box<str>>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT user FROM room_members WHERE room = ?1 ORDER BY user LIMIT ?2")?;
    let rows = stmt.query_map(params![room, max as i64], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r?.into_boxed_str());
    }
    Ok(out)
}

/// Add `user` to `room` unless the room already has `max` members.
pub(crate) fn add_member(
    conn: &Connection,
    room: &str,
    user: &str,
    max: usize,
) -> Result<Added, StoreError> {
    if is_member(conn, room, user)? {
        return Ok(Added::Exists);
    }
    let count: i64 = conn
        .prepare_cached("SELECT count(*) FROM room_members WHERE room = ?1")?
        .query_row(params![room], |r| r.get(0))?;
    if count as usize >= max {
        return Ok(Added::Full);
    }
    conn.prepare_cached("INSERT INTO room_members (room, user, added_ms) VALUES (?1, ?2, ?3)")?
        .execute(params![room, user, crate::clock::now_ms() as i64])?;
    Ok(Added::New)
}

/// Remove `user` from `room`; whether they were a member.
pub(crate) fn remove_member(conn: &Connection, room: &str, user: &str) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached("DELETE FROM room_members WHERE room = ?1 AND user = ?2")?
        .execute(params![room, user])?;
    Ok(n > 0)
}

/// Whether `user` is a member of `room`.
pub(crate) fn is_member(conn: &Connection, room: &str, user: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM room_members WHERE room = ?1 AND user = ?2")?
        .query_row(params![room, user], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Register push device `token` for `user`, unless they have `max` already.
pub(crate) fn add_device(
    conn: &Connection,
    user: &str,
    token: &str,
    max: usize,
) -> Result<Added, StoreError> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM devices WHERE user = ?1 AND token = ?2")?
        .query_row(params![user, token], |_| Ok(()))
        .optional()?
        .is_some();
    if exists {
        return Ok(Added::Exists);
    }
    let count: i64 = conn
        .prepare_cached("SELECT count(*) FROM devices WHERE user = ?1")?
        .query_row(params![user], |r| r.get(0))?;
    if count as usize >= max {
        return Ok(Added::Full);
    }
    conn.prepare_cached("INSERT INTO devices (user, token, added_ms) VALUES (?1, ?2, ?3)")?
        .execute(params![user, token, crate::clock::now_ms() as i64])?;
    Ok(Added::New)
}

/// Forget push device `token` of `user`; whether it was registered.
pub(crate) fn remove_device(
    conn: &Connection,
    user: &str,
    token: &str,
) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached("DELETE FROM devices WHERE user = ?1 AND token = ?2")?
        .execute(params![user, token])?;
    Ok(n > 0)
}

/// Rows of a one-column query as strings.
fn strings(
    conn: &Connection,
    sql: &str,
    key: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params![key, limit as i64], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The members of `room` in name order, at most `limit`.
pub(crate) fn list_members(
    conn: &Connection,
    room: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    strings(
        conn,
        "SELECT user FROM room_members WHERE room = ?1 ORDER BY user LIMIT ?2",
        room,
        limit,
    )
}

/// The push devices of `user`, at most `limit`.
pub(crate) fn list_devices(
    conn: &Connection,
    user: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    strings(
        conn,
        "SELECT token FROM devices WHERE user = ?1 ORDER BY token LIMIT ?2",
        user,
        limit,
    )
}

/// One of a user's rooms: its name and its newest stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserRoom {
    pub room: String,
    /// The newest stored seq (0: none yet).
    pub last_seq: u64,
    /// When that message was sent (ms since the epoch; 0: none).
    pub last_ts_ms: i64,
}

/// The rooms `user` is a member of, those with the newest message first, at
/// most `limit`.
pub(crate) fn list_user_rooms(
    conn: &Connection,
    user: &str,
    limit: usize,
) -> Result<Vec<UserRoom>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT m.room,
                COALESCE((SELECT seq FROM messages WHERE room = m.room ORDER BY seq DESC LIMIT 1), 0),
                COALESCE((SELECT ts_ms FROM messages WHERE room = m.room ORDER BY seq DESC LIMIT 1), 0)
                  AS last_ts
           FROM room_members AS m WHERE m.user = ?1
          ORDER BY last_ts DESC, m.room LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![user, limit as i64], |r| {
        Ok(UserRoom {
            room: r.get(0)?,
            last_seq: r.get::<_, i64>(1)? as u64,
            last_ts_ms: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;

    #[test]
    fn members_and_devices_are_bounded_and_listed() {
        let dir = crate::store::test_dir("members");
        let conn = crate::store::open(&dir, Durability::Off).unwrap();
        assert_eq!(add_member(&conn, "r", "bob", 2).unwrap(), Added::New);
        assert_eq!(add_member(&conn, "r", "bob", 2).unwrap(), Added::Exists);
        assert_eq!(add_member(&conn, "r", "al", 2).unwrap(), Added::New);
        assert_eq!(add_member(&conn, "r", "cy", 2).unwrap(), Added::Full);
        assert_eq!(add_member(&conn, "other", "cy", 2).unwrap(), Added::New);
        assert_eq!(list_members(&conn, "r", 10).unwrap(), ["al", "bob"]);
        assert_eq!(
            load_members(&conn, "r", 1).unwrap(),
            vec![Box::<str>::from("al")]
        );
        assert!(is_member(&conn, "r", "bob").unwrap());
        assert!(remove_member(&conn, "r", "bob").unwrap());
        assert!(!remove_member(&conn, "r", "bob").unwrap());
        assert!(!is_member(&conn, "r", "bob").unwrap());

        assert_eq!(add_device(&conn, "al", "t1", 1).unwrap(), Added::New);
        assert_eq!(add_device(&conn, "al", "t1", 1).unwrap(), Added::Exists);
        assert_eq!(add_device(&conn, "al", "t2", 1).unwrap(), Added::Full);
        assert_eq!(list_devices(&conn, "al", 10).unwrap(), ["t1"]);
        assert!(remove_device(&conn, "al", "t1").unwrap());
        assert!(list_devices(&conn, "al", 10).unwrap().is_empty());
    }

    #[test]
    fn a_users_rooms_newest_first_with_their_last_seq() {
        let dir = crate::store::test_dir("user-rooms");
        let conn = crate::store::open(&dir, Durability::Off).unwrap();
        for room in ["quiet", "busy", "old"] {
            add_member(&conn, room, "al", 10).unwrap();
        }
        add_member(&conn, "busy", "bob", 10).unwrap();
        add_member(&conn, "elsewhere", "bob", 10).unwrap();
        for (room, seq, ts) in [("old", 1, 100), ("busy", 1, 200), ("busy", 2, 300)] {
            conn.execute(
                "INSERT INTO messages (room, seq, message_id, sender, ts_ms, headers, body)
                 VALUES (?1, ?2, 'x', 'al', ?3, '[]', x'')",
                params![room, seq, ts],
            )
            .unwrap();
        }
        let rooms = list_user_rooms(&conn, "al", 10).unwrap();
        let got: Vec<_> = rooms
            .iter()
            .map(|r| (r.room.as_str(), r.last_seq, r.last_ts_ms))
            .collect();
        assert_eq!(got, [("busy", 2, 300), ("old", 1, 100), ("quiet", 0, 0)]);
        assert_eq!(list_user_rooms(&conn, "al", 1).unwrap().len(), 1);
        assert!(list_user_rooms(&conn, "nobody", 10).unwrap().is_empty());
    }
}
