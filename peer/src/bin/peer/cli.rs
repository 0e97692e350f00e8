//! The `peer` command line: options and subcommands as clap derive types,
//! with the help text people read, and their one conversion into the
//! library's [`PeerConfig`]. This module must not do any work itself.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use p2p_peer::batch::{DEFAULT_JOBS, MAX_JOBS};
use p2p_peer::config::PeerConfig;
use p2p_peer::dht::DhtConfig;
use p2p_peer::discovery::{self, Origin};
use p2p_peer::download::{Options, DEFAULT_MAX_SOURCES, MAX_SOURCES_LIMIT};
use p2p_peer::http::throttle::parse_rate;
use p2p_peer::http::{FileServerConfig, DEFAULT_MAX_CONNECTIONS};
use p2p_peer::ui::UiAddr;
use p2p_peer::watch::{Scope, WatchConfig};
#[cfg(test)]
use p2p_peer::watch::{DEFAULT_RESCAN, DEFAULT_SETTLE};

/// Shortest heartbeat interval accepted: anything below only loads the registry.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// [`DEFAULT_HEARTBEAT`](p2p_peer::registration::DEFAULT_HEARTBEAT) as `--help` shows it (a test keeps the two equal).
const DEFAULT_HEARTBEAT_TEXT: &str = "45s";

/// [`DEFAULT_RESCAN`] as `--help` shows it (a test keeps the two equal).
const DEFAULT_RESCAN_TEXT: &str = "30s";

/// [`DEFAULT_SETTLE`] as `--help` shows it (a test keeps the two equal).
const DEFAULT_SETTLE_TEXT: &str = "1s";

/// Shortest settle or rescan interval accepted: below it the watcher only
/// burns CPU.
pub const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(10);

/// Most file-server connections accepted by `--max-connections` (one thread each).
const MAX_CONNECTIONS_LIMIT: usize = 4096;

/// Shortest file-server read timeout accepted (0 would mean none).
const MIN_READ_TIMEOUT: Duration = Duration::from_millis(100);

/// Shortest file-server write timeout accepted (0 would mean none).
const MIN_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// Exit status of `search`/`get` when the name has no live source.
pub const EXIT_NOT_FOUND: u8 = 1;

/// Exit status of any other failure.
pub const EXIT_FAILURE: u8 = 2;

const EXAMPLES: &str = "\
Examples:
  peer                                   the menu: asks for a port, then 1 register, 2 download, 3 exit, 4 list
  peer --port 4000 --server 10.0.0.1:9000
  P2P_SERVER=10.0.0.1:9000 peer serve --port 4000
                                         without --server or P2P_SERVER: a registry found
                                         on the LAN by mDNS (2 s), else 127.0.0.1:9000
  peer serve --port 4000                 share every file of ./shared until Ctrl-C
  peer serve --port 0 --heartbeat 10s    any free port; prints `listening on HOST:PORT`
  peer search 'holiday photos.zip'       prints `HOST:PORT SIZE SHA256` per source
  peer get 'holiday photos.zip'          into ./downloads, verified; resumes a .part
  peer find holiday pho                  names with words starting `holiday` and `pho`
  peer find --json holiday               the same as one JSON array, for scripts
  peer get a.txt b.txt c.txt --jobs 8    a batch: 8 files at a time, one summary
  peer get --find holiday                every file FIND holiday finds
  ls | peer get --from-file -            one name per line from stdin
  peer get big.iso --max-sources 8       from up to 8 peers at once, piece by piece
  peer serve --port 4000 --max-upload-rate 20MiB
                                         send at most 20 MiB/s, all downloaders together
  peer register notes.txt --port 4000    one registration, for scripts
  peer serve --port 4000 --share-downloads
                                         also share what was downloaded (never a .part)
  peer serve --port 4000 --dht --bootstrap 10.0.0.1:6881
                                         also announce on a (private) Mainline DHT
  peer get notes.txt --dht --bootstrap 10.0.0.1:6881
                                         sources from the DHT too; no registry needed
  curl -OJ http://HOST:PORT/files/notes.txt
  peer serve --port 4000 --ui 127.0.0.1:8400
                                         the control UI there (prints `ui on http://...`); --ui off: none

Exit status: 0 success; 1 the name has no live source (search, get), no hit (find), or
every failure of a batch is a name nobody shares (get); 2 any other failure.";

/// A peer of the p2p file sharing system.
#[derive(Debug, Parser)]
#[command(
    name = "peer",
    version,
    about = "A peer of the p2p file sharing system: share a folder, find and download files",
    long_about = "A peer of the p2p file sharing system. It serves the regular files of its \
                  shared folder over HTTP/1.1, registers them with the registry (dht-server), \
                  and downloads files from other peers into its downloads folder, checking \
                  size and SHA-256 before a file gets its final name.\n\n\
                  Without a subcommand it runs the interactive menu.",
    after_long_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options every mode understands, before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Address of the registry (dht-server); when not given: $P2P_SERVER, else a
    /// registry found on the LAN by mDNS within 2 s, else 127.0.0.1:9000
    #[arg(long, global = true, value_name = "ADDR")]
    pub server: Option<String>,

    /// Port of this peer's file server (for `serve` and the menu, 0 picks a
    /// free one; the menu asks when it is missing; `register` needs the
    /// port the file server listens on)
    #[arg(long, global = true, value_name = "N")]
    pub port: Option<u16>,

    /// Folder whose regular files this peer shares (created when missing)
    #[arg(long, global = true, value_name = "DIR", default_value = "shared")]
    pub shared: PathBuf,

    /// Folder downloads are written to (created when missing)
    #[arg(long, global = true, value_name = "DIR", default_value = "downloads")]
    pub downloads: PathBuf,

    /// Time between heartbeats that keep registrations alive (keep it well
    /// inside the registry's --ttl), e.g. 30s, 5m
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = DEFAULT_HEARTBEAT_TEXT,
        value_parser = parse_heartbeat
    )]
    pub heartbeat: Duration,

    /// Address the file server listens on; when it is a specific address,
    /// connections to the registry leave from it too, so the registry
    /// records it (`register` included)
    #[arg(long, global = true, value_name = "IP", default_value = "0.0.0.0")]
    pub bind: IpAddr,

    /// Most sources a download fetches from at once, piece by piece (1: one
    /// source after the other)
    #[arg(
        long,
        global = true,
        value_name = "N",
        default_value_t = DEFAULT_MAX_SOURCES,
        value_parser = parse_max_sources
    )]
    pub max_sources: usize,

    /// Most bytes per second the file server sends, all connections
    /// together, e.g. 500K, 20MiB, 1G (K, M, G: powers of 1000; KiB, MiB,
    /// GiB: of 1024); unlimited when not given
    #[arg(long, global = true, value_name = "RATE", value_parser = parse_upload_rate)]
    pub max_upload_rate: Option<u64>,

    /// Also share the finished (verified) files of the downloads folder;
    /// `.part` files and other partial downloads never are. A name in both
    /// folders is the shared folder's file.
    #[arg(long, global = true)]
    pub share_downloads: bool,

    /// Folder for the peer's own state (the hash cache); default: the
    /// hidden folder `.p2p-peer-state` beside the shared folder
    #[arg(long, global = true, value_name = "DIR")]
    pub state: Option<PathBuf>,

    /// Time between two full listings of the shared folder, besides
    /// change notifications (at most 2s where the folder cannot be watched)
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = DEFAULT_RESCAN_TEXT,
        value_parser = parse_interval
    )]
    pub rescan: Duration,

    /// Do not use change notifications: find changes of the shared folder by
    /// listing it every --rescan (at most every 2s), e.g. on a network share
    #[arg(long, global = true)]
    pub no_watch: bool,

    /// How long a new or changed file must stay unchanged before it is
    /// hashed and registered (for tests)
    #[arg(
        long,
        global = true,
        hide = true,
        value_name = "DURATION",
        default_value = DEFAULT_SETTLE_TEXT,
        value_parser = parse_interval
    )]
    pub settle: Duration,

    /// Connections the file server serves at once; when they run short, the
    /// address holding the most yields first
    #[arg(
        long,
        global = true,
        value_name = "N",
        default_value_t = DEFAULT_MAX_CONNECTIONS,
        value_parser = parse_max_connections
    )]
    pub max_connections: usize,

    /// Longest the file server waits for a whole request head, counted from
    /// its first byte, or for the next request on a kept-alive connection
    /// (hidden: tests shorten it)
    #[arg(long, global = true, hide = true, value_name = "DURATION",
          default_value = "30s", value_parser = humantime::parse_duration)]
    pub read_timeout: Duration,

    /// Longest the file server waits for a client to accept any byte before
    /// dropping it (hidden: tests shorten it)
    #[arg(long, global = true, hide = true, value_name = "DURATION",
          default_value = "60s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// Where the control UI (a web page to search, download and watch
    /// progress) listens, for the menu and `serve`: IP:PORT, or `off`.
    /// Default 127.0.0.1:8390, or the next free port above it. An address
    /// other than loopback lets anyone who can reach it make this peer
    /// download files
    #[arg(long, global = true, value_name = "ADDR")]
    pub ui: Option<UiAddr>,
    /// Also use the BitTorrent Mainline DHT: serve and the menu announce
    /// every shared file there (under the SHA-256 of its name and of its
    /// content: your IP and port become public with them, unless
    /// --bootstrap points to a private DHT); search and get look sources up
    /// there as well as in the registry, and work without a registry
    #[arg(long, global = true)]
    pub dht: bool,

    /// DHT nodes to join through, HOST:PORT[,HOST:PORT...] (default: the
    /// public bootstrap nodes; a registry's `dht-server --dht-port` for a
    /// private DHT)
    #[arg(long, global = true, value_name = "HOST:PORT,...", requires = "dht",
          value_parser = parse_bootstrap_list)]
    pub bootstrap: Option<BootstrapList>,

    /// Hidden, for tests and benchmarks: the DHT node's request timeout
    /// (default: mainline's 2 s); a loopback testnet answers in microseconds.
    #[arg(long, global = true, hide = true, value_name = "DURATION",
          value_parser = humantime::parse_duration)]
    pub dht_request_timeout: Option<Duration>,

    /// Hidden, for tests: time between announcements of everything shared
    /// (default 15 min).
    #[arg(long, global = true, hide = true, value_name = "DURATION",
          value_parser = parse_heartbeat)]
    pub dht_announce_interval: Option<Duration>,
}

/// A parsed `--bootstrap` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapList(pub Vec<String>);

fn parse_bootstrap_list(text: &str) -> Result<BootstrapList, String> {
    p2p_dht::parse_bootstrap(text)
        .map(BootstrapList)
        .map_err(|e| e.to_string())
}

impl Common {
    /// The library's configuration, from these options.
    pub fn config(&self) -> PeerConfig {
        PeerConfig {
            server: self.registry_address(),
            port: self.port,
            shared: self.shared.clone(),
            downloads: self.downloads.clone(),
            heartbeat: self.heartbeat,
            bind: self.bind,
            download: self.download_options(),
            file_server: self.file_server_config(),
            share_downloads: self.share_downloads,
            state: self.state.clone(),
            watch: WatchConfig {
                settle: self.settle,
                rescan: self.rescan,
                scope: Scope::Everything,
                notify: !self.no_watch,
            },
            ui: self.ui.unwrap_or_default(),
            dht: self.dht_config(),
        }
    }

    /// `--dht` and its bootstrap nodes; `None` without `--dht`.
    pub fn dht_config(&self) -> Option<DhtConfig> {
        self.dht.then(|| {
            let bootstrap = match &self.bootstrap {
                Some(list) => list.0.clone(),
                None => p2p_dht::PUBLIC_BOOTSTRAP.map(String::from).to_vec(),
            };
            DhtConfig {
                request_timeout: self.dht_request_timeout,
                announce_interval: self
                    .dht_announce_interval
                    .unwrap_or(p2p_peer::dht::DEFAULT_ANNOUNCE_INTERVAL),
                ..DhtConfig::new(bootstrap)
            }
        })
    }

    /// `--server`, `P2P_SERVER`, a registry found by mDNS, or the default
    /// (see [`p2p_peer::discovery`]); says on stderr which one mDNS found.
    pub fn registry_address(&self) -> String {
        let resolved = discovery::resolve_from_environment(self.server.as_deref());
        if let Origin::Mdns { instance } = &resolved.origin {
            eprintln!("registry {} found by mDNS ({instance})", resolved.addr);
        }
        resolved.addr
    }

    /// How downloads proceed, from these options.
    pub fn download_options(&self) -> Options {
        Options {
            max_sources: self.max_sources,
            ..Options::default()
        }
    }

    /// The file server's limits, from these options.
    pub fn file_server_config(&self) -> FileServerConfig {
        FileServerConfig {
            max_upload_rate: self.max_upload_rate,
            max_connections: self.max_connections,
            read_timeout: self.read_timeout.max(MIN_READ_TIMEOUT),
            write_timeout: self.write_timeout.max(MIN_WRITE_TIMEOUT),
        }
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Share the shared folder until SIGINT/SIGTERM (needs --port)
    ///
    /// Registers every regular file of the shared folder, serves them (and
    /// their piece lists), sends heartbeats, and on SIGINT/SIGTERM
    /// unregisters them and exits 0. Prints `listening on HOST:PORT` on
    /// stdout once the files are registered and served. --max-upload-rate
    /// limits what it sends.
    Serve,
    /// Print the live sources of NAME (exit 1 when there are none)
    ///
    /// One `HOST:PORT SIZE SHA256` line per source, most recently seen first.
    /// Exit 0 when found, 1 when not, 2 when the registry cannot be asked.
    Search {
        /// The exact file name
        name: String,
    },
    /// Download NAME into the downloads folder, verified
    ///
    /// Fetches pieces from up to --max-sources sources at once (those that
    /// registered the same size and SHA-256), checks every piece against the
    /// piece list a source serves and leaves out sources that send bad ones;
    /// with one source, or sources without piece lists, it tries them one
    /// after the other, most recently seen first. Writes to `NAME.part`,
    /// checks size and SHA-256 against the registry, then renames it to NAME.
    /// Resumes a `.part` left by an interrupted run (fetching only the pieces
    /// it lacks). A file already there
    /// with the same content is not fetched again; one with other content is
    /// never overwritten. Exit 0 on success, 1 when no peer shares NAME, 2
    /// otherwise, with a one-line reason on stderr.
    ///
    /// Several names (or --find WORDS, or --from-file FILE) make a batch:
    /// the registry lookups go over one connection, --jobs files are
    /// fetched at once, each line of a failed file goes to stderr, and one
    /// summary (downloaded, already present, failed) ends the output. A
    /// batch exits 0 when every file is there and verified, 1 when every
    /// failure is a name nobody shares, 2 otherwise.
    Get {
        /// The exact file names (with --find: words of the names)
        #[arg(required_unless_present = "from_file", value_name = "NAME")]
        names: Vec<String>,
        /// Fetch only the content with this SHA-256 (64 hex digits), e.g.
        /// one of the versions listed when the sources of NAME disagree
        /// (one NAME only)
        #[arg(long, value_name = "HEX", value_parser = parse_sha256, conflicts_with_all = ["find", "from_file"])]
        sha256: Option<[u8; 32]>,
        /// Fetch every file whose name matches all the words given (FIND)
        #[arg(long, conflicts_with = "from_file")]
        find: bool,
        /// Read the names from FILE, one per line (`-`: standard input;
        /// blank lines skipped, CRLF accepted)
        #[arg(long, value_name = "FILE", conflicts_with = "names")]
        from_file: Option<PathBuf>,
        /// Most files fetched at once in a batch
        #[arg(long, value_name = "N", default_value_t = DEFAULT_JOBS, value_parser = parse_jobs)]
        jobs: usize,
    },
    /// Find files by words of their names (FIND over the registry)
    ///
    /// Every word must match the start of a word of the name, case
    /// insensitively (`hol pho` finds `Holiday Photos.zip`); at most 100
    /// hits, most sources first. One hit per line: name, size, sources,
    /// short SHA-256. Exit 0 with at least one hit, 1 with none, 2 when the
    /// registry cannot be asked.
    Find {
        /// Words of the file name
        #[arg(required = true, value_name = "WORD")]
        words: Vec<String>,
        /// Print one JSON array of objects with the keys name, size, sha256, sources
        #[arg(long)]
        json: bool,
    },
    /// Register one shared file for the file server on --port
    ///
    /// For scripts: the file server on that port (e.g. a `peer serve`) must
    /// be the one that serves the shared folder.
    Register {
        /// A file name in the shared folder
        name: String,
    },
}

fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    p2p_peer::download::parse_sha256(text).ok_or_else(|| "must be 64 hex digits".to_owned())
}

fn parse_jobs(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_JOBS).contains(&n) => Ok(n),
        _ => Err(format!("must be a number from 1 to {MAX_JOBS}")),
    }
}

fn parse_max_sources(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_SOURCES_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!("must be a number from 1 to {MAX_SOURCES_LIMIT}")),
    }
}

fn parse_max_connections(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_CONNECTIONS_LIMIT).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a number from 1 to {MAX_CONNECTIONS_LIMIT}"
        )),
    }
}

fn parse_upload_rate(text: &str) -> Result<u64, String> {
    parse_rate(text).map_err(|e| e.to_string())
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if interval < MIN_WATCH_INTERVAL {
        return Err(format!(
            "must be at least {}",
            humantime::format_duration(MIN_WATCH_INTERVAL)
        ));
    }
    Ok(interval)
}

fn parse_heartbeat(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if interval < MIN_HEARTBEAT {
        return Err(format!(
            "must be at least {}",
            humantime::format_duration(MIN_HEARTBEAT)
        ));
    }
    Ok(interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use p2p_peer::registration::DEFAULT_HEARTBEAT;
    use std::path::Path;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn common_options_go_before_or_after_the_subcommand() {
        let before =
            Cli::try_parse_from(["peer", "--port", "5", "--shared", "s", "serve"]).unwrap();
        let after = Cli::try_parse_from(["peer", "serve", "--port", "5", "--shared", "s"]).unwrap();
        for cli in [before, after] {
            assert_eq!(cli.common.port, Some(5));
            assert_eq!(cli.common.shared, PathBuf::from("s"));
            assert!(matches!(cli.command, Some(Command::Serve)));
        }
        let cli = Cli::try_parse_from(["peer", "get", "a b é", "--downloads", "d"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Get { names, .. }) if names == ["a b é"]));
        assert_eq!(cli.common.downloads, PathBuf::from("d"));
    }

    #[test]
    fn defaults_follow_the_contract() {
        let cli = Cli::try_parse_from(["peer"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.common.server, None);
        assert_eq!(cli.common.port, None);
        assert_eq!(cli.common.shared, PathBuf::from("shared"));
        assert_eq!(cli.common.downloads, PathBuf::from("downloads"));
        assert_eq!(cli.common.heartbeat, DEFAULT_HEARTBEAT);
        assert_eq!(cli.common.rescan, DEFAULT_RESCAN);
        assert_eq!(cli.common.settle, DEFAULT_SETTLE);
        assert!(!cli.common.share_downloads);
        assert_eq!(cli.common.state, None);
        assert_eq!(cli.common.max_sources, DEFAULT_MAX_SOURCES);
        assert_eq!(cli.common.max_upload_rate, None);
        assert_eq!(cli.common.file_server_config(), FileServerConfig::default());
    }

    #[test]
    fn sources_and_upload_rate() {
        let cli = Cli::try_parse_from(["peer", "get", "x", "--max-sources", "8"]).unwrap();
        assert_eq!(cli.common.download_options().max_sources, 8);
        for bad in ["0", "17", "many"] {
            assert!(Cli::try_parse_from(["peer", "get", "x", "--max-sources", bad]).is_err());
        }
        let cli = Cli::try_parse_from(["peer", "serve", "--max-upload-rate", "20MiB"]).unwrap();
        assert_eq!(cli.common.max_upload_rate, Some(20 * 1024 * 1024));
        assert_eq!(
            cli.common.file_server_config().max_upload_rate,
            Some(20 * 1024 * 1024)
        );
        for bad in ["fast", "0", "10"] {
            assert!(Cli::try_parse_from(["peer", "serve", "--max-upload-rate", bad]).is_err());
        }
    }

    #[test]
    fn ui_address_default_off_and_explicit() {
        let cli = Cli::try_parse_from(["peer", "serve"]).unwrap();
        assert_eq!(cli.common.config().ui, UiAddr::Default);
        let cli = Cli::try_parse_from(["peer", "serve", "--ui", "off"]).unwrap();
        assert_eq!(cli.common.config().ui, UiAddr::Off);
        let cli = Cli::try_parse_from(["peer", "--ui", "127.0.0.1:0"]).unwrap();
        assert_eq!(
            cli.common.config().ui,
            UiAddr::At("127.0.0.1:0".parse().unwrap())
        );
        assert!(Cli::try_parse_from(["peer", "--ui", "localhost"]).is_err());
    }

    #[test]
    fn batch_and_find_arguments() {
        let cli = Cli::try_parse_from(["peer", "get", "a", "b", "--jobs", "8"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Get { names, jobs: 8, find: false, from_file: None, .. }) if names == ["a", "b"])
        );
        let cli = Cli::try_parse_from(["peer", "get", "--from-file", "-"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Get { from_file: Some(f), jobs: DEFAULT_JOBS, .. }) if f == Path::new("-"))
        );
        let cli = Cli::try_parse_from(["peer", "get", "--find", "hol", "pho"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Get { find: true, names, .. }) if names == ["hol", "pho"])
        );
        for bad in [
            &["peer", "get"][..],
            &["peer", "get", "a", "--from-file", "x"],
            &["peer", "get", "--find", "--from-file", "x"],
            &["peer", "get", "a", "--jobs", "0"],
            &["peer", "find"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from(["peer", "find", "--json", "hol"]).unwrap();
        assert!(
            matches!(cli.command, Some(Command::Find { json: true, words }) if words == ["hol"])
        );
    }

    #[test]
    fn dht_and_bootstrap() {
        let cli = Cli::try_parse_from(["peer", "search", "x"]).unwrap();
        assert_eq!(cli.common.dht_config(), None);
        let cli = Cli::try_parse_from(["peer", "get", "x", "--dht"]).unwrap();
        let config = cli.common.dht_config().unwrap();
        assert_eq!(config.bootstrap.len(), p2p_dht::PUBLIC_BOOTSTRAP.len());
        let cli = Cli::try_parse_from([
            "peer",
            "serve",
            "--dht",
            "--bootstrap",
            "127.0.0.1:5,127.0.0.1:6",
        ])
        .unwrap();
        assert_eq!(
            cli.common.config().dht.unwrap().bootstrap,
            ["127.0.0.1:5", "127.0.0.1:6"]
        );
        for bad in ["127.0.0.1", "h:0", ""] {
            assert!(Cli::try_parse_from(["peer", "--dht", "--bootstrap", bad]).is_err());
        }
        // --bootstrap alone would silently do nothing.
        assert!(Cli::try_parse_from(["peer", "--bootstrap", "h:1"]).is_err());
    }

    #[test]
    fn heartbeat_takes_human_durations_with_a_floor() {
        let cli = Cli::try_parse_from(["peer", "serve", "--heartbeat", "250ms"]).unwrap();
        assert_eq!(cli.common.heartbeat, Duration::from_millis(250));
        assert!(Cli::try_parse_from(["peer", "--heartbeat", "1ms"]).is_err());
        assert!(Cli::try_parse_from(["peer", "--heartbeat", "soon"]).is_err());
        assert!(Cli::try_parse_from(["peer", "--port", "70000"]).is_err());
    }
}
