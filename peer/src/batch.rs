//! Many files in one call: `peer get NAME...`, `peer get --find WORDS...`
//! and `peer get --from-file FILE`. The registry lookups of the whole batch
//! go over one connection, [`LOOKUP_PIPELINE_DEPTH`] `SEARCH`es written at
//! a time before their replies are read; a bounded pool of `jobs` threads
//! fetches the files, each with [`download::download_pooled`] (verified,
//! resumable, multi-source, as a single `peer get`), sharing one
//! [`Pool`] of keep-alive connections: a worker asks for its next file over
//! an idle connection to the same source, so a batch of many small files
//! from one peer opens about `jobs` connections to it, not one per file. One display shows the
//! whole batch (files done, bytes received, the files in flight; each
//! file's transfer reports to it through a progress [`Observer`]), and a
//! [`Summary`] says what happened to every name.
//!
//! With `--dht` ([`BatchConfig::dht`]) the registry is still asked as above,
//! and each worker then looks its name up on the DHT too, through one DHT
//! node started for the whole batch, and joins both answers with
//! [`dht::combine`], the rules of a single `peer get --dht`: merged, the DHT
//! alone when the registry cannot be asked, every DHT source confirmed by a
//! `HEAD` first. The DHT lookups thus run `jobs` at a time. A fallback (the
//! registry or the DHT could not be asked) is noted once for the batch.
//!
//! Threads: one looks names up and feeds a bounded channel; `jobs` workers
//! take names from it; the caller's thread waits for them (scoped threads,
//! so nothing outlives [`run`]).
//!
//! This module must not: fetch one name twice at once (names are
//! de-duplicated first: two fetches would share one `.part`), decide
//! anything about a single transfer (that is [`download`]'s), or print the
//! failures itself (the binary decides where they go).

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, Read};
use std::mem::Discriminant;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::bounded;
use indicatif::{ProgressBar, ProgressDrawTarget};
use p2p_proto::client::{Client, ClientError, Reply};
use p2p_proto::protocol::{check_name, Request, Source};
use p2p_proto::units::{human_size, plural};

use crate::dht::{self, DhtConfig, Fallback, SearchError};
use crate::download::{self, choose_content, DownloadError, Options, Outcome, Pool, PoolStats};
use crate::find::printable;
use crate::progress::{self, Observer, ObserverGuard, Reporter};

/// Default for `--jobs`: a few files in flight hide each one's round trips
/// (lookup, connect, verify, fsync) without crowding a 2-core machine.
pub const DEFAULT_JOBS: usize = 4;

/// Largest `--jobs`: each job is a thread with its own connections (and,
/// for a multi-source file, up to `--max-sources` more).
pub const MAX_JOBS: usize = 64;

/// `SEARCH` requests written before their replies are read. The requests
/// of one round (at most 4 KiB each, usually ~50 bytes) and their replies
/// fit the sockets' buffers, so neither side can block on a full buffer
/// while the other waits; and one round trip serves 64 names.
pub const LOOKUP_PIPELINE_DEPTH: usize = 64;

/// Most names one batch takes: far above a folder's worth of files, it
/// bounds what a runaway list (or `yes | peer get --from-file -`) costs.
pub const MAX_BATCH_NAMES: usize = 1_000_000;

/// Longest line of a name list, with its ending. A name is at most 255
/// bytes; a longer line is not a list of names.
pub const MAX_LIST_LINE_BYTES: usize = 4096;

/// How often the batch display is redrawn at most.
const BAR_REFRESH_PER_SECOND: u8 = 10;

/// Batch display: bytes done of those looked up so far, then files and the
/// files in flight (the message is cut to the terminal's width).
const BAR_TEMPLATE: &str = "[{bar:20.cyan/blue}] {done}/{size} {wide_msg}";

/// Batch display below [`progress::MEDIUM_COLUMNS`].
const BAR_TEMPLATE_NARROW: &str = "{percent:>3}% {wide_msg}";

/// Most names of files in flight the display shows.
const BAR_MAX_CURRENT: usize = 3;

/// What a batch is given: plain values, no command-line types.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Address of the registry, `host:port`.
    pub registry: String,
    /// Folder the files are written to.
    pub downloads: PathBuf,
    /// How each file is downloaded.
    pub download: Options,
    /// Most files fetched at once (1 to [`MAX_JOBS`]).
    pub jobs: usize,
    /// `--dht`: look every name up on the DHT as well; `None`: the registry only.
    pub dht: Option<DhtConfig>,
}

/// Why one file of a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Looking it up in the registry, or fetching it, failed.
    #[error(transparent)]
    Download(#[from] DownloadError),
    /// With `--dht`: neither the registry nor the DHT gave a source.
    #[error(transparent)]
    Search(#[from] SearchError),
}

impl FileError {
    /// Whether the name simply has no source (as opposed to a failure).
    pub fn is_not_found(&self) -> bool {
        match self {
            FileError::Download(e) => e.is_not_found(),
            FileError::Search(e) => e.is_not_found(),
        }
    }
}

/// What the registry answered for one name: its sources or why not.
type Answer = Result<Vec<Source>, DownloadError>;

/// Why a list of names could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("cannot read the list of names {source_name}: {error}")]
    Read {
        source_name: String,
        error: io::Error,
    },
    #[error(
        "line {line} of {source_name} is longer than {MAX_LIST_LINE_BYTES} bytes: not a file name"
    )]
    LineTooLong { source_name: String, line: usize },
    #[error("line {line} of {source_name} is not UTF-8")]
    NotUtf8 { source_name: String, line: usize },
    #[error("{source_name} has more than {MAX_BATCH_NAMES} names")]
    TooMany { source_name: String },
}

/// Reads one name per line from `input` (named `source_name` in errors):
/// line endings LF or CRLF, blank lines skipped, nothing else trimmed (a
/// name with a leading space is refused later, by name, not silently
/// changed).
pub fn read_names(mut input: impl BufRead, source_name: &str) -> Result<Vec<String>, ListError> {
    let mut names = Vec::new();
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        number += 1;
        let read = (&mut input)
            .take(MAX_LIST_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|error| ListError::Read {
                source_name: source_name.to_owned(),
                error,
            })?;
        if read == 0 {
            return Ok(names);
        }
        if line.len() > MAX_LIST_LINE_BYTES {
            return Err(ListError::LineTooLong {
                source_name: source_name.to_owned(),
                line: number,
            });
        }
        let text = std::str::from_utf8(&line).map_err(|_| ListError::NotUtf8 {
            source_name: source_name.to_owned(),
            line: number,
        })?;
        let name = text.strip_suffix('\n').unwrap_or(text);
        let name = name.strip_suffix('\r').unwrap_or(name);
        if name.trim().is_empty() {
            continue;
        }
        if names.len() == MAX_BATCH_NAMES {
            return Err(ListError::TooMany {
                source_name: source_name.to_owned(),
            });
        }
        names.push(name.to_owned());
    }
}

/// What happened to one name of the batch.
#[derive(Debug)]
pub struct FileReport {
    pub name: String,
    pub result: Result<Outcome, FileError>,
}

/// What happened to every name, in the order given (duplicates once).
#[derive(Debug, Default)]
pub struct Summary {
    pub files: Vec<FileReport>,
    /// What the batch's connection pool did (connections opened, reused).
    pub connections: PoolStats,
}

/// How a batch ended, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every file is in the downloads folder, verified.
    AllThere,
    /// Some files failed, every one of them because no peer shares it.
    OnlyNotFound,
    /// Some file failed for another reason.
    Failed,
}

impl Summary {
    /// Files fetched and verified by this batch.
    pub fn downloaded(&self) -> usize {
        self.count(|r| matches!(r, Ok(Outcome::Downloaded { .. })))
    }

    /// Files that were already there with the same content.
    pub fn already_present(&self) -> usize {
        self.count(|r| matches!(r, Ok(Outcome::AlreadyPresent { .. })))
    }

    /// The failures, in order.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &FileError)> {
        self.files.iter().filter_map(|f| match &f.result {
            Err(e) => Some((f.name.as_str(), e)),
            Ok(_) => None,
        })
    }

    pub fn failed(&self) -> usize {
        self.count(Result::is_err)
    }

    pub fn verdict(&self) -> Verdict {
        let mut failures = self.failures().peekable();
        if failures.peek().is_none() {
            return Verdict::AllThere;
        }
        if failures.all(|(_, e)| e.is_not_found()) {
            Verdict::OnlyNotFound
        } else {
            Verdict::Failed
        }
    }

    /// The one summary line: `batch of 6 files: 3 downloaded, 1 already present, 2 failed (1 not found)`.
    pub fn line(&self) -> String {
        let not_found = self.failures().filter(|(_, e)| e.is_not_found()).count();
        let total = self.files.len();
        format!(
            "batch of {total} file{}: {} downloaded, {} already present, {} failed ({not_found} not found)",
            plural(total),
            self.downloaded(),
            self.already_present(),
            self.failed(),
        )
    }

    fn count(&self, which: impl Fn(&Result<Outcome, FileError>) -> bool) -> usize {
        self.files.iter().filter(|f| which(&f.result)).count()
    }
}

/// One line for a failed file: its name (escaped) and why.
pub fn describe_failure(name: &str, error: &FileError) -> String {
    format!("failed {:?}: {error}", printable(name))
}

/// The names once each, in their first order.
pub fn dedup(names: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::with_capacity(names.len());
    names
        .into_iter()
        .filter(|n| seen.insert(n.clone()))
        .collect()
}

/// Fetches every name of `names` (de-duplicated) into the downloads folder.
/// Never fails as a whole: a registry that cannot be reached makes every
/// name fail with that reason (with `--dht`: every name the DHT does not
/// know), so the summary still covers them all.
pub fn run(config: &BatchConfig, names: Vec<String>, reporter: &Reporter) -> Summary {
    let names = dedup(names);
    let jobs = config.jobs.clamp(1, MAX_JOBS);
    let display = BatchDisplay::new(reporter, names.len());
    let mut results: Vec<Option<Result<Outcome, FileError>>> = names.iter().map(|_| None).collect();
    // One node for the whole batch: starting one per name would join the
    // DHT again for each. A node that cannot start is every name's DHT
    // answer, so each is decided as a single `peer get --dht` would be.
    let node = config
        .dht
        .as_ref()
        .filter(|_| !names.is_empty())
        .map(|dht| dht.start_node().map_err(Arc::new));
    let noted: Mutex<HashSet<Discriminant<Fallback>>> = Mutex::default();
    // Each file's own transfer display would fight the batch's for the
    // terminal (and print two lines per file): each file reports to the
    // batch display instead (`BatchDisplay::file_reporter`).
    let (work_tx, work_rx) = bounded::<(usize, Answer)>(2 * LOOKUP_PIPELINE_DEPTH);
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    // Idle connections to one source: never more than there are workers
    // to use them.
    let pool = Pool::new(jobs);
    std::thread::scope(|scope| {
        let lookup_done = done_tx.clone();
        let names_ref = &names;
        let display_ref = &display;
        let with_dht = node.is_some();
        scope.spawn(move || {
            // Without the DHT a name the registry gave no source has failed
            // already; with it, the DHT may still know one (not for a bad name).
            let route = |index: usize, answer: Answer| match answer {
                Ok(sources) if !with_dht => {
                    display_ref.looked_up(&sources);
                    work_tx.send((index, Ok(sources))).is_ok()
                }
                Err(e) if !with_dht || matches!(e, DownloadError::BadName { .. }) => {
                    display_ref.finished(&names_ref[index], &Err::<Outcome, _>(()));
                    lookup_done.send((index, Err(e.into()))).is_ok()
                }
                answer => work_tx.send((index, answer)).is_ok(),
            };
            look_up(&config.registry, names_ref, route)
        });
        for _ in 0..jobs {
            let work_rx = work_rx.clone();
            let done_tx = done_tx.clone();
            let names = &names;
            let display = &display;
            let pool = &pool;
            let node = node.as_ref();
            let noted = &noted;
            scope.spawn(move || {
                for (index, answer) in work_rx {
                    let name = &names[index];
                    display.started(name);
                    let sources = match node {
                        None => answer.map_err(FileError::from),
                        Some(node) => {
                            let from_dht = node
                                .as_ref()
                                .map_err(Arc::clone)
                                .and_then(|node| dht::look_up(node, name).map_err(Arc::new));
                            dht::combine(&config.registry, name, answer, from_dht)
                                .map(|looked| {
                                    if let Some(fallback) = looked.fallback {
                                        display.note_once(noted, &fallback);
                                    }
                                    display.looked_up(&looked.sources);
                                    looked.sources
                                })
                                .map_err(FileError::from)
                        }
                    };
                    let result = sources.and_then(|sources| {
                        let (file_reporter, _watching) = display.file_reporter(name);
                        download::download_pooled(
                            &sources,
                            name,
                            &config.downloads,
                            &config.download,
                            &file_reporter,
                            pool,
                        )
                        .map_err(FileError::from)
                    });
                    display.finished(name, &result);
                    if done_tx.send((index, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        drop(work_rx);
        for (index, result) in done_rx {
            results[index] = Some(result);
        }
    });
    display.finish();
    let connections = pool.stats();
    tracing::info!(
        opened = connections.opened,
        reused = connections.reused,
        retried = connections.retried,
        "batch connections to sources"
    );
    let files = names
        .into_iter()
        .zip(results)
        .map(|(name, result)| {
            let result = result.unwrap_or_else(|| {
                Err(FileError::Download(DownloadError::Thread(
                    io::Error::other("the batch ended before this file was handled"),
                )))
            });
            FileReport { name, result }
        })
        .collect();
    Summary { files, connections }
}

/// A copy of `error` for one more name: every name still waiting when the
/// batch's registry connection failed gets its own error, with the same
/// message (`ClientError` holds an `io::Error`, which is not `Clone`).
fn replicate(error: &ClientError) -> ClientError {
    let copy = |source: &io::Error| io::Error::new(source.kind(), source.to_string());
    match error {
        ClientError::Resolve { addr, source } => ClientError::Resolve {
            addr: addr.clone(),
            source: copy(source),
        },
        ClientError::Connect { addr, source } => ClientError::Connect {
            addr: addr.clone(),
            source: copy(source),
        },
        ClientError::Io { addr, source } => ClientError::Io {
            addr: addr.clone(),
            source: copy(source),
        },
        ClientError::Closed { addr } => ClientError::Closed { addr: addr.clone() },
        other => ClientError::Io {
            addr: String::new(),
            source: io::Error::other(other.to_string()),
        },
    }
}

/// Looks every name up over one registry connection, pipelined, and hands
/// each name's answer (its sources, or why none: bad name, not found,
/// registry unreachable) to `route`, in order; stops when `route` returns
/// `false` (nobody takes answers any more).
fn look_up(registry: &str, names: &[String], route: impl Fn(usize, Answer) -> bool) {
    let registry_error = |index: usize, source: ClientError| DownloadError::Registry {
        name: names[index].clone(),
        source,
    };
    let (mut client, mut lost) = match Client::connect(registry) {
        Ok(client) => (Some(client), None),
        Err(e) => (None, Some(e)),
    };
    let mut batch = String::new();
    let indices: Vec<usize> = (0..names.len()).collect();
    for chunk in indices.chunks(LOOKUP_PIPELINE_DEPTH) {
        batch.clear();
        let mut asked = Vec::with_capacity(chunk.len());
        for &index in chunk {
            let name = &names[index];
            match check_name(name) {
                Ok(()) => {
                    Request::Search { name }.write_line(&mut batch);
                    asked.push(index);
                }
                Err(reason) => {
                    let bad = DownloadError::BadName {
                        name: name.clone(),
                        reason,
                    };
                    if !route(index, Err(bad)) {
                        return;
                    }
                }
            }
        }
        if asked.is_empty() {
            continue;
        }
        if let (None, Some(conn)) = (&lost, client.as_mut()) {
            if let Err(e) = conn.send_raw(&batch) {
                lost = Some(e);
            }
        }
        for (position, &index) in asked.iter().enumerate() {
            let conn = match (&lost, client.as_mut()) {
                (None, Some(conn)) => conn,
                (Some(error), _) => {
                    for &index in &asked[position..] {
                        if !route(index, Err(registry_error(index, replicate(error)))) {
                            return;
                        }
                    }
                    break;
                }
                (None, None) => break,
            };
            let name = &names[index];
            let answer = match conn.read_reply() {
                Ok(Reply::Found(sources)) if !sources.is_empty() => Ok(sources),
                Ok(Reply::Found(_) | Reply::NotFound) => Err(DownloadError::NotFound {
                    name: name.clone(),
                    registry: registry.to_owned(),
                }),
                Ok(Reply::Err(code, message)) => Err(registry_error(
                    index,
                    ClientError::Refused {
                        addr: registry.to_owned(),
                        code,
                        message,
                    },
                )),
                Ok(reply) => Err(registry_error(
                    index,
                    ClientError::Unexpected {
                        addr: registry.to_owned(),
                        request: "SEARCH",
                        reply,
                    },
                )),
                Err(e) => {
                    // The connection is out of step now: the rest fail with this reason.
                    let answer = Err(registry_error(index, replicate(&e)));
                    lost = Some(e);
                    answer
                }
            };
            if !route(index, answer) {
                return;
            }
        }
    }
    if let Some(client) = client {
        if lost.is_none() {
            let _ = client.quit();
        }
    }
}

/// The whole batch's progress: one bar on a terminal (bytes done, files
/// done of all, the files in flight), else one line per file finished.
struct BatchDisplay {
    bar: Option<ProgressBar>,
    reporter: Reporter,
    /// Shared with the [`FileWatch`] of every file in flight.
    state: Arc<Mutex<BatchState>>,
}

#[derive(Default)]
struct BatchState {
    total_files: usize,
    finished: usize,
    bytes_total: u64,
    /// Bytes of the files finished.
    bytes_done: u64,
    /// Bytes received so far of each file in flight, by name.
    in_flight: HashMap<String, u64>,
    current: Vec<String>,
}

/// Applies `change` to the batch's numbers and redraws the bar.
fn update(
    state: &Mutex<BatchState>,
    bar: Option<&ProgressBar>,
    change: impl FnOnce(&mut BatchState),
) {
    // A worker that panicked while holding the lock leaves numbers that
    // are still good enough to display.
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    change(&mut state);
    if let Some(bar) = bar {
        let moving: u64 = state.in_flight.values().sum();
        bar.set_length(state.bytes_total);
        bar.set_position(state.bytes_done.saturating_add(moving));
        bar.set_message(state.message());
    }
}

/// Watches one file's transfer for the batch display: its bytes as they
/// arrive, and its notes ("source X failed; trying the next"), printed
/// above the bar or as plain lines.
struct FileWatch {
    name: String,
    state: Arc<Mutex<BatchState>>,
    bar: Option<ProgressBar>,
    reporter: Reporter,
}

impl Observer for FileWatch {
    fn started(&self, _what: &str, _total: u64, already: u64) {
        update(&self.state, self.bar.as_ref(), |s| {
            s.in_flight.insert(self.name.clone(), already);
        });
    }

    fn position(&self, done: u64) {
        update(&self.state, self.bar.as_ref(), |s| {
            s.in_flight.insert(self.name.clone(), done);
        });
    }

    fn detail(&self, _detail: &str) {}

    fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| self.reporter.note(line)),
            None => self.reporter.note(line),
        }
    }
}

impl BatchDisplay {
    fn new(reporter: &Reporter, total_files: usize) -> BatchDisplay {
        let bar = reporter.draws_bars().then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(0),
                ProgressDrawTarget::stderr_with_hz(BAR_REFRESH_PER_SECOND),
            );
            let narrow = progress::terminal_width().is_some_and(|c| c < progress::MEDIUM_COLUMNS);
            let template = if narrow {
                BAR_TEMPLATE_NARROW
            } else {
                BAR_TEMPLATE
            };
            if let Some(style) = progress::human_style(template) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        BatchDisplay {
            bar,
            reporter: *reporter,
            state: Arc::new(Mutex::new(BatchState {
                total_files,
                ..BatchState::default()
            })),
        }
    }

    fn with_state(&self, change: impl FnOnce(&mut BatchState)) {
        update(&self.state, self.bar.as_ref(), change);
    }

    /// A reporter for one file's download: nothing of its own on screen,
    /// its bytes and notes go to the batch display. Keep the guard for as
    /// long as the download runs.
    fn file_reporter(&self, name: &str) -> (Reporter, ObserverGuard) {
        Reporter::quiet().observed(Arc::new(FileWatch {
            name: name.to_owned(),
            state: Arc::clone(&self.state),
            bar: self.bar.clone(),
            reporter: self.reporter,
        }))
    }

    /// Says `fallback` once for the whole batch (above the bar, or as a
    /// line): every name would give the same, as the registry connection
    /// and the DHT node are the batch's.
    fn note_once(&self, noted: &Mutex<HashSet<Discriminant<Fallback>>>, fallback: &Fallback) {
        let first = noted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(std::mem::discriminant(fallback));
        if first {
            match &self.bar {
                Some(bar) => bar.suspend(|| self.reporter.note(fallback)),
                None => self.reporter.note(fallback),
            }
        }
    }

    fn looked_up(&self, sources: &[Source]) {
        let size = choose_content(sources).first().map_or(0, |s| s.size);
        self.with_state(|s| s.bytes_total += size);
    }

    fn started(&self, name: &str) {
        self.with_state(|s| s.current.push(printable(name)));
    }

    fn finished<E>(&self, name: &str, result: &Result<Outcome, E>) {
        let shown = printable(name);
        let mut line = None;
        self.with_state(|s| {
            if let Some(at) = s.current.iter().position(|c| *c == shown) {
                s.current.swap_remove(at);
            }
            s.in_flight.remove(name);
            s.finished += 1;
            let Ok(outcome) = result else {
                // Its reason is on stderr; the line keeps the count whole.
                line = Some(format!("[{}/{}] failed {shown}", s.finished, s.total_files));
                return;
            };
            s.bytes_done += outcome.size();
            let what = match outcome {
                Outcome::Downloaded { .. } => "downloaded",
                Outcome::AlreadyPresent { .. } => "already present",
            };
            line = Some(format!(
                "[{}/{}] {what} {shown} ({})",
                s.finished,
                s.total_files,
                human_size(outcome.size())
            ));
        });
        // Lines only without a bar: with one, the bar shows the progress.
        if self.bar.is_none() {
            if let Some(line) = line {
                self.reporter.note(line);
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl BatchState {
    fn message(&self) -> String {
        let mut message = format!("files {}/{}", self.finished, self.total_files);
        if !self.current.is_empty() {
            message.push_str(" · ");
            let shown: Vec<&str> = self
                .current
                .iter()
                .take(BAR_MAX_CURRENT)
                .map(String::as_str)
                .collect();
            message.push_str(&shown.join(", "));
            if self.current.len() > BAR_MAX_CURRENT {
                message.push_str(&format!(" +{}", self.current.len() - BAR_MAX_CURRENT));
            }
        }
        message
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn lists_take_lf_and_crlf_and_skip_blank_lines() {
        let names = read_names(Cursor::new("a\r\n\nb c\n  \r\nlast"), "list").unwrap();
        assert_eq!(names, ["a", "b c", "last"]);
        assert!(read_names(Cursor::new(""), "list").unwrap().is_empty());
    }

    #[test]
    fn bad_lists_are_refused_by_line() {
        let long = format!("ok\n{}\n", "x".repeat(MAX_LIST_LINE_BYTES + 5));
        let err = read_names(Cursor::new(long), "names.txt").unwrap_err();
        assert!(
            matches!(err, ListError::LineTooLong { line: 2, .. }),
            "{err}"
        );
        let err = read_names(Cursor::new(b"a\n\xff\n".to_vec()), "names.txt").unwrap_err();
        assert_eq!(err.to_string(), "line 2 of names.txt is not UTF-8");
    }

    #[test]
    fn names_are_fetched_once() {
        let names = dedup(vec!["b".into(), "a".into(), "b".into()]);
        assert_eq!(names, ["b", "a"]);
    }

    #[test]
    fn an_unreachable_registry_fails_every_name_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let config = BatchConfig {
            registry: "127.0.0.1:1".to_owned(),
            downloads: dir.path().join("d"),
            download: Options::default(),
            jobs: 2,
            dht: None,
        };
        let names = vec!["a".to_owned(), "b/c".to_owned(), "a".to_owned()];
        let summary = run(&config, names, &Reporter::quiet());
        assert_eq!(summary.files.len(), 2);
        assert_eq!(summary.failed(), 2);
        assert_eq!(summary.verdict(), Verdict::Failed);
        let lines: Vec<String> = summary
            .failures()
            .map(|(n, e)| describe_failure(n, e))
            .collect();
        assert!(
            lines[0].contains("cannot search the registry for \"a\""),
            "{lines:?}"
        );
        assert!(lines[1].contains("bad file name"), "{lines:?}");
        assert_eq!(
            summary.line(),
            "batch of 2 files: 0 downloaded, 0 already present, 2 failed (0 not found)"
        );
    }

    #[test]
    fn the_display_counts_bytes_in_flight_and_finished() {
        let display = BatchDisplay::new(&Reporter::quiet(), 2);
        let (reporter, guard) = display.file_reporter("a");
        display.started("a");
        let mut progress = reporter.transfer("a from x", 100, 10);
        progress.set(60);
        let moving = |d: &BatchDisplay| d.state.lock().unwrap().in_flight.get("a").copied();
        assert_eq!(moving(&display), Some(60));
        progress.finish();
        drop(guard);
        let outcome = Outcome::Downloaded {
            path: PathBuf::from("a"),
            size: 100,
            sha256: String::new(),
            from: String::new(),
            resumed_at: 0,
        };
        display.finished("a", &Ok::<_, ()>(outcome));
        let state = display.state.lock().unwrap();
        assert_eq!((state.finished, state.bytes_done), (1, 100));
        assert!(state.in_flight.is_empty() && state.current.is_empty());
        assert_eq!(state.message(), "files 1/2");
    }

    #[test]
    fn only_not_found_is_its_own_verdict() {
        let summary = Summary {
            files: vec![FileReport {
                name: "x".into(),
                result: Err(DownloadError::NotFound {
                    name: "x".into(),
                    registry: "r".into(),
                }
                .into()),
            }],
            ..Summary::default()
        };
        assert_eq!(summary.verdict(), Verdict::OnlyNotFound);
        assert_eq!(Summary::default().verdict(), Verdict::AllThere);
    }
}
