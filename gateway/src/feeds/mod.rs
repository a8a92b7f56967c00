//! What feeds topics from outside the sockets: file watch ([`file`](mod@file),
//! `--watch NAME=PATH` to topic `file/NAME`) and log tail ([`tail`], `--tail NAME=PATH` to topic
//! `log/NAME`).
//!
//! Each source runs on its own thread, where blocking on the file system is fine, and touches
//! only the [`Hub`]: it publishes, and the workers deliver. A source learns of changes from
//! inotify (through the `notify` crate) on the file's *parent directory*, so deleting,
//! recreating, renaming over or rotating the file are all seen; a watch on the file itself would
//! die with the first inode it names. Whatever the watch cannot see (it failed to start, the
//! directory was replaced, the path is a symlink whose target was swapped) is caught by a stat
//! every [`POLL`]. A source never panics on a missing or unreadable file: it reports and waits.
//!
//! [`FeedHandle`] stops a source: [`Server::start`](crate::server::Server::start) starts one
//! per configured feed and stops them on shutdown.

pub mod file;
pub mod tail;

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

use crate::topics::{Hub, is_valid_topic};

/// How often a source stats its file when no event came: the fallback when the watch failed,
/// and the safety net for what inotify on the directory cannot see.
pub const POLL: Duration = Duration::from_secs(1);

/// Whether `name` may name a feed: one topic segment (`config`, `app-1.log`), so that
/// `file/NAME` and `log/NAME` are topics and `/file/NAME` is one path segment.
pub fn is_valid_feed_name(name: &str) -> bool {
    !name.contains('/') && is_valid_topic(name)
}

/// What wakes a source's thread.
#[derive(Debug)]
enum Signal {
    /// Something happened to the file (or to its directory).
    Changed,
    /// The server is shutting down.
    Stop,
}

/// Why [`DirWatch::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// An event named the file (bursts within the debounce are one wake).
    Changed,
    /// [`POLL`] passed without an event.
    Tick,
    Stop,
}

/// Watches the directory holding one file and turns its events into [`Wake`]s.
pub(crate) struct DirWatch {
    dir: PathBuf,
    file_name: OsString,
    tx: Sender<Signal>,
    rx: Receiver<Signal>,
    watcher: Option<RecommendedWatcher>,
    /// (device, inode) of the directory the watch was placed on; a directory replaced since
    /// is watched again.
    watching: Option<(u64, u64)>,
    /// Why the last attempt to watch failed, so it is reported once, not every second.
    last_error: Option<String>,
    label: String,
}

impl std::fmt::Debug for DirWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatch")
            .field("dir", &self.dir)
            .field("watching", &self.watching)
            .finish_non_exhaustive()
    }
}

impl DirWatch {
    /// A watch for `path`, named `label` (the topic) in messages. Nothing is watched until
    /// [`DirWatch::ensure`].
    fn new(path: &Path, label: String) -> DirWatch {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("/"))
            .to_owned();
        let file_name = path.file_name().map(OsString::from).unwrap_or_default();
        let (tx, rx) = mpsc::channel();
        DirWatch {
            dir,
            file_name,
            tx,
            rx,
            watcher: None,
            watching: None,
            last_error: None,
            label,
        }
    }

    /// Places the watch if it is missing or the directory was replaced since; returns whether
    /// the directory is watched. Failures are reported once and retried on the next tick.
    pub(crate) fn ensure(&mut self) -> bool {
        let id = std::fs::metadata(&self.dir)
            .map(|m| (m.dev(), m.ino()))
            .ok();
        if id.is_some() && id == self.watching {
            return true;
        }
        if self.watching.take().is_some()
            && let Some(w) = self.watcher.as_mut()
        {
            let _ = w.unwatch(&self.dir);
        }
        let Some(id) = id else {
            self.report(format!(
                "cannot watch {}: no such directory",
                self.dir.display()
            ));
            return false;
        };
        if self.watcher.is_none() {
            match notify::recommended_watcher(self.handler()) {
                Ok(w) => self.watcher = Some(w),
                Err(e) => {
                    self.report(format!("cannot start a file watcher: {e}"));
                    return false;
                }
            }
        }
        let w = self.watcher.as_mut().expect("created above");
        match w.watch(&self.dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                self.watching = Some(id);
                if self.last_error.take().is_some() {
                    log::info!("{}: watching {} again", self.label, self.dir.display());
                }
                true
            }
            Err(e) => {
                self.report(format!("cannot watch {}: {e}", self.dir.display()));
                false
            }
        }
    }

    fn report(&mut self, why: String) {
        if self.last_error.as_deref() != Some(&why) {
            log::warn!("{}: {why}; polling every {:?}", self.label, POLL);
            self.last_error = Some(why);
        }
    }

    /// The closure notify calls on its own thread: forwards events that may concern the file.
    /// Opening and reading the file (the source's own reads among them) change nothing and are
    /// ignored, or every read would wake the source again.
    fn handler(&self) -> impl FnMut(notify::Result<notify::Event>) + Send + 'static {
        let tx = self.tx.clone();
        let dir = self.dir.clone();
        let name = self.file_name.clone();
        move |event| {
            let relevant = match event {
                // An error (a lost or overflowed queue, say) may hide a change: look again.
                Err(_) => true,
                Ok(ev) => {
                    let harmless = matches!(
                        ev.kind,
                        EventKind::Access(
                            AccessKind::Open(_)
                                | AccessKind::Read
                                | AccessKind::Close(AccessMode::Read | AccessMode::Execute)
                        )
                    );
                    !harmless
                        && (ev.paths.is_empty()
                            || ev
                                .paths
                                .iter()
                                .any(|p| p == &dir || p.file_name() == Some(&name)))
                }
            };
            if relevant {
                let _ = tx.send(Signal::Changed);
            }
        }
    }

    /// Waits for an event on the file, the poll interval, or a stop. After the first event,
    /// further events within `debounce` are folded into the same wake (a writer's burst of
    /// writes is read once); the wait never exceeds `debounce` after the first event, so a
    /// steady stream of writes cannot postpone delivery.
    pub(crate) fn wait(&self, debounce: Duration) -> Wake {
        match self.rx.recv_timeout(POLL) {
            Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return Wake::Stop,
            Err(RecvTimeoutError::Timeout) => return Wake::Tick,
            Ok(Signal::Changed) => {}
        }
        let until = Instant::now() + debounce;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let next = if left.is_zero() {
                self.rx.try_recv().map_err(|e| match e {
                    mpsc::TryRecvError::Empty => RecvTimeoutError::Timeout,
                    mpsc::TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                })
            } else {
                self.rx.recv_timeout(left)
            };
            match next {
                Ok(Signal::Changed) => {}
                Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return Wake::Stop,
                Err(RecvTimeoutError::Timeout) if left.is_zero() => return Wake::Changed,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// A running source; stopping it (or dropping the handle) ends its thread within one wake.
#[derive(Debug)]
pub struct FeedHandle {
    tx: Sender<Signal>,
    thread: Option<JoinHandle<()>>,
}

impl FeedHandle {
    /// Asks the source to stop; returns at once.
    pub fn stop(&self) {
        let _ = self.tx.send(Signal::Stop);
    }

    /// Stops the source and waits for its thread.
    pub fn join(mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FeedHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `run` on a thread named after the topic, with a watch on `path`'s directory.
fn spawn(
    topic: String,
    path: &Path,
    run: impl FnOnce(DirWatch) + Send + 'static,
) -> io::Result<FeedHandle> {
    let watch = DirWatch::new(path, topic.clone());
    let tx = watch.tx.clone();
    let thread = std::thread::Builder::new()
        .name(format!("gw-{}", topic.replace('/', "-")))
        .spawn(move || run(watch))?;
    Ok(FeedHandle {
        tx,
        thread: Some(thread),
    })
}

/// Checks the feed names of a configuration: each one topic segment, none used twice.
pub fn check_names(watch: &[(String, PathBuf)], tail: &[(String, PathBuf)]) -> io::Result<()> {
    for (flag, feeds) in [("--watch", watch), ("--tail", tail)] {
        for (i, (name, path)) in feeds.iter().enumerate() {
            if !is_valid_feed_name(name) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{flag} {name}={}: the name must be 1 to 128 of [A-Za-z0-9_.-] with no slash",
                        path.display()
                    ),
                ));
            }
            if feeds[..i].iter().any(|(n, _)| n == name) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{flag} {name}=..: the name {name:?} is given twice"),
                ));
            }
        }
    }
    Ok(())
}

/// Starts one source per configured feed. Each file is read once before this returns, so its
/// topic holds the content (or the error) before the first client can ask.
pub fn start(
    hub: &Arc<Hub>,
    watch: &[(String, PathBuf)],
    tail: &[(String, PathBuf)],
) -> io::Result<Vec<FeedHandle>> {
    check_names(watch, tail)?;
    let mut out = Vec::with_capacity(watch.len() + tail.len());
    for (name, path) in watch {
        out.push(file::start(hub.clone(), name, path)?);
    }
    for (name, path) in tail {
        out.push(tail::start(hub.clone(), name, path)?);
    }
    Ok(out)
}

/// Describes an I/O error without the "(os error N)" suffix std adds.
fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_owned(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_names_are_one_topic_segment() {
        for ok in ["config", "app-1.log", "a_b"] {
            assert!(is_valid_feed_name(ok), "{ok}");
        }
        for bad in ["", "a/b", "..", ".", "a b", "é"] {
            assert!(!is_valid_feed_name(bad), "{bad}");
        }
        let p = PathBuf::from("/tmp/x");
        assert!(check_names(&[("a".into(), p.clone())], &[("a".into(), p.clone())]).is_ok());
        let e = check_names(&[("a".into(), p.clone()), ("a".into(), p.clone())], &[]);
        assert!(e.unwrap_err().to_string().contains("twice"));
        let e = check_names(&[], &[("x/y".into(), p)]);
        assert!(e.unwrap_err().to_string().contains("--tail x/y"));
    }

    #[test]
    fn errors_are_described_without_the_os_error_number() {
        let e = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(describe(&e), "No such file or directory");
        let e = io::Error::other("too big");
        assert_eq!(describe(&e), "too big");
    }
}
