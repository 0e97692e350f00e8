//! The one decimal parser of the wire formats (registry requests, piece
//! lists, HTTP `Content-Range`/`Content-Length`). Pure, no I/O.

/// Longest decimal that may fit a `u64` (`u64::MAX` has 20 digits).
pub const MAX_DIGITS: usize = 20;

/// Plain ASCII decimal digits that fit a `u64`: no sign, no spaces, nothing
/// `str::parse` would forgive; `None` otherwise.
pub fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > MAX_DIGITS || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_only() {
        assert_eq!(parse_decimal("0"), Some(0));
        assert_eq!(parse_decimal("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "+1",
            "-1",
            " 1",
            "1 ",
            "18446744073709551616",
            "1e3",
            "０",
        ] {
            assert_eq!(parse_decimal(bad), None, "{bad:?}");
        }
    }
}
