//! The `p2p-admin` command line itself: help with examples, usage errors.
//! (Being an integration test of this package also makes `cargo test`
//! build the `p2p-admin` binary that the end-to-end tests in `tests/` drive.)

use std::process::Command;

fn admin(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_p2p-admin"))
        .args(args)
        .output()
        .expect("the p2p-admin binary runs")
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    for sub in ["list", "prune", "export", "stats"] {
        let out = admin(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help failed");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("p2p-admin "),
            "{sub} --help has no example:\n{help}"
        );
    }
}

#[test]
fn a_malformed_peer_is_a_usage_error() {
    let out = admin(&["prune", "--peer", "localhost"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("localhost"));
}
