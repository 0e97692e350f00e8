//! The `peer` binary: parses the command line and hands each mode to the
//! library. Errors become one line on stderr and an exit status
//! (0 success, 1 no source for the name, 2 any other failure).

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
mod cli;

use cli::{Cli, Command, EXIT_FAILURE, EXIT_NOT_FOUND};
use p2p_peer::config::PeerConfig;
use p2p_peer::dht;
use p2p_peer::download::{self, DownloadError};
use p2p_peer::menu::{self, Console};
use p2p_peer::progress::Reporter;
use p2p_peer::{files::SharedDir, registration, serve};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(io::stderr(), "peer: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Warnings (registry down, files skipped) go to stderr; `RUST_LOG` shows more.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_target(false)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let reporter = Reporter::auto();
    let common = cli.common.config();
    match cli.command {
        None => {
            let stdin = io::stdin();
            let terminal = stdin.is_terminal();
            let mut input = stdin.lock();
            let mut output = io::stdout();
            let mut console = Console::new(&mut input, &mut output, terminal);
            menu::run(&common, &mut console, &reporter).context("menu")?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Serve) => {
            serve::run(&common, &reporter)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Search { name }) => search(&common, &name),
        Some(Command::Get { name, sha256 }) => get(&common, &name, sha256, &reporter),
        Some(Command::Register { name }) => register(&common, &name, &reporter),
    }
}

fn search(common: &PeerConfig, name: &str) -> anyhow::Result<ExitCode> {
    if common.dht.is_some() {
        return dht_search(common, name);
    }
    let sources = match download::search(&common.server, name) {
        Ok(sources) => sources,
        Err(e) => return not_found_or(e),
    };
    let mut out = io::stdout().lock();
    for source in &sources {
        writeln!(
            out,
            "{} {} {}",
            download::printable(&source.addr()),
            source.size,
            source.sha256
        )
        .context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn get(
    common: &PeerConfig,
    name: &str,
    sha256: Option<[u8; 32]>,
    reporter: &Reporter,
) -> anyhow::Result<ExitCode> {
    let options = download::Options {
        sha256,
        ..common.download
    };
    if common.dht.is_some() {
        return dht_get(common, name, &options, reporter);
    }
    match download::download(&common.server, name, &common.downloads, &options, reporter) {
        Ok(outcome) => {
            reporter.note(menu::describe(&outcome));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => not_found_or(e),
    }
}

/// `search --dht`: the registry's and the DHT's sources, merged, grouped by content.
fn dht_search(common: &PeerConfig, name: &str) -> anyhow::Result<ExitCode> {
    let sources = match dht::search(common, name) {
        Ok(sources) => sources,
        Err(e) => return dht_not_found_or(e),
    };
    let mut out = io::stdout().lock();
    for source in &sources {
        writeln!(out, "{} {} {}", source.addr(), source.size, source.sha256)
            .context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// `get --dht`: the same sources, then the usual verified download.
fn dht_get(
    common: &PeerConfig,
    name: &str,
    options: &download::Options,
    reporter: &Reporter,
) -> anyhow::Result<ExitCode> {
    let sources = match dht::search(common, name) {
        Ok(sources) => sources,
        Err(e) => return dht_not_found_or(e),
    };
    match download::download_from(&sources, name, &common.downloads, options, reporter) {
        Ok(outcome) => {
            reporter.note(menu::describe(&outcome));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => not_found_or(e),
    }
}

/// Like [`not_found_or`], for a `--dht` search.
fn dht_not_found_or(e: dht::SearchError) -> anyhow::Result<ExitCode> {
    if e.is_not_found() {
        let _ = writeln!(io::stderr(), "peer: {e}");
        return Ok(ExitCode::from(EXIT_NOT_FOUND));
    }
    Err(e.into())
}

/// "No source" is exit 1 with its line; anything else is a failure.
fn not_found_or(e: DownloadError) -> anyhow::Result<ExitCode> {
    if e.is_not_found() {
        let _ = writeln!(io::stderr(), "peer: {e}");
        return Ok(ExitCode::from(EXIT_NOT_FOUND));
    }
    Err(e.into())
}

fn register(common: &PeerConfig, name: &str, reporter: &Reporter) -> anyhow::Result<ExitCode> {
    let port = match common.port {
        Some(port) if port != 0 => port,
        _ => {
            anyhow::bail!("register needs --port N: the port (1-65535) your file server listens on")
        }
    };
    let shared = SharedDir::open(&common.shared)?;
    let registration = registration::register_one(&common.server, shared, port, name, reporter)?;
    reporter.note(format_args!(
        "registered {name} for port {port} ({} bytes, sha256 {})",
        registration.size,
        registration.short_sha()
    ));
    Ok(ExitCode::SUCCESS)
}
