//! The `Range` and `If-Range` request headers (RFC 9110 §14): which bytes
//! of a file a request asks for.
//!
//! Pure: bytes in, a decision out. Only a single `bytes=` range is honoured,
//! in its three forms `a-b`, `a-` and `-suffix`. A header that is malformed,
//! uses another unit, or asks for several ranges is **ignored** and the
//! whole file is sent with `200`, as RFC 9110 §14.2 allows; this keeps the
//! server free of `multipart/byteranges`, which no downloader here needs.

use std::ops::RangeInclusive;

/// What to send for a request, given the file's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeDecision {
    /// `200` with the whole file: no `Range`, an ignored one, or an
    /// `If-Range` that does not match.
    Full,
    /// `206` with these bytes (inclusive, never empty, within the file).
    Partial(RangeInclusive<u64>),
    /// `416`: a well-formed range that selects no byte of the file.
    Unsatisfiable,
}

/// One syntactically valid byte range, before it meets the file size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `a-b`: from `first` to `last` inclusive (`first <= last`).
    FromTo { first: u64, last: u64 },
    /// `a-`: from `first` to the end.
    From { first: u64 },
    /// `-n`: the last `n` bytes.
    Suffix { len: u64 },
}

/// Parses a `Range` header value. `None` when it is not exactly one
/// well-formed `bytes=` range (the header is then ignored).
///
/// Numbers too large for a `u64` saturate, so an absurd start is simply
/// unsatisfiable and an absurd end or suffix means "to the end".
pub fn parse_range(value: &[u8]) -> Option<ByteRange> {
    let value = std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']);
    let (unit, set) = value.split_once('=')?;
    if !unit
        .trim_end_matches([' ', '\t'])
        .eq_ignore_ascii_case("bytes")
    {
        return None;
    }
    let spec = set.trim_matches([' ', '\t']);
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    match (first, last) {
        ("", "") => None,
        ("", len) => Some(ByteRange::Suffix { len: digits(len)? }),
        (first, "") => Some(ByteRange::From {
            first: digits(first)?,
        }),
        (first, last) => {
            let (first, last) = (digits(first)?, digits(last)?);
            // RFC 9110 §14.1.1: last < first makes the range invalid.
            (first <= last).then_some(ByteRange::FromTo { first, last })
        }
    }
}

/// ASCII digits only, saturating at `u64::MAX`.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

impl ByteRange {
    /// The bytes this range selects from a file of `size` bytes, or `None`
    /// when it selects none (start beyond the end, empty suffix, empty file).
    pub fn resolve(self, size: u64) -> Option<RangeInclusive<u64>> {
        let end = size.checked_sub(1)?;
        match self {
            ByteRange::FromTo { first, last } => (first < size).then(|| first..=last.min(end)),
            ByteRange::From { first } => (first < size).then_some(first..=end),
            ByteRange::Suffix { len: 0 } => None,
            ByteRange::Suffix { len } => Some(size - len.min(size)..=end),
        }
    }
}

/// Decides between 200, 206 and 416 from the `Range` and `If-Range`
/// headers, the file's size and its entity tag (quoted, as sent in `ETag`).
///
/// `If-Range` is honoured by strong comparison with the current entity tag
/// only; a date or a weak tag never matches, so the client gets the whole
/// (possibly changed) file rather than a piece of the wrong version.
pub fn decide(
    range: Option<&[u8]>,
    if_range: Option<&[u8]>,
    size: u64,
    etag: &str,
) -> RangeDecision {
    let Some(range) = range.and_then(parse_range) else {
        return RangeDecision::Full;
    };
    if let Some(validator) = if_range {
        if validator.trim_ascii() != etag.as_bytes() {
            return RangeDecision::Full;
        }
    }
    match range.resolve(size) {
        Some(bytes) => RangeDecision::Partial(bytes),
        None => RangeDecision::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETAG: &str = "\"abc\"";

    fn d(range: &str, size: u64) -> RangeDecision {
        decide(Some(range.as_bytes()), None, size, ETAG)
    }

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            parse_range(b"bytes=0-9"),
            Some(ByteRange::FromTo { first: 0, last: 9 })
        );
        assert_eq!(parse_range(b"bytes=5-"), Some(ByteRange::From { first: 5 }));
        assert_eq!(parse_range(b"bytes=-3"), Some(ByteRange::Suffix { len: 3 }));
        assert_eq!(
            parse_range(b" Bytes = 1-1 "),
            Some(ByteRange::FromTo { first: 1, last: 1 })
        );
        assert_eq!(
            parse_range(b"bytes=99999999999999999999999-"),
            Some(ByteRange::From { first: u64::MAX })
        );
    }

    #[test]
    fn malformed_and_multi_ranges_are_ignored() {
        for bad in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=1-a",
            "bytes=+1-2",
            "bytes=5-4",
            "bytes=0-1,3-4",
            "bytes=0-1,",
            "items=0-1",
            "bytes=0 -1",
            "bytes=1--2",
            "bytes=--1",
            "bytes=0x1-2",
        ] {
            assert_eq!(parse_range(bad.as_bytes()), None, "{bad:?}");
            assert_eq!(d(bad, 10), RangeDecision::Full, "{bad:?}");
        }
        assert_eq!(parse_range(b"bytes=\xff-1"), None);
    }

    #[test]
    fn resolves_against_the_size() {
        assert_eq!(d("bytes=0-9", 10), RangeDecision::Partial(0..=9));
        assert_eq!(d("bytes=0-0", 10), RangeDecision::Partial(0..=0));
        assert_eq!(d("bytes=2-100", 10), RangeDecision::Partial(2..=9));
        assert_eq!(d("bytes=9-", 10), RangeDecision::Partial(9..=9));
        assert_eq!(d("bytes=-3", 10), RangeDecision::Partial(7..=9));
        assert_eq!(d("bytes=-30", 10), RangeDecision::Partial(0..=9));
        assert_eq!(
            d("bytes=0-99999999999999999999999", 10),
            RangeDecision::Partial(0..=9)
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(d("bytes=10-", 10), RangeDecision::Unsatisfiable);
        assert_eq!(d("bytes=10-20", 10), RangeDecision::Unsatisfiable);
        assert_eq!(d("bytes=-0", 10), RangeDecision::Unsatisfiable);
        assert_eq!(d("bytes=0-", 0), RangeDecision::Unsatisfiable);
        assert_eq!(d("bytes=-5", 0), RangeDecision::Unsatisfiable);
    }

    #[test]
    fn if_range_needs_the_current_strong_etag() {
        let range = Some(&b"bytes=1-2"[..]);
        assert_eq!(
            decide(range, Some(b"\"abc\""), 10, ETAG),
            RangeDecision::Partial(1..=2)
        );
        for other in [
            &b"\"old\""[..],
            b"W/\"abc\"",
            b"Wed, 21 Oct 2015 07:28:00 GMT",
            b"abc",
        ] {
            assert_eq!(decide(range, Some(other), 10, ETAG), RangeDecision::Full);
        }
        // If-Range without Range means nothing.
        assert_eq!(
            decide(None, Some(b"\"abc\""), 10, ETAG),
            RangeDecision::Full
        );
    }
}
