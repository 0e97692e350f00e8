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

/// How long after its last write (or its creation) a file still open for
/// writing keeps waiting for its close. Past it the settle time alone
/// decides: a program that holds a file open but stopped writing long ago
/// (or a hard link made into the folder, which is created but never
/// opened) must not keep the file unannounced for ever.
pub const OPEN_FOR_WRITING_LIMIT: Duration = Duration::from_secs(60);

/// The shared files that the notifications show open for writing: created
/// or written to, and not closed since, with the time of the last such
/// event. Filled by the notification handler (another thread), read by the
/// reconciling pass. Close events are reliable (the kernel sends one when
/// a writer closes or dies); only an overflowed event queue loses them,
/// and then everything is forgotten (the settle time decides again).
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
        match event.kind {
            EventKind::Create(CreateKind::File) | EventKind::Modify(ModifyKind::Data(_)) => {
                for path in &event.paths {
                    open.insert(path.clone(), now);
                }
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                for path in &event.paths {
                    open.remove(path);
                }
            }
            // Renamed while open: still open, under its new name.
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                if let [from, to] = event.paths.as_slice() {
                    if let Some(at) = open.remove(from) {
                        open.insert(to.clone(), at);
                    }
                }
            }
            _ => {}
        }
    }

    /// Whether `path` is open for writing, as far as the events tell.
    pub fn is_open(&self, path: &Path, now: Instant) -> bool {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match open.get(path) {
            Some(at) if now.duration_since(*at) < OPEN_FOR_WRITING_LIMIT => true,
            Some(_) => {
                open.remove(path);
                false
            }
            None => false,
        }
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
        writing.note(&event(EventKind::Create(CreateKind::File), &["/s/a"]));
        writing.note(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/s/a", "/s/b"],
        ));
        assert!(!writing.is_open(Path::new("/s/a"), Instant::now()));
        assert!(writing.is_open(Path::new("/s/b"), Instant::now()));
        writing.note(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            &["/s/b"],
        ));
        assert!(!writing.is_open(Path::new("/s/b"), Instant::now()));
    }

    #[test]
    fn an_overflow_forgets_everything_and_the_limit_ends_the_wait() {
        let writing = Writing::default();
        writing.note(&event(EventKind::Create(CreateKind::File), &["/s/a"]));
        writing.note(&Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan));
        assert!(!writing.is_open(Path::new("/s/a"), Instant::now()));

        writing.note(&event(EventKind::Create(CreateKind::File), &["/s/a"]));
        let later = Instant::now() + OPEN_FOR_WRITING_LIMIT;
        assert!(!writing.is_open(Path::new("/s/a"), later));
        // And it is forgotten then, not only ignored.
        assert!(!writing.is_open(Path::new("/s/a"), Instant::now()));
    }
}
