//! What the gateway keeps in Redis and sends through it, as pure functions: the key and
//! channel names of a topic, the two Lua scripts (publish; sync) and how the sync's answer
//! reads, the text of one message in history and on the channel, and where one RESP reply ends
//! in a byte stream.
//!
//! One topic `T` is three names, all with the hash tag `{T}` so a Redis Cluster keeps them on
//! one shard: the hash `gw:{T}:m` holds the epoch (`e`), the last sequence number (`s`) and the
//! payload bytes in history (`b`); the list `gw:{T}:h` holds the history, oldest first; the
//! channel `gw:{T}` carries each message once, right after it is numbered. One script call
//! numbers, stores and publishes a message atomically, so the order of a topic's messages on the
//! channel is the order of their sequence numbers, whichever node published them.
//!
//! A message is `EPOCH SEQ LEN KIND STAMP MILLIS PAYLOAD`: the topic's epoch (12 hex digits),
//! its sequence number, the payload's length, `t` or `b`, the publisher's version stamp, the
//! publishing node's wall clock in milliseconds (for the cross-node delivery lag), then the
//! payload's bytes as they are.

use crate::proto::MessageKind;
use crate::topics::Epoch;

/// The prefix of every key and channel.
pub const PREFIX: &str = "gw:";

/// The channel of a topic.
pub fn channel(topic: &str) -> String {
    format!("{PREFIX}{{{topic}}}")
}

/// The topic a channel carries, if it is one of ours.
pub fn topic_of_channel(channel: &[u8]) -> Option<&str> {
    let rest = channel.strip_prefix(PREFIX.as_bytes())?;
    let inner = rest.strip_prefix(b"{")?.strip_suffix(b"}")?;
    std::str::from_utf8(inner).ok()
}

/// The meta hash and the history list of a topic.
pub fn keys(topic: &str) -> [String; 2] {
    [
        format!("{PREFIX}{{{topic}}}:m"),
        format!("{PREFIX}{{{topic}}}:h"),
    ]
}

/// Numbers, stores and publishes one message. KEYS: meta, history. ARGV: channel, the epoch to
/// start if the topic has none (new, expired, or Redis restarted empty), `KIND STAMP MILLIS`,
/// payload, most messages kept, most payload bytes kept (the newest is always kept), seconds
/// the keys live after the last publish. Returns `{epoch, seq, nodes that received it}`.
pub const PUBLISH_SCRIPT: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[2]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 's', 0, 'b', 0)
end
local s = redis.call('HINCRBY', KEYS[1], 's', 1)
local msg = e .. ' ' .. s .. ' ' .. #ARGV[4] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4]
local n = redis.call('RPUSH', KEYS[2], msg)
local b = #ARGV[4]
if n == 1 then
  redis.call('HSET', KEYS[1], 'b', b)
else
  b = redis.call('HINCRBY', KEYS[1], 'b', b)
end
local maxn = tonumber(ARGV[5])
local maxb = tonumber(ARGV[6])
while n > 1 and (n > maxn or b > maxb) do
  local old = redis.call('LPOP', KEYS[2])
  local len = tonumber(string.match(old, '^%S+ %S+ (%d+) '))
  b = redis.call('HINCRBY', KEYS[1], 'b', -len)
  n = n - 1
end
local ttl = tonumber(ARGV[7])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
local got = redis.call('PUBLISH', ARGV[1], msg)
return {e, s, got}
";

/// A node's view of a topic after subscribing (or resubscribing after a reconnect): the
/// topic's epoch (started now if it has none), its last sequence number, and the messages of
/// the history after `since` (all of it if the epoch is not ARGV[4], the one the node holds).
/// If Redis's number for the node's epoch is below ARGV[5], the last number the node holds
/// (Redis came back from an older snapshot, or a lagging replica took over), the numbers would
/// be reused for other messages: a new epoch is started instead. KEYS: meta, history. ARGV: the
/// epoch to start, the keys' lifetime in seconds, `since`, the node's epoch, the node's last
/// number (0: no check). Returns `{epoch, seq, {messages}}`.
pub const SYNC_SCRIPT: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 's', 0, 'b', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local s = tonumber(redis.call('HGET', KEYS[1], 's')) or 0
if e == ARGV[4] and s < tonumber(ARGV[5]) then
  e = ARGV[1]
  s = 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e, 's', 0, 'b', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
local since = tonumber(ARGV[3])
if e ~= ARGV[4] then since = 0 end
local out = {}
if since < s then
  for _, m in ipairs(redis.call('LRANGE', KEYS[2], 0, -1)) do
    if tonumber(string.match(m, '^%S+ (%d+) ')) > since then
      out[#out + 1] = m
    end
  end
end
return {e, s, out}
";

/// The sync script's answer: `{epoch, seq, {messages}}`.
pub fn sync_reply(value: &redis::Value) -> Result<(Epoch, u64, Vec<&[u8]>), String> {
    let bad = || "the sync script answered something else".to_string();
    let redis::Value::Array(parts) = value else {
        return Err(bad());
    };
    let (
        Some(redis::Value::BulkString(e)),
        Some(redis::Value::Int(seq)),
        Some(redis::Value::Array(msgs)),
    ) = (parts.first(), parts.get(1), parts.get(2))
    else {
        return Err(bad());
    };
    let epoch = std::str::from_utf8(e)
        .ok()
        .and_then(Epoch::parse)
        .ok_or("a bad epoch in Redis")?;
    let msgs = msgs
        .iter()
        .filter_map(|m| match m {
            redis::Value::BulkString(b) => Some(&b[..]),
            _ => None,
        })
        .collect();
    Ok((epoch, u64::try_from(*seq).unwrap_or(0), msgs))
}

/// The `KIND STAMP MILLIS` argument of the publish script.
pub fn header(kind: MessageKind, stamp: u64, millis: u64) -> String {
    let k = if kind == MessageKind::Binary {
        'b'
    } else {
        't'
    };
    format!("{k} {stamp} {millis}")
}

/// One message as it travels: see the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub epoch: Epoch,
    pub seq: u64,
    pub kind: MessageKind,
    pub stamp: u64,
    pub millis: u64,
    pub payload: &'a [u8],
}

/// Reads a message; `None` if the bytes are not one (never panics on any input).
pub fn parse(bytes: &[u8]) -> Option<Message<'_>> {
    let mut rest = bytes;
    let mut field = || -> Option<&[u8]> {
        let sp = rest.iter().position(|&b| b == b' ')?;
        let (f, r) = rest.split_at(sp);
        rest = &r[1..];
        Some(f)
    };
    let epoch = Epoch::parse(std::str::from_utf8(field()?).ok()?)?;
    let seq = number(field()?)?;
    let len = usize::try_from(number(field()?)?).ok()?;
    let kind = match field()? {
        b"t" => MessageKind::Text,
        b"b" => MessageKind::Binary,
        _ => return None,
    };
    let stamp = number(field()?)?;
    let millis = number(field()?)?;
    (rest.len() == len && seq > 0).then_some(Message {
        epoch,
        seq,
        kind,
        stamp,
        millis,
        payload: rest,
    })
}

fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Where the first complete RESP2/RESP3 value in `buf` ends: `Ok(Some(len))`, `Ok(None)` while
/// it is incomplete, `Err` if the bytes are not RESP. Nested values go at most 8 deep (replies
/// to our commands go 3).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    value_end(buf, 0, 0)
}

fn value_end(buf: &[u8], at: usize, depth: u32) -> Result<Option<usize>, &'static str> {
    if depth > 8 {
        return Err("RESP nested too deep");
    }
    let Some(&tag) = buf.get(at) else {
        return Ok(None);
    };
    let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() - at > 64 * 1024 {
            Err("RESP line too long")
        } else {
            Ok(None)
        };
    };
    let line = &buf[at + 1..at + eol];
    let after = at + eol + 2;
    let count = || -> Result<i64, &'static str> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("bad RESP length")
    };
    match tag {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(Some(after)),
        b'$' | b'!' | b'=' => {
            let n = count()?;
            if n < 0 {
                return Ok(Some(after));
            }
            let end = after + usize::try_from(n).map_err(|_| "bad RESP length")? + 2;
            Ok((buf.len() >= end).then_some(end))
        }
        b'*' | b'>' | b'~' | b'%' | b'|' => {
            let n = count()?;
            let items = if matches!(tag, b'%' | b'|') { 2 * n } else { n };
            let mut end = after;
            for _ in 0..items.max(0) {
                match value_end(buf, end, depth + 1)? {
                    Some(e) => end = e,
                    None => return Ok(None),
                }
            }
            Ok(Some(end))
        }
        _ => Err("not RESP"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_topic_as_a_hash_tag() {
        assert_eq!(channel("chat/lobby"), "gw:{chat/lobby}");
        assert_eq!(
            keys("news"),
            ["gw:{news}:m".to_string(), "gw:{news}:h".to_string()]
        );
        assert_eq!(topic_of_channel(b"gw:{chat/lobby}"), Some("chat/lobby"));
        assert_eq!(topic_of_channel(b"other:{x}"), None);
        assert_eq!(topic_of_channel(b"gw:{x"), None);
    }

    #[test]
    fn a_message_reads_back_and_garbage_does_not() {
        let text = format!(
            "00000000abcd 42 5 {} hello",
            header(MessageKind::Text, 7, 1000)
        );
        let m = parse(text.as_bytes()).unwrap();
        assert_eq!(
            (m.seq, m.kind, m.stamp, m.millis, m.payload),
            (42, MessageKind::Text, 7, 1000, &b"hello"[..])
        );
        assert_eq!(m.epoch.to_string(), "00000000abcd");
        // Payloads may hold spaces and any byte.
        let bin = b"00000000abcd 1 3 b 0 0 \x00 \xff";
        assert_eq!(parse(bin).unwrap().payload, b"\x00 \xff");
        for bad in [
            &b""[..],
            b"00000000abcd 1 6 t 0 0 hello",
            b"00000000abcd 0 1 t 0 0 x",
            b"xyz 1 1 t 0 0 x",
            b"00000000abcd 1 1 q 0 0 x",
            b"00000000abcd -1 1 t 0 0 x",
            b"00000000abcd 1 99999999999999999999999 t 0 0 x",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn frame_lengths_of_replies_and_pushes() {
        let sub = b"*3\r\n$9\r\nsubscribe\r\n$4\r\ngw:x\r\n:1\r\n";
        assert_eq!(frame_len(sub), Ok(Some(sub.len())));
        for cut in 0..sub.len() {
            assert_eq!(frame_len(&sub[..cut]), Ok(None), "cut at {cut}");
        }
        let mut two = sub.to_vec();
        two.extend_from_slice(b"+OK\r\n");
        assert_eq!(frame_len(&two), Ok(Some(sub.len())));
        assert_eq!(frame_len(b"$-1\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b"*0\r\n"), Ok(Some(4)));
        assert_eq!(frame_len(b">2\r\n+a\r\n:1\r\n"), Ok(Some(12)));
        assert!(frame_len(b"?\r\n").is_err());
        assert!(frame_len(b"$x\r\n").is_err());
        assert!(frame_len(&[b'*'; 70_000]).is_err());
        let deep = "*1\r\n".repeat(20);
        assert!(frame_len(deep.as_bytes()).is_err());
    }
}
