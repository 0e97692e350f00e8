//! The interactive numbered menu of the original design (`peer` with no
//! subcommand): ask `Enter port` unless `--port` was given, start the file
//! server, print `listening on HOST:PORT`, then loop over
//! `1` register, `2` download, `3` exit, `4` list.
//!
//! Every problem a person can cause or meet (a wrong choice, a port in use,
//! a name not in the shared folder, a registry that is down) is answered with
//! one clear line and the menu goes on; end of input at any prompt exits as
//! `3` does, unregistering what this peer registered. This module must not
//! end the process on such problems, and reads its input and writes its
//! output only through the streams it is given, so tests can drive it.

use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use comfy_table::{presets, ContentArrangement, Table};
use p2p_proto::protocol::{FindHit, Source};
use p2p_proto::units::{human_size, plural};

use crate::config::PeerConfig;
use crate::download::{self, Outcome};
use crate::files::HashCache;
use crate::find;
use crate::progress::Reporter;
use crate::registration::{short_sha, Heartbeat, RegisterError, Registrar};
use crate::serve::{self, ServeError};
use crate::watch;

/// Longest input line read; the rest of a longer line is skipped. Far above
/// any port or file name (255 bytes), it bounds what a stray paste costs.
pub const MAX_INPUT_LINE_BYTES: usize = 4096;

/// Exit status after SIGINT/SIGTERM/SIGHUP in the menu (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Answers to `Choose 1-4` that exit like `3` (any case).
pub const EXIT_WORDS: [&str; 3] = ["q", "quit", "exit"];

/// Names kept in the line editor's history (this session only, never on disk).
pub const HISTORY_ENTRIES: usize = 200;

/// The numbered choices, as shown.
const MENU: &str = "\
1) register a file from the shared folder
2) download a file
3) exit (or q)
4) list shared files";

/// Why the menu stopped other than by the user's choice.
#[derive(Debug, thiserror::Error)]
pub enum MenuError {
    #[error(transparent)]
    Start(#[from] ServeError),
    #[error("cannot read the menu's input: {0}")]
    Input(io::Error),
    #[error("cannot write the menu's output: {0}")]
    Output(io::Error),
    #[error("cannot start the heartbeat thread: {0}")]
    Thread(io::Error),
}

/// The menu's streams.
pub struct Console<'a> {
    input: &'a mut dyn BufRead,
    out: &'a mut dyn Write,
    /// Whether the input is a terminal: then the person's Enter ends the
    /// prompt's line; otherwise the menu ends it itself, so that every
    /// output line (notably `listening on`) starts on a line of its own.
    terminal: bool,
    /// Line editing, history and completion when a person types at a
    /// terminal; `None` for pipes, where input is read as plain lines.
    editor: Option<LineEditor>,
}

impl<'a> Console<'a> {
    pub fn new(input: &'a mut dyn BufRead, out: &'a mut dyn Write, terminal: bool) -> Console<'a> {
        Console {
            input,
            out,
            terminal,
            editor: None,
        }
    }

    /// Reads answers through `editor` (a terminal) instead of the input stream.
    pub fn with_editor(mut self, editor: LineEditor) -> Console<'a> {
        self.editor = Some(editor);
        self
    }

    /// Whether tab completes the names of the shared folder's files.
    fn complete_shared_names(&mut self, on: bool) {
        if let Some(helper) = self.editor.as_mut().and_then(|e| e.editor.helper_mut()) {
            helper.active = on;
        }
    }

    /// Writes one line and flushes.
    fn say(&mut self, line: impl std::fmt::Display) -> Result<(), MenuError> {
        writeln!(self.out, "{line}")
            .and_then(|()| self.out.flush())
            .map_err(MenuError::Output)
    }

    /// Shows `question: ` and reads the answer, trimmed; `None` at end of input.
    fn ask(&mut self, question: &str) -> Result<Option<String>, MenuError> {
        if let Some(editor) = &mut self.editor {
            return editor.read(question);
        }
        let ending = if self.terminal { "" } else { "\n" };
        write!(self.out, "{question}: {ending}")
            .and_then(|()| self.out.flush())
            .map_err(MenuError::Output)?;
        let mut line = Vec::new();
        let read = std::io::Read::take(&mut *self.input, MAX_INPUT_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(MenuError::Input)?;
        if read == 0 {
            return Ok(None);
        }
        if !line.ends_with(b"\n") && line.len() > MAX_INPUT_LINE_BYTES {
            self.input.skip_until(b'\n').map_err(MenuError::Input)?;
        }
        Ok(Some(String::from_utf8_lossy(&line).trim().to_owned()))
    }

    /// Asks until a port number is given; `None` at end of input.
    fn ask_port(&mut self) -> Result<Option<u16>, MenuError> {
        loop {
            let Some(answer) = self.ask("Enter port")? else {
                return Ok(None);
            };
            match answer.parse::<u16>() {
                Ok(port) => return Ok(Some(port)),
                Err(_) => self.say(format_args!(
                    "{answer:?} is not a port number: enter 0 to 65535 (0 picks a free port)"
                ))?,
            }
        }
    }
}

/// Line editing for a person at a terminal (rustyline): arrows move in the
/// line, Up and Down walk the names typed before, Tab completes the names
/// of the shared folder's files at `1`. Never used when the input is a pipe:
/// scripts see the plain prompts.
pub struct LineEditor {
    editor: rustyline::Editor<SharedNames, rustyline::history::DefaultHistory>,
}

/// Prints a line above the prompt being edited, then draws the prompt
/// again; the `peer` binary sends its log lines through it while the menu
/// runs on a terminal.
pub type LinePrinter = Box<dyn rustyline::ExternalPrinter + Send>;

impl LineEditor {
    /// An editor completing names from `shared`, and its printer (none
    /// where the terminal cannot have one, e.g. `TERM=dumb`: then log lines
    /// go to stderr as elsewhere).
    pub fn new(shared: &Path) -> Result<(LineEditor, Option<LinePrinter>), MenuError> {
        let config = rustyline::Config::builder()
            .max_history_size(HISTORY_ENTRIES)
            .map_err(|e| MenuError::Input(io::Error::other(e)))?
            .auto_add_history(false)
            // Like a shell: Tab completes the common prefix, a second Tab lists.
            .completion_type(rustyline::CompletionType::List)
            .build();
        let mut editor = rustyline::Editor::with_config(config)
            .map_err(|e| MenuError::Input(io::Error::other(e)))?;
        editor.set_helper(Some(SharedNames {
            folder: shared.to_owned(),
            active: false,
        }));
        let printer = match editor.create_external_printer() {
            Ok(printer) => Some(Box::new(printer) as LinePrinter),
            Err(e) => {
                tracing::debug!("no printer above the prompt: {e}");
                None
            }
        };
        Ok((LineEditor { editor }, printer))
    }

    /// Shows `question: `, reads the answer, trimmed; `None` at end of
    /// input or Ctrl-C (both exit the menu cleanly, as `3` does).
    fn read(&mut self, question: &str) -> Result<Option<String>, MenuError> {
        use rustyline::error::ReadlineError;
        match self.editor.readline(&format!("{question}: ")) {
            Ok(line) => {
                let answer = line.trim().to_owned();
                if answer.chars().count() > 1 {
                    // History is for names; single-key menu choices would bury them.
                    let _ = self.editor.add_history_entry(answer.as_str());
                }
                Ok(Some(answer))
            }
            Err(ReadlineError::Eof | ReadlineError::Interrupted) => Ok(None),
            Err(ReadlineError::Io(e)) => Err(MenuError::Input(e)),
            Err(e) => Err(MenuError::Input(io::Error::other(e))),
        }
    }
}

/// Tab completion of the shared folder's file names, while `active`.
pub struct SharedNames {
    folder: std::path::PathBuf,
    active: bool,
}

impl SharedNames {
    /// The regular files of the folder whose names start with `prefix`, sorted.
    fn matching(&self, prefix: &str) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.folder) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(prefix))
            .collect();
        names.sort();
        names
    }
}

impl rustyline::completion::Completer for SharedNames {
    type Candidate = String;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &rustyline::Context<'_>,
    ) -> rustyline::Result<(usize, Vec<String>)> {
        if !self.active {
            return Ok((0, Vec::new()));
        }
        // The whole line is one name (names may hold spaces).
        let prefix = line.get(..pos).unwrap_or(line);
        Ok((0, self.matching(prefix)))
    }
}

impl rustyline::hint::Hinter for SharedNames {
    type Hint = String;
}

impl rustyline::highlight::Highlighter for SharedNames {}

impl rustyline::validate::Validator for SharedNames {}

impl rustyline::Helper for SharedNames {}

/// Runs the menu until `3`, end of input, or a failure of the menu's own streams.
pub fn run(
    common: &PeerConfig,
    console: &mut Console<'_>,
    reporter: &Reporter,
) -> Result<(), MenuError> {
    let shared = serve::open_shared_for(common, reporter)?;
    let hashes = HashCache::new();
    let mut given = common.port;
    let server = loop {
        let port = match given.take() {
            Some(port) => port,
            None => match console.ask_port()? {
                Some(port) => port,
                None => return Ok(()),
            },
        };
        match serve::start_file_server(common, port, &shared, &hashes) {
            Ok(server) => break server,
            Err(e @ (ServeError::PortInUse { .. } | ServeError::Bind { .. })) => console.say(e)?,
            Err(e) => return Err(e.into()),
        }
    };
    let addr: SocketAddr = server.local_addr();
    console.say(format_args!("listening on {addr}"))?;
    if let Some(line) = serve::reachable_line(addr) {
        console.say(line)?;
    }

    let writing = crate::writing::Writing::default();
    let _dht = crate::dht::announce_or_warn(
        common.dht.as_ref(),
        addr.port(),
        &shared,
        &hashes,
        &writing,
        common.watch.settle,
    );
    let registrar = Arc::new(
        Registrar::new(&common.server, addr.port(), shared, hashes).with_bind(common.bind),
    );
    let heartbeat =
        Heartbeat::start(Arc::clone(&registrar), common.heartbeat).map_err(MenuError::Thread)?;
    // Keeps what the person registered in step with the folder (choice `1`).
    let watcher = watch::Watcher::start(
        Arc::clone(&registrar),
        crate::http::pieces::PieceCache::new(),
        watch::WatchConfig {
            scope: watch::Scope::Registered,
            ..common.watch
        },
        writing,
        Reporter::quiet(),
        Box::new(|_| {}),
    )
    .map_err(MenuError::Thread)?;
    unregister_on_signal(Arc::clone(&registrar));
    let _ui = crate::ui::launch(common, &registrar, &mut |line| {
        let _ = console.say(line);
    });

    let result = choose_until_exit(common, console, &registrar, reporter);

    watcher.stop();
    heartbeat.stop();
    let farewell = match registrar.unregister_all() {
        Ok(0) => Ok(()),
        Ok(n) => console.say(format_args!("unregistered {n} file{}", plural(n))),
        Err(e) => console.say(format_args!(
            "could not unregister (the registry forgets them at its TTL): {e}"
        )),
    };
    server.shutdown();
    result.and(farewell)
}

/// On SIGINT/SIGTERM/SIGHUP: unregister, then exit. The menu thread is
/// usually blocked reading input, so the handler does the cleanup itself.
/// Best effort: when a handler is already installed (tests running the
/// menu twice in one process) the default behaviour stays.
fn unregister_on_signal(registrar: Arc<Registrar>) {
    let installed = ctrlc::set_handler(move || {
        if let Err(e) = registrar.unregister_all() {
            let _ = writeln!(
                io::stderr(),
                "could not unregister (the registry forgets them at its TTL): {e}"
            );
        }
        std::process::exit(EXIT_INTERRUPTED);
    });
    if let Err(e) = installed {
        tracing::debug!("no signal handler for the menu: {e}");
    }
}

/// The loop over the numbered menu. Returns at `3` or end of input.
fn choose_until_exit(
    common: &PeerConfig,
    console: &mut Console<'_>,
    registrar: &Registrar,
    reporter: &Reporter,
) -> Result<(), MenuError> {
    loop {
        console.say(MENU)?;
        let Some(choice) = console.ask("Choose 1-4")? else {
            return Ok(());
        };
        let go_on = match choice.as_str() {
            "1" => {
                console.complete_shared_names(true);
                let go_on = register(console, registrar, reporter);
                console.complete_shared_names(false);
                go_on?
            }
            "2" => download(common, console, reporter)?,
            "3" => false,
            other if EXIT_WORDS.contains(&other.to_lowercase().as_str()) => false,
            "4" => {
                list(console, registrar, reporter)?;
                true
            }
            "" => true,
            other if other.contains('\u{1b}') => {
                console.say(
                    "arrow keys and other special keys are not choices: type 1, 2, 3 or 4, then Enter",
                )?;
                true
            }
            other => {
                console.say(format_args!(
                    "{other:?} is not a choice: enter 1, 2, 3 or 4"
                ))?;
                true
            }
        };
        if !go_on {
            return Ok(());
        }
    }
}

/// `1`: asks for a name and registers that file; `*` registers every file
/// of the shared folder. `false` at end of input.
fn register(
    console: &mut Console<'_>,
    registrar: &Registrar,
    reporter: &Reporter,
) -> Result<bool, MenuError> {
    let Some(name) = console.ask("File name")? else {
        return Ok(false);
    };
    if name.is_empty() {
        console.say("no name given")?;
        return Ok(true);
    }
    if name == "*" {
        match registrar.register_all(&Reporter::quiet()) {
            Ok(summary) => {
                for line in &summary.skipped {
                    console.say(line)?;
                }
                console.say(format_args!(
                    "registered {} file{}",
                    summary.registered,
                    plural(summary.registered)
                ))?;
            }
            Err(e) if e.is_unreachable() => console.say(format_args!(
                "cannot register the shared files: {e} (is the registry running?); the menu goes on, try again later"
            ))?,
            Err(e) => console.say(e)?,
        }
        return Ok(true);
    }
    match registrar.register(&name, reporter) {
        Ok(registration) => console.say(format_args!(
            "registered {name} ({}, sha256 {})",
            human_size(registration.size),
            registration.short_sha()
        ))?,
        Err(e @ RegisterError::Registry(_)) if e.is_unreachable() => console.say(format_args!(
            "cannot register {name}: {e} (is the registry running?); the menu goes on, try again later"
        ))?,
        Err(e) => console.say(e)?,
    }
    Ok(true)
}

/// `2`: asks for a name, searches, downloads. When no live source has that
/// exact name, lists the FIND matches of its words numbered and downloads
/// the one chosen (empty input cancels). `false` at end of input.
fn download(
    common: &PeerConfig,
    console: &mut Console<'_>,
    reporter: &Reporter,
) -> Result<bool, MenuError> {
    let Some(name) = console.ask("File name")? else {
        return Ok(false);
    };
    if name.is_empty() {
        console.say("no name given")?;
        return Ok(true);
    }
    let sources = match crate::dht::search(&common.server, common.dht.as_ref(), &name) {
        Ok(looked) => {
            if let Some(fallback) = looked.fallback {
                console.say(fallback)?;
            }
            looked.sources
        }
        Err(e) if e.is_not_found() => {
            let hits = find::find(&common.server, &find::name_words(&name)).unwrap_or_default();
            if hits.is_empty() {
                console.say(e)?;
                return Ok(true);
            }
            return match choose_hit(console, &name, &hits)? {
                Choice::Hit(chosen) => {
                    let chosen = chosen.to_owned();
                    match download::search(&common.server, &chosen) {
                        Ok(sources) => fetch(common, console, &chosen, &sources, reporter)?,
                        Err(e) => console.say(e)?,
                    }
                    Ok(true)
                }
                Choice::Cancelled => Ok(true),
                Choice::EndOfInput => Ok(false),
            };
        }
        Err(e) => {
            console.say(e)?;
            return Ok(true);
        }
    };
    fetch(common, console, &name, &sources, reporter)?;
    Ok(true)
}

/// What the person chose among FIND hits.
enum Choice<'h> {
    Hit(&'h str),
    Cancelled,
    EndOfInput,
}

/// Lists `hits` numbered and asks for one, until a number in range or an
/// empty answer (cancel).
fn choose_hit<'h>(
    console: &mut Console<'_>,
    name: &str,
    hits: &'h [FindHit],
) -> Result<Choice<'h>, MenuError> {
    console.say(format_args!(
        "no peer shares {:?}; {} file{} match{}:",
        find::printable(name),
        hits.len(),
        plural(hits.len()),
        if hits.len() == 1 { "es" } else { "" },
    ))?;
    for (number, hit) in hits.iter().enumerate() {
        console.say(format_args!("{}) {}", number + 1, find::describe_hit(hit)))?;
    }
    let question = format!("Download which (1-{}, empty cancels)", hits.len());
    loop {
        let Some(answer) = console.ask(&question)? else {
            return Ok(Choice::EndOfInput);
        };
        if answer.is_empty() {
            console.say("cancelled")?;
            return Ok(Choice::Cancelled);
        }
        match answer.parse::<usize>() {
            Ok(n) if (1..=hits.len()).contains(&n) => return Ok(Choice::Hit(&hits[n - 1].name)),
            _ => console.say(format_args!(
                "{:?} is not one of the numbers 1 to {}",
                find::printable(&answer),
                hits.len()
            ))?,
        }
    }
}

/// Downloads `name` from `sources`, one line for the result.
fn fetch(
    common: &PeerConfig,
    console: &mut Console<'_>,
    name: &str,
    sources: &[Source],
    reporter: &Reporter,
) -> Result<(), MenuError> {
    console.say(format_args!(
        "found {} source{} of {name}",
        sources.len(),
        plural(sources.len())
    ))?;
    let mut options = common.download;
    if options.sha256.is_none() {
        match choose_content(console, sources)? {
            Content::Chosen(sha256) => options.sha256 = Some(sha256),
            Content::Majority => {}
            Content::Cancelled => return Ok(()),
        }
    }
    match download::download_from(sources, name, &common.downloads, &options, reporter) {
        Ok(outcome) => console.say(describe(&outcome)),
        Err(e) => console.say(format_args!("download failed: {e}")),
    }
}

/// Which content of a name to download when its sources disagree.
enum Content {
    /// The one the most distinct hosts registered (the downloader's own rule).
    Majority,
    Chosen([u8; 32]),
    Cancelled,
}

/// When the sources of a name registered different contents, a person at a
/// terminal chooses one (issue 11.3: a host with many ports must not decide
/// for them). Piped input keeps the downloader's rule, most distinct hosts
/// first, so scripts that feed the menu see no extra question; the
/// downloader lists the alternatives on stderr either way.
fn choose_content(console: &mut Console<'_>, sources: &[Source]) -> Result<Content, MenuError> {
    let alternatives = download::alternatives(sources);
    if !console.terminal || alternatives.len() < 2 {
        return Ok(Content::Majority);
    }
    console.say(format_args!(
        "the sources disagree: {} different contents under this name",
        alternatives.len()
    ))?;
    for (number, alt) in alternatives.iter().enumerate() {
        console.say(format_args!(
            "{}) {}, sha256 {}, from {} host{}: {}",
            number + 1,
            human_size(alt.size),
            short_sha(&alt.sha256),
            alt.hosts.len(),
            plural(alt.hosts.len()),
            download::printable(&alt.hosts.join(", ")),
        ))?;
    }
    let question = format!("Download which (1-{}, empty cancels)", alternatives.len());
    loop {
        let Some(answer) = console.ask(&question)? else {
            return Ok(Content::Cancelled);
        };
        if answer.is_empty() {
            console.say("cancelled")?;
            return Ok(Content::Cancelled);
        }
        let chosen = answer
            .parse::<usize>()
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| alternatives.get(i))
            .and_then(|alt| download::parse_sha256(&alt.sha256));
        match chosen {
            Some(sha256) => return Ok(Content::Chosen(sha256)),
            None => console.say(format_args!(
                "{:?} is not one of the numbers 1 to {}",
                download::printable(&answer),
                alternatives.len()
            ))?,
        }
    }
}

/// One line for a finished download.
pub fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Downloaded {
            path,
            size,
            from,
            resumed_at,
            ..
        } => {
            let resumed = if *resumed_at > 0 {
                // A byte offset, not a size: scripts compare it with the `.part` length.
                format!(", resumed at {resumed_at}")
            } else {
                String::new()
            };
            format!(
                "downloaded {} ({} from {from}{resumed}, sha256 verified)",
                path.display(),
                human_size(*size)
            )
        }
        Outcome::AlreadyPresent { path, .. } => {
            format!(
                "{} is already there with the same content; nothing to do",
                path.display()
            )
        }
    }
}

/// `4`: the shared files as a table: name, size, SHA-256 (short), registered.
fn list(
    console: &mut Console<'_>,
    registrar: &Registrar,
    reporter: &Reporter,
) -> Result<(), MenuError> {
    let files = match registrar.shared().list() {
        Ok(files) => files,
        Err(e) => return console.say(e),
    };
    if files.is_empty() {
        return console.say(format_args!(
            "the shared folder {} has no files to share",
            display_dir(registrar.shared().path())
        ));
    }
    let registered = registrar.registered();
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(["name", "size", "sha256", "registered"]);
    for file in &files {
        let (sha, state) = match registrar.digest(file, reporter) {
            Ok(sha) => {
                let state = match registered.get(&file.name) {
                    Some(r) if r.sha256 == sha => "yes",
                    Some(_) => "changed since",
                    None => "no",
                };
                (short_sha(&sha).to_owned(), state)
            }
            Err(e) => (format!("unreadable: {e}"), "no"),
        };
        table.add_row([
            file.name.clone(),
            human_size(file.size),
            sha,
            state.to_owned(),
        ]);
    }
    console.say(table)
}

fn display_dir(path: &Path) -> String {
    path.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn common(dir: &Path, port: Option<u16>) -> PeerConfig {
        PeerConfig {
            // Nobody listens on port 1: the registry is "down".
            server: "127.0.0.1:1".to_owned(),
            port,
            shared: dir.join("shared"),
            downloads: dir.join("downloads"),
            heartbeat: crate::registration::DEFAULT_HEARTBEAT,
            bind: std::net::Ipv4Addr::LOCALHOST.into(),
            download: crate::download::Options::default(),
            file_server: crate::http::FileServerConfig::default(),
            share_downloads: false,
            state: None,
            watch: crate::watch::WatchConfig::default(),
            ui: crate::ui::UiAddr::Off,
            dht: None,
        }
    }

    fn drive(common: &PeerConfig, input: &str) -> String {
        let mut input = Cursor::new(input.as_bytes().to_vec());
        let mut out = Vec::new();
        let mut console = Console::new(&mut input, &mut out, false);
        run(common, &mut console, &Reporter::quiet()).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn end_of_input_at_the_port_prompt_exits_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let out = drive(&common(dir.path(), None), "");
        assert_eq!(out, "Enter port: \n");
    }

    #[test]
    fn wrong_input_is_answered_and_the_menu_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let out = drive(&common(dir.path(), None), "abc\n0\n9\n\n1\nnot-there\n3\n");
        assert!(out.contains("\"abc\" is not a port number"), "{out}");
        let listening = out
            .lines()
            .find(|l| l.starts_with("listening on "))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(listening.starts_with("listening on 127.0.0.1:"), "{out}");
        assert!(out.contains("\"9\" is not a choice"), "{out}");
        assert!(out.contains("no file named \"not-there\""), "{out}");
    }

    #[test]
    fn a_port_in_use_is_asked_again() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let out = drive(&common(dir.path(), Some(port)), "0\n3\n");
        assert!(out.contains(&format!("port {port} is in use")), "{out}");
        assert!(out.contains("listening on"), "{out}");
    }

    #[test]
    fn a_registry_that_is_down_is_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let common = common(dir.path(), Some(0));
        std::fs::create_dir_all(&common.shared).unwrap();
        std::fs::write(common.shared.join("here"), b"data").unwrap();
        let out = drive(&common, "1\nhere\n2\nhere\n4\n");
        assert!(
            out.contains("cannot connect to the registry at 127.0.0.1:1"),
            "{out}"
        );
        assert!(out.contains("the menu goes on"), "{out}");
        assert!(
            out.contains("cannot search the registry for \"here\""),
            "{out}"
        );
        assert!(out.contains("here"), "{out}");
        // The list shows the file, not registered, and the menu came back after it.
        let table = out
            .lines()
            .find(|l| l.contains(" here "))
            .unwrap_or_else(|| panic!("{out}"));
        assert!(table.contains(" no "), "{table}");
        assert!(out.trim_end().ends_with("Choose 1-4:"), "{out}");
    }

    #[test]
    fn exit_words_and_escape_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let common = common(dir.path(), Some(0));
        for word in ["q", "Q", "exit", "quit"] {
            let out = drive(&common, &format!("{word}\n4\n"));
            assert!(
                !out.contains("has no files to share"),
                "{word} must exit: {out}"
            );
        }
        let out = drive(&common, "\u{1b}[A\n3\n");
        assert!(
            out.contains("arrow keys and other special keys are not choices"),
            "{out}"
        );
    }

    #[test]
    fn tab_completes_shared_names_only_when_asked_to() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alpha.txt"), b"a").unwrap();
        std::fs::write(dir.path().join("alpine.bin"), b"b").unwrap();
        std::fs::create_dir(dir.path().join("alps")).unwrap();
        let mut names = SharedNames {
            folder: dir.path().to_owned(),
            active: false,
        };
        assert_eq!(names.matching("alp"), ["alpha.txt", "alpine.bin"]);
        assert_eq!(names.matching("alpi"), ["alpine.bin"]);
        assert!(names.matching("zzz").is_empty());
        names.active = true;
        assert_eq!(names.matching(""), ["alpha.txt", "alpine.bin"]);
    }

    #[test]
    fn end_of_input_at_a_name_prompt_exits_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let common = common(dir.path(), Some(0));
        for input in ["1\n", "2\n"] {
            let out = drive(&common, input);
            assert!(out.trim_end().ends_with("File name:"), "{out}");
        }
    }

    fn source(host: &str, port: u16, sha: char) -> Source {
        Source {
            host: host.to_owned(),
            port,
            size: 10,
            sha256: sha.to_string().repeat(64),
        }
    }

    fn choose(sources: &[Source], input: &str, terminal: bool) -> (Content, String) {
        let mut input = Cursor::new(input.as_bytes().to_vec());
        let mut out = Vec::new();
        let mut console = Console::new(&mut input, &mut out, terminal);
        let content = choose_content(&mut console, sources).unwrap();
        (content, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_person_at_a_terminal_chooses_among_disagreeing_contents() {
        // One host on three ports says "a"; two hosts say "b": b comes first.
        let sources = [
            source("10.0.0.9", 1, 'a'),
            source("10.0.0.9", 2, 'a'),
            source("10.0.0.9", 3, 'a'),
            source("10.0.0.1", 1, 'b'),
            source("10.0.0.2", 1, 'b'),
        ];
        let (content, out) = choose(&sources, "7\n2\n", true);
        assert!(out.contains("2 different contents"), "{out}");
        assert!(
            out.contains("1) 10 B, sha256 bbbbbbbbbbbb, from 2 hosts"),
            "{out}"
        );
        assert!(
            out.contains("\"7\" is not one of the numbers 1 to 2"),
            "{out}"
        );
        assert!(
            matches!(content, Content::Chosen(sha) if sha == [0xaa; 32]),
            "{out}"
        );

        let (content, out) = choose(&sources, "\n", true);
        assert!(matches!(content, Content::Cancelled), "{out}");
    }

    #[test]
    fn piped_input_and_agreeing_sources_ask_nothing() {
        let disagree = [source("10.0.0.1", 1, 'a'), source("10.0.0.2", 1, 'b')];
        let (content, out) = choose(&disagree, "1\n", false);
        assert!(
            matches!(content, Content::Majority) && out.is_empty(),
            "{out}"
        );
        let agree = [source("10.0.0.1", 1, 'a'), source("10.0.0.2", 1, 'a')];
        let (content, out) = choose(&agree, "1\n", true);
        assert!(
            matches!(content, Content::Majority) && out.is_empty(),
            "{out}"
        );
    }
}
