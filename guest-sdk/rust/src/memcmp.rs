//! `memcmp` and `bcmp` for plugins, eight bytes at a time.
//!
//! Rust's `wasm32-unknown-unknown` standard library compares memory one byte
//! per loop iteration (WebAssembly has no instruction for it), and string
//! comparisons go through it: `BTreeMap<String, _>` lookups, `==` on stream
//! names, serde matching variant names. In a projection keyed by stream that
//! loop was ~40% of the fold. The definitions below are strong symbols, so they
//! replace the library's weak ones in every plugin built with this crate.

use core::cmp::Ordering;

/// Compares two byte strings of equal length as unsigned bytes, the first
/// difference deciding, as `memcmp` does.
///
/// Never calls `memcmp` itself (slices' own `cmp` would): the tail is compared
/// byte by byte.
fn compare(a: &[u8], b: &[u8]) -> Ordering {
    debug_assert_eq!(a.len(), b.len());
    let (a_words, a_tail) = a.as_chunks::<8>();
    let (b_words, b_tail) = b.as_chunks::<8>();
    for (x, y) in a_words.iter().zip(b_words) {
        if x != y {
            // Big-endian numbers order as their bytes do.
            return u64::from_be_bytes(*x).cmp(&u64::from_be_bytes(*y));
        }
    }
    for (x, y) in a_tail.iter().zip(b_tail) {
        if x != y {
            return x.cmp(y);
        }
    }
    Ordering::Equal
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
    compare(a, b) as i32
}

/// `bcmp(a, b, len)`: zero when the bytes are equal (what `==` compiles to).
///
/// # Safety
/// As [`memcmp`].
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, len: usize) -> i32 {
    // SAFETY: the caller's contract, passed on.
    unsafe { memcmp(a, b, len) }
}

#[cfg(test)]
mod tests {
    use super::compare;

    /// Agrees with the standard library's comparison on every length from 0 to
    /// 20 with the difference at every position, either way round.
    #[test]
    fn orders_as_bytes_do() {
        for len in 0..=20 {
            let base: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(compare(&base, &base), base.cmp(&base));
            for at in 0..len {
                for delta in [1u8, 0x80, 0xff] {
                    let mut other = base.clone();
                    other[at] = other[at].wrapping_add(delta);
                    assert_eq!(
                        compare(&base, &other),
                        base.cmp(&other),
                        "{len} {at} {delta}"
                    );
                    assert_eq!(
                        compare(&other, &base),
                        other.cmp(&base),
                        "{len} {at} {delta}"
                    );
                }
            }
        }
    }
}
