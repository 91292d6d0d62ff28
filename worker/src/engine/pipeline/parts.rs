//! Building a [`Pipeline`] from networks whose weights and settings were gathered elsewhere
//! (a single A1111 checkpoint, LoRA-merged tensors), and the consistency checks shared with
//! folder loading.

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::ClipTextConfig;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;

use super::super::clip::ClipActivation;
use super::super::config::{self, VaeSettings};
use super::super::schedule::DiscreteSchedule;
use super::super::sdxl::SecondEncoder;
use super::super::text_encoder::TextEncoder;
use super::super::tokenizer::PromptTokenizer;
use super::super::unet::UNet;
use super::super::vae_encoder::VaeEncoder;
use super::super::EngineError;
use super::{Pipeline, Prediction};

/// One network's weights for [`Pipeline::from_parts`].
pub struct PartWeights<'a> {
    pub vb: VarBuilder<'a>,
    /// The file the tensors came from, named in errors.
    pub source: PathBuf,
    /// Which network of that file ("unet", "vae", "text encoder"), for single-file models.
    pub label: &'static str,
}

impl PartWeights<'_> {
    fn error(&self, e: candle_core::Error) -> EngineError {
        EngineError::invalid_model(&self.source, format!("{}: {e}", self.label))
    }
}

/// SDXL's second text encoder for [`Pipeline::from_parts`]: `text_model.*` and
/// `text_projection.weight` tensors in transformers' names.
pub struct SecondClipParts<'a> {
    pub config: ClipTextConfig,
    pub layer_norm_eps: f64,
    pub activation: ClipActivation,
    pub projection_dim: usize,
    pub pad_id: u32,
    pub weights: PartWeights<'a>,
}

/// Everything a [`Pipeline`] is made of, however the weights were stored.
pub struct PipelineParts<'a> {
    /// Where the model came from: reported by [`Pipeline::dir`].
    pub origin: PathBuf,
    pub tokenizer: PromptTokenizer,
    pub clip_config: ClipTextConfig,
    pub clip_layer_norm_eps: f64,
    /// The first text encoder's MLP activation (`gelu` for SD 2.x's OpenCLIP).
    pub clip_activation: ClipActivation,
    pub clip: PartWeights<'a>,
    /// SDXL's second text encoder, `None` for SD 1.x / 2.x.
    pub clip_2: Option<SecondClipParts<'a>>,
    pub unet_settings: config::UNetSettings,
    pub unet: PartWeights<'a>,
    pub vae_settings: VaeSettings,
    pub vae: PartWeights<'a>,
    pub schedule: DiscreteSchedule,
    pub prediction: Prediction,
}

/// The UNet's cross-attention width must be the text encoders' widths together, and an SDXL
/// UNet (`text_time`) needs the second encoder's pooled embedding, as wide as it expects.
pub(super) fn check_text_widths(
    origin: &Path,
    unet: &config::UNetSettings,
    width_1: usize,
    second: Option<&SecondEncoder>,
) -> Result<(), EngineError> {
    let width_2 = second.map_or(0, |s| s.encoder.width());
    if unet.config.cross_attention_dim != width_1 + width_2 {
        return Err(EngineError::invalid_model(
            origin,
            format!(
                "unet cross_attention_dim {} does not match the text encoders' width {}",
                unet.config.cross_attention_dim,
                width_1 + width_2
            ),
        ));
    }
    match (unet.text_time, second) {
        (None, None) => Ok(()),
        (Some(t), Some(s)) if t.pooled_dim() == s.projection_dim() => {
            if s.projection_dim() > width_1 + width_2 {
                return Err(EngineError::invalid_model(
                    origin,
                    "the pooled text embedding is wider than the token context",
                ));
            }
            Ok(())
        }
        (Some(t), Some(s)) => Err(EngineError::invalid_model(
            origin,
            format!(
                "the unet takes a pooled text embedding {} wide (projection_class_embeddings_input_dim \
                 minus 6 x addition_time_embed_dim), the second text encoder gives {}",
                t.pooled_dim(),
                s.projection_dim()
            ),
        )),
        (Some(_), None) => Err(EngineError::invalid_model(
            origin,
            "the unet is an SDXL one (addition_embed_type \"text_time\") but there is no second \
             text encoder (text_encoder_2)",
        )),
        (None, Some(_)) => Err(EngineError::invalid_model(
            origin,
            "there is a second text encoder (text_encoder_2) but the unet takes no pooled \
             embedding (no addition_embed_type)",
        )),
    }
}

impl Pipeline {
    /// Builds a pipeline from networks whose weights and settings were gathered elsewhere,
    /// e.g. from a single A1111 checkpoint by `crate::models`. Checks the same consistency as
    /// [`Pipeline::load_on`].
    pub fn from_parts(parts: PipelineParts<'_>, device: Device) -> Result<Self, EngineError> {
        let PipelineParts {
            origin,
            tokenizer,
            clip_config,
            clip_layer_norm_eps,
            clip_activation,
            clip,
            clip_2,
            unet_settings,
            unet,
            vae_settings,
            vae,
            schedule,
            prediction,
        } = parts;
        let text_encoder_2 = match clip_2 {
            None => None,
            Some(p) => {
                let build = || {
                    let encoder = TextEncoder::with_activation(
                        p.weights.vb.clone(),
                        &p.config,
                        p.layer_norm_eps,
                        p.activation,
                    )?;
                    SecondEncoder::new(p.weights.vb.clone(), encoder, p.projection_dim, p.pad_id)
                };
                Some(build().map_err(|e| p.weights.error(e))?)
            }
        };
        check_text_widths(
            &origin,
            &unet_settings,
            clip_config.embed_dim,
            text_encoder_2.as_ref(),
        )?;
        if vae_settings.config.latent_channels != unet_settings.in_channels
            || unet_settings.in_channels != unet_settings.out_channels
        {
            return Err(EngineError::invalid_model(
                &origin,
                format!(
                    "vae latent_channels {} / unet in_channels {} / out_channels {} disagree \
                     (txt2img models have them all equal)",
                    vae_settings.config.latent_channels,
                    unet_settings.in_channels,
                    unet_settings.out_channels
                ),
            ));
        }
        let text_encoder = TextEncoder::with_activation(
            clip.vb.clone(),
            &clip_config,
            clip_layer_norm_eps,
            clip_activation,
        )
        .map_err(|e| clip.error(e))?;
        let unet_model = UNet::new(
            unet.vb.clone(),
            unet_settings.in_channels,
            unet_settings.out_channels,
            &unet_settings.config,
            unet_settings.text_time,
        )
        .map_err(|e| unet.error(e))?;
        let vae_model = AutoEncoderKL::new(
            vae.vb.clone(),
            vae_settings.in_channels,
            vae_settings.out_channels,
            vae_settings.config.clone(),
        )
        .map_err(|e| vae.error(e))?;
        let vae_encoder = VaeEncoder::new(
            vae.vb.clone(),
            vae_settings.in_channels,
            &vae_settings.config,
        )
        .map_err(|e| vae.error(e))?;
        Ok(Pipeline {
            dir: origin,
            device,
            tokenizer,
            text_encoder,
            text_encoder_2,
            unet: unet_model,
            unet_in_channels: unet_settings.in_channels,
            vae: vae_model,
            vae_encoder,
            vae_settings,
            schedule,
            prediction,
        })
    }
}
