//! Log tail: `--tail NAME=PATH` publishes every line appended to PATH as one text message on
//! topic `log/NAME` (a [`TopicKind::Stream`] topic, so `/ws/log/{name}?last=N` can replay the
//! last lines from its history).
//!
//! Lines ([`LineSplitter`]):
//! - A message is one line without its `\n` (and without the `\r` of a `\r\n`). Bytes after the
//!   last `\n` are a line still being written: they wait for the rest of it, so a line written
//!   in two pieces is one message.
//! - Lines go out as text: bytes that are not UTF-8 become U+FFFD (lossy), so every message
//!   on a log topic is text a page or a JSON client can show as is. A log in another encoding
//!   (Latin-1, say) loses its non-ASCII characters; sending such lines as binary instead would
//!   make every client handle two kinds of message for the rare odd line.
//! - A line longer than [`MAX_LINE`] bytes is sent in pieces of at most that size (cut before a
//!   UTF-8 character where possible), so a writer that never ends its line cannot make the
//!   gateway buffer without bound.
//!
//! Following the file (`Tailer`):
//! - It starts at the end: only lines completed after the gateway started are sent (a line
//!   being written at start is sent whole once it ends). A file created later (or after a
//!   rotation) is read from its start.
//! - Truncation (the file is shorter than what was read, as after `copytruncate` or `> file`):
//!   reading restarts at offset 0. A file truncated and written past the old offset before the
//!   tailer looked is caught too: the last [`CHECK_BYTES`] bytes read are kept, and if the file
//!   no longer holds them where they were, it was rewritten and reading restarts at 0.
//! - Rotation (PATH names another inode: renamed away and recreated): the old file is read to
//!   its end first, then the new file is read from its start. While PATH is missing the old
//!   file is kept and still read.
//! - When a file ends for good (rotated away or truncated), an unterminated last line is sent
//!   as it is rather than lost.
//!
//! A missing or unreadable file is reported on stderr once (log topics carry only the log's
//! lines) and tried again on every event or poll tick.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{FeedHandle, Wake, describe, spawn};
use crate::proto::MessageKind;
use crate::topics::{Hub, TopicId, TopicKind};

/// Longest line sent as one message, in bytes (64 KiB); longer lines are sent in pieces.
pub const MAX_LINE: usize = 64 * 1024;

/// Bytes read from the file per `read` call.
const READ_CHUNK: usize = 64 * 1024;

/// Bytes before the read offset kept to notice a file rewritten in place.
pub const CHECK_BYTES: usize = 32;

/// Splits a stream of bytes into lines. Pure: no I/O, so it is tested on its own.
#[derive(Debug)]
pub struct LineSplitter {
    /// The line still being written (no `\n` seen yet).
    partial: Vec<u8>,
    max: usize,
}

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter::new(MAX_LINE)
    }
}

impl LineSplitter {
    /// A splitter that sends lines longer than `max` bytes in pieces.
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            partial: Vec::new(),
            max: max.max(4),
        }
    }

    /// Feeds appended bytes; `emit` gets each completed line, without `\n` or `\r\n`.
    pub fn push(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(&[u8])) {
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                self.emit_line(&bytes[..i], emit);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&bytes[..i]);
                self.emit_line(&line, emit);
                line.clear();
                self.partial = line;
            }
            bytes = &bytes[i + 1..];
        }
        self.partial.extend_from_slice(bytes);
        while self.partial.len() > self.max {
            let cut = cut_at(&self.partial, self.max);
            emit(&self.partial[..cut]);
            self.partial.drain(..cut);
        }
        if self.partial.is_empty() && self.partial.capacity() > READ_CHUNK {
            self.partial = Vec::new();
        }
    }

    /// The file ended for good: an unterminated last line is emitted as it is.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit_line(&line, emit);
        }
    }

    /// Bytes of the line still being written.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    fn emit_line(&self, line: &[u8], emit: &mut impl FnMut(&[u8])) {
        let mut line = line.strip_suffix(b"\r").unwrap_or(line);
        while line.len() > self.max {
            let cut = cut_at(line, self.max);
            emit(&line[..cut]);
            line = &line[cut..];
        }
        emit(line);
    }
}

/// Where to cut `line` (longer than `max`) for a piece of at most `max` bytes: before the
/// UTF-8 character that straddles `max`, if any, else at `max`.
fn cut_at(line: &[u8], max: usize) -> usize {
    let is_continuation = |b: u8| b & 0xc0 == 0x80;
    (max - 3..=max)
        .rev()
        .find(|&i| !is_continuation(line[i]))
        .unwrap_or(max)
}

/// Where to start reading a file of `size` bytes whose last bytes are `tail` (at most
/// [`MAX_LINE`] of them): just after the last `\n` in `tail`, so no line completed before the
/// start is sent and a line being written is sent whole; at the start of `tail` if it has none.
pub fn start_offset(size: u64, tail: &[u8]) -> u64 {
    let tail_start = size - tail.len() as u64;
    match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => tail_start + i as u64 + 1,
        None => tail_start,
    }
}

/// (device, inode): what tells a rotated file from the one now at the path.
fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

/// One tailed file: where it is read up to, and the line being written.
#[derive(Debug)]
pub(crate) struct Tailer {
    topic: TopicId,
    /// `log/NAME`, for messages.
    name: String,
    path: PathBuf,
    file: Option<(File, (u64, u64))>,
    /// Bytes of the open file consumed so far.
    pos: u64,
    /// The last bytes consumed (up to [`CHECK_BYTES`]), which end at `pos`.
    seen: Vec<u8>,
    splitter: LineSplitter,
    buf: Vec<u8>,
    /// The last problem reported on stderr, so it is reported once.
    reported: Option<String>,
}

impl Tailer {
    pub(crate) fn new(hub: &Hub, name: &str, path: &Path) -> Tailer {
        let topic = format!("log/{name}");
        Tailer {
            topic: hub.topic(&topic, TopicKind::Stream),
            name: topic,
            path: path.to_owned(),
            file: None,
            pos: 0,
            seen: Vec::new(),
            splitter: LineSplitter::default(),
            buf: Vec::new(),
            reported: None,
        }
    }

    fn report(&mut self, what: String) {
        if self.reported.as_deref() != Some(&what) {
            log::warn!("{}: {what}", self.name);
            self.reported = Some(what);
        }
    }

    /// Opens the file at the path: at its end (`from_end`, the first open) or at its start.
    fn open(&mut self, from_end: bool) -> bool {
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)
            .and_then(|f| {
                let m = f.metadata()?;
                if m.is_file() {
                    Ok((f, m))
                } else {
                    Err(io::Error::other("not a regular file"))
                }
            });
        let (mut f, meta) = match opened {
            Ok(x) => x,
            Err(e) => {
                let what = format!(
                    "cannot open {}: {}; waiting for it",
                    self.path.display(),
                    describe(&e)
                );
                self.report(what);
                return false;
            }
        };
        let mut pos = 0;
        self.seen.clear();
        if from_end && meta.len() > 0 {
            let window = meta.len().min(MAX_LINE as u64);
            let mut tail = vec![0; window as usize];
            let read = f
                .seek(SeekFrom::Start(meta.len() - window))
                .and_then(|_| f.read_exact(&mut tail));
            pos = match read {
                Ok(()) => start_offset(meta.len(), &tail),
                Err(_) => meta.len(),
            };
            if read.is_ok() {
                let before = &tail[..(pos - (meta.len() - window)) as usize];
                self.seen
                    .extend_from_slice(&before[before.len().saturating_sub(CHECK_BYTES)..]);
            }
        }
        if f.seek(SeekFrom::Start(pos)).is_err() {
            return false;
        }
        if self.reported.take().is_some() {
            log::info!("{}: following {}", self.name, self.path.display());
        }
        self.file = Some((f, identity(&meta)));
        self.pos = pos;
        true
    }

    /// Reads what was appended, following truncation and rotation.
    pub(crate) fn step(&mut self, hub: &Hub) {
        if self.file.is_none() && !self.open(false) {
            return;
        }
        let id = self.file.as_ref().map(|(_, id)| *id);
        let shorter = self
            .file
            .as_ref()
            .and_then(|(f, _)| f.metadata().ok())
            .is_some_and(|m| m.len() < self.pos);
        if shorter || self.rewritten() {
            self.restart(hub);
        }
        self.drain(hub);
        // Rotated: the path names another file now. Finish the old one, then follow the new.
        let now = std::fs::metadata(&self.path).map(|m| identity(&m)).ok();
        if now.is_some() && now != id {
            self.drain(hub);
            self.finish_line(hub);
            self.file = None;
            if self.open(false) {
                self.drain(hub);
            }
        }
    }

    /// Whether the bytes just before the offset are no longer those that were read there: the
    /// file was truncated and written again (possibly past the old offset).
    fn rewritten(&self) -> bool {
        let Some((f, _)) = self.file.as_ref() else {
            return false;
        };
        let mut now = [0u8; CHECK_BYTES];
        let now = &mut now[..self.seen.len()];
        let at = self.pos - self.seen.len() as u64;
        !now.is_empty()
            && f.read_exact_at(now, at)
                .map_or(true, |()| *now != *self.seen)
    }

    /// The file was truncated: what is pending is its last line, and reading starts again at
    /// offset 0.
    fn restart(&mut self, hub: &Hub) {
        self.finish_line(hub);
        if let Some((f, _)) = self.file.as_mut()
            && f.seek(SeekFrom::Start(0)).is_ok()
        {
            self.pos = 0;
            self.seen.clear();
        }
    }

    /// Reads the open file to its end, publishing every completed line. Each chunk is checked
    /// against the bytes before it, so a file truncated and rewritten between the check in
    /// [`Tailer::step`] and the read is read again from its start, not from the old offset.
    fn drain(&mut self, hub: &Hub) {
        if self.buf.len() < READ_CHUNK {
            self.buf.resize(READ_CHUNK, 0);
        }
        let topic = self.topic;
        let mut publish = |line: &[u8]| {
            let text = String::from_utf8_lossy(line).into_owned();
            hub.publish_id(topic, MessageKind::Text, text.into_bytes().into());
        };
        let mut restarts = 0;
        loop {
            let Some((f, _)) = self.file.as_mut() else {
                return;
            };
            let n = match f.read(&mut self.buf) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let what = format!("cannot read {}: {}", self.path.display(), describe(&e));
                    self.report(what);
                    return;
                }
            };
            if restarts < 2 && self.rewritten() {
                restarts += 1;
                self.restart(hub);
                continue;
            }
            self.pos += n as u64;
            let chunk = &self.buf[..n];
            let keep = CHECK_BYTES.min(n);
            let drop = (self.seen.len() + keep).saturating_sub(CHECK_BYTES);
            self.seen.drain(..drop);
            self.seen.extend_from_slice(&chunk[n - keep..]);
            self.splitter.push(chunk, &mut publish);
        }
    }

    fn finish_line(&mut self, hub: &Hub) {
        let topic = self.topic;
        self.splitter.finish(&mut |line: &[u8]| {
            let text = String::from_utf8_lossy(line).into_owned();
            hub.publish_id(topic, MessageKind::Text, text.into_bytes().into());
        });
    }
}

/// Starts tailing `path` for topic `log/{name}`. The file (if it exists) is opened at its end
/// before this returns, so every line completed afterwards is sent.
pub fn start(hub: Arc<Hub>, name: &str, path: &Path) -> io::Result<FeedHandle> {
    let mut tailer = Tailer::new(&hub, name, path);
    tailer.open(true);
    spawn(tailer.name.clone(), path, move |mut watch| {
        watch.ensure();
        tailer.step(&hub);
        loop {
            match watch.wait(Duration::ZERO) {
                Wake::Stop => return,
                Wake::Changed => tailer.step(&hub),
                Wake::Tick => {
                    watch.ensure();
                    tailer.step(&hub);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, pieces: &[&[u8]]) -> (Vec<Vec<u8>>, usize) {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for p in pieces {
            s.push(p, &mut |l: &[u8]| out.push(l.to_vec()));
        }
        (out, s.pending())
    }

    #[test]
    fn line_splitter() {
        type Case<'a> = (&'a [&'a [u8]], &'a [&'a [u8]], usize);
        let cases: &[Case<'_>] = &[
            // (pieces fed, lines emitted, bytes still pending)
            (&[b"a\nb\n"], &[b"a", b"b"], 0),
            (&[b"hel", b"lo\n"], &[b"hello"], 0),
            (&[b"hello"], &[], 5),
            (&[b"x\r\n", b"\r\n"], &[b"x", b""], 0),
            (&[b"\n\n"], &[b"", b""], 0),
            (&[b"a\nbc", b"d", b"\ne"], &[b"a", b"bcd"], 1),
            (&[b"mid\rline\n"], &[b"mid\rline"], 0),
            // Longer than max (8): pieces of 8, the rest waits for its newline.
            (&[b"0123456789abcdefXY"], &[b"01234567", b"89abcdef"], 2),
            (&[b"0123456789\n"], &[b"01234567", b"89"], 0),
        ];
        for (pieces, want, pending) in cases {
            let (got, left) = split(8, pieces);
            let want: Vec<Vec<u8>> = want.iter().map(|l| l.to_vec()).collect();
            assert_eq!((&got, left), (&want, *pending), "{pieces:?}");
        }
    }

    #[test]
    fn long_lines_are_cut_before_a_character_not_inside_it() {
        // "aaaaaa€b": the euro sign (3 bytes) straddles byte 8.
        let line = "aaaaaa€b\n".as_bytes();
        let (got, _) = split(8, &[line]);
        assert_eq!(got, [b"aaaaaa".to_vec(), "€b".as_bytes().to_vec()]);
        let (got, _) = split(8, &[&line[..8], &line[8..]]);
        assert_eq!(got, [b"aaaaaa".to_vec(), "€b".as_bytes().to_vec()]);
    }

    #[test]
    fn finish_sends_the_unterminated_line() {
        let mut s = LineSplitter::new(64);
        let mut out = Vec::new();
        s.push(b"a\nrest\r", &mut |l: &[u8]| out.push(l.to_vec()));
        s.finish(&mut |l: &[u8]| out.push(l.to_vec()));
        s.finish(&mut |l: &[u8]| out.push(l.to_vec()));
        assert_eq!(out, [b"a".to_vec(), b"rest".to_vec()]);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn starting_offsets() {
        assert_eq!(start_offset(0, b""), 0);
        assert_eq!(start_offset(6, b"a\nb\nc\n"), 6);
        // A line being written at start is read from its beginning.
        assert_eq!(start_offset(7, b"a\nb\nhal"), 4);
        // The window holds the last 4 of 10 bytes and no newline: start at the window.
        assert_eq!(start_offset(10, b"wxyz"), 6);
    }
}
