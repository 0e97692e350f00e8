//! How the peer tells a person what it is doing: progress bars for long
//! transfers and hashes when stderr is a terminal, a plain line at the start
//! and one at the end otherwise, and one-line notes ("source X failed,
//! trying the next") in both cases.
//!
//! Bars go to stderr (indicatif hides them when stderr is not a terminal);
//! notes and plain progress lines go to stdout, so that stderr of a failing
//! `peer get` carries only its one-line reason. This module must not decide
//! anything about the transfer itself: it only displays numbers it is given.
//! Writing to a closed stdout is ignored, never a panic.
//!
//! An [`Observer`] may also watch a reporter's transfers (the control UI
//! shows its downloads' progress that way, see [`Reporter::observed`]).

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use std::fmt;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use p2p_proto::units::human_size;

/// Files smaller than this are hashed without a bar: it would only flash.
pub const HASH_BAR_MIN_BYTES: u64 = 16 * 1024 * 1024;

/// How often a bar is redrawn at most; more is wasted terminal output.
const BAR_REFRESH_PER_SECOND: u8 = 10;

/// Bar layout on a terminal of at least [`WIDE_COLUMNS`]: how far, how
/// fast, how long still, then what (the message is cut to what is left).
const BAR_TEMPLATE: &str = "[{bar:25.cyan/blue}] {done}/{size} {rate} ETA {eta} {wide_msg}";

/// Bar layout from [`MEDIUM_COLUMNS`] to [`WIDE_COLUMNS`]: ~45 columns of numbers.
const BAR_TEMPLATE_MEDIUM: &str = "[{bar:10.cyan/blue}] {done}/{size} {rate} {wide_msg}";

/// Bar layout below [`MEDIUM_COLUMNS`]: ~16 columns of numbers.
const BAR_TEMPLATE_NARROW: &str = "{percent:>3}% {done} {wide_msg}";

/// Columns from which [`BAR_TEMPLATE`] fits with room for the file's name.
pub const WIDE_COLUMNS: u16 = 100;

/// Columns from which [`BAR_TEMPLATE_MEDIUM`] fits with room for the name.
pub const MEDIUM_COLUMNS: u16 = 60;

/// The width of the terminal on stderr (where bars go), if it is one.
pub fn terminal_width() -> Option<u16> {
    rustix::termios::tcgetwinsize(io::stderr())
        .ok()
        .map(|size| size.ws_col)
        .filter(|&cols| cols > 0)
}

/// The transfer bar's layout for a terminal `width` columns wide (unknown: wide).
pub fn template_for_width(width: Option<u16>) -> &'static str {
    match width {
        Some(cols) if cols < MEDIUM_COLUMNS => BAR_TEMPLATE_NARROW,
        Some(cols) if cols < WIDE_COLUMNS => BAR_TEMPLATE_MEDIUM,
        _ => BAR_TEMPLATE,
    }
}

/// A bar style from `template`, whose `{done}`, `{size}` and `{rate}` are
/// in the units of [`human_size`] (the ones the menu and `p2p-admin` use).
/// `None` if the template is rejected (the default style still works).
pub fn human_style(template: &str) -> Option<ProgressStyle> {
    let style = ProgressStyle::with_template(template).ok()?;
    Some(
        style
            .with_key("done", |s: &ProgressState, w: &mut dyn fmt::Write| {
                let _ = w.write_str(&human_size(s.pos()));
            })
            .with_key("size", |s: &ProgressState, w: &mut dyn fmt::Write| {
                let _ = w.write_str(&human_size(s.len().unwrap_or(0)));
            })
            .with_key("rate", |s: &ProgressState, w: &mut dyn fmt::Write| {
                let _ = write!(w, "{}/s", human_size(s.per_sec() as u64));
            })
            .progress_chars("=> "),
    )
}

/// Where progress goes. Copy it freely: it holds no state of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reporter {
    /// Draw indicatif bars on stderr.
    bars: bool,
    /// Print notes and plain start/end lines on stdout.
    lines: bool,
    /// Who else watches this reporter's transfers and notes: a key into
    /// [`OBSERVERS`], so that `Reporter` stays `Copy` for every caller.
    observer: Option<u64>,
}

/// Receives what a [`Reporter`] shows, from the thread that does the work.
/// Calls must be cheap: [`position`](Observer::position) comes for every
/// chunk of a transfer.
pub trait Observer: Send + Sync {
    /// A transfer of `total` bytes starts, `already` of them done (resume).
    fn started(&self, what: &str, total: u64, already: u64);
    /// Bytes done in all.
    fn position(&self, done: u64);
    /// The running detail, e.g. "2 of 4 sources active".
    fn detail(&self, detail: &str);
    /// A one-line note ("source X failed, trying the next").
    fn note(&self, line: &str);
    /// Whether the person asked to stop this download (the web UI's
    /// Cancel); the download path asks between chunks and stops, keeping
    /// its `.part` for a later resume.
    fn cancelled(&self) -> bool {
        false
    }
}

/// The observers of live [`Reporter::observed`] reporters, by key. A
/// process-wide table because `Reporter` is `Copy` and cannot own an `Arc`.
static OBSERVERS: Mutex<BTreeMap<u64, Arc<dyn Observer>>> = Mutex::new(BTreeMap::new());

/// The next key for [`OBSERVERS`].
static NEXT_OBSERVER: AtomicU64 = AtomicU64::new(1);

fn observers() -> std::sync::MutexGuard<'static, BTreeMap<u64, Arc<dyn Observer>>> {
    // A poisoned table still holds whole entries: each change is one insert or remove.
    OBSERVERS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps an observer attached; dropping it detaches the observer (the
/// reporter then behaves as if it had none).
#[derive(Debug)]
pub struct ObserverGuard {
    key: u64,
}

impl Drop for ObserverGuard {
    fn drop(&mut self) {
        observers().remove(&self.key);
    }
}

impl Reporter {
    /// Bars when stderr is a terminal, plain lines on stdout always.
    pub fn auto() -> Reporter {
        Reporter {
            bars: io::stderr().is_terminal(),
            lines: true,
            observer: None,
        }
    }

    /// Plain lines only, never bars (for scripts and tests).
    pub fn plain() -> Reporter {
        Reporter {
            bars: false,
            lines: true,
            observer: None,
        }
    }

    /// Nothing at all.
    pub fn quiet() -> Reporter {
        Reporter {
            bars: false,
            lines: false,
            observer: None,
        }
    }

    /// This reporter, with `observer` also told about every transfer and
    /// note, for as long as the returned guard lives.
    pub fn observed(self, observer: Arc<dyn Observer>) -> (Reporter, ObserverGuard) {
        let key = NEXT_OBSERVER.fetch_add(1, Ordering::Relaxed);
        observers().insert(key, observer);
        let reporter = Reporter {
            observer: Some(key),
            ..self
        };
        (reporter, ObserverGuard { key })
    }

    /// Whether this reporter's observer asked to stop ([`Observer::cancelled`]).
    pub fn cancelled(&self) -> bool {
        self.observer.is_some() && self.observer().is_some_and(|o| o.cancelled())
    }

    fn observer(&self) -> Option<Arc<dyn Observer>> {
        let key = self.observer?;
        observers().get(&key).cloned()
    }

    /// Whether this reporter draws bars.
    pub fn draws_bars(&self) -> bool {
        self.bars
    }

    /// One line for a person, on stdout.
    pub fn note(&self, line: impl Display) {
        if let Some(observer) = self.observer() {
            let line = line.to_string();
            observer.note(&line);
            if self.lines {
                say(line);
            }
        } else if self.lines {
            say(line);
        }
    }

    /// A warning for a person, on stderr (e.g. sources that disagree on a
    /// file's content): printed whenever notes are.
    pub fn warn(&self, line: impl Display) {
        if self.lines {
            let mut err = io::stderr().lock();
            let _ = writeln!(err, "{line}");
        }
    }

    /// Progress of a transfer of `total` bytes of which `already` are done
    /// (a resumed download). `what` names it, e.g. `report.pdf from 10.0.0.2:4000`.
    pub fn transfer(&self, what: impl Into<String>, total: u64, already: u64) -> Progress {
        let what = what.into();
        if self.lines && !self.bars {
            if already > 0 {
                say(format_args!(
                    "resuming {what} at {} of {}",
                    human_size(already),
                    human_size(total)
                ));
            } else {
                say(format_args!("downloading {what} ({})", human_size(total)));
            }
        }
        Progress::new(*self, "received", what, total, already, true)
    }

    /// Progress of hashing `total` bytes; a bar only for large files, and no
    /// plain lines (the caller says what it does with the digest).
    pub fn hashing(&self, what: impl Into<String>, total: u64) -> Progress {
        let show_bar = total >= HASH_BAR_MIN_BYTES;
        let reporter = Reporter {
            bars: self.bars && show_bar,
            lines: false,
            observer: None,
        };
        Progress::new(
            reporter,
            "hashed",
            format!("hashing {}", what.into()),
            total,
            0,
            false,
        )
    }
}

/// Writes one line to stdout, ignoring a closed stdout (a script that stopped
/// reading must not make the peer panic).
pub fn say(line: impl Display) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// One running progress display. Dropping it without [`finish`](Self::finish)
/// clears the bar and prints nothing.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    reporter: Reporter,
    /// Past tense for the end line ("received").
    done_verb: &'static str,
    what: String,
    /// The bar's current message (description and detail), so an
    /// unchanged one is not sent to the bar again.
    detail: String,
    /// Bytes done when this display started (resume), so the rate counts only new bytes.
    start_position: u64,
    position: u64,
    started: Instant,
    /// Whether to print a plain end line.
    end_line: bool,
    /// Told about positions, details and notes (see [`Reporter::observed`]).
    observer: Option<Arc<dyn Observer>>,
}

impl std::fmt::Debug for dyn Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

impl Progress {
    fn new(
        reporter: Reporter,
        done_verb: &'static str,
        what: String,
        total: u64,
        already: u64,
        end_line: bool,
    ) -> Progress {
        let bar = reporter.bars.then(|| {
            let bar = ProgressBar::with_draw_target(
                Some(total),
                ProgressDrawTarget::stderr_with_hz(BAR_REFRESH_PER_SECOND),
            );
            // The template is a constant; should it ever be rejected, the
            // default style still shows the numbers.
            if let Some(style) = human_style(template_for_width(terminal_width())) {
                bar.set_style(style);
            }
            bar.set_message(what.clone());
            bar.set_position(already);
            bar
        });
        let observer = reporter.observer();
        if let Some(observer) = &observer {
            observer.started(&what, total, already);
        }
        Progress {
            observer,
            bar,
            reporter,
            done_verb,
            detail: what.clone(),
            what,
            start_position: already,
            position: already,
            started: Instant::now(),
            end_line,
        }
    }

    /// A display that shows nothing.
    pub fn hidden() -> Progress {
        Progress::new(Reporter::quiet(), "", String::new(), 0, 0, false)
    }

    /// Shows `detail` after the description in the bar (e.g. how many
    /// sources are active); plain mode shows nothing until the end.
    pub fn set_detail(&mut self, detail: impl Display) {
        if let Some(observer) = &self.observer {
            observer.detail(&detail.to_string());
        }
        if let Some(bar) = &self.bar {
            let message = format!("{} · {detail}", self.what);
            if message != self.detail {
                bar.set_message(message.clone());
                self.detail = message;
            }
        }
    }

    /// Sets how many bytes are done in all.
    pub fn set(&mut self, position: u64) {
        self.position = position;
        if let Some(observer) = &self.observer {
            observer.position(position);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(position);
        }
    }

    /// A note printed above the bar without breaking it.
    pub fn note(&self, line: impl Display) {
        match &self.bar {
            Some(bar) => bar.suspend(|| self.reporter.note(line)),
            None => self.reporter.note(line),
        }
    }

    /// Ends the display: the bar is cleared and, in plain mode, one line
    /// says how much was done and how fast.
    pub fn finish(mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.end_line && self.reporter.lines {
            let elapsed = self.started.elapsed();
            let moved = self.position.saturating_sub(self.start_position);
            say(format_args!(
                "{} {}: {} in {:.2}s ({}/s)",
                self.done_verb,
                self.what,
                human_size(moved),
                elapsed.as_secs_f64(),
                human_size(rate(moved, elapsed)),
            ));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Bytes per second, without dividing by zero for instant transfers.
fn rate(bytes: u64, elapsed: Duration) -> u64 {
    let millis = elapsed.as_millis().max(1);
    u64::try_from(u128::from(bytes) * 1000 / millis).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_never_divides_by_zero() {
        assert_eq!(rate(1000, Duration::ZERO), 1_000_000);
        assert_eq!(rate(1000, Duration::from_secs(2)), 500);
        assert_eq!(rate(u64::MAX, Duration::from_millis(1)), u64::MAX);
    }

    #[test]
    fn bars_fit_the_terminal() {
        assert_eq!(template_for_width(None), BAR_TEMPLATE);
        assert_eq!(template_for_width(Some(120)), BAR_TEMPLATE);
        assert_eq!(template_for_width(Some(80)), BAR_TEMPLATE_MEDIUM);
        assert_eq!(template_for_width(Some(40)), BAR_TEMPLATE_NARROW);
        for template in [BAR_TEMPLATE, BAR_TEMPLATE_MEDIUM, BAR_TEMPLATE_NARROW] {
            assert!(human_style(template).is_some(), "{template}");
        }
    }

    #[test]
    fn quiet_and_plain_reporters_draw_no_bar() {
        for reporter in [Reporter::quiet(), Reporter::plain()] {
            assert!(!reporter.draws_bars());
            let mut p = reporter.transfer("x", 10, 0);
            p.set(10);
            p.set_detail("2 of 4 sources active");
            assert!(p.bar.is_none());
            p.finish();
        }
        let hidden = Progress::hidden();
        assert!(hidden.bar.is_none());
    }

    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    impl Observer for Seen {
        fn started(&self, what: &str, total: u64, already: u64) {
            self.push(format!("start {what} {total} {already}"));
        }
        fn position(&self, done: u64) {
            self.push(format!("at {done}"));
        }
        fn detail(&self, detail: &str) {
            self.push(format!("detail {detail}"));
        }
        fn note(&self, line: &str) {
            self.push(format!("note {line}"));
        }
    }

    impl Seen {
        fn push(&self, line: String) {
            self.0.lock().unwrap().push(line);
        }
    }

    #[test]
    fn an_observer_sees_transfers_and_notes_until_its_guard_drops() {
        let seen = Arc::new(Seen::default());
        let (reporter, guard) = Reporter::quiet().observed(seen.clone());
        let copy = reporter;
        let mut p = copy.transfer("f", 10, 2);
        p.set(5);
        p.set_detail("1 of 2 sources active");
        p.note("source x failed");
        reporter.note("done");
        p.finish();
        // Hashing is not a transfer: not observed.
        reporter.hashing("f", 10).set(3);
        drop(guard);
        reporter.note("after");
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "start f 10 2",
                "at 5",
                "detail 1 of 2 sources active",
                "note source x failed",
                "note done"
            ]
        );
    }
}
