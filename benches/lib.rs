//! Support code for the codec benchmarks in `benches/codec.rs`.
//!
//! It holds [`apply_mask_wide`], a candidate replacement for `gateway::proto::mask::apply_mask`
//! that the `unmask` group measures beside the gateway's routine. It lives here, not in the
//! gateway, so it can be measured and tested against the RFC's byte-by-byte definition before
//! anyone proposes it for `proto/mask.rs`.

/// XORs `buf` with `key` as if `buf` started `offset` bytes into the masked payload; the same
/// contract as `gateway::proto::mask::apply_mask`.
///
/// The bulk goes in 64-byte blocks XORed with a 64-byte copy of the key, a shape the compiler
/// turns into whole vector registers. On x86-64 CPUs with AVX2 (checked at run time, once,
/// cached by std) the same code is compiled a second time for 32-byte registers; the build
/// itself stays at the baseline target, so the binary still runs on any x86-64.
#[inline]
pub fn apply_mask_wide(buf: &mut [u8], key: [u8; 4], offset: usize) {
    #[cfg(target_arch = "x86_64")]
    if buf.len() >= 128 && std::is_x86_feature_detected!("avx2") {
        // SAFETY: `mask_avx2` only needs the AVX2 instructions, and the CPU was just found to
        // have them.
        unsafe { mask_avx2(buf, key, offset) };
        return;
    }
    mask_blocks(buf, key, offset);
}

/// [`mask_blocks`] compiled with AVX2 enabled.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn mask_avx2(buf: &mut [u8], key: [u8; 4], offset: usize) {
    mask_blocks(buf, key, offset);
}

/// The portable body: 64-byte blocks, then 8-byte words, then single bytes.
#[inline(always)]
fn mask_blocks(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let s = offset & 3;
    let key = [key[s], key[(s + 1) & 3], key[(s + 2) & 3], key[(s + 3) & 3]];
    let k32 = u32::from_ne_bytes(key);
    let word = (u64::from(k32) << 32) | u64::from(k32);
    let mut blocks = buf.chunks_exact_mut(64);
    for block in &mut blocks {
        // Eight word XORs per block, written as words (not as a 64-byte key array) so the key is
        // broadcast in a register: a key array built byte by byte on the stack and then read
        // back as vectors stalls store forwarding, which cost ~5 ns a call at 1 KiB.
        for lane in block.chunks_exact_mut(8) {
            let v = u64::from_ne_bytes((&*lane).try_into().expect("8 bytes")) ^ word;
            lane.copy_from_slice(&v.to_ne_bytes());
        }
    }
    // Every block and word is a multiple of 4 bytes, so each tail starts at key index 0.
    let mut words = blocks.into_remainder().chunks_exact_mut(8);
    for w in &mut words {
        let v = u64::from_ne_bytes((&*w).try_into().expect("8 bytes")) ^ word;
        w.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway::proto::mask::apply_mask_bytewise;

    #[test]
    fn wide_masking_matches_bytewise_at_every_length_offset_and_alignment() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let src: Vec<u8> = (0..700u32).map(|i| (i * 7 + 3) as u8).collect();
        for align in 0..8 {
            for len in 0..(src.len() - align) {
                for offset in 0..5 {
                    let mut fast = src[align..align + len].to_vec();
                    let mut slow = fast.clone();
                    apply_mask_wide(&mut fast, key, offset);
                    apply_mask_bytewise(&mut slow, key, offset);
                    assert_eq!(fast, slow, "len {len} offset {offset} align {align}");
                }
            }
        }
    }

    #[test]
    fn portable_body_matches_bytewise_without_avx2() {
        // `apply_mask_wide` takes the AVX2 path on CPUs that have it; this pins the other one.
        let key = [1, 2, 3, 4];
        let src: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        for len in 0..src.len() {
            for offset in 0..4 {
                let mut fast = src[..len].to_vec();
                let mut slow = fast.clone();
                mask_blocks(&mut fast, key, offset);
                apply_mask_bytewise(&mut slow, key, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }
}
