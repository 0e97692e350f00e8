//! The URL scheme of a peer's HTTP file server: `/files/<name>` and
//! `/pieces/<name>`, the name percent-encoded as one path segment. The
//! server (peer/src/http/handler.rs) and the downloader both use these, so
//! the two sides cannot drift. Pure functions, no I/O.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::protocol::{check_name, NameError};

/// The prefix of file URLs; the rest of the path is the encoded name.
pub const FILES_PREFIX: &str = "/files/";

/// The prefix of piece-list URLs; the rest of the path is the encoded name.
pub const PIECES_PREFIX: &str = "/pieces/";

/// Bytes escaped when a name is put into a URL: everything but the RFC 3986
/// unreserved characters, so any name makes a single, valid path segment.
pub const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a name from a URL was refused (always `400`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadName {
    #[error("name is not valid UTF-8 once percent-decoded")]
    NotUtf8,
    #[error(transparent)]
    Rule(#[from] NameError),
}

/// The percent-encoded name of a URL path segment, decoded and checked
/// against the name rules.
pub fn decode_name(encoded: &str) -> Result<String, BadName> {
    let name = percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|_| BadName::NotUtf8)?;
    check_name(&name)?;
    Ok(name.into_owned())
}

/// The URL path of a shared name.
pub fn file_url(name: &str) -> String {
    format!("{FILES_PREFIX}{}", utf8_percent_encode(name, PATH_SEGMENT))
}

/// The URL path of a shared name's piece list.
pub fn pieces_url(name: &str) -> String {
    format!("{PIECES_PREFIX}{}", utf8_percent_encode(name, PATH_SEGMENT))
}
