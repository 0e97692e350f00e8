//! The in-memory index of registrations that answers SEARCH without SQL.
//!
//! SQLite stays the durable truth; this is a copy of its registrations,
//! keyed by the SHA-256 of the name, loaded from the database
//! ([`Index::rebuild`], on the writer thread once the server listens) and
//! kept in step by the writer thread, which applies each batch's
//! [`Change`]s only after that batch's `COMMIT` returned (so a reader never
//! sees a change that is not on disk). Changes made to the file by another
//! process (`p2p-admin prune`) are caught by the writer's poll of
//! `PRAGMA data_version`, which loads the index again (see
//! docs/architecture.md, "Reads from memory").
//!
//! While a load runs (or after one failed) the index is *not ready*:
//! [`Index::search`] answers `None` and the caller asks SQLite instead. A
//! generation counter, odd while not ready, tells a reader whether what it
//! read may be half-loaded: it is read before and after each lookup.
//!
//! Concurrency: [`SHARDS`] shards, each an `RwLock` over a hash table,
//! chosen by the key's hash. Readers (every worker) take one shard's read
//! lock, and the peer table's, for the time of one lookup; the single
//! writer takes one shard's write lock per change. A SEARCH never waits for
//! the disk.
//!
//! Layout, for memory (about 70 bytes a registration; BENCHMARKS.md): a
//! shard is a slab of 64-byte slots (a 64-bit fingerprint of the name's
//! key, not the 32-byte key, and its sources) in fixed chunks, so it grows
//! without doubling, and a table of 4-byte slot numbers; a name's sources
//! are held inline when there is one (most names); a source names its peer
//! by a 4-byte id into a peer table, and its content hash is 32 bytes. No
//! sequence number is kept: sources are held in the order they were last
//! seen, which is all SEARCH needs. The fingerprints are keyed by a secret
//! drawn at each load, and the writer checks a registration's file against
//! the slot it finds (see [`Shard::fingerprint`] for what that leaves).
//!
//! Like the SQL it replaces, a read filters by liveness (`last_seen >=
//! live_since`) itself: expired registrations may stay here until the
//! writer's sweep deletes them from the database and then from the index.
//!
//! This module must not touch the database (the rows it is built from come
//! from [`crate::store::load_index`]) and must not decide anything a
//! write's SQL decides (`--max-per-host`, what a heartbeat refreshes is
//! mirrored, not chosen, here).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use hashbrown::HashTable;
use p2p_proto::protocol::Source;
use sha2::{Digest, Sha256};

use p2p_proto::protocol::{FindHit, MAX_FIND_RESULTS, MAX_SEARCH_SOURCES};

use crate::names::{Names, Phrase, RecId, NO_REC};

/// Shards of the index: enough that the workers and the writer rarely
/// meet on one lock, few enough that a sweep's pass stays cheap.
pub const SHARDS: usize = 64;

/// Bits of a name id that give its shard ([`SHARDS`] = 2^6); the rest is
/// the slot within the shard.
const SHARD_BITS: u32 = 6;

/// Slots one shard can number.
const SLOTS_PER_SHARD: u32 = 1 << (32 - SHARD_BITS);

/// Slots per chunk of a shard's slab (about 90 KiB): the slab grows a chunk
/// at a time, so it wastes at most one chunk, where a `Vec` that doubles
/// can hold twice what it uses.
const CHUNK: usize = 1024;

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
        hex32(hex).map(Key)
    }

    fn shard(&self) -> usize {
        // Not keyed like the fingerprint within the shard: a name aimed at
        // one shard only makes that shard larger.
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

/// A hasher that passes [`Key`]'s `write_u64` through and mixes a `u32`
/// (a name id) with one multiplication: no SipHash per lookup.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used by Key or u32; correct (if slow) for anything else.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
    fn write_u32(&mut self, n: u32) {
        // An odd multiplier permutes the low bits (the bucket) and mixes
        // them into the top ones (the table's tag).
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A peer's id in the peer table: its index plus one (so that `Sources`
/// finds a spare value in it and keeps one source inline in 56 bytes).
type PeerId = NonZeroU32;

/// A name's id: its shard in the top [`SHARD_BITS`], its slot below.
type NameId = u32;

type NameSet = HashSet<NameId, BuildHasherDefault<KeyHasher>>;

/// A peer address as the table holds it.
type PeerAddr = (Arc<str>, u16);

/// A source of a SEARCH answer, borrowed from the index for the time of
/// one lookup ([`Index::search_with`]).
#[derive(Debug, Clone, Copy)]
pub struct SourceRef<'a> {
    pub host: &'a str,
    pub port: u16,
    pub size: u64,
    pub sha256: &'a [u8; 32],
}

/// One registration as the index holds it: 56 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    sha256: [u8; 32],
    size: u64,
    last_seen: i64,
    peer: PeerId,
    /// The record of the source's name in the word index ([`Names`]), or
    /// [`NO_REC`] (not made yet, or the word index is broken): the same in
    /// every source of a name. It is kept here, not once in the [`Slot`],
    /// because here it fills the 4 bytes the entry would pad itself with,
    /// and the slot holds its one-source case in 64 bytes.
    record: RecId,
}

/// Sources of one name, oldest first: a write puts its source last (a
/// refreshed one moves there), SEARCH reads from the end (most recently
/// seen first, as `ORDER BY seen_seq DESC`). One source is held inline;
/// an empty `Many` is a free slot.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sources {
    One(Entry),
    Many(Vec<Entry>),
}

impl Sources {
    const EMPTY: Sources = Sources::Many(Vec::new());

    fn as_slice(&self) -> &[Entry] {
        match self {
            Sources::One(e) => std::slice::from_ref(e),
            Sources::Many(v) => v,
        }
    }

    fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// The record of the name in the word index ([`NO_REC`] for a free slot).
    fn record(&self) -> RecId {
        self.as_slice().first().map_or(NO_REC, |e| e.record)
    }

    /// Tells every source the record of their name.
    fn set_record(&mut self, r: RecId) {
        match self {
            Sources::One(e) => e.record = r,
            Sources::Many(v) => v.iter_mut().for_each(|e| e.record = r),
        }
    }

    fn position(&self, peer: PeerId) -> Option<usize> {
        self.as_slice().iter().position(|e| e.peer == peer)
    }

    /// Appends `e` as the most recently seen.
    fn push(&mut self, e: Entry) {
        match self {
            Sources::Many(v) if v.is_empty() => *self = Sources::One(e),
            Sources::Many(v) => v.push(e),
            Sources::One(first) => {
                *self = Sources::Many(vec![*first, e]);
            }
        }
    }

    /// Removes and returns the source at `at` (a position from [`Sources::position`]).
    fn remove(&mut self, at: usize) -> Entry {
        let removed = match self {
            Sources::One(e) => {
                let e = *e;
                *self = Sources::EMPTY;
                return e;
            }
            Sources::Many(v) => v.remove(at),
        };
        self.settle();
        removed
    }

    /// Keeps the sources for which `keep` holds.
    fn retain(&mut self, mut keep: impl FnMut(&Entry) -> bool) {
        match self {
            Sources::One(e) => {
                if !keep(e) {
                    *self = Sources::EMPTY;
                }
            }
            Sources::Many(v) => {
                v.retain(|e| keep(e));
                self.settle();
            }
        }
    }

    /// Back to one inline source when one is left; no spare room kept.
    fn settle(&mut self) {
        if let Sources::Many(v) = self {
            if let [only] = v.as_slice() {
                *self = Sources::One(*only);
            } else if v.capacity() > 2 * v.len() {
                v.shrink_to_fit();
            }
        }
    }

    fn from_group(mut group: Vec<(i64, Entry)>) -> Sources {
        group.sort_by_key(|(seq, _)| *seq);
        let mut sources = Sources::EMPTY;
        if let [(_, only)] = group.as_slice() {
            sources.push(*only);
        } else {
            // Exactly as many as there are: a collect could keep the
            // group's larger buffer.
            let mut v = Vec::with_capacity(group.len());
            v.extend(group.into_iter().map(|(_, e)| e));
            sources = Sources::Many(v);
        }
        sources
    }
}

/// A name in a shard: 64 bytes with one source inline.
#[derive(Debug, Clone)]
struct Slot {
    /// The name's key as the shard fingerprints it ([`Shard::fingerprint`]):
    /// the 32-byte key is not kept (at a million names it was 30 MiB, a
    /// third of the slots).
    fingerprint: u64,
    sources: Sources,
}

/// One shard: a slab of slots and a hash table of slot numbers.
#[derive(Default)]
struct Shard {
    /// The keys of the shard's fingerprints ([`Shard::fingerprint`]): random,
    /// drawn anew with every load (each load makes new shards).
    keys: RandomState,
    /// Numbers of the slots in use, hashed by their fingerprints.
    table: HashTable<u32>,
    /// The slots, [`CHUNK`] to a chunk; a free slot has no sources.
    chunks: Vec<Vec<Slot>>,
    /// Free slots, reused first.
    free: Vec<u32>,
}

fn slot_in(chunks: &[Vec<Slot>], n: u32) -> &Slot {
    &chunks[n as usize / CHUNK][n as usize % CHUNK]
}

impl Shard {
    fn slot(&self, n: u32) -> &Slot {
        slot_in(&self.chunks, n)
    }

    fn slot_mut(&mut self, n: u32) -> &mut Slot {
        &mut self.chunks[n as usize / CHUNK][n as usize % CHUNK]
    }

    /// The fingerprint of `key` in this shard: SipHash-1-3 of the key under
    /// the shard's random [`Shard::keys`], which is what a slot keeps and the
    /// table hashes. Two keys of one shard share a fingerprint with
    /// probability 2^-64 a pair, and nobody outside the process can aim at
    /// that (the keys are secret and change with every load): the writer
    /// checks every new registration's name against the slot it finds
    /// ([`Index::apply`]) and a load refuses two names with one fingerprint,
    /// so a registered name never answers for another; what is left is a
    /// SEARCH for a name nobody registered meeting a registered one's
    /// fingerprint, n/2^64 a lookup (one in 1.8 * 10^13 at a million names).
    fn fingerprint(&self, key: &Key) -> u64 {
        self.keys.hash_one(key.0)
    }

    fn find(&self, fingerprint: u64) -> Option<u32> {
        let chunks = &self.chunks;
        self.table
            .find(fingerprint, |&n| {
                slot_in(chunks, n).fingerprint == fingerprint
            })
            .copied()
    }

    fn get(&self, key: &Key) -> Option<&Sources> {
        self.find(self.fingerprint(key))
            .map(|n| &self.slot(n).sources)
    }

    /// The slot of `key`, a free one taken for it if it has none, and
    /// whether it is new; `None` when the shard cannot number another slot.
    fn slot_for(&mut self, key: &Key) -> Option<(u32, bool)> {
        let fingerprint = self.fingerprint(key);
        if let Some(n) = self.find(fingerprint) {
            return Some((n, false));
        }
        self.new_slot(fingerprint).map(|n| (n, true))
    }

    /// A free slot for `fingerprint`, which has none (the caller checked).
    fn new_slot(&mut self, fingerprint: u64) -> Option<u32> {
        let fresh = Slot {
            fingerprint,
            sources: Sources::EMPTY,
        };
        let n = match self.free.pop() {
            Some(n) => {
                *self.slot_mut(n) = fresh;
                n
            }
            None => {
                let used = self.chunks.len().saturating_sub(1) * CHUNK
                    + self.chunks.last().map_or(0, Vec::len);
                let n = u32::try_from(used).ok().filter(|n| *n < SLOTS_PER_SHARD)?;
                match self.chunks.last_mut() {
                    Some(chunk) if chunk.len() < CHUNK => chunk.push(fresh),
                    _ => {
                        let mut chunk = Vec::with_capacity(CHUNK);
                        chunk.push(fresh);
                        self.chunks.push(chunk);
                    }
                }
                n
            }
        };
        let Shard { table, chunks, .. } = self;
        table.insert_unique(fingerprint, n, |&m| slot_in(chunks, m).fingerprint);
        Some(n)
    }

    /// Frees slot `n` if it has no sources left; returns whether it did.
    fn release_if_empty(&mut self, n: u32) -> bool {
        let slot = self.slot(n);
        if !slot.sources.is_empty() {
            return false;
        }
        if let Ok(entry) = self.table.find_entry(slot.fingerprint, |&m| m == n) {
            entry.remove();
        }
        self.free.push(n);
        true
    }

    /// Slots in use: `(number, slot)`.
    fn used(&self) -> impl Iterator<Item = (u32, &Slot)> {
        self.chunks
            .iter()
            .flatten()
            .enumerate()
            .filter(|(_, s)| !s.sources.is_empty())
            .map(|(n, s)| (n as u32, s))
    }
}

/// 32 bytes from 64 lowercase hex digits (what the server writes), or
/// `None`: `p2p_proto::hex::from_hex_array` without its `Vec`, which was a
/// tenth of the load of a million rows.
fn hex32(text: &str) -> Option<[u8; 32]> {
    fn digit(d: u8) -> Option<u8> {
        match d {
            b'0'..=b'9' => Some(d - b'0'),
            b'a'..=b'f' => Some(d - b'a' + 10),
            _ => None,
        }
    }
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

fn name_id(shard: usize, slot: u32) -> NameId {
    ((shard as u32) << (32 - SHARD_BITS)) | slot
}

fn split_name_id(id: NameId) -> (usize, u32) {
    (
        (id >> (32 - SHARD_BITS)) as usize,
        id & (SLOTS_PER_SHARD - 1),
    )
}

/// The writer's book of peers: ids by address and the names each peer
/// has an entry for (what a heartbeat refreshes). Readers never lock it.
#[derive(Default)]
struct Book {
    /// Host, then port, to the peer's id.
    ids: HashMap<Arc<str>, HashMap<u16, PeerId>>,
    /// Names of each peer, by id − 1; `None` for a free id.
    names: Vec<Option<NameSet>>,
    /// Ids free for reuse.
    free: Vec<PeerId>,
}

impl Book {
    fn lookup(&self, host: &str, port: u16) -> Option<PeerId> {
        self.ids
            .get(host)
            .and_then(|ports| ports.get(&port))
            .copied()
    }

    /// The id of `host:port`, a new one (recorded in `hosts`) if it has
    /// none; `None` when no more ids can be made (4 billion peers).
    fn id_for(
        &mut self,
        host: &str,
        port: u16,
        hosts: &mut Vec<Option<PeerAddr>>,
    ) -> Option<PeerId> {
        if let Some(id) = self.lookup(host, port) {
            return Some(id);
        }
        let host: Arc<str> = match self.ids.get_key_value(host) {
            Some((shared, _)) => Arc::clone(shared),
            None => Arc::from(host),
        };
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let next = u32::try_from(self.names.len() + 1).ok()?;
                let id = NonZeroU32::new(next)?;
                self.names.push(None);
                hosts.push(None);
                id
            }
        };
        let at = id.get() as usize - 1;
        self.names[at] = Some(NameSet::default());
        hosts[at] = Some((Arc::clone(&host), port));
        self.ids.entry(host).or_default().insert(port, id);
        Some(id)
    }

    fn names(&self, id: PeerId) -> Option<&NameSet> {
        self.names
            .get(id.get() as usize - 1)
            .and_then(Option::as_ref)
    }

    fn names_mut(&mut self, id: PeerId) -> Option<&mut NameSet> {
        self.names
            .get_mut(id.get() as usize - 1)
            .and_then(Option::as_mut)
    }

    /// `name` no longer has an entry of peer `id`; returns `true` when the
    /// peer has no entry left (its id is then to be freed).
    fn forget(&mut self, id: PeerId, name: NameId) -> bool {
        match self.names_mut(id) {
            Some(names) => {
                names.remove(&name);
                names.is_empty()
            }
            None => false,
        }
    }

    /// Frees the id of a peer without entries.
    fn free_peer(&mut self, id: PeerId, hosts: &mut [Option<PeerAddr>]) {
        let at = id.get() as usize - 1;
        if let Some(Some((host, port))) = hosts.get_mut(at).map(Option::take) {
            if let Some(ports) = self.ids.get_mut(&host) {
                ports.remove(&port);
                if ports.is_empty() {
                    self.ids.remove(&host);
                }
            }
        }
        if let Some(slot) = self.names.get_mut(at) {
            *slot = None;
        }
        self.free.push(id);
    }
}

/// A committed change, as the writer hands it to the index.
#[derive(Debug, Clone)]
pub enum Change {
    Register {
        key: Key,
        /// The name's `files.id` and the name: what the word index keeps
        /// of a name new to it.
        file_id: i64,
        name: String,
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
    /// The expiry sweep deleted every registration not seen since
    /// `live_since` (what [`Index::sweep`] applies; kept in this form for a
    /// load under way).
    Sweep {
        live_since: i64,
    },
}

/// The content of an index built by [`Index::build`], to [`Index::install`].
pub struct Built {
    fresh: Fresh,
    /// Rows left out (malformed keys or hashes).
    pub skipped: usize,
}

impl Built {
    /// Gives the names of rows that came without them: `(files.id, name)`
    /// in id order (a scan of `files`, in the same snapshot as the rows),
    /// then builds the word index. A name missing here breaks the word
    /// index (FIND goes to SQLite), not SEARCH's.
    pub fn with_names<E>(
        mut self,
        names: impl IntoIterator<Item = Result<(i64, String), E>>,
    ) -> Result<Built, E> {
        let fresh = &mut self.fresh;
        if !fresh.unnamed {
            return Ok(self);
        }
        fresh.files.sort_unstable_by_key(|&(id, ..)| id);
        for f in &mut fresh.files {
            f.3 = u32::MAX; // not where the load put it, until found
        }
        let mut at = 0;
        for name in names {
            let (id, name) = name?;
            while at < fresh.files.len() && fresh.files[at].0 < id {
                at += 1;
            }
            let Some(file) = fresh.files.get_mut(at).filter(|f| f.0 == id) else {
                continue; // a name without registrations (never after a write)
            };
            let (Ok(start), Ok(len)) = (u32::try_from(fresh.text.len()), u32::try_from(name.len()))
            else {
                break;
            };
            fresh.text.push_str(&name);
            (file.2, file.3) = (start, len);
        }
        fresh.unnamed = false;
        fresh.finish_words();
        Ok(self)
    }

    /// Registrations it holds.
    pub fn len(&self) -> usize {
        self.fresh.entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    /// The write sequence; from [`Index::dump`], the source's rank among
    /// its name's (0 the least recently seen), as the index keeps no sequence.
    pub seen_seq: i64,
    /// The name's `files.id` and the name itself (the same on every row of
    /// one name).
    pub file_id: i64,
    pub name: String,
}

/// The index; shared by the workers (reads) and the writer (changes).
pub struct Index {
    shards: Box<[RwLock<Shard>]>,
    /// The names and their words, for FIND. Lock order: this before any
    /// shard (a FIND holds it while it reads the shards of its matches).
    names: RwLock<Names>,
    /// Peer addresses by id − 1: what readers resolve a source's peer with.
    /// Written only when a peer gets or loses its id.
    hosts: RwLock<Vec<Option<PeerAddr>>>,
    /// The writer's book (see [`Book`]).
    book: Mutex<Book>,
    /// Registrations held, kept by the writer (a gauge; no lock to read).
    entries: AtomicUsize,
    /// Even: in step with the database, answers SEARCH. Odd: a load runs
    /// or failed, and SEARCH goes to SQLite. Starts odd: not yet loaded.
    generation: AtomicU64,
    /// Whether the index holds anything (`dht-server --memory-index`). A
    /// disabled index ignores every change and SEARCH goes to SQLite.
    enabled: bool,
}

/// What [`Index::rebuild`] builds aside before swapping it in.
struct Fresh {
    shards: Vec<Shard>,
    hosts: Vec<Option<PeerAddr>>,
    book: Book,
    /// Names of each peer, by id − 1, made into the book's sets at the end
    /// (each set sized once, where inserting one by one rehashed as it grew).
    names: Vec<Vec<NameId>>,
    entries: usize,
    /// A name's rows were not consecutive, or an id ran out: not loaded.
    failed: Option<&'static str>,
    /// Every name: `(files.id, name id, where its text is in `text`, its
    /// length)` (24 bytes a name while the load runs).
    files: Vec<(i64, NameId, u32, u32)>,
    text: String,
    /// The word index, once built from `files`.
    words: Names,
    /// Some rows came without their name: [`Built::with_names`] gives them.
    unnamed: bool,
}

impl Fresh {
    fn new() -> Fresh {
        Fresh {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            hosts: Vec::new(),
            book: Book::default(),
            names: Vec::new(),
            entries: 0,
            failed: None,
            files: Vec::new(),
            text: String::new(),
            words: Names::default(),
            unnamed: false,
        }
    }

    /// Builds the word index from `files` and `text`, and tells each slot
    /// its record in it.
    fn finish_words(&mut self) {
        let files = std::mem::take(&mut self.files);
        let text = std::mem::take(&mut self.text);
        self.words = Names::build(files, text);
        for (r, slot) in self.words.slots() {
            let (s, n) = split_name_id(slot);
            if let Some(shard) = self.shards.get_mut(s) {
                if (n as usize / CHUNK) < shard.chunks.len() {
                    shard.slot_mut(n).sources.set_record(r);
                }
            }
        }
    }

    /// Adds one name's sources (all its rows, any order), and its
    /// `files.id` and name (empty: given later, see [`Built::with_names`]).
    fn add(&mut self, key: Key, group: Vec<(i64, Entry)>, file: (i64, &str)) {
        if group.is_empty() || self.failed.is_some() {
            return;
        }
        let s = key.shard();
        let shard = &mut self.shards[s];
        let fingerprint = shard.fingerprint(&key);
        if shard.find(fingerprint).is_some() {
            // The load that comes next draws new fingerprints (a pair of
            // names that share one here will not there).
            self.failed =
                Some("the rows of one name were not consecutive, or two names share a fingerprint");
            return;
        }
        let Some(n) = shard.new_slot(fingerprint) else {
            self.failed = Some("a shard of the index is full");
            return;
        };
        let id = name_id(s, n);
        if file.1.is_empty() {
            self.unnamed = true;
        }
        let (Ok(at), Ok(len)) = (u32::try_from(self.text.len()), u32::try_from(file.1.len()))
        else {
            self.failed = Some("the names do not fit the index");
            return;
        };
        self.text.push_str(file.1);
        self.files.push((file.0, id, at, len));
        for (_, e) in &group {
            if let Some(names) = self.names.get_mut(e.peer.get() as usize - 1) {
                names.push(id);
            }
        }
        self.entries += group.len();
        shard.slot_mut(n).sources = Sources::from_group(group);
    }
}

impl Default for Index {
    fn default() -> Index {
        Index::new()
    }
}

impl Index {
    /// An empty index, not ready until its first [`Index::rebuild`].
    pub fn new() -> Index {
        Index {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            names: RwLock::default(),
            hosts: RwLock::default(),
            book: Mutex::default(),
            entries: AtomicUsize::new(0),
            generation: AtomicU64::new(1),
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

    /// Whether this index answers SEARCH once loaded (see [`Index::disabled`]).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the index is in step with the database and answers SEARCH.
    pub fn is_ready(&self) -> bool {
        self.enabled && self.generation.load(Ordering::Acquire).is_multiple_of(2)
    }

    /// The live sources of `key`, as SEARCH lists them (most recently seen
    /// first, at most [`MAX_SEARCH_SOURCES`]); `None` when the index is not
    /// ready (ask the database). [`Index::search_with`] without the copies.
    pub fn search(&self, key: &Key, live_since: i64) -> Option<Vec<Source>> {
        self.search_with(key, live_since, |count, sources| {
            let mut out = Vec::with_capacity(count);
            out.extend(sources.map(|s| Source {
                host: s.host.to_owned(),
                port: s.port,
                size: s.size,
                sha256: p2p_proto::protocol::to_hex(s.sha256),
            }));
            out
        })
    }

    /// Answers SEARCH for `key` without copying a source: calls `answer`
    /// with the number of live sources (at most [`MAX_SEARCH_SOURCES`])
    /// and those sources, most recently seen first, and returns what it
    /// returned. `answer` runs under the shard's read lock, so it must not
    /// block (the server formats the reply into its buffer). `None` when
    /// the index is not ready, or when a load began while `answer` ran:
    /// what it was shown may be half-loaded, and whatever it made of it
    /// must be dropped (ask the database).
    pub fn search_with<R>(
        &self,
        key: &Key,
        live_since: i64,
        answer: impl FnOnce(usize, &mut dyn Iterator<Item = SourceRef<'_>>) -> R,
    ) -> Option<R> {
        let before = self.generation.load(Ordering::Acquire);
        if !self.enabled || !before.is_multiple_of(2) {
            return None;
        }
        let answered = {
            let shard = self.shards[key.shard()]
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let sources = shard.get(key).map_or(&[][..], Sources::as_slice);
            // The shard stays locked while hosts are read: a peer's id is
            // freed only after its last entry left its shard.
            let hosts = self.hosts.read().unwrap_or_else(PoisonError::into_inner);
            let visible = || {
                sources
                    .iter()
                    .rev()
                    .filter(|e| e.last_seen >= live_since)
                    .filter_map(|e| match hosts.get(e.peer.get() as usize - 1) {
                        Some(Some((host, port))) => Some(SourceRef {
                            host,
                            port: *port,
                            size: e.size,
                            sha256: &e.sha256,
                        }),
                        _ => None, // never: an entry's peer has an id
                    })
                    .take(MAX_SEARCH_SOURCES)
            };
            answer(visible().count(), &mut visible())
        };
        // A load that began meanwhile may have emptied what was read: its
        // generation, stored before it took any lock, is then seen here.
        (self.generation.load(Ordering::Acquire) == before).then_some(answered)
    }

    /// The answer `Store::find` gives for `words` (already lowercased,
    /// sorted and deduplicated by the caller, each with a letter or digit:
    /// `store::find_words`): the names matching every word as an FTS5
    /// phrase prefix, at most `MAX_FIND_EXAMINED` of them in `files.id`
    /// order, one hit per distinct (name, size, hash) with its count of
    /// live sources, most shared first, then by name and hash (and size,
    /// where SQL leaves the order open), at most [`MAX_FIND_RESULTS`].
    /// `None` when the index is not ready, or its word index is broken:
    /// ask the database.
    pub fn find(&self, words: &[&str], live_since: i64) -> Option<Vec<FindHit>> {
        let before = self.generation.load(Ordering::Acquire);
        if !self.enabled || !before.is_multiple_of(2) {
            return None;
        }
        let phrases: Vec<Phrase> = words.iter().map(|w| crate::words::tokens(w)).collect();
        let out = self.find_locked(&phrases, live_since)?;
        (self.generation.load(Ordering::Acquire) == before).then_some(out)
    }

    fn find_locked(&self, phrases: &[Phrase], live_since: i64) -> Option<Vec<FindHit>> {
        let names = self.names.read().unwrap_or_else(PoisonError::into_inner);
        if names.broken().is_some() {
            return None;
        }
        let matched = names.matching(phrases, crate::store::MAX_FIND_EXAMINED);
        // (live sources, record, hash, size) per distinct content.
        let mut groups: Vec<(u64, RecId, [u8; 32], u64)> = Vec::new();
        for r in matched {
            let Some((_, _, slot)) = names.get(r) else {
                continue;
            };
            let (s, n) = split_name_id(slot);
            let Some(shard) = self.shards.get(s) else {
                continue;
            };
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            if (n as usize / CHUNK) >= shard.chunks.len() {
                continue;
            }
            let first = groups.len();
            for e in shard.slot(n).sources.as_slice() {
                if e.last_seen < live_since {
                    continue;
                }
                match groups[first..]
                    .iter_mut()
                    .find(|g| g.2 == e.sha256 && g.3 == e.size)
                {
                    Some(g) => g.0 += 1,
                    None => groups.push((1, r, e.sha256, e.size)),
                }
            }
        }
        let order = |a: &(u64, RecId, [u8; 32], u64), b: &(u64, RecId, [u8; 32], u64)| {
            b.0.cmp(&a.0)
                .then_with(|| names.name(a.1).cmp(names.name(b.1)))
                .then_with(|| a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        };
        if groups.len() > MAX_FIND_RESULTS {
            groups.select_nth_unstable_by(MAX_FIND_RESULTS, order);
            groups.truncate(MAX_FIND_RESULTS);
        }
        groups.sort_unstable_by(order);
        Some(
            groups
                .into_iter()
                .map(|(count, r, sha256, size)| FindHit {
                    sources: count,
                    size,
                    sha256: p2p_proto::protocol::to_hex(&sha256),
                    name: names.name(r).to_owned(),
                })
                .collect(),
        )
    }

    /// How many registrations the index holds (live or not yet swept).
    pub fn len(&self) -> usize {
        self.entries.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every registration, sorted, `seen_seq` the rank of the source among
    /// its name's: to compare two indexes (tests).
    pub fn dump(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let names = self.names.read().unwrap_or_else(PoisonError::into_inner);
        let hosts = self.hosts.read().unwrap_or_else(PoisonError::into_inner);
        for shard in self.shards.iter() {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            for (_, slot) in shard.used() {
                let (file_id, name) = names
                    .get(slot.sources.record())
                    .map_or((0, "<no record>"), |(id, name, _)| (id, name));
                for (rank, e) in slot.sources.as_slice().iter().enumerate() {
                    let (host, port) = match hosts.get(e.peer.get() as usize - 1) {
                        Some(Some((host, port))) => (host.to_string(), *port),
                        _ => (format!("<no peer {}>", e.peer), 0),
                    };
                    rows.push(Row {
                        // The slot keeps no key: the name's (the same for
                        // every row the server wrote).
                        name_key: p2p_proto::protocol::name_key(name),
                        host,
                        port,
                        size: e.size,
                        sha256: p2p_proto::protocol::to_hex(&e.sha256),
                        last_seen: e.last_seen,
                        seen_seq: rank as i64,
                        file_id,
                        name: name.to_owned(),
                    });
                }
            }
        }
        rows.sort_by(|a, b| (&a.name_key, &a.host, a.port).cmp(&(&b.name_key, &b.host, b.port)));
        rows
    }

    /// Replaces the whole content by `rows`, in which the rows of one name
    /// must be consecutive (ordered by name), in any order among them:
    /// [`Index::begin_load`], [`Index::build`], [`Index::install`] in one.
    /// The index is not ready from the start of the load (SEARCH goes to
    /// SQLite) and the old content is dropped first, so memory never holds
    /// two copies; it is ready again once the new content is in. After an
    /// error from `rows`, or rows that break the order above, it stays not
    /// ready (a later rebuild may succeed). Rows whose keys or hashes are
    /// not 64 hex digits (never written by the server) are skipped and
    /// counted; the count is returned.
    pub fn rebuild<E>(&self, rows: impl IntoIterator<Item = Result<Row, E>>) -> Result<usize, E> {
        if !self.enabled {
            return Ok(0);
        }
        self.begin_load();
        let built = Index::build(rows)?;
        let skipped = built.skipped;
        self.install(built, &[]);
        Ok(skipped)
    }

    /// Builds the content of an index from `rows` (see [`Index::rebuild`])
    /// without touching any index: on any thread, while the writer goes on.
    pub fn build<E>(rows: impl IntoIterator<Item = Result<Row, E>>) -> Result<Built, E> {
        let mut fresh = Fresh::new();
        let mut skipped = 0;
        let mut current: Option<Key> = None;
        let mut group: Vec<(i64, Entry)> = Vec::new();
        // The current name's `files.id` and name.
        let mut file: (i64, String) = (0, String::new());
        for row in rows {
            let row = row?;
            let (Some(key), Some(sha256)) = (Key::from_hex(&row.name_key), hex32(&row.sha256))
            else {
                skipped += 1;
                continue;
            };
            if current != Some(key) {
                if let Some(done) = current {
                    fresh.add(done, std::mem::take(&mut group), (file.0, &file.1));
                }
                current = Some(key);
                file = (row.file_id, row.name);
            }
            let Some(peer) = fresh.book.id_for(&row.host, row.port, &mut fresh.hosts) else {
                fresh.failed = Some("no peer id left");
                break;
            };
            if fresh.names.len() < fresh.hosts.len() {
                fresh.names.resize_with(fresh.hosts.len(), Vec::new);
            }
            group.push((
                row.seen_seq,
                Entry {
                    sha256,
                    size: row.size,
                    last_seen: row.last_seen,
                    peer,
                    record: NO_REC, // told by `finish_words`
                },
            ));
        }
        if let Some(done) = current {
            fresh.add(done, group, (file.0, &file.1));
        }
        // The word index, unless the names come apart (`Built::with_names`).
        if !fresh.unnamed {
            fresh.finish_words();
        }
        if skipped > 0 {
            tracing::warn!(
                skipped,
                "registrations with malformed keys left out of the index"
            );
        }
        // Every peer has names: ids are made only for rows that are kept.
        let names = std::mem::take(&mut fresh.names);
        for (set, names) in fresh.book.names.iter_mut().zip(names) {
            let mut full = NameSet::with_capacity_and_hasher(names.len(), Default::default());
            full.extend(names);
            *set = Some(full);
        }
        Ok(Built { fresh, skipped })
    }

    /// Puts `built` in, then applies `later` (changes committed after the
    /// snapshot `built` was read from, in commit order), then makes the
    /// index ready. Call after [`Index::begin_load`]; returns whether the
    /// index is ready (not when `built` could not be built: rows out of
    /// order, ids exhausted, which is logged).
    pub fn install(&self, built: Built, later: &[Change]) -> bool {
        let fresh = built.fresh;
        if let Some(reason) = fresh.failed {
            tracing::error!(
                reason,
                "the index could not be loaded; SEARCH is answered by SQLite"
            );
            return false;
        }
        *self.names.write().unwrap_or_else(PoisonError::into_inner) = fresh.words;
        for (slot, shard) in self.shards.iter().zip(fresh.shards) {
            *slot.write().unwrap_or_else(PoisonError::into_inner) = shard;
        }
        *self.hosts.write().unwrap_or_else(PoisonError::into_inner) = fresh.hosts;
        *self.book.lock().unwrap_or_else(PoisonError::into_inner) = fresh.book;
        self.set_len(fresh.entries);
        if !self.apply_all(later) {
            return false;
        }
        // Ready: everything above is visible to a reader that sees this.
        self.generation.fetch_add(1, Ordering::Release);
        crate::metrics::set_change_log_lag(0);
        true
    }

    /// Not ready from now on (SEARCH goes to SQLite), and empty: the start
    /// of a load. Changes are ignored until [`Index::install`].
    pub fn begin_load(&self) {
        self.mark_not_ready();
        crate::metrics::set_change_log_lag(1);
        *self.names.write().unwrap_or_else(PoisonError::into_inner) = Names::default();
        for shard in self.shards.iter() {
            *shard.write().unwrap_or_else(PoisonError::into_inner) = Shard::default();
        }
        *self.hosts.write().unwrap_or_else(PoisonError::into_inner) = Vec::new();
        *self.book.lock().unwrap_or_else(PoisonError::into_inner) = Book::default();
        self.set_len(0);
    }

    fn mark_not_ready(&self) {
        // Only the writer changes the generation, so load-then-add is no race.
        if self.generation.load(Ordering::Relaxed).is_multiple_of(2) {
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// Gives up on the index until the next load (an id ran out, a slot
    /// that cannot be shown to be the name's). A warning, not an error: the
    /// usual cause is another process's change (`p2p-admin prune`) seen by
    /// a write before the poll saw it, and the reload follows by itself.
    fn fail(&self, reason: &'static str) {
        tracing::warn!(
            reason,
            "the index stopped following the database; SEARCH and FIND are answered by SQLite until it is loaded again"
        );
        self.mark_not_ready();
        crate::metrics::set_change_log_lag(1);
    }

    /// Applies changes the writer has committed, in commit order. Ignored
    /// while the index is not ready: the load under way (or the next)
    /// gets them (see [`Index::install`]).
    pub fn apply(&self, changes: &[Change]) {
        if changes.is_empty() || !self.is_ready() {
            return;
        }
        self.apply_all(changes);
    }

    /// [`Index::apply`] whether ready or not; `false` when the index gave
    /// up (an id ran out).
    fn apply_all(&self, changes: &[Change]) -> bool {
        if changes.is_empty() {
            return true;
        }
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        let mut total = self.len();
        for change in changes {
            match change {
                Change::Register {
                    key,
                    file_id,
                    name,
                    host,
                    port,
                    size,
                    sha256,
                    ms,
                    seq: _,
                } => {
                    let Some(sha256) = hex32(sha256) else {
                        continue; // the protocol admits only 64 hex digits
                    };
                    let peer = {
                        let mut hosts = self.hosts.write().unwrap_or_else(PoisonError::into_inner);
                        book.id_for(host, *port, &mut hosts)
                    };
                    let Some(peer) = peer else {
                        self.fail("no peer id left");
                        return false;
                    };
                    let s = key.shard();
                    if !self.same_name(s, key, *file_id) {
                        self.fail("a name's slot holds another file (two fingerprints met, or the file changed under the index)");
                        return false;
                    }
                    let mut shard = self.shards[s]
                        .write()
                        .unwrap_or_else(PoisonError::into_inner);
                    let Some((n, _)) = shard.slot_for(key) else {
                        drop(shard);
                        self.fail("a shard of the index is full");
                        return false;
                    };
                    let sources = &mut shard.slot_mut(n).sources;
                    let record = sources.record();
                    match sources.position(peer) {
                        Some(at) => drop(sources.remove(at)),
                        None => total += 1,
                    }
                    sources.push(Entry {
                        sha256,
                        size: *size,
                        last_seen: *ms,
                        peer,
                        record,
                    });
                    drop(shard);
                    if record == NO_REC {
                        // The word index first, then the slot's record
                        // (never both locks at once: a FIND takes them
                        // in that order).
                        let r = self
                            .names
                            .write()
                            .unwrap_or_else(PoisonError::into_inner)
                            .add(*file_id, name_id(s, n), name);
                        self.shards[s]
                            .write()
                            .unwrap_or_else(PoisonError::into_inner)
                            .slot_mut(n)
                            .sources
                            .set_record(r);
                    }
                    if let Some(names) = book.names_mut(peer) {
                        names.insert(name_id(s, n));
                    }
                }
                Change::Unregister { key, host, port } => {
                    let Some(peer) = book.lookup(host, *port) else {
                        continue;
                    };
                    let s = key.shard();
                    let mut shard = self.shards[s]
                        .write()
                        .unwrap_or_else(PoisonError::into_inner);
                    let Some(n) = shard.find(shard.fingerprint(key)) else {
                        continue;
                    };
                    let sources = &mut shard.slot_mut(n).sources;
                    let Some(at) = sources.position(peer) else {
                        continue;
                    };
                    let record = sources.remove(at).record;
                    total -= 1;
                    let gone = shard.release_if_empty(n);
                    drop(shard);
                    if gone {
                        self.remove_names(&[record]);
                    }
                    if book.forget(peer, name_id(s, n)) {
                        let mut hosts = self.hosts.write().unwrap_or_else(PoisonError::into_inner);
                        book.free_peer(peer, &mut hosts);
                    }
                }
                Change::Sweep { live_since } => {
                    total = self.sweep_locked(&mut book, *live_since);
                }
                Change::Heartbeat {
                    host,
                    port,
                    ms,
                    seq: _,
                    live_since,
                } => {
                    let Some(peer) = book.lookup(host, *port) else {
                        continue;
                    };
                    let Some(names) = book.names(peer) else {
                        continue;
                    };
                    for &id in names {
                        let (s, n) = split_name_id(id);
                        let mut shard = self.shards[s]
                            .write()
                            .unwrap_or_else(PoisonError::into_inner);
                        let sources = &mut shard.slot_mut(n).sources;
                        let Some(at) = sources.position(peer) else {
                            continue;
                        };
                        if sources.as_slice()[at].last_seen < *live_since {
                            continue; // expired stays expired, as in the SQL
                        }
                        let mut e = sources.remove(at);
                        e.last_seen = *ms;
                        sources.push(e);
                    }
                }
            }
        }
        drop(book);
        self.set_len(total);
        true
    }

    /// Whether the slot of `key` in shard `s`, if it has one with a record
    /// in the word index, is file `file_id`'s: a slot is found by its
    /// fingerprint ([`Shard::fingerprint`]), and this is what keeps a new
    /// name from joining another's whose fingerprint it met. Writer only.
    fn same_name(&self, s: usize, key: &Key, file_id: i64) -> bool {
        let record = {
            let shard = self.shards[s]
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            match shard.find(shard.fingerprint(key)) {
                Some(n) => shard.slot(n).sources.record(),
                None => return true,
            }
        };
        if record == NO_REC {
            // The word index broke (an id out of order, a hand-made file):
            // the slot's file cannot be checked, so it is not trusted
            // either. The caller gives the index up; the next load rebuilds
            // the word index.
            return false;
        }
        let names = self.names.read().unwrap_or_else(PoisonError::into_inner);
        names.get(record).is_some_and(|(id, ..)| id == file_id)
    }

    /// Drops every registration not seen since `live_since`: after the
    /// writer's expiry sweep has deleted the same rows from the database.
    /// Ignored while not ready (the writer passes it to the load under way
    /// as a [`Change::Sweep`]).
    pub fn sweep(&self, live_since: i64) {
        if !self.is_ready() {
            return;
        }
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        let total = self.sweep_locked(&mut book, live_since);
        drop(book);
        self.set_len(total);
    }

    /// The sweep with the book held; returns the registrations left.
    fn sweep_locked(&self, book: &mut Book, live_since: i64) -> usize {
        let mut total = 0;
        let mut gone: Vec<(PeerId, NameId)> = Vec::new();
        let mut released: Vec<RecId> = Vec::new();
        for (s, shard) in self.shards.iter().enumerate() {
            let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
            let mut emptied = Vec::new();
            for chunk_at in 0..shard.chunks.len() {
                for i in 0..shard.chunks[chunk_at].len() {
                    let slot = &mut shard.chunks[chunk_at][i];
                    if slot.sources.is_empty() {
                        continue; // a free slot
                    }
                    let n = (chunk_at * CHUNK + i) as u32;
                    let record = slot.sources.record();
                    slot.sources.retain(|e| {
                        let live = e.last_seen >= live_since;
                        if !live {
                            gone.push((e.peer, name_id(s, n)));
                        }
                        live
                    });
                    total += slot.sources.as_slice().len();
                    if slot.sources.is_empty() {
                        emptied.push((n, record));
                    }
                }
            }
            for (n, record) in emptied {
                if shard.release_if_empty(n) {
                    released.push(record);
                }
            }
        }
        self.remove_names(&released);
        for (peer, name) in gone {
            if book.forget(peer, name) {
                let mut hosts = self.hosts.write().unwrap_or_else(PoisonError::into_inner);
                book.free_peer(peer, &mut hosts);
            }
        }
        total
    }

    /// Removes the records `gone` (names whose last source left) from
    /// the word index.
    fn remove_names(&self, gone: &[RecId]) {
        if gone.is_empty() {
            return;
        }
        let mut names = self.names.write().unwrap_or_else(PoisonError::into_inner);
        for &r in gone {
            if r != NO_REC {
                names.remove(r);
            }
        }
    }

    fn set_len(&self, total: usize) {
        self.entries.store(total, Ordering::Relaxed);
        crate::metrics::set_index_entries(total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    /// An empty index in step with an empty database.
    fn ready() -> Index {
        let index = Index::new();
        assert!(!index.is_ready(), "not ready before its first load");
        assert_eq!(index.rebuild(std::iter::empty::<Result<Row, ()>>()), Ok(0));
        assert!(index.is_ready());
        index
    }

    fn register(index: &Index, name: &str, port: u16, seq: i64) {
        index.apply(&[Change::Register {
            key: Key::of_name(name),
            file_id: i64::from(name.as_bytes()[0]),
            name: name.into(),
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
            .expect("ready")
            .iter()
            .map(|s| s.port)
            .collect()
    }

    #[test]
    fn order_heartbeat_unregister_and_sweep() {
        let index = ready();
        register(&index, "a", 1, 10);
        register(&index, "a", 2, 20);
        register(&index, "b", 1, 30);
        assert_eq!(ports(&index, "a", 0), [2, 1]);
        assert_eq!(ports(&index, "a", 15), [2], "expired entries are not shown");
        let s = &index.search(&Key::of_name("a"), 0).expect("ready")[0];
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
        let index = ready();
        for port in 1..=(MAX_SEARCH_SOURCES as u16 + 10) {
            register(&index, "many", port, i64::from(port));
        }
        let got = ports(&index, "many", 0);
        assert_eq!(got.len(), MAX_SEARCH_SOURCES);
        assert_eq!(got[0], MAX_SEARCH_SOURCES as u16 + 10);
        let rows = index.dump();
        let copy = Index::new();
        // The rows of one name stay together, in any order among them.
        assert_eq!(copy.rebuild(rows.into_iter().rev().map(Ok::<_, ()>)), Ok(0));
        assert_eq!(copy.dump(), index.dump());
        assert_eq!(ports(&copy, "many", 0), got);
    }

    #[test]
    fn one_source_is_held_inline_in_the_slot() {
        // The layout the memory figures of BENCHMARKS.md rest on.
        assert_eq!(std::mem::size_of::<Entry>(), 56);
        assert_eq!(
            std::mem::size_of::<Sources>(),
            56,
            "no tag beside the inline entry"
        );
        // The fingerprint and one source inline (the name's record in
        // the entry's spare 4 bytes).
        assert_eq!(std::mem::size_of::<Slot>(), 64);
    }

    #[test]
    fn a_slot_found_for_another_file_stops_the_index() {
        // Slots are found by fingerprint: a registration whose slot holds
        // another file (two names whose fingerprints met, or a file changed
        // by another process) must not join it; the index gives up, SEARCH
        // goes to SQLite, and the writer loads it again.
        let index = ready();
        register(&index, "a", 1, 1);
        register(&index, "a", 2, 2); // the same file: joins
        assert_eq!(ports(&index, "a", 0), [2, 1]);
        let other_file = Change::Register {
            key: Key::of_name("a"),
            file_id: 7,
            name: "a".into(),
            host: "10.0.0.1".into(),
            port: 3,
            size: 5,
            sha256: HASH.into(),
            ms: 3,
            seq: 3,
        };
        index.apply(&[other_file]);
        assert!(!index.is_ready());
        assert_eq!(index.search(&Key::of_name("a"), 0), None, "ask SQL");
    }

    /// Makes `to`'s fingerprint meet `from`'s, as a SipHash
    /// collision would (the slot of `from` takes `to`'s fingerprint; a
    /// lookup of `to` then finds it). Both must be in one shard.
    fn collide(index: &Index, from: &str, to: &str) {
        let (kf, kt) = (Key::of_name(from), Key::of_name(to));
        assert_eq!(kf.shard(), kt.shard());
        let mut shard = index.shards[kf.shard()].write().unwrap();
        let (ff, ft) = (shard.fingerprint(&kf), shard.fingerprint(&kt));
        let n = shard.find(ff).expect("from is registered");
        let Shard { table, chunks, .. } = &mut *shard;
        table.find_entry(ff, |&m| m == n).ok().unwrap().remove();
        chunks[n as usize / CHUNK][n as usize % CHUNK].fingerprint = ft;
        table.insert_unique(ft, n, |&m| slot_in(chunks, m).fingerprint);
    }

    /// A name in the shard of `name`, other than it.
    fn shard_mate(name: &str) -> String {
        let s = Key::of_name(name).shard();
        (0..)
            .map(|i| format!("mate{i}"))
            .find(|m| Key::of_name(m).shard() == s)
            .unwrap()
    }

    fn register_as(index: &Index, name: &str, file_id: i64, port: u16, seq: i64) {
        index.apply(&[Change::Register {
            key: Key::of_name(name),
            file_id,
            name: name.into(),
            host: "10.0.0.1".into(),
            port,
            size: 5,
            sha256: HASH.into(),
            ms: seq,
            seq,
        }]);
    }

    #[test]
    fn a_collision_is_caught_while_the_word_index_is_whole() {
        let index = ready();
        let other = shard_mate("a");
        register_as(&index, "a", 1, 1, 1);
        collide(&index, "a", &other);
        register_as(&index, &other, 2, 2, 2);
        assert!(!index.is_ready(), "the writer's check gave the index up");
    }

    #[test]
    fn a_collision_is_caught_when_the_word_index_is_broken_too() {
        let index = ready();
        register_as(&index, "z", 10, 9, 1);
        // A new name whose files.id is not above the ones in use (what a
        // prune of the newest file then a new name does, see writer.rs):
        // the word index breaks, the name's slot has no record.
        register_as(&index, "a", 10, 1, 2);
        assert!(index.is_ready());
        assert!(index.names.read().unwrap().broken().is_some());
        let other = shard_mate("a");
        collide(&index, "a", &other);
        register_as(&index, &other, 11, 2, 3);
        // The slot found cannot be shown to be `other`'s: SQLite answers.
        assert!(!index.is_ready(), "{other:?} joined the slot of \"a\"");
    }

    #[test]
    fn find_after_the_last_source_goes_and_its_slot_is_reused() {
        let index = ready();
        let names = |words: &[&str]| -> Vec<(String, u64)> {
            index
                .find(words, 0)
                .expect("ready")
                .into_iter()
                .map(|h| (h.name, h.sources))
                .collect()
        };
        register_as(&index, "old one", 1, 1, 1);
        register_as(&index, "old one", 1, 2, 2);
        assert_eq!(names(&["old"]), [("old one".to_string(), 2)]);
        for port in [2, 1] {
            index.apply(&[Change::Unregister {
                key: Key::of_name("old one"),
                host: "10.0.0.1".into(),
                port,
            }]);
        }
        assert!(names(&["old"]).is_empty());
        // The freed slot goes to the next name of its shard.
        let mate = shard_mate("old one");
        register_as(&index, &mate, 2, 3, 3);
        assert!(
            names(&["old"]).is_empty(),
            "a gone record must not count the slot's new name"
        );
        assert_eq!(names(&[mate.as_str()]), [(mate.clone(), 1)]);
        // Expiry of the last source, then the same again.
        index.sweep(4);
        assert!(names(&[mate.as_str()]).is_empty());
        register_as(&index, "old one", 3, 4, 5);
        assert_eq!(names(&["old"]), [("old one".to_string(), 1)]);
        assert!(names(&[mate.as_str()]).is_empty());
        assert_eq!(index.names.read().unwrap().len(), 1);
    }

    #[test]
    fn a_load_that_fails_leaves_the_index_not_ready() {
        let index = ready();
        register(&index, "a", 1, 1);
        let row = |name: &str, port| Row {
            name_key: p2p_proto::protocol::name_key(name),
            host: "10.0.0.1".into(),
            port,
            size: 1,
            sha256: HASH.into(),
            last_seen: 1,
            seen_seq: 1,
            file_id: i64::from(name.as_bytes()[0]),
            name: name.into(),
        };
        assert_eq!(index.rebuild([Ok(row("a", 1)), Err("disk")]), Err("disk"));
        assert!(!index.is_ready());
        assert_eq!(index.search(&Key::of_name("a"), 0), None, "ask SQL");
        register(&index, "b", 1, 2); // ignored: the next load reads it from disk
                                     // One name's rows apart: refused, not half-ordered.
        let apart = [row("a", 1), row("b", 1), row("a", 2)];
        assert_eq!(index.rebuild(apart.map(Ok::<_, ()>)), Ok(0));
        assert!(!index.is_ready());
        let together = [row("a", 1), row("a", 2), row("b", 1)];
        assert_eq!(index.rebuild(together.map(Ok::<_, ()>)), Ok(0));
        assert!(index.is_ready());
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn changes_made_during_a_load_are_applied_before_it_answers() {
        let rows = |index: &Index| index.dump().into_iter().map(Ok::<_, ()>);
        let old = ready();
        register(&old, "a", 1, 1);
        register(&old, "b", 2, 2);
        let later = [
            Change::Register {
                key: Key::of_name("c"),
                file_id: 99,
                name: "c".into(),
                host: "10.0.0.1".into(),
                port: 3,
                size: 5,
                sha256: HASH.into(),
                ms: 30,
                seq: 30,
            },
            Change::Unregister {
                key: Key::of_name("b"),
                host: "10.0.0.1".into(),
                port: 2,
            },
            Change::Sweep { live_since: 2 },
        ];
        let loaded = Index::new();
        loaded.begin_load();
        let built = Index::build(rows(&old)).unwrap();
        assert!(!loaded.is_ready() && loaded.apply_all(&[]));
        assert!(loaded.install(built, &later));
        assert!(loaded.is_ready());
        old.apply(&later[..2]);
        old.sweep(2);
        assert_eq!(loaded.dump(), old.dump());
        assert_eq!(ports(&loaded, "c", 0), [3]);
        assert!(ports(&loaded, "a", 0).is_empty(), "swept");
        assert_eq!(loaded.len(), 1);
    }

    #[test]
    fn peers_and_slots_are_reused() {
        let index = ready();
        for round in 0..3 {
            for port in 1..=50 {
                register(
                    &index,
                    &format!("n{port}"),
                    port,
                    round * 100 + i64::from(port),
                );
            }
            for port in 1..=50 {
                index.apply(&[Change::Unregister {
                    key: Key::of_name(&format!("n{port}")),
                    host: "10.0.0.1".into(),
                    port,
                }]);
            }
            assert!(index.is_empty());
        }
        let hosts = index.hosts.read().unwrap().len();
        assert_eq!(hosts, 50, "ids of gone peers are reused");
        let slots: usize = index
            .shards
            .iter()
            .map(|s| s.read().unwrap().chunks.iter().map(Vec::len).sum::<usize>())
            .sum();
        assert_eq!(slots, 50, "slots of gone names are reused");
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
