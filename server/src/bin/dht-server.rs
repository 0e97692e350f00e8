//! `dht-server`: the registry's command line. Parses options, starts the
//! server, prints `listening on HOST:PORT`, and stops it on SIGINT/SIGTERM.

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Parser, ValueEnum};
use dht_server::connection::Limits;
use dht_server::server::{Config, Server};
use dht_server::store::{SyncMode, DEFAULT_READERS};

/// The central registry of the p2p file sharing system: it remembers which
/// peers share which files (by the SHA-256 of the file name), in SQLite, and
/// answers a one-line text protocol (REGISTER, SEARCH, FIND, HEARTBEAT, ...).
#[derive(Debug, Parser)]
#[command(
    name = "dht-server",
    version,
    after_help = "Examples:\n  \
      dht-server                                  # registry.db, port 9000 on all interfaces\n  \
      dht-server --db /var/lib/p2p/registry.db --listen 127.0.0.1:9000 --ttl 10m\n  \
      printf 'PING\\n' | nc 127.0.0.1 9000         # -> PONG\n  \
      dht-server --http 127.0.0.1:9080            # + a web page and /metrics (Prometheus)\n\n\
      Peers on the LAN find it by mDNS (_p2p-registry._tcp.local.) unless --no-mdns.\n\n\
      Logging: RUST_LOG=debug dht-server (default level: info, on stderr)."
)]
struct Args {
    /// SQLite database file; created with its schema when missing.
    #[arg(long, value_name = "PATH", default_value = "registry.db")]
    db: String,
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9000")]
    listen: String,
    /// Worker threads started up front; the pool grows to --max-connections.
    #[arg(long, value_name = "N", default_value_t = dht_server::server::DEFAULT_WORKERS)]
    workers: usize,
    /// Connections served at once; one more is answered `ERR busy` and closed.
    #[arg(long, value_name = "N", default_value_t = dht_server::server::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// How long a registration lives without a heartbeat (e.g. 150s, 10m, 2h).
    #[arg(long, value_name = "DURATION", default_value = "150s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// `full`: fsync every commit (survives power loss). `normal`: faster,
    /// survives a crash of the server but may lose the last commits on power loss.
    #[arg(long, value_enum, default_value_t = Sync::Full)]
    sync: Sync,
    // Default: connection::DEFAULT_IDLE_TIMEOUT.
    /// A connection with no request for this long is closed.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    // Default: connection::DEFAULT_LINE_TIMEOUT.
    /// A request line must be complete this long after its first byte.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    line_timeout: Duration,
    /// Read-only SQLite connections in the pool.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_READERS)]
    readers: u32,
    /// Do not announce this registry on the LAN by mDNS/DNS-SD
    /// (`_p2p-registry._tcp.local.`); it is not announced when bound to loopback anyway.
    #[arg(long)]
    no_mdns: bool,
    /// Also serve a read-only HTML page of the registry and GET /metrics
    /// (Prometheus text) over HTTP on this address, e.g. 127.0.0.1:9080; off when not given.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    // --- abuse limits (issue 12) ---
    /// Most registrations one host (IP address) may hold; over it REGISTER
    /// gets `ERR busy`. 0: no limit.
    #[arg(long, value_name = "N", default_value_t = dht_server::writer::DEFAULT_MAX_PER_HOST)]
    max_per_host: u64,
    /// Answer SEARCH from memory (an index loaded at start and kept in step
    /// by the writer): several times faster; a change another process (e.g.
    /// `p2p-admin prune`) makes shows in SEARCH within 250 ms, not at once.
    #[arg(long)]
    memory_index: bool,
    // Default: connection::DEFAULT_WRITE_TIMEOUT. Hidden: for tests.
    /// A reply must be taken by the client within this long, in all.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration, hide = true)]
    write_timeout: Duration,
    /// Also run a BitTorrent Mainline DHT node on this UDP port (0: any free
    /// one), on the --listen IP (IPv4 only), printed as `dht on HOST:PORT`
    /// after `listening on`: peers on the LAN use `--dht --bootstrap
    /// THIS_HOST:PORT` and form a private DHT.
    #[arg(long, value_name = "PORT")]
    dht_port: Option<u16>,
    /// DHT nodes this registry's node joins through (other registries'
    /// --dht-port, to join their LANs into one DHT), HOST:PORT[,HOST:PORT...];
    /// default: none, a DHT of this LAN only
    #[arg(long, value_name = "HOST:PORT,...", requires = "dht_port")]
    bootstrap: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Sync {
    Full,
    Normal,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our error messages already carry their cause: print the top
            // one only, so the cause is not repeated.
            eprintln!("dht-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let dht_bootstrap = match &args.bootstrap {
        Some(list) => p2p_dht::parse_bootstrap(list)?,
        None => Vec::new(),
    };
    let config = Config {
        db: args.db,
        listen: args.listen,
        workers: args.workers,
        max_connections: args.max_connections,
        ttl: args.ttl,
        sync: match args.sync {
            Sync::Full => SyncMode::Full,
            Sync::Normal => SyncMode::Normal,
        },
        readers: args.readers,
        limits: Limits {
            idle_timeout: args.idle_timeout,
            line_timeout: args.line_timeout,
            write_timeout: args.write_timeout,
        },
        max_per_host: args.max_per_host,
        memory_index: args.memory_index,
    };
    let (db, ttl) = (config.db.clone(), config.ttl);
    let server = Server::open(config)?;
    let web = match args.http {
        Some(listen) => Some(dht_server::web::WebServer::bind(
            dht_server::web::WebConfig {
                listen,
                registry: server.local_addr(),
                db,
                ttl,
            },
        )?),
        None => None,
    };
    let shutdown = server.shutdown_handle();
    ctrlc::set_handler(move || shutdown.shutdown())
        .map_err(|e| anyhow!("cannot install the signal handler: {e}"))?;

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {}", server.local_addr())
        .and_then(|()| stdout.flush())
        .map_err(|e| anyhow!("cannot write to stdout: {e}"))?;
    if let Some(web) = web {
        let addr = web.local_addr();
        web.spawn()?;
        writeln!(stdout, "http on http://{addr}/")
            .and_then(|()| stdout.flush())
            .map_err(|e| anyhow!("cannot write to stdout: {e}"))?;
    }
    drop(stdout);
    // The DHT node lives as long as the registry (dropped after run()).
    let _dht = match args.dht_port {
        Some(port) => Some(start_dht(&server, port, dht_bootstrap)?),
        None => None,
    };

    // Held until the server stops; dropping it withdraws the announcement.
    let _mdns = (!args.no_mdns).then(|| dht_server::mdns::announce_or_warn(server.local_addr()));
    server.run()?;
    Ok(())
}

/// Starts the DHT node of `--dht-port` on the registry's IPv4 address and
/// prints `dht on HOST:PORT`.
fn start_dht(
    server: &Server,
    port: u16,
    bootstrap: Vec<String>,
) -> anyhow::Result<p2p_dht::DhtNode> {
    let bind = match server.local_addr().ip() {
        std::net::IpAddr::V4(ip) => ip,
        std::net::IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
    };
    let node = p2p_dht::DhtNode::start(&p2p_dht::NodeConfig::server(bind, port, bootstrap))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "dht on {}", node.local_addr())
        .and_then(|()| stdout.flush())
        .map_err(|e| anyhow!("cannot write to stdout: {e}"))?;
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use dht_server::connection::{
        DEFAULT_IDLE_TIMEOUT, DEFAULT_LINE_TIMEOUT, DEFAULT_WRITE_TIMEOUT,
    };

    #[test]
    fn defaults_match_the_library_constants() {
        Args::command().debug_assert();
        let args = Args::try_parse_from(["dht-server"]).expect("no options is valid");
        assert_eq!(args.idle_timeout, DEFAULT_IDLE_TIMEOUT);
        assert_eq!(args.line_timeout, DEFAULT_LINE_TIMEOUT);
        assert_eq!(args.write_timeout, DEFAULT_WRITE_TIMEOUT);
        assert_eq!(args.max_per_host, dht_server::writer::DEFAULT_MAX_PER_HOST);
        assert_eq!(args.ttl, dht_server::server::DEFAULT_TTL);
        assert_eq!(args.db, "registry.db");
        assert_eq!(args.listen, "0.0.0.0:9000");
    }
}
