//! Property tests of the protocol parser: arbitrary input yields a value or
//! an error, never a panic, and every valid request survives
//! format-then-parse unchanged. A short run is part of the normal test suite;
//! `PROPTEST_CASES=100000 cargo test -p p2p-proto --test protocol_props`
//! runs a long one.

use p2p_proto::protocol::{
    self, parse_find_hit, parse_request, parse_source, parse_status, Request,
};
use proptest::prelude::*;

/// A name that satisfies every rule (the generator builds only valid ones).
fn valid_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9éü_.-][a-zA-Z0-9 éü_.()-]{0,40}[a-zA-Z0-9éü_.-]"
        .prop_filter("not . or ..", |n| n != "." && n != "..")
}

fn hash() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}"
}

fn word() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9é]{1,10}"
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(line in "\\PC{0,300}") {
        let _ = parse_request(&line);
        let _ = parse_status(&line);
        let _ = parse_source(&line);
        let _ = parse_find_hit(&line);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_request(&text);
        let _ = protocol::check_name(&text);
    }

    #[test]
    fn lines_with_a_command_word_never_panic(
        word in "(?i)(register|unregister|search|find|heartbeat|ping|quit)",
        rest in "[ -~\\t\\x00]{0,120}",
    ) {
        let _ = parse_request(&format!("{word} {rest}"));
        let _ = parse_request(&format!("{word}{rest}"));
    }

    #[test]
    fn register_round_trips(port in 1u16.., size in 0..=protocol::MAX_SIZE, sha in hash(), name in valid_name()) {
        let request = Request::Register { port, size, sha256: &sha, name: &name };
        let mut line = String::new();
        request.write_line(&mut line);
        prop_assert_eq!(parse_request(line.trim_end_matches('\n')), Ok(request));
    }

    #[test]
    fn other_requests_round_trip(port in 1u16.., name in valid_name(), words in proptest::collection::vec(word(), 1..5)) {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        for request in [
            Request::Unregister { port, name: &name },
            Request::Search { name: &name },
            Request::Find { words: words.clone() },
            Request::Heartbeat { port },
        ] {
            let mut line = String::new();
            request.write_line(&mut line);
            prop_assert_eq!(parse_request(line.trim_end_matches('\n')), Ok(request));
        }
    }
}
