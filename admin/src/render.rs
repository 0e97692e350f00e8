//! Turns registrations into output: a table for people (sized to the
//! terminal), or CSV, a JSON array or JSON Lines for programs; plus the
//! small formatters for sizes, times and ages.
//!
//! Rows are written as they come: CSV and JSON hold one row at a time, a
//! table at most [`TABLE_PAGE_ROWS`] (to size its columns), then prints the
//! rest in the same columns: one table, one header, however many rows.
//! A table fits the width it is given (the terminal's, or `COLUMNS`):
//! no word or hash is broken across lines; a cell too long for its column
//! is cut with `…` (CSV and JSON always carry every character). This module
//! never opens the database and never decides which rows to show.

use std::io::{self, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use dht_server::store::admin::Registration;
use serde::Serialize;

use crate::Clock;

/// Rows a table holds before it is printed: its columns are sized to these
/// first rows, and later rows are printed in the same columns (cut with `…`
/// if longer), so memory stays bounded and there is one header.
pub const TABLE_PAGE_ROWS: usize = 1000;

/// Columns between two table columns.
const COLUMN_GAP: &str = "  ";

/// The name column never gets narrower than this when the table is cut to
/// the width: shorter, names would be unrecognisable.
pub const MIN_NAME_COLUMNS: usize = 16;

/// Hex digits of a SHA-256 a table shows when the full short form
/// ([`SHORT_HASH_LEN`]) does not fit the width.
pub const NARROW_HASH_LEN: usize = 8;

/// The table's header, in column order.
const TABLE_HEADER: [&str; 7] = [
    "NAME",
    "SIZE",
    "SHA-256",
    "PEER",
    "REGISTERED",
    "LAST SEEN",
    "STATUS",
];

/// Index of the column left out first when the table is too wide.
const REGISTERED_COLUMN: usize = 4;

/// Hex digits of a SHA-256 a table shows; CSV and JSON carry all 64.
pub const SHORT_HASH_LEN: usize = 12;

/// How registrations are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table for people, as wide as the terminal.
    Table,
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON array of objects.
    Json,
    /// JSON Lines: one object per line.
    Jsonl,
}

/// The column names of CSV, and the keys of JSON objects.
pub const FIELDS: [&str; 7] = [
    "name",
    "size",
    "sha256",
    "peer",
    "registered_at",
    "last_seen",
    "live",
];

/// One registration as programs see it: full hash, RFC 3339 UTC times,
/// `live` judged against the `--ttl`.
#[derive(Debug, Serialize)]
struct Record<'a> {
    name: &'a str,
    size: u64,
    sha256: &'a str,
    peer: String,
    registered_at: String,
    last_seen: String,
    live: bool,
}

impl<'a> Record<'a> {
    fn new(r: &'a Registration, clock: &Clock) -> Self {
        Record {
            name: &r.name,
            size: r.size,
            sha256: &r.sha256,
            peer: r.peer(),
            registered_at: rfc3339(r.registered_at_ms),
            last_seen: rfc3339(r.last_seen_ms),
            live: clock.is_live(r.last_seen_ms),
        }
    }
}

enum Sink<W: Write> {
    Table {
        out: W,
        page: Vec<Registration>,
        /// The columns, once the first page fixed them.
        layout: Option<Layout>,
        /// Columns the table must fit in; `None`: no limit.
        width: Option<usize>,
    },
    /// Boxed: the csv writer carries its own buffer state, ten times the others.
    Csv(Box<csv::Writer<W>>),
    Json {
        out: W,
        started: bool,
    },
    Jsonl(W),
}

/// Writes registrations one at a time in a [`Format`]; call
/// [`RowWriter::finish`] to close the output (the JSON array's `]`, the
/// last table page) and get the writer back.
pub struct RowWriter<W: Write> {
    sink: Sink<W>,
    clock: Clock,
    rows: u64,
}

impl<W: Write> RowWriter<W> {
    /// Starts the output; CSV writes its header row at once, so even an
    /// empty export has one. A table fits [`output_width`].
    pub fn new(format: Format, out: W, clock: Clock) -> io::Result<Self> {
        RowWriter::with_width(format, out, clock, output_width())
    }

    /// Like [`RowWriter::new`], with the table fitted to `width` columns
    /// (`None`: as wide as its cells, e.g. for a file).
    pub fn with_width(
        format: Format,
        out: W,
        clock: Clock,
        width: Option<usize>,
    ) -> io::Result<Self> {
        let sink = match format {
            Format::Table => Sink::Table {
                out,
                page: Vec::new(),
                layout: None,
                width,
            },
            Format::Csv => {
                let mut csv = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(out);
                csv.write_record(FIELDS).map_err(csv_error)?;
                Sink::Csv(Box::new(csv))
            }
            Format::Json => Sink::Json {
                out,
                started: false,
            },
            Format::Jsonl => Sink::Jsonl(out),
        };
        Ok(RowWriter {
            sink,
            clock,
            rows: 0,
        })
    }

    pub fn write(&mut self, r: &Registration) -> io::Result<()> {
        self.rows += 1;
        match &mut self.sink {
            Sink::Table {
                out,
                page,
                layout,
                width,
            } => match layout {
                Some(layout) => layout.write_row(out, &table_cells(r, &self.clock))?,
                None => {
                    page.push(r.clone());
                    if page.len() >= TABLE_PAGE_ROWS {
                        *layout = Some(write_first_page(out, page, &self.clock, *width)?);
                    }
                }
            },
            Sink::Csv(csv) => csv
                .serialize(Record::new(r, &self.clock))
                .map_err(csv_error)?,
            Sink::Json { out, started } => {
                out.write_all(if *started { b",\n" } else { b"[\n" })?;
                *started = true;
                serde_json::to_writer(&mut *out, &Record::new(r, &self.clock))?;
            }
            Sink::Jsonl(out) => {
                serde_json::to_writer(&mut *out, &Record::new(r, &self.clock))?;
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Ends the output, flushes it, and returns the writer.
    pub fn finish(self) -> io::Result<W> {
        let mut out = match self.sink {
            Sink::Table {
                mut out,
                mut page,
                layout,
                width,
            } => {
                if layout.is_none() && !page.is_empty() {
                    write_first_page(&mut out, &mut page, &self.clock, width)?;
                }
                out
            }
            Sink::Csv(csv) => (*csv).into_inner().map_err(|e| e.into_error())?,
            Sink::Json { mut out, started } => {
                out.write_all(if started { b"\n]\n" } else { b"[]\n" })?;
                out
            }
            Sink::Jsonl(out) => out,
        };
        out.flush()?;
        Ok(out)
    }
}

/// Keeps an I/O error as it was (so a closed pipe is still recognised as
/// one); anything else the csv crate reports becomes an `Other` I/O error.
fn csv_error(e: csv::Error) -> io::Error {
    if !e.is_io_error() {
        return io::Error::other(e);
    }
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        kind => io::Error::other(format!("{kind:?}")),
    }
}

/// Columns the table should fit in: `COLUMNS` when set to a number, else
/// the width of the terminal on stdout, else no limit (a pipe or a file
/// gets whole names).
pub fn output_width() -> Option<usize> {
    if let Some(cols) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0)
    {
        return Some(cols);
    }
    rustix::termios::tcgetwinsize(io::stdout())
        .ok()
        .map(|size| usize::from(size.ws_col))
        .filter(|&cols| cols > 0)
}

/// The table's cells of one registration, in [`TABLE_HEADER`] order.
fn table_cells(r: &Registration, clock: &Clock) -> [String; 7] {
    [
        r.name.clone(),
        human_size(r.size),
        short_hash(&r.sha256),
        r.peer(),
        ago(clock.now_ms, r.registered_at_ms),
        ago(clock.now_ms, r.last_seen_ms),
        if clock.is_live(r.last_seen_ms) {
            "live"
        } else {
            "expired"
        }
        .to_owned(),
    ]
}

/// Sizes the columns to `page` (and `width`), prints the header and the
/// page, empties it, and returns the columns for the rows after it.
fn write_first_page<W: Write>(
    out: &mut W,
    page: &mut Vec<Registration>,
    clock: &Clock,
    width: Option<usize>,
) -> io::Result<Layout> {
    let rows: Vec<[String; 7]> = page.drain(..).map(|r| table_cells(&r, clock)).collect();
    let layout = Layout::fit(&rows, width);
    layout.write_row(out, &TABLE_HEADER.map(str::to_owned))?;
    for row in &rows {
        layout.write_row(out, row)?;
    }
    Ok(layout)
}

/// The table's columns: which are shown, how wide.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    /// Width of each column in characters; `None`: left out.
    widths: [Option<usize>; 7],
    /// Hex digits shown of a hash.
    hash_len: usize,
    /// Whether cells longer than their column are cut (a width was given);
    /// without one, a later row's longer cell is printed whole.
    cut: bool,
}

impl Layout {
    /// Columns as wide as their widest cell in `rows`; then, while wider
    /// than `width`: leave out REGISTERED, shorten hashes, narrow NAME down
    /// to [`MIN_NAME_COLUMNS`]. Never breaks a cell across lines.
    fn fit(rows: &[[String; 7]], width: Option<usize>) -> Layout {
        let mut widths = [0usize; 7];
        for (column, header) in TABLE_HEADER.iter().enumerate() {
            widths[column] = rows
                .iter()
                .map(|row| row[column].chars().count())
                .chain([header.chars().count()])
                .max()
                .unwrap_or(0);
        }
        let mut layout = Layout {
            widths: widths.map(Some),
            hash_len: SHORT_HASH_LEN,
            cut: width.is_some(),
        };
        let Some(width) = width else {
            return layout;
        };
        if layout.total() > width {
            layout.widths[REGISTERED_COLUMN] = None;
        }
        if layout.total() > width {
            layout.hash_len = NARROW_HASH_LEN;
            // "SHA-256" is 7 wide; 8 digits and "…" are 9.
            layout.widths[2] = Some(NARROW_HASH_LEN + 1);
        }
        let over = layout.total().saturating_sub(width);
        if let Some(name) = layout.widths[0].as_mut() {
            *name = name.saturating_sub(over).max(MIN_NAME_COLUMNS.min(*name));
        }
        layout
    }

    /// Characters of a line, gaps included.
    fn total(&self) -> usize {
        let shown: Vec<usize> = self.widths.iter().flatten().copied().collect();
        shown.iter().sum::<usize>() + COLUMN_GAP.len() * shown.len().saturating_sub(1)
    }

    /// One line: each shown cell cut to its column (with `…`), padded;
    /// SIZE right-aligned; no trailing spaces.
    fn write_row<W: Write>(&self, out: &mut W, cells: &[String; 7]) -> io::Result<()> {
        let mut line = String::new();
        let last = self.widths.iter().rposition(Option::is_some);
        for (column, width) in self.widths.iter().enumerate() {
            let Some(width) = *width else { continue };
            if !line.is_empty() {
                line.push_str(COLUMN_GAP);
            }
            let cell = if column == 2 {
                shorten_hash(&cells[column], self.hash_len)
            } else if self.cut {
                cut(&cells[column], width)
            } else {
                cells[column].clone()
            };
            let pad = width.saturating_sub(cell.chars().count());
            if column == 1 {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(&cell);
            } else {
                line.push_str(&cell);
                if Some(column) != last {
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
        }
        writeln!(out, "{}", line.trim_end())
    }
}

/// `text` in at most `width` characters: cut with `…` when longer.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A table's hash cell (already short) shortened to `len` hex digits.
fn shorten_hash(cell: &str, len: usize) -> String {
    let digits = cell.trim_end_matches('…');
    if digits.len() <= len {
        return cell.to_owned();
    }
    format!("{}…", digits.get(..len).unwrap_or(digits))
}

/// A table in the house style: condensed UTF-8 borders, columns fitted to
/// the terminal's width when the output is a terminal. An empty `header`
/// leaves out the header row.
pub fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_style(presets::UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if !header.is_empty() {
        table.set_header(header.to_vec());
    }
    table
}

/// Right-aligns a column of numbers.
pub fn align_right(table: &mut Table, column: usize) {
    if let Some(column) = table.column_mut(column) {
        column.set_cell_alignment(CellAlignment::Right);
    }
}

fn short_hash(sha256: &str) -> String {
    match sha256.get(..SHORT_HASH_LEN) {
        Some(prefix) if sha256.len() > SHORT_HASH_LEN => format!("{prefix}…"),
        _ => sha256.to_owned(),
    }
}

/// Bytes in binary units: the one function the peer uses too.
pub use p2p_proto::units::human_size;

/// How long before `now_ms` the time `then_ms` was, in its largest whole
/// unit: `just now`, `42s ago`, `3m ago`, `5h ago`, `12d ago`. A time in
/// the future (a clock set back) reads `in 3s`.
pub fn ago(now_ms: i64, then_ms: i64) -> String {
    let delta = now_ms.saturating_sub(then_ms);
    let (seconds, future) = if delta >= 0 {
        (delta / 1000, false)
    } else {
        (delta.saturating_neg() / 1000, true)
    };
    if seconds == 0 {
        return "just now".to_owned();
    }
    let amount = match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// Last millisecond RFC 3339 can write (the end of year 9999); humantime
/// refuses later times, and a hand-edited database could hold one.
const MAX_RFC3339_MS: u64 = 253_402_300_800_000 - 1;

/// Unix milliseconds as RFC 3339 UTC with milliseconds,
/// `2024-05-01T12:00:00.250Z`; times outside 1970..=9999 are clamped.
pub fn rfc3339(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0).min(MAX_RFC3339_MS);
    let since_epoch = Duration::from_millis(ms);
    let time = UNIX_EPOCH
        .checked_add(since_epoch)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(name: &str, last_seen_ms: i64) -> Registration {
        Registration {
            name: name.to_owned(),
            size: 2048,
            sha256: "ab".repeat(32),
            host: "[::1]".to_owned(),
            port: 9000,
            registered_at_ms: 1_000,
            last_seen_ms,
        }
    }

    fn clock() -> Clock {
        Clock {
            now_ms: 100_000,
            live_since_ms: 50_000,
        }
    }

    fn render(format: Format, rows: &[Registration]) -> String {
        let mut w = RowWriter::new(format, Vec::new(), clock()).unwrap();
        for r in rows {
            w.write(r).unwrap();
        }
        assert_eq!(w.rows(), rows.len() as u64);
        String::from_utf8(w.finish().unwrap()).unwrap()
    }

    #[test]
    fn sizes_and_ages_read_naturally() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
        assert_eq!(ago(10_000, 9_500), "just now");
        assert_eq!(ago(100_000, 58_000), "42s ago");
        assert_eq!(ago(200_000, 20_000), "3m ago");
        assert_eq!(ago(5 * 3_600_000 + 1, 0), "5h ago");
        assert_eq!(ago(12 * 86_400_000, 0), "12d ago");
        assert_eq!(ago(0, 3_000), "in 3s");
        assert_eq!(
            ago(i64::MAX, i64::MIN),
            format!("{}d ago", i64::MAX / 1000 / 86_400)
        );
        assert_eq!(rfc3339(1_000_250), "1970-01-01T00:16:40.250Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn csv_has_a_header_even_when_empty_and_quotes_names() {
        assert_eq!(render(Format::Csv, &[]), format!("{}\n", FIELDS.join(",")));
        let out = render(Format::Csv, &[reg("a, \"b\"", 60_000), reg("c", 10_000)]);
        let mut reader = csv::Reader::from_reader(out.as_bytes());
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(&rows[0][0], "a, \"b\"");
        assert_eq!(&rows[0][3], "[::1]:9000");
        assert_eq!(&rows[0][6], "true");
        assert_eq!(&rows[1][6], "false");
    }

    #[test]
    fn json_is_one_array_and_jsonl_one_object_per_line() {
        assert_eq!(render(Format::Json, &[]), "[]\n");
        let rows = [reg("a", 60_000), reg("b", 60_000)];
        let json: serde_json::Value = serde_json::from_str(&render(Format::Json, &rows)).unwrap();
        let array = json.as_array().unwrap();
        assert_eq!(array.len(), 2);
        assert_eq!(array[1]["name"], "b");
        assert_eq!(array[1]["size"], 2048);
        let keys: Vec<&str> = array[0]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut fields = FIELDS.to_vec();
        fields.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, fields);
        let lines = render(Format::Jsonl, &rows);
        assert_eq!(lines.lines().count(), 2);
        for line in lines.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }

    #[test]
    fn a_long_table_is_one_table_with_one_header() {
        assert_eq!(render(Format::Table, &[]), "");
        let rows: Vec<Registration> = (0..TABLE_PAGE_ROWS + 1)
            .map(|i| reg(&format!("f{i}"), 60_000))
            .collect();
        let out = render(Format::Table, &rows);
        assert_eq!(out.matches("LAST SEEN").count(), 1);
        assert_eq!(out.lines().count(), TABLE_PAGE_ROWS + 2);
        assert!(out.contains("2.0 KiB"));
        assert!(out.contains("abababababab…"));
        assert!(out.contains("f1000"));
    }

    fn render_width(rows: &[Registration], width: usize) -> String {
        let mut w = RowWriter::with_width(Format::Table, Vec::new(), clock(), Some(width)).unwrap();
        for r in rows {
            w.write(r).unwrap();
        }
        String::from_utf8(w.finish().unwrap()).unwrap()
    }

    #[test]
    fn at_80_columns_nothing_is_broken_across_lines() {
        let mut long = reg(&"very long name of a holiday video ".repeat(5), 60_000);
        long.host = "192.168.100.200".to_owned();
        long.port = 65000;
        let rows = vec![reg("short.txt", 60_000), long, reg("old", 1)];
        let out = render_width(&rows, 80);
        assert_eq!(out.lines().count(), 4, "{out}");
        for line in out.lines() {
            assert!(
                line.chars().count() <= 80,
                "{} columns: {line}",
                line.chars().count()
            );
        }
        assert!(!out.contains("REGISTERED"), "{out}");
        assert!(out.contains("abababab…"), "{out}");
        assert!(out.contains("192.168.100.200:65000"), "{out}");
        assert!(out.contains("very long name o…  2.0 KiB"), "{out}");
        assert!(out.contains("expired") && out.contains("live"), "{out}");
        // Without a width, everything in full.
        let out = render_width(&rows, 1000);
        assert!(
            out.contains("REGISTERED") && out.contains(rows[1].name.trim_end()),
            "{out}"
        );
    }

    #[test]
    fn later_rows_keep_the_first_pages_columns() {
        let mut rows: Vec<Registration> = (0..TABLE_PAGE_ROWS)
            .map(|i| reg(&format!("f{i}"), 60_000))
            .collect();
        rows.push(reg("a name longer than the column", 60_000));
        let out = render_width(&rows, 80);
        let last = out.lines().last().unwrap();
        assert!(last.starts_with("a n…  "), "{last}");
        let mut w = RowWriter::with_width(Format::Table, Vec::new(), clock(), None).unwrap();
        for r in &rows {
            w.write(r).unwrap();
        }
        let out = String::from_utf8(w.finish().unwrap()).unwrap();
        assert!(out
            .lines()
            .last()
            .unwrap()
            .starts_with("a name longer than the column  "));
    }
}
