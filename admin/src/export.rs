//! `p2p-admin export`: the whole registry, row by row, to standard output
//! or to a file.
//!
//! A file export is written to a temporary file in the target's directory
//! and renamed over the target only once complete and synced, so a failed
//! or interrupted export never leaves a partial file under the name. It
//! opens the database read-only and never holds more than one row (or one
//! table page) in memory.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use dht_server::store::admin::Filter;
use tempfile::NamedTempFile;

use crate::list::stream;
use crate::render::{Format, RowWriter};
use crate::{AdminError, Settings, STDOUT};

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: Format,
    /// Write here instead of standard output.
    pub output: Option<PathBuf>,
}

const WHAT: &str = "the export";

/// Exports every registration; returns how many. With a file, a line
/// saying where they went is printed to `out`.
pub fn export<W: Write>(
    settings: &Settings,
    opts: &ExportOptions,
    mut out: W,
) -> Result<u64, AdminError> {
    let conn = settings.open_read()?;
    let clock = settings.clock();
    let all = Filter::default();
    let Some(path) = &opts.output else {
        let output_err = |source| AdminError::Output {
            what: WHAT,
            target: STDOUT.to_owned(),
            source,
        };
        let mut writer = RowWriter::new(opts.format, out, clock).map_err(output_err)?;
        stream(&conn, &settings.db, &all, &mut writer, WHAT, STDOUT)?;
        let rows = writer.rows();
        writer.finish().map_err(output_err)?;
        return Ok(rows);
    };

    let target = path.display().to_string();
    let output_err = |source| AdminError::Output {
        what: WHAT,
        target: target.clone(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // Dropped on any error below, which deletes it.
    let temp = temp_file_in(dir).map_err(|source| AdminError::TempFile {
        dir: dir.display().to_string(),
        source,
    })?;
    let mut writer =
        // A file gets whole names, whatever the terminal's width.
        RowWriter::with_width(opts.format, BufWriter::new(temp), clock, None)
            .map_err(output_err)?;
    stream(&conn, &settings.db, &all, &mut writer, WHAT, &target)?;
    let rows = writer.rows();
    let temp = writer
        .finish()
        .map_err(output_err)?
        .into_inner()
        .map_err(|e| output_err(e.into_error()))?;
    temp.as_file().sync_all().map_err(output_err)?;
    temp.persist(path).map_err(|e| AdminError::Persist {
        path: target.clone(),
        source: e.error,
    })?;
    sync_dir(dir);
    writeln!(out, "exported {rows} registrations to {target}")
        .and_then(|()| out.flush())
        .map_err(|source| AdminError::Output {
            what: "the summary",
            target: STDOUT.to_owned(),
            source,
        })?;
    Ok(rows)
}

/// A hidden temporary file beside the target. It is created with the
/// permissions of any new file (0666 less the umask), not tempfile's
/// private 0600, because it becomes the export a user hands on.
fn temp_file_in(dir: &Path) -> std::io::Result<NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".p2p-admin-export-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir)
}

/// Makes the rename durable. Best effort: the export is complete and in
/// place either way, and some file systems refuse to sync a directory.
fn sync_dir(dir: &Path) {
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdb::with_rows;

    #[test]
    fn exports_to_a_file_that_appears_complete() {
        let now = dht_server::store::now_ms();
        let db = with_rows(&[("10.0.0.1", 9000, "a", now), ("10.0.0.2", 9000, "b", now)]);
        let path = db.dir.path().join("out.json");
        let opts = ExportOptions {
            format: Format::Json,
            output: Some(path.clone()),
        };
        let mut out = Vec::new();
        assert_eq!(export(&db.settings, &opts, &mut out).unwrap(), 2);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(json.as_array().unwrap().len(), 2);
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("exported 2 registrations to "));
        // Nothing else was left in the directory: no temporary file.
        let mut names: Vec<String> = std::fs::read_dir(db.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("registry.db"))
            .collect();
        names.sort();
        assert_eq!(names, vec!["out.json"]);
    }

    #[test]
    fn a_failed_export_leaves_the_old_file_alone() {
        let db = with_rows(&[]);
        let path = db.dir.path().join("out.csv");
        std::fs::write(&path, "previous export").unwrap();
        let broken = Settings {
            db: db
                .dir
                .path()
                .join("missing.db")
                .to_str()
                .unwrap()
                .to_owned(),
            ttl: db.settings.ttl,
        };
        let opts = ExportOptions {
            format: Format::Csv,
            output: Some(path.clone()),
        };
        assert!(export(&broken, &opts, Vec::new()).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "previous export");

        let into_missing_dir = ExportOptions {
            format: Format::Csv,
            output: Some(db.dir.path().join("no/such/dir/out.csv")),
        };
        let err = export(&db.settings, &into_missing_dir, Vec::new()).unwrap_err();
        assert!(matches!(err, AdminError::TempFile { .. }), "{err}");
    }
}
