//! A connection's queue of output the socket has not taken yet.
//!
//! Segments are either bytes the connection owns (a pooled buffer holding, say, an echo that did
//! not fit the socket) or a reference to a frame shared with every other subscriber of a topic.
//! Draining writes up to [`MAX_IOV`] segments per syscall: small ones (a batch of topic frames,
//! typically tens of bytes each) are first gathered into the worker's buffer and sent with one
//! `send`, larger ones go out with one `writev`. Queued frames of a "latest value"
//! topic are replaced when a newer one arrives, unless their first byte is already on the wire.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

use super::pool::BufPool;
use crate::topics::TopicId;

/// Segments written per `writev`.
const MAX_IOV: usize = 64;
/// Segments are gathered into one buffer and sent with `send(2)` while their total stays within
/// this. For the kernel one copy of a few hundred bytes is cheaper than `writev`'s walk over
/// as many iovecs of tens of bytes each (and `send` skips the vfs layer); the copy in user
/// space costs less than either.
pub(crate) const GATHER_MAX: usize = 16 * 1024;

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
    /// loop quietly; other errors are returned. `gather` is the worker's scratch buffer (see
    /// [`GATHER_MAX`]); it is left empty.
    pub fn write_to(
        &mut self,
        w: &mut impl Write,
        pool: &mut BufPool,
        gather: &mut Vec<u8>,
    ) -> io::Result<usize> {
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
                // The leading segments that fit in GATHER_MAX together.
                let mut small = 0;
                let mut small_len = 0;
                for s in &slices[..count] {
                    if small_len + s.len() > GATHER_MAX {
                        break;
                    }
                    small_len += s.len();
                    small += 1;
                }
                // One buffer goes out with send(2), cheaper than writev(2) (see `write_now`).
                let result = if small > 1 {
                    for s in &slices[..small] {
                        gather.extend_from_slice(s);
                    }
                    w.write(gather)
                } else if count == 1 {
                    w.write(&slices[0])
                } else {
                    w.write_vectored(&slices[..count])
                };
                gather.clear();
                result
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
        // The three are gathered into one buffer, of which each call takes two bytes: "ab",
        // "cD", "EF"; the next call starts inside the shared frame.
        let mut w = Trickle {
            out: Vec::new(),
            limit: 2,
            calls: 3,
        };
        assert_eq!(q.write_to(&mut w, &mut pool, &mut Vec::new()).unwrap(), 6);
        assert_eq!(q.queued(), 3);
        w.calls = 100;
        q.write_to(&mut w, &mut pool, &mut Vec::new()).unwrap();
        assert_eq!(w.out, b"abcDEFGhi");
        assert!(q.is_empty());
    }

    /// Takes everything; records the size of every call.
    #[derive(Default)]
    struct Calls {
        out: Vec<u8>,
        sizes: Vec<usize>,
    }

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sizes.push(buf.len());
            self.out.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn small_segments_leave_in_one_write_up_to_the_gather_limit() {
        let mut pool = BufPool::new(4);
        let mut q = Outbox::default();
        let mut want = Vec::new();
        let mut push = |q: &mut Outbox, byte: u8, len: usize| {
            let frame: Arc<[u8]> = vec![byte; len].into();
            want.extend_from_slice(&frame);
            q.push_shared(frame, 1, false, 0);
        };
        for b in [b'a', b'b', b'c'] {
            push(&mut q, b, 100);
        }
        push(&mut q, b'B', GATHER_MAX);
        push(&mut q, b'x', 10);
        push(&mut q, b'y', 10);
        let mut w = Calls::default();
        let mut gather = Vec::new();
        q.write_to(&mut w, &mut pool, &mut gather).unwrap();
        // The three small frames in one call; the big one fills the buffer alone, so it goes
        // by writev (whose default takes the first slice); the last two together.
        assert_eq!(w.sizes, [300, GATHER_MAX, 20]);
        assert_eq!(w.out, want);
        assert!(q.is_empty() && gather.is_empty());
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
        q.write_to(&mut w, &mut pool, &mut Vec::new()).unwrap();
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
        q.write_to(&mut w, &mut pool, &mut Vec::new()).unwrap();
        assert_eq!(w.out, b"ame");
    }
}
