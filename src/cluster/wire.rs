//! The bytes a message is in Redis: the blob a publish hands to the Lua
//! script (and that the room's stream keeps and its channel carries), and
//! the script itself.
//!
//! Blob, little-endian, every length checked on decode:
//! `1` (version) · ts u64 · node u16+bytes · sender u16+bytes ·
//! header count u16 · (name u32+bytes, value u32+bytes)* · body u32+bytes.
//! The channel carries `<seq> <epoch> <blob>`; the stream entry `seq-1`
//! has fields `e` (epoch) and `m` (blob).

use crate::message::{Draft, Sequenced};

const VERSION: u8 = 1;

/// The publish script. KEYS: the room's hash (`seq`, `epoch`) and stream.
/// ARGV: floor (the publishing node's last known seq of the room, so a
/// room Redis lost continues after it instead of at 1), a fresh epoch
/// (used only if the room is new to Redis), stream length, stream TTL
/// in seconds, blob, channel. Returns `{seq, epoch}`.
pub(crate) const PUBLISH_LUA: &str = r#"
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[2]
  redis.call('HSET', KEYS[1], 'epoch', epoch)
end
local floor = tonumber(ARGV[1])
if seq <= floor then
  seq = floor + 1
  redis.call('HSET', KEYS[1], 'seq', string.format('%d', seq))
end
local id = string.format('%d', seq) .. '-1'
local ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id, 'e', epoch, 'm', ARGV[5])
if type(ok) == 'table' and ok.err then
  -- The stream outlived the room's hash (ids ahead of seq): start it anew.
  redis.call('DEL', KEYS[2])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id, 'e', epoch, 'm', ARGV[5])
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[6], string.format('%d', seq) .. ' ' .. epoch .. ' ' .. ARGV[5])
return {seq, epoch}
"#;

/// The room's hash (`seq`, `epoch`): `{R}` makes every key of a room one
/// Redis Cluster slot.
pub(crate) fn meta_key(room: &str) -> String {
    format!("stampede:{{{room}}}:meta")
}

pub(crate) fn stream_key(room: &str) -> String {
    format!("stampede:{{{room}}}:log")
}

pub(crate) fn presence_key(room: &str) -> String {
    format!("stampede:{{{room}}}:online")
}

pub(crate) const CHANNEL_PREFIX: &str = "room:";

pub(crate) fn channel(room: &str) -> String {
    format!("{CHANNEL_PREFIX}{room}")
}

fn put_u16(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len().min(u16::MAX as usize) as u16).to_le_bytes());
    b.extend_from_slice(&s[..s.len().min(u16::MAX as usize)]);
}

fn put_u32(b: &mut Vec<u8>, s: &[u8]) {
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s);
}

/// The blob of a message published by `node` at `ts_ms`.
pub(crate) fn encode(draft: &Draft, node: &str, ts_ms: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + draft.sender.len() + draft.body.len());
    b.push(VERSION);
    b.extend_from_slice(&ts_ms.to_le_bytes());
    put_u16(&mut b, node.as_bytes());
    put_u16(&mut b, draft.sender.as_bytes());
    let n = draft.headers.len().min(u16::MAX as usize);
    b.extend_from_slice(&(n as u16).to_le_bytes());
    for (k, v) in draft.headers.iter().take(n) {
        put_u32(&mut b, k.as_bytes());
        put_u32(&mut b, v.as_bytes());
    }
    put_u32(&mut b, &draft.body);
    b
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<usize> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize)
    }
    fn u32(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
    }
    fn str16(&mut self) -> Option<Box<str>> {
        let n = self.u16()?;
        Some(std::str::from_utf8(self.take(n)?).ok()?.into())
    }
    fn str32(&mut self) -> Option<Box<str>> {
        let n = self.u32()?;
        Some(std::str::from_utf8(self.take(n)?).ok()?.into())
    }
}

/// Decode a blob of `room` (`None`: not one of ours, or damaged). The
/// publishing node is in the blob for whoever reads the stream by hand;
/// delivery does not need it.
pub(crate) fn decode(room: &str, seq: u64, blob: &[u8]) -> Option<Sequenced> {
    let mut r = Reader(blob);
    if r.take(1)? != [VERSION] {
        return None;
    }
    let ts = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let _node = r.str16()?;
    let sender = r.str16()?;
    let n = r.u16()?;
    let mut headers = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        headers.push((r.str32()?, r.str32()?));
    }
    let len = r.u32()?;
    let body: Box<[u8]> = r.take(len)?.into();
    if !r.0.is_empty() {
        return None;
    }
    Some(Sequenced {
        draft: Draft {
            room: room.into(),
            sender,
            headers,
            body,
        },
        seq,
        timestamp_ms: ts,
        sequenced_at: None,
    })
}

/// Split a channel message `<seq> <epoch> <blob>`.
pub(crate) fn split_published(payload: &[u8]) -> Option<(u64, &str, &[u8])> {
    let sp = payload.iter().position(|&b| b == b' ')?;
    let seq = std::str::from_utf8(&payload[..sp]).ok()?.parse().ok()?;
    let rest = &payload[sp + 1..];
    let sp = rest.iter().position(|&b| b == b' ')?;
    let epoch = std::str::from_utf8(&rest[..sp]).ok()?;
    Some((seq, epoch, &rest[sp + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_round_trips_and_damage_is_refused() {
        let d = Draft {
            room: "r".into(),
            sender: "al:ice".into(),
            headers: vec![("k".into(), "v\n".into()), ("x".into(), "".into())],
            body: b"hi\0there".to_vec().into(),
        };
        let b = encode(&d, "node-1", 42);
        let got = decode("r", 7, &b).unwrap();
        assert_eq!(got.draft, d);
        assert_eq!((got.seq, got.timestamp_ms), (7, 42));
        for cut in 0..b.len() {
            assert!(decode("r", 7, &b[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(decode("r", 7, &longer).is_none());
        let mut other = b;
        other[0] = 9;
        assert!(decode("r", 7, &other).is_none());
    }

    #[test]
    fn a_channel_message_splits_into_seq_epoch_and_blob() {
        assert_eq!(split_published(b"12 e1 a b"), Some((12, "e1", &b"a b"[..])));
        assert_eq!(split_published(b"x e1 a"), None);
        assert_eq!(split_published(b"12e1"), None);
    }

    #[test]
    fn every_key_of_a_room_carries_its_hash_tag() {
        assert_eq!(meta_key("queue/a"), "stampede:{queue/a}:meta");
        assert_eq!(stream_key("r"), "stampede:{r}:log");
        assert_eq!(presence_key("r"), "stampede:{r}:online");
        assert_eq!(channel("r"), "room:r");
    }
}
