//! Finding files by words of their names: `FIND` over the registry, for
//! `peer find`, `peer get --find`, the menu's choice `2` and the
//! suggestions a failed `peer get NAME` prints. It also owns how a hit is
//! shown to a person (control characters escaped) and to a script (JSON).
//!
//! This module must not download anything, nor print: callers decide where
//! the lines go.

use p2p_proto::client::{Client, ClientError};
pub use p2p_proto::protocol::FindHit;
use p2p_proto::units::human_size;

use crate::registration::short_sha;

/// Most suggestions [`suggest`] gives (the menu lists them numbered).
pub const MAX_SUGGESTIONS: usize = 5;

/// Most names [`did_you_mean`] puts on its line: `peer get` fails with one
/// line, which must stay readable with names of up to 255 bytes.
pub const SUGGESTIONS_ON_ONE_LINE: usize = 3;

/// Why a search by words could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error("no words to find: give at least one word of a file name")]
    NoWords,
    #[error("cannot ask the registry to find {words:?}: {source}")]
    Registry { words: String, source: ClientError },
}

/// The words of `args`: each argument may hold several words separated by
/// whitespace (a quoted `"holiday photos"` is two words).
pub fn words_of<S: AsRef<str>>(args: &[S]) -> Vec<String> {
    args.iter()
        .flat_map(|a| a.as_ref().split_whitespace())
        .map(str::to_owned)
        .collect()
}

/// `FIND` over the registry at `registry`: the names matching every word
/// (prefix, case-insensitive), at most the registry's limit.
pub fn find(registry: &str, words: &[String]) -> Result<Vec<FindHit>, FindError> {
    if words.is_empty() {
        return Err(FindError::NoWords);
    }
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    Client::connect(registry)
        .and_then(|mut client| client.find(&refs))
        .map_err(|source| FindError::Registry {
            words: words.join(" "),
            source,
        })
}

/// The words the registry indexes in `name`: its runs of letters and
/// digits (`holiday`, `photos`, `2024`, `zip` in `Holiday Photos 2024.zip`).
pub fn name_words(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Hits close to `name`, which has no exact source: first the names that
/// hold every word of it, else those that hold its longest word. At most
/// [`MAX_SUGGESTIONS`]; empty when nothing is close or the registry cannot
/// be asked (a suggestion is a courtesy, never a failure).
pub fn suggest(registry: &str, name: &str) -> Vec<FindHit> {
    let words = name_words(name);
    let mut hits = find(registry, &words).unwrap_or_default();
    if hits.is_empty() && words.len() > 1 {
        if let Some(longest) = words.iter().max_by_key(|w| w.chars().count()) {
            hits = find(registry, std::slice::from_ref(longest)).unwrap_or_default();
        }
    }
    hits.retain(|h| h.name != name);
    hits.truncate(MAX_SUGGESTIONS);
    hits
}

/// The end of a `peer get` failure line for a name not found:
/// `did you mean "a.zip", "b.zip" or "c.zip"?` (the first
/// [`SUGGESTIONS_ON_ONE_LINE`] hits, escaped as the name in the line
/// before it is); `None` without hits.
pub fn did_you_mean(hits: &[FindHit]) -> Option<String> {
    let names: Vec<String> = hits
        .iter()
        .take(SUGGESTIONS_ON_ONE_LINE)
        .map(|hit| format!("{:?}", hit.name))
        .collect();
    let (last, first) = names.split_last()?;
    Some(if first.is_empty() {
        format!("did you mean {last}?")
    } else {
        format!("did you mean {} or {last}?", first.join(", "))
    })
}

/// `name` with control characters (and backslashes, so the result is
/// unambiguous) escaped as Rust does (`\n`, `\u{1b}`): a hostile registry
/// must not move a terminal's cursor or change its colours.
pub fn printable(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_control() || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One line for a person: name, size in human units, sources, short SHA-256.
pub fn describe_hit(hit: &FindHit) -> String {
    format!(
        "{}  ({}, {} source{}, sha256 {})",
        printable(&hit.name),
        human_size(hit.size),
        hit.sources,
        if hit.sources == 1 { "" } else { "s" },
        short_sha(&hit.sha256)
    )
}

/// The hits as one JSON array of objects with the keys `name`, `size`,
/// `sha256`, `sources` (numbers as JSON numbers).
pub fn to_json(hits: &[FindHit]) -> String {
    let mut out = String::from("[");
    for (i, hit) in hits.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"name\":");
        json_string(&mut out, &hit.name);
        out.push_str(&format!(",\"size\":{},\"sha256\":", hit.size));
        json_string(&mut out, &hit.sha256);
        out.push_str(&format!(",\"sources\":{}}}", hit.sources));
    }
    out.push(']');
    out
}

/// Appends `text` as a JSON string literal (RFC 8259 escapes).
fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(name: &str) -> FindHit {
        FindHit {
            sources: 2,
            size: 1536,
            sha256: "ab".repeat(32),
            name: name.to_owned(),
        }
    }

    #[test]
    fn words_split_on_whitespace_and_names_on_punctuation() {
        assert_eq!(
            words_of(&["holiday photos", " zip "]),
            ["holiday", "photos", "zip"]
        );
        assert!(words_of::<&str>(&[]).is_empty());
        assert_eq!(
            name_words("Holiday Photos 2024.zip"),
            ["Holiday", "Photos", "2024", "zip"]
        );
        assert_eq!(name_words("big.bin"), ["big", "bin"]);
        assert!(name_words("...").is_empty());
    }

    #[test]
    fn control_characters_are_escaped_for_terminals() {
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("tab\there"), "tab\\there");
        assert_eq!(printable("back\\slash"), "back\\\\slash");
        assert_eq!(printable("café menu.txt"), "café menu.txt");
        let line = describe_hit(&hit("x\ny"));
        assert!(
            line.starts_with("x\\ny  (1.5 KiB, 2 sources, sha256 "),
            "{line}"
        );
    }

    #[test]
    fn suggestions_fit_one_line() {
        assert_eq!(did_you_mean(&[]), None);
        assert_eq!(
            did_you_mean(&[hit("a.zip")]).as_deref(),
            Some("did you mean \"a.zip\"?")
        );
        let many: Vec<FindHit> = ["a", "b\nc", "d", "e"].into_iter().map(hit).collect();
        let line = did_you_mean(&many).unwrap();
        assert_eq!(line, "did you mean \"a\", \"b\\nc\" or \"d\"?");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn json_is_one_array_with_the_four_keys() {
        assert_eq!(to_json(&[]), "[]");
        let json = to_json(&[hit("a \"b\"\u{1}"), hit("c")]);
        let sha = "ab".repeat(32);
        assert_eq!(
            json,
            format!(
                "[{{\"name\":\"a \\\"b\\\"\\u0001\",\"size\":1536,\"sha256\":\"{sha}\",\"sources\":2}},\
                 {{\"name\":\"c\",\"size\":1536,\"sha256\":\"{sha}\",\"sources\":2}}]"
            )
        );
    }

    #[test]
    fn finding_without_words_is_refused_before_any_connection() {
        assert!(matches!(find("127.0.0.1:1", &[]), Err(FindError::NoWords)));
    }
}
