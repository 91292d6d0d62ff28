//! Single-file A1111 / original Stable Diffusion checkpoints: what a file is, and loading an
//! SD 1.x one into a [`Pipeline`].
//!
//! The file has no config, so the network's shape is read off the tensors themselves (levels,
//! layers, channels, attention placement, text width and depth). Only attention head counts
//! are not visible in any shape; they follow the architecture's convention (8 UNet heads for
//! SD 1.x, 64-wide CLIP heads), with a table for the small test encoders that do not.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;

use super::assemble::ModelTensors;
use super::ldm_keys::{self, KeyMap, Part, CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX};
use super::safe_file::SafeFile;
use crate::engine::config::{UNetSettings, VaeSettings};
use crate::engine::pipeline::Prediction;
use crate::engine::schedule::DiscreteSchedule;
use crate::engine::tokenizer::PromptTokenizer;
use crate::engine::{EngineError, Pipeline};

/// What a `.safetensors` file holds, judged by its tensor names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A complete SD 1.x checkpoint (UNet, VAE, CLIP ViT-L text encoder).
    Sd1,
    /// SD 2.x: OpenCLIP text encoder under `cond_stage_model.model.`.
    Sd2,
    /// SDXL base: two text encoders under `conditioner.embedders.`.
    Sdxl,
    /// SDXL refiner: only the OpenCLIP bigG encoder.
    SdxlRefiner,
    /// A UNet without text encoder or VAE.
    UnetOnly,
    /// A VAE on its own.
    Vae,
    /// A LoRA / LyCORIS network.
    Lora,
    /// A textual-inversion embedding.
    Embedding,
    Unknown,
}

impl FileKind {
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::Sd1 => "an SD 1.x checkpoint",
            FileKind::Sd2 => "an SD 2.x checkpoint",
            FileKind::Sdxl => "an SDXL base checkpoint",
            FileKind::SdxlRefiner => "an SDXL refiner checkpoint",
            FileKind::UnetOnly => "a UNet without text encoder and VAE",
            FileKind::Vae => "a VAE",
            FileKind::Lora => "a LoRA",
            FileKind::Embedding => "a textual-inversion embedding",
            FileKind::Unknown => "not a Stable Diffusion checkpoint sdfarm recognises",
        }
    }
}

/// Opens a single file that must be of `kind` (`what`, e.g. "an SDXL base checkpoint", with
/// the `layout` name "SDXL" in messages) and maps its keys
/// onto the diffusers parts; a file of another kind, or one with tensors that fit no part of
/// the layout, is refused with what it is or a few of the tensors named.
pub fn open_as(
    path: &Path,
    kind: FileKind,
    what: &str,
    layout: &str,
) -> Result<(SafeFile, KeyMap), EngineError> {
    let file = SafeFile::open(path)?;
    let found = detect(&file);
    if found != kind {
        return Err(EngineError::invalid_model(
            path,
            format!("this file is {}, not {what}", found.describe()),
        ));
    }
    let map = ldm_keys::map_keys(file.tensors().keys().map(String::as_str));
    if !map.unknown.is_empty() {
        let sample: Vec<&str> = map.unknown.iter().take(3).map(String::as_str).collect();
        return Err(EngineError::invalid_model(
            path,
            format!(
                "{} tensors do not fit the {layout} layout (e.g. {}); the network would be \
                 built wrong",
                map.unknown.len(),
                sample.join(", ")
            ),
        ));
    }
    Ok((file, map))
}

/// Classifies a file by its tensor names.
pub fn detect(file: &SafeFile) -> FileKind {
    let names = file.tensors();
    let any = |prefix: &str| names.keys().any(|k| k.starts_with(prefix));
    let has_unet = any(UNET_PREFIX);
    if any("conditioner.embedders.1.model.") {
        return FileKind::Sdxl;
    }
    if any("conditioner.embedders.0.model.") {
        return FileKind::SdxlRefiner;
    }
    if has_unet && any("cond_stage_model.model.") {
        return FileKind::Sd2;
    }
    if has_unet && any(CLIP_PREFIX) && any(VAE_PREFIX) {
        return FileKind::Sd1;
    }
    if has_unet {
        return FileKind::UnetOnly;
    }
    if names
        .keys()
        .any(|k| k.starts_with("lora_") || k.contains(".lora_down.") || k.contains(".lora_A."))
    {
        return FileKind::Lora;
    }
    if any("emb_params") || any("string_to_param") || (any("clip_l") && names.len() <= 2) {
        return FileKind::Embedding;
    }
    if names.contains_key("encoder.conv_in.weight") && names.contains_key("decoder.conv_in.weight")
        || any("first_stage_model.decoder.")
    {
        return FileKind::Vae;
    }
    FileKind::Unknown
}

/// Refuses anything but an SD 1.x checkpoint (the layout LoRA merging reads), saying what the
/// file is instead.
pub fn require_sd1(file: &SafeFile) -> Result<(), EngineError> {
    match require_checkpoint(file)? {
        FileKind::Sd1 => Ok(()),
        kind => Err(EngineError::invalid_model(
            file.path(),
            format!(
                "this file is {}; LoRA networks merge into SD 1.x single files only so far \
                 (render without <lora:…>, or use an SD 1.x model)",
                kind.describe()
            ),
        )),
    }
}

/// Refuses anything but a loadable checkpoint (SD 1.x, SD 2.x or SDXL base), saying what the file is
/// instead; returns which of the two it is.
pub fn require_checkpoint(file: &SafeFile) -> Result<FileKind, EngineError> {
    let kind = detect(file);
    let hint = match kind {
        FileKind::Sd1 | FileKind::Sd2 | FileKind::Sdxl => return Ok(kind),
        FileKind::SdxlRefiner => {
            "single-file loading supports SD 1.x, SD 2.x and SDXL base checkpoints so far; \
             use the model's diffusers folder instead"
        }
        FileKind::UnetOnly => {
            "a checkpoint needs model.diffusion_model.*, first_stage_model.* and \
             cond_stage_model.transformer.* tensors"
        }
        FileKind::Vae => "use it as a VAE override (sd_vae) with an SD checkpoint",
        FileKind::Lora => "use it in a prompt as <lora:name:weight> with an SD checkpoint",
        FileKind::Embedding => "use it by name in a prompt with an SD checkpoint",
        FileKind::Unknown => {
            "expected original SD tensor names (model.diffusion_model.*, first_stage_model.*, \
             cond_stage_model.*) or a diffusers folder"
        }
    };
    let mut reason = format!("this file is {}; {hint}", kind.describe());
    if kind == FileKind::Unknown {
        let sample: Vec<&str> = file.tensors().keys().take(3).map(String::as_str).collect();
        reason.push_str(&format!(" (first tensors: {})", sample.join(", ")));
    }
    Err(EngineError::invalid_model(file.path(), reason))
}

/// Diffusers-named shapes of one part.
pub(crate) type Shapes = BTreeMap<String, Vec<usize>>;

pub(crate) fn part_shapes(file: &SafeFile, map: &KeyMap, part: Part) -> Shapes {
    map.targets
        .iter()
        .filter(|(_, t)| t.part == part)
        .filter_map(|(stored, t)| {
            let mut shape = file.tensors().get(stored)?.shape.clone();
            if t.squeeze {
                shape.truncate(2);
            }
            Some((t.name.clone(), shape))
        })
        .collect()
}

/// Reads a dimension, or says which tensor is missing or malformed.
pub(crate) fn dim(shapes: &Shapes, name: &str, axis: usize, part: Part) -> Result<usize, String> {
    shapes
        .get(name)
        .and_then(|s| s.get(axis).copied())
        .ok_or_else(|| {
            format!(
                "{}: tensor {name} is missing or has too few axes",
                part.label()
            )
        })
}

/// Distinct indices `i` of names `<prefix><i>.…`.
pub(crate) fn indices(shapes: &Shapes, prefix: &str) -> Vec<usize> {
    let mut found: Vec<usize> = shapes
        .keys()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

/// SD 1.x UNets use 8 attention heads at every level (`num_heads: 8` in v1-inference.yaml).
const SD1_UNET_HEADS: usize = 8;

pub(crate) fn unet_settings(shapes: &Shapes) -> Result<UNetSettings, String> {
    let part = Part::Unet;
    let levels = indices(shapes, "down_blocks.");
    if levels.is_empty() || levels != (0..levels.len()).collect::<Vec<_>>() {
        return Err(format!("unet: down block levels {levels:?} are not 0..n"));
    }
    let layers_per_block = indices(shapes, "down_blocks.0.resnets.").len();
    let mut blocks = Vec::with_capacity(levels.len());
    let mut cross_attention_dim = None;
    let mut linear_projection = false;
    for level in &levels {
        let out_channels = dim(
            shapes,
            &format!("down_blocks.{level}.resnets.0.conv1.weight"),
            0,
            part,
        )?;
        let attention = format!("down_blocks.{level}.attentions.0.");
        let depth = indices(shapes, &format!("{attention}transformer_blocks.")).len();
        let use_cross_attn = (depth > 0).then_some(depth);
        if depth > 0 {
            cross_attention_dim = Some(dim(
                shapes,
                &format!("{attention}transformer_blocks.0.attn2.to_k.weight"),
                1,
                part,
            )?);
            linear_projection = shapes
                .get(&format!("{attention}proj_in.weight"))
                .is_some_and(|s| s.len() == 2);
            if out_channels % SD1_UNET_HEADS != 0 {
                return Err(format!(
                    "unet: level {level} has {out_channels} channels, not divisible into \
                     {SD1_UNET_HEADS} attention heads"
                ));
            }
        }
        blocks.push(BlockConfig {
            out_channels,
            use_cross_attn,
            attention_head_dim: SD1_UNET_HEADS,
        });
    }
    let cross_attention_dim = match cross_attention_dim {
        Some(d) => d,
        None => dim(
            shapes,
            "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
            1,
            part,
        )?,
    };
    Ok(UNetSettings {
        in_channels: dim(shapes, "conv_in.weight", 1, part)?,
        out_channels: dim(shapes, "conv_out.weight", 0, part)?,
        config: UNet2DConditionModelConfig {
            center_input_sample: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            blocks,
            layers_per_block,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim,
            sliced_attention_size: None,
            use_linear_projection: linear_projection,
        },
        text_time: None,
    })
}

/// SD 1.x latents are scaled by this before decoding (`scale_factor` in v1-inference.yaml).
const SD1_VAE_SCALE: f64 = 0.18215;

pub(crate) fn vae_settings(shapes: &Shapes) -> Result<VaeSettings, String> {
    let part = Part::Vae;
    let levels = indices(shapes, "encoder.down_blocks.");
    if levels.is_empty() || levels.len() > 8 {
        return Err(format!(
            "vae: {} encoder levels, expected 1 to 8",
            levels.len()
        ));
    }
    let block_out_channels = levels
        .iter()
        .map(|l| {
            dim(
                shapes,
                &format!("encoder.down_blocks.{l}.resnets.0.conv1.weight"),
                0,
                part,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let decoder_levels = indices(shapes, "decoder.up_blocks.").len();
    if decoder_levels != levels.len() {
        return Err(format!(
            "vae: {} encoder levels but {decoder_levels} decoder levels",
            levels.len()
        ));
    }
    Ok(VaeSettings {
        in_channels: dim(shapes, "encoder.conv_in.weight", 1, part)?,
        out_channels: dim(shapes, "decoder.conv_out.weight", 0, part)?,
        config: AutoEncoderKLConfig {
            block_out_channels,
            layers_per_block: indices(shapes, "encoder.down_blocks.0.resnets.").len(),
            latent_channels: dim(shapes, "decoder.conv_in.weight", 1, part)?,
            norm_num_groups: 32,
            use_quant_conv: shapes.contains_key("quant_conv.weight"),
            use_post_quant_conv: shapes.contains_key("post_quant_conv.weight"),
        },
        scaling_factor: SD1_VAE_SCALE,
        downscale: 1 << (levels.len() - 1),
    })
}

/// Head counts no tensor shape reveals. Production text towers all use 64-wide heads (CLIP
/// ViT-L/14: 768/12); the tiny encoders of the diffusers and transformers test suites do not.
fn clip_heads(width: usize) -> Option<usize> {
    match width {
        32 => Some(4),
        8 | 4 => Some(2),
        w if w >= 64 && w % 64 == 0 => Some(w / 64),
        _ => None,
    }
}

pub(crate) fn clip_config(shapes: &Shapes) -> Result<ClipTextConfig, String> {
    let part = Part::TextEncoder;
    let token = "text_model.embeddings.token_embedding.weight";
    let width = dim(shapes, token, 1, part)?;
    let heads = clip_heads(width).ok_or_else(|| {
        format!(
            "text encoder: width {width} has no known attention head count (known: 32, 8, 4 \
             and multiples of 64); use a diffusers folder, whose config.json names it"
        )
    })?;
    Ok(ClipTextConfig {
        vocab_size: dim(shapes, token, 0, part)?,
        embed_dim: width,
        activation: Activation::QuickGelu,
        intermediate_size: dim(
            shapes,
            "text_model.encoder.layers.0.mlp.fc1.weight",
            0,
            part,
        )?,
        max_position_embeddings: dim(
            shapes,
            "text_model.embeddings.position_embedding.weight",
            0,
            part,
        )?,
        pad_with: None,
        num_hidden_layers: indices(shapes, "text_model.encoder.layers.").len(),
        num_attention_heads: heads,
        projection_dim: width,
    })
}

/// Reads one part's tensors under their diffusers names.
pub(crate) fn part_tensors(
    file: &SafeFile,
    map: &KeyMap,
    part: Part,
    device: &Device,
) -> Result<HashMap<String, Tensor>, EngineError> {
    let wanted: Vec<(&str, String)> = map
        .targets
        .iter()
        .filter(|(_, t)| t.part == part)
        .map(|(stored, t)| (stored.as_str(), t.name.clone()))
        .collect();
    let mut tensors = file.read(&wanted, device)?;
    for target in map.targets.values().filter(|t| t.part == part && t.squeeze) {
        if let Some(t) = tensors.get_mut(&target.name) {
            if t.rank() == 4 {
                let (out, inp) = (t.dim(0)?, t.dim(1)?);
                *t = t.reshape((out, inp))?;
            }
        }
    }
    Ok(tensors)
}

/// Loads an SD 1.x single-file checkpoint onto `device`.
pub fn load_sd1(path: &Path, device: &Device) -> Result<Pipeline, EngineError> {
    read_sd1(path, device)?.into_pipeline(device)
}

/// Reads an SD 1.x single-file checkpoint's weights under diffusers names, with the settings
/// its tensor shapes imply.
pub fn read_sd1(path: &Path, device: &Device) -> Result<ModelTensors, EngineError> {
    let file = SafeFile::open(path)?;
    require_sd1(&file)?;
    let map = ldm_keys::map_keys(file.tensors().keys().map(String::as_str));
    if !map.unknown.is_empty() {
        let sample: Vec<&str> = map.unknown.iter().take(3).map(String::as_str).collect();
        return Err(EngineError::invalid_model(
            path,
            format!(
                "{} tensors do not fit the SD 1.x layout (e.g. {}); the network would be built \
                 wrong",
                map.unknown.len(),
                sample.join(", ")
            ),
        ));
    }
    let bad = |reason: String| EngineError::invalid_model(path, reason);
    let unet_settings = unet_settings(&part_shapes(&file, &map, Part::Unet)).map_err(bad)?;
    let vae_settings = vae_settings(&part_shapes(&file, &map, Part::Vae)).map_err(bad)?;
    let clip_config = clip_config(&part_shapes(&file, &map, Part::TextEncoder)).map_err(bad)?;
    let mut parts = BTreeMap::new();
    let mut sources = BTreeMap::new();
    for part in [Part::TextEncoder, Part::Unet, Part::Vae] {
        parts.insert(part, part_tensors(&file, &map, part, device)?);
        sources.insert(part, path.to_path_buf());
    }
    Ok(ModelTensors {
        origin: path.to_path_buf(),
        tokenizer: PromptTokenizer::builtin()?,
        clip_config,
        clip_layer_norm_eps: 1e-5,
        clip_activation: crate::engine::clip::ClipActivation::QuickGelu,
        unet_settings,
        vae_settings,
        schedule: DiscreteSchedule::sd15(),
        prediction: Prediction::Epsilon,
        parts,
        sources,
    })
}
