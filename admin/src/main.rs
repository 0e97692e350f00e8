//! `p2p-admin`: the command line. Parses arguments with clap, calls one
//! function of the `p2p_admin` library, and maps the outcome to an exit
//! code: 0 done, 1 the command failed, 2 the command line was wrong.

use std::io::{self, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgGroup, Parser, Subcommand};
use dht_server::store::admin::PeerAddr;
use p2p_admin::export::ExportOptions;
use p2p_admin::list::ListOptions;
use p2p_admin::peer::parse_peer;
use p2p_admin::prune::{PruneOptions, PruneTarget};
use p2p_admin::render::Format;
use p2p_admin::stats::StatsFormat;
use p2p_admin::{AdminError, Settings, DEFAULT_DB};

/// Exit code of a command line clap rejects (clap's own choice too).
const EXIT_USAGE: u8 = 2;
/// Exit code of a command that failed: database missing, corrupt, busy; output unwritable.
const EXIT_FAILED: u8 = 1;

const MAIN_HELP: &str = "\
Examples:
  p2p-admin list                              who shares what
  p2p-admin list --name report --live         live sources of names containing \"report\"
  p2p-admin prune --peer 10.0.0.5:9000        remove a departed peer
  p2p-admin prune --stale 2h --dry-run        show what has not been seen for 2 hours
  p2p-admin export --format csv -o reg.csv    hand the registry to a spreadsheet
  p2p-admin --db /var/lib/p2p/registry.db stats

Works while dht-server runs on the same database. Peers are HOST:PORT as the
registry saw them: 10.0.0.5:9000, or [::1]:9000 for IPv6.

Exit status: 0 done; 1 the command failed (database missing, not SQLite, of
another schema version, busy; output not writable); 2 bad command line.";

/// The operator's tool over the registry database of dht-server.
#[derive(Debug, Parser)]
#[command(name = "p2p-admin", version, after_help = MAIN_HELP)]
struct Cli {
    /// The registry database (dht-server's --db). Never created: a missing file is an error.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_DB, global = true)]
    db: String,

    /// How long a registration lives without a heartbeat; give the server's --ttl.
    /// Only decides which rows are shown as live or expired.
    #[arg(long, value_name = "DURATION", default_value = "150s", value_parser = parse_duration, global = true)]
    ttl: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show registrations: name, size, hash, peer, when registered and last seen, live or expired.
    #[command(after_help = "\
Examples:
  p2p-admin list
  p2p-admin list --peer 10.0.0.5:9000
  p2p-admin list --peer [::1]:9000 --live
  p2p-admin list --name \"holiday photos\" --limit 20
  p2p-admin list --format csv > registrations.csv

Sorted by name, then peer. Times in the table are relative (3m ago); CSV and
JSON carry RFC 3339 UTC times and the full SHA-256.")]
    List {
        /// Only this peer's registrations (HOST:PORT).
        #[arg(long, value_name = "HOST:PORT", value_parser = parse_peer_arg)]
        peer: Option<PeerAddr>,
        /// Only names containing TEXT (ASCII letters match either case).
        #[arg(long, value_name = "TEXT")]
        name: Option<String>,
        /// Only live registrations (seen within --ttl).
        #[arg(long)]
        live: bool,
        /// Show at most N rows.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },

    /// Remove every registration of a peer, or those not seen for a while.
    #[command(
        group(ArgGroup::new("target").required(true).args(["peer", "stale"])),
        after_help = "\
Examples:
  p2p-admin prune --peer 10.0.0.5:9000 --dry-run    show what would go
  p2p-admin prune --peer 10.0.0.5:9000
  p2p-admin prune --peer [2001:db8::7]:9000
  p2p-admin prune --stale 7d

One transaction: all of it or nothing. Files and peers left without any
registration go too. Prints what it removed and how many; with --format
csv|json|jsonl the count goes to stderr. A running server keeps serving;
a pruned peer that is still alive reappears when it registers again."
    )]
    Prune {
        /// Remove every registration of this peer (HOST:PORT).
        #[arg(long, value_name = "HOST:PORT", value_parser = parse_peer_arg)]
        peer: Option<PeerAddr>,
        /// Remove registrations not seen (registered or heartbeat) for DURATION: 90s, 30m, 2h, 7d.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        stale: Option<Duration>,
        /// Show what would be removed; change nothing (opens the database read-only).
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },

    /// Write the whole registry, streamed row by row, to stdout or a file.
    #[command(after_help = "\
Examples:
  p2p-admin export -o registry.csv
  p2p-admin export --format json -o registry.json
  p2p-admin export --format jsonl | grep '\"live\":false'

Columns: name, size, sha256, peer, registered_at, last_seen, live. With -o
the file is written beside FILE under a temporary name and renamed when
complete, so FILE is either the old file or the whole new export.")]
    Export {
        #[arg(long, value_enum, default_value_t = Format::Csv)]
        format: Format,
        /// Write to FILE instead of stdout.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },

    /// Count files, peers and registrations; database size; heartbeats; most shared names.
    #[command(after_help = "\
Examples:
  p2p-admin stats
  p2p-admin --ttl 10m stats --format json")]
    Stats {
        #[arg(long, value_enum, default_value_t = StatsFormat::Table)]
        format: StatsFormat,
    },
}

fn parse_peer_arg(input: &str) -> Result<PeerAddr, String> {
    parse_peer(input).map_err(|e| e.to_string())
}

/// A positive humantime duration (`90s`, `30m`, `2h`, `7d`).
fn parse_duration(input: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(input)
        .map_err(|e| format!("{e} (expected e.g. 90s, 30m, 2h, 7d)"))?;
    if duration.is_zero() {
        return Err("must be longer than zero".to_owned());
    }
    Ok(duration)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `p2p-admin export | head`: the reader had enough; not a failure.
        Err(e)
            if e.downcast_ref::<AdminError>()
                .is_some_and(AdminError::is_broken_pipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("p2p-admin: error: {}", message(&e));
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// `<what was being done>: <what failed, on what>`. An [`AdminError`]'s
/// message already ends with its cause, so the chain below it is not
/// repeated.
fn message(e: &anyhow::Error) -> String {
    match e.downcast_ref::<AdminError>() {
        Some(admin) => format!("{e}: {admin}"),
        None => format!("{e:#}"),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings {
        db: cli.db,
        ttl: cli.ttl,
    };
    let stdout = BufWriter::new(io::stdout().lock());
    match cli.command {
        Command::List {
            peer,
            name,
            live,
            limit,
            format,
        } => {
            let opts = ListOptions {
                peer,
                name,
                live_only: live,
                limit,
                format,
            };
            p2p_admin::list::list(&settings, &opts, stdout).context("list failed")?;
        }
        Command::Prune {
            peer,
            stale,
            dry_run,
            format,
        } => {
            let target = match (peer, stale) {
                (Some(peer), None) => PruneTarget::Peer(peer),
                (None, Some(age)) => PruneTarget::Stale(age),
                // clap's required, exclusive group makes this unreachable.
                _ => {
                    eprintln!("p2p-admin: prune needs exactly one of --peer or --stale");
                    std::process::exit(i32::from(EXIT_USAGE));
                }
            };
            let what = match &target {
                PruneTarget::Peer(peer) => format!("pruning peer {peer}"),
                PruneTarget::Stale(age) => {
                    format!(
                        "pruning stale registrations ({})",
                        humantime::format_duration(*age)
                    )
                }
            };
            let opts = PruneOptions {
                target,
                dry_run,
                format,
            };
            p2p_admin::prune::prune(&settings, &opts, stdout, io::stderr()).context(what)?;
        }
        Command::Export { format, output } => {
            let opts = ExportOptions { format, output };
            p2p_admin::export::export(&settings, &opts, stdout).context("export failed")?;
        }
        Command::Stats { format } => {
            p2p_admin::stats::stats(&settings, format, stdout).context("stats failed")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let defaults = Cli::try_parse_from(["p2p-admin", "stats"]).unwrap();
        assert_eq!(
            defaults.ttl,
            p2p_admin::DEFAULT_TTL,
            "--ttl default matches the server's"
        );
        assert_eq!(defaults.db, DEFAULT_DB);
    }

    #[test]
    fn usage_errors_are_refused_by_the_parser() {
        for args in [
            &["p2p-admin", "prune"][..],
            &["p2p-admin", "prune", "--peer", "1.2.3.4:1", "--stale", "1h"],
            &["p2p-admin", "prune", "--peer", "localhost:9000"],
            &["p2p-admin", "prune", "--stale", "soon"],
            &["p2p-admin", "prune", "--stale", "0s"],
            &["p2p-admin", "list", "--format", "xml"],
            &["p2p-admin", "--ttl", "-1", "list"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(EXIT_USAGE), "{args:?}: {err}");
        }
        let ok = Cli::try_parse_from(["p2p-admin", "list", "--db", "x.db", "--ttl", "2h"]).unwrap();
        assert_eq!(
            (ok.db.as_str(), ok.ttl),
            ("x.db", Duration::from_secs(7200))
        );
    }
}
