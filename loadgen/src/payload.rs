//! What loadgen puts in messages, and how it checks what comes back.
//!
//! - Echo payloads are binary: `seq` (u64 LE), send time (u64 LE, CLOCK_MONOTONIC ns), the
//!   connection's index (u32 LE), then filler bytes that are a function of all three. An echo
//!   is verified byte for byte against what that connection must have sent next, without
//!   keeping a copy of what was sent.
//! - Fan-out payloads are small JSON texts, `{"seq":N,"t":T,"s":S,"pad":"xx.."}`, padded to the
//!   requested size: `seq` numbers the publisher's messages from 0, `t` is the time the message
//!   was due by the intended rate and `s` the time it actually went out (both CLOCK_MONOTONIC
//!   ns). Latency measured from `t` is corrected for coordinated omission: a publisher that
//!   falls behind its schedule cannot hide the delay; latency from `s` is reported beside it.
//!
//! Encoding writes into a buffer the caller reuses and decoding borrows, so neither allocates
//! per message.

use std::io::Write as _;

/// Bytes before the filler in an echo payload.
const ECHO_HEADER: usize = 20;

#[inline]
fn filler(seq: u64, index: u32, at: usize) -> u8 {
    (seq as u8) ^ (index as u8).rotate_left(3) ^ (at as u8).wrapping_mul(31)
}

/// Writes the echo payload number `seq` of connection `index` into `out` (cleared first).
pub fn write_echo(out: &mut Vec<u8>, size: usize, seq: u64, index: u32, sent_ns: u64) {
    debug_assert!(size >= ECHO_HEADER);
    out.clear();
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&sent_ns.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend((ECHO_HEADER..size).map(|i| filler(seq, index, i)));
}

/// Why an echo did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoMismatch {
    Length,
    /// Another sequence number than the next one expected (lost, reordered or duplicated).
    Sequence,
    /// Another connection's payload.
    Connection,
    /// The filler differs: the payload was altered.
    Content,
}

impl EchoMismatch {
    pub fn cause(self) -> &'static str {
        match self {
            EchoMismatch::Length => "echo: wrong length",
            EchoMismatch::Sequence => "echo: out of sequence",
            EchoMismatch::Connection => "echo: another connection's payload",
            EchoMismatch::Content => "echo: payload altered",
        }
    }
}

/// Checks an echo against what connection `index` sent as number `seq`; returns the send time.
pub fn check_echo(msg: &[u8], size: usize, seq: u64, index: u32) -> Result<u64, EchoMismatch> {
    if msg.len() != size {
        return Err(EchoMismatch::Length);
    }
    let word = |at: usize| u64::from_le_bytes(msg[at..at + 8].try_into().expect("8 bytes"));
    if word(0) != seq {
        return Err(EchoMismatch::Sequence);
    }
    if u32::from_le_bytes(msg[16..20].try_into().expect("4 bytes")) != index {
        return Err(EchoMismatch::Connection);
    }
    if msg[ECHO_HEADER..]
        .iter()
        .enumerate()
        .any(|(i, &b)| b != filler(seq, index, ECHO_HEADER + i))
    {
        return Err(EchoMismatch::Content);
    }
    Ok(word(8))
}

/// Writes fan-out message `seq` into `out` (cleared first), padded with `x` to `size` bytes
/// when the JSON is shorter.
pub fn write_fanout(out: &mut Vec<u8>, size: usize, seq: u64, due_ns: u64, sent_ns: u64) {
    out.clear();
    let _ = write!(out, r#"{{"seq":{seq},"t":{due_ns},"s":{sent_ns},"pad":""#);
    let pad = size.saturating_sub(out.len() + 2);
    out.resize(out.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
}

/// A parsed fan-out message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    pub seq: u64,
    /// When the message was due by the intended rate.
    pub due_ns: u64,
    /// When it was actually sent.
    pub sent_ns: u64,
}

/// Parses a fan-out message written by [`write_fanout`]; `None` for anything else.
pub fn parse_fanout(msg: &[u8]) -> Option<Fanout> {
    let rest = msg.strip_prefix(br#"{"seq":"#)?;
    let (seq, rest) = number(rest)?;
    let rest = rest.strip_prefix(br#","t":"#)?;
    let (due_ns, rest) = number(rest)?;
    let rest = rest.strip_prefix(br#","s":"#)?;
    let (sent_ns, rest) = number(rest)?;
    let rest = rest.strip_prefix(br#","pad":""#)?;
    let pad = rest.strip_suffix(br#""}"#)?;
    if !pad.iter().all(|&b| b == b'x') {
        return None;
    }
    Some(Fanout {
        seq,
        due_ns,
        sent_ns,
    })
}

/// A decimal u64 at the start of `s`, and what follows it.
fn number(s: &[u8]) -> Option<(u64, &[u8])> {
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let mut n: u64 = 0;
    for &d in &s[..digits] {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((n, &s[digits..]))
}

/// Highest sequence number a subscriber will count; anything above is treated as malformed
/// (it would otherwise make the per-sequence table as large as the number says).
pub const MAX_SEQ: u64 = 50_000_000;

/// How many numbers below the highest one seen a subscriber remembers individually, to tell a
/// late first delivery from a duplicate.
pub const SEQ_WINDOW: u64 = 64;

/// One subscriber's view of the sequence: what it expects next, and which of the
/// [`SEQ_WINDOW`] numbers below that it has seen (16 bytes per subscriber).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqTracker {
    next: u64,
    /// Bit k: number `next - 1 - k` was seen.
    seen: u64,
}

/// What one delivery was to the subscriber that got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A sequence number higher than any seen before on this subscriber (gaps are allowed:
    /// they are counted as lost by the per-sequence accounting, which knows what was
    /// published, unless the missing number arrives late).
    First,
    /// A number not seen before but below one already seen: delivered, out of order (which a
    /// broadcast over one TCP connection must not do either).
    Late,
    /// A number already seen: duplicated. A number more than [`SEQ_WINDOW`] below the highest
    /// seen is counted here too, its first delivery being no longer told apart.
    Duplicate,
}

impl SeqTracker {
    pub fn observe(&mut self, seq: u64) -> Delivery {
        if seq >= self.next {
            let shift = seq + 1 - self.next;
            self.seen = if shift >= SEQ_WINDOW {
                1
            } else {
                self.seen << shift | 1
            };
            self.next = seq + 1;
            return Delivery::First;
        }
        let back = self.next - 1 - seq;
        if back >= SEQ_WINDOW || self.seen & 1 << back != 0 {
            return Delivery::Duplicate;
        }
        self.seen |= 1 << back;
        Delivery::Late
    }

    /// Whether this subscriber has seen `last` or a later number.
    pub fn has_seen(&self, last: u64) -> bool {
        self.next > last
    }

    /// The number after the highest one seen (0 before any).
    pub fn next(&self) -> u64 {
        self.next
    }
}

/// Lost and duplicated deliveries, from what the publisher had accepted and what subscribers
/// counted per sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Accounting {
    /// Deliveries expected: each accepted message times the subscribers that were there for
    /// it (all of them, less those cut off before it).
    pub expected: u64,
    /// First-time deliveries of accepted messages.
    pub delivered: u64,
    pub lost: u64,
    /// Messages that at least one subscriber did not get.
    pub seqs_with_loss: u64,
    /// The first few sequence numbers with losses, for the report.
    pub lost_seq_examples: Vec<u64>,
    /// Deliveries of numbers the publisher never had accepted (sent but refused, or never sent).
    pub unexpected: u64,
    /// Subscribers that ended during the run or the drain (closed by the server, say).
    pub subscribers_cut_off: u64,
    /// Deliveries of accepted messages not expected because their subscriber had been cut off
    /// before them: what the server dropped when it closed a slow consumer, for instance.
    pub cut_off: u64,
}

/// Compares per-sequence first-delivery counts against the deliveries expected for each
/// accepted sequence number: one per subscriber, less the subscribers cut off before it.
/// `cut_off` holds, for each subscriber that ended early, the number after the last it got: it
/// is expected to have every accepted message before that (a gap there is a loss), none after.
pub fn account(
    per_seq: &[u32],
    accepted: &[bool],
    subscribers: u64,
    cut_off: &[u64],
) -> Accounting {
    let mut a = Accounting {
        subscribers_cut_off: cut_off.len() as u64,
        ..Accounting::default()
    };
    let mut cut = cut_off.to_vec();
    cut.sort_unstable();
    let mut gone = 0;
    let n = per_seq.len().max(accepted.len());
    for seq in 0..n {
        while gone < cut.len() && cut[gone] <= seq as u64 {
            gone += 1;
        }
        let there = subscribers.saturating_sub(gone as u64);
        let got = u64::from(per_seq.get(seq).copied().unwrap_or(0));
        if accepted.get(seq).copied().unwrap_or(false) {
            a.expected += there;
            a.cut_off += subscribers - there;
            a.delivered += got.min(there);
            // More first-time deliveries than subscribers cannot happen: each subscriber counts
            // a number once. Fewer is loss.
            let lost = there.saturating_sub(got);
            if lost > 0 {
                a.lost += lost;
                a.seqs_with_loss += 1;
                if a.lost_seq_examples.len() < 10 {
                    a.lost_seq_examples.push(seq as u64);
                }
            }
        } else {
            a.unexpected += got;
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_roundtrip_and_every_mismatch() {
        let mut buf = Vec::new();
        for size in [20, 21, 64, 1000] {
            write_echo(&mut buf, size, 7, 12345, 999);
            assert_eq!(buf.len(), size);
            assert_eq!(check_echo(&buf, size, 7, 12345), Ok(999));
        }
        write_echo(&mut buf, 64, 7, 3, 1);
        assert_eq!(check_echo(&buf, 65, 7, 3), Err(EchoMismatch::Length));
        assert_eq!(check_echo(&buf, 64, 8, 3), Err(EchoMismatch::Sequence));
        assert_eq!(check_echo(&buf, 64, 7, 4), Err(EchoMismatch::Connection));
        buf[40] ^= 1;
        assert_eq!(check_echo(&buf, 64, 7, 3), Err(EchoMismatch::Content));
    }

    #[test]
    fn fanout_roundtrip_padding_and_rejects() {
        let mut buf = Vec::new();
        write_fanout(&mut buf, 128, 123, 456, 789);
        assert_eq!(buf.len(), 128);
        assert!(buf.starts_with(br#"{"seq":123,"t":456,"s":789,"pad":"xxx"#));
        let v: serde_json::Value = serde_json::from_slice(&buf).expect("valid JSON");
        assert_eq!(v["seq"], 123);
        assert_eq!(
            parse_fanout(&buf),
            Some(Fanout {
                seq: 123,
                due_ns: 456,
                sent_ns: 789
            })
        );
        // Smaller than the JSON: no padding, still parses.
        write_fanout(&mut buf, 0, u64::MAX, u64::MAX, 0);
        assert_eq!(parse_fanout(&buf).unwrap().seq, u64::MAX);
        for bad in [
            &br#"{"seq":1,"t":2,"s":3,"pad":"xy"}"#[..],
            br#"{"seq":1,"t":2,"s":3,"pad":"xx""#,
            br#"{"seq":,"t":2,"s":3,"pad":""}"#,
            br#"{"seq":99999999999999999999999,"t":2,"s":3,"pad":""}"#,
            br#"{"t":2,"seq":1,"s":3,"pad":""}"#,
            b"hello",
            b"",
        ] {
            assert_eq!(parse_fanout(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn trackers_spot_duplicates_and_know_when_caught_up() {
        let mut t = SeqTracker::default();
        assert!(!t.has_seen(0));
        assert_eq!(t.observe(0), Delivery::First);
        assert_eq!(t.observe(2), Delivery::First); // 1 missing: lost unless it comes late
        assert_eq!(t.observe(2), Delivery::Duplicate);
        assert_eq!(t.observe(1), Delivery::Late);
        assert_eq!(t.observe(1), Delivery::Duplicate);
        assert_eq!(t.observe(0), Delivery::Duplicate);
        assert!(t.has_seen(2) && !t.has_seen(3));
    }

    #[test]
    fn late_numbers_are_told_from_duplicates_within_the_window() {
        let mut t = SeqTracker::default();
        // Every other number, then the missing ones in reverse: each is late once.
        for s in (0..200).step_by(2) {
            assert_eq!(t.observe(s), Delivery::First);
        }
        for s in (0..198).rev().filter(|s| s % 2 == 1) {
            let want = if 198 - s < SEQ_WINDOW {
                Delivery::Late
            } else {
                Delivery::Duplicate
            };
            assert_eq!(t.observe(s), want, "{s}");
            assert_eq!(t.observe(s), Delivery::Duplicate, "{s} again");
        }
        // A jump past the window forgets what was below it.
        assert_eq!(t.observe(1000), Delivery::First);
        assert_eq!(t.observe(999), Delivery::Late);
        assert_eq!(t.observe(198), Delivery::Duplicate);
    }

    #[test]
    fn accounting_of_loss_and_unexpected() {
        // 3 subscribers; seq 1 reached two of them, seq 3 was refused by the server (not
        // accepted) yet one subscriber got it, seq 4 was accepted but nobody got it.
        let per_seq = [3, 2, 3, 1];
        let accepted = [true, true, true, false, true];
        let a = account(&per_seq, &accepted, 3, &[]);
        assert_eq!(a.expected, 12);
        assert_eq!(a.delivered, 8);
        assert_eq!(a.lost, 4);
        assert_eq!(a.seqs_with_loss, 2);
        assert_eq!(a.lost_seq_examples, [1, 4]);
        assert_eq!(a.unexpected, 1);
        let clean = account(&[5; 100], &[true; 100], 5, &[]);
        assert_eq!((clean.lost, clean.expected, clean.delivered), (0, 500, 500));
    }

    #[test]
    fn subscribers_cut_off_are_expected_to_have_what_came_before() {
        // 3 subscribers, 6 messages, seq 2 refused. One subscriber was closed after getting
        // 0..=3 (next 4), another right at the start (next 0); the third got everything.
        let accepted = [true, true, false, true, true, true];
        let per_seq = [2, 2, 0, 2, 1, 1];
        let a = account(&per_seq, &accepted, 3, &[4, 0]);
        assert_eq!(a.subscribers_cut_off, 2);
        assert_eq!(a.expected, 2 + 2 + 2 + 1 + 1);
        assert_eq!(a.cut_off, 1 + 1 + 1 + 2 + 2);
        assert_eq!((a.lost, a.delivered), (0, 8));
        // Had the first one missed seq 1, that would be a loss.
        let a = account(&[2, 1, 0, 2, 1, 1], &accepted, 3, &[4, 0]);
        assert_eq!((a.lost, a.lost_seq_examples.as_slice()), (1, &[1][..]));
    }
}
