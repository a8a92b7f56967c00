//! File watch: `--watch NAME=PATH` publishes the whole content of PATH to topic `file/NAME`
//! (a [`TopicKind::Latest`] topic: a slow subscriber gets the newest version, never a backlog)
//! every time it changes.
//!
//! A change is noticed by inotify on the parent directory (see [`super`]) or, failing that, by
//! the stat every [`POLL`](super::POLL) (modification time, size, inode). Events within
//! [`DEBOUNCE`] of the first are one change, and a version is published only if its bytes
//! differ from what subscribers last got, so `touch` or a writer rewriting the same bytes sends
//! nothing. Content that is valid UTF-8 goes out as a text message, anything else as binary.
//!
//! Each version carries a stamp ([`Published::stamp`](crate::topics::Published::stamp)): the
//! file's modification time in nanoseconds since the Unix epoch, raised when needed to one more
//! than the previous version's, so stamps only grow. `/ws/file/{name}?lastMod=<hex>` sends the
//! current version at once only if its stamp is greater than `lastMod`. Because the stamp is the
//! modification time, it survives a gateway restart: a client holding the current version is
//! not sent it again.
//!
//! A missing or unreadable file (or one over [`MAX_FILE`] bytes) is published once as a text
//! message `error: file/NAME: cannot read PATH: <reason>` (stamped with the current time), and
//! the content is published again as soon as it can be read, even if unchanged.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{FeedHandle, Wake, describe, spawn};
use crate::proto::MessageKind;
use crate::topics::{Hub, TopicId, TopicKind};

/// Events this soon after the first are part of the same change.
pub const DEBOUNCE: Duration = Duration::from_millis(10);

/// Largest file published, in bytes (8 MiB). A larger one is reported as an error: every
/// version is held in memory and sent whole to every subscriber.
pub const MAX_FILE: u64 = 8 * 1024 * 1024;

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signature {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: u64,
}

impl Signature {
    fn of(m: &std::fs::Metadata) -> Signature {
        let mtime_ns = u64::try_from(m.mtime())
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(m.mtime_nsec()).unwrap_or(0));
        Signature {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns,
        }
    }
}

/// What subscribers were sent last.
#[derive(Debug)]
enum Shown {
    Nothing,
    Content(Vec<u8>),
    Error(String),
}

/// One watched file: reads it and publishes what changed.
#[derive(Debug)]
pub(crate) struct FileFeed {
    topic: TopicId,
    /// `file/NAME`, for error texts.
    name: String,
    path: PathBuf,
    shown: Shown,
    /// Signature of the version shown (none while in error).
    sig: Option<Signature>,
    /// Stamp of the last version published.
    stamp: u64,
}

impl FileFeed {
    pub(crate) fn new(hub: &Hub, name: &str, path: &Path) -> FileFeed {
        let topic = format!("file/{name}");
        FileFeed {
            topic: hub.topic(&topic, TopicKind::Latest),
            name: topic,
            path: path.to_owned(),
            shown: Shown::Nothing,
            sig: None,
            stamp: 0,
        }
    }

    /// Looks at the file and publishes it if subscribers do not have this version yet. Without
    /// `force` (a poll tick, no event) the file is read only if its signature changed.
    pub(crate) fn check(&mut self, hub: &Hub) {
        self.check_with(hub, true);
    }

    fn check_with(&mut self, hub: &Hub, force: bool) {
        if !force && matches!(self.shown, Shown::Content(_)) {
            let now = std::fs::metadata(&self.path).map(|m| Signature::of(&m));
            if now.ok() == self.sig {
                return;
            }
        }
        match read(&self.path) {
            Ok((sig, bytes)) => {
                self.sig = Some(sig);
                if matches!(&self.shown, Shown::Content(c) if *c == bytes) {
                    return;
                }
                let kind = if std::str::from_utf8(&bytes).is_ok() {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                self.stamp = sig.mtime_ns.max(self.stamp.saturating_add(1));
                // Refused by a bus that is down: offered again at the next check (every second).
                if hub.offer_stamped(self.topic, kind, bytes.clone().into(), self.stamp) {
                    self.shown = Shown::Content(bytes);
                } else {
                    // Not shown: the next tick reads the file again.
                    self.sig = None;
                }
            }
            Err(e) => {
                self.sig = None;
                let text = format!(
                    "error: {}: cannot read {}: {}",
                    self.name,
                    self.path.display(),
                    describe(&e)
                );
                if matches!(&self.shown, Shown::Error(t) if *t == text) {
                    return;
                }
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                self.stamp = now.max(self.stamp.saturating_add(1));
                let offered = hub.offer_stamped(
                    self.topic,
                    MessageKind::Text,
                    text.clone().into_bytes().into(),
                    self.stamp,
                );
                if offered {
                    self.shown = Shown::Error(text);
                } else {
                    self.sig = None;
                }
            }
        }
    }
}

/// Reads the whole file, refusing what is not a regular file or is over [`MAX_FILE`].
fn read(path: &Path) -> io::Result<(Signature, Vec<u8>)> {
    // Non-blocking, so a FIFO at the path cannot hang the source in `open`.
    let mut f: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let too_big = |n: u64| io::Error::other(format!("{n} bytes, over the {MAX_FILE}-byte limit"));
    if meta.len() > MAX_FILE {
        return Err(too_big(meta.len()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&mut f).take(MAX_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(too_big(bytes.len() as u64));
    }
    Ok((Signature::of(&meta), bytes))
}

/// Starts watching `path` for topic `file/{name}`. The file is read (and its content or error
/// published) before this returns.
pub fn start(hub: Arc<Hub>, name: &str, path: &Path) -> io::Result<FeedHandle> {
    let mut feed = FileFeed::new(&hub, name, path);
    feed.check(&hub);
    spawn(feed.name.clone(), path, move |mut watch| {
        watch.ensure();
        // A change between the first read and the watch is caught here.
        feed.check(&hub);
        loop {
            match watch.wait(DEBOUNCE) {
                Wake::Stop => return,
                Wake::Changed => feed.check(&hub),
                Wake::Tick => {
                    watch.ensure();
                    feed.check_with(&hub, false);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::HistoryConfig;

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "gateway-file-unit-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ))
    }

    /// The newest message of the feed's topic: (sequence number, payload as text, stamp).
    fn newest(hub: &Hub, feed: &FileFeed) -> (u64, String, u64) {
        let m = hub.latest(feed.topic).expect("something published");
        (
            m.seq,
            String::from_utf8_lossy(&m.payload).into_owned(),
            m.stamp,
        )
    }

    #[test]
    fn publishes_changes_errors_once_and_content_again() {
        let hub = Hub::new(HistoryConfig::default());
        let path = temp_path("cycle");
        std::fs::write(&path, "one").unwrap();
        let mut feed = FileFeed::new(&hub, "t", &path);
        feed.check(&hub);
        let (seq, text, stamp1) = newest(&hub, &feed);
        assert_eq!((seq, text.as_str()), (1, "one"));
        let mtime = Signature::of(&std::fs::metadata(&path).unwrap()).mtime_ns;
        assert_eq!(stamp1, mtime, "the stamp is the modification time");

        // Same bytes again (touch, rewrite): nothing published.
        std::fs::write(&path, "one").unwrap();
        feed.check(&hub);
        assert_eq!(newest(&hub, &feed).0, 1);

        std::fs::write(&path, "two").unwrap();
        feed.check(&hub);
        let (seq, text, stamp2) = newest(&hub, &feed);
        assert_eq!((seq, text.as_str()), (2, "two"));
        assert!(stamp2 > stamp1, "stamps only grow");

        std::fs::remove_file(&path).unwrap();
        feed.check(&hub);
        feed.check(&hub);
        let (seq, text, stamp3) = newest(&hub, &feed);
        assert_eq!(seq, 3, "the error is published once");
        assert_eq!(
            text,
            format!(
                "error: file/t: cannot read {}: No such file or directory",
                path.display()
            )
        );
        assert!(stamp3 > stamp2);

        // Back with the old content: published again, stamped after the error.
        std::fs::write(&path, "two").unwrap();
        feed.check(&hub);
        let (seq, text, stamp4) = newest(&hub, &feed);
        assert_eq!((seq, text.as_str()), (4, "two"));
        assert!(stamp4 > stamp3);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_poll_tick_reads_only_when_the_signature_changed() {
        let hub = Hub::new(HistoryConfig::default());
        let path = temp_path("tick");
        std::fs::write(&path, "a").unwrap();
        let mut feed = FileFeed::new(&hub, "t", &path);
        feed.check_with(&hub, false);
        assert_eq!(newest(&hub, &feed).0, 1);
        feed.check_with(&hub, false);
        assert_eq!(newest(&hub, &feed).0, 1);
        std::fs::write(&path, "bb").unwrap();
        feed.check_with(&hub, false);
        assert_eq!(newest(&hub, &feed).1, "bb");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn directories_and_binary_content() {
        let hub = Hub::new(HistoryConfig::default());
        let mut feed = FileFeed::new(&hub, "d", &std::env::temp_dir());
        feed.check(&hub);
        assert!(newest(&hub, &feed).1.ends_with(": not a regular file"));
        let path = temp_path("bin");
        std::fs::write(&path, [0xff, 0x00, 0xfe]).unwrap();
        let mut feed = FileFeed::new(&hub, "b", &path);
        feed.check(&hub);
        let m = hub.latest(feed.topic).unwrap();
        assert_eq!(
            (m.kind, &*m.payload),
            (MessageKind::Binary, &[0xff, 0, 0xfe][..])
        );
        std::fs::remove_file(&path).unwrap();
    }
}
