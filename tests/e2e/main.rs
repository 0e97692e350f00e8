//! The end-to-end tests: the real `dht-server`, `peer` and `p2p-admin`
//! (and `p2p-dht-testnet`) driven together over loopback, one module per
//! subject.
//!
//! They are one test binary, not one per file: cargo links each binary
//! separately and runs the binaries one after another, so 23 binaries cost
//! 23 links and leave a core idle whenever one binary's slowest test runs
//! alone. Run one subject with `cargo test --test e2e registry_abuse::`, one
//! test with `cargo test --test e2e registry_abuse::a_dead_writer`.
//!
//! Shared helpers live in `tests/support` (the `p2p_tests` library); what
//! only the UI tests share, in [`ui_common`].

mod admin;
mod contract_v2;
mod contract_v2_find;
mod dht;
mod discovery;
mod download_trust;
mod find_batch;
mod live_share;
mod menu;
mod multi_source;
mod peer_e2e;
mod peer_flood;
mod peer_http;
mod peer_safety;
mod peer_slots;
mod registry;
mod registry_abuse;
mod registry_durability;
mod registry_engine;
mod registry_http;
mod registry_migration;
mod registry_pipeline;
mod reliability;
mod ui_api;
mod ui_browser;
mod ui_common;
