//! The shared folder: turning a file name into a file that may be served,
//! listing what is shared, and streaming SHA-256 with a cache.
//!
//! This is the one gate between a name that came from the network (or the
//! menu) and the file system. [`SharedDir::resolve`] accepts only a name that
//! passes [`check_name`] and only a **regular file whose canonical path lies
//! inside the canonical shared folder**: a symlink to a regular file inside
//! the folder is served, a symlink that leads outside it, a directory, a fifo
//! or a device is refused. [`SharedDir::list`] lists exactly the names
//! `resolve` accepts, so everything listed can be served.
//!
//! This module must not read whole files into memory (hashing streams through
//! a [`HASH_BUFFER_BYTES`] buffer) and must not know about HTTP or the
//! registry.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use p2p_proto::protocol::{check_name, to_hex, NameError};
use sha2::{Digest, Sha256};

/// Size of the read buffer used while hashing: large enough that the
/// SHA-256 instructions, not system calls, set the pace; small enough to
/// keep memory per hash constant whatever the file size.
pub const HASH_BUFFER_BYTES: usize = 256 * 1024;

/// Why the shared folder or a file in it cannot be used. Every message
/// names the path or the name involved.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The shared folder itself cannot be opened.
    #[error("cannot open shared folder {}: {source}", path.display())]
    OpenDir { path: PathBuf, source: io::Error },
    /// The shared folder path exists but is not a directory.
    #[error("shared folder {} is not a directory", path.display())]
    NotADir { path: PathBuf },
    /// The name breaks the contract's name rules.
    #[error("bad file name {name:?}: {reason}")]
    BadName { name: String, reason: NameError },
    /// Nothing of that name in the shared folder (or a dangling symlink).
    #[error("no file named {name:?} in shared folder {}", dir.display())]
    NotFound { name: String, dir: PathBuf },
    /// The name exists but is a directory, fifo, socket or device.
    #[error("{name:?} ({}) is not a regular file", path.display())]
    NotRegular { name: String, path: PathBuf },
    /// The name is a symlink whose target is outside the shared folder.
    #[error("{name:?} leads outside the shared folder {} (to {})", dir.display(), target.display())]
    Outside {
        name: String,
        dir: PathBuf,
        target: PathBuf,
    },
    /// The file changed size while it was being hashed.
    #[error("{} changed while it was being hashed ({expected} bytes expected, {actual} read)", path.display())]
    Changed {
        path: PathBuf,
        expected: u64,
        actual: u64,
    },
    /// Any other I/O failure on a file.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// A regular file of the shared folder, as seen when it was resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFile {
    /// The name it is shared under (its directory entry in the folder).
    pub name: String,
    /// Its canonical path: no symlinks, inside the shared folder.
    pub path: PathBuf,
    /// Its size in bytes when resolved.
    pub size: u64,
    /// Its modification time when resolved; with `size` it tells whether a
    /// cached digest is still valid.
    pub modified: SystemTime,
}

/// Suffixes of the files a download in progress writes (the `.part` and the
/// record of its verified pieces): never listed, served or registered, from
/// the downloads folder or from the shared folder (where one is most likely
/// a download copied in before it finished).
pub const PARTIAL_SUFFIXES: [&str; 2] = [".part", ".part.pieces"];

/// Whether `name` ends like a partial download (see [`PARTIAL_SUFFIXES`]).
pub fn has_partial_suffix(name: &str) -> bool {
    PARTIAL_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Whether `name`, an entry of the downloads folder, is (or may be) a
/// download in progress: a `.part`, its piece record, or a hidden file
/// (temporary files start with a dot).
pub fn is_partial_download(name: &str) -> bool {
    name.starts_with('.') || has_partial_suffix(name)
}

/// One shared folder, canonicalized once when opened; with
/// `--share-downloads`, also the verified files of the downloads folder.
///
/// Name collisions: a name present in the shared folder is always the
/// shared folder's file; the downloads folder's file of the same name is
/// then neither listed nor served.
#[derive(Debug, Clone)]
pub struct SharedDir {
    /// Canonical path of the folder; every served file's canonical path
    /// starts with it (or with `downloads`).
    root: PathBuf,
    /// Canonical path of the downloads folder when its finished files are
    /// shared too.
    downloads: Option<PathBuf>,
}

impl SharedDir {
    /// Opens the folder at `path`, which must exist and be a directory.
    pub fn open(path: impl AsRef<Path>) -> Result<SharedDir, FilesError> {
        let path = path.as_ref();
        let root = fs::canonicalize(path).map_err(|source| FilesError::OpenDir {
            path: path.to_owned(),
            source,
        })?;
        let meta = fs::metadata(&root).map_err(|source| FilesError::OpenDir {
            path: path.to_owned(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(FilesError::NotADir {
                path: path.to_owned(),
            });
        }
        Ok(SharedDir {
            root,
            downloads: None,
        })
    }

    /// Also shares the finished files of the downloads folder at `path`
    /// (`--share-downloads`): never its partial downloads
    /// ([`is_partial_download`]), and never a name the shared folder has.
    pub fn with_downloads(self, path: impl AsRef<Path>) -> Result<SharedDir, FilesError> {
        let downloads = SharedDir::open(path)?.root;
        Ok(SharedDir {
            downloads: Some(downloads),
            ..self
        })
    }

    /// The canonical path of the folder.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Every folder whose files are shared: the shared folder, then the
    /// downloads folder when it is shared too.
    pub fn roots(&self) -> Vec<&Path> {
        std::iter::once(self.root.as_path())
            .chain(self.downloads.as_deref())
            .collect()
    }

    /// Finds the regular file shared under `name`; see the module doc for
    /// what is accepted.
    pub fn resolve(&self, name: &str) -> Result<SharedFile, FilesError> {
        check_name(name).map_err(|reason| FilesError::BadName {
            name: name.to_owned(),
            reason,
        })?;
        if has_partial_suffix(name) {
            return Err(FilesError::NotFound {
                name: name.to_owned(),
                dir: self.root.clone(),
            });
        }
        match (resolve_in(&self.root, name), &self.downloads) {
            (Err(FilesError::NotFound { .. }), Some(downloads)) if !is_partial_download(name) => {
                resolve_in(downloads, name).map_err(|e| match e {
                    // The shared folder is the one people know about.
                    FilesError::NotFound { name, .. } => FilesError::NotFound {
                        name,
                        dir: self.root.clone(),
                    },
                    other => other,
                })
            }
            (result, _) => result,
        }
    }

    /// Every file directly in the folder that [`resolve`](Self::resolve)
    /// accepts, sorted by name. Entries whose names are not UTF-8 or break
    /// the name rules, and entries that are not regular files inside the
    /// folder, are skipped (logged at debug level), never an error.
    pub fn list(&self) -> Result<Vec<SharedFile>, FilesError> {
        let mut files = list_in(&self.root)?;
        files.retain(|f| !has_partial_suffix(&f.name));
        if let Some(downloads) = &self.downloads {
            let taken: std::collections::HashSet<String> =
                files.iter().map(|f| f.name.clone()).collect();
            match list_in(downloads) {
                Ok(more) => files.extend(
                    more.into_iter()
                        .filter(|f| !is_partial_download(&f.name) && !taken.contains(&f.name)),
                ),
                Err(e) => tracing::warn!("not sharing the downloads folder: {e}"),
            }
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(files)
    }
}

/// Resolves `name` (already checked) inside the canonical folder `root`.
fn resolve_in(root: &Path, name: &str) -> Result<SharedFile, FilesError> {
    let joined = root.join(name);
    let canonical = match fs::canonicalize(&joined) {
        Ok(path) => path,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(FilesError::NotFound {
                name: name.to_owned(),
                dir: root.to_owned(),
            })
        }
        Err(source) => {
            return Err(FilesError::Io {
                path: joined,
                source,
            })
        }
    };
    if !canonical.starts_with(root) || canonical == root {
        return Err(FilesError::Outside {
            name: name.to_owned(),
            dir: root.to_owned(),
            target: canonical,
        });
    }
    let meta = fs::metadata(&canonical).map_err(|source| FilesError::Io {
        path: canonical.clone(),
        source,
    })?;
    if !meta.is_file() {
        return Err(FilesError::NotRegular {
            name: name.to_owned(),
            path: canonical,
        });
    }
    let modified = meta.modified().map_err(|source| FilesError::Io {
        path: canonical.clone(),
        source,
    })?;
    Ok(SharedFile {
        name: name.to_owned(),
        path: canonical,
        size: meta.len(),
        modified,
    })
}

/// The regular files directly in the canonical folder `root`, unsorted.
fn list_in(root: &Path) -> Result<Vec<SharedFile>, FilesError> {
    let entries = fs::read_dir(root).map_err(|source| FilesError::OpenDir {
        path: root.to_owned(),
        source,
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| FilesError::Io {
            path: root.to_owned(),
            source,
        })?;
        let Ok(name) = entry.file_name().into_string() else {
            tracing::debug!(entry = ?entry.file_name(), "skipping a name that is not UTF-8");
            continue;
        };
        if check_name(&name).is_err() {
            tracing::debug!(entry = ?name, "skipping a name that breaks the name rules");
            continue;
        }
        match resolve_in(root, &name) {
            Ok(file) => files.push(file),
            Err(e) => tracing::debug!("not shared: {e}"),
        }
    }
    Ok(files)
}

/// Streams the file at `path` through SHA-256 in constant memory and returns
/// its size and lowercase hex digest. `on_progress` is called after every
/// read with the number of bytes hashed so far.
pub fn hash_file(
    path: &Path,
    on_progress: &mut dyn FnMut(u64),
) -> Result<(u64, String), FilesError> {
    let io_err = |source| FilesError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let done = hash_into(&mut file, &mut hasher, on_progress).map_err(io_err)?;
    Ok((done, to_hex(&hasher.finalize())))
}

/// The streaming SHA-256 loop (the one copy): feeds everything `reader`
/// yields into `hasher` through a [`HASH_BUFFER_BYTES`] buffer, calling
/// `on_progress` with the byte count so far after every read; returns the
/// byte count.
pub fn hash_into(
    reader: &mut dyn Read,
    hasher: &mut Sha256,
    on_progress: &mut dyn FnMut(u64),
) -> io::Result<u64> {
    let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        total += n as u64;
        on_progress(total);
    }
}

/// What the cache remembers for one path: the version that was hashed and
/// its digest.
#[derive(Debug, Clone)]
struct CacheEntry {
    size: u64,
    modified: SystemTime,
    sha256: String,
}

/// SHA-256 digests of shared files, keyed by path and valid only while the
/// file keeps the size and modification time it had when hashed, so a
/// changed file is hashed again.
///
/// Cloning shares the cache. It is shared state behind a lock because the
/// HTTP workers (for `ETag`) and registration both need it; the lock is never
/// held while a file is being hashed, so two threads may occasionally hash
/// the same file at once, which costs time but never gives a wrong answer.
/// One entry per path: a changed file replaces its old entry.
#[derive(Debug, Clone, Default)]
pub struct HashCache {
    entries: Arc<Mutex<HashMap<PathBuf, CacheEntry>>>,
}

impl HashCache {
    pub fn new() -> HashCache {
        HashCache::default()
    }

    /// The digest of `file`, from the cache when its size and modification
    /// time are unchanged, otherwise by hashing it (and caching the result).
    pub fn digest(&self, file: &SharedFile) -> Result<String, FilesError> {
        if let Some(sha256) = self.cached(file) {
            return Ok(sha256);
        }
        let (size, sha256) = hash_file(&file.path, &mut |_| {})?;
        if size != file.size {
            return Err(FilesError::Changed {
                path: file.path.clone(),
                expected: file.size,
                actual: size,
            });
        }
        self.insert(file, sha256.clone());
        Ok(sha256)
    }

    /// The cached digest of `file`, if this version of it has been hashed.
    pub fn cached(&self, file: &SharedFile) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(&file.path)
            .filter(|e| e.size == file.size && e.modified == file.modified)
            .map(|e| e.sha256.clone())
    }

    /// Forgets the digests of every path `keep` refuses (files no longer
    /// shared), so a long-running peer does not remember deleted files.
    pub fn retain(&self, keep: impl Fn(&Path) -> bool) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|path, _| keep(path));
    }

    /// Records `sha256` as the digest of this version of `file` (for callers
    /// that hashed it themselves, e.g. with a progress bar).
    pub fn insert(&self, file: &SharedFile, sha256: String) {
        // A poisoned lock only means another thread panicked between two
        // statements that each leave the map consistent.
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.insert(
            file.path.clone(),
            CacheEntry {
                size: file.size,
                modified: file.modified,
                sha256,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn folder() -> (tempfile::TempDir, SharedDir) {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("shared")).unwrap();
        let dir = SharedDir::open(tmp.path().join("shared")).unwrap();
        (tmp, dir)
    }

    #[test]
    fn open_names_the_missing_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let err = SharedDir::open(&missing).unwrap_err();
        assert!(matches!(err, FilesError::OpenDir { .. }));
        assert!(err.to_string().contains("nope"), "{err}");
        fs::write(tmp.path().join("file"), b"x").unwrap();
        assert!(matches!(
            SharedDir::open(tmp.path().join("file")),
            Err(FilesError::NotADir { .. })
        ));
    }

    #[test]
    fn resolves_a_regular_file() {
        let (_tmp, dir) = folder();
        fs::write(dir.path().join("a b.txt"), b"hello").unwrap();
        let file = dir.resolve("a b.txt").unwrap();
        assert_eq!(file.name, "a b.txt");
        assert_eq!(file.size, 5);
        assert_eq!(file.path, dir.path().join("a b.txt"));
    }

    #[test]
    fn refuses_bad_names_before_touching_the_disk() {
        let (_tmp, dir) = folder();
        for name in [
            "..",
            ".",
            "",
            "../x",
            "a/b",
            "/etc/passwd",
            "a\\b",
            "nul\0",
            " x",
        ] {
            let err = dir.resolve(name).unwrap_err();
            assert!(matches!(err, FilesError::BadName { .. }), "{name:?}: {err}");
        }
    }

    #[test]
    fn missing_file_is_not_found() {
        let (_tmp, dir) = folder();
        let err = dir.resolve("ghost").unwrap_err();
        assert!(matches!(err, FilesError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("ghost"));
    }

    #[test]
    fn symlink_leading_outside_is_refused() {
        let (tmp, dir) = folder();
        fs::write(tmp.path().join("secret"), b"s").unwrap();
        symlink(tmp.path().join("secret"), dir.path().join("link")).unwrap();
        symlink("../secret", dir.path().join("rel")).unwrap();
        symlink("/etc", dir.path().join("etc")).unwrap();
        for name in ["link", "rel", "etc"] {
            let err = dir.resolve(name).unwrap_err();
            assert!(matches!(err, FilesError::Outside { .. }), "{name}: {err}");
        }
        // A link to the folder itself is not a file inside it either.
        symlink(".", dir.path().join("self")).unwrap();
        assert!(dir.resolve("self").is_err());
    }

    #[test]
    fn symlink_to_a_file_inside_is_served() {
        let (_tmp, dir) = folder();
        fs::write(dir.path().join("real"), b"abc").unwrap();
        symlink("real", dir.path().join("alias")).unwrap();
        let file = dir.resolve("alias").unwrap();
        assert_eq!(file.name, "alias");
        assert_eq!(file.path, dir.path().join("real"));
        assert_eq!(file.size, 3);
    }

    #[test]
    fn directories_and_fifos_are_not_regular() {
        let (_tmp, dir) = folder();
        fs::create_dir(dir.path().join("sub")).unwrap();
        let err = dir.resolve("sub").unwrap_err();
        assert!(matches!(err, FilesError::NotRegular { .. }), "{err}");
        let status = std::process::Command::new("mkfifo")
            .arg(dir.path().join("pipe"))
            .status();
        if matches!(status, Ok(s) if s.success()) {
            let err = dir.resolve("pipe").unwrap_err();
            assert!(matches!(err, FilesError::NotRegular { .. }), "{err}");
        }
    }

    #[test]
    fn dangling_symlink_is_not_found() {
        let (_tmp, dir) = folder();
        symlink("nowhere", dir.path().join("dangling")).unwrap();
        assert!(matches!(
            dir.resolve("dangling"),
            Err(FilesError::NotFound { .. })
        ));
    }

    #[test]
    fn list_is_sorted_and_skips_what_cannot_be_served() {
        let (tmp, dir) = folder();
        fs::write(dir.path().join("b"), b"2").unwrap();
        fs::write(dir.path().join("a"), b"1").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub").join("deep"), b"x").unwrap();
        fs::write(tmp.path().join("outside"), b"o").unwrap();
        symlink(tmp.path().join("outside"), dir.path().join("escape")).unwrap();
        symlink("a", dir.path().join("c")).unwrap();
        fs::write(dir.path().join(" lead"), b"x").unwrap();
        fs::write(dir.path().join("copied.iso.part"), b"x").unwrap();
        fs::write(dir.path().join("copied.iso.part.pieces"), b"x").unwrap();
        {
            use std::os::unix::ffi::OsStrExt;
            let raw = std::ffi::OsStr::from_bytes(b"bad\xffutf8");
            fs::write(dir.path().join(raw), b"x").unwrap();
        }
        let names: Vec<String> = dir.list().unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["a", "b", "c"]);
        for partial in ["copied.iso.part", "copied.iso.part.pieces"] {
            let err = dir.resolve(partial).unwrap_err();
            assert!(
                matches!(err, FilesError::NotFound { .. }),
                "{partial}: {err}"
            );
        }
    }

    #[test]
    fn downloads_share_finished_files_only_and_the_shared_folder_wins() {
        let (tmp, dir) = folder();
        let downloads = tmp.path().join("downloads");
        fs::create_dir(&downloads).unwrap();
        fs::write(dir.path().join("both"), b"shared").unwrap();
        fs::write(downloads.join("both"), b"downloaded").unwrap();
        for name in ["done.iso", "x.part", "x.part.pieces", ".tmp"] {
            fs::write(downloads.join(name), b"d").unwrap();
        }
        let names = |d: &SharedDir| -> Vec<String> {
            d.list().unwrap().into_iter().map(|f| f.name).collect()
        };
        assert_eq!(names(&dir), ["both"]);
        assert!(dir.resolve("done.iso").is_err());
        let both = dir.clone().with_downloads(&downloads).unwrap();
        assert_eq!(names(&both), ["both", "done.iso"]);
        assert_eq!(both.resolve("both").unwrap().path, dir.path().join("both"));
        assert_eq!(both.resolve("done.iso").unwrap().size, 1);
        for partial in ["x.part", "x.part.pieces", ".tmp"] {
            assert!(is_partial_download(partial));
            let err = both.resolve(partial).unwrap_err();
            assert!(
                matches!(err, FilesError::NotFound { .. }),
                "{partial}: {err}"
            );
        }
        assert!(!is_partial_download("movie.partial"));
        assert_eq!(both.roots().len(), 2);
    }

    #[test]
    fn hashes_in_chunks_with_progress() {
        let (_tmp, dir) = folder();
        let path = dir.path().join("big");
        let data: Vec<u8> = (0..HASH_BUFFER_BYTES * 2 + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        fs::write(&path, &data).unwrap();
        let mut seen = Vec::new();
        let (size, hex) = hash_file(&path, &mut |n| seen.push(n)).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(hex, to_hex(&Sha256::digest(&data)));
        assert_eq!(seen.last(), Some(&size));
        assert!(seen.windows(2).all(|w| w[0] < w[1]));

        fs::write(dir.path().join("empty"), b"").unwrap();
        let (size, hex) = hash_file(&dir.path().join("empty"), &mut |_| {}).unwrap();
        assert_eq!((size, hex.as_str()), (0, EMPTY_SHA256));
    }

    #[test]
    fn cache_rehashes_a_changed_file() {
        let (_tmp, dir) = folder();
        let path = dir.path().join("f");
        fs::write(&path, b"one").unwrap();
        let cache = HashCache::new();
        let first = dir.resolve("f").unwrap();
        assert_eq!(cache.cached(&first), None);
        let d1 = cache.digest(&first).unwrap();
        assert_eq!(d1, to_hex(&Sha256::digest(b"one")));
        assert_eq!(cache.clone().cached(&first), Some(d1.clone()));

        fs::write(&path, b"three").unwrap();
        let second = dir.resolve("f").unwrap();
        assert_eq!(cache.cached(&second), None);
        assert_eq!(
            cache.digest(&second).unwrap(),
            to_hex(&Sha256::digest(b"three"))
        );

        // A stale SharedFile whose size no longer matches the disk.
        assert!(matches!(
            HashCache::new().digest(&first),
            Err(FilesError::Changed { .. })
        ));

        cache.insert(&first, "x".repeat(64));
        assert_eq!(cache.cached(&first), Some("x".repeat(64)));
    }
}
