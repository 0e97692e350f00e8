//! Benchmarks of the p2p file sharing system: a load generator for the
//! registry that drives the baselines with the same client, and the
//! line-echo baseline server. Run them through `bench/run`; the method and
//! the figures are in `BENCHMARKS.md`. Nothing here is part of `cargo test`'s
//! timing: the unit tests check parsing only.
//!
//! # Layout
//! - [`workload`]: the operation mix, the deterministic names and registrations, a fast RNG.
//! - [`target`]: one connection to the registry (through `p2p_proto::client`), an echo server or Redis.
//! - [`resp`]: just enough RESP to read Redis's replies.
//! - [`preload`]: pipelined registrations before a measurement.
//! - [`load`]: the coordinator and the connection threads; latency histograms.
//! - [`echo`]: the echo server, thread per connection or poller + hand-off to a pool.
//!
//! Binaries: `dht-bench` (load generator) and `echo-server`.

pub mod echo;
pub mod load;
pub mod preload;
pub mod resp;
pub mod target;
pub mod workload;
