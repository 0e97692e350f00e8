//! The in-memory index of registrations that answers SEARCH without SQL.
//!
//! SQLite stays the durable truth; this is a copy of its registrations,
//! keyed by the SHA-256 of the name, built at start-up from the database
//! ([`Index::rebuild`]) and kept in step by the writer thread, which applies
//! each batch's [`Change`]s only after that batch's `COMMIT` returned (so a
//! reader never sees a change that is not on disk). Changes made to the file
//! by another process (`p2p-admin prune`) are caught by the writer's poll of
//! `PRAGMA data_version`, which rebuilds the index (see
//! docs/architecture.md, "Reads from memory").
//!
//! Concurrency: [`SHARDS`] shards, each a `RwLock` over a hash map, chosen
//! by the key's hash. Readers (every worker) take one shard's
//! read lock for the time of one lookup; the single writer takes one shard's
//! write lock per change. A SEARCH never waits for the disk.
//!
//! Like the SQL it replaces, a read filters by liveness (`last_seen >=
//! live_since`) itself: expired registrations may stay here until the
//! writer's sweep deletes them from the database and then from the index.
//!
//! This module must not touch the database (the rows it is built from come
//! from [`crate::store::each_registration`]) and must not decide anything a
//! write's SQL decides (`--max-per-host`, what a heartbeat refreshes is
//! mirrored, not chosen, here).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use p2p_proto::protocol::Source;
use sha2::{Digest, Sha256};

use crate::store::MAX_SEARCH_SOURCES;

/// Shards of the index: enough that the workers and the writer rarely
/// meet on one lock, few enough that a sweep's pass stays cheap.
pub const SHARDS: usize = 64;

/// The key of a name: its SHA-256 (the bytes the protocol's hex `name_key` spells).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl Key {
    /// The key of `name`.
    pub fn of_name(name: &str) -> Key {
        Key(Sha256::digest(name.as_bytes()).into())
    }

    /// The key spelled by 64 hex digits (a `name_key` column), if it is one.
    pub fn from_hex(hex: &str) -> Option<Key> {
        p2p_proto::hex::from_hex_array(hex).map(Key)
    }

    fn shard(&self) -> usize {
        // Middle bits: the map takes its bucket from the low bits and its
        // tag from the top 7; a shard must not make either constant.
        (self.mixed() >> 32) as usize % SHARDS
    }

    /// All 32 bytes folded into one well-mixed word. A key from the protocol
    /// is a SHA-256 and uniform already, but the database may hold keys
    /// that are not (a hand-made file: `{i:064x}`, all zeros but the tail),
    /// and a hash of only some bytes would put them all in one bucket.
    fn mixed(&self) -> u64 {
        let mut h: u64 = 0;
        for chunk in self.0.chunks_exact(8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            h = (h.rotate_left(23) ^ u64::from_le_bytes(word)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
        // MurmurHash3's finaliser: every output bit depends on every input
        // bit (a product alone leaves low bits zero for keys zero at the start).
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.mixed());
    }
}

/// A hasher that passes [`Key`]'s `write_u64` through: no SipHash per lookup.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by Key; correct (if slow) for anything else.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type KeyMap<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

/// One registration as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Shared by every registration of the peer.
    host: Arc<str>,
    port: u16,
    size: u64,
    sha256: [u8; 32],
    last_seen: i64,
    seen_seq: i64,
}

/// Sources of one name, in ascending `seen_seq`: every write takes a
/// sequence above all before it, so a refreshed entry moves to the end and
/// SEARCH reads from the end (most recently seen first, as `ORDER BY
/// seen_seq DESC`).
type Sources = Vec<Entry>;

/// A peer address, with the host shared by its entries.
type PeerAddr = (Arc<str>, u16);

/// A committed change, as the writer hands it to the index.
#[derive(Debug, Clone)]
pub enum Change {
    Register {
        key: Key,
        host: String,
        port: u16,
        size: u64,
        sha256: String,
        ms: i64,
        seq: i64,
    },
    Unregister {
        key: Key,
        host: String,
        port: u16,
    },
    /// Refreshes the live registrations of `host:port` (`last_seen >= live_since`).
    Heartbeat {
        host: String,
        port: u16,
        ms: i64,
        seq: i64,
        live_since: i64,
    },
}

/// One row of the database, for [`Index::rebuild`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub name_key: String,
    pub host: String,
    pub port: u16,
    pub size: u64,
    pub sha256: String,
    pub last_seen: i64,
    pub seen_seq: i64,
}

/// The index; shared by the workers (reads) and the writer (changes).
pub struct Index {
    shards: Box<[RwLock<KeyMap<Sources>>]>,
    /// Names registered by each peer: what a heartbeat refreshes. Only the
    /// writer touches it (readers never lock it).
    peers: Mutex<HashMap<PeerAddr, HashSet<Key, BuildHasherDefault<KeyHasher>>>>,
    /// Registrations held, kept by the writer (a gauge; no lock to read).
    entries: AtomicUsize,
    /// Whether the index holds anything (`dht-server --memory-index`). A
    /// disabled index ignores every change and SEARCH goes to SQLite.
    enabled: bool,
}

impl Default for Index {
    fn default() -> Index {
        Index::new()
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Index {
        Index {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            peers: Mutex::default(),
            entries: AtomicUsize::new(0),
            enabled: true,
        }
    }

    /// An index that holds nothing and ignores every change: the registry
    /// then answers SEARCH from SQLite (the default; see `--memory-index`).
    pub fn disabled() -> Index {
        Index {
            enabled: false,
            ..Index::new()
        }
    }

    /// Whether this index answers SEARCH (see [`Index::disabled`]).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Live sources of the name keyed `key`, most recently seen first, at
    /// most [`MAX_SEARCH_SOURCES`]: the answer `Store::search` gives.
    pub fn search(&self, key: &Key, live_since: i64) -> Vec<Source> {
        let shard = self.shards[key.shard()]
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(sources) = shard.get(key) else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(sources.len().min(MAX_SEARCH_SOURCES));
        for e in sources.iter().rev().filter(|e| e.last_seen >= live_since) {
            if out.len() == MAX_SEARCH_SOURCES {
                break;
            }
            out.push(Source {
                host: e.host.as_ref().to_owned(),
                port: e.port,
                size: e.size,
                sha256: p2p_proto::protocol::to_hex(&e.sha256),
            });
        }
        out
    }

    /// How many registrations the index holds (live or not yet swept).
    pub fn len(&self) -> usize {
        self.entries.load(Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every registration, sorted: to compare two indexes (tests).
    pub fn dump(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            for (key, sources) in shard.iter() {
                for e in sources {
                    rows.push(Row {
                        name_key: p2p_proto::protocol::to_hex(&key.0),
                        host: e.host.to_string(),
                        port: e.port,
                        size: e.size,
                        sha256: p2p_proto::protocol::to_hex(&e.sha256),
                        last_seen: e.last_seen,
                        seen_seq: e.seen_seq,
                    });
                }
            }
        }
        rows.sort_by(|a, b| (&a.name_key, &a.host, a.port).cmp(&(&b.name_key, &b.host, b.port)));
        rows
    }

    /// Replaces the whole content by `rows` (any order). Built aside, then
    /// swapped in shard by shard: a reader sees, for any one name, either
    /// the old sources or the new ones. An error from `rows` leaves the
    /// index as it was. Rows whose keys or hashes are not
    /// 64 hex digits (never written by the server) are skipped and counted.
    pub fn rebuild<E>(&self, rows: impl IntoIterator<Item = Result<Row, E>>) -> Result<usize, E> {
        let mut shards: Vec<KeyMap<Sources>> = (0..SHARDS).map(|_| KeyMap::default()).collect();
        let mut peers: HashMap<PeerAddr, HashSet<Key, BuildHasherDefault<KeyHasher>>> =
            HashMap::new();
        let mut hosts: HashMap<String, Arc<str>> = HashMap::new();
        let mut skipped = 0;
        for row in rows {
            let row = row?;
            let (Some(key), Some(sha256)) = (
                Key::from_hex(&row.name_key),
                p2p_proto::hex::from_hex_array(&row.sha256),
            ) else {
                skipped += 1;
                continue;
            };
            let host = match hosts.get(&row.host) {
                Some(h) => Arc::clone(h),
                None => {
                    let h: Arc<str> = Arc::from(row.host.as_str());
                    hosts.insert(row.host, Arc::clone(&h));
                    h
                }
            };
            peers
                .entry((Arc::clone(&host), row.port))
                .or_default()
                .insert(key);
            // Most names have one source: a Vec's first push would reserve four.
            let sources = shards[key.shard()]
                .entry(key)
                .or_insert_with(|| Vec::with_capacity(1));
            sources.push(Entry {
                host,
                port: row.port,
                size: row.size,
                sha256,
                last_seen: row.last_seen,
                seen_seq: row.seen_seq,
            });
        }
        let mut total = 0;
        for (slot, mut fresh) in self.shards.iter().zip(shards) {
            for sources in fresh.values_mut() {
                sources.sort_by_key(|e| e.seen_seq);
                total += sources.len();
            }
            *slot.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        }
        *self.peers.lock().unwrap_or_else(PoisonError::into_inner) = peers;
        self.set_len(total);
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "registrations with malformed keys left out of the index"
            );
        }
        Ok(skipped)
    }

    /// Applies changes the writer has committed, in commit order.
    pub fn apply(&self, changes: &[Change]) {
        if changes.is_empty() || !self.enabled {
            return;
        }
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = self.len();
        for change in changes {
            match change {
                Change::Register {
                    key,
                    host,
                    port,
                    size,
                    sha256,
                    ms,
                    seq,
                } => {
                    let Some(sha256) = p2p_proto::hex::from_hex_array(sha256) else {
                        continue; // the protocol admits only 64 hex digits
                    };
                    let addr = peer_addr(&peers, host, *port);
                    peers.entry(addr.clone()).or_default().insert(*key);
                    let mut shard = self.shards[key.shard()]
                        .write()
                        .unwrap_or_else(PoisonError::into_inner);
                    let sources = shard.entry(*key).or_insert_with(|| Vec::with_capacity(1));
                    match position(sources, host, *port) {
                        Some(at) => drop(sources.remove(at)),
                        None => total += 1,
                    }
                    sources.push(Entry {
                        host: addr.0,
                        port: *port,
                        size: *size,
                        sha256,
                        last_seen: *ms,
                        seen_seq: *seq,
                    });
                }
                Change::Unregister { key, host, port } => {
                    let addr: PeerAddr = (Arc::from(host.as_str()), *port);
                    if let Some(names) = peers.get_mut(&addr) {
                        names.remove(key);
                        if names.is_empty() {
                            peers.remove(&addr);
                        }
                    }
                    let mut shard = self.shards[key.shard()]
                        .write()
                        .unwrap_or_else(PoisonError::into_inner);
                    if let Some(sources) = shard.get_mut(key) {
                        if let Some(at) = position(sources, host, *port) {
                            sources.remove(at);
                            total -= 1;
                        }
                        if sources.is_empty() {
                            shard.remove(key);
                        }
                    }
                }
                Change::Heartbeat {
                    host,
                    port,
                    ms,
                    seq,
                    live_since,
                } => {
                    let addr: PeerAddr = (Arc::from(host.as_str()), *port);
                    let Some(names) = peers.get(&addr) else {
                        continue;
                    };
                    for key in names {
                        let mut shard = self.shards[key.shard()]
                            .write()
                            .unwrap_or_else(PoisonError::into_inner);
                        let Some(sources) = shard.get_mut(key) else {
                            continue;
                        };
                        let Some(at) = position(sources, host, *port) else {
                            continue;
                        };
                        if sources[at].last_seen < *live_since {
                            continue; // expired stays expired, as in the SQL
                        }
                        let mut e = sources.remove(at);
                        e.last_seen = *ms;
                        e.seen_seq = *seq;
                        sources.push(e);
                    }
                }
            }
        }
        drop(peers);
        self.set_len(total);
    }

    /// Drops every registration not seen since `live_since`: after the
    /// writer's expiry sweep has deleted the same rows from the database.
    pub fn sweep(&self, live_since: i64) {
        if !self.enabled {
            return;
        }
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|key, sources| {
                sources.retain(|e| {
                    let live = e.last_seen >= live_since;
                    if !live {
                        let addr: PeerAddr = (Arc::clone(&e.host), e.port);
                        if let Some(names) = peers.get_mut(&addr) {
                            names.remove(key);
                            if names.is_empty() {
                                peers.remove(&addr);
                            }
                        }
                    }
                    live
                });
                total += sources.len();
                !sources.is_empty()
            });
        }
        self.set_len(total);
    }

    fn set_len(&self, total: usize) {
        self.entries.store(total, Relaxed);
        crate::metrics::set_index_entries(total);
    }
}

/// The shared host of `host:port` when the peer is known, else a new one.
fn peer_addr(
    peers: &HashMap<PeerAddr, HashSet<Key, BuildHasherDefault<KeyHasher>>>,
    host: &str,
    port: u16,
) -> PeerAddr {
    let probe: PeerAddr = (Arc::from(host), port);
    match peers.get_key_value(&probe) {
        Some((addr, _)) => addr.clone(),
        None => probe,
    }
}

fn position(sources: &[Entry], host: &str, port: u16) -> Option<usize> {
    sources
        .iter()
        .position(|e| e.port == port && e.host.as_ref() == host)
}

/// 32 bytes from 64 hex digits (either case), or `None`.
#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn register(index: &Index, name: &str, port: u16, seq: i64) {
        index.apply(&[Change::Register {
            key: Key::of_name(name),
            host: "10.0.0.1".into(),
            port,
            size: 5,
            sha256: HASH.into(),
            ms: seq,
            seq,
        }]);
    }

    fn ports(index: &Index, name: &str, since: i64) -> Vec<u16> {
        index
            .search(&Key::of_name(name), since)
            .iter()
            .map(|s| s.port)
            .collect()
    }

    #[test]
    fn order_heartbeat_unregister_and_sweep() {
        let index = Index::new();
        register(&index, "a", 1, 10);
        register(&index, "a", 2, 20);
        register(&index, "b", 1, 30);
        assert_eq!(ports(&index, "a", 0), [2, 1]);
        assert_eq!(ports(&index, "a", 15), [2], "expired entries are not shown");
        let s = &index.search(&Key::of_name("a"), 0)[0];
        assert_eq!(
            (s.host.as_str(), s.size, s.sha256.as_str()),
            ("10.0.0.1", 5, HASH)
        );

        // A heartbeat moves live entries to the front; an expired one stays.
        index.apply(&[Change::Heartbeat {
            host: "10.0.0.1".into(),
            port: 1,
            ms: 40,
            seq: 40,
            live_since: 5,
        }]);
        assert_eq!(ports(&index, "a", 0), [1, 2]);
        index.apply(&[Change::Heartbeat {
            host: "10.0.0.1".into(),
            port: 2,
            ms: 50,
            seq: 50,
            live_since: 35,
        }]);
        assert_eq!(ports(&index, "a", 0), [1, 2], "expired is not refreshed");

        index.apply(&[Change::Unregister {
            key: Key::of_name("a"),
            host: "10.0.0.1".into(),
            port: 1,
        }]);
        assert_eq!(ports(&index, "a", 0), [2]);
        index.sweep(35);
        assert!(ports(&index, "a", 0).is_empty());
        assert_eq!(ports(&index, "b", 0), [1]);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn search_is_capped_and_rebuild_keeps_order() {
        let index = Index::new();
        for port in 1..=(MAX_SEARCH_SOURCES as u16 + 10) {
            register(&index, "many", port, i64::from(port));
        }
        let got = ports(&index, "many", 0);
        assert_eq!(got.len(), MAX_SEARCH_SOURCES);
        assert_eq!(got[0], MAX_SEARCH_SOURCES as u16 + 10);
        let rows = index.dump();
        let copy = Index::new();
        assert_eq!(copy.rebuild(rows.into_iter().rev().map(Ok::<_, ()>)), Ok(0));
        assert_eq!(copy.dump(), index.dump());
        assert_eq!(ports(&copy, "many", 0), got);
    }

    #[test]
    fn hex_keys() {
        assert_eq!(
            Key::from_hex(&p2p_proto::protocol::name_key("x")),
            Some(Key::of_name("x"))
        );
        assert_eq!(Key::from_hex("zz"), None);
        assert_eq!(Key::from_hex(&"g".repeat(64)), None);
    }
}
