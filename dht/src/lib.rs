//! A thin layer over the BitTorrent Mainline DHT (BEP 5, crate `mainline`):
//! what the peer and the registry need from it and nothing more.
//!
//! # Layout
//! - [`name_key`], [`content_key`]: the 20-byte keys (info hashes) a shared
//!   file is announced under: the first 20 bytes of the SHA-256 of its UTF-8
//!   name, and the first 20 bytes of its content's SHA-256.
//! - [`parse_bootstrap`]: the `--bootstrap HOST:PORT[,HOST:PORT...]` list.
//! - [`DhtNode`]: one node (a client for peers, a server beside the
//!   registry): [`DhtNode::announce`] (`announce_peer` with an explicit
//!   port), [`DhtNode::get_peers`] (addresses as they arrive, until a
//!   deadline), [`DhtNode::lookup`] (all of them, until a deadline).
//! - [`LocalTestnet`]: N server nodes on 127.0.0.1 that know each other, for
//!   tests, benchmarks and demos (the `p2p-dht-testnet` binary).
//!
//! # Threads
//! `mainline` runs one actor thread per node (its UDP socket and routing
//! table). A [`DhtNode::get_peers`] adds one short-lived thread that forwards
//! the query's answers until the query ends or the caller stops listening.
//!
//! This crate must not: know about files, HTTP or the registry (the peer
//! confirms every address it gets with a `HEAD` before using it); contact
//! any node other than the bootstrap nodes it was given and the nodes they
//! lead to; trust the number of addresses the network sends (bounded by
//! [`MAX_PEERS_PER_LOOKUP`]).
//!
//! `mainline` 8 marks its blocking API deprecated in favour of its async one
//! but keeps it; the blocking calls suit this thread-per-task workspace (no
//! async runtime anywhere), so the few calls into it allow the deprecation
//! locally.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use sha2::{Digest, Sha256};

/// Bytes in a DHT key (a BEP 5 info hash).
pub const KEY_BYTES: usize = 20;

/// A DHT key.
pub type Key = [u8; KEY_BYTES];

/// The public bootstrap nodes of the Mainline DHT (the default of `--bootstrap`).
pub const PUBLIC_BOOTSTRAP: [&str; 4] = mainline::DEFAULT_BOOTSTRAP_NODES;

/// Most entries in one `--bootstrap` list: a handful is plenty to join.
pub const MAX_BOOTSTRAP_NODES: usize = 64;

/// Most distinct addresses one lookup collects: a key with more sources
/// than this is served fine by this many, and a hostile node cannot make a
/// lookup grow without bound.
pub const MAX_PEERS_PER_LOOKUP: usize = 256;

/// Answers buffered between the query thread and the caller of
/// [`DhtNode::get_peers`].
const PEER_CHANNEL_BOUND: usize = 64;

/// Most nodes a [`LocalTestnet`] starts: each is a thread and a socket.
pub const MAX_TESTNET_NODES: usize = 1000;

/// Why a DHT operation failed. Every message names what failed.
#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    #[error("bad bootstrap node {entry:?}: {reason} (expected HOST:PORT)")]
    BadBootstrap { entry: String, reason: String },
    #[error("too many bootstrap nodes ({count}; at most {MAX_BOOTSTRAP_NODES})")]
    TooManyBootstrap { count: usize },
    #[error(
        "none of the bootstrap nodes {list} resolves to an IPv4 address (the DHT is IPv4 only)"
    )]
    NoBootstrap { list: String },
    #[error("cannot start a DHT node on {addr}: {source}")]
    Start { addr: String, source: io::Error },
    #[error("cannot announce key {key} on the DHT: {reason}")]
    Announce { key: String, reason: String },
    #[error("bad sha256 {0:?}: expected 64 hex digits")]
    BadSha256(String),
    #[error("cannot start a DHT lookup thread: {0}")]
    Thread(io::Error),
    #[error("a testnet needs 1 to {MAX_TESTNET_NODES} nodes, not {0}")]
    TestnetSize(usize),
}

/// The key a file is announced under by name: the first 20 bytes of the
/// SHA-256 of its UTF-8 name.
pub fn name_key(name: &str) -> Key {
    first_20(&Sha256::digest(name.as_bytes()))
}

/// The key a file is announced under by content: the first 20 bytes of its
/// SHA-256, given as 64 hex digits (either case).
pub fn content_key(sha256_hex: &str) -> Result<Key, DhtError> {
    // The system writes digests in lowercase; a person may paste uppercase.
    let digest = p2p_proto::hex::from_hex_array::<32>(&sha256_hex.to_ascii_lowercase())
        .ok_or_else(|| DhtError::BadSha256(sha256_hex.to_owned()))?;
    Ok(first_20(&digest))
}

/// A key as 40 lowercase hex digits (for messages and logs).
pub fn key_hex(key: &Key) -> String {
    p2p_proto::hex::to_hex(key)
}

fn first_20(digest: &[u8]) -> Key {
    let mut key = [0u8; KEY_BYTES];
    key.copy_from_slice(&digest[..KEY_BYTES]);
    key
}

/// Parses `HOST:PORT[,HOST:PORT...]` (spaces around entries allowed). Names
/// are resolved later, when a node starts.
pub fn parse_bootstrap(text: &str) -> Result<Vec<String>, DhtError> {
    let entries: Vec<&str> = text.split(',').map(str::trim).collect();
    if entries.len() > MAX_BOOTSTRAP_NODES {
        return Err(DhtError::TooManyBootstrap {
            count: entries.len(),
        });
    }
    let bad = |entry: &str, reason: &str| DhtError::BadBootstrap {
        entry: entry.to_owned(),
        reason: reason.to_owned(),
    };
    let mut list = Vec::with_capacity(entries.len());
    for entry in entries {
        let Some((host, port)) = entry.rsplit_once(':') else {
            return Err(bad(entry, "no port"));
        };
        if host.is_empty() {
            return Err(bad(entry, "no host"));
        }
        match port.parse::<u16>() {
            Ok(p) if p != 0 => {}
            _ => return Err(bad(entry, "the port must be 1-65535")),
        }
        list.push(entry.to_owned());
    }
    Ok(list)
}

/// How to start a [`DhtNode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// `HOST:PORT` nodes to join through; empty starts a new network (only
    /// sensible for a server node others bootstrap from).
    pub bootstrap: Vec<String>,
    /// Address of the node's UDP socket.
    pub bind: Ipv4Addr,
    /// UDP port; 0 picks a free one.
    pub port: u16,
    /// Answer other nodes' requests and store their announcements (a
    /// registry's node, testnet nodes). A client only asks.
    pub server_mode: bool,
    /// How long the node waits for one answer; `None`: mainline's default
    /// ([`mainline::DEFAULT_REQUEST_TIMEOUT`], 2 s). A query ends only when
    /// every request it sent was answered or timed out, so on a loopback
    /// testnet a shorter one makes lookups and announcements end sooner.
    pub request_timeout: Option<Duration>,
}

impl NodeConfig {
    /// A client node (what a peer runs) on any free port.
    pub fn client(bootstrap: Vec<String>) -> NodeConfig {
        NodeConfig {
            bootstrap,
            bind: Ipv4Addr::UNSPECIFIED,
            port: 0,
            server_mode: false,
            request_timeout: None,
        }
    }

    /// A server node on `bind:port` (what `dht-server --dht-port` runs).
    pub fn server(bind: Ipv4Addr, port: u16, bootstrap: Vec<String>) -> NodeConfig {
        NodeConfig {
            bootstrap,
            bind,
            port,
            server_mode: true,
            request_timeout: None,
        }
    }
}

/// One running DHT node; dropping it stops it.
#[derive(Debug, Clone)]
pub struct DhtNode {
    dht: mainline::Dht,
    local_addr: SocketAddrV4,
}

impl DhtNode {
    /// Starts a node: binds its UDP socket and begins joining through the
    /// bootstrap nodes (in the background). Bootstrap names that do not
    /// resolve to IPv4 are skipped with a warning; none resolving is an error.
    pub fn start(config: &NodeConfig) -> Result<DhtNode, DhtError> {
        let bootstrap = resolve_bootstrap(&config.bootstrap)?;
        let mut builder = mainline::Dht::builder();
        builder.bind_address(config.bind);
        // Always explicit: left unset, mainline tries 6881 first, the port a
        // registry's node (`--dht-port 6881`) on the same host wants.
        builder.port(config.port);
        if let Some(timeout) = config.request_timeout {
            builder.request_timeout(timeout);
        }
        if config.server_mode {
            builder.server_mode();
        }
        if bootstrap.is_empty() {
            builder.no_bootstrap();
        } else {
            builder.bootstrap(&bootstrap);
        }
        let dht = builder.build().map_err(|source| DhtError::Start {
            addr: format!("{}:{}", config.bind, config.port),
            source,
        })?;
        // The blocking API (deprecated since mainline 7, still supported);
        // see the crate doc for why.
        #[allow(deprecated)]
        let local_addr = dht.info().local_addr();
        Ok(DhtNode { dht, local_addr })
    }

    /// The node's UDP address (its bind address, with the real port).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local_addr
    }

    /// Announces that this host serves `key` on TCP `port` (`announce_peer`
    /// with an explicit port; the nodes record the address they see the
    /// request come from). Blocks until the closest nodes answered.
    pub fn announce(&self, key: &Key, port: u16) -> Result<(), DhtError> {
        let id = id(key);
        #[allow(deprecated)] // The blocking API: see the crate doc.
        let result = self.dht.announce_peer(id, Some(port));
        result.map(|_| ()).map_err(|e| DhtError::Announce {
            key: key_hex(key),
            reason: e.to_string(),
        })
    }

    /// Asks the DHT for the peers of `key`: distinct addresses arrive on the
    /// returned channel as nodes answer; it closes when the query ends, when
    /// [`MAX_PEERS_PER_LOOKUP`] arrived, or soon after `deadline` passes.
    /// Dropping the receiver abandons the lookup.
    pub fn get_peers(
        &self,
        key: &Key,
        deadline: Instant,
    ) -> Result<Receiver<SocketAddrV4>, DhtError> {
        let (tx, rx) = crossbeam_channel::bounded(PEER_CHANNEL_BOUND);
        let dht = self.dht.clone();
        let id = id(key);
        std::thread::Builder::new()
            .name("dht-get-peers".into())
            .spawn(move || {
                let mut seen = HashSet::new();
                #[allow(deprecated)] // The blocking API: see the crate doc.
                let batches = dht.get_peers(id);
                for batch in batches {
                    for addr in batch {
                        if seen.len() >= MAX_PEERS_PER_LOOKUP {
                            return;
                        }
                        if seen.insert(addr) && tx.send_deadline(addr, deadline).is_err() {
                            return;
                        }
                    }
                    if Instant::now() >= deadline {
                        return;
                    }
                }
            })
            .map_err(DhtError::Thread)?;
        Ok(rx)
    }

    /// Every distinct address [`DhtNode::get_peers`] finds for `key` before
    /// `deadline` (fewer when the deadline cuts the query short).
    pub fn lookup(&self, key: &Key, deadline: Instant) -> Result<Vec<SocketAddrV4>, DhtError> {
        let rx = self.get_peers(key, deadline)?;
        let mut found = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(addr) => found.push(addr),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        Ok(found)
    }
}

fn id(key: &Key) -> mainline::Id {
    // A Key has exactly the 20 bytes an Id needs.
    match mainline::Id::from_bytes(key) {
        Ok(id) => id,
        Err(_) => unreachable!("a 20-byte key is a valid id"),
    }
}

/// Resolves `HOST:PORT` entries to IPv4 socket addresses (as strings, which
/// is what the builder takes).
fn resolve_bootstrap(list: &[String]) -> Result<Vec<String>, DhtError> {
    let mut resolved = Vec::new();
    for entry in list {
        match entry.to_socket_addrs() {
            Ok(addrs) => {
                let before = resolved.len();
                for addr in addrs {
                    if let SocketAddr::V4(v4) = addr {
                        resolved.push(v4.to_string());
                    }
                }
                if resolved.len() == before {
                    tracing::warn!("bootstrap node {entry} has no IPv4 address; skipped");
                }
            }
            Err(e) => tracing::warn!("bootstrap node {entry} does not resolve ({e}); skipped"),
        }
    }
    if !list.is_empty() && resolved.is_empty() {
        return Err(DhtError::NoBootstrap {
            list: list.join(","),
        });
    }
    Ok(resolved)
}

/// N server nodes on 127.0.0.1 whose routing tables hold each other; they
/// stop when this is dropped.
#[derive(Debug)]
pub struct LocalTestnet {
    inner: mainline::Testnet,
    addrs: Vec<SocketAddrV4>,
}

impl LocalTestnet {
    /// Starts `nodes` nodes; returns once every one accepts requests.
    pub fn start(nodes: usize) -> Result<LocalTestnet, DhtError> {
        if nodes == 0 || nodes > MAX_TESTNET_NODES {
            return Err(DhtError::TestnetSize(nodes));
        }
        let inner = mainline::Testnet::builder(nodes)
            .bind_address(Ipv4Addr::LOCALHOST)
            .build()
            .map_err(|source| DhtError::Start {
                addr: "127.0.0.1:0".into(),
                source,
            })?;
        #[allow(deprecated)] // The blocking API: see the crate doc.
        let addrs = inner.nodes.iter().map(|n| n.info().local_addr()).collect();
        Ok(LocalTestnet { inner, addrs })
    }

    /// The nodes' addresses (each one is a bootstrap node for the others).
    pub fn addrs(&self) -> &[SocketAddrV4] {
        &self.addrs
    }

    /// The nodes' addresses as a `--bootstrap` list.
    pub fn bootstrap(&self) -> Vec<String> {
        self.inner.bootstrap.clone()
    }
}

/// A default deadline for one lookup: BEP 5 queries on a healthy network
/// end in a few seconds; the public DHT can take longer.
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_first_20_bytes_of_sha256() {
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(
            key_hex(&name_key("abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a3"
        );
        let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(content_key(sha).unwrap(), name_key("abc"));
        assert_eq!(content_key(&sha.to_uppercase()).unwrap(), name_key("abc"));
        for bad in ["", "xyz", &sha[..63], &format!("{}g", &sha[..63]), "é"] {
            assert!(content_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bootstrap_lists() {
        assert_eq!(
            parse_bootstrap("127.0.0.1:5, router.example:6881").unwrap(),
            vec!["127.0.0.1:5", "router.example:6881"]
        );
        for bad in ["", "host", ":5", "h:0", "h:x", "h:70000", "a:1,,b:2"] {
            assert!(parse_bootstrap(bad).is_err(), "{bad:?}");
        }
        let many = vec!["h:1"; MAX_BOOTSTRAP_NODES + 1].join(",");
        assert!(parse_bootstrap(&many).is_err());
    }

    #[test]
    fn announce_then_lookup_on_a_local_testnet() {
        let testnet = LocalTestnet::start(5).unwrap();
        // Short: loopback nodes answer at once (see `request_timeout`).
        let client = NodeConfig {
            bind: Ipv4Addr::LOCALHOST,
            request_timeout: Some(Duration::from_millis(300)),
            ..NodeConfig::client(testnet.bootstrap())
        };
        let node = DhtNode::start(&client).unwrap();
        let key = name_key("file.txt");
        node.announce(&key, 4242).unwrap();
        let other = DhtNode::start(&client).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let found = other.lookup(&key, deadline).unwrap();
        assert!(found.contains(&SocketAddrV4::new(Ipv4Addr::LOCALHOST, 4242)));
        assert!(other
            .lookup(&name_key("other"), Instant::now() + Duration::from_secs(20))
            .unwrap()
            .is_empty());
    }
}
