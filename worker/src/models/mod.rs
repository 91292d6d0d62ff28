//! Model references, resolution to local files, and the built-in tiny model.
//!
//! A sweep names its model as written by the user: `builtin:tiny-sd`, a path to a diffusers
//! folder, or a path to a single-file A1111 checkpoint (`.safetensors`). [`ModelResolver`]
//! turns that into something the engine can load, plus the name and short hash that go into
//! the A1111 infotext ("Model", "Model hash").

pub mod assemble;
pub mod disk_cache;
pub mod embeddings;
pub mod fetch;
pub mod ldm_keys;
pub mod lora;
pub mod reference;
pub mod safe_file;
pub mod single_file;
pub mod single_file_sd2;
pub mod single_file_xl;
mod tiny;
pub mod vae;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::engine::config::{missing_files, REQUIRED_FILES};
use crate::engine::{EngineError, Pipeline};
use disk_cache::{sha256_file, DiskCache};
use reference::ModelRef;

pub use tiny::write_tiny_model;

/// The reference of the built-in tiny model.
pub const BUILTIN_TINY: &str = "builtin:tiny-sd";

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
    /// Bytes the weights take in memory once loaded as float32, from the safetensors headers
    /// (no tensor data is read). The engine's model cache is capped by this.
    pub fn memory_bytes(&self) -> Result<u64, EngineError> {
        let files: Vec<PathBuf> = match self.format {
            ModelFormat::SingleFile => vec![self.dir.clone()],
            ModelFormat::Diffusers => REQUIRED_FILES
                .iter()
                .copied()
                .chain(["text_encoder_2/model.safetensors"])
                .filter(|f| f.ends_with(".safetensors"))
                .map(|f| self.dir.join(f))
                .filter(|p| p.is_file() || !p.ends_with("text_encoder_2/model.safetensors"))
                .collect(),
        };
        let mut total = 0u64;
        for file in files {
            let header = safe_file::SafeFile::open(&file)?;
            for info in header.tensors().values() {
                let numel: u64 = info.shape.iter().map(|&d| d as u64).product();
                total = total.saturating_add(numel.saturating_mul(4));
            }
        }
        Ok(total)
    }

    /// Loads the model onto the worker's device (`SDFARM_DEVICE`) with LoRA networks merged
    /// into its weights.
    pub fn load_with_loras(&self, loras: &[lora::LoraUse]) -> Result<Pipeline, EngineError> {
        let device = crate::engine::device::default_device()?;
        let mut tensors = assemble::ModelTensors::read(self, &device)?;
        for l in loras {
            lora::merge(&mut tensors, l, &device)?;
        }
        tensors.into_pipeline(&device)
    }

    /// Loads the model onto the worker's device (`SDFARM_DEVICE`, the CPU unless a CUDA build
    /// finds a GPU), as [`Pipeline::load`] does for folders.
    pub fn load(&self) -> Result<Pipeline, EngineError> {
        match self.format {
            ModelFormat::Diffusers => Pipeline::load(&self.dir),
            ModelFormat::SingleFile => {
                let device = crate::engine::device::default_device()?;
                let file = safe_file::SafeFile::open(&self.dir)?;
                match single_file::require_checkpoint(&file)? {
                    single_file::FileKind::Sdxl => single_file_xl::load_sdxl(&self.dir, &device),
                    single_file::FileKind::Sd2 => single_file_sd2::load_sd2(&self.dir, &device),
                    _ => single_file::load_sd1(&self.dir, &device),
                }
            }
        }
    }
}

/// A cached file hash with the size and modification time it was computed for.
type HashEntry = (u64, Option<SystemTime>, String);

/// Which hash of a file: A1111 hashes checkpoints, VAEs and embeddings whole, and LoRA
/// safetensors over their data section only (kohya's "addnet" hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum HashKind {
    Whole,
    Addnet,
}

/// Resolves model references; owns the cache directory the built-in model and downloads are
/// written to.
pub struct ModelResolver {
    cache_dir: PathBuf,
    /// Where names (A1111's "Checkpoint name") are looked up.
    models_dir: Option<PathBuf>,
    /// Where VAE names (`sd_vae`) are looked up.
    vae_dir: Option<PathBuf>,
    /// Where `<lora:name>` names are looked up.
    lora_dir: Option<PathBuf>,
    /// Where textual-inversion embeddings are found by name.
    embeddings_dir: Option<PathBuf>,
    embedding_cache: embeddings::EmbeddingCache,
    downloads: DiskCache,
    /// References a background prefetch is bringing onto disk now.
    prefetching: Mutex<std::collections::HashSet<String>>,
    /// Full sha256 hashes by file, invalidated when the file's size or modification time
    /// changes.
    hashes: Mutex<HashMap<(PathBuf, HashKind), HashEntry>>,
}

/// Download cache cap when `SDFARM_MODEL_CACHE_BYTES` does not set one: room for a handful of
/// SDXL checkpoints.
pub const DEFAULT_CACHE_CAP_BYTES: u64 = 64 << 30;

impl ModelResolver {
    /// A resolver caching under `cache_dir`. The model folder comes from `SDFARM_MODELS_DIR`
    /// and the download cap from `SDFARM_MODEL_CACHE_BYTES` when set; see the `with_*` methods.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        let cache_dir = cache_dir.into();
        let cap = std::env::var("SDFARM_MODEL_CACHE_BYTES")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_CACHE_CAP_BYTES);
        ModelResolver {
            downloads: DiskCache::new(cache_dir.join("downloads"), cap),
            models_dir: std::env::var_os("SDFARM_MODELS_DIR").map(PathBuf::from),
            vae_dir: std::env::var_os("SDFARM_VAE_DIR").map(PathBuf::from),
            lora_dir: std::env::var_os("SDFARM_LORA_DIR").map(PathBuf::from),
            embeddings_dir: std::env::var_os("SDFARM_EMBEDDINGS_DIR").map(PathBuf::from),
            embedding_cache: embeddings::EmbeddingCache::default(),
            prefetching: Mutex::new(Default::default()),
            cache_dir,
            hashes: Mutex::new(HashMap::new()),
        }
    }

    /// Looks names up in `dir` (A1111's `models/Stable-diffusion`).
    pub fn with_models_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.models_dir = Some(dir.into());
        self
    }

    /// Looks VAE names up in `dir` (A1111's `models/VAE`).
    pub fn with_vae_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.vae_dir = Some(dir.into());
        self
    }

    /// Looks `<lora:name>` names up in `dir` (A1111's `models/Lora`).
    pub fn with_lora_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.lora_dir = Some(dir.into());
        self
    }

    pub fn lora_dir(&self) -> Option<&Path> {
        self.lora_dir.as_deref()
    }

    /// Finds textual-inversion embeddings in `dir` (A1111's `embeddings` folder).
    pub fn with_embeddings_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.embeddings_dir = Some(dir.into());
        self
    }

    /// The embeddings folder: `SDFARM_EMBEDDINGS_DIR` or [`Self::with_embeddings_dir`], else
    /// `<model folder>/embeddings`.
    pub fn embeddings_dir(&self) -> Option<PathBuf> {
        self.embeddings_dir
            .clone()
            .or_else(|| self.models_dir.as_ref().map(|d| d.join("embeddings")))
    }

    /// The embeddings folder indexed for a model's tokenizer; vectors load onto `device`
    /// when a prompt uses them and stay cached while their files are unchanged.
    pub fn embeddings_for(
        &self,
        tokenizer: &crate::engine::tokenizer::PromptTokenizer,
        device: &candle_core::Device,
    ) -> Result<embeddings::EmbeddingSet<'_>, EngineError> {
        embeddings::EmbeddingSet::scan(
            self.embeddings_dir().as_deref(),
            tokenizer,
            &self.embedding_cache,
            device,
        )
    }

    /// Caps the download cache at `bytes`, evicting least recently used files beyond it.
    pub fn with_cache_cap(mut self, bytes: u64) -> Self {
        self.downloads = DiskCache::new(self.cache_dir.join("downloads"), bytes);
        self
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    pub fn models_dir(&self) -> Option<&Path> {
        self.models_dir.as_deref()
    }

    /// The download cache (URLs and object stores; hub files live in hf-hub's own cache).
    pub fn downloads(&self) -> &DiskCache {
        &self.downloads
    }

    /// Resolves `model_ref` (forms listed in [`reference`]):
    /// * `builtin:tiny-sd` → `<cache_dir>/builtin/tiny-sd`, written once;
    /// * a diffusers folder → that folder, after checking its files exist;
    /// * a `.safetensors` checkpoint → that file, after validating its header and checking it
    ///   is an SD 1.x checkpoint (pickles and anything else are refused with the reason);
    /// * a name → the model folder's match, as A1111 finds it;
    /// * a URL or `hf:` reference → the downloaded copy, fetched once and cached.
    pub fn resolve(&self, model_ref: &str) -> Result<ResolvedModel, EngineError> {
        let reference = model_ref.trim();
        if reference.is_empty() {
            return Err(EngineError::param(
                "model",
                "\"\"",
                format!(
                    "a model reference: {BUILTIN_TINY}, a path, a checkpoint name, \
                     hf:org/repo or a URL"
                ),
            ));
        }
        match reference::parse(reference)? {
            ModelRef::Builtin(_) => self.resolve_builtin(reference),
            ModelRef::Path(path) => self.resolve_local(resolve_path(&path, reference)?),
            ModelRef::Name { name, hash } => self.resolve_name(reference, &name, hash),
            ModelRef::Hub {
                repo,
                revision,
                file,
            } => {
                let path = fetch::download_hub(
                    &self.cache_dir.join("huggingface"),
                    &repo,
                    revision.as_deref(),
                    file.as_deref(),
                )?;
                let mut resolved = self.resolve_local(path)?;
                if file.is_none() {
                    // The snapshot folder is named by commit; the repository names the model.
                    resolved.name = repo.rsplit('/').next().unwrap_or(&repo).to_string();
                }
                Ok(resolved)
            }
            ModelRef::Url { url, sha256 } => {
                let file_name = fetch::url_file_name(&url);
                let (path, full_hash) = self.downloads.get_or_fetch(
                    &url,
                    &file_name,
                    sha256.as_deref(),
                    &mut |dest| fetch::download_url(&url, dest),
                )?;
                if let Some(hash) = full_hash {
                    self.remember_hash(&path, &hash);
                }
                self.downloads.note_reference(&path, reference);
                self.resolve_local(path)
            }
        }
    }

    /// Model references this worker can load without downloading: cached downloads and the
    /// built-in model once written. Local paths and names are not listed (every worker
    /// sharing the folder has them). Reported to the coordinator with every heartbeat and
    /// lease.
    pub fn cached_models(&self) -> Vec<String> {
        let mut refs = self.downloads.references();
        if missing_files(&self.cache_dir.join("builtin").join("tiny-sd")).is_empty() {
            refs.push(BUILTIN_TINY.to_string());
        }
        refs.sort();
        refs.dedup();
        refs
    }

    /// Brings `model_ref` onto this machine (download, verification, header check and hash),
    /// blocking; meant for a background thread while another task renders, so the next task
    /// finds its checkpoint on disk. A reference already being prefetched returns at once,
    /// and concurrent downloads of one file are merged by the download cache, so a task that
    /// resolves the same reference meanwhile waits for this download rather than starting
    /// another. Failures are only logged: the task itself reports them when it resolves.
    pub fn prefetch(&self, model_ref: &str) {
        let reference = model_ref.trim().to_string();
        if reference.is_empty()
            || !self
                .prefetching
                .lock()
                .expect("prefetch set")
                .insert(reference.clone())
        {
            return;
        }
        let started = std::time::Instant::now();
        match self.resolve(&reference) {
            Ok(resolved) => tracing::info!(
                model = %reference,
                path = %resolved.dir.display(),
                ms = started.elapsed().as_millis() as u64,
                "model prefetched"
            ),
            // The task that needs the model fails with the same reason, where the user
            // sees it; a warning here would only say it twice.
            Err(e) => tracing::debug!(model = %reference, error = %e, "prefetch failed"),
        }
        self.prefetching
            .lock()
            .expect("prefetch set")
            .remove(&reference);
    }

    fn resolve_builtin(&self, reference: &str) -> Result<ResolvedModel, EngineError> {
        if reference != BUILTIN_TINY {
            return Err(EngineError::ModelNotFound {
                reference: reference.to_string(),
                reason: format!("unknown built-in model; available: {BUILTIN_TINY}"),
            });
        }
        let dir = self.ensure_builtin_tiny()?;
        let hash = self.short_hash(&dir.join(HASHED_FILE))?;
        Ok(ResolvedModel {
            dir,
            format: ModelFormat::Diffusers,
            name: "tiny-sd".to_string(),
            hash,
        })
    }

    /// Resolves an `sd_vae` value for `checkpoint`: `None` when the checkpoint's own VAE is
    /// used ("None", or "Automatic" without a `<stem>.vae.safetensors` beside it); otherwise
    /// a path, URL, `hf:` file or a name in the VAE folder, like checkpoint references.
    pub fn resolve_vae(
        &self,
        value: &str,
        checkpoint: &ResolvedModel,
    ) -> Result<Option<vae::ResolvedVae>, EngineError> {
        let value = value.trim();
        let path = if vae::is_builtin_choice(value) {
            let automatic = !value.eq_ignore_ascii_case("none");
            match (automatic, checkpoint.format) {
                (true, ModelFormat::SingleFile) => vae::sidecar_for(&checkpoint.dir),
                _ => None,
            }
        } else {
            Some(self.vae_path(value)?)
        };
        let Some(path) = path else {
            return Ok(None);
        };
        if path.is_dir() {
            return Err(EngineError::invalid_model(
                &path,
                "a VAE must be one .safetensors file (a diffusers vae/ folder's \
                 diffusion_pytorch_model.safetensors works)",
            ));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hash = self.short_hash(&path)?;
        Ok(Some(vae::ResolvedVae { path, name, hash }))
    }

    fn vae_path(&self, value: &str) -> Result<PathBuf, EngineError> {
        match reference::parse(value)? {
            ModelRef::Builtin(_) => Err(EngineError::param(
                "sd_vae",
                value,
                "\"Automatic\", \"None\", or a VAE file name, path or URL",
            )),
            ModelRef::Path(path) => resolve_path(&path, value),
            ModelRef::Hub {
                repo,
                revision,
                file,
            } => fetch::download_hub(
                &self.cache_dir.join("huggingface"),
                &repo,
                revision.as_deref(),
                Some(
                    file.as_deref()
                        .unwrap_or("vae/diffusion_pytorch_model.safetensors"),
                ),
            ),
            ModelRef::Url { url, sha256 } => {
                let file_name = fetch::url_file_name(&url);
                let (path, _) = self.downloads.get_or_fetch(
                    &url,
                    &file_name,
                    sha256.as_deref(),
                    &mut |dest| fetch::download_url(&url, dest),
                )?;
                Ok(path)
            }
            ModelRef::Name { name, .. } => {
                let candidates = self
                    .vae_dir
                    .as_deref()
                    .map(reference::list_models)
                    .unwrap_or_default();
                let mut no_hash = |_: &reference::Candidate| None;
                if let Some(found) = reference::find_by_name(&candidates, &name, &mut no_hash) {
                    return resolve_path(&found.path, value);
                }
                if Path::new(&name).is_file() {
                    return resolve_path(Path::new(&name), value);
                }
                let available: Vec<&str> = candidates.iter().map(|c| c.relative.as_str()).collect();
                Err(EngineError::ModelNotFound {
                    reference: value.to_string(),
                    reason: match &self.vae_dir {
                        None => "no VAE folder is configured (SDFARM_VAE_DIR) and no such \
                                 file exists"
                            .into(),
                        Some(dir) => format!(
                            "no VAE in {} matches; available: {}",
                            dir.display(),
                            available.join(", ")
                        ),
                    },
                })
            }
        }
    }

    /// A local file or folder that exists.
    fn resolve_local(&self, path: PathBuf) -> Result<ResolvedModel, EngineError> {
        if path.is_file() {
            return self.resolve_single_file(path);
        }
        check_diffusers_folder(&path)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hash = self.short_hash(&path.join(HASHED_FILE))?;
        Ok(ResolvedModel {
            dir: path,
            format: ModelFormat::Diffusers,
            name,
            hash,
        })
    }

    /// A name looked up in the model folder; a relative path that exists is used as it is.
    fn resolve_name(
        &self,
        reference: &str,
        name: &str,
        hash: Option<String>,
    ) -> Result<ResolvedModel, EngineError> {
        let candidates = self
            .models_dir
            .as_deref()
            .map(reference::list_models)
            .unwrap_or_default();
        let mut hash_of = |c: &reference::Candidate| {
            let file = if c.path.is_dir() {
                c.path.join(HASHED_FILE)
            } else {
                c.path.clone()
            };
            self.short_hash(&file).ok()
        };
        let found = reference::find_by_name(&candidates, name, &mut hash_of);
        let Some(found) = found else {
            let relative = Path::new(name);
            if relative.exists() {
                return self.resolve_local(resolve_path(relative, reference)?);
            }
            let listed: Vec<&str> = candidates
                .iter()
                .take(12)
                .map(|c| c.relative.as_str())
                .collect();
            let reason = match &self.models_dir {
                None => "no model folder is configured (SDFARM_MODELS_DIR) and no such path \
                         exists"
                    .to_string(),
                Some(dir) if listed.is_empty() => {
                    format!("the model folder {} has no checkpoints", dir.display())
                }
                Some(dir) => format!(
                    "no checkpoint in {} matches; available: {}{}",
                    dir.display(),
                    listed.join(", "),
                    if candidates.len() > listed.len() {
                        ", ..."
                    } else {
                        ""
                    }
                ),
            };
            return Err(EngineError::ModelNotFound {
                reference: reference.to_string(),
                reason,
            });
        };
        let path = resolve_path(&found.path, reference)?;
        let resolved = self.resolve_local(path)?;
        if let Some(wanted) = hash {
            if !resolved.hash.starts_with(&wanted) && !wanted.starts_with(&resolved.hash) {
                return Err(EngineError::ModelNotFound {
                    reference: reference.to_string(),
                    reason: format!(
                        "{} has hash {}, not {wanted}; the file was replaced",
                        found.relative, resolved.hash
                    ),
                });
            }
        }
        Ok(resolved)
    }

    /// A single checkpoint file: its header is validated and its kind checked here, so a bad
    /// file fails before any weights are read.
    fn resolve_single_file(&self, path: PathBuf) -> Result<ResolvedModel, EngineError> {
        let file = safe_file::SafeFile::open(&path)?;
        single_file::require_checkpoint(&file)?;
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

    /// Records a full sha256 computed elsewhere (a verified download) for `path`.
    fn remember_hash(&self, path: &Path, full: &str) {
        if let Ok(meta) = std::fs::metadata(path) {
            self.hashes.lock().expect("hash cache").insert(
                (path.to_path_buf(), HashKind::Whole),
                (meta.len(), meta.modified().ok(), full.to_string()),
            );
        }
    }

    /// A file's hash of `kind`, computed once per file version.
    fn cached_hash(&self, path: &Path, kind: HashKind) -> Result<String, EngineError> {
        let meta = std::fs::metadata(path).map_err(|e| EngineError::io(path, e))?;
        let stamp = (meta.len(), meta.modified().ok());
        let key = (path.to_path_buf(), kind);
        if let Some((len, modified, hash)) = self.hashes.lock().expect("hash cache").get(&key) {
            if (*len, *modified) == stamp {
                return Ok(hash.clone());
            }
        }
        let hash = match kind {
            HashKind::Whole => sha256_file(path)?,
            HashKind::Addnet => lora::addnet_hash(path)?,
        };
        self.hashes
            .lock()
            .expect("hash cache")
            .insert(key, (stamp.0, stamp.1, hash.clone()));
        Ok(hash)
    }

    /// First 10 hex digits of the file's sha256 (A1111's "Model hash", "VAE hash"),
    /// computed once per file version.
    fn short_hash(&self, path: &Path) -> Result<String, EngineError> {
        Ok(self.cached_hash(path, HashKind::Whole)?[..10].to_string())
    }

    /// A1111's short hash of a textual-inversion embedding: the first 12 hex digits of the
    /// file's sha256 ("TI hashes").
    pub fn embedding_hash(&self, path: &Path) -> Result<String, EngineError> {
        Ok(self.cached_hash(path, HashKind::Whole)?[..12].to_string())
    }

    /// A1111's short hash of a LoRA ("Lora hashes"): the `sshs_model_hash` its metadata
    /// names when present, else the sha256 of its tensor data (the header excluded), first
    /// 12 hex digits.
    pub fn lora_hash(&self, path: &Path) -> Result<String, EngineError> {
        let file = safe_file::SafeFile::open(path)?;
        if let Some(hash) = file.metadata().get("sshs_model_hash") {
            let hash = hash.trim();
            if !hash.is_empty() {
                return Ok(hash.chars().take(12).collect());
            }
        }
        Ok(self.cached_hash(path, HashKind::Addnet)?[..12].to_string())
    }
}

/// Checks that a path exists (pickles are refused whatever they are called) and returns it.
fn resolve_path(path: &Path, reference: &str) -> Result<PathBuf, EngineError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => EngineError::ModelNotFound {
            reference: reference.to_string(),
            reason: format!(
                "no such file or directory; expected {BUILTIN_TINY}, a diffusers folder, a \
                 .safetensors checkpoint, a checkpoint name, hf:org/repo or a URL"
            ),
        },
        _ => EngineError::io(path, e),
    })?;
    if meta.is_file() {
        safe_file::refuse_pickle(path)?;
    }
    Ok(path.to_path_buf())
}

/// Checks that `path` has every file of a diffusers SD folder.
fn check_diffusers_folder(path: &Path) -> Result<(), EngineError> {
    let missing = missing_files(path);
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = missing
        .iter()
        .filter_map(|p| p.strip_prefix(path).ok())
        .map(|p| p.display().to_string())
        .collect();
    Err(EngineError::InvalidModel {
        path: path.to_path_buf(),
        reason: format!(
            "not a diffusers Stable Diffusion folder: missing {} (expected {})",
            names.join(", "),
            REQUIRED_FILES.join(", ")
        ),
    })
}
