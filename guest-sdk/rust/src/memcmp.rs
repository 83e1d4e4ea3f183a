//! `memcmp` and `bcmp` for plugins, eight bytes at a time.
//!
//! Rust's `wasm32-unknown-unknown` standard library compares memory one byte
//! per loop iteration (WebAssembly has no instruction for it), and string
//! comparisons go through it: `BTreeMap<String, _>` lookups, `==` on stream
//! names, serde matching variant names. In a projection keyed by stream that
//! loop was ~40% of the fold. The definitions below are strong symbols, so they
//! replace the library's weak ones in every plugin built with this crate.
//!
//! Both read words as little-endian numbers (a plain unaligned load in wasm)
//! and compare those, covering a tail shorter than a word with one more word
//! that overlaps bytes already compared, instead of a byte loop (names such as
//! `bank-account-123` end in one). `memcmp` orders two differing words by their
//! first differing byte, found with a count of trailing zeros: wasm has that
//! instruction but no byte swap, whose expansion (to compare the words as
//! big-endian numbers) cost a string comparison about half its instructions.
//! Neither compares arrays or slices with `==` or `cmp`, which would call
//! `bcmp` or `memcmp` again.

use crate::words::{half, word};

/// How little-endian words `x` and `y` order as bytes in memory, as `memcmp`
/// answers (only the sign counts): the difference of their lowest differing
/// byte, the first in memory.
#[inline(always)]
fn difference(x: u64, y: u64) -> i32 {
    let shift = (x ^ y).trailing_zeros() & !7;
    i32::from((x >> shift) as u8) - i32::from((y >> shift) as u8)
}

/// Strings longer than this are compared in a loop, in a function of its own.
const SHORT: usize = 16;

/// Calls `differ` on the words covering `a` and `b` (of equal length, at most
/// [`SHORT`]), in memory order, until it answers `Some`: straight-line code,
/// two words overlapping where the string is shorter than both (bytes found
/// equal already cannot change the answer), and for fewer than 4 bytes one
/// number made of the first, middle and last byte. Keys such as
/// `bank-account-123` take this path, and a call without a loop is a short
/// one in wasm: no epoch check at a loop header, fewer registers to save.
#[inline(always)]
fn first_difference<T>(a: &[u8], b: &[u8], differ: impl Fn(u64, u64) -> Option<T>) -> Option<T> {
    let len = a.len().min(b.len());
    let (a, b) = (&a[..len], &b[..len]);
    match len {
        0 => None,
        1..4 => {
            // The first, middle and last byte (all of them, some twice) as a little-endian
            // number, in memory order.
            let bytes = |s: &[u8]| {
                u64::from(s[0]) | u64::from(s[len / 2]) << 8 | u64::from(s[len - 1]) << 16
            };
            differ(bytes(a), bytes(b))
        }
        4..8 => {
            differ(half(a, 0), half(b, 0)).or_else(|| differ(half(a, len - 4), half(b, len - 4)))
        }
        _ => differ(word(a, 0), word(b, 0)).or_else(|| differ(word(a, len - 8), word(b, len - 8))),
    }
}

/// [`first_difference`] for strings of 8 bytes or more: whole words from the start,
/// then the last eight bytes.
#[inline(always)]
fn first_long_difference<T>(
    a: &[u8],
    b: &[u8],
    differ: impl Fn(u64, u64) -> Option<T>,
) -> Option<T> {
    let len = a.len();
    let mut at = 0;
    while at + 8 <= len {
        if let Some(answer) = differ(word(a, at), word(b, at)) {
            return Some(answer);
        }
        at += 8;
    }
    if at < len {
        return differ(word(a, len - 8), word(b, len - 8));
    }
    None
}

/// Compares two byte strings of equal length as unsigned bytes, the first
/// difference deciding: negative, zero or positive, as `memcmp` answers.
#[inline(always)]
fn compare(a: &[u8], b: &[u8]) -> i32 {
    debug_assert_eq!(a.len(), b.len());
    if a.len() > SHORT {
        return compare_long(a, b);
    }
    first_difference(a, b, |x, y| (x != y).then(|| difference(x, y))).unwrap_or(0)
}

/// [`compare`] for strings longer than [`SHORT`], kept out of line: a loop in
/// the short path's function would cost every call its registers and checks.
#[inline(never)]
fn compare_long(a: &[u8], b: &[u8]) -> i32 {
    first_long_difference(a, b, |x, y| (x != y).then(|| difference(x, y))).unwrap_or(0)
}

/// Whether two byte strings of equal length hold the same bytes.
#[inline(always)]
fn equal(a: &[u8], b: &[u8]) -> bool {
    debug_assert_eq!(a.len(), b.len());
    if a.len() > SHORT {
        return equal_long(a, b);
    }
    first_difference(a, b, |x, y| (x != y).then_some(())).is_none()
}

/// [`equal`] for strings longer than [`SHORT`], kept out of line as
/// [`compare_long`] is.
#[inline(never)]
fn equal_long(a: &[u8], b: &[u8]) -> bool {
    first_long_difference(a, b, |x, y| (x != y).then_some(())).is_none()
}

/// `memcmp(a, b, len)`: negative, zero or positive as `a` orders before, with
/// or after `b`.
///
/// # Safety
/// `a` and `b` must each be valid for reads of `len` bytes.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, len: usize) -> i32 {
    if len == 0 {
        return 0;
    }
    // SAFETY: the caller's contract; `len > 0`, so the pointers are not dangling.
    let (a, b) = unsafe {
        (
            core::slice::from_raw_parts(a, len),
            core::slice::from_raw_parts(b, len),
        )
    };
    compare(a, b)
}

/// `bcmp(a, b, len)`: zero when the bytes are equal (what `==` compiles to).
///
/// # Safety
/// As [`memcmp`].
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, len: usize) -> i32 {
    if len == 0 {
        return 0;
    }
    // SAFETY: the caller's contract; `len > 0`, so the pointers are not dangling.
    let (a, b) = unsafe {
        (
            core::slice::from_raw_parts(a, len),
            core::slice::from_raw_parts(b, len),
        )
    };
    i32::from(!equal(a, b))
}

#[cfg(test)]
mod tests {
    use super::{compare, equal};

    /// Agree with the standard library's comparisons on every length from 0 to
    /// 40 (the short paths and the loop) with the difference at every position,
    /// either way round.
    #[test]
    fn order_and_equality_as_bytes_do() {
        for len in 0..=40 {
            let base: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(compare(&base, &base), 0);
            assert!(equal(&base, &base));
            for at in 0..len {
                for delta in [1u8, 0x80, 0xff] {
                    let mut other = base.clone();
                    other[at] = other[at].wrapping_add(delta);
                    let case = format!("{len} {at} {delta}");
                    assert_eq!(compare(&base, &other).cmp(&0), base.cmp(&other), "{case}");
                    assert_eq!(compare(&other, &base).cmp(&0), other.cmp(&base), "{case}");
                    assert!(!equal(&base, &other), "{case}");
                    assert!(!equal(&other, &base), "{case}");
                }
                // A later byte differing too must not decide.
                for (first, next) in [(1u8, 0xffu8), (0x80, 1), (0x80, 0x7f), (0xff, 0x80)] {
                    if at + 1 < len {
                        let mut other = base.clone();
                        other[at] = other[at].wrapping_add(first);
                        other[at + 1] = other[at + 1].wrapping_add(next);
                        let case = format!("{len} {at} {first} then {next}");
                        assert_eq!(compare(&base, &other).cmp(&0), base.cmp(&other), "{case}");
                        assert_eq!(compare(&other, &base).cmp(&0), other.cmp(&base), "{case}");
                    }
                }
            }
        }
    }
}
