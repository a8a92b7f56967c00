//! Payload masking (RFC 6455 section 5.3).
//!
//! Masking XORs every payload byte with one byte of a 4-byte key, cycling through the key. The
//! hot path works on 64-bit words: the key is widened to a word once and each word of the payload
//! is XORed in one operation; only the tail shorter than a word goes byte by byte. The code is
//! safe Rust (unaligned word loads through `from_ne_bytes`), which the compiler turns into plain
//! loads and, for the 32-byte blocks, vector instructions.

/// XORs `buf` with `key` as if `buf` started `offset` bytes into the masked payload.
///
/// Masking is its own inverse: the same call masks and unmasks. `offset` lets a payload that
/// arrives in several reads be unmasked piece by piece.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate_key(key, offset);
    let k32 = u32::from_ne_bytes(key);
    let word = (u64::from(k32) << 32) | u64::from(k32);

    let mut blocks = buf.chunks_exact_mut(32);
    for block in &mut blocks {
        for lane in block.chunks_exact_mut(8) {
            let v = u64::from_ne_bytes(lane.try_into().expect("8-byte lane")) ^ word;
            lane.copy_from_slice(&v.to_ne_bytes());
        }
    }
    let rest = blocks.into_remainder();
    let mut lanes = rest.chunks_exact_mut(8);
    for lane in &mut lanes {
        let v = u64::from_ne_bytes(lane.try_into().expect("8-byte lane")) ^ word;
        lane.copy_from_slice(&v.to_ne_bytes());
    }
    // Every full block and lane is a multiple of 4 bytes long, so the tail starts at key index 0.
    for (i, b) in lanes.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// The byte-at-a-time definition from the RFC; the reference `apply_mask` is tested against.
pub fn apply_mask_bytewise(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(i + offset) & 3];
    }
}

/// The key as seen by a buffer that starts `offset` bytes into the payload.
#[inline]
fn rotate_key(key: [u8; 4], offset: usize) -> [u8; 4] {
    let s = offset & 3;
    [key[s], key[(s + 1) & 3], key[(s + 2) & 3], key[(s + 3) & 3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_masking_matches_bytewise_at_every_length_offset_and_alignment() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let src: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for align in 0..8 {
            for len in 0..(src.len() - align) {
                for offset in 0..5 {
                    let mut fast = src[align..align + len].to_vec();
                    let mut slow = fast.clone();
                    apply_mask(&mut fast, key, offset);
                    apply_mask_bytewise(&mut slow, key, offset);
                    assert_eq!(fast, slow, "len {len} offset {offset} align {align}");
                }
            }
        }
    }

    #[test]
    fn masking_in_pieces_equals_masking_at_once() {
        let key = [1, 2, 3, 4];
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        for split in [1, 3, 7, 8, 33, 999] {
            let mut parts = data.clone();
            let (a, b) = parts.split_at_mut(split);
            apply_mask(a, key, 0);
            apply_mask(b, key, split);
            assert_eq!(parts, whole, "split at {split}");
        }
    }

    #[test]
    fn rfc_example_masked_hello() {
        // RFC 6455 section 5.7: "Hello" masked with 37 fa 21 3d.
        let mut p = *b"Hello";
        apply_mask(&mut p, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(p, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }
}
