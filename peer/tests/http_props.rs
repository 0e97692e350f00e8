//! Property tests of the peer's HTTP parsing: request heads, `Range`
//! headers and file names from URLs. Arbitrary bytes give a value or an
//! error, never a panic; valid input parses to exactly what was written;
//! the range decision never selects a byte outside the file.
//!
//! A short run (proptest's default 256 cases per property, a few seconds)
//! is part of the normal test suite. A long run:
//! `PROPTEST_CASES=100000 cargo test --release -p p2p-peer --test http_props`.

use p2p_peer::http::handler::{decode_name, file_url, FILES_PREFIX};
use p2p_peer::http::range::{decide, parse_range, ByteRange, RangeDecision};
use p2p_peer::http::request::{parse_head, Method, ReadError, MAX_HEADERS};
use p2p_proto::protocol::check_name;
use proptest::prelude::*;

/// Bytes that look like HTTP more often than uniform noise does: request
/// words, separators, CR/LF, digits and a few bytes that must be refused.
fn http_ish_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"GET ".to_vec()),
        Just(b"HEAD ".to_vec()),
        Just(b"POST ".to_vec()),
        Just(b"/files/".to_vec()),
        Just(b" HTTP/1.1".to_vec()),
        Just(b" HTTP/1.0".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n\r\n".to_vec()),
        Just(b"Range: bytes=".to_vec()),
        Just(b"If-Range: ".to_vec()),
        Just(b"Connection: close".to_vec()),
        Just(b"Content-Length: ".to_vec()),
        Just(b"Transfer-Encoding: chunked".to_vec()),
        Just(b": ".to_vec()),
        Just(b"-".to_vec()),
        Just(b",".to_vec()),
        "[0-9]{1,25}".prop_map(String::into_bytes),
        "[a-zA-Z%]{1,8}".prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 1..4),
    ];
    proptest::collection::vec(token, 0..40).prop_map(|parts| parts.concat())
}

/// A header value that httparse accepts: visible ASCII, spaces and tabs,
/// not starting or ending with whitespace (it trims those).
fn header_value() -> impl Strategy<Value = String> {
    "[!-~]([ -~\\t]{0,30}[!-~])?"
}

/// A request target: an absolute path of visible ASCII.
fn target() -> impl Strategy<Value = String> {
    "/[!-~]{0,60}"
}

fn method() -> impl Strategy<Value = (String, Method)> {
    prop_oneof![
        Just(("GET".to_owned(), Method::Get)),
        Just(("HEAD".to_owned(), Method::Head)),
        "[A-Z]{1,10}"
            .prop_filter("not GET or HEAD", |m| m != "GET" && m != "HEAD")
            .prop_map(|m| (m.clone(), Method::Other(m))),
    ]
}

/// One valid single byte range, as a header value and as the expected parse.
fn valid_range() -> impl Strategy<Value = (String, ByteRange)> {
    let number = prop_oneof![0u64..1000, any::<u64>()];
    let spaces = "[ \\t]{0,2}";
    let unit = "[bB][yY][tT][eE][sS]";
    let spec = prop_oneof![
        (number.clone(), number.clone()).prop_map(|(a, b)| {
            let (first, last) = (a.min(b), a.max(b));
            (format!("{first}-{last}"), ByteRange::FromTo { first, last })
        }),
        number
            .clone()
            .prop_map(|first| (format!("{first}-"), ByteRange::From { first })),
        number.prop_map(|len| (format!("-{len}"), ByteRange::Suffix { len })),
    ];
    (spaces, unit, spaces, spaces, spec, spaces)
        .prop_map(|(s1, unit, s2, s3, (spec, r), s4)| (format!("{s1}{unit}{s2}={s3}{spec}{s4}"), r))
}

/// A file name that satisfies every name rule.
fn valid_name() -> impl Strategy<Value = String> {
    "[^/\\\\\\p{Cc} ]([^/\\\\\\p{Cc}]{0,40}[^/\\\\\\p{Cc} ])?"
        .prop_filter("within the rules", |n| check_name(n).is_ok())
}

proptest! {
    #[test]
    fn parse_head_never_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        if let Ok(Some((_, used))) = parse_head(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }

    #[test]
    fn parse_head_never_panics_on_http_like_bytes(bytes in http_ish_bytes()) {
        if let Ok(Some((_, used))) = parse_head(&bytes) {
            prop_assert!(used > 0 && used <= bytes.len());
        }
    }

    #[test]
    fn valid_heads_parse_to_what_was_written(
        (method_text, method) in method(),
        target in target(),
        minor in 0u8..2,
        close in any::<bool>(),
        range in proptest::option::of(header_value()),
        if_range in proptest::option::of(header_value()),
        content_length in proptest::option::of(0u32..100),
        others in proptest::collection::vec(("X-[A-Za-z]{1,10}", header_value()), 0..8),
        pipelined in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut head = format!("{method_text} {target} HTTP/1.{minor}\r\nHost: peer\r\n");
        for (name, value) in &others {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        if let Some(range) = &range {
            head.push_str(&format!("Range: {range}\r\n"));
        }
        if let Some(if_range) = &if_range {
            head.push_str(&format!("If-Range: {if_range}\r\n"));
        }
        if let Some(len) = content_length {
            head.push_str(&format!("Content-Length: {len}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.clone().into_bytes();
        bytes.extend_from_slice(&pipelined);

        let (request, used) = parse_head(&bytes)
            .map_err(|e| TestCaseError::fail(format!("{e}: {head:?}")))?
            .ok_or_else(|| TestCaseError::fail(format!("incomplete: {head:?}")))?;
        prop_assert_eq!(used, head.len(), "bytes after the head belong to the next request");
        prop_assert_eq!(request.method, method);
        prop_assert_eq!(request.target, target);
        prop_assert_eq!(request.keep_alive, !close && minor == 1);
        prop_assert_eq!(request.has_body, content_length.is_some_and(|n| n > 0));
        prop_assert_eq!(request.range, range.map(String::into_bytes));
        prop_assert_eq!(request.if_range, if_range.map(String::into_bytes));

        // The server reads heads in pieces: every strict prefix of a valid
        // head must read as "not complete yet", never as an error.
        for cut in 0..head.len() {
            prop_assert!(
                matches!(parse_head(&bytes[..cut]), Ok(None)),
                "prefix of {} bytes of {:?}", cut, head
            );
        }
    }

    #[test]
    fn too_many_headers_are_refused_not_truncated(extra in 0usize..16) {
        let fields: String = (0..MAX_HEADERS + 1 + extra)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let head = format!("GET / HTTP/1.1\r\n{fields}\r\n");
        prop_assert!(matches!(parse_head(head.as_bytes()), Err(ReadError::TooLarge)));
    }

    #[test]
    fn parse_range_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_range(&bytes);
        let mut prefixed = b"bytes=".to_vec();
        prefixed.extend_from_slice(&bytes);
        let _ = parse_range(&prefixed);
    }

    #[test]
    fn parse_range_never_panics_on_range_like_text(text in "([bB][yY][tT][eE][sS])?[ =,\\t0-9-]{0,60}") {
        let _ = parse_range(text.as_bytes());
    }

    #[test]
    fn valid_single_ranges_parse_to_their_values((text, expected) in valid_range()) {
        prop_assert_eq!(parse_range(text.as_bytes()), Some(expected), "{:?}", text);
    }

    #[test]
    fn a_range_ending_before_it_starts_is_ignored(a in any::<u64>(), b in any::<u64>()) {
        prop_assume!(a != b);
        let (first, last) = (a.max(b), a.min(b));
        prop_assert_eq!(parse_range(format!("bytes={first}-{last}").as_bytes()), None);
    }

    #[test]
    fn multiple_ranges_are_ignored(
        (a, _) in valid_range(),
        (b, _) in valid_range(),
    ) {
        let b = b.split_once('=').map_or(b.as_str(), |(_, spec)| spec).to_owned();
        let text = format!("{a},{b}");
        prop_assert_eq!(parse_range(text.as_bytes()), None, "{:?}", text);
    }

    #[test]
    fn decide_never_selects_bytes_outside_the_file(
        range in prop_oneof![
            valid_range().prop_map(|(text, _)| text.into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..40),
        ],
        size in prop_oneof![0u64..64, any::<u64>()],
        with_if_range in any::<bool>(),
    ) {
        let etag = "\"abc\"";
        let if_range = with_if_range.then_some(etag.as_bytes());
        let parsed = parse_range(&range);
        match decide(Some(&range), if_range, size, etag) {
            RangeDecision::Partial(bytes) => {
                prop_assert!(parsed.is_some());
                prop_assert!(bytes.start() <= bytes.end(), "{:?}", bytes);
                prop_assert!(*bytes.end() < size, "{:?} beyond a file of {}", bytes, size);
                if let Some(ByteRange::FromTo { first, .. } | ByteRange::From { first }) = parsed {
                    prop_assert_eq!(*bytes.start(), first);
                }
            }
            RangeDecision::Unsatisfiable => {
                prop_assert!(parsed.is_some());
                let empty_suffix = matches!(parsed, Some(ByteRange::Suffix { len: 0 }));
                let start_beyond = matches!(
                    parsed,
                    Some(ByteRange::FromTo { first, .. } | ByteRange::From { first }) if first >= size
                );
                prop_assert!(size == 0 || empty_suffix || start_beyond);
            }
            RangeDecision::Full => prop_assert!(parsed.is_none()),
        }
    }

    #[test]
    fn a_mismatched_if_range_always_gets_the_whole_file(
        (text, _) in valid_range(),
        size in any::<u64>(),
        validator in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let etag = "\"abc\"";
        prop_assume!(validator.trim_ascii() != etag.as_bytes());
        prop_assert_eq!(
            decide(Some(text.as_bytes()), Some(&validator), size, etag),
            RangeDecision::Full
        );
    }

    #[test]
    fn decode_name_never_panics_and_accepts_only_valid_names(
        encoded in prop_oneof![
            "\\PC{0,80}",
            "([%][0-9A-Fa-f]{2}|[a-z./\\\\ ]|%|%2[eEfF]|%5[cC]|%00){0,30}",
        ],
    ) {
        if let Ok(name) = decode_name(&encoded) {
            prop_assert!(check_name(&name).is_ok(), "{:?} → {:?}", encoded, name);
            prop_assert!(!name.contains(['/', '\\']));
            prop_assert!(name != "." && name != "..");
        }
    }

    #[test]
    fn decode_name_never_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let _ = decode_name(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn every_valid_name_survives_its_url(name in valid_name()) {
        let url = file_url(&name);
        let encoded = url
            .strip_prefix(FILES_PREFIX)
            .ok_or_else(|| TestCaseError::fail(format!("{url} lacks the prefix")))?;
        prop_assert!(!encoded.contains('/'), "{:?} is not one path segment", url);
        prop_assert_eq!(decode_name(encoded), Ok(name));
    }
}
