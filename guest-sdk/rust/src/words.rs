//! Byte strings read as little-endian numbers: a plain unaligned load in wasm, so
//! short strings are checked and compared a word at a time instead of a byte at a
//! time (see `memcmp` and `text`).

/// The eight bytes at `at` as a little-endian number.
#[inline(always)]
pub(crate) fn word(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The four bytes at `at` as a little-endian number.
#[inline(always)]
pub(crate) fn half(bytes: &[u8], at: usize) -> u64 {
    let mut half = [0; 4];
    half.copy_from_slice(&bytes[at..at + 4]);
    u64::from(u32::from_le_bytes(half))
}
