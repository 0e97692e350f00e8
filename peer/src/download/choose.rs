//! Which content to fetch when the sources of one name disagree. This
//! module must not do I/O.

use p2p_proto::protocol::Source;

/// The sources of the content most of them registered (same size and
/// SHA-256); between equally common versions, the one seen most recently.
/// Keeps the registry's order.
pub fn choose_content(sources: &[Source]) -> Vec<Source> {
    let mut best: Option<(usize, &Source)> = None;
    for candidate in sources {
        let count = sources
            .iter()
            .filter(|s| s.size == candidate.size && s.sha256 == candidate.sha256)
            .count();
        if best.is_none_or(|(most, _)| count > most) {
            best = Some((count, candidate));
        }
    }
    let Some((_, chosen)) = best else {
        return Vec::new();
    };
    sources
        .iter()
        .filter(|s| s.size == chosen.size && s.sha256 == chosen.sha256)
        .cloned()
        .collect()
}
