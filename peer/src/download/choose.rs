//! Which sources a download may use, and which content to fetch when the
//! sources of one name disagree.
//!
//! Votes are counted per distinct host, never per port: one machine running
//! three `peer serve` must not outvote an honest peer. When the sources
//! disagree, every alternative is told to the person (size, short digest,
//! hosts) so they can pin one with `--sha256`. Only IP literals are used as
//! hosts: a registry must not make a peer resolve names or reach whatever a
//! name points to. This module must not do I/O but those notes.

use std::net::{Ipv4Addr, Ipv6Addr};

use p2p_proto::protocol::Source;

use super::text::printable;
use crate::progress::Reporter;

/// Hex digits of a SHA-256 shown where alternatives are listed.
pub const SHORT_SHA256_HEX: usize = 12;

/// Most hosts named per alternative in the disagreement notes.
const HOSTS_SHOWN: usize = 5;

/// One content registered under a name: its size and SHA-256, the distinct
/// hosts that registered it (in the registry's order) and how many sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alternative {
    pub size: u64,
    pub sha256: String,
    pub hosts: Vec<String>,
    pub sources: usize,
}

/// Whether `host` (as a registry or the DHT gives it) is an IP literal: a
/// dotted IPv4 address or a bracketed IPv6 one. Anything else (`localhost`,
/// `0x7f.0.0.1`, `2130706433`) would need resolving, and is refused.
pub fn is_ip_literal(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        None => host.parse::<Ipv4Addr>().is_ok(),
    }
}

/// The sources whose host is an IP literal (the others are named in a
/// note and left out), each address once, in the registry's order.
pub fn usable(sources: &[Source], reporter: &Reporter) -> Vec<Source> {
    let mut out: Vec<Source> = Vec::with_capacity(sources.len());
    for source in sources {
        if !is_ip_literal(&source.host) {
            reporter.note(format_args!(
                "leaving out the source {}: not an IP address",
                printable(&source.addr())
            ));
            continue;
        }
        if out
            .iter()
            .any(|s| s.host == source.host && s.port == source.port)
        {
            continue;
        }
        out.push(source.clone());
    }
    out
}

/// Every content registered under the name, most distinct hosts first;
/// between equals, the one seen most recently (first in `sources`).
pub fn alternatives(sources: &[Source]) -> Vec<Alternative> {
    let mut all: Vec<Alternative> = Vec::new();
    for source in sources {
        let index = match all
            .iter()
            .position(|a| a.size == source.size && a.sha256 == source.sha256)
        {
            Some(index) => index,
            None => {
                all.push(Alternative {
                    size: source.size,
                    sha256: source.sha256.clone(),
                    hosts: Vec::new(),
                    sources: 0,
                });
                all.len() - 1
            }
        };
        let alt = &mut all[index];
        alt.sources += 1;
        if !alt.hosts.contains(&source.host) {
            alt.hosts.push(source.host.clone());
        }
    }
    // Stable: equal host counts keep the order of first appearance.
    all.sort_by_key(|a| std::cmp::Reverse(a.hosts.len()));
    all
}

/// The sources of the content the most distinct hosts registered (same
/// size and SHA-256); between equals, the one seen most recently. Keeps the
/// registry's order.
pub fn choose_content(sources: &[Source]) -> Vec<Source> {
    match alternatives(sources).first() {
        Some(best) => sources
            .iter()
            .filter(|s| s.size == best.size && s.sha256 == best.sha256)
            .cloned()
            .collect(),
        None => Vec::new(),
    }
}

/// The sources that registered the SHA-256 `sha256` (hex).
pub fn pinned(sources: &[Source], sha256: &str) -> Vec<Source> {
    sources
        .iter()
        .filter(|s| s.sha256.eq_ignore_ascii_case(sha256))
        .cloned()
        .collect()
}

/// 64 hex digits as a digest (`--sha256`); either case, as a person may
/// paste it.
pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    p2p_proto::hex::from_hex_array(&hex.to_ascii_lowercase())
}

/// When the sources of `name` disagree on its content, says so on stderr:
/// one line per alternative, the chosen one first. Called once the file is
/// there (a failure is one line on stderr, this would come before it).
pub fn report_disagreement(sources: &[Source], name: &str, reporter: &Reporter) {
    let all = alternatives(sources);
    if all.len() < 2 {
        return;
    }
    reporter.warn(format_args!(
        "the sources of {:?} disagree on its content ({} versions); took the one most hosts have, pin another with --sha256:",
        printable(name),
        all.len()
    ));
    for (i, alt) in all.iter().enumerate() {
        let mut hosts: Vec<String> = alt
            .hosts
            .iter()
            .take(HOSTS_SHOWN)
            .map(|h| printable(h).into_owned())
            .collect();
        if alt.hosts.len() > HOSTS_SHOWN {
            hosts.push(format!("and {} more", alt.hosts.len() - HOSTS_SHOWN));
        }
        reporter.warn(format_args!(
            "  {} {} bytes, sha256 {}…, {} host(s): {}",
            if i == 0 { "*" } else { "-" },
            alt.size,
            &alt.sha256[..alt.sha256.len().min(SHORT_SHA256_HEX)],
            alt.hosts.len(),
            hosts.join(", ")
        ));
    }
}
