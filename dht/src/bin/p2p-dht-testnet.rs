//! `p2p-dht-testnet --nodes N`: N Mainline DHT nodes on 127.0.0.1 for tests,
//! benchmarks and demos. Prints one line `bootstrap 127.0.0.1:PORT` per node
//! once all of them accept requests, then runs until SIGINT/SIGTERM (exit 0).

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use p2p_dht::{LocalTestnet, MAX_TESTNET_NODES};

/// N BitTorrent Mainline DHT nodes on 127.0.0.1 that know each other.
#[derive(Debug, Parser)]
#[command(
    name = "p2p-dht-testnet",
    version,
    after_help = "Example:\n  p2p-dht-testnet --nodes 20   # then: peer serve --dht --bootstrap 127.0.0.1:PORT"
)]
struct Args {
    /// Number of nodes (1 to 1000)
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u16).range(1..=MAX_TESTNET_NODES as i64))]
    nodes: u16,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2p-dht-testnet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let (stop_tx, stop) = crossbeam_channel::bounded(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })
    .context("cannot handle SIGINT/SIGTERM")?;
    let testnet = LocalTestnet::start(usize::from(args.nodes))?;
    let mut out = std::io::stdout().lock();
    for addr in testnet.addrs() {
        writeln!(out, "bootstrap {addr}").context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    drop(out);
    // A signal, or the handler gone: either way, stop.
    let _ = stop.recv();
    drop(testnet);
    Ok(())
}
