//! Dataset runs (`dataset = "name"` in a sweep): resumable and deduplicated.
//!
//! A dataset's job id is derived from its name, so submitting the same spec again finds the
//! job it made before. Each of its tasks carries a *cell key*: SHA-256 of the canonical
//! encoding of everything in its `RenderParams` that affects the image. The store keeps one
//! task per (job, cell key), so a re-submission adds only cells whose key is new (with image
//! indices after the existing ones), returns failed, discarded and cancelled cells to the
//! queue, and leaves completed and in-flight cells alone. A random seed (-1) in a dataset is
//! derived from the name too, so the same spec always makes the same cells.

use std::collections::BTreeMap;

use sdfarm_proto::RenderParams;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A cell key: SHA-256 of the canonical parameters.
pub type CellKey = [u8; 32];

/// The job id of dataset `name`: a UUID-shaped digest of the name (RFC 9562 version 8,
/// "custom"), so it looks like every other job id and never collides with a random one.
pub fn job_id(name: &str) -> String {
    let digest = Sha256::digest(format!("sdfarm dataset\0{name}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(bytes).to_string()
}

/// The seed a dataset uses where its spec says -1 (`which` is "seed" or "subseed"), in
/// A1111's random-seed range.
pub fn name_seed(name: &str, which: &str) -> i64 {
    let digest = Sha256::digest(format!("sdfarm dataset {which}\0{name}").as_bytes());
    let word = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    (word % crate::expand::RANDOM_SEED_BOUND as u64) as i64
}

/// Fields that describe how a prompt was made, not what is rendered: two cells that differ
/// only here make the same image.
const NOT_RENDERED: &[&str] = &["prompt_template", "prompt_choices"];

/// The canonical encoding of `params`: a JSON object with keys sorted, fields at their
/// default values left out (so a field added to `RenderParams` later does not change the
/// keys of existing cells), and the [`NOT_RENDERED`] fields left out.
pub fn canonical(params: &RenderParams) -> String {
    let Ok(Value::Object(map)) = serde_json::to_value(params) else {
        unreachable!("RenderParams serialises to an object");
    };
    let sorted: BTreeMap<String, Value> = map
        .into_iter()
        .filter(|(k, v)| {
            !NOT_RENDERED.contains(&k.as_str())
                && match v {
                    Value::Number(n) => n.as_f64() != Some(0.0),
                    Value::String(s) => !s.is_empty(),
                    Value::Array(a) => !a.is_empty(),
                    Value::Bool(b) => *b,
                    Value::Null => false,
                    Value::Object(o) => !o.is_empty(),
                }
        })
        .collect();
    serde_json::to_string(&sorted).expect("JSON values serialise")
}

pub fn cell_key(params: &RenderParams) -> CellKey {
    Sha256::digest(canonical(params).as_bytes()).into()
}

pub fn key_hex(key: &CellKey) -> String {
    hex::encode(key)
}

/// A stored key read back; `None` when it is not 64 hex digits.
pub fn parse_key(text: &str) -> Option<CellKey> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(text, &mut key).ok()?;
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_ignore_how_the_prompt_was_made_but_not_what_is_rendered() {
        let p = RenderParams {
            prompt: "a red cat".into(),
            seed: 5,
            steps: 20,
            ..Default::default()
        };
        let mut q = p.clone();
        q.prompt_template = "a {red|blue} cat".into();
        q.prompt_choices = vec!["red".into()];
        assert_eq!(cell_key(&p), cell_key(&q));
        for change in [
            |p: &mut RenderParams| p.seed = 6,
            |p: &mut RenderParams| p.prompt = "a blue cat".into(),
            |p: &mut RenderParams| p.cfg_scale = 7.5,
            |p: &mut RenderParams| p.batch_index = 1,
        ] {
            let mut r = p.clone();
            change(&mut r);
            assert_ne!(cell_key(&p), cell_key(&r), "{r:?}");
        }
        assert_eq!(parse_key(&key_hex(&cell_key(&p))), Some(cell_key(&p)));
    }

    #[test]
    fn dataset_ids_and_seeds_follow_the_name() {
        assert_eq!(job_id("faces"), job_id("faces"));
        assert_ne!(job_id("faces"), job_id("faces2"));
        assert!(uuid::Uuid::parse_str(&job_id("faces")).is_ok());
        let s = name_seed("faces", "seed");
        assert_eq!(s, name_seed("faces", "seed"));
        assert_ne!(s, name_seed("faces", "subseed"));
        assert!((0..crate::expand::RANDOM_SEED_BOUND).contains(&s));
    }
}
