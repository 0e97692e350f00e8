//! The registry's request line parser and name rules, and the reply lines
//! a client parses: any bytes give a value or an error, never a panic.
#![no_main]

use p2p_proto::protocol::{check_name, parse_find_hit, parse_request, parse_source, parse_status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        // The server refuses invalid UTF-8 before parsing; the lossy text
        // still exercises the parser on the replacement character.
        let _ = parse_request(&String::from_utf8_lossy(data));
        return;
    };
    let _ = parse_request(line);
    let _ = check_name(line);
    let _ = parse_status(line);
    let _ = parse_source(line);
    let _ = parse_find_hit(line);
});
