//! Which source fetches which piece: the bookkeeping of a multi-source
//! download, without any I/O (the caller holds it behind a lock and does
//! the network and disk work outside).
//!
//! - Each source works on one piece at a time. A source asking for work
//!   gets the lowest missing piece, so the file fills roughly in order and
//!   the whole-file hash can follow close behind.
//! - **Endgame**: when no piece is missing but some are still in flight, an
//!   idle source gets a copy of one of them (fewest holders first, then the
//!   least advanced), so a slow or stalled source cannot hold the finish.
//!   The first verified copy wins ([`Scheduler::verified`]); the others see
//!   [`Scheduler::wanted`] turn false and drop theirs.
//! - A source that fails gives its piece back. Corrupt data or a fatal
//!   answer excludes it at once; network errors exclude it after
//!   [`MAX_NETWORK_FAILURES`] in a row.
//!
//! This module must not decide anything from the clock or the network; it
//! only records what the workers report.

use std::collections::BTreeSet;

/// Consecutive network failures (connection refused, reset, closed early)
/// after which a source is excluded: one reconnect is worth trying, a peer
/// that is gone is not worth more.
pub const MAX_NETWORK_FAILURES: u32 = 2;

/// Index of a source in the download's list of sources.
pub type SourceId = usize;

/// What a source should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Fetch this piece.
    Piece(usize),
    /// Nothing to do now: wait until something changes.
    Wait,
    /// Every piece is verified and written.
    Finished,
    /// This source may not take part any more.
    Excluded,
}

/// How a source failed on a piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The bytes do not match the piece list: excluded at once.
    Corrupt,
    /// The connection failed: excluded after [`MAX_NETWORK_FAILURES`] in a row.
    Network,
    /// A wrong or unusable answer, or a stall: excluded at once.
    Fatal,
}

/// What became of a source after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It may reconnect and go on.
    Retry,
    /// It is out of this download.
    Excluded,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Missing,
    InFlight,
    /// A verified copy is being written; nobody else needs it.
    Writing,
    Done,
}

#[derive(Debug, Clone)]
struct Piece {
    state: State,
    len: u64,
    /// Sources fetching it now (more than one only in endgame).
    holders: Vec<SourceId>,
    /// The most bytes any holder has received of it.
    received: u64,
}

#[derive(Debug, Clone, Default)]
struct Slot {
    excluded: bool,
    network_failures: u32,
    current: Option<usize>,
    /// Pieces this source delivered first.
    delivered: usize,
}

/// The state of every piece and source of one download.
#[derive(Debug, Clone)]
pub struct Scheduler {
    pieces: Vec<Piece>,
    slots: Vec<Slot>,
    /// Every piece below this index has been handed out at least once.
    cursor: usize,
    /// Pieces handed back (their holder failed) below `cursor`.
    returned: BTreeSet<usize>,
    /// Pieces with at least one holder.
    in_flight: BTreeSet<usize>,
    done: usize,
    done_bytes: u64,
}

impl Scheduler {
    /// A download of pieces of the given lengths, some already `done`
    /// (resumed), from `sources` sources.
    pub fn new(lens: impl IntoIterator<Item = u64>, done: &[bool], sources: usize) -> Scheduler {
        let mut scheduler = Scheduler {
            pieces: Vec::new(),
            slots: vec![Slot::default(); sources],
            cursor: 0,
            returned: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            done: 0,
            done_bytes: 0,
        };
        for (i, len) in lens.into_iter().enumerate() {
            let is_done = done.get(i).copied().unwrap_or(false);
            if is_done {
                scheduler.done += 1;
                scheduler.done_bytes += len;
            }
            scheduler.pieces.push(Piece {
                state: if is_done { State::Done } else { State::Missing },
                len,
                holders: Vec::new(),
                received: 0,
            });
        }
        scheduler
    }

    /// Number of pieces.
    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    /// Whether there are no pieces at all (an empty file).
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Whether every piece is verified and written.
    pub fn finished(&self) -> bool {
        self.done == self.pieces.len()
    }

    /// Whether piece `index` is verified and written.
    pub fn is_done(&self, index: usize) -> bool {
        self.pieces
            .get(index)
            .is_some_and(|p| p.state == State::Done)
    }

    /// Pieces verified and written.
    pub fn done_count(&self) -> usize {
        self.done
    }

    /// Bytes of verified pieces plus the bytes received so far of the
    /// pieces in flight (for the progress bar).
    pub fn position(&self) -> u64 {
        let in_flight: u64 = self
            .in_flight
            .iter()
            .filter_map(|&i| self.pieces.get(i))
            .map(|p| p.received.min(p.len))
            .sum();
        self.done_bytes + in_flight
    }

    /// Sources not excluded.
    pub fn alive(&self) -> usize {
        self.slots.iter().filter(|s| !s.excluded).count()
    }

    /// Whether `source` is excluded.
    pub fn is_excluded(&self, source: SourceId) -> bool {
        self.slots.get(source).is_none_or(|s| s.excluded)
    }

    /// Sources fetching a piece right now.
    pub fn active(&self) -> usize {
        self.slots.iter().filter(|s| s.current.is_some()).count()
    }

    /// How many pieces each source delivered first.
    pub fn delivered(&self) -> Vec<usize> {
        self.slots.iter().map(|s| s.delivered).collect()
    }

    /// The next piece for `source` (see the module doc for the order).
    pub fn next(&mut self, source: SourceId) -> Assignment {
        let Some(slot) = self.slots.get(source) else {
            return Assignment::Excluded;
        };
        if slot.excluded {
            return Assignment::Excluded;
        }
        if self.finished() {
            return Assignment::Finished;
        }
        if let Some(current) = slot.current {
            // Still holding one: finish that first, unless another copy won.
            if self.wanted(source, current) {
                return Assignment::Piece(current);
            }
            self.let_go(source, current);
        }
        let piece = self.take_missing().or_else(|| self.endgame_pick(source));
        match piece {
            Some(index) => {
                self.hold(source, index);
                Assignment::Piece(index)
            }
            None => Assignment::Wait,
        }
    }

    /// The lowest piece that nobody holds and nobody has delivered.
    fn take_missing(&mut self) -> Option<usize> {
        while let Some(&index) = self.returned.first() {
            self.returned.remove(&index);
            if self
                .pieces
                .get(index)
                .is_some_and(|p| p.state == State::Missing)
            {
                return Some(index);
            }
        }
        while self.cursor < self.pieces.len() {
            let index = self.cursor;
            self.cursor += 1;
            if self.pieces[index].state == State::Missing {
                return Some(index);
            }
        }
        None
    }

    /// In endgame, a piece in flight that `source` does not hold: fewest
    /// holders first, then the least received.
    fn endgame_pick(&self, source: SourceId) -> Option<usize> {
        self.in_flight
            .iter()
            .copied()
            .filter(|&i| {
                let p = &self.pieces[i];
                p.state == State::InFlight && !p.holders.contains(&source)
            })
            .min_by_key(|&i| (self.pieces[i].holders.len(), self.pieces[i].received, i))
    }

    fn hold(&mut self, source: SourceId, index: usize) {
        let piece = &mut self.pieces[index];
        piece.state = State::InFlight;
        piece.holders.push(source);
        self.in_flight.insert(index);
        self.slots[source].current = Some(index);
    }

    /// `source` has received `received` bytes of piece `index`; returns
    /// whether it should go on (false once another copy won).
    pub fn progress(&mut self, source: SourceId, index: usize, received: u64) -> bool {
        if !self.wanted(source, index) {
            return false;
        }
        let piece = &mut self.pieces[index];
        piece.received = piece.received.max(received);
        true
    }

    /// Whether `source` should still be fetching piece `index`.
    pub fn wanted(&self, source: SourceId, index: usize) -> bool {
        !self.is_excluded(source)
            && self
                .pieces
                .get(index)
                .is_some_and(|p| p.state == State::InFlight && p.holders.contains(&source))
    }

    /// `source` holds a verified copy of piece `index`. Returns `true` when
    /// it is the first, and must now write it and call
    /// [`written`](Self::written); `false` when the copy is not needed.
    pub fn verified(&mut self, source: SourceId, index: usize) -> bool {
        let first = self
            .pieces
            .get(index)
            .is_some_and(|p| p.state == State::InFlight)
            && source < self.slots.len();
        if !first {
            self.let_go(source, index);
            return false;
        }
        let piece = &mut self.pieces[index];
        piece.state = State::Writing;
        piece.holders.retain(|&h| h != source);
        self.slots[source].current = Some(index);
        true
    }

    /// The piece `source` verified is on disk.
    pub fn written(&mut self, source: SourceId, index: usize) {
        let Some(piece) = self.pieces.get_mut(index) else {
            return;
        };
        if piece.state != State::Writing {
            return;
        }
        piece.state = State::Done;
        piece.holders.clear();
        self.in_flight.remove(&index);
        self.done += 1;
        self.done_bytes += piece.len;
        let slot = &mut self.slots[source];
        slot.current = None;
        slot.delivered += 1;
        slot.network_failures = 0;
    }

    /// `source` stops fetching piece `index` without fault (another copy
    /// won, or the download stops).
    pub fn release(&mut self, source: SourceId, index: usize) {
        self.let_go(source, index);
    }

    /// `source` failed, while fetching piece `index` if any.
    pub fn failed(&mut self, source: SourceId, index: Option<usize>, failure: Failure) -> Verdict {
        if let Some(index) = index {
            self.let_go(source, index);
        }
        let Some(slot) = self.slots.get_mut(source) else {
            return Verdict::Excluded;
        };
        let exclude = match failure {
            Failure::Corrupt | Failure::Fatal => true,
            Failure::Network => {
                slot.network_failures += 1;
                slot.network_failures >= MAX_NETWORK_FAILURES
            }
        };
        if exclude {
            slot.excluded = true;
            Verdict::Excluded
        } else {
            Verdict::Retry
        }
    }

    /// Removes `source` from the holders of `index`; a piece in flight that
    /// nobody holds any more is missing again.
    fn let_go(&mut self, source: SourceId, index: usize) {
        if let Some(slot) = self.slots.get_mut(source) {
            if slot.current == Some(index) {
                slot.current = None;
            }
        }
        let Some(piece) = self.pieces.get_mut(index) else {
            return;
        };
        piece.holders.retain(|&h| h != source);
        if piece.state == State::InFlight && piece.holders.is_empty() {
            piece.state = State::Missing;
            piece.received = 0;
            self.in_flight.remove(&index);
            self.returned.insert(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn four_pieces(sources: usize) -> Scheduler {
        Scheduler::new([10, 10, 10, 5], &[], sources)
    }

    /// Lets `source` take, verify and write its next piece.
    fn deliver(s: &mut Scheduler, source: SourceId) -> usize {
        let Assignment::Piece(i) = s.next(source) else {
            panic!("no piece for {source}")
        };
        assert!(s.verified(source, i));
        s.written(source, i);
        i
    }

    #[test]
    fn hands_out_pieces_in_order_and_finishes() {
        let mut s = four_pieces(2);
        assert_eq!(s.next(0), Assignment::Piece(0));
        assert_eq!(s.next(1), Assignment::Piece(1));
        // Asking again while holding one returns the same piece.
        assert_eq!(s.next(0), Assignment::Piece(0));
        assert_eq!(s.active(), 2);
        assert!(s.progress(0, 0, 4));
        assert_eq!(s.position(), 4);
        assert!(s.verified(0, 0));
        s.written(0, 0);
        assert_eq!(s.position(), 10);
        assert_eq!(deliver(&mut s, 0), 2);
        assert_eq!(deliver(&mut s, 0), 3);
        assert!(s.verified(1, 1));
        s.written(1, 1);
        assert!(s.finished());
        assert_eq!(s.position(), 35);
        assert_eq!(s.next(0), Assignment::Finished);
        assert_eq!(s.delivered(), [3, 1]);
    }

    #[test]
    fn resumed_pieces_are_skipped() {
        let mut s = Scheduler::new([10, 10, 10, 5], &[true, false, true], 1);
        assert_eq!(s.done_count(), 2);
        assert_eq!(s.position(), 20);
        assert_eq!(deliver(&mut s, 0), 1);
        assert_eq!(deliver(&mut s, 0), 3);
        assert!(s.finished());
        let mut all = Scheduler::new([1, 1], &[true, true], 1);
        assert_eq!(all.next(0), Assignment::Finished);
        let mut empty = Scheduler::new([], &[], 1);
        assert!(empty.is_empty() && empty.finished());
        assert_eq!(empty.next(0), Assignment::Finished);
    }

    #[test]
    fn a_corrupt_source_is_excluded_and_its_piece_goes_to_another() {
        let mut s = four_pieces(2);
        assert_eq!(s.next(0), Assignment::Piece(0));
        assert_eq!(s.next(1), Assignment::Piece(1));
        assert_eq!(s.failed(0, Some(0), Failure::Corrupt), Verdict::Excluded);
        assert_eq!(s.next(0), Assignment::Excluded);
        assert_eq!(s.alive(), 1);
        assert!(s.verified(1, 1));
        s.written(1, 1);
        // The returned piece comes before the untouched ones.
        assert_eq!(deliver(&mut s, 1), 0);
        assert_eq!(deliver(&mut s, 1), 2);
        assert_eq!(deliver(&mut s, 1), 3);
        assert!(s.finished());
    }

    #[test]
    fn network_failures_allow_one_retry() {
        let mut s = four_pieces(1);
        assert_eq!(s.next(0), Assignment::Piece(0));
        assert_eq!(s.failed(0, Some(0), Failure::Network), Verdict::Retry);
        assert_eq!(s.next(0), Assignment::Piece(0));
        // A delivered piece resets the count.
        assert!(s.verified(0, 0));
        s.written(0, 0);
        assert_eq!(s.next(0), Assignment::Piece(1));
        assert_eq!(s.failed(0, Some(1), Failure::Network), Verdict::Retry);
        assert_eq!(s.failed(0, None, Failure::Network), Verdict::Excluded);
        assert_eq!(s.alive(), 0);
        assert_eq!(s.failed(7, None, Failure::Fatal), Verdict::Excluded);
    }

    #[test]
    fn endgame_duplicates_the_last_pieces_and_the_first_copy_wins() {
        let mut s = four_pieces(3);
        assert_eq!(deliver(&mut s, 0), 0);
        assert_eq!(deliver(&mut s, 0), 1);
        assert_eq!(s.next(1), Assignment::Piece(2)); // a slow source
        assert_eq!(s.next(2), Assignment::Piece(3));
        assert!(s.progress(1, 2, 8));
        // Nothing missing: source 0 doubles the piece with the fewest
        // holders and the least progress.
        assert_eq!(s.next(0), Assignment::Piece(3));
        // Source 2 wins piece 3; source 0's copy is no longer wanted.
        assert!(s.verified(2, 3));
        assert!(!s.wanted(0, 3));
        assert!(!s.progress(0, 3, 1));
        assert!(!s.verified(0, 3));
        s.written(2, 3);
        // Source 2 doubles piece 2; source 0 too (each at most once).
        assert_eq!(s.next(2), Assignment::Piece(2));
        assert_eq!(s.next(0), Assignment::Piece(2));
        s.release(0, 2);
        // Nothing else is in flight, so it may take it again.
        assert_eq!(s.next(0), Assignment::Piece(2));
        assert!(s.verified(1, 2));
        // Source 2 asks again while its copy is no longer wanted.
        assert_eq!(s.next(2), Assignment::Wait);
        // Being written: nobody else gets it.
        s.release(0, 2);
        assert_eq!(s.next(0), Assignment::Wait);
        s.written(1, 2);
        assert!(s.finished());
        assert_eq!(s.next(2), Assignment::Finished);
    }

    #[test]
    fn a_released_piece_with_no_holder_is_missing_again() {
        let mut s = four_pieces(2);
        assert_eq!(s.next(0), Assignment::Piece(0));
        assert!(s.progress(0, 0, 9));
        s.release(0, 0);
        assert_eq!(s.position(), 0);
        assert_eq!(s.next(1), Assignment::Piece(0));
        assert!(!s.wanted(0, 0));
        assert!(s.wanted(1, 0));
    }
}
