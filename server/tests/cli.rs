//! The `dht-server` command line as a user meets it: help, version and a
//! wrong option. Being an integration test of this package, it also makes
//! `cargo test --workspace` build the `dht-server` binary that the
//! end-to-end suites in `tests/` start.

use std::process::Command;

const DHT_SERVER: &str = env!("CARGO_BIN_EXE_dht-server");

#[test]
fn help_names_the_contract_options() {
    let out = Command::new(DHT_SERVER).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for option in [
        "--db",
        "--listen",
        "--workers",
        "--ttl",
        "--http",
        "--no-mdns",
    ] {
        assert!(help.contains(option), "--help lacks {option}:\n{help}");
    }
}

#[test]
fn a_wrong_option_is_refused_with_status_2() {
    let out = Command::new(DHT_SERVER)
        .arg("--no-such-option")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--no-such-option"), "{err}");
}
