//! sdfarm's txt2img pipeline over a diffusers-layout SD 1.x, SD 2.x or SDXL folder.
//!
//! The stages are public so parity tests can check each one against diffusers' intermediate
//! tensors: [`Pipeline::encode_prompt`] (CLIP hidden states), [`Pipeline::sample`] (the sampler
//! loop with classifier-free guidance, starting from given noise) and [`Pipeline::decode`] /
//! [`decoded_to_rgb8`] (VAE and pixel conversion).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;

use super::conditioning::{self, EmbeddingLookup};
use super::config::{self, VaeSettings};
use super::sampler::{DdimVariant, NoiseFn, Sampler, SamplerOptions};
use super::schedule::DiscreteSchedule;
use super::scheduler::{self, ScheduleOverrides, ScheduleType};
use super::sdxl::{self, SecondEncoder};
use super::text_encoder::TextEncoder;
use super::tokenizer::PromptTokenizer;
use super::unet::UNet;
use super::unipc::UniPcOptions;
use super::vae_encoder::VaeEncoder;
use super::EngineError;

mod parts;
mod sampling;
mod unipc;

pub use parts::{PartWeights, PipelineParts, SecondClipParts};

/// A loaded model: tokenizer, text encoder(s), UNet, VAE and training schedule.
pub struct Pipeline {
    dir: PathBuf,
    device: Device,
    tokenizer: PromptTokenizer,
    text_encoder: TextEncoder,
    /// SDXL's second text encoder; its presence makes the pipeline an SDXL one.
    text_encoder_2: Option<SecondEncoder>,
    unet: UNet,
    unet_in_channels: usize,
    vae: AutoEncoderKL,
    vae_encoder: VaeEncoder,
    vae_settings: VaeSettings,
    schedule: DiscreteSchedule,
    prediction: Prediction,
}

/// What the UNet predicts (`prediction_type` of the scheduler config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The noise (SD 1.x, SD 2.x base).
    Epsilon,
    /// The velocity `sqrt(a) * eps - sqrt(1 - a) * x0` (SD 2.x 768-v).
    V,
}

/// A prompt's embeddings over a pass: `(until_step, [1, 77 * chunks, dim])` pairs, ascending,
/// as A1111 schedules prompt editing. Model call `k` (0-based) uses the first entry whose
/// end is at or after `k`.
pub type ScheduledCond = Vec<(usize, Tensor)>;

/// What to sample, independent of where the noise comes from.
#[derive(Debug, Clone)]
pub struct SampleSettings {
    pub sampler: Sampler,
    pub schedule_type: ScheduleType,
    pub steps: usize,
    pub cfg_scale: f32,
    /// Eta, churn and noise scale, already resolved with A1111's defaults.
    pub options: SamplerOptions,
    pub overrides: ScheduleOverrides,
    /// Which DDIM loop [`Sampler::Ddim`] runs: A1111's by default, diffusers' for parity.
    pub ddim: DdimVariant,
    /// UniPC's order and variant when [`Sampler::UniPc`] runs (A1111's defaults otherwise).
    pub unipc: UniPcOptions,
    /// Sigmas (with the trailing 0) a sigma-based sampler runs over instead of the schedule
    /// type's, e.g. a diffusers scheduler's for parity checks.
    pub explicit_sigmas: Option<Vec<f32>>,
}

impl SampleSettings {
    /// A1111's defaults for everything but the sampler, step count and guidance scale.
    pub fn new(sampler: Sampler, steps: usize, cfg_scale: f32) -> Self {
        SampleSettings {
            sampler,
            schedule_type: ScheduleType::Automatic,
            steps,
            cfg_scale,
            options: SamplerOptions::defaults_for(sampler),
            overrides: ScheduleOverrides::default(),
            ddim: DdimVariant::A1111,
            unipc: UniPcOptions::default(),
            explicit_sigmas: None,
        }
    }

    /// The sigmas a sigma-based sampler runs over (A1111's `get_sigmas`).
    pub fn sigmas(&self, schedule: &DiscreteSchedule) -> Result<Vec<f32>, EngineError> {
        if let Some(sigmas) = &self.explicit_sigmas {
            if sigmas.len() < 2 {
                return Err(EngineError::param(
                    "sigmas",
                    sigmas.len(),
                    "at least one step (two sigmas)",
                ));
            }
            return Ok(sigmas.clone());
        }
        scheduler::sampler_sigmas(
            self.sampler,
            self.schedule_type,
            self.steps,
            schedule,
            &self.overrides,
        )
    }
}

/// One finished sampler step as the pipeline saw it.
pub struct StepTrace<'a> {
    /// 1-based.
    pub step: usize,
    pub total: usize,
    /// The UNet's raw noise prediction for this step, batch `[uncond, cond]`, before guidance.
    pub unet_out: &'a Tensor,
    /// Latents after the step.
    pub latents: &'a Tensor,
}

fn load_weights(path: &Path, device: &Device) -> Result<VarBuilder<'static>, EngineError> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            EngineError::invalid_model(path, "file is missing")
        } else {
            EngineError::io(path, e)
        }
    })?;
    VarBuilder::from_buffered_safetensors(bytes, DType::F32, device).map_err(|e| {
        EngineError::invalid_model(path, format!("not a readable safetensors file: {e}"))
    })
}

impl Pipeline {
    /// Loads a diffusers folder (`unet/`, `vae/`, `text_encoder/`, optional `tokenizer/` and
    /// `scheduler/`) onto the worker's device (`SDFARM_DEVICE`, the CPU unless a CUDA build
    /// finds a GPU).
    pub fn load(dir: &Path) -> Result<Self, EngineError> {
        Self::load_on(dir, super::device::default_device()?)
    }

    /// Loads a diffusers folder onto `device`.
    pub fn load_on(dir: &Path, device: Device) -> Result<Self, EngineError> {
        let missing = config::missing_files(dir);
        if !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
            return Err(EngineError::invalid_model(
                dir,
                format!(
                    "not a diffusers Stable Diffusion folder; missing {}",
                    list.join(", ")
                ),
            ));
        }
        let tokenizer = PromptTokenizer::for_model(dir)?;

        let clip_config_path = dir.join("text_encoder/config.json");
        let clip_config = config::clip_settings(&clip_config_path)?;
        let layer_norm_eps = config::read_json(&clip_config_path)?
            .get("layer_norm_eps")
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-5);
        let clip_weights = dir.join("text_encoder/model.safetensors");
        let text_encoder = TextEncoder::with_activation(
            load_weights(&clip_weights, &device)?,
            &clip_config,
            layer_norm_eps,
            config::clip_activation(&clip_config_path)?,
        )
        .map_err(|e| EngineError::invalid_model(&clip_weights, e.to_string()))?;
        let text_encoder_2 = SecondEncoder::load_folder(dir, &device, load_weights)?;

        let unet_settings = config::unet_settings(&dir.join("unet/config.json"))?;
        parts::check_text_widths(
            dir,
            &unet_settings,
            clip_config.embed_dim,
            text_encoder_2.as_ref(),
        )?;
        let unet_weights = dir.join("unet/diffusion_pytorch_model.safetensors");
        let unet = UNet::new(
            load_weights(&unet_weights, &device)?,
            unet_settings.in_channels,
            unet_settings.out_channels,
            &unet_settings.config,
            unet_settings.text_time,
        )
        .map_err(|e| EngineError::invalid_model(&unet_weights, e.to_string()))?;

        let vae_settings = config::vae_settings(&dir.join("vae/config.json"))?;
        if vae_settings.config.latent_channels != unet_settings.in_channels
            || unet_settings.in_channels != unet_settings.out_channels
        {
            return Err(EngineError::invalid_model(
                dir,
                format!(
                    "vae latent_channels {} / unet in_channels {} / out_channels {} disagree \
                     (txt2img models have them all equal)",
                    vae_settings.config.latent_channels,
                    unet_settings.in_channels,
                    unet_settings.out_channels
                ),
            ));
        }
        let vae_weights = dir.join("vae/diffusion_pytorch_model.safetensors");
        let vae_vb = load_weights(&vae_weights, &device)?;
        let vae = AutoEncoderKL::new(
            vae_vb.clone(),
            vae_settings.in_channels,
            vae_settings.out_channels,
            vae_settings.config.clone(),
        )
        .map_err(|e| EngineError::invalid_model(&vae_weights, e.to_string()))?;
        let vae_encoder = VaeEncoder::new(vae_vb, vae_settings.in_channels, &vae_settings.config)
            .map_err(|e| EngineError::invalid_model(&vae_weights, e.to_string()))?;

        let scheduler_config = dir.join("scheduler/scheduler_config.json");
        let (schedule, prediction) = if scheduler_config.is_file() {
            let json = config::read_json(&scheduler_config)?;
            let prediction = match json.get("prediction_type").and_then(|v| v.as_str()) {
                None | Some("epsilon") => Prediction::Epsilon,
                Some("v_prediction") => Prediction::V,
                Some(other) => {
                    return Err(EngineError::invalid_model(
                        &scheduler_config,
                        format!(
                            "prediction_type {other:?} is not supported; accepted: \"epsilon\", \"v_prediction\""
                        ),
                    ))
                }
            };
            (DiscreteSchedule::from_diffusers_config(&json)?, prediction)
        } else {
            (DiscreteSchedule::sd15(), Prediction::Epsilon)
        };

        Ok(Pipeline {
            dir: dir.to_path_buf(),
            device,
            tokenizer,
            text_encoder,
            text_encoder_2,
            unet,
            unet_in_channels: unet_settings.in_channels,
            vae,
            vae_encoder,
            vae_settings,
            schedule,
            prediction,
        })
    }

    /// The folder this pipeline was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }

    pub fn prediction(&self) -> Prediction {
        self.prediction
    }

    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// Whether this is an SDXL pipeline (two text encoders, pooled and size conditioning).
    pub fn is_sdxl(&self) -> bool {
        self.text_encoder_2.is_some()
    }

    /// Splits an encoded prompt into the token context `[B, n, dim]` and, for SDXL, the
    /// pooled text embedding `[B, p]` (see [`sdxl::pack`]).
    pub fn split_cond(&self, cond: &Tensor) -> Result<(Tensor, Option<Tensor>), EngineError> {
        match self.unet.pooled_dim() {
            Some(p) if self.is_sdxl() => {
                let (context, pooled) = sdxl::unpack(cond, p)?;
                Ok((context, Some(pooled)))
            }
            _ => Ok((cond.clone(), None)),
        }
    }

    /// Sets what the UNet predicts (for checkpoints whose files do not say).
    pub fn set_prediction(&mut self, prediction: Prediction) {
        self.prediction = prediction;
    }

    /// A1111's `is_using_v_parameterization_for_sd2`: the UNet at t = 999 on latents of 0.5
    /// and a two-token context of 0.5 predicts `v` if its output is on average more than 1
    /// below its input (an epsilon model returns about its input there).
    pub fn unet_suggests_v_prediction(&self) -> Result<bool, EngineError> {
        let x = Tensor::full(0.5f32, (1, self.unet_in_channels, 8, 8), &self.device)?;
        let width = self.text_encoder.width();
        let context = Tensor::full(0.5f32, (1, 2, width), &self.device)?;
        let out = self.unet.forward(&x, 999.0, &context)?;
        let mean = (out - &x)?.mean_all()?.to_scalar::<f32>()?;
        Ok(mean < -1.0)
    }

    /// Number of CLIP layers, the upper bound for clip skip.
    pub fn text_layers(&self) -> usize {
        self.text_encoder.num_layers()
    }

    /// Image pixels per latent pixel (8 for SD 1.x, 2 for the tiny model).
    pub fn latent_downscale(&self) -> usize {
        self.vae_settings.downscale
    }

    /// Latents are divided by this before decoding (0.18215 for SD 1.x); a VAE override
    /// decodes with the checkpoint's factor, as A1111 does.
    pub fn vae_scaling_factor(&self) -> f64 {
        self.vae_settings.scaling_factor
    }

    /// Channels of the latent space the UNet works in.
    pub fn latent_channels(&self) -> usize {
        self.unet_in_channels
    }

    /// Latent tensor shape `[1, C, H/f, W/f]` for an image size, or an error naming the field
    /// that is not a multiple of the downscale factor.
    pub fn latent_shape(&self, width: u32, height: u32) -> Result<[usize; 4], EngineError> {
        let f = self.vae_settings.downscale as u32;
        for (field, value) in [("width", width), ("height", height)] {
            if value == 0 || value % f != 0 || value > 8192 {
                return Err(EngineError::param(
                    field,
                    value,
                    format!("a positive multiple of {f} up to 8192 for this model"),
                ));
            }
        }
        Ok([
            1,
            self.unet_in_channels,
            (height / f) as usize,
            (width / f) as usize,
        ])
    }

    /// CLIP hidden states `[1, 77, dim]` for a prompt (an empty prompt encodes `""`).
    ///
    /// A1111's conditioning: attention syntax, 75-token chunks (so `[1, 77 * chunks, dim]`),
    /// each chunk encoded separately and weighted with the "Original" emphasis: multiply by
    /// the weights, then rescale so the chunk's mean is unchanged.
    pub fn encode_prompt(&self, text: &str, clip_skip: usize) -> Result<Tensor, EngineError> {
        self.encode_prompt_with(text, clip_skip, &conditioning::NoEmbeddings)
    }

    /// [`Pipeline::encode_prompt`] with textual-inversion embeddings found by `embeddings`.
    pub fn encode_prompt_with(
        &self,
        text: &str,
        clip_skip: usize,
        embeddings: &dyn EmbeddingLookup,
    ) -> Result<Tensor, EngineError> {
        let (chunks, _) = conditioning::tokenize_line_with(&self.tokenizer, text, embeddings)?;
        self.encode_chunks(&chunks, clip_skip, embeddings)
    }

    /// Encodes the texts of one prompt's schedule, which A1111 does in one text-encoder
    /// call, and names the embeddings the call used in A1111's order (chunk by chunk across
    /// the texts), for "TI hashes".
    pub fn encode_texts(
        &self,
        texts: &[String],
        clip_skip: usize,
        embeddings: &dyn EmbeddingLookup,
    ) -> Result<(Vec<Tensor>, Vec<String>), EngineError> {
        self.encode_texts_as(texts, clip_skip, embeddings, false)
    }

    /// [`Pipeline::encode_texts`] for the positive (`negative = false`) or negative prompt.
    /// An SDXL negative prompt whose texts are all empty encodes to zeros, as A1111's
    /// `force_zero_negative_prompt` does.
    pub fn encode_texts_as(
        &self,
        texts: &[String],
        clip_skip: usize,
        embeddings: &dyn EmbeddingLookup,
        negative: bool,
    ) -> Result<(Vec<Tensor>, Vec<String>), EngineError> {
        let tokenized = texts
            .iter()
            .map(|t| Ok(conditioning::tokenize_line_with(&self.tokenizer, t, embeddings)?.0))
            .collect::<Result<Vec<_>, EngineError>>()?;
        let most = tokenized.iter().map(Vec::len).max().unwrap_or(0);
        let used: Vec<String> = (0..most)
            .flat_map(|i| tokenized.iter().filter_map(move |chunks| chunks.get(i)))
            .flat_map(|chunk| chunk.fixes.iter().map(|f| f.name.clone()))
            .collect();
        let encoded = tokenized
            .iter()
            .map(|chunks| self.encode_chunks(chunks, clip_skip, embeddings))
            .collect::<Result<Vec<_>, EngineError>>()?;
        if negative && self.is_sdxl() && texts.iter().all(|t| t.is_empty()) {
            let zeros = encoded
                .iter()
                .map(|e| e.zeros_like())
                .collect::<Result<Vec<_>, _>>()?;
            return Ok((zeros, used));
        }
        Ok((encoded, used))
    }

    fn encode_chunks(
        &self,
        chunks: &[conditioning::PromptChunk],
        clip_skip: usize,
        embeddings: &dyn EmbeddingLookup,
    ) -> Result<Tensor, EngineError> {
        if let Some(second) = &self.text_encoder_2 {
            return self.encode_chunks_sdxl(second, chunks, embeddings);
        }
        let mut encoded = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            // SD 2.x pads with a different id after the first end token.
            let ids = sdxl::pad_after_end(&chunk.tokens, self.tokenizer.pad_id());
            let len = ids.len();
            let ids = Tensor::from_vec(ids, (1, len), &self.device)?;
            let vectors = chunk
                .fixes
                .iter()
                .map(|f| {
                    Ok((
                        f.offset,
                        embeddings.vectors(&f.name, self.text_encoder.width())?,
                    ))
                })
                .collect::<Result<Vec<_>, EngineError>>()?;
            let z = self
                .text_encoder
                .forward_with_vectors(&ids, clip_skip, &vectors)?;
            encoded.push(if chunk.unweighted() {
                z
            } else {
                emphasize(&z, &chunk.multipliers)?
            });
        }
        Ok(Tensor::cat(&encoded, 1)?)
    }

    /// SDXL's [`Pipeline::encode_chunks`]: both encoders per chunk, the pooled embedding
    /// of the first chunk, packed into one tensor (see [`sdxl`]).
    fn encode_chunks_sdxl(
        &self,
        second: &SecondEncoder,
        chunks: &[conditioning::PromptChunk],
        embeddings: &dyn EmbeddingLookup,
    ) -> Result<Tensor, EngineError> {
        let mut contexts = Vec::with_capacity(chunks.len());
        let mut first_pooled = None;
        for chunk in chunks {
            let vectors = |width: usize| {
                chunk
                    .fixes
                    .iter()
                    .map(|f| Ok((f.offset, embeddings.vectors(&f.name, width)?)))
                    .collect::<Result<Vec<_>, EngineError>>()
            };
            let weigh = |z: Tensor| {
                if chunk.unweighted() {
                    Ok(z)
                } else {
                    emphasize(&z, &chunk.multipliers)
                }
            };
            let (context, pooled) = sdxl::encode_chunk(
                &self.text_encoder,
                second,
                &chunk.tokens,
                &vectors(self.text_encoder.width())?,
                &vectors(second.encoder.width())?,
                &self.device,
                &weigh,
            )?;
            contexts.push(context);
            first_pooled.get_or_insert(pooled);
        }
        let pooled = first_pooled.ok_or_else(|| {
            EngineError::param("prompt", "(no chunks)", "at least one token chunk")
        })?;
        sdxl::pack(&Tensor::cat(&contexts, 1)?, &pooled)
    }

    /// Embeddings for each entry of a prompt's schedule over `steps` model-call steps.
    pub fn encode_schedule(
        &self,
        prompt: &str,
        steps: usize,
        clip_skip: usize,
    ) -> Result<ScheduledCond, EngineError> {
        conditioning::schedule(prompt, steps)
            .into_iter()
            .map(|(end, text)| Ok((end, self.encode_prompt(&text, clip_skip)?)))
            .collect()
    }

    /// Runs the sampler from unit-variance `noise` (`[1, C, h, w]`, not yet scaled by the
    /// initial sigma) to final latents, with classifier-free guidance between `uncond` and
    /// `cond` (each `[1, 77 * chunks, dim]`).
    ///
    /// `fresh_noise` supplies the ancestral / eta noise; `observe` sees every step and can
    /// cancel by returning `false`.
    pub fn sample(
        &self,
        settings: &SampleSettings,
        cond: &Tensor,
        uncond: &Tensor,
        noise: &Tensor,
        fresh_noise: &mut NoiseFn<'_>,
        observe: &mut dyn FnMut(StepTrace<'_>) -> bool,
    ) -> Result<Tensor, EngineError> {
        let cond = vec![(settings.steps, cond.clone())];
        let uncond = vec![(settings.steps, uncond.clone())];
        self.sample_scheduled(settings, &cond, &uncond, noise, fresh_noise, observe)
    }

    /// VAE encode of an image `[1, 3, H, W]` in [-1, 1] to latents as LDM's
    /// `get_first_stage_encoding(encode_first_stage(x))`: a posterior sample
    /// `mean + std * n`, times the scaling factor. `posterior_noise(numel)` supplies `n`.
    pub fn encode(
        &self,
        image: &Tensor,
        posterior_noise: &mut dyn FnMut(usize) -> Vec<f32>,
    ) -> Result<Tensor, EngineError> {
        let (mean, std) = self.vae_encoder.moments(image)?;
        let n = Tensor::from_vec(
            posterior_noise(mean.elem_count()),
            mean.shape(),
            &self.device,
        )?;
        let z = (mean + (std * n)?)?;
        Ok(z.affine(self.vae_settings.scaling_factor, 0.0)?)
    }

    /// VAE decode of final latents: `vae.decode(latents / scaling_factor)`, unclamped `[1,3,H,W]`.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, EngineError> {
        let factor = Tensor::new(&[self.vae_settings.scaling_factor as f32], &self.device)?;
        // Exact division, as torch does it (candle's `/ f64` multiplies by the reciprocal).
        let scaled = latents.broadcast_div(&factor)?;
        Ok(self.vae.decode(&scaled)?)
    }
}

/// A1111's "Original" emphasis on one chunk `[1, 77, dim]`: `z * w`, rescaled so the mean of
/// the whole chunk stays what it was.
fn emphasize(z: &Tensor, multipliers: &[f32]) -> Result<Tensor, EngineError> {
    let original_mean = z.mean_all()?.to_scalar::<f32>()?;
    let w = Tensor::from_slice(multipliers, (1, multipliers.len(), 1), z.device())?;
    let weighted = z.broadcast_mul(&w)?;
    let new_mean = weighted.mean_all()?.to_scalar::<f32>()?;
    Ok(weighted.affine((original_mean / new_mean) as f64, 0.0)?)
}

/// Converts a decoded `[1, 3, H, W]` image in [-1, 1] to row-major RGB8:
/// `round((x / 2 + 0.5).clamp(0, 1) * 255)` with ties to even, as numpy's `round` in diffusers'
/// `numpy_to_pil` does. Renders use A1111's truncation instead
/// ([`super::resample::decoded_to_image`]); this one is for parity with diffusers.
pub fn decoded_to_rgb8(decoded: &Tensor) -> Result<(u32, u32, Vec<u8>), EngineError> {
    let (batch, channels, height, width) = decoded.dims4()?;
    if batch != 1 || channels != 3 {
        return Err(EngineError::Candle(candle_core::Error::Msg(format!(
            "decoded image has shape {:?}, expected [1, 3, H, W]",
            decoded.dims()
        ))));
    }
    let hwc = decoded
        .i(0)?
        .permute((1, 2, 0))?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let rgb = hwc
        .into_iter()
        .map(|x| {
            let v = (x / 2.0 + 0.5).clamp(0.0, 1.0);
            (v * 255.0).round_ties_even() as u8
        })
        .collect();
    Ok((width as u32, height as u32, rgb))
}
