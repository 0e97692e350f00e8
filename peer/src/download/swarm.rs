//! The state a multi-source download's workers and its coordinator share:
//! which source is next, the piece list once one arrived, the scheduler,
//! the record of verified pieces, notes for the person watching, failures,
//! and the sockets to shut down when the download stops.
//!
//! Everything that changes is behind one `Mutex` with a `Condvar`; the lock
//! is held across the short append to the record of verified pieces (a
//! line) but never across network I/O. This module must not do network I/O
//! nor decide anything about pieces itself: the [`Scheduler`] decides, the
//! workers and the coordinator act.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use p2p_proto::protocol::Source;

use super::error::{DownloadError, SourceError};
use super::part::Part;
use super::resume::{self, Writer};
use super::scheduler::{Assignment, Failure, Scheduler, SourceId, Verdict};
use crate::pieces::PieceList;

/// How often a waiter wakes to look again when nothing else happens.
pub const PROGRESS_TICK: Duration = Duration::from_millis(100);

/// What the workers and the coordinator share.
pub struct Swarm<'a> {
    pub sources: &'a [Source],
    pub name: &'a str,
    /// The `.part`, written with [`Part::write_at`] by the workers (through
    /// its change guard) and read back by the coordinator and its hashing
    /// thread; they never touch the same piece at once.
    pub part: &'a Part,
    pub part_path: &'a Path,
    /// Everything that changes, behind one lock (never held across I/O).
    pub(super) state: Mutex<State>,
    /// Signalled on every change of `state` a waiter may care about.
    changed: Condvar,
    /// Set once the download stops; workers leave at their next look.
    stopping: AtomicBool,
    /// A clone of each source's open socket, to shut down when stopping.
    sockets: Mutex<HashMap<SourceId, TcpStream>>,
}

#[derive(Default)]
pub(super) struct State {
    /// The next source not yet given to a worker.
    pub(super) next_source: usize,
    /// The piece list, once a source delivered a good one.
    pub(super) list: Option<Arc<PieceList>>,
    /// Which source it came from.
    pub(super) list_from: Option<SourceId>,
    /// Workers still asking their source for the list.
    pub(super) listing: usize,
    /// Sources that failed before the scheduler existed.
    pub(super) excluded_early: Vec<SourceId>,
    pub(super) scheduler: Option<Scheduler>,
    /// The record of verified pieces, when one could be written.
    pub(super) record: Option<Writer>,
    /// Lines for the person watching, printed by the coordinator.
    pub(super) notes: Vec<String>,
    /// The error that excluded each failed source.
    pub(super) failures: Vec<(SourceId, SourceError)>,
    /// An error of this machine (disk): the whole download stops.
    pub(super) local: Option<DownloadError>,
    /// Counts changes, so the coordinator knows whether one happened
    /// while it was not holding the lock.
    pub(super) generation: u64,
}

/// What a worker should do next.
pub enum Next {
    Piece(usize, Arc<PieceList>),
    /// The source is out: take another one.
    Excluded,
    /// The download is over.
    Stop,
}

impl<'a> Swarm<'a> {
    pub(super) fn new(
        sources: &'a [Source],
        name: &'a str,
        part: &'a Part,
        part_path: &'a Path,
    ) -> Self {
        Swarm {
            sources,
            name,
            part,
            part_path,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            sockets: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent; a panicking worker
        // must not take the others down with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a change and wakes every waiter.
    pub(super) fn bump(&self, state: &mut State) {
        state.generation += 1;
        self.changed.notify_all();
    }

    pub(super) fn wait<'g>(
        &self,
        guard: MutexGuard<'g, State>,
        timeout: Duration,
    ) -> MutexGuard<'g, State> {
        match self.changed.wait_timeout(guard, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    /// Whether the download has stopped.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Stops the download: wakes every waiter, ends every blocked read.
    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for socket in self
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            let _ = socket.shutdown(Shutdown::Both);
        }
        let mut state = self.lock();
        self.bump(&mut state);
    }

    /// Remembers source `id`'s new socket so stopping the download can end
    /// its reads.
    pub fn register_socket(&self, id: SourceId, socket: &TcpStream) {
        let Ok(clone) = socket.try_clone() else {
            return;
        };
        let mut sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        if self.stopping() {
            let _ = clone.shutdown(Shutdown::Both);
        }
        sockets.insert(id, clone);
    }

    /// Closes source `id`'s connection at once (the source stops sending
    /// what is no longer wanted) and forgets it.
    pub fn close_socket(&self, id: SourceId) {
        let mut sockets = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(socket) = sockets.remove(&id) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// A source for a new worker, and whether to ask it for the piece list.
    pub fn first_source(&self) -> Option<(SourceId, bool)> {
        let mut state = self.lock();
        self.take_source(&mut state)
    }

    fn take_source(&self, state: &mut State) -> Option<(SourceId, bool)> {
        if self.stopping() || state.next_source >= self.sources.len() {
            return None;
        }
        let id = state.next_source;
        state.next_source += 1;
        let ask_list = state.list.is_none();
        if ask_list {
            state.listing += 1;
        }
        Some((id, ask_list))
    }

    /// A worker's source delivered `list` (already checked against the
    /// registration); the first one is taken.
    pub fn offer_list(&self, id: SourceId, list: PieceList) {
        let mut state = self.lock();
        state.listing = state.listing.saturating_sub(1);
        if state.list.is_none() {
            state.list = Some(Arc::new(list));
            state.list_from = Some(id);
        }
        self.bump(&mut state);
    }

    /// A worker's source has no piece list but may serve ranges.
    pub fn no_list(&self) {
        let mut state = self.lock();
        state.listing = state.listing.saturating_sub(1);
        self.bump(&mut state);
    }

    /// Source `id` is out of the download (`error` says why, unless it was
    /// reported already): returns the next source for this worker, if any,
    /// in the same step so the coordinator never sees a moment with nobody
    /// asking for the list while sources remain.
    pub fn replace(
        &self,
        id: SourceId,
        error: Option<SourceError>,
        was_listing: bool,
    ) -> Option<(SourceId, bool)> {
        let mut state = self.lock();
        if was_listing {
            state.listing = state.listing.saturating_sub(1);
        }
        if let Some(error) = error {
            if !self.stopping() {
                state.notes.push(format!("{error}; leaving it out"));
            }
            state.failures.push((id, error));
        }
        match &mut state.scheduler {
            Some(scheduler) => {
                scheduler.failed(id, None, Failure::Fatal);
            }
            None => state.excluded_early.push(id),
        }
        let next = self.take_source(&mut state);
        self.bump(&mut state);
        next
    }

    /// The next piece for source `id`, waiting while there is none to give.
    pub fn next(&self, id: SourceId) -> Next {
        let mut state = self.lock();
        loop {
            if self.stopping() || state.local.is_some() {
                return Next::Stop;
            }
            let list = state.list.clone();
            if let (Some(scheduler), Some(list)) = (&mut state.scheduler, list) {
                match scheduler.next(id) {
                    Assignment::Piece(index) => return Next::Piece(index, list),
                    Assignment::Excluded => return Next::Excluded,
                    Assignment::Finished => return Next::Stop,
                    Assignment::Wait => {}
                }
            }
            state = self.wait(state, PROGRESS_TICK);
        }
    }

    /// Source `id` has `received` bytes of piece `index`; `false` when it
    /// should drop it (another copy won, or the download stopped).
    pub fn progress(&self, id: SourceId, index: usize, received: u64) -> bool {
        if self.stopping() {
            return false;
        }
        let mut state = self.lock();
        state
            .scheduler
            .as_mut()
            .is_some_and(|s| s.progress(id, index, received))
    }

    /// Source `id` verified piece `index`; `true` when it must write it.
    pub fn verified(&self, id: SourceId, index: usize) -> bool {
        let mut state = self.lock();
        if self.stopping() {
            return false;
        }
        let first = state
            .scheduler
            .as_mut()
            .is_some_and(|s| s.verified(id, index));
        self.bump(&mut state);
        first
    }

    /// Piece `index`, verified by `id`, is written: record it.
    pub fn written(&self, id: SourceId, index: usize) {
        let mut state = self.lock();
        if let Some(scheduler) = &mut state.scheduler {
            scheduler.written(id, index);
        }
        if let Some(record) = &mut state.record {
            if let Err(e) = record.append(index) {
                // Resume then checks every piece in the file instead.
                state.notes.push(format!(
                    "cannot record verified pieces in {}: {e}",
                    resume::record_path(self.part_path).display()
                ));
                state.record = None;
            }
        }
        self.bump(&mut state);
    }

    /// Source `id` lets piece `index` go without fault.
    pub fn release(&self, id: SourceId, index: usize) {
        let mut state = self.lock();
        if let Some(scheduler) = &mut state.scheduler {
            scheduler.release(id, index);
        }
        self.bump(&mut state);
    }

    /// Source `id` failed on piece `index`: whether it may go on.
    pub fn failed(
        &self,
        id: SourceId,
        index: usize,
        failure: Failure,
        error: SourceError,
    ) -> Verdict {
        let mut state = self.lock();
        let verdict = match &mut state.scheduler {
            Some(scheduler) => scheduler.failed(id, Some(index), failure),
            None => Verdict::Excluded,
        };
        // A piece that fails against a list another source sent says as
        // much about that list as about this source: it is left out here,
        // but not blamed, so the sequential path (which checks the whole
        // file against the registered SHA-256) still tries it.
        let disputed = failure == Failure::Corrupt && state.list_from != Some(id);
        let list_from = state
            .list_from
            .map(|from| self.sources[from].addr())
            .unwrap_or_default();
        if !self.stopping() {
            match verdict {
                Verdict::Retry => state.notes.push(format!("{error}; connecting again")),
                Verdict::Excluded if disputed => state.notes.push(format!(
                    "{error}; {} is left out of the piece-by-piece download (its pieces disagree with the list from {}; one of the two lies)",
                    self.sources[id].addr(),
                    list_from
                )),
                Verdict::Excluded => state.notes.push(format!(
                    "{error}; {} is left out, its pieces go to the other sources",
                    self.sources[id].addr()
                )),
            }
        }
        if verdict == Verdict::Excluded && !disputed {
            state.failures.push((id, error));
        }
        self.bump(&mut state);
        verdict
    }

    /// An error of this machine: everything stops.
    pub fn local_error(&self, error: DownloadError) {
        let mut state = self.lock();
        if state.local.is_none() {
            state.local = Some(error);
        }
        self.bump(&mut state);
    }

    pub(super) fn take_failures(&self) -> Vec<(SourceId, SourceError)> {
        std::mem::take(&mut self.lock().failures)
    }
}
