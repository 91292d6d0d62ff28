//! Diffusion engine: prompt encoding, torch-compatible noise, samplers and the txt2img pipeline.
//!
//! [`Engine::render`] turns one `RenderParams` into RGB pixels with A1111's semantics: the
//! image's seed feeds a torch-compatible CPU generator for the initial latents (and ancestral
//! noise), the sampler names and the "Automatic" schedule are A1111's, and guidance batches
//! `[negative, positive]` prompts. Loaded models stay in memory between renders; the
//! coordinator uses [`Engine::loaded_models`] to send tasks where their model already is.
//!
//! Submodules are public so tests can check each stage against reference tensors.

pub mod attention;
mod batch;
pub mod brownian;
mod chain;
pub mod clip;
pub mod composable;
pub mod conditioning;
pub mod config;
pub mod device;
mod error;
pub mod hires;
pub mod init_image;
pub mod kdiffusion;
mod nan_check;
mod networks_info;
pub mod noise;
pub mod philox;
pub mod pipeline;
pub mod prompt_parser;
pub mod resample;
pub mod sampler;
pub mod schedule;
pub mod scheduler;
pub mod sdxl;
pub mod text_encoder;
pub mod tokenizer;
pub mod torch_rng;
pub mod unet;
pub mod unipc;
pub mod vae_encoder;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sdfarm_proto::RenderParams;

pub use batch::unet_calls_on_this_thread;
pub use error::EngineError;
pub use pipeline::{Pipeline, SampleSettings, StepTrace};
pub use sampler::{run_sampler, Sampler, SamplerOptions, SAMPLER_NAMES};
pub use scheduler::{ScheduleOverrides, ScheduleType};

use crate::models::embeddings::EmbeddingSet;
use crate::models::lora::{self, LoraUse};
use crate::models::vae::{LoadedVae, ResolvedVae};
use crate::models::{ModelResolver, ResolvedModel};
use crate::storage::OutputStore;

pub(crate) use chain::hires_plan;

/// How many pipelines stay loaded at once unless configured otherwise; the least recently used
/// one is dropped beyond this or beyond the byte cap.
const MAX_LOADED: usize = 2;
/// Float32 weight bytes kept loaded unless `SDFARM_MODEL_MEMORY_BYTES` says otherwise: two
/// SDXL pipelines.
const DEFAULT_MAX_LOADED_BYTES: u64 = 24 << 30;

/// One rendered image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedImage {
    pub width: u32,
    pub height: u32,
    /// RGB8, row-major, `width * height * 3` bytes.
    pub rgb: Vec<u8>,
    pub model_name: String,
    pub model_hash: String,
    /// The VAE override's file name and short hash (A1111's "VAE", "VAE hash"); empty when
    /// the checkpoint's own VAE decoded the image.
    pub vae_name: String,
    pub vae_hash: String,
    /// A1111's "Lora hashes" and "TI hashes" values (`name: hash12, …`); empty when the
    /// prompts used no LoRA or embedding.
    pub lora_hashes: String,
    pub ti_hashes: String,
    /// Whether this render had to load its model into memory first.
    pub model_loaded: bool,
    /// How long that load took (0 when the model was already loaded).
    pub model_load_ms: u64,
}

struct Loaded {
    model_ref: String,
    pipeline: Arc<Pipeline>,
    last_used: Instant,
    /// Float32 weight bytes, for the memory cap.
    bytes: u64,
}

/// Renders images on the CPU; safe to share between threads.
pub struct Engine {
    /// Shared with background prefetches.
    resolver: Arc<ModelResolver>,
    loaded: Mutex<HashMap<PathBuf, Loaded>>,
    /// Where `init_image` keys that are neither a local file nor a URL are read from.
    input_store: Option<OutputStore>,
    /// VAE overrides in memory, most recently used last.
    vaes: Mutex<Vec<(PathBuf, Arc<LoadedVae>)>>,
    max_loaded: usize,
    max_loaded_bytes: u64,
}

/// `SDFARM_INPUT_STORE`: an object-store URL img2img `init_image` keys are read from (usually
/// the farm's output store). A URL that does not open is reported once and ignored, so a
/// worker still renders txt2img.
fn input_store_from_env() -> Option<OutputStore> {
    let url = std::env::var("SDFARM_INPUT_STORE").ok()?;
    match OutputStore::open(url.trim()) {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::warn!("SDFARM_INPUT_STORE ignored: {e}");
            None
        }
    }
}

impl Engine {
    pub fn new(resolver: ModelResolver) -> Self {
        Engine {
            resolver: Arc::new(resolver),
            loaded: Mutex::new(HashMap::new()),
            input_store: input_store_from_env(),
            vaes: Mutex::new(Vec::new()),
            max_loaded: MAX_LOADED,
            max_loaded_bytes: std::env::var("SDFARM_MODEL_MEMORY_BYTES")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(DEFAULT_MAX_LOADED_BYTES),
        }
    }

    /// Keeps at most `models` pipelines and `bytes` of float32 weights loaded, dropping the
    /// least recently used beyond either. The model a render needs is always kept, even alone
    /// over the byte cap.
    pub fn with_memory_limits(mut self, models: usize, bytes: u64) -> Self {
        self.max_loaded = models.max(1);
        self.max_loaded_bytes = bytes;
        self
    }

    /// Float32 weight bytes of the loaded pipelines.
    pub fn loaded_bytes(&self) -> u64 {
        let loaded = self.loaded.lock().expect("engine model cache");
        loaded.values().map(|l| l.bytes).sum()
    }

    /// Reads img2img `init_image` keys from `store` (the farm's object store).
    pub fn with_input_store(mut self, store: OutputStore) -> Self {
        self.input_store = Some(store);
        self
    }

    pub fn resolver(&self) -> &ModelResolver {
        &self.resolver
    }

    /// Starts bringing `model_ref` onto disk in the background unless its pipeline is
    /// already in memory (see [`ModelResolver::prefetch`]): called for leased tasks that
    /// wait behind the one rendering.
    pub fn prefetch(&self, model_ref: &str) {
        let model_ref = model_ref.trim().to_string();
        if self.loaded_models().contains(&model_ref) {
            return;
        }
        let resolver = self.resolver.clone();
        let spawned = std::thread::Builder::new()
            .name("sdfarm-prefetch".into())
            .spawn(move || resolver.prefetch(&model_ref));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a prefetch thread");
        }
    }

    /// Model references whose pipelines are in memory.
    pub fn loaded_models(&self) -> Vec<String> {
        let loaded = self.loaded.lock().expect("engine model cache");
        let mut refs: Vec<String> = loaded.values().map(|l| l.model_ref.clone()).collect();
        refs.sort();
        refs
    }

    /// The pipeline for a resolved model, loading it on first use. The duration is how long
    /// loading took, `None` when it was already in memory.
    pub fn pipeline(
        &self,
        model_ref: &str,
        resolved: &ResolvedModel,
    ) -> Result<(Arc<Pipeline>, Option<Duration>), EngineError> {
        self.pipeline_with_loras(model_ref, resolved, &[])
    }

    /// [`Engine::pipeline`] with LoRA networks merged in; each model and LoRA combination is
    /// its own cache entry.
    pub fn pipeline_with_loras(
        &self,
        model_ref: &str,
        resolved: &ResolvedModel,
        loras: &[LoraUse],
    ) -> Result<(Arc<Pipeline>, Option<Duration>), EngineError> {
        let mut key = resolved.dir.clone().into_os_string();
        for l in loras {
            key.push(format!(
                "\0{}:{}:{}",
                l.path.display(),
                l.te_weight,
                l.unet_weight
            ));
        }
        let key = PathBuf::from(key);
        if let Some(entry) = self
            .loaded
            .lock()
            .expect("engine model cache")
            .get_mut(&key)
        {
            entry.last_used = Instant::now();
            return Ok((entry.pipeline.clone(), None));
        }
        // Load outside the lock: it takes seconds for real models and other renders continue.
        let started = Instant::now();
        let bytes = resolved.memory_bytes()?;
        let pipeline = Arc::new(if loras.is_empty() {
            resolved.load()?
        } else {
            resolved.load_with_loras(loras)?
        });
        let load_time = started.elapsed();
        let mut loaded = self.loaded.lock().expect("engine model cache");
        let entry = loaded.entry(key.clone()).or_insert_with(|| Loaded {
            model_ref: model_ref.trim().to_string(),
            pipeline,
            last_used: Instant::now(),
            bytes,
        });
        entry.last_used = Instant::now();
        let pipeline = entry.pipeline.clone();
        loop {
            let total: u64 = loaded.values().map(|l| l.bytes).sum();
            if loaded.len() <= self.max_loaded && total <= self.max_loaded_bytes {
                break;
            }
            let Some(oldest) = loaded
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, l)| l.last_used)
                .map(|(dir, _)| dir.clone())
            else {
                break;
            };
            loaded.remove(&oldest);
        }
        Ok((pipeline, Some(load_time)))
    }

    /// A VAE override, loaded on first use; the two most recently used stay in memory.
    fn vae(&self, resolved: &ResolvedVae) -> Result<Arc<LoadedVae>, EngineError> {
        let mut vaes = self.vaes.lock().expect("engine vae cache");
        if let Some(i) = vaes.iter().position(|(p, _)| *p == resolved.path) {
            let entry = vaes.remove(i);
            let vae = entry.1.clone();
            vaes.push(entry);
            return Ok(vae);
        }
        drop(vaes);
        let vae = Arc::new(crate::models::vae::load(
            &resolved.path,
            &device::default_device()?,
        )?);
        let mut vaes = self.vaes.lock().expect("engine vae cache");
        vaes.push((resolved.path.clone(), vae.clone()));
        if vaes.len() > MAX_LOADED {
            vaes.remove(0);
        }
        Ok(vae)
    }

    /// Renders one image. Blocking and CPU heavy. `on_step(step, total)` runs after every
    /// sampler step (1-based); returning `false` stops with [`EngineError::Cancelled`].
    pub fn render(
        &self,
        params: &RenderParams,
        on_step: &mut dyn FnMut(u32, u32) -> bool,
    ) -> Result<RenderedImage, EngineError> {
        let prep = self.prepare(params)?;
        let embeddings = self
            .resolver
            .embeddings_for(prep.pipeline.tokenizer(), prep.pipeline.device())?;
        let (width, height, rgb) = chain::render_pixels(
            &prep.pipeline,
            &prep.params,
            prep.init_image.as_ref(),
            prep.clip_skip,
            &embeddings,
            &|latents| prep.decode(latents),
            on_step,
        )?;
        self.finish(prep, &embeddings, width, height, rgb)
    }

    /// Checks a request and loads what it renders with: the model with its LoRA networks,
    /// the VAE override and the img2img input.
    fn prepare(&self, params: &RenderParams) -> Result<Prepared, EngineError> {
        // Names and schedules are checked before the model loads.
        chain::resolve_sampler(&params.sampler_name, &params.scheduler)?;
        if params.steps == 0 {
            return Err(EngineError::param("steps", params.steps, "at least 1"));
        }
        if !params.cfg_scale.is_finite() {
            return Err(EngineError::param(
                "cfg_scale",
                params.cfg_scale,
                "a finite number",
            ));
        }
        if !params.eta.is_finite() || params.eta < 0.0 {
            return Err(EngineError::param(
                "eta",
                params.eta,
                "a finite number >= 0",
            ));
        }
        let init_image = if params.init_image.is_empty() {
            None
        } else {
            Some(init_image::load(
                &params.init_image,
                self.input_store.as_ref(),
            )?)
        };

        // A1111 activates `<lora:…>` networks from both prompts and removes the tags from the
        // text the text encoder sees; the infotext keeps the prompt as written.
        let (prompt, mut tags) = lora::extract_tags(&params.prompt)?;
        let (negative_prompt, negative_tags) = lora::extract_tags(&params.negative_prompt)?;
        tags.extend(negative_tags);
        let loras = tags
            .iter()
            .map(|t| {
                Ok(LoraUse {
                    path: lora::find(self.resolver.lora_dir(), &t.name)?,
                    te_weight: t.te_weight,
                    unet_weight: t.unet_weight,
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let params = RenderParams {
            prompt,
            negative_prompt,
            ..params.clone()
        };

        let resolved = self.resolver.resolve(&params.model)?;
        let (pipeline, load_time) = self.pipeline_with_loras(&params.model, &resolved, &loras)?;
        let vae_ref = self.resolver.resolve_vae(&params.vae, &resolved)?;
        let vae = match &vae_ref {
            Some(r) => {
                let vae = self.vae(r)?;
                if vae.settings.downscale != pipeline.latent_downscale()
                    || vae.settings.config.latent_channels != pipeline.latent_channels()
                {
                    return Err(EngineError::invalid_model(
                        &r.path,
                        format!(
                            "this VAE ({} latent channels, downscale {}) does not fit the \
                             checkpoint ({} latent channels, downscale {})",
                            vae.settings.config.latent_channels,
                            vae.settings.downscale,
                            pipeline.latent_channels(),
                            pipeline.latent_downscale()
                        ),
                    ));
                }
                Some(vae)
            }
            None => None,
        };
        let clip_skip = params.clip_skip as usize;
        if clip_skip > pipeline.text_layers() {
            return Err(EngineError::param(
                "clip_skip",
                params.clip_skip,
                format!("0 to {} for this model", pipeline.text_layers()),
            ));
        }
        Ok(Prepared {
            params,
            tags,
            loras,
            resolved,
            pipeline,
            load_time,
            vae_ref,
            vae,
            clip_skip,
            init_image,
        })
    }

    /// The rendered image with the model, VAE and network details its infotext names.
    fn finish(
        &self,
        prep: Prepared,
        embeddings: &EmbeddingSet<'_>,
        width: u32,
        height: u32,
        rgb: Vec<u8>,
    ) -> Result<RenderedImage, EngineError> {
        let lora_hashes = networks_info::lora_hashes(&self.resolver, &prep.tags, &prep.loras)?;
        let ti_hashes = networks_info::ti_hashes(&self.resolver, embeddings)?;
        Ok(RenderedImage {
            width,
            height,
            rgb,
            model_name: prep.resolved.name,
            model_hash: prep.resolved.hash,
            vae_name: prep
                .vae_ref
                .as_ref()
                .map(|v| v.name.clone())
                .unwrap_or_default(),
            vae_hash: prep.vae_ref.map(|v| v.hash).unwrap_or_default(),
            lora_hashes,
            ti_hashes,
            model_loaded: prep.load_time.is_some(),
            model_load_ms: prep.load_time.map_or(0, |d| d.as_millis() as u64),
        })
    }
}

/// A checked request and what it renders with (see [`Engine::prepare`]).
struct Prepared {
    /// The request with `<lora:…>` tags removed from its prompts.
    params: RenderParams,
    tags: Vec<lora::LoraTag>,
    loras: Vec<LoraUse>,
    resolved: ResolvedModel,
    pipeline: Arc<Pipeline>,
    /// How long loading the model took, `None` when it was in memory.
    load_time: Option<Duration>,
    vae_ref: Option<ResolvedVae>,
    vae: Option<Arc<LoadedVae>>,
    clip_skip: usize,
    init_image: Option<image::RgbImage>,
}

impl Prepared {
    /// The VAE decode in use (the checkpoint's or the override). Every decode sees a pass's
    /// final latents: they are checked for the UNet's NaNs there, and the pixels for the
    /// VAE's.
    fn decode(&self, latents: &candle_core::Tensor) -> Result<candle_core::Tensor, EngineError> {
        nan_check::check(latents, nan_check::Stage::Unet, &self.resolved.dir)?;
        let (decoded, vae_path) = match (&self.vae, &self.vae_ref) {
            (Some(vae), Some(r)) => (
                vae.decode(latents, self.pipeline.vae_scaling_factor())?,
                r.path.as_path(),
            ),
            _ => (self.pipeline.decode(latents)?, self.resolved.dir.as_path()),
        };
        nan_check::check(&decoded, nan_check::Stage::Vae, vae_path)?;
        Ok(decoded)
    }
}
