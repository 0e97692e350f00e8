//! The connection table: who is connected, admission under one lock, and
//! shutdown of every open connection.
//!
//! Fair sharing of the slots: while slots are free anyone may take them
//! (one address may open many). At the limit, a newcomer takes the place
//! of a connection of the address holding the most, provided that address
//! holds at least two more than the newcomer (so two addresses never take
//! turns closing each other's): its oldest idle connection (waiting for a
//! request) is shut down, or, with none idle, its oldest busy one (which
//! ends after the request in hand). Anyone else over the limit, the top
//! holder itself included, is refused. So one address can never lock the
//! others out. A reclaimed connection no longer counts against the limit
//! while its worker lets go of it.
//!
//! Admission is checked and recorded under one lock with the closed flag,
//! so a connection accepted as shutdown begins is either reached by
//! [`ConnTable::close_all`] or refused. Every critical section is a few map
//! operations; nothing here blocks on the network while holding the lock
//! (`shutdown(2)` does not block).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// What differs between the servers that share the table.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How a reclaimed connection's socket is shut down: `Read` lets its
    /// worker answer the request in hand, `Both` cuts it at once.
    pub reclaim: Shutdown,
    /// How every socket is shut down by [`ConnTable::close_all`].
    pub close: Shutdown,
    /// Whether a new connection counts as idle until its server says
    /// otherwise ([`Slot::set_idle`]).
    pub starts_idle: bool,
}

/// What [`ConnTable::admit`] decided about a new connection.
pub enum Admission {
    /// Recorded; the slot frees its place when dropped.
    Admitted(Slot),
    /// The limit is reached and no address may yield a place.
    Full,
    /// No second handle on the socket could be made (out of descriptors):
    /// shutdown could not reach it, so it is not admitted.
    Untrackable(io::Error),
    /// [`ConnTable::close_all`] was called: nothing more is admitted.
    Closed,
}

/// The open connections of one server. See the module docs.
pub struct ConnTable {
    policy: Policy,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    closed: bool,
    next_id: u64,
    /// Each admitted connection, keyed by admission number (older is lower).
    entries: HashMap<u64, Entry>,
    /// Connections per client address, reclaimed ones not counted.
    per_ip: HashMap<IpAddr, usize>,
    /// Entries reclaimed whose slot has not been dropped yet.
    reclaimed: usize,
}

/// One admitted connection as the table knows it.
struct Entry {
    /// A second handle on the socket, used only to shut it down.
    stream: TcpStream,
    ip: IpAddr,
    /// Waiting for a request (else answering one); set by its server.
    idle: Arc<AtomicBool>,
    /// Shut down to make room; no longer counted against the limit.
    reclaimed: bool,
}

impl ConnTable {
    pub fn new(policy: Policy) -> Arc<ConnTable> {
        Arc::new(ConnTable {
            policy,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every
        // critical section is a few inserts, removes or flag changes.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether [`close_all`](Self::close_all) was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Records a new connection from `ip` unless the table is closed or
    /// `limit` connections are open and no address may yield one.
    pub fn admit(self: &Arc<Self>, stream: &TcpStream, ip: IpAddr, limit: usize) -> Admission {
        let mut state = self.lock();
        if state.closed {
            return Admission::Closed;
        }
        let handle = match stream.try_clone() {
            Ok(handle) => handle,
            Err(e) => return Admission::Untrackable(e),
        };
        if state.entries.len() - state.reclaimed >= limit && !state.reclaim_for(ip, self.policy) {
            return Admission::Full;
        }
        let id = state.next_id;
        state.next_id += 1;
        let idle = Arc::new(AtomicBool::new(self.policy.starts_idle));
        state.entries.insert(
            id,
            Entry {
                stream: handle,
                ip,
                idle: Arc::clone(&idle),
                reclaimed: false,
            },
        );
        *state.per_ip.entry(ip).or_insert(0) += 1;
        Admission::Admitted(Slot {
            id,
            open: state.entries.len(),
            idle,
            table: Arc::clone(self),
        })
    }

    /// Admits nothing more and shuts every open socket down (as the
    /// policy says), which ends blocked reads in the workers.
    pub fn close_all(&self) {
        let mut state = self.lock();
        state.closed = true;
        for entry in state.entries.values() {
            let _ = entry.stream.shutdown(self.policy.close);
        }
    }

    /// Connections counted against the limit (reclaimed ones not).
    pub fn open(&self) -> usize {
        let state = self.lock();
        state.entries.len() - state.reclaimed
    }

    /// Connections counted for `ip`.
    pub fn held_by(&self, ip: IpAddr) -> usize {
        self.lock().per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// The reclaimed connections not yet let go, oldest first: their
    /// address and whether they were idle.
    pub fn reclaimed(&self) -> Vec<(IpAddr, bool)> {
        let state = self.lock();
        let mut out: Vec<(u64, IpAddr, bool)> = state
            .entries
            .iter()
            .filter(|(_, e)| e.reclaimed)
            .map(|(&id, e)| (id, e.ip, e.idle.load(Ordering::Relaxed)))
            .collect();
        out.sort();
        out.into_iter().map(|(_, ip, idle)| (ip, idle)).collect()
    }

    fn remove(&self, id: u64) {
        let mut state = self.lock();
        let Some(entry) = state.entries.remove(&id) else {
            return;
        };
        if entry.reclaimed {
            state.reclaimed -= 1;
        } else if let Some(n) = state.per_ip.get_mut(&entry.ip) {
            *n -= 1;
            if *n == 0 {
                state.per_ip.remove(&entry.ip);
            }
        }
    }
}

impl State {
    /// Makes room for a connection from `newcomer` (see the module docs);
    /// `false` when no address may yield.
    fn reclaim_for(&mut self, newcomer: IpAddr, policy: Policy) -> bool {
        let mine = self.per_ip.get(&newcomer).copied().unwrap_or(0);
        let Some((top, count)) = self
            .per_ip
            .iter()
            .max_by_key(|(ip, count)| (**count, **ip != newcomer))
            .map(|(ip, count)| (*ip, *count))
        else {
            return false;
        };
        if top == newcomer || count < mine + 2 {
            return false;
        }
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.ip == top && !e.reclaimed)
            .min_by_key(|(id, e)| (!e.idle.load(Ordering::Relaxed), **id))
            .map(|(&id, _)| id);
        let Some(entry) = victim.and_then(|id| self.entries.get_mut(&id)) else {
            return false;
        };
        tracing::info!(
            client = %newcomer,
            yields = %top,
            idle = entry.idle.load(Ordering::Relaxed),
            connections = count,
            "connection slots short: closing a connection of the address holding the most"
        );
        let _ = entry.stream.shutdown(policy.reclaim);
        entry.reclaimed = true;
        self.reclaimed += 1;
        if let Some(n) = self.per_ip.get_mut(&top) {
            *n -= 1;
        }
        true
    }
}

/// A connection's place in the table; dropping it frees the place (drop
/// it before the socket itself is closed, so a client that sees the close
/// can connect again at once without being refused). Dropped on unwind
/// too, so a panicking worker frees its slot.
pub struct Slot {
    id: u64,
    open: usize,
    idle: Arc<AtomicBool>,
    table: Arc<ConnTable>,
}

impl Slot {
    /// Marks the connection as waiting for a request (`true`) or answering
    /// one (`false`): idle ones are reclaimed first.
    pub fn set_idle(&self, idle: bool) {
        self.idle.store(idle, Ordering::Relaxed);
    }

    /// The idle flag itself, for a connection layer that raises it while
    /// it waits for a request.
    pub fn idle_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.idle)
    }

    /// Entries in the table when this one was admitted, this one and those
    /// being reclaimed included: what a pool must be able to serve at once.
    pub fn open_at_admission(&self) -> usize {
        self.open
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    const REGISTRY: Policy = Policy {
        reclaim: Shutdown::Read,
        close: Shutdown::Read,
        starts_idle: false,
    };
    const FILE_SERVER: Policy = Policy {
        reclaim: Shutdown::Both,
        close: Shutdown::Both,
        starts_idle: true,
    };

    /// A connected loopback socket pair: (server side, client side).
    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    /// Admits a fresh loopback socket as if it came from `ip`.
    fn admit_from(
        table: &Arc<ConnTable>,
        listener: &TcpListener,
        ip: IpAddr,
        limit: usize,
    ) -> (Option<Slot>, TcpStream) {
        let (server_end, client) = pair(listener);
        let admitted = match table.admit(&server_end, ip, limit) {
            Admission::Admitted(slot) => Some(slot),
            Admission::Full => None,
            Admission::Closed | Admission::Untrackable(_) => panic!("not closed"),
        };
        (admitted, client)
    }

    #[test]
    fn a_panicking_worker_frees_its_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let table = ConnTable::new(REGISTRY);
        let (slot, _client) = admit_from(&table, &listener, Ipv4Addr::LOCALHOST.into(), 4);
        let slot = slot.expect("admitted");
        assert_eq!(table.open(), 1);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _slot = slot;
            panic!("a bug while serving");
        }));
        assert!(result.is_err());
        assert_eq!(table.open(), 0, "the slot was freed on unwind");
        assert_eq!(table.held_by(Ipv4Addr::LOCALHOST.into()), 0);
    }

    #[test]
    fn at_the_limit_the_address_with_the_most_yields_an_idle_connection_first() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let table = ConnTable::new(REGISTRY);
        let hog: IpAddr = Ipv4Addr::new(10, 0, 0, 1).into();
        let other: IpAddr = Ipv4Addr::new(10, 0, 0, 2).into();
        let mut held = Vec::new();
        for i in 0..4 {
            let (slot, client) = admit_from(&table, &listener, hog, 4);
            let slot = slot.expect("admitted");
            // One idle connection of four.
            slot.set_idle(i == 2);
            held.push((slot, client));
        }
        assert!(
            admit_from(&table, &listener, hog, 4).0.is_none(),
            "the hog's own next one is refused"
        );
        let (o1, _c1) = admit_from(&table, &listener, other, 4);
        assert!(o1.is_some());
        assert_eq!(
            table.reclaimed(),
            [(hog, true)],
            "exactly one, the idle one"
        );
        assert_eq!(table.held_by(hog), 3);
        assert_eq!(table.held_by(other), 1);
        // 3 against 1: the newcomer's address may take one more (3 > 2),
        // then no more (2 against 2 after that would not be fairer).
        let (o2, _c2) = admit_from(&table, &listener, other, 4);
        assert!(o2.is_some());
        assert!(admit_from(&table, &listener, other, 4).0.is_none());
    }

    #[test]
    fn the_address_holding_the_most_yields_idle_before_busy() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let table = ConnTable::new(FILE_SERVER);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let mut kept = Vec::new();
        for _ in 0..3 {
            let (slot, client) = admit_from(&table, &listener, a, 3);
            kept.push((slot.expect("slots are free"), client));
        }
        // The first two of A are busy: its idle third one yields to B.
        kept[0].0.set_idle(false);
        kept[1].0.set_idle(false);
        let (b1, _b1c) = admit_from(&table, &listener, b, 3);
        assert!(b1.is_some());
        assert_eq!(table.reclaimed(), [(a, true)], "the idle one goes first");
        // A, the top holder, is refused; B (A 2, B 1) too: no ping-pong.
        assert!(admit_from(&table, &listener, a, 3).0.is_none());
        assert!(admit_from(&table, &listener, b, 3).0.is_none());
        // C (A 2, C 0): a busy one of A yields, since A has no idle one left.
        let (c1, _c1c) = admit_from(&table, &listener, c, 3);
        assert!(c1.is_some());
        assert_eq!(table.reclaimed(), [(a, false), (a, true)]);
        // Freed places are accounted once their slots are dropped.
        drop(kept);
        assert!(table.reclaimed().is_empty());
        assert_eq!(table.open(), 2);
    }

    #[test]
    fn nothing_is_admitted_after_close_all() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let table = ConnTable::new(FILE_SERVER);
        let (slot, mut client) = admit_from(&table, &listener, Ipv4Addr::LOCALHOST.into(), 4);
        table.close_all();
        assert!(table.is_closed());
        let (server_end, _c) = pair(&listener);
        assert!(matches!(
            table.admit(&server_end, Ipv4Addr::LOCALHOST.into(), 4),
            Admission::Closed
        ));
        // The open one was shut down: its client sees end of input.
        let mut buf = [0u8; 1];
        assert_eq!(std::io::Read::read(&mut client, &mut buf).unwrap(), 0);
        drop(slot);
    }
}
