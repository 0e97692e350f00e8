//! The peer's file server input: a request head, the `Range` and
//! `If-Range` it carries, and the file name in its target. Any bytes must
//! give a value or an error, and a range decision must stay inside the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2p_peer::http::handler::{decode_name, FILES_PREFIX};
use p2p_peer::http::range::{decide, parse_range, RangeDecision};
use p2p_peer::http::request::parse_head;

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes pick a file size for the range decision.
    let (size, head) = match data.split_first_chunk::<8>() {
        Some((size, rest)) => (u64::from_le_bytes(*size), rest),
        None => (0, data),
    };
    let _ = parse_range(head);
    check_decision(Some(head), None, size);

    let Ok(Some((request, used))) = parse_head(head) else {
        return;
    };
    assert!(used <= head.len());
    if let Some(encoded) = request.target.strip_prefix(FILES_PREFIX) {
        if let Ok(name) = decode_name(encoded) {
            assert!(p2p_proto::protocol::check_name(&name).is_ok());
        }
    }
    check_decision(request.range.as_deref(), request.if_range.as_deref(), size);
});

fn check_decision(range: Option<&[u8]>, if_range: Option<&[u8]>, size: u64) {
    if let RangeDecision::Partial(bytes) = decide(range, if_range, size, "\"etag\"") {
        assert!(bytes.start() <= bytes.end() && *bytes.end() < size);
    }
}
