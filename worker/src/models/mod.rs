//! Model references, resolution to local files, and the built-in tiny model.
//!
//! A sweep names its model as written by the user: `builtin:tiny-sd`, a path to a diffusers
//! folder, or a path to a single-file A1111 checkpoint (`.safetensors`). [`ModelResolver`]
//! turns that into something the engine can load, plus the name and short hash that go into
//! the A1111 infotext ("Model", "Model hash").

pub mod ldm_keys;
pub mod safe_file;
pub mod single_file;
mod tiny;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::engine::config::{missing_files, REQUIRED_FILES};
use crate::engine::{EngineError, Pipeline};

pub use tiny::write_tiny_model;

/// The reference of the built-in tiny model.
pub const BUILTIN_TINY: &str = "builtin:tiny-sd";

const BUILTIN_PREFIX: &str = "builtin:";
/// File whose hash identifies a diffusers folder (the UNet carries the model's identity).
const HASHED_FILE: &str = "unet/diffusion_pytorch_model.safetensors";

/// How a model's weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A diffusers folder (`unet/`, `vae/`, `text_encoder/`, ...).
    Diffusers,
    /// One A1111 / original-layout `.safetensors` checkpoint.
    SingleFile,
}

/// A model reference resolved to something loadable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// The diffusers folder, or the checkpoint file for [`ModelFormat::SingleFile`].
    pub dir: PathBuf,
    pub format: ModelFormat,
    /// The folder name, the checkpoint's file stem (A1111's "Model"), or "tiny-sd" for the
    /// built-in model.
    pub name: String,
    /// First 10 lowercase hex digits of a sha256: of the UNet weights for a folder, of the
    /// whole file for a single checkpoint (A1111's "Model hash").
    pub hash: String,
}

impl ResolvedModel {
    /// Loads the model onto the CPU.
    pub fn load(&self) -> Result<Pipeline, EngineError> {
        match self.format {
            ModelFormat::Diffusers => Pipeline::load(&self.dir),
            ModelFormat::SingleFile => single_file::load_sd1(&self.dir, &candle_core::Device::Cpu),
        }
    }
}

/// A cached file hash with the size and modification time it was computed for.
type HashEntry = (u64, Option<SystemTime>, String);

/// Resolves model references; owns the cache directory the built-in model is written to.
pub struct ModelResolver {
    cache_dir: PathBuf,
    /// Hashes by file, invalidated when the file's size or modification time changes.
    hashes: Mutex<HashMap<PathBuf, HashEntry>>,
}

impl ModelResolver {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        ModelResolver {
            cache_dir: cache_dir.into(),
            hashes: Mutex::new(HashMap::new()),
        }
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Resolves `model_ref`:
    /// * `builtin:tiny-sd` → `<cache_dir>/builtin/tiny-sd`, written once;
    /// * a diffusers folder path → that folder, after checking its files exist;
    /// * a `.safetensors` checkpoint path → that file, after validating its header and
    ///   checking it is an SD 1.x checkpoint (pickles and anything else are refused with the
    ///   reason).
    pub fn resolve(&self, model_ref: &str) -> Result<ResolvedModel, EngineError> {
        let reference = model_ref.trim();
        if reference.is_empty() {
            return Err(EngineError::param(
                "model",
                "\"\"",
                format!("a model reference: {BUILTIN_TINY} or the path of a diffusers folder"),
            ));
        }
        let (dir, name) = if let Some(builtin) = reference.strip_prefix(BUILTIN_PREFIX) {
            if reference != BUILTIN_TINY {
                return Err(EngineError::ModelNotFound {
                    reference: reference.to_string(),
                    reason: format!(
                        "unknown built-in model {builtin:?}; available: {BUILTIN_TINY}"
                    ),
                });
            }
            (self.ensure_builtin_tiny()?, "tiny-sd".to_string())
        } else {
            let path = resolve_path(reference)?;
            if path.is_file() {
                return self.resolve_single_file(path);
            }
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| reference.to_string());
            (path, name)
        };
        let hash = self.short_hash(&dir.join(HASHED_FILE))?;
        Ok(ResolvedModel {
            dir,
            format: ModelFormat::Diffusers,
            name,
            hash,
        })
    }

    /// A single checkpoint file: its header is validated and its kind checked here, so a bad
    /// file fails before any weights are read.
    fn resolve_single_file(&self, path: PathBuf) -> Result<ResolvedModel, EngineError> {
        let file = safe_file::SafeFile::open(&path)?;
        single_file::require_sd1(&file)?;
        let name = path
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hash = self.short_hash(&path)?;
        Ok(ResolvedModel {
            dir: path,
            format: ModelFormat::SingleFile,
            name,
            hash,
        })
    }

    /// Writes the tiny model into the cache unless a complete copy is already there. The files
    /// go into a private temporary folder first and are renamed into place, so concurrent
    /// workers sharing a cache never see a half-written model.
    fn ensure_builtin_tiny(&self) -> Result<PathBuf, EngineError> {
        let parent = self.cache_dir.join("builtin");
        let target = parent.join("tiny-sd");
        if missing_files(&target).is_empty() {
            return Ok(target);
        }
        std::fs::create_dir_all(&parent).map_err(|e| EngineError::io(&parent, e))?;
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let temp = parent.join(format!(".tiny-sd.tmp-{}-{nanos}", std::process::id()));
        let result = write_tiny_model(&temp).and_then(|()| {
            if missing_files(&target).is_empty() {
                // Another worker finished first and may already be reading its copy: never
                // replace a complete model, drop ours instead.
                let _ = std::fs::remove_dir_all(&temp);
                return Ok(());
            }
            if target.exists() {
                // An incomplete copy from an interrupted older writer: replace it.
                std::fs::remove_dir_all(&target).map_err(|e| EngineError::io(&target, e))?;
            }
            std::fs::rename(&temp, &target).map_err(|e| EngineError::io(&target, e))
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&temp);
            // Another writer may have won the race; its copy is as good as ours.
            if missing_files(&target).is_empty() {
                return Ok(target);
            }
        }
        result.map(|()| target)
    }

    /// First 10 hex digits of the file's sha256, computed once per file version.
    fn short_hash(&self, path: &Path) -> Result<String, EngineError> {
        let meta = std::fs::metadata(path).map_err(|e| EngineError::io(path, e))?;
        let stamp = (meta.len(), meta.modified().ok());
        if let Some((len, modified, hash)) = self.hashes.lock().expect("hash cache").get(path) {
            if (*len, *modified) == stamp {
                return Ok(hash.clone());
            }
        }
        let hash = sha256_file(path)?[..10].to_string();
        self.hashes
            .lock()
            .expect("hash cache")
            .insert(path.to_path_buf(), (stamp.0, stamp.1, hash.clone()));
        Ok(hash)
    }
}

fn sha256_file(path: &Path) -> Result<String, EngineError> {
    let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| EngineError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Checks a path reference and returns the diffusers folder or checkpoint file it names.
fn resolve_path(reference: &str) -> Result<PathBuf, EngineError> {
    let path = PathBuf::from(reference);
    let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => EngineError::ModelNotFound {
            reference: reference.to_string(),
            reason: format!(
                "no such file or directory; expected {BUILTIN_TINY}, a diffusers folder or a .safetensors checkpoint"
            ),
        },
        _ => EngineError::io(&path, e),
    })?;
    if meta.is_file() {
        // Pickles are refused whatever they are called; other files go on to header checks.
        safe_file::refuse_pickle(&path)?;
        return Ok(path);
    }
    let missing = missing_files(&path);
    if !missing.is_empty() {
        let names: Vec<String> = missing
            .iter()
            .filter_map(|p| p.strip_prefix(&path).ok())
            .map(|p| p.display().to_string())
            .collect();
        return Err(EngineError::InvalidModel {
            path,
            reason: format!(
                "not a diffusers Stable Diffusion folder: missing {} (expected {})",
                names.join(", "),
                REQUIRED_FILES.join(", ")
            ),
        });
    }
    Ok(path)
}
