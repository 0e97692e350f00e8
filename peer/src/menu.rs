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
use indicatif::HumanBytes;

use crate::config::PeerConfig;
use crate::download::{self, Outcome};
use crate::files::HashCache;
use crate::progress::Reporter;
use crate::registration::{short_sha, Heartbeat, RegisterError, Registrar};
use crate::serve::{self, ServeError};
use crate::watch;

/// Longest input line read; the rest of a longer line is skipped. Far above
/// any port or file name (255 bytes), it bounds what a stray paste costs.
pub const MAX_INPUT_LINE_BYTES: usize = 4096;

/// Exit status after SIGINT/SIGTERM/SIGHUP in the menu (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

/// The numbered choices, as shown.
const MENU: &str = "\
1) register a file from the shared folder
2) download a file
3) exit
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
}

impl<'a> Console<'a> {
    pub fn new(input: &'a mut dyn BufRead, out: &'a mut dyn Write, terminal: bool) -> Console<'a> {
        Console {
            input,
            out,
            terminal,
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

    let _dht = crate::dht::announce_or_warn(common.dht.as_ref(), addr.port(), &shared, &hashes);
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
        Ok(n) => console.say(format_args!("unregistered {n} files")),
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
            "1" => register(console, registrar, reporter)?,
            "2" => download(common, console, reporter)?,
            "3" => false,
            "4" => {
                list(console, registrar, reporter)?;
                true
            }
            "" => true,
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
                    if summary.registered == 1 { "" } else { "s" }
                ))?;
            }
            Err(e) if e.is_unreachable() => console.say(format_args!(
                "{e} (is the registry running?); the menu goes on, try again later"
            ))?,
            Err(e) => console.say(e)?,
        }
        return Ok(true);
    }
    match registrar.register(&name, reporter) {
        Ok(registration) => console.say(format_args!(
            "registered {name} ({} bytes, sha256 {})",
            registration.size,
            registration.short_sha()
        ))?,
        Err(e @ RegisterError::Registry(_)) if e.is_unreachable() => console.say(format_args!(
            "{e} (is the registry running?); the menu goes on, try again later"
        ))?,
        Err(e) => console.say(e)?,
    }
    Ok(true)
}

/// `2`: asks for a name, searches, downloads. `false` at end of input.
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
    let sources = match crate::dht::search(common, &name) {
        Ok(sources) => sources,
        Err(e) => {
            console.say(e)?;
            return Ok(true);
        }
    };
    console.say(format_args!(
        "found {} source{} of {name}",
        sources.len(),
        if sources.len() == 1 { "" } else { "s" }
    ))?;
    match download::download_from(
        &sources,
        &name,
        &common.downloads,
        &common.download,
        reporter,
    ) {
        Ok(outcome) => console.say(describe(&outcome))?,
        Err(e) => console.say(format_args!("download failed: {e}"))?,
    }
    Ok(true)
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
                format!(", resumed at {resumed_at}")
            } else {
                String::new()
            };
            format!(
                "downloaded {} ({size} bytes from {from}{resumed}, sha256 verified)",
                path.display()
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
            HumanBytes(file.size).to_string(),
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
    fn end_of_input_at_a_name_prompt_exits_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let common = common(dir.path(), Some(0));
        for input in ["1\n", "2\n"] {
            let out = drive(&common, input);
            assert!(out.trim_end().ends_with("File name:"), "{out}");
        }
    }
}
