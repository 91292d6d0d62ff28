//! A job's manifest: `manifest.jsonl` and `manifest.parquet` beside its images, one row per
//! completed cell (object key, sha256, size, full render parameters, the prompt template and
//! the choices made in it, model hash, worker, timings, attempt).
//!
//! Rows come from the store, never from the worker reports as they arrive: the store records
//! one completion per task (fenced on its lease), so a manifest written from it has exactly
//! one row per completed cell however many attempts, retries and restarts the job went
//! through. Width and height are read from each PNG's header in the object store, so they are
//! the stored image's real size (hires fix changes it).

mod job;
mod parquet_file;

pub use job::{upload, ManifestError, ManifestSummary};

use sdfarm_proto::RenderParams;
use serde::{Deserialize, Serialize};

use crate::store::CompletedTask;

/// The JSON-lines manifest, under the job's output prefix.
pub const JSONL_OBJECT: &str = "manifest.jsonl";
/// The same rows as Parquet.
pub const PARQUET_OBJECT: &str = "manifest.parquet";

/// One rendered image as the manifest lists it (one JSON line, one Parquet row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestRow {
    /// Object key of the PNG, relative to the store URL.
    pub key: String,
    pub image_index: u32,
    /// Hex sha256 of the PNG bytes, as the worker uploaded them.
    pub sha256: String,
    pub width: u32,
    pub height: u32,
    pub prompt: String,
    pub negative_prompt: String,
    pub seed: i64,
    /// The prompt before dynamic-prompt variants and wildcards were resolved (empty when it
    /// had none), and the choice made at each, in order.
    pub prompt_template: String,
    pub prompt_choices: Vec<String>,
    /// Model reference as the sweep named it.
    pub model: String,
    /// `Model hash` of the infotext (the checkpoint's short hash), when it has one.
    pub model_hash: Option<String>,
    /// Every render parameter (the A1111 txt2img API names).
    pub params: RenderParams,
    /// The worker whose completion was recorded.
    pub worker: Option<String>,
    /// The attempt that produced the image (1 for a first-time success).
    pub attempt: u32,
    pub render_ms: Option<u64>,
    /// Milliseconds since the Unix epoch.
    pub leased_at_ms: Option<i64>,
    pub completed_at_ms: i64,
    /// The PNG's `parameters` text.
    pub infotext: String,
}

impl ManifestRow {
    pub fn new(task: CompletedTask, width: u32, height: u32) -> ManifestRow {
        let p = &task.params;
        ManifestRow {
            key: task.output_key,
            image_index: task.image_index,
            sha256: task.sha256,
            width,
            height,
            prompt: p.prompt.clone(),
            negative_prompt: p.negative_prompt.clone(),
            seed: p.seed,
            prompt_template: p.prompt_template.clone(),
            prompt_choices: p.prompt_choices.clone(),
            model: p.model.clone(),
            model_hash: infotext_field(&task.infotext, "Model hash"),
            worker: task.worker,
            attempt: task.attempt,
            render_ms: task.render_ms,
            leased_at_ms: task.leased_at,
            completed_at_ms: task.completed_at,
            infotext: task.infotext,
            params: task.params,
        }
    }

    /// The row as one JSON line (without the newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("manifest rows serialise")
    }
}

/// The value of `name` in the infotext's last line (`Steps: 20, Sampler: Euler, …`), unquoted.
/// Values that hold commas are quoted by A1111; a value starting with `"` ends at the next
/// unescaped `"`.
pub fn infotext_field(infotext: &str, name: &str) -> Option<String> {
    let line = infotext.lines().last()?;
    let mut rest = line;
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ']);
        let (key, after) = rest.split_once(": ")?;
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut end = None;
            let mut escaped = false;
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let end = end?;
            (quoted[..end].replace("\\\"", "\""), &quoted[end + 1..])
        } else {
            match after.find(", ") {
                Some(i) => (after[..i].to_string(), &after[i..]),
                None => (after.to_string(), ""),
            }
        };
        if key == name {
            return Some(value);
        }
        rest = next;
    }
    None
}

/// Width and height from a PNG's IHDR chunk (bytes 16..24 of the file).
pub fn png_size(header: &[u8]) -> Option<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if header.len() < 24 || &header[..8] != SIGNATURE || &header[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(header[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(header[20..24].try_into().ok()?);
    Some((w, h))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFOTEXT: &str = "a cat, {red|blue}\nNegative prompt: blurry\nSteps: 2, Sampler: Euler, \
        Schedule type: Automatic, CFG scale: 7, Seed: 5, Size: 32x32, Model hash: 1a2b3c4d, \
        Model: tiny-sd, Lora hashes: \"a: 0123, b: 4567\", Version: sdfarm";

    #[test]
    fn infotext_fields_are_read_from_the_last_line() {
        assert_eq!(
            infotext_field(INFOTEXT, "Model hash").as_deref(),
            Some("1a2b3c4d")
        );
        assert_eq!(
            infotext_field(INFOTEXT, "Model").as_deref(),
            Some("tiny-sd")
        );
        assert_eq!(
            infotext_field(INFOTEXT, "Lora hashes").as_deref(),
            Some("a: 0123, b: 4567")
        );
        assert_eq!(
            infotext_field(INFOTEXT, "Version").as_deref(),
            Some("sdfarm")
        );
        assert_eq!(infotext_field(INFOTEXT, "Hires upscale"), None);
    }

    #[test]
    fn png_size_reads_the_header_and_refuses_other_files() {
        let mut png = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut png, 48, 16);
            enc.set_color(png::ColorType::Rgb);
            let mut w = enc.write_header().unwrap();
            w.write_image_data(&[0u8; 48 * 16 * 3]).unwrap();
        }
        assert_eq!(png_size(&png[..24]), Some((48, 16)));
        assert_eq!(png_size(b"GIF89a not a png at all...."), None);
        assert_eq!(png_size(&png[..10]), None);
    }
}
