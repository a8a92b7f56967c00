//! A small, fast pseudo-random generator for masking keys and handshake keys (client role).
//!
//! xorshift64*: not cryptographic. RFC 6455 asks that a client's masks be unpredictable to
//! scripts in a browser, which this project's clients (the load generator, tests) are not; the
//! generator is seeded per connection by the caller, so this module stays free of clocks.

/// xorshift64* state; never zero.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (any value; distinct seeds give distinct streams).
    pub fn new(seed: u64) -> Rng {
        // SplitMix64 of the seed, so nearby seeds (connection indexes) start far apart.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A frame masking key.
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_le_bytes()
    }

    /// The 16 random bytes of a `Sec-WebSocket-Key`.
    pub fn key(&mut self) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        k[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_give_distinct_nonzero_streams() {
        let mut a = Rng::new(0);
        let mut b = Rng::new(1);
        let xs: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        assert_ne!(xs, ys);
        assert!(xs.iter().all(|&x| x != 0));
        assert_ne!(a.key(), a.key());
    }
}
