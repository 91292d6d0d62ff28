//! The infotext's account of extra networks: A1111's "Lora hashes" (written when the
//! networks are activated) and "TI hashes" (written after the first pass's prompts are
//! encoded), as `name: hash12` lists.

use crate::models::embeddings::EmbeddingSet;
use crate::models::lora::{LoraTag, LoraUse};
use crate::models::ModelResolver;

use super::EngineError;

/// A1111 strips these from names so the list stays parseable.
fn clean(name: &str) -> String {
    name.replace([':', ','], "")
}

/// `name: hash` for each LoRA as the prompt mentions it, in order of first mention; a name
/// mentioned twice is listed once, as A1111's dict keeps it.
pub(super) fn lora_hashes(
    resolver: &ModelResolver,
    tags: &[LoraTag],
    loras: &[LoraUse],
) -> Result<String, EngineError> {
    let mut entries: Vec<(String, String)> = Vec::new();
    for (tag, lora) in tags.iter().zip(loras) {
        let hash = resolver.lora_hash(&lora.path)?;
        let name = clean(&tag.name);
        match entries.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = hash,
            None => entries.push((name, hash)),
        }
    }
    Ok(join(&entries))
}

/// `name: hash` for each embedding the first pass used, in A1111's order.
pub(super) fn ti_hashes(
    resolver: &ModelResolver,
    embeddings: &EmbeddingSet<'_>,
) -> Result<String, EngineError> {
    let entries = embeddings
        .used()
        .into_iter()
        .map(|used| Ok((clean(&used.name), resolver.embedding_hash(&used.path)?)))
        .collect::<Result<Vec<_>, EngineError>>()?;
    Ok(join(&entries))
}

fn join(entries: &[(String, String)]) -> String {
    entries
        .iter()
        .map(|(name, hash)| format!("{name}: {hash}"))
        .collect::<Vec<_>>()
        .join(", ")
}
