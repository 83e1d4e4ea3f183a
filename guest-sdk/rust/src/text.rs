//! UTF-8 checks that are quick for ASCII.

/// `bytes` as text, or `None` if they are not UTF-8.
///
/// Nearly all names and JSON payloads are ASCII, which `is_ascii` checks in a
/// fraction of the time `from_utf8` takes in wasm (a byte-at-a-time state
/// machine for short strings).
#[inline]
pub(crate) fn utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).ok()
}
