//! Single-file SD 2.x checkpoints (the original Stability layout A1111 loads):
//! `model.diffusion_model.*` and `first_stage_model.*` as in SD 1.x, and the OpenCLIP ViT-H
//! text tower under `cond_stage_model.model.*` (OpenCLIP names, converted as for SDXL).
//!
//! What the shapes do not show follows SD 2.x's configuration (`v2-inference.yaml`): 64-wide
//! UNet and text attention heads (16-wide UNet heads at the tiny test widths), `gelu`, pad id 0,
//! latents scaled by 0.18215, SD's scaled-linear schedule. The text encoder is used as
//! SD 2.x uses it ("penultimate"): every resblock but the last, then `ln_final`. That is
//! what diffusers' converted folders hold (23 of OpenCLIP-H's 24 layers), so a file and its
//! folder condition alike.
//!
//! Epsilon or v-prediction is not visible in the weights. The rule, in order:
//!
//! 1. the file's metadata: `modelspec.prediction_type` (`v`, `v_prediction`, `epsilon`,
//!    `eps`), else a `modelspec.architecture` ending in `-v` (Stability's
//!    `stable-diffusion-v2-768-v`) means v;
//! 2. otherwise A1111's test (`is_using_v_parameterization_for_sd2`): v when the UNet's output
//!    at t = 999 on constant latents of 0.5 averages more than 1 below its input.
//!
//! A1111 itself only applies the test (or a `.yaml` beside the file).

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::ldm_keys::Part;
use super::safe_file::SafeFile;
use super::single_file::{self, FileKind};
use super::single_file_xl::{open_clip_tensors, shapes_of, unet_heads};
use crate::engine::clip::ClipActivation;
use crate::engine::pipeline::{PartWeights, PipelineParts, Prediction};
use crate::engine::schedule::DiscreteSchedule;
use crate::engine::tokenizer::PromptTokenizer;
use crate::engine::{EngineError, Pipeline};

/// SD 2.x's OpenCLIP prefix.
pub const SD2_CLIP_PREFIX: &str = "cond_stage_model.model.";
/// `scale_factor` of SD 2.x's first stage.
const SD2_VAE_SCALE: f64 = 0.18215;

/// What the file's metadata says the UNet predicts, if anything.
pub fn prediction_from_metadata(file: &SafeFile) -> Option<Prediction> {
    let meta = file.metadata();
    if let Some(kind) = meta.get("modelspec.prediction_type") {
        return match kind.trim().to_ascii_lowercase().as_str() {
            "v" | "v_prediction" | "v-prediction" => Some(Prediction::V),
            "epsilon" | "eps" => Some(Prediction::Epsilon),
            _ => None,
        };
    }
    meta.get("modelspec.architecture")
        .filter(|a| a.trim().ends_with("-v"))
        .map(|_| Prediction::V)
}

/// Loads an SD 2.x single-file checkpoint onto `device`.
pub fn load_sd2(path: &Path, device: &Device) -> Result<Pipeline, EngineError> {
    let (file, map) = single_file::open_as(path, FileKind::Sd2, "an SD 2.x checkpoint", "SD 2.x")?;
    let bad = |reason: String| EngineError::invalid_model(path, reason);

    let clip = open_clip_tensors(&file, SD2_CLIP_PREFIX, device)?;
    let mut clip_config = single_file::clip_config(&shapes_of(&clip)).map_err(bad)?;
    if clip_config.num_hidden_layers < 2 {
        return Err(bad(format!(
            "text encoder: {} layers; SD 2.x uses all but the last, so it needs at least 2",
            clip_config.num_hidden_layers
        )));
    }
    // "penultimate": the last resblock is not used.
    clip_config.num_hidden_layers -= 1;

    let mut unet_settings =
        single_file::unet_settings(&single_file::part_shapes(&file, &map, Part::Unet))
            .map_err(bad)?;
    for block in &mut unet_settings.config.blocks {
        block.attention_head_dim = unet_heads(block.out_channels).ok_or_else(|| {
            bad(format!(
                "unet: a level of {} channels has no known attention head count (SD 2.x's are \
                 64 wide); use a diffusers folder, whose config.json names it",
                block.out_channels
            ))
        })?;
    }
    let mut vae_settings =
        single_file::vae_settings(&single_file::part_shapes(&file, &map, Part::Vae))
            .map_err(bad)?;
    vae_settings.scaling_factor = SD2_VAE_SCALE;

    let tensors = |part: Part| -> Result<PartWeights<'static>, EngineError> {
        Ok(PartWeights {
            vb: VarBuilder::from_tensors(
                single_file::part_tensors(&file, &map, part, device)?,
                DType::F32,
                device,
            ),
            source: path.to_path_buf(),
            label: part.label(),
        })
    };
    let (unet, vae) = (tensors(Part::Unet)?, tensors(Part::Vae)?);
    let mut pipeline = Pipeline::from_parts(
        PipelineParts {
            origin: path.to_path_buf(),
            tokenizer: PromptTokenizer::builtin()?.with_pad_id(0),
            clip_config,
            clip_layer_norm_eps: 1e-5,
            clip_activation: ClipActivation::Gelu,
            clip: PartWeights {
                vb: VarBuilder::from_tensors(clip, DType::F32, device),
                source: path.to_path_buf(),
                label: Part::TextEncoder.label(),
            },
            clip_2: None,
            unet_settings,
            unet,
            vae_settings,
            vae,
            schedule: DiscreteSchedule::sd15(),
            prediction: Prediction::Epsilon,
        },
        device.clone(),
    )?;
    let prediction = match prediction_from_metadata(&file) {
        Some(p) => p,
        None if pipeline.unet_suggests_v_prediction()? => Prediction::V,
        None => Prediction::Epsilon,
    };
    pipeline.set_prediction(prediction);
    Ok(pipeline)
}
