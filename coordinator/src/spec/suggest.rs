//! "Did you mean" hints for misspelt keys and names.

use super::{ALIASES, KNOWN_KEYS};

/// The closest known key, if the unknown one is plausibly a typo or a common synonym.
pub(super) fn suggest(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    if let Some((_, to)) = ALIASES.iter().find(|(from, _)| *from == lower) {
        return Some(to);
    }
    let (best, distance) = KNOWN_KEYS
        .iter()
        .map(|k| (*k, edit_distance(&lower, k)))
        .min_by_key(|(_, d)| *d)?;
    let limit = if lower.len() <= 4 { 1 } else { 2 };
    (distance <= limit).then_some(best)
}

/// Optimal-string-alignment distance: a swapped pair of letters counts as one typo.
fn edit_distance(a: &str, b: &str) -> usize {
    strsim::osa_distance(a, b)
}

pub(crate) fn nearest<'a>(value: &str, options: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    options
        .map(|o| (o, edit_distance(&value.to_lowercase(), &o.to_lowercase())))
        .filter(|(_, d)| *d <= 2)
        .min_by_key(|(_, d)| *d)
        .map(|(o, _)| o)
}
