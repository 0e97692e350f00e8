//! Lowercase hexadecimal, the system's form for digests on the wire, in
//! piece lists and in the peer's cache file. Pure functions, no I/O.

/// The two lowercase hex digits of `b`.
fn digits(b: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0x0f)]]
}

/// Appends the lowercase hex of `bytes` to `out` (the registry writes a
/// SEARCH reply's digests this way, without a `String` each).
pub fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.extend_from_slice(&digits(b));
    }
}

/// Lowercase hex of `bytes`. (On the SEARCH path: a table lookup per
/// nibble, not a formatter call per byte.)
pub fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        let [hi, lo] = digits(b);
        out.push(char::from(hi));
        out.push(char::from(lo));
    }
    out
}

/// The bytes of lowercase hex `text`; `None` for an odd length or any
/// other character (uppercase included: we only ever write lowercase).
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Exactly `N` bytes of lowercase hex (`2 * N` digits), e.g. a digest.
pub fn from_hex_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N {
        return None;
    }
    from_hex(text)?.try_into().ok()
}

fn digit(d: u8) -> Option<u8> {
    match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_we_never_write() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xab, 0xff];
        assert_eq!(to_hex(&bytes), "00017f80abff");
        assert_eq!(from_hex(&to_hex(&bytes)).unwrap(), bytes);
        assert_eq!(from_hex_array::<6>("00017f80abff"), Some(bytes));
        assert_eq!(from_hex(""), Some(vec![]));
        for bad in ["0", "AB", "+f", "0g", " 1", "é1"] {
            assert_eq!(from_hex(bad), None, "{bad:?}");
        }
        assert_eq!(from_hex_array::<2>("abcdef"), None);
    }
}
