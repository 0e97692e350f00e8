//! The `p2p-dht-testnet` command line: help and a wrong node count. Being an
//! integration test of this package, it also makes `cargo test --workspace`
//! build the `p2p-dht-testnet` binary that `tests/e2e/dht.rs` starts.

use std::process::Command;

const TESTNET: &str = env!("CARGO_BIN_EXE_p2p-dht-testnet");

#[test]
fn help_names_the_node_count() {
    let out = Command::new(TESTNET).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("--nodes"), "{help}");
}

#[test]
fn a_node_count_that_is_not_a_number_is_refused() {
    let out = Command::new(TESTNET)
        .args(["--nodes", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
