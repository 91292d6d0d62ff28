//! Parsing model references, and finding a checkpoint by name in the worker's model folder
//! the way A1111's "Checkpoint name" does.
//!
//! Accepted forms:
//! * `builtin:tiny-sd`;
//! * `hf:org/repo[@revision][/path/in/repo.safetensors]` (a diffusers repo without a file);
//! * `s3://…`, `gs://…`, `az://…`, `file://…` object-store URLs, optionally pinned with
//!   `#sha256:<64 hex>`; `https://…` / `http://…`, which must be pinned, since nothing else
//!   says the server sent the intended bytes;
//! * an absolute path;
//! * a name: `sub/model.safetensors`, `model`, `model.safetensors [6ce0161689]`, or a short
//!   hash, looked up in the model folder.

use std::path::{Path, PathBuf};

use crate::engine::EngineError;

/// A parsed model reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    Builtin(String),
    /// A file or folder on this machine.
    Path(PathBuf),
    /// Looked up in the model folder; `hash` is the `[abcdef0123]` A1111 appends to titles.
    Name {
        name: String,
        hash: Option<String>,
    },
    Hub {
        repo: String,
        revision: Option<String>,
        file: Option<String>,
    },
    /// An object-store or HTTP(S) URL, with the sha256 its bytes must have.
    Url {
        url: String,
        sha256: Option<String>,
    },
}

fn invalid(reference: &str, expected: &str) -> EngineError {
    EngineError::param("model", format!("{reference:?}"), expected.to_string())
}

/// Reads a `#sha256:<hex>` (or `#sha256=<hex>`) pin off the end of a URL.
fn split_pin(reference: &str) -> Result<(String, Option<String>), EngineError> {
    let Some((url, fragment)) = reference.rsplit_once('#') else {
        return Ok((reference.to_string(), None));
    };
    let hex = fragment
        .strip_prefix("sha256:")
        .or_else(|| fragment.strip_prefix("sha256="))
        .ok_or_else(|| invalid(reference, "a URL ending in #sha256:<64 hex digits>"))?;
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(
            reference,
            "a sha256 pin of exactly 64 hex digits after #sha256:",
        ));
    }
    Ok((url.to_string(), Some(hex.to_ascii_lowercase())))
}

fn valid_repo_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 96
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !s.starts_with('.')
}

/// `org/repo[@revision][/file]`, after the `hf:`.
fn parse_hub(reference: &str, rest: &str) -> Result<ModelRef, EngineError> {
    const EXPECTED: &str = "hf:org/repo[@revision][/file.safetensors]";
    let (org, rest) = rest
        .split_once('/')
        .ok_or_else(|| invalid(reference, EXPECTED))?;
    let name_end = rest.find(['@', '/']).unwrap_or(rest.len());
    let name = &rest[..name_end];
    let mut rest = &rest[name_end..];
    let mut revision = None;
    if let Some(after) = rest.strip_prefix('@') {
        let end = after.find('/').unwrap_or(after.len());
        let rev = &after[..end];
        if rev.is_empty() || rev.contains("..") {
            return Err(invalid(reference, EXPECTED));
        }
        revision = Some(rev.to_string());
        rest = &after[end..];
    }
    let file = match rest.strip_prefix('/') {
        Some("") => None,
        Some(file) => {
            if file.split('/').any(|seg| seg.is_empty() || seg == "..") {
                return Err(invalid(reference, "a file path inside the repository"));
            }
            Some(file.to_string())
        }
        None => None,
    };
    if !valid_repo_part(org) || !valid_repo_part(name) {
        return Err(invalid(reference, EXPECTED));
    }
    Ok(ModelRef::Hub {
        repo: format!("{org}/{name}"),
        revision,
        file,
    })
}

/// Parses a reference (already trimmed, non-empty).
pub fn parse(reference: &str) -> Result<ModelRef, EngineError> {
    if reference.starts_with("builtin:") {
        return Ok(ModelRef::Builtin(reference.to_string()));
    }
    if let Some(rest) = reference.strip_prefix("hf:") {
        return parse_hub(reference, rest);
    }
    if let Some((scheme, _)) = reference.split_once("://") {
        let scheme = scheme.to_ascii_lowercase();
        let (url, sha256) = split_pin(reference)?;
        return match scheme.as_str() {
            "http" | "https" if sha256.is_none() => Err(invalid(
                reference,
                "an https URL pinned by its sha256: append #sha256:<64 hex digits>",
            )),
            "http" | "https" | "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "file" => {
                Ok(ModelRef::Url { url, sha256 })
            }
            _ => Err(invalid(
                reference,
                "a URL with scheme https, http, s3, gs, az or file",
            )),
        };
    }
    let path = Path::new(reference);
    if path.is_absolute() {
        return Ok(ModelRef::Path(path.to_path_buf()));
    }
    // A1111 titles end in the short hash: "model.safetensors [6ce0161689]".
    let (name, hash) = match reference.rsplit_once(" [") {
        Some((name, tail)) if tail.ends_with(']') => {
            let hash = &tail[..tail.len() - 1];
            if hash.chars().all(|c| c.is_ascii_hexdigit()) && !hash.is_empty() {
                (name.trim().to_string(), Some(hash.to_ascii_lowercase()))
            } else {
                (reference.to_string(), None)
            }
        }
        _ => (reference.to_string(), None),
    };
    Ok(ModelRef::Name { name, hash })
}

/// Checkpoint-like file extensions; pickles are listed so that naming one gets the pickle
/// explanation rather than "not found".
const CHECKPOINT_EXTENSIONS: &[&str] = &["safetensors", "ckpt", "pt", "pth", "bin"];

/// One model in the model folder.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub path: PathBuf,
    /// Relative to the model folder, `/`-separated, with extension (A1111's title without
    /// the hash).
    pub relative: String,
}

impl Candidate {
    fn without_extension(&self) -> &str {
        match self.relative.rsplit_once('.') {
            Some((stem, ext)) if !ext.contains('/') && self.path.is_file() => stem,
            _ => &self.relative,
        }
    }

    fn stem(&self) -> &str {
        let base = self.without_extension();
        base.rsplit('/').next().unwrap_or(base)
    }
}

/// Checkpoint files and diffusers folders under `root`, sorted by relative path.
pub fn list_models(root: &Path) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let relative = path
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().replace('\\', "/"))
                .unwrap_or_default();
            if path.is_dir() {
                if path.join("model_index.json").is_file() {
                    out.push(Candidate { path, relative });
                } else if depth < 4 {
                    stack.push((path, depth + 1));
                }
            } else if path
                .extension()
                .map(|e| e.to_string_lossy().to_ascii_lowercase())
                .is_some_and(|e| CHECKPOINT_EXTENSIONS.contains(&e.as_str()))
            {
                out.push(Candidate { path, relative });
            }
        }
    }
    out.sort_by(|a, b| a.relative.cmp(&b.relative));
    out
}

/// A1111's lookup order: the exact relative path, the path without extension, the file stem,
/// a short hash, then the shortest title containing the name. `short_hash` is only called for
/// names that look like a hash.
pub fn find_by_name<'a>(
    candidates: &'a [Candidate],
    name: &str,
    short_hash: &mut dyn FnMut(&Candidate) -> Option<String>,
) -> Option<&'a Candidate> {
    let name = name.replace('\\', "/");
    let shortest = |mut found: Vec<&'a Candidate>| {
        found.sort_by_key(|c| (c.relative.len(), c.relative.clone()));
        found.into_iter().next()
    };
    if let Some(c) = candidates.iter().find(|c| c.relative == name) {
        return Some(c);
    }
    if let Some(c) = candidates.iter().find(|c| c.without_extension() == name) {
        return Some(c);
    }
    let by_stem: Vec<_> = candidates.iter().filter(|c| c.stem() == name).collect();
    if let Some(c) = shortest(by_stem) {
        return Some(c);
    }
    if name.len() == 10 && name.chars().all(|c| c.is_ascii_hexdigit()) {
        let wanted = name.to_ascii_lowercase();
        if let Some(c) = candidates
            .iter()
            .find(|c| short_hash(c).as_deref() == Some(&wanted))
        {
            return Some(c);
        }
    }
    shortest(
        candidates
            .iter()
            .filter(|c| c.relative.contains(&name))
            .collect(),
    )
}
