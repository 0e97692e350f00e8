//! Which shared files are open for writing, as the folder's notifications
//! (inotify through `notify`) tell: a file created or written to and not
//! closed since. The watcher ([`crate::watch`]) feeds it from its
//! notification handler; the watcher's passes and the DHT announcer
//! ([`crate::dht`]) ask it before they hash and announce a file, so that
//! neither announces one half-written however long its writer pauses.
//!
//! This module must not touch the file system: it only keeps what the
//! events said.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long after its last write a file still open for writing keeps
/// waiting for its close. Past it the settle time alone decides: a program
/// that holds a file open but stopped writing long ago must not keep the
/// file unannounced for ever.
pub const OPEN_FOR_WRITING_LIMIT: Duration = Duration::from_secs(60);

/// How long a file created but not yet written to counts as open: long
/// enough for a writer's first write to follow its `open`, short enough
/// that a hard link made into the folder (created, never opened) is
/// announced within the contract's 5 s.
pub const CREATED_LIMIT: Duration = Duration::from_secs(2);

/// The shared files that the notifications show open for writing: created
/// or written to, and not closed since, each with the time its wait ends.
/// Filled by the notification handler (another thread), read by the
/// reconciling pass and the DHT announcer.
///
/// What it cannot see: opens (inotify's open event carries no mode), so a
/// file two programs write is taken as closed at the first close until the
/// other writes again; writes before the watcher started; writes through
/// `mmap`. An overflowed event queue forgets everything (the settle time
/// decides again). A file renamed while open keeps its wait under its new
/// name; renamed out of the folder, its entry just runs out.
#[derive(Debug, Clone, Default)]
pub struct Writing(Arc<Mutex<HashMap<PathBuf, Instant>>>);

impl Writing {
    /// Takes in one notification.
    pub fn note(&self, event: &notify::Event) {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        use notify::EventKind;
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if event.need_rescan() {
            open.clear();
            return;
        }
        let now = Instant::now();
        // Entries of paths nobody asks about (a symlink's own path, a name
        // the listing skips) end here rather than never.
        open.retain(|_, until| *until > now);
        match event.kind {
            EventKind::Create(CreateKind::File) => {
                for path in &event.paths {
                    let until = now + CREATED_LIMIT;
                    let entry = open.entry(path.clone()).or_insert(until);
                    *entry = (*entry).max(until);
                }
            }
            EventKind::Modify(ModifyKind::Data(_)) => {
                for path in &event.paths {
                    open.insert(path.clone(), now + OPEN_FOR_WRITING_LIMIT);
                }
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write)) | EventKind::Remove(_) => {
                for path in &event.paths {
                    open.remove(path);
                }
            }
            // notify sends `From`, then `To`, then `Both` with both paths:
            // the entry moves at `Both` (a `From` alone, renamed out of the
            // folder, leaves an entry that runs out).
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                if let [from, to] = event.paths.as_slice() {
                    if let Some(until) = open.remove(from) {
                        open.insert(to.clone(), until);
                    }
                }
            }
            _ => {}
        }
    }

    /// When the wait for `path` ends, if it is open for writing as far as
    /// the events tell (the caller looks again then).
    pub fn open_until(&self, path: &Path, now: Instant) -> Option<Instant> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match open.get(path) {
            Some(until) if *until > now => Some(*until),
            Some(_) => {
                open.remove(path);
                None
            }
            None => None,
        }
    }

    /// Whether `path` is open for writing ([`Writing::open_until`]).
    pub fn is_open(&self, path: &Path, now: Instant) -> bool {
        self.open_until(path, now).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, ModifyKind, RenameMode};
    use notify::{Event, EventKind};

    fn event(kind: EventKind, paths: &[&str]) -> Event {
        paths
            .iter()
            .fold(Event::new(kind), |e, p| e.add_path(PathBuf::from(p)))
    }

    #[test]
    fn a_file_is_open_from_its_creation_or_a_write_until_its_close() {
        let writing = Writing::default();
        writing.note(&event(EventKind::Create(CreateKind::File), &["/s/a"]));
        writing.note(&event(
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            &["/s/b"],
        ));
        assert!(writing.is_open(Path::new("/s/a"), Instant::now()));
        assert!(writing.is_open(Path::new("/s/b"), Instant::now()));
        assert!(!writing.is_open(Path::new("/s/c"), Instant::now()));
        // Reads, opens and metadata say nothing about writing.
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
        ] {
            writing.note(&event(kind, &["/s/c"]));
        }
        assert!(!writing.is_open(Path::new("/s/c"), Instant::now()));

        writing.note(&event(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            &["/s/a"],
        ));
        assert!(!writing.is_open(Path::new("/s/a"), Instant::now()));
        writing.note(&event(
            EventKind::Remove(notify::event::RemoveKind::File),
            &["/s/b"],
        ));
        assert!(!writing.is_open(Path::new("/s/b"), Instant::now()));
    }

    #[test]
    fn a_file_renamed_while_open_stays_open_under_its_new_name() {
        let writing = Writing::default();
        writing.note(&event(
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            &["/s/a"],
        ));
        // What notify 8 sends for one rename, in this order.
        writing.note(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            &["/s/a"],
        ));
        writing.note(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            &["/s/b"],
        ));
        writing.note(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/s/a", "/s/b"],
        ));
        assert!(!writing.is_open(Path::new("/s/a"), Instant::now()));
        assert!(writing.is_open(Path::new("/s/b"), Instant::now()));
    }

    #[test]
    fn a_file_created_and_never_written_waits_only_briefly() {
        let writing = Writing::default();
        // A hard link made into the folder: created, never opened.
        writing.note(&event(EventKind::Create(CreateKind::File), &["/s/link"]));
        let now = Instant::now();
        let until = writing.open_until(Path::new("/s/link"), now).unwrap();
        assert!(until <= now + CREATED_LIMIT);
        assert!(!writing.is_open(Path::new("/s/link"), now + CREATED_LIMIT));
        // A write after the create waits the long limit.
        writing.note(&event(EventKind::Create(CreateKind::File), &["/s/w"]));
        writing.note(&event(
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            &["/s/w"],
        ));
        assert!(writing.is_open(Path::new("/s/w"), Instant::now() + CREATED_LIMIT));
    }

    #[test]
    fn an_overflow_forgets_everything_and_the_limit_ends_the_wait() {
        let writing = Writing::default();
        writing.note(&event(EventKind::Create(CreateKind::File), &["/s/a"]));
        writing.note(&Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan));
        assert!(!writing.is_open(Path::new("/s/a"), Instant::now()));

        writing.note(&event(
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            &["/s/a"],
        ));
        let later = Instant::now() + OPEN_FOR_WRITING_LIMIT;
        assert!(!writing.is_open(Path::new("/s/a"), later));
        // And it is forgotten then, not only ignored.
        assert!(!writing.is_open(Path::new("/s/a"), Instant::now()));
    }
}
