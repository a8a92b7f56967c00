//! Per-worker pool of byte buffers.
//!
//! Connections borrow a buffer when they have bytes to keep (a partial request or frame header, a
//! message being assembled, output the socket did not take) and give it back when it is empty,
//! so an idle connection owns no buffer. Buffers that grew large (a 16 MiB message) are freed
//! instead of kept, and the pool keeps at most a bounded number, so its memory is bounded too.

/// Capacity of a fresh buffer.
pub const BUF_SIZE: usize = 4 * 1024;
/// Buffers larger than this are freed on return rather than pooled.
const KEEP_MAX: usize = 64 * 1024;

#[derive(Debug)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
    max_free: usize,
}

impl BufPool {
    pub fn new(max_free: usize) -> BufPool {
        BufPool {
            free: Vec::new(),
            max_free,
        }
    }

    /// An empty buffer with at least [`BUF_SIZE`] capacity.
    pub fn get(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
    }

    /// Gives a buffer back; it is cleared (or freed).
    pub fn put(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() >= BUF_SIZE
            && buf.capacity() <= KEEP_MAX
            && self.free.len() < self.max_free
        {
            buf.clear();
            self.free.push(buf);
        }
    }

    #[cfg(test)]
    pub fn pooled(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_and_bounds() {
        let mut p = BufPool::new(2);
        let a = p.get();
        let ptr = a.as_ptr();
        p.put(a);
        let b = p.get();
        assert_eq!(b.as_ptr(), ptr);
        p.put(Vec::with_capacity(KEEP_MAX + 1));
        assert_eq!(p.pooled(), 0, "large buffers are freed");
        for _ in 0..5 {
            p.put(Vec::with_capacity(BUF_SIZE));
        }
        assert_eq!(p.pooled(), 2);
    }
}
