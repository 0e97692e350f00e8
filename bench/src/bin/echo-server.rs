//! `echo-server`: the line-echo baseline of the benchmarks. Prints
//! `listening on HOST:PORT` once it accepts connections and runs until killed.

use std::io::Write as _;
use std::net::TcpListener;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use p2p_bench::echo;

/// A line-echo server: each line a client sends comes straight back. The
/// benchmarks' floor for one-line request/reply (see BENCHMARKS.md).
#[derive(Debug, Parser)]
#[command(
    name = "echo-server",
    after_help = "Examples:\n  \
      echo-server --listen 127.0.0.1:0              # thread per connection\n  \
      echo-server --listen 127.0.0.1:0 --handoff    # poller + worker pool"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: String,
    /// Park connections in a poller (epoll) and hand each readable one
    /// through a channel to a worker pool, instead of a thread per connection.
    #[arg(long)]
    handoff: bool,
    /// Worker threads of the --handoff pool.
    #[arg(long, value_name = "N", default_value_t = echo::DEFAULT_HANDOFF_WORKERS)]
    workers: usize,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {addr}").context("writing to stdout")?;
    stdout.flush().context("writing to stdout")?;
    drop(stdout);
    if args.handoff {
        echo::serve_handoff(listener, args.workers).context("serving")
    } else {
        echo::serve_threaded(listener).context("serving")
    }
}
