//! A command's output cut into messages: one per line, without its line ending (`\n`, or
//! `\r\n`), invalid UTF-8 replaced by U+FFFD (so the gateway never sends a text message a
//! client must fail with 1007). A line longer than [`LINE_MAX`] bytes goes out in pieces of at
//! most that size, cut between characters; a partial line is flushed when the caller says so
//! (after a short wait, or at the end of the stream), keeping back a character whose bytes
//! have not all arrived. Pure: bytes in, text out; the caller owns time and sockets.

use std::borrow::Cow;

/// The longest message a line makes; longer lines are sent in pieces.
pub(crate) const LINE_MAX: usize = 16 * 1024;

/// The unfinished line of one output stream (at most [`LINE_MAX`] bytes between calls).
#[derive(Debug, Default)]
pub(crate) struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Whether bytes of an unfinished line are waiting.
    pub fn has_partial(&self) -> bool {
        !self.partial.is_empty()
    }

    /// Takes `bytes` read from the stream: `emit` gets every completed line and every full
    /// piece of an overlong one; the unfinished rest is kept.
    pub fn feed(&mut self, bytes: &[u8], emit: &mut impl FnMut(&str)) {
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() && i <= LINE_MAX {
                emit_text(strip_cr(&rest[..i]), emit);
            } else {
                self.partial.extend_from_slice(&rest[..i]);
                self.emit_pieces(emit);
                emit_text(strip_cr(&self.partial), emit);
                self.partial.clear();
            }
            rest = &rest[i + 1..];
        }
        self.partial.extend_from_slice(rest);
        self.emit_pieces(emit);
    }

    /// Sends the unfinished line as it is: after a wait (`end` false: a character cut short at
    /// the end is kept for the next bytes) or at the end of the stream (`end` true: everything).
    pub fn flush(&mut self, end: bool, emit: &mut impl FnMut(&str)) {
        let cut = if end {
            self.partial.len()
        } else {
            complete_prefix(&self.partial)
        };
        if cut > 0 {
            emit_text(&self.partial[..cut], emit);
            self.partial.drain(..cut);
        }
        if end {
            self.partial = Vec::new();
        }
    }

    /// Emits full pieces while the unfinished line is longer than [`LINE_MAX`].
    fn emit_pieces(&mut self, emit: &mut impl FnMut(&str)) {
        while self.partial.len() > LINE_MAX {
            let cut = char_cut(&self.partial, LINE_MAX);
            emit_text(&self.partial[..cut], emit);
            self.partial.drain(..cut);
        }
    }
}

fn emit_text(bytes: &[u8], emit: &mut impl FnMut(&str)) {
    match String::from_utf8_lossy(bytes) {
        Cow::Borrowed(s) => emit(s),
        Cow::Owned(s) => emit(&s),
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Where to cut `buf` (longer than `max`) for a piece of at most `max` bytes: before the
/// character that straddles `max`, if `max` falls inside one.
fn char_cut(buf: &[u8], max: usize) -> usize {
    let mut cut = max;
    while cut > max.saturating_sub(3) && cut > 0 && is_continuation(buf[cut]) {
        cut -= 1;
    }
    if cut == 0 { max } else { cut }
}

fn is_continuation(b: u8) -> bool {
    b & 0xc0 == 0x80
}

/// The length of `buf` without a trailing character whose bytes have not all arrived (a lead
/// byte in the last three whose sequence is longer than what follows it).
fn complete_prefix(buf: &[u8]) -> usize {
    let len = buf.len();
    for back in 1..=len.min(4) {
        let b = buf[len - back];
        if is_continuation(b) {
            continue;
        }
        let needed = match b {
            0xc0..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf7 => 4,
            _ => 1,
        };
        return if needed > back { len - back } else { len };
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]], end: bool) -> (Vec<String>, Lines) {
        let mut out = Vec::new();
        let mut lines = Lines::default();
        for chunk in chunks {
            lines.feed(chunk, &mut |s| out.push(s.to_owned()));
        }
        lines.flush(end, &mut |s| out.push(s.to_owned()));
        (out, lines)
    }

    #[test]
    fn one_message_per_line() {
        let table: &[(&[&[u8]], &[&str])] = &[
            (&[b"a\nb\n"], &["a", "b"]),
            (&[b"a\r\nb\n"], &["a", "b"]),
            (&[b"\n\n"], &["", ""]),
            (&[b"he", b"llo\nwor", b"ld\n"], &["hello", "world"]),
            (&[b"x\r", b"\n"], &["x"]),
            // Invalid UTF-8 is replaced, never passed on.
            (&[b"\xff\xfeok\n"], &["\u{fffd}\u{fffd}ok"]),
            // A character split across reads is joined.
            (
                &["é".as_bytes()[..1].as_ref(), &"é\n".as_bytes()[1..]],
                &["é"],
            ),
        ];
        for (chunks, want) in table {
            let (got, lines) = run(chunks, false);
            assert_eq!(got, *want, "{chunks:?}");
            assert!(!lines.has_partial());
        }
    }

    #[test]
    fn partial_lines_flush_without_cutting_characters() {
        let (got, lines) = run(&[b"prompt> "], false);
        assert_eq!(got, ["prompt> "]);
        assert!(!lines.has_partial());
        // "€" is three bytes; two arrived: they wait for the third.
        let euro = "€".as_bytes();
        let (got, lines) = run(&[b"cost ", &euro[..2]], false);
        assert_eq!(got, ["cost "]);
        assert!(lines.has_partial());
        // At the end of the stream what is left goes out, replaced.
        let (got, _) = run(&[b"cost ", &euro[..2]], true);
        assert_eq!(got, ["cost \u{fffd}"]);
        assert_eq!(complete_prefix(b""), 0);
        assert_eq!(complete_prefix("a😀".as_bytes()), 5);
        assert_eq!(complete_prefix(&"a😀".as_bytes()[..4]), 1);
        assert_eq!(complete_prefix(b"a\x80\x80\x80\x80"), 5);
    }

    #[test]
    fn long_lines_go_in_pieces_between_characters() {
        let mut long = "ж".repeat(LINE_MAX); // 2 bytes each: LINE_MAX * 2 bytes
        long.push('\n');
        let (got, _) = run(&[long.as_bytes()], false);
        assert_eq!(got.len(), 2);
        assert!(
            got.iter()
                .all(|p| p.len() == LINE_MAX && !p.contains('\u{fffd}'))
        );
        // Odd sizes: the cut moves back to a character boundary.
        let odd = format!("a{}\n", "€".repeat(LINE_MAX / 3 + 2));
        let (got, _) = run(&[odd.as_bytes()], false);
        assert!(
            got.iter()
                .all(|p| p.len() <= LINE_MAX && !p.contains('\u{fffd}'))
        );
        assert_eq!(got.concat(), odd.trim_end());
        // Without a newline the unfinished line is bounded too.
        let mut lines = Lines::default();
        let mut n = 0;
        for _ in 0..10 {
            lines.feed(&[b'y'; 10_000], &mut |s| {
                assert_eq!(s.len(), LINE_MAX);
                n += 1;
            });
            assert!(lines.partial.len() <= LINE_MAX);
        }
        assert_eq!(n, 100_000 / LINE_MAX);
    }
}
