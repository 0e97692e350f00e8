//! The `peer` binary: parses the command line and hands each mode to the
//! library. Errors become one line on stderr and an exit status
//! (0 success, 1 no source for the name / no FIND hit / a batch whose
//! every failure is "not found", 2 any other failure).

use std::fs::File;
use std::io::{self, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context;
use clap::Parser;
mod cli;

use cli::{Cli, Command, EXIT_FAILURE, EXIT_NOT_FOUND};
use p2p_peer::batch::{self, BatchConfig, Verdict};
use p2p_peer::config::PeerConfig;
use p2p_peer::dht;
use p2p_peer::download::{self, DownloadError};
use p2p_peer::menu::{self, Console, LineEditor, LinePrinter};
use p2p_peer::progress::Reporter;
use p2p_peer::{files::SharedDir, find, progress, registration, serve};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The menu and `serve` run for hours: their log lines carry the time.
    // A one-shot command's warnings read as its other messages do.
    let long_running = matches!(cli.command, None | Some(Command::Serve));
    init_logging(long_running);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Our errors already print their causes: `{e:#}` would repeat
            // them, so a cause is added only when the line lacks its text.
            let line = e.chain().skip(1).fold(e.to_string(), |line, cause| {
                let cause = cause.to_string();
                if line.contains(&cause) {
                    line
                } else {
                    format!("{line}: {cause}")
                }
            });
            let _ = writeln!(io::stderr(), "peer: {line}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Warnings (registry down, files skipped) go to stderr; `RUST_LOG` shows more.
/// While the menu reads from a terminal they go through its line editor,
/// which prints them above the prompt and draws the prompt again, so a
/// warning from the heartbeat thread never lands inside what is typed.
/// Colours only on a terminal: in a log file or a test's captured stderr
/// escape codes are noise around the words a reader (or `grep`) looks for.
/// `long_running` (the menu, `serve`): timestamped log lines; otherwise
/// `peer: warning: ...` lines (see [`OneLine`]).
fn init_logging(long_running: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogLine::default);
    if long_running {
        builder
            .with_ansi(io::stderr().is_terminal())
            .with_target(false)
            .init();
    } else {
        builder.with_ansi(false).event_format(OneLine).init();
    }
}

/// A log event of a one-shot command as one plain line,
/// `peer: warning: MESSAGE`, like the command's own error line; an event of
/// another crate (the DHT's) names it: `peer: error (mainline): ...`.
struct OneLine;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for OneLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let word = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            tracing::Level::DEBUG => "debug",
            tracing::Level::TRACE => "trace",
        };
        let target = event.metadata().target();
        let crate_name = target.split("::").next().unwrap_or(target);
        if crate_name.starts_with("p2p_") || crate_name == "peer" {
            write!(writer, "peer: {word}: ")?;
        } else {
            write!(writer, "peer: {word} ({crate_name}): ")?;
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Where log lines go while the menu edits a line on a terminal.
static LOG_PRINTER: Mutex<Option<LinePrinter>> = Mutex::new(None);

/// One log event, collected, then written whole when dropped (the
/// subscriber takes a fresh writer per event): to the menu's printer when
/// one is installed, else to stderr.
#[derive(Default)]
struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let mut printer = LOG_PRINTER.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(printer) = printer.as_mut() {
            let line = String::from_utf8_lossy(&self.0).into_owned();
            if printer.print(line).is_ok() {
                return;
            }
        }
        let _ = io::stderr().write_all(&self.0);
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let reporter = Reporter::auto();
    let common = cli.common.config();
    match cli.command {
        None => {
            let stdin = io::stdin();
            let terminal = stdin.is_terminal();
            let mut input = stdin.lock();
            let mut output = io::stdout();
            let mut console = Console::new(&mut input, &mut output, terminal);
            // A dumb terminal cannot edit lines: plain reading, as from a pipe.
            let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
            if terminal && !dumb {
                match LineEditor::new(&common.shared) {
                    Ok((editor, printer)) => {
                        console = console.with_editor(editor);
                        *LOG_PRINTER.lock().unwrap_or_else(|p| p.into_inner()) = printer;
                    }
                    Err(e) => tracing::warn!("no line editing: {e}"),
                }
            }
            let result = menu::run(&common, &mut console, &reporter).context("menu");
            *LOG_PRINTER.lock().unwrap_or_else(|p| p.into_inner()) = None;
            result?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Serve) => {
            serve::run(&common, &reporter)?;
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Search { name }) => search(&common, &name),
        Some(Command::Get {
            names,
            sha256,
            find,
            from_file,
            jobs,
        }) => {
            let batch = Batch {
                names,
                sha256,
                find,
                from_file,
                jobs,
            };
            get(&common, batch, &reporter)
        }
        Some(Command::Find { words, json }) => find_cmd(&common, &words, json),
        Some(Command::Register { name }) => register(&common, &name, &reporter),
    }
}

/// `peer search NAME`: `HOST:PORT SIZE SHA256` lines; with `--dht` the
/// registry's and the DHT's sources, grouped by content. Stdout is for
/// scripts, so a fallback is a warning on stderr.
fn search(common: &PeerConfig, name: &str) -> anyhow::Result<ExitCode> {
    let looked = match dht::search(&common.server, common.dht.as_ref(), name) {
        Ok(looked) => looked,
        Err(e) if e.is_not_found() => {
            let _ = writeln!(io::stderr(), "peer: {e}");
            return Ok(ExitCode::from(EXIT_NOT_FOUND));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(fallback) = &looked.fallback {
        tracing::warn!("{fallback}");
    }
    let mut out = io::stdout().lock();
    for source in &looked.sources {
        writeln!(
            out,
            "{} {} {}",
            download::printable(&source.addr()),
            source.size,
            source.sha256
        )
        .context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// What `peer get` was asked for.
struct Batch {
    names: Vec<String>,
    /// `--sha256`, for one name only (the command line refuses it with a batch).
    sha256: Option<[u8; 32]>,
    find: bool,
    from_file: Option<PathBuf>,
    jobs: usize,
}

/// `peer get`: one name as ever; several names, `--find` or `--from-file`
/// as a batch.
fn get(common: &PeerConfig, batch: Batch, reporter: &Reporter) -> anyhow::Result<ExitCode> {
    if batch.sha256.is_some() && batch.names.len() != 1 {
        anyhow::bail!("--sha256 chooses the content of one NAME; give exactly one name with it");
    }
    let names = if batch.find {
        let words = find::words_of(&batch.names);
        let hits = find::find(&common.server, &words)?;
        if hits.is_empty() {
            let _ = writeln!(
                io::stderr(),
                "peer: no file matches {:?} (the registry at {} knows no live source)",
                words.join(" "),
                common.server
            );
            return Ok(ExitCode::from(EXIT_NOT_FOUND));
        }
        hits.into_iter().map(|h| h.name).collect()
    } else if let Some(path) = &batch.from_file {
        read_list(path)?
    } else if let [name] = batch.names.as_slice() {
        return get_one(common, name, batch.sha256, reporter);
    } else {
        batch.names
    };
    let config = BatchConfig {
        registry: common.server.clone(),
        downloads: common.downloads.clone(),
        download: common.download,
        jobs: batch.jobs,
        dht: common.dht.clone(),
    };
    let summary = batch::run(&config, names, reporter);
    {
        let mut err = io::stderr().lock();
        for (name, error) in summary.failures() {
            let _ = writeln!(err, "peer: {}", batch::describe_failure(name, error));
        }
    }
    progress::say(summary.line());
    Ok(match summary.verdict() {
        Verdict::AllThere => ExitCode::SUCCESS,
        Verdict::OnlyNotFound => ExitCode::from(EXIT_NOT_FOUND),
        Verdict::Failed => ExitCode::from(EXIT_FAILURE),
    })
}

/// The names of a `--from-file` list (`-`: standard input).
fn read_list(path: &Path) -> anyhow::Result<Vec<String>> {
    if path == Path::new("-") {
        return Ok(batch::read_names(io::stdin().lock(), "standard input")?);
    }
    let file = File::open(path).with_context(|| format!("opening the list {}", path.display()))?;
    Ok(batch::read_names(
        BufReader::new(file),
        &path.display().to_string(),
    )?)
}

/// `peer get NAME`: exit 0, 1 (with the closest FIND hits on the same
/// line) or 2. With `--dht` the registry's and the DHT's sources; a
/// fallback (one of them could not be asked) is a note on stdout, so that
/// stderr of a failure holds its one line only.
fn get_one(
    common: &PeerConfig,
    name: &str,
    sha256: Option<[u8; 32]>,
    reporter: &Reporter,
) -> anyhow::Result<ExitCode> {
    let options = download::Options {
        sha256,
        ..common.download
    };
    let sources = match dht::search(&common.server, common.dht.as_ref(), name) {
        Ok(looked) => {
            if let Some(fallback) = looked.fallback {
                reporter.note(fallback);
            }
            looked.sources
        }
        Err(e) if e.is_not_found() => {
            // A registry that could not be asked is not asked again for
            // suggestions (each try waits its timeout).
            let ask = !matches!(e, dht::SearchError::NotOnDht { .. });
            return Ok(not_found_with_suggestions(common, name, &e, ask));
        }
        Err(e) => return Err(e.into()),
    };
    match download::download_from(&sources, name, &common.downloads, &options, reporter) {
        Ok(outcome) => {
            reporter.note(menu::describe(&outcome));
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => not_found_or(e),
    }
}

/// Exit 1 with one line: why `name` has no source, and the registry's
/// closest FIND hits when it has some.
fn not_found_with_suggestions(
    common: &PeerConfig,
    name: &str,
    error: &dyn std::fmt::Display,
    ask_registry: bool,
) -> ExitCode {
    let hits = if ask_registry {
        find::suggest(&common.server, name)
    } else {
        Vec::new()
    };
    let line = match find::did_you_mean(&hits) {
        Some(suggestions) => format!("peer: {error}; {suggestions}"),
        None => format!("peer: {error}"),
    };
    let _ = writeln!(io::stderr(), "{line}");
    ExitCode::from(EXIT_NOT_FOUND)
}

/// `peer find WORDS...`: one hit per line, or one JSON array.
fn find_cmd(common: &PeerConfig, words: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let words = find::words_of(words);
    let hits = find::find(&common.server, &words)?;
    let mut out = io::stdout().lock();
    if json {
        writeln!(out, "{}", find::to_json(&hits)).context("writing to stdout")?;
    } else {
        for hit in &hits {
            writeln!(out, "{}", find::describe_hit(hit)).context("writing to stdout")?;
        }
    }
    out.flush().context("writing to stdout")?;
    if hits.is_empty() {
        if !json {
            let _ = writeln!(io::stderr(), "peer: no file matches {:?}", words.join(" "));
        }
        return Ok(ExitCode::from(EXIT_NOT_FOUND));
    }
    Ok(ExitCode::SUCCESS)
}

/// "No source" is exit 1 with its line; anything else is a failure.
fn not_found_or(e: DownloadError) -> anyhow::Result<ExitCode> {
    if e.is_not_found() {
        let _ = writeln!(io::stderr(), "peer: {e}");
        return Ok(ExitCode::from(EXIT_NOT_FOUND));
    }
    Err(e.into())
}

fn register(common: &PeerConfig, name: &str, reporter: &Reporter) -> anyhow::Result<ExitCode> {
    let port = match common.port {
        Some(port) if port != 0 => port,
        _ => {
            anyhow::bail!("register needs --port N: the port (1-65535) your file server listens on")
        }
    };
    let shared = SharedDir::open(&common.shared)?;
    let registration =
        registration::register_one(&common.server, shared, port, common.bind, name, reporter)?;
    reporter.note(format_args!(
        "registered {name} for port {port} ({}, sha256 {})",
        p2p_proto::units::human_size(registration.size),
        registration.short_sha()
    ));
    Ok(ExitCode::SUCCESS)
}
