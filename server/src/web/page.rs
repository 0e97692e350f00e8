//! The registry's read-only HTML page: a search form (FIND), its results,
//! and the registry's counts. Self-contained (inline style, no scripts, no
//! external resources); every text from the registry is escaped.

use std::fmt::Write as _;

use p2p_proto::protocol::FindHit;
use p2p_proto::units::human_size;

use crate::store::admin::Stats;

/// Hex digits of a SHA-256 shown in the table (the full one is its tooltip).
const SHORT_SHA: usize = 12;

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1rem auto;max-width:60rem;padding:0 1rem}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #ddd}\
td.n{text-align:right}input{font-size:1rem;padding:.3rem;width:min(30rem,70%)}code{font-size:.9em}\
.err{color:#a00}";

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n{body}</body></html>\n",
        escape(title)
    )
}

/// The page: the form with `query`, the FIND results when a search was made,
/// and the counts when they could be read.
pub fn index(
    query: &str,
    found: Option<&Result<Vec<FindHit>, String>>,
    stats: Option<&Stats>,
) -> String {
    let mut body = String::new();
    body.push_str("<h1>p2p registry</h1>\n");
    let _ = writeln!(
        body,
        "<form method=\"get\" action=\"/\" role=\"search\"><label for=\"q\">Find files by words of their name</label><br>\
         <input id=\"q\" name=\"q\" type=\"search\" value=\"{}\" autofocus> <button type=\"submit\">Find</button></form>",
        escape(query)
    );
    match found {
        None => {}
        Some(Err(why)) => {
            let _ = writeln!(
                body,
                "<p class=\"err\">The search failed: {}</p>",
                escape(why)
            );
        }
        Some(Ok(hits)) if hits.is_empty() => {
            let _ = writeln!(
                body,
                "<p>No live file matches <q>{}</q>.</p>",
                escape(query)
            );
        }
        Some(Ok(hits)) => {
            let _ = writeln!(
                body,
                "<p>{} result(s) for <q>{}</q>:</p>",
                hits.len(),
                escape(query)
            );
            body.push_str("<table><thead><tr><th>Name</th><th>Size</th><th>Sources</th><th>SHA-256</th></tr></thead><tbody>\n");
            for hit in hits {
                let short = hit.sha256.get(..SHORT_SHA).unwrap_or(&hit.sha256);
                let _ = writeln!(
                    body,
                    "<tr><td>{}</td><td class=\"n\" title=\"{} bytes\">{}</td><td class=\"n\">{}</td><td><code title=\"{}\">{}</code></td></tr>",
                    escape(&hit.name),
                    hit.size,
                    human_size(hit.size),
                    hit.sources,
                    escape(&hit.sha256),
                    escape(short),
                );
            }
            body.push_str("</tbody></table>\n");
        }
    }
    match stats {
        Some(stats) => {
            let _ = writeln!(
                body,
                "<h2>Registry</h2><p>{} live registration(s) of {} file name(s) by {} peer(s); {} expired.</p>",
                stats.live, stats.files, stats.peers, stats.expired
            );
            if !stats.top_names.is_empty() {
                body.push_str("<table><thead><tr><th>Most shared</th><th>Live sources</th></tr></thead><tbody>\n");
                for top in &stats.top_names {
                    let _ = writeln!(
                        body,
                        "<tr><td><a href=\"/?q={}\">{}</a></td><td class=\"n\">{}</td></tr>",
                        escape(&query_words(&top.name)),
                        escape(&top.name),
                        top.live
                    );
                }
                body.push_str("</tbody></table>\n");
            }
        }
        None => {
            body.push_str("<p class=\"err\">The registry's counts cannot be read just now.</p>\n")
        }
    }
    body.push_str("<p><a href=\"/metrics\">Metrics</a> (Prometheus text format)</p>\n");
    document("p2p registry", &body)
}

/// A search for `name`'s words, percent-encoded for a `q=` link.
fn query_words(name: &str) -> String {
    let words: Vec<&str> = name
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    percent_encoding::utf8_percent_encode(&words.join(" "), percent_encoding::NON_ALPHANUMERIC)
        .to_string()
}

/// A page that only says what was wrong with the request.
pub fn error(why: &str) -> String {
    document(
        "p2p registry",
        &format!(
            "<h1>p2p registry</h1><p class=\"err\">{}</p><p><a href=\"/\">Back</a></p>\n",
            escape(why)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn results_are_escaped() {
        let hits = vec![FindHit {
            sources: 2,
            size: 2048,
            sha256: "ab".repeat(32),
            name: "<script>x</script>.txt".into(),
        }];
        let page = index("<q>", Some(&Ok(hits)), None);
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;x&lt;/script&gt;.txt"));
        assert!(page.contains("2.0 KiB"));
        assert!(page.contains("value=\"&lt;q&gt;\""));
    }
}
