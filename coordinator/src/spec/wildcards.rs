//! The `[wildcards]` table: dynamic prompts (sd-dynamic-prompts syntax) in `prompt` and
//! `negative_prompt`, and the wildcard files they draw from.
//!
//! ```toml
//! [wildcards]
//! mode = "random"        # or "combinatorial" (the default): every combination is a cell
//! count = 1000           # random: cells to draw; combinatorial: at most this many
//! folder = "wildcards"   # __name__ reads <folder>/name.txt, relative to the sweep file
//! ```
//!
//! Without a `[wildcards]` table braces and double underscores are plain prompt text, so
//! sweeps written before dynamic prompts existed mean what they meant. Parsing here is
//! pure: the files come in `files` (name → file text), which `sdfarm` fills from `folder`
//! before it submits (see [`bundle_folder`]), so the stored sweep is self-contained and a
//! coordinator never reads a client's disk.

use std::collections::BTreeMap;
use std::path::Path;

use crate::dynamic::{self, Compiled, Library, Template};

use super::source::{Entry, Raw};
use super::{Result, SpecError, SpecErrorKind, SweepFormat};

/// Most prompt combinations a combinatorial `[wildcards]` may have before the coordinator's
/// own cell limit is even consulted: beyond this, listing them is never what was meant.
pub const MAX_COMBINATIONS: u64 = 1_000_000;
pub const COUNT_RANGE: std::ops::RangeInclusive<i64> = 1..=100_000_000;
const KEYS: &[&str] = &["mode", "count", "folder", "files"];
const SYNTAX: &str = "sd-dynamic-prompts syntax: {a|b}, {2$$a|b|c}, {1-3$$ and $$a|b|c}, \
                      {0.5::a|b}, __wildcard__ (\\{ \\} \\| for literal characters)";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WildcardMode {
    /// Every combination of the prompt's (and negative prompt's) choices is a cell.
    Combinatorial,
    /// `count` cells, each drawing its choices from the job seed and its index.
    Random,
}

/// A validated `[wildcards]` table with its templates compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct WildcardsSpec {
    pub mode: WildcardMode,
    /// Random: cells drawn. Combinatorial: the cap, if one was written.
    pub count: Option<u64>,
    pub folder: Option<String>,
    /// The prompt and negative prompt as written.
    pub prompt_template: String,
    pub negative_template: String,
    pub prompt: Compiled,
    pub negative: Compiled,
}

/// One wildcard cell's prompts and the choices that made them.
#[derive(Debug, Clone, PartialEq)]
pub struct WildcardCell {
    pub prompt: dynamic::Resolved,
    pub negative: dynamic::Resolved,
}

impl WildcardsSpec {
    /// Wildcard cells: each is then expanded as the rest of the sweep says.
    pub fn cells(&self) -> u64 {
        match self.mode {
            WildcardMode::Random => self.count.unwrap_or(1),
            WildcardMode::Combinatorial => {
                let all = self.prompt.count().saturating_mul(self.negative.count());
                self.count.map_or(all, |c| c.min(all))
            }
        }
    }

    /// Wildcard cell `w` (`w < cells()`); `seed` is the job's resolved seed.
    pub fn cell(&self, w: u64, seed: i64) -> WildcardCell {
        match self.mode {
            WildcardMode::Combinatorial => {
                let n = self.negative.count();
                WildcardCell {
                    prompt: self.prompt.nth(w / n),
                    negative: self.negative.nth(w % n),
                }
            }
            WildcardMode::Random => {
                let mut rng = dynamic::cell_rng(seed, w);
                let prompt = self.prompt.sample(&mut rng);
                WildcardCell {
                    prompt,
                    negative: self.negative.sample(&mut rng),
                }
            }
        }
    }
}

fn file_name(name: &str) -> String {
    format!("{name}.txt")
}

/// Where a missing wildcard was looked for, for the error naming it.
fn searched(folder: Option<&str>, name: &str) -> String {
    match folder {
        Some(f) => format!(
            "{} not found in folder {f:?} (relative to the sweep file)",
            file_name(name)
        ),
        None => format!(
            "{name:?} is not in [wildcards] files and no `folder` is set to read {} from",
            file_name(name)
        ),
    }
}

pub(super) fn read(
    e: &Entry,
    prompt: (&str, Option<&Entry>),
    negative: (&str, Option<&Entry>),
) -> Result<WildcardsSpec> {
    let Raw::Table(items) = &e.value else {
        return Err(super::wrong_type(e, "a table", KEYS.join(", ")));
    };
    let mut mode = WildcardMode::Combinatorial;
    let (mut count, mut folder) = (None, None);
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    let mut count_entry = None;
    for item in items.iter().filter(|i| !matches!(i.value, Raw::Null)) {
        let r = match item.key.as_str() {
            "mode" => match super::string(item, "\"combinatorial\" or \"random\"")?.as_str() {
                "combinatorial" => Ok(mode = WildcardMode::Combinatorial),
                "random" => Ok(mode = WildcardMode::Random),
                _ => Err(SpecError::at(
                    SpecErrorKind::InvalidValue,
                    item,
                    "is not a wildcard mode",
                    "\"combinatorial\" or \"random\"",
                )),
            },
            "count" => {
                count_entry = Some(item);
                super::int_in(item, COUNT_RANGE).map(|c| count = Some(c as u64))
            }
            "folder" => super::string(item, "a folder path").map(|f| folder = Some(f)),
            "files" => match &item.value {
                Raw::Table(entries) => entries
                    .iter()
                    .try_for_each(|f| {
                        super::string(f, "the text of a wildcard file, one option a line")
                            .map(|t| drop(files.insert(f.key.clone(), t)))
                    })
                    .map_err(|e| named(e, "files")),
                _ => Err(super::wrong_type(
                    item,
                    "a table",
                    "name = \"file text\" entries".into(),
                )),
            },
            _ => Err(SpecError::at(
                SpecErrorKind::UnknownKey,
                item,
                "is not a key of [wildcards]",
                KEYS.join(", "),
            )),
        };
        r.map_err(|err| named(err, "wildcards"))?;
    }
    if mode == WildcardMode::Random && count.is_none() {
        let mut err = SpecError::new(
            SpecErrorKind::MissingKey,
            "is missing: mode = \"random\" needs the number of cells to draw",
        );
        err.key = Some("wildcards.count".into());
        err.line = e.line;
        err.accepted = Some(super::read::range_text(&COUNT_RANGE));
        return Err(err);
    }

    let template = |(text, entry): (&str, Option<&Entry>)| -> Result<Template> {
        dynamic::parse(text).map_err(|err| {
            let entry = entry.expect("only written prompts can be malformed");
            SpecError::at(
                SpecErrorKind::InvalidValue,
                entry,
                format!("is not a valid dynamic prompt: {err}"),
                SYNTAX,
            )
        })
    };
    let (pt, nt) = (template(prompt)?, template(negative)?);
    let library = Library::gather(
        &[&pt, &nt],
        &|| files.keys().cloned().collect(),
        &mut |name| files.get(name).cloned(),
        &|name| searched(folder.as_deref(), name),
    )
    .map_err(|err| {
        let mut spec_err = SpecError::new(SpecErrorKind::InvalidValue, err.to_string());
        spec_err.line = e.line;
        spec_err.key = Some(if folder.is_some() {
            "wildcards.folder".into()
        } else {
            "wildcards".into()
        });
        spec_err
    })?;
    let spec = WildcardsSpec {
        mode,
        count,
        folder,
        prompt_template: prompt.0.to_string(),
        negative_template: negative.0.to_string(),
        prompt: Compiled::new(&pt, &library),
        negative: Compiled::new(&nt, &library),
    };
    let combinations = spec.prompt.count().saturating_mul(spec.negative.count());
    if mode == WildcardMode::Combinatorial && count.is_none() && combinations > MAX_COMBINATIONS {
        let shown = if combinations == u64::MAX {
            "more than 18 quintillion".to_string()
        } else {
            combinations.to_string()
        };
        let mut err = SpecError::new(
            SpecErrorKind::InvalidValue,
            format!(
                "combinatorial mode gives {shown} prompt combinations, more than the \
                 {MAX_COMBINATIONS} sdfarm lists"
            ),
        );
        err.key = Some("wildcards.mode".into());
        err.line = e.line;
        err.accepted = Some("mode = \"random\" with a count, or a count capping the list".into());
        return Err(err);
    }
    let _ = count_entry;
    Ok(spec)
}

/// Wildcard names of the `.txt` files under `dir`, sub-folders included (`people/job`), for
/// glob wildcards to match. An unreadable folder lists nothing: the error then says which
/// wildcard found no file.
fn txt_names(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = entry.path();
        if path.is_dir() {
            txt_names(&path, &format!("{prefix}{name}/"), out);
        } else if let Some(stem) = name.strip_suffix(".txt") {
            out.push(format!("{prefix}{stem}"));
        }
    }
}

fn named(mut err: SpecError, prefix: &str) -> SpecError {
    if let Some(k) = &err.key {
        if !k.starts_with(prefix) {
            err.key = Some(format!("{prefix}.{k}"));
        }
    }
    err
}

/// Why a sweep's wildcard folder could not be bundled.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("reading wildcard file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

/// The sweep text with the wildcard files its prompts use read from `[wildcards] folder`
/// (relative to `base_dir`, the sweep file's folder) into `[wildcards] files`, so the text
/// alone says everything. A sweep without a folder is returned unchanged. An object-store
/// folder (`s3://…`) is refused here: the client copies it first (see [`bundle_copy`]).
///
/// Only the files the prompts reach (directly or through other files) are read. The text is
/// re-serialised in its own format when something is added; keys and values are unchanged.
pub fn bundle_folder(
    text: &str,
    format: SweepFormat,
    base_dir: &Path,
) -> std::result::Result<String, BundleError> {
    bundle_with(text, format, |folder| {
        if folder.contains("://") {
            return Err(BundleError::Other(format!(
                "[wildcards] folder {folder:?}: an object-store prefix is read by the client \
                 (`sdfarm plan`, `sdfarm submit`); give a local folder here"
            )));
        }
        let dir = base_dir.join(folder);
        let shown = dir.display().to_string();
        Ok((dir, shown))
    })
}

/// As [`bundle_folder`], for a sweep whose `[wildcards] folder` names an object-store prefix
/// that the caller has copied to `copy` (keys relative to the prefix, `.txt` files only).
/// Errors name the folder as written, not the copy.
pub fn bundle_copy(
    text: &str,
    format: SweepFormat,
    copy: &Path,
) -> std::result::Result<String, BundleError> {
    bundle_with(text, format, |folder| {
        Ok((copy.to_path_buf(), folder.to_string()))
    })
}

/// `[wildcards] folder` as written, if the sweep parses and sets one.
pub fn folder_of(text: &str, format: SweepFormat) -> Option<String> {
    match document(text, format)?.pointer("/wildcards/folder") {
        Some(serde_json::Value::String(f)) => Some(f.clone()),
        _ => None,
    }
}

/// The sweep as JSON, or `None` when it does not parse (`parse_sweep` reports that, with its
/// line).
fn document(text: &str, format: SweepFormat) -> Option<serde_json::Value> {
    match format {
        SweepFormat::Toml => serde_json::to_value(toml::from_str::<toml::Table>(text).ok()?).ok(),
        SweepFormat::Json => serde_json::from_str(text).ok(),
    }
}

/// Bundles from the directory `locate` gives for the folder as written (with the name that
/// errors show for it).
fn bundle_with(
    text: &str,
    format: SweepFormat,
    locate: impl FnOnce(&str) -> std::result::Result<(std::path::PathBuf, String), BundleError>,
) -> std::result::Result<String, BundleError> {
    let Some(mut doc) = document(text, format) else {
        return Ok(text.to_string());
    };
    let folder = match doc.pointer("/wildcards/folder") {
        Some(serde_json::Value::String(f)) => f.clone(),
        _ => return Ok(text.to_string()),
    };
    let (dir, shown) = locate(&folder)?;
    let prompt = |key: &str| {
        doc.get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (pt, nt) = (prompt("prompt"), prompt("negative_prompt"));
    // Syntax errors are reported by `parse_sweep` with the key and line.
    let (Ok(pt), Ok(nt)) = (dynamic::parse(&pt), dynamic::parse(&nt)) else {
        return Ok(text.to_string());
    };
    let inline: BTreeMap<String, String> = doc
        .pointer("/wildcards/files")
        .and_then(|f| f.as_object())
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let mut read: BTreeMap<String, String> = BTreeMap::new();
    let mut io_error = None;
    let names = || {
        let mut names: Vec<String> = inline.keys().cloned().collect();
        txt_names(&dir, "", &mut names);
        names
    };
    let gathered = Library::gather(
        &[&pt, &nt],
        &names,
        &mut |name| {
            if let Some(t) = inline.get(name) {
                return Some(t.clone());
            }
            let path = dir.join(file_name(name));
            match std::fs::read_to_string(&path) {
                Ok(t) => {
                    read.insert(name.to_string(), t.clone());
                    Some(t)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => {
                    io_error.get_or_insert(BundleError::Io {
                        path: path.display().to_string(),
                        source: e,
                    });
                    None
                }
            }
        },
        &|name| format!("{} not found in folder {shown}", file_name(name)),
    );
    if let Some(e) = io_error {
        return Err(e);
    }
    if let Err(e) = gathered {
        return Err(BundleError::Other(format!("[wildcards] folder: {e}")));
    }
    if read.is_empty() {
        return Ok(text.to_string());
    }
    let wildcards = doc
        .get_mut("wildcards")
        .and_then(|w| w.as_object_mut())
        .expect("the folder was found in this table");
    let files = wildcards
        .entry("files")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    let Some(files) = files.as_object_mut() else {
        return Ok(text.to_string());
    };
    for (name, t) in read {
        files.insert(name, serde_json::Value::String(t));
    }
    match format {
        SweepFormat::Json => {
            serde_json::to_string_pretty(&doc).map_err(|e| BundleError::Other(e.to_string()))
        }
        SweepFormat::Toml => {
            let table: toml::Table =
                serde_json::from_value(doc).map_err(|e| BundleError::Other(e.to_string()))?;
            toml::to_string(&table).map_err(|e| BundleError::Other(e.to_string()))
        }
    }
}
