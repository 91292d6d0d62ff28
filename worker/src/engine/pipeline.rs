//! sdfarm's txt2img pipeline over a diffusers-layout SD 1.x folder.
//!
//! The stages are public so parity tests can check each one against diffusers' intermediate
//! tensors: [`Pipeline::encode_prompt`] (CLIP hidden states), [`Pipeline::sample`] (the sampler
//! loop with classifier-free guidance, starting from given noise) and [`Pipeline::decode`] /
//! [`decoded_to_rgb8`] (VAE and pixel conversion).

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;

use super::config::{self, VaeSettings};
use super::kdiffusion;
use super::sampler::{self, DdimVariant, NoiseFn, Sampler, SamplerOptions, StepInfo};
use super::schedule::DiscreteSchedule;
use super::scheduler::{self, ScheduleOverrides, ScheduleType};
use super::text_encoder::TextEncoder;
use super::tokenizer::PromptTokenizer;
use super::unet::UNet;
use super::EngineError;

/// A loaded SD 1.x model: tokenizer, text encoder, UNet, VAE and training schedule.
pub struct Pipeline {
    dir: PathBuf,
    device: Device,
    tokenizer: PromptTokenizer,
    text_encoder: TextEncoder,
    unet: UNet,
    unet_in_channels: usize,
    vae: AutoEncoderKL,
    vae_settings: VaeSettings,
    schedule: DiscreteSchedule,
}

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
        }
    }

    /// The sigmas a sigma-based sampler runs over (A1111's `get_sigmas`).
    pub fn sigmas(&self, schedule: &DiscreteSchedule) -> Result<Vec<f32>, EngineError> {
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
    /// `scheduler/`) onto the CPU.
    pub fn load(dir: &Path) -> Result<Self, EngineError> {
        Self::load_on(dir, Device::Cpu)
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
        let text_encoder = TextEncoder::new(
            load_weights(&clip_weights, &device)?,
            &clip_config,
            layer_norm_eps,
        )
        .map_err(|e| EngineError::invalid_model(&clip_weights, e.to_string()))?;

        let unet_settings = config::unet_settings(&dir.join("unet/config.json"))?;
        if unet_settings.config.cross_attention_dim != clip_config.embed_dim {
            return Err(EngineError::invalid_model(
                dir,
                format!(
                    "unet cross_attention_dim {} does not match the text encoder's hidden_size {}",
                    unet_settings.config.cross_attention_dim, clip_config.embed_dim
                ),
            ));
        }
        let unet_weights = dir.join("unet/diffusion_pytorch_model.safetensors");
        let unet = UNet::new(
            load_weights(&unet_weights, &device)?,
            unet_settings.in_channels,
            unet_settings.out_channels,
            &unet_settings.config,
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
        let vae = AutoEncoderKL::new(
            load_weights(&vae_weights, &device)?,
            vae_settings.in_channels,
            vae_settings.out_channels,
            vae_settings.config.clone(),
        )
        .map_err(|e| EngineError::invalid_model(&vae_weights, e.to_string()))?;

        let scheduler_config = dir.join("scheduler/scheduler_config.json");
        let schedule = if scheduler_config.is_file() {
            DiscreteSchedule::from_diffusers_config(&config::read_json(&scheduler_config)?)?
        } else {
            DiscreteSchedule::sd15()
        };

        Ok(Pipeline {
            dir: dir.to_path_buf(),
            device,
            tokenizer,
            text_encoder,
            unet,
            unet_in_channels: unet_settings.in_channels,
            vae,
            vae_settings,
            schedule,
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

    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// Number of CLIP layers, the upper bound for clip skip.
    pub fn text_layers(&self) -> usize {
        self.text_encoder.num_layers()
    }

    /// Image pixels per latent pixel (8 for SD 1.x, 2 for the tiny model).
    pub fn latent_downscale(&self) -> usize {
        self.vae_settings.downscale
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
    pub fn encode_prompt(&self, text: &str, clip_skip: usize) -> Result<Tensor, EngineError> {
        let ids = self.tokenizer.encode(text)?;
        let ids = Tensor::from_vec(ids, (1, super::tokenizer::CONTEXT_LEN), &self.device)?;
        Ok(self.text_encoder.forward(&ids, clip_skip)?)
    }

    /// Runs the sampler from unit-variance `noise` (`[1, C, h, w]`, not yet scaled by the
    /// initial sigma) to final latents, with classifier-free guidance between `uncond` and
    /// `cond` (each `[1, 77, dim]`).
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
        if settings.steps == 0 || settings.steps > self.schedule.len() {
            return Err(EngineError::param(
                "steps",
                settings.steps,
                format!("1 to {}", self.schedule.len()),
            ));
        }
        // Batch order [uncond, cond], as diffusers and A1111 stack them.
        let context = Tensor::cat(&[uncond, cond], 0)?;
        let cfg = settings.cfg_scale;
        let last_unet_out: RefCell<Option<Tensor>> = RefCell::new(None);

        // Guided epsilon for a model input that is already scaled for the UNet.
        let guided_eps = |model_input: &Tensor, timestep: f64| -> Result<Tensor, EngineError> {
            let batch = Tensor::cat(&[model_input, model_input], 0)?;
            let out = self.unet.forward(&batch, timestep, &context)?;
            let eps_uncond = out.i(0..1)?;
            let eps_cond = out.i(1..2)?;
            let guided = (&eps_uncond + ((&eps_cond - &eps_uncond)?.affine(cfg as f64, 0.0))?)?;
            *last_unet_out.borrow_mut() = Some(out);
            Ok(guided)
        };

        let mut on_step = |info: StepInfo<'_>| -> Result<bool, EngineError> {
            let unet_out = last_unet_out.borrow();
            let unet_out = unet_out
                .as_ref()
                .expect("the model runs before every step ends");
            Ok(observe(StepTrace {
                step: info.step,
                total: info.total,
                unet_out,
                latents: info.latents,
            }))
        };

        match settings.sampler.algorithm() {
            Some(algorithm) => {
                let sigmas = settings.sigmas(&self.schedule)?;
                let x = noise.affine(sigmas[0] as f64, 0.0)?;
                self.run_kdiffusion(
                    algorithm,
                    settings,
                    &sigmas,
                    x,
                    &guided_eps,
                    fresh_noise,
                    &mut on_step,
                )
            }
            None => {
                let timesteps = match settings.ddim {
                    DdimVariant::Diffusers => self.schedule.ddim_timesteps(settings.steps),
                    DdimVariant::A1111 => {
                        sampler::a1111_ddim_timesteps(self.schedule.len(), settings.steps)
                    }
                };
                let mut eps_model = |x: &Tensor, t: usize| -> Result<Tensor, EngineError> {
                    guided_eps(x, t as f64)
                };
                sampler::sample_ddim(
                    &mut eps_model,
                    noise.clone(),
                    &self.schedule,
                    &timesteps,
                    settings.ddim,
                    settings.options.eta,
                    fresh_noise,
                    &mut on_step,
                )
            }
        }
    }

    /// A k-diffusion sampler over the model wrapped as k-diffusion's `CompVisDenoiser`:
    /// `D(x, s) = x - s * eps(x * c_in, t(s))` with `c_in = 1 / sqrt(s^2 + 1)`.
    #[allow(clippy::too_many_arguments)]
    fn run_kdiffusion(
        &self,
        algorithm: kdiffusion::Algorithm,
        settings: &SampleSettings,
        sigmas: &[f32],
        x: Tensor,
        guided_eps: &dyn Fn(&Tensor, f64) -> Result<Tensor, EngineError>,
        fresh_noise: &mut NoiseFn<'_>,
        on_step: &mut sampler::StepFn<'_>,
    ) -> Result<Tensor, EngineError> {
        let mut denoise = |x: &Tensor, sigma: f32| -> Result<Tensor, EngineError> {
            let c_in = 1.0 / (sigma * sigma + 1.0).sqrt();
            let t = self.schedule.sigma_to_t(sigma) as f64;
            let eps = guided_eps(&x.affine(c_in as f64, 0.0)?, t)?;
            Ok((x + eps.affine(-sigma as f64, 0.0)?)?)
        };
        let options = settings.options.kdiffusion(settings.sampler);
        kdiffusion::sample(
            algorithm,
            &mut denoise,
            x,
            sigmas,
            &options,
            fresh_noise,
            on_step,
        )
    }

    /// VAE decode of final latents: `vae.decode(latents / scaling_factor)`, unclamped `[1,3,H,W]`.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, EngineError> {
        let factor = Tensor::new(&[self.vae_settings.scaling_factor as f32], &self.device)?;
        // Exact division, as torch does it (candle's `/ f64` multiplies by the reciprocal).
        let scaled = latents.broadcast_div(&factor)?;
        Ok(self.vae.decode(&scaled)?)
    }
}

/// Converts a decoded `[1, 3, H, W]` image in [-1, 1] to row-major RGB8:
/// `round((x / 2 + 0.5).clamp(0, 1) * 255)` with ties to even, as numpy's `round` in diffusers'
/// `numpy_to_pil` does.
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
