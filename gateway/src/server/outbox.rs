//! A connection's queue of output the socket has not taken yet.
//!
//! Segments are either bytes the connection owns (a pooled buffer holding, say, an echo that did
//! not fit the socket) or a reference to a frame shared with every other subscriber of a topic.
//! Draining uses one `writev` over up to [`MAX_IOV`] segments. Queued frames of a "latest value"
//! topic are replaced when a newer one arrives, unless their first byte is already on the wire.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

use super::pool::BufPool;
use crate::topics::TopicId;

/// Segments written per `writev`.
const MAX_IOV: usize = 64;

#[derive(Debug)]
enum Seg {
    Owned(Vec<u8>),
    Shared {
        frame: Arc<[u8]>,
        topic: TopicId,
        latest: bool,
    },
}

impl Seg {
    fn bytes(&self) -> &[u8] {
        match self {
            Seg::Owned(v) => v,
            Seg::Shared { frame, .. } => frame,
        }
    }
}

/// Queued output, oldest first.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    segs: VecDeque<Seg>,
    /// Bytes of the first segment already written.
    head_pos: usize,
    /// Bytes still to write.
    queued: usize,
}

impl Outbox {
    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Queues bytes the connection owns, appending to the last owned buffer when it has room.
    pub fn push_owned(&mut self, bytes: &[u8], pool: &mut BufPool) {
        if bytes.is_empty() {
            return;
        }
        self.queued += bytes.len();
        // The last segment may be half written; appending behind its written part is fine.
        if let Some(Seg::Owned(last)) = self.segs.back_mut()
            && last.len() + bytes.len() <= last.capacity()
        {
            last.extend_from_slice(bytes);
            return;
        }
        let mut buf = pool.get();
        buf.extend_from_slice(bytes);
        self.segs.push_back(Seg::Owned(buf));
    }

    /// Queues a shared frame whose first `written` bytes already went out (only when the queue
    /// was empty). A newer frame of a `latest` topic replaces queued older ones that have not
    /// started.
    pub fn push_shared(&mut self, frame: Arc<[u8]>, topic: TopicId, latest: bool, written: usize) {
        debug_assert!(written == 0 || self.segs.is_empty());
        if latest {
            let mut i = usize::from(self.head_pos > 0);
            while i < self.segs.len() {
                match &self.segs[i] {
                    Seg::Shared {
                        topic: t,
                        latest: true,
                        frame,
                    } if *t == topic => {
                        self.queued -= frame.len();
                        self.segs.remove(i);
                    }
                    _ => i += 1,
                }
            }
        }
        self.queued += frame.len() - written;
        if self.segs.is_empty() {
            self.head_pos = written;
        }
        self.segs.push_back(Seg::Shared {
            frame,
            topic,
            latest,
        });
    }

    /// Bytes queued that belong to stream topics or the connection itself: what counts
    /// against `--max-queued` (frames of "latest value" topics replace each other, so they
    /// cannot pile up).
    pub fn stream_queued(&self) -> usize {
        let latest: usize = self
            .segs
            .iter()
            .filter_map(|s| match s {
                Seg::Shared {
                    frame,
                    latest: true,
                    ..
                } => Some(frame.len()),
                _ => None,
            })
            .sum();
        self.queued.saturating_sub(latest)
    }

    /// Drops everything that has not started going out (a slow consumer about to be closed).
    pub fn discard_unstarted(&mut self, pool: &mut BufPool) {
        let keep = usize::from(self.head_pos > 0);
        while self.segs.len() > keep {
            if let Some(seg) = self.segs.pop_back() {
                self.queued -= seg.bytes().len();
                if let Seg::Owned(v) = seg {
                    pool.put(v);
                }
            }
        }
    }

    /// Writes as much as the writer takes; returns the bytes written. `WouldBlock` ends the
    /// loop quietly; other errors are returned.
    pub fn write_to(&mut self, w: &mut impl Write, pool: &mut BufPool) -> io::Result<usize> {
        let mut total = 0;
        while !self.segs.is_empty() {
            let result = {
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                let mut count = 0;
                for (i, seg) in self.segs.iter().take(MAX_IOV).enumerate() {
                    let bytes = seg.bytes();
                    slices[i] = IoSlice::new(if i == 0 {
                        &bytes[self.head_pos..]
                    } else {
                        bytes
                    });
                    count += 1;
                }
                // One segment goes out with send(2), cheaper than writev(2) (see `write_now`).
                if count == 1 {
                    w.write(&slices[0])
                } else {
                    w.write_vectored(&slices[..count])
                }
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    total += n;
                    self.advance(n, pool);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    fn advance(&mut self, mut n: usize, pool: &mut BufPool) {
        self.queued -= n;
        while let Some(front) = self.segs.front() {
            let left = front.bytes().len() - self.head_pos;
            if n < left {
                self.head_pos += n;
                return;
            }
            n -= left;
            self.head_pos = 0;
            if let Some(Seg::Owned(v)) = self.segs.pop_front() {
                pool.put(v);
            }
        }
    }

    /// Returns owned buffers to the pool.
    pub fn recycle(mut self, pool: &mut BufPool) {
        for seg in self.segs.drain(..) {
            if let Seg::Owned(v) = seg {
                pool.put(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `limit` bytes per call and blocks after `calls` calls.
    struct Trickle {
        out: Vec<u8>,
        limit: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.calls == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls -= 1;
            let n = buf.len().min(self.limit);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn drains_in_order_across_partial_writes() {
        let mut pool = BufPool::new(4);
        let mut q = Outbox::default();
        q.push_owned(b"abc", &mut pool);
        q.push_shared(Arc::from(&b"DEFG"[..]), 1, false, 0);
        q.push_owned(b"hi", &mut pool);
        assert_eq!(q.queued(), 9);
        // The default write_vectored writes from the first non-empty slice only: "ab", "c", "DE".
        let mut w = Trickle {
            out: Vec::new(),
            limit: 2,
            calls: 3,
        };
        assert_eq!(q.write_to(&mut w, &mut pool).unwrap(), 5);
        assert_eq!(q.queued(), 4);
        w.calls = 100;
        q.write_to(&mut w, &mut pool).unwrap();
        assert_eq!(w.out, b"abcDEFGhi");
        assert!(q.is_empty());
    }

    #[test]
    fn latest_replaces_unstarted_frames_only() {
        let mut pool = BufPool::new(4);
        let mut q = Outbox::default();
        q.push_shared(Arc::from(&b"v1v1"[..]), 7, true, 1); // partly written already
        q.push_shared(Arc::from(&b"v2v2"[..]), 7, true, 0);
        q.push_owned(b"x", &mut pool);
        q.push_shared(Arc::from(&b"v3v3"[..]), 7, true, 0);
        let mut w = Trickle {
            out: Vec::new(),
            limit: 100,
            calls: 100,
        };
        q.write_to(&mut w, &mut pool).unwrap();
        assert_eq!(w.out, b"1v1xv3v3");
    }

    #[test]
    fn discard_keeps_a_started_frame_whole() {
        let mut pool = BufPool::new(4);
        let mut q = Outbox::default();
        q.push_shared(Arc::from(&b"frame"[..]), 1, false, 2);
        q.push_owned(b"more", &mut pool);
        q.discard_unstarted(&mut pool);
        assert_eq!(q.queued(), 3);
        let mut w = Trickle {
            out: Vec::new(),
            limit: 100,
            calls: 100,
        };
        q.write_to(&mut w, &mut pool).unwrap();
        assert_eq!(w.out, b"ame");
    }
}
