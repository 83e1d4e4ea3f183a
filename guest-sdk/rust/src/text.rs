//! UTF-8 checks that are quick for ASCII, for the SDK and for plugins.

use crate::words::{half, word};

/// `bytes` as text, or `None` if they are not UTF-8.
#[inline]
pub(crate) fn utf8(bytes: &[u8]) -> Option<&str> {
    from_utf8(bytes).ok()
}

/// [`std::str::from_utf8`], quick for ASCII: the same answer, errors included.
///
/// Nearly all names, keys and JSON payloads are ASCII, which this checks in a
/// fraction of the time `std::str::from_utf8` takes in wasm (a byte-at-a-time
/// state machine for short strings: ~220 instructions for a 10-byte date
/// against ~20), before falling back to it.
#[inline]
pub fn from_utf8(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if is_ascii(bytes) {
        // SAFETY: ASCII is UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes)
}

/// Whether `bytes` are ASCII. Strings of 4 to 16 bytes (an event type, a small
/// payload such as `{"amount":42}`) are checked as two overlapping words,
/// without the loop `<[u8]>::is_ascii` runs over 4-byte words in wasm32; the
/// rest go to it.
#[inline]
fn is_ascii(bytes: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let len = bytes.len();
    match len {
        4..8 => (half(bytes, 0) | half(bytes, len - 4)) & HIGH == 0,
        8..=16 => (word(bytes, 0) | word(bytes, len - 8)) & HIGH == 0,
        _ => bytes.is_ascii(),
    }
}

#[cfg(test)]
mod tests {
    use super::{from_utf8, is_ascii, utf8};

    /// Agrees with the standard library on every length from 0 to 24 with one
    /// byte outside ASCII at every position.
    #[test]
    fn ascii_as_the_standard_library_says() {
        for len in 0..=24 {
            let ascii: Vec<u8> = (0..len as u8).map(|i| b'a' + i).collect();
            assert!(is_ascii(&ascii), "{len}");
            assert_eq!(utf8(&ascii), std::str::from_utf8(&ascii).ok());
            assert_eq!(from_utf8(&ascii), Ok(std::str::from_utf8(&ascii).unwrap()));
            for at in 0..len {
                for high in [0x80, 0xc3, 0xff] {
                    let mut bytes = ascii.clone();
                    bytes[at] = high;
                    assert!(!is_ascii(&bytes), "{len} {at} {high}");
                    assert_eq!(utf8(&bytes), std::str::from_utf8(&bytes).ok());
                    assert_eq!(from_utf8(&bytes), std::str::from_utf8(&bytes));
                }
            }
        }
        assert_eq!(utf8("bank-account-é".as_bytes()), Some("bank-account-é"));
        assert_eq!(from_utf8("bank-account-é".as_bytes()), Ok("bank-account-é"));
    }
}
