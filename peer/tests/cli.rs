//! The `peer` command line itself: help with examples, usage errors.
//! (Being an integration test of this package also makes `cargo test`
//! build the `peer` binary that the end-to-end tests in `tests/` drive.)

use std::process::Command;

fn peer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(args)
        .output()
        .expect("the peer binary runs")
}

#[test]
fn help_lists_every_subcommand_with_examples() {
    let out = peer(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "serve",
        "search",
        "get",
        "register",
        "--server",
        "--shared",
        "--downloads",
    ] {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
    assert!(help.contains("Examples"), "{help}");
}

#[test]
fn a_usage_error_exits_2_with_a_message() {
    let out = peer(&["register", "x", "--port", "not-a-port"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!out.stderr.is_empty());
}
