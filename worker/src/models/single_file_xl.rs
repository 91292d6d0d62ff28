//! Single-file SDXL base checkpoints (the SGM layout A1111 and ComfyUI load):
//!
//! - `model.diffusion_model.*`: the UNet, numbered as in SD 1.x checkpoints (mapped by
//!   [`ldm_keys`]), plus `label_emb.0.{0,2}` (diffusers `add_embedding.linear_{1,2}`);
//! - `first_stage_model.*`: the VAE, as in SD 1.x;
//! - `conditioner.embedders.0.transformer.text_model.*`: CLIP ViT-L in transformers naming;
//! - `conditioner.embedders.1.model.*`: OpenCLIP bigG in OpenCLIP naming (`resblocks`, fused
//!   `attn.in_proj_*` q/k/v, `text_projection` stored as `x @ P`, i.e. transposed), converted
//!   here to transformers names.
//!
//! As for SD 1.x the network's shape is read off the tensors. What no shape reveals follows
//! SDXL's own configuration (`sd_xl_base.yaml`): 64-wide UNet attention heads, 64-wide text
//! heads, `quick_gelu` in the first encoder and `gelu` in the second, pad id 0 for the second
//! encoder, latents scaled by 0.13025, epsilon prediction on SD's scaled-linear schedule. The
//! tiny test models of diffusers' suite (and the reference kit's) use 16-wide UNet heads at
//! 32 and 64 channels; those widths are recognised as such.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::ldm_keys::Part;
use super::safe_file::SafeFile;
use super::single_file::{self, FileKind, Shapes};
use crate::engine::clip::ClipActivation;
use crate::engine::config::TextTimeEmbedding;
use crate::engine::pipeline::{PartWeights, PipelineParts, Prediction, SecondClipParts};
use crate::engine::schedule::DiscreteSchedule;
use crate::engine::tokenizer::PromptTokenizer;
use crate::engine::{EngineError, Pipeline};

/// OpenCLIP bigG's prefix in an SGM checkpoint.
pub const OPEN_CLIP_PREFIX: &str = "conditioner.embedders.1.model.";
/// `scale_factor` of SDXL's first stage (`sd_xl_base.yaml`).
const SDXL_VAE_SCALE: f64 = 0.13025;

/// UNet attention heads per level width: SDXL's `num_head_channels: 64`, and 16-wide heads
/// for the 32- and 64-channel levels of the tiny test UNets.
pub(crate) fn unet_heads(channels: usize) -> Option<usize> {
    match channels {
        32 => Some(2),
        64 => Some(4),
        c if c >= 128 && c % 64 == 0 => Some(c / 64),
        _ => None,
    }
}

/// OpenCLIP text-tower names → transformers `CLIPTextModelWithProjection` names. `None` for
/// tensors that are not used (`logit_scale`, buffers) or must be split (`in_proj_*`).
fn open_clip_name(rest: &str) -> Option<String> {
    let fixed = [
        (
            "token_embedding.weight",
            "text_model.embeddings.token_embedding.weight",
        ),
        (
            "positional_embedding",
            "text_model.embeddings.position_embedding.weight",
        ),
        ("ln_final.weight", "text_model.final_layer_norm.weight"),
        ("ln_final.bias", "text_model.final_layer_norm.bias"),
    ];
    if let Some((_, to)) = fixed.iter().find(|(from, _)| *from == rest) {
        return Some(to.to_string());
    }
    let rest = rest.strip_prefix("transformer.resblocks.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let renames = [
        ("ln_1.", "layer_norm1."),
        ("ln_2.", "layer_norm2."),
        ("attn.out_proj.", "self_attn.out_proj."),
        ("mlp.c_fc.", "mlp.fc1."),
        ("mlp.c_proj.", "mlp.fc2."),
    ];
    renames.iter().find_map(|(from, to)| {
        tail.strip_prefix(from)
            .map(|param| format!("text_model.encoder.layers.{layer}.{to}{param}"))
    })
}

/// An OpenCLIP text tower's tensors (under `prefix`) in transformers names: fused q/k/v split
/// in three, the projection transposed back to a Linear weight.
pub(crate) fn open_clip_tensors(
    file: &SafeFile,
    prefix: &str,
    device: &Device,
) -> Result<HashMap<String, Tensor>, EngineError> {
    let bad = |reason: String| EngineError::invalid_model(file.path(), reason);
    let stored: Vec<(&str, String)> = file
        .tensors()
        .keys()
        .filter_map(|k| Some((k.as_str(), k.strip_prefix(prefix)?.to_string())))
        .collect();
    let raw = file.read(&stored, device)?;
    let mut out = HashMap::new();
    for (rest, tensor) in raw {
        if let Some(name) = open_clip_name(&rest) {
            out.insert(name, tensor);
            continue;
        }
        if rest == "text_projection" {
            out.insert("text_projection.weight".into(), tensor.t()?.contiguous()?);
            continue;
        }
        let fused = rest
            .strip_prefix("transformer.resblocks.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(layer, tail)| {
                let param = tail.strip_prefix("attn.in_proj_")?;
                Some((layer.to_string(), param.to_string()))
            });
        match fused {
            Some((layer, param)) => {
                let rows = tensor.dim(0)?;
                if rows % 3 != 0 {
                    return Err(bad(format!(
                        "{prefix}{rest}: {rows} rows do not split into q, k and v"
                    )));
                }
                for (i, which) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                    let part = tensor.narrow(0, i * rows / 3, rows / 3)?.contiguous()?;
                    out.insert(
                        format!("text_model.encoder.layers.{layer}.self_attn.{which}.{param}"),
                        part,
                    );
                }
            }
            None if rest == "logit_scale" || rest.ends_with("attn_mask") => {}
            None => {
                return Err(bad(format!(
                    "{prefix}{rest} does not fit an OpenCLIP text encoder"
                )));
            }
        }
    }
    Ok(out)
}

pub(crate) fn shapes_of(tensors: &HashMap<String, Tensor>) -> Shapes {
    tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect()
}

/// Loads an SDXL base single-file checkpoint onto `device`.
pub fn load_sdxl(path: &Path, device: &Device) -> Result<Pipeline, EngineError> {
    let (file, map) =
        single_file::open_as(path, FileKind::Sdxl, "an SDXL base checkpoint", "SDXL")?;
    let bad = |reason: String| EngineError::invalid_model(path, reason);

    let clip_2 = open_clip_tensors(&file, OPEN_CLIP_PREFIX, device)?;
    let shapes_2 = shapes_of(&clip_2);
    let mut config_2 =
        single_file::clip_config(&shapes_2).map_err(|e| bad(format!("second {e}")))?;
    let projection_dim =
        single_file::dim(&shapes_2, "text_projection.weight", 0, Part::TextEncoder)
            .map_err(|e| bad(format!("second {e}")))?;
    config_2.projection_dim = projection_dim;
    let clip_config =
        single_file::clip_config(&single_file::part_shapes(&file, &map, Part::TextEncoder))
            .map_err(bad)?;

    let unet_shapes = single_file::part_shapes(&file, &map, Part::Unet);
    let mut unet_settings = single_file::unet_settings(&unet_shapes).map_err(bad)?;
    for block in &mut unet_settings.config.blocks {
        block.attention_head_dim = unet_heads(block.out_channels).ok_or_else(|| {
            bad(format!(
                "unet: a level of {} channels has no known attention head count (SDXL's are \
                 64 wide); use a diffusers folder, whose config.json names it",
                block.out_channels
            ))
        })?;
    }
    let input_dim = single_file::dim(&unet_shapes, "add_embedding.linear_1.weight", 1, Part::Unet)
        .map_err(bad)?;
    if input_dim <= projection_dim || (input_dim - projection_dim) % 6 != 0 {
        return Err(bad(format!(
            "unet: add_embedding takes {input_dim} values, which is not the pooled text \
             embedding ({projection_dim}) plus six equal time-id embeddings"
        )));
    }
    unet_settings.text_time = Some(TextTimeEmbedding {
        time_embed_dim: (input_dim - projection_dim) / 6,
        input_dim,
    });
    let mut vae_settings =
        single_file::vae_settings(&single_file::part_shapes(&file, &map, Part::Vae))
            .map_err(bad)?;
    vae_settings.scaling_factor = SDXL_VAE_SCALE;

    let weights = |part: Part, tensors: HashMap<String, Tensor>| PartWeights {
        vb: VarBuilder::from_tensors(tensors, DType::F32, device),
        source: path.to_path_buf(),
        label: part.label(),
    };
    let mut parts = BTreeMap::new();
    for part in [Part::TextEncoder, Part::Unet, Part::Vae] {
        parts.insert(part, single_file::part_tensors(&file, &map, part, device)?);
    }
    let mut take = |part: Part| weights(part, parts.remove(&part).unwrap_or_default());
    let (clip, unet, vae) = (take(Part::TextEncoder), take(Part::Unet), take(Part::Vae));
    Pipeline::from_parts(
        PipelineParts {
            origin: path.to_path_buf(),
            tokenizer: PromptTokenizer::builtin()?,
            clip_config,
            clip_layer_norm_eps: 1e-5,
            clip_activation: ClipActivation::QuickGelu,
            clip,
            clip_2: Some(SecondClipParts {
                config: config_2,
                layer_norm_eps: 1e-5,
                activation: ClipActivation::Gelu,
                projection_dim,
                // OpenCLIP pads with 0 after the end token (A1111's `id_pad`).
                pad_id: 0,
                weights: PartWeights {
                    vb: VarBuilder::from_tensors(clip_2, DType::F32, device),
                    source: path.to_path_buf(),
                    label: "second text encoder",
                },
            }),
            unet_settings,
            unet,
            vae_settings,
            vae,
            schedule: DiscreteSchedule::sd15(),
            prediction: Prediction::Epsilon,
        },
        device.clone(),
    )
}
