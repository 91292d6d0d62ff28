//! Reading a diffusers folder's `config.json` files into candle's model configurations.
//!
//! Only what SD 1.x, SD 2.x and SDXL models use is accepted; anything that would make sdfarm
//! build a different network than the checkpoint describes (class embeddings, other added
//! conditionings, asymmetric up blocks...) is refused with the offending key named, rather
//! than loaded and rendered wrong.

use std::path::{Path, PathBuf};

use candle_transformers::models::clip::text_model::{Activation, ClipTextConfig};
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;
use serde::Deserialize;
use serde_json::Value;

use super::clip::ClipActivation;
use super::EngineError;

/// Reads and parses one JSON file of a model folder.
pub fn read_json(path: &Path) -> Result<Value, EngineError> {
    let raw = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            EngineError::invalid_model(path, "file is missing")
        } else {
            EngineError::io(path, e)
        }
    })?;
    serde_json::from_slice(&raw)
        .map_err(|e| EngineError::invalid_model(path, format!("not valid JSON: {e}")))
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path, value: Value) -> Result<T, EngineError> {
    serde_json::from_value(value)
        .map_err(|e| EngineError::invalid_model(path, format!("unexpected config: {e}")))
}

/// A value diffusers allows either once for all blocks or once per block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn get(&self, i: usize) -> Option<usize> {
        match self {
            PerBlock::One(v) => Some(*v),
            PerBlock::Each(v) => v.get(i).copied(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct UNetJson {
    in_channels: usize,
    out_channels: usize,
    block_out_channels: Vec<usize>,
    down_block_types: Vec<String>,
    up_block_types: Vec<String>,
    layers_per_block: usize,
    cross_attention_dim: usize,
    attention_head_dim: PerBlock,
    #[serde(default)]
    num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    transformer_layers_per_block: Option<PerBlock>,
    #[serde(default = "default_groups")]
    norm_num_groups: usize,
    #[serde(default = "default_eps")]
    norm_eps: f64,
    #[serde(default = "default_true")]
    flip_sin_to_cos: bool,
    #[serde(default)]
    freq_shift: f64,
    #[serde(default = "default_one")]
    downsample_padding: usize,
    #[serde(default = "default_one_f")]
    mid_block_scale_factor: f64,
    #[serde(default)]
    use_linear_projection: bool,
    #[serde(default)]
    center_input_sample: bool,
    #[serde(default)]
    addition_embed_type: Option<String>,
    #[serde(default)]
    class_embed_type: Option<String>,
    #[serde(default)]
    time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    encoder_hid_dim: Option<usize>,
    #[serde(default)]
    addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    mid_block_type: Option<String>,
    #[serde(default)]
    only_cross_attention: Option<Value>,
    #[serde(default)]
    dual_cross_attention: Option<bool>,
    #[serde(default)]
    resnet_time_scale_shift: Option<String>,
    #[serde(default)]
    reverse_transformer_layers_per_block: Option<Value>,
    #[serde(default)]
    time_embedding_type: Option<String>,
    #[serde(default)]
    class_embeddings_concat: Option<bool>,
    #[serde(default)]
    attention_type: Option<String>,
}

fn default_groups() -> usize {
    32
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_one() -> usize {
    1
}
fn default_one_f() -> f64 {
    1.0
}

/// SDXL's added conditioning (`addition_embed_type = "text_time"`): the six size/crop time
/// ids, each embedded sinusoidally `time_embed_dim` wide, concatenated after the pooled text
/// embedding; the `input_dim`-wide result goes through `add_embedding` and is added to the
/// timestep embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextTimeEmbedding {
    pub time_embed_dim: usize,
    pub input_dim: usize,
}

impl TextTimeEmbedding {
    /// Width of the pooled text embedding this UNet expects.
    pub fn pooled_dim(&self) -> usize {
        self.input_dim.saturating_sub(6 * self.time_embed_dim)
    }
}

/// Everything needed to build the UNet.
#[derive(Debug, Clone)]
pub struct UNetSettings {
    pub in_channels: usize,
    pub out_channels: usize,
    pub config: UNet2DConditionModelConfig,
    /// SDXL's pooled-text and size conditioning, `None` for SD 1.x / 2.x.
    pub text_time: Option<TextTimeEmbedding>,
}

/// `unet/config.json` → candle's UNet configuration.
pub fn unet_settings(path: &Path) -> Result<UNetSettings, EngineError> {
    let json: UNetJson = parse(path, read_json(path)?)?;
    let unsupported = |key: &str, value: &dyn std::fmt::Debug| {
        EngineError::invalid_model(
            path,
            format!("{key} = {value:?} is not supported (SD 1.x, SD 2.x and SDXL UNets only)"),
        )
    };
    if json.class_embed_type.is_some() {
        return Err(unsupported("class_embed_type", &json.class_embed_type));
    }
    let text_time = match json.addition_embed_type.as_deref() {
        None => None,
        Some("text_time") => {
            let need = |key: &str, v: Option<usize>| {
                v.filter(|&v| v > 0).ok_or_else(|| {
                    EngineError::invalid_model(
                        path,
                        format!("addition_embed_type \"text_time\" needs a positive {key}"),
                    )
                })
            };
            let t = TextTimeEmbedding {
                time_embed_dim: need("addition_time_embed_dim", json.addition_time_embed_dim)?,
                input_dim: need(
                    "projection_class_embeddings_input_dim",
                    json.projection_class_embeddings_input_dim,
                )?,
            };
            if t.input_dim <= 6 * t.time_embed_dim {
                return Err(unsupported(
                    "projection_class_embeddings_input_dim",
                    &t.input_dim,
                ));
            }
            Some(t)
        }
        Some(other) => return Err(unsupported("addition_embed_type", &other)),
    };
    let refuse_unless = |key: &str, value: &Option<String>, ok: &[&str]| match value {
        Some(v) if !ok.contains(&v.as_str()) => Err(unsupported(key, v)),
        _ => Ok(()),
    };
    refuse_unless(
        "mid_block_type",
        &json.mid_block_type,
        &["UNetMidBlock2DCrossAttn"],
    )?;
    refuse_unless(
        "resnet_time_scale_shift",
        &json.resnet_time_scale_shift,
        &["default"],
    )?;
    refuse_unless(
        "time_embedding_type",
        &json.time_embedding_type,
        &["positional"],
    )?;
    refuse_unless("attention_type", &json.attention_type, &["default"])?;
    if json.dual_cross_attention == Some(true) {
        return Err(unsupported("dual_cross_attention", &true));
    }
    if json.class_embeddings_concat == Some(true) {
        return Err(unsupported("class_embeddings_concat", &true));
    }
    match &json.only_cross_attention {
        None | Some(Value::Null) | Some(Value::Bool(false)) => {}
        Some(Value::Array(v)) if v.iter().all(|b| b == &Value::Bool(false)) => {}
        Some(other) => return Err(unsupported("only_cross_attention", other)),
    }
    match &json.reverse_transformer_layers_per_block {
        None | Some(Value::Null) => {}
        Some(other) => return Err(unsupported("reverse_transformer_layers_per_block", other)),
    }
    if json.time_cond_proj_dim.is_some() {
        return Err(unsupported("time_cond_proj_dim", &json.time_cond_proj_dim));
    }
    if json.encoder_hid_dim.is_some() {
        return Err(unsupported("encoder_hid_dim", &json.encoder_hid_dim));
    }
    let n = json.block_out_channels.len();
    if n == 0 || json.down_block_types.len() != n || json.up_block_types.len() != n {
        return Err(EngineError::invalid_model(
            path,
            "block_out_channels, down_block_types and up_block_types must have the same, \
             non-zero length",
        ));
    }
    // diffusers' SD 1.x configs put the head count in attention_head_dim; newer ones use
    // num_attention_heads.
    let heads = json
        .num_attention_heads
        .as_ref()
        .unwrap_or(&json.attention_head_dim);
    let layers = json
        .transformer_layers_per_block
        .clone()
        .unwrap_or(PerBlock::One(1));
    let mut blocks = Vec::with_capacity(n);
    for (i, kind) in json.down_block_types.iter().enumerate() {
        let use_cross_attn = match kind.as_str() {
            "CrossAttnDownBlock2D" => Some(layers.get(i).ok_or_else(|| {
                unsupported(
                    "transformer_layers_per_block",
                    &json.transformer_layers_per_block,
                )
            })?),
            "DownBlock2D" => None,
            other => return Err(unsupported("down_block_types", &other)),
        };
        let mirrored = match kind.as_str() {
            "CrossAttnDownBlock2D" => "CrossAttnUpBlock2D",
            _ => "UpBlock2D",
        };
        if json.up_block_types[n - 1 - i] != mirrored {
            return Err(unsupported("up_block_types", &json.up_block_types));
        }
        let attention_head_dim = heads
            .get(i)
            .ok_or_else(|| unsupported("attention heads", heads))?;
        if attention_head_dim == 0 || json.block_out_channels[i] % attention_head_dim != 0 {
            return Err(unsupported("attention heads", heads));
        }
        blocks.push(BlockConfig {
            out_channels: json.block_out_channels[i],
            use_cross_attn,
            attention_head_dim,
        });
    }
    Ok(UNetSettings {
        in_channels: json.in_channels,
        out_channels: json.out_channels,
        config: UNet2DConditionModelConfig {
            center_input_sample: json.center_input_sample,
            flip_sin_to_cos: json.flip_sin_to_cos,
            freq_shift: json.freq_shift,
            blocks,
            layers_per_block: json.layers_per_block,
            downsample_padding: json.downsample_padding,
            mid_block_scale_factor: json.mid_block_scale_factor,
            norm_num_groups: json.norm_num_groups,
            norm_eps: json.norm_eps,
            cross_attention_dim: json.cross_attention_dim,
            sliced_attention_size: None,
            use_linear_projection: json.use_linear_projection,
        },
        text_time,
    })
}

#[derive(Debug, Deserialize)]
struct VaeJson {
    #[serde(default = "default_three")]
    in_channels: usize,
    #[serde(default = "default_three")]
    out_channels: usize,
    block_out_channels: Vec<usize>,
    #[serde(default = "default_one")]
    layers_per_block: usize,
    #[serde(default = "default_four")]
    latent_channels: usize,
    #[serde(default = "default_groups")]
    norm_num_groups: usize,
    #[serde(default)]
    scaling_factor: Option<f64>,
    #[serde(default)]
    shift_factor: Option<f64>,
    #[serde(default = "default_true")]
    use_quant_conv: bool,
    #[serde(default = "default_true")]
    use_post_quant_conv: bool,
}

fn default_three() -> usize {
    3
}
fn default_four() -> usize {
    4
}

/// Everything needed to build and use the VAE.
#[derive(Debug, Clone)]
pub struct VaeSettings {
    pub in_channels: usize,
    pub out_channels: usize,
    pub config: AutoEncoderKLConfig,
    /// Latents are divided by this before decoding (0.18215 for SD 1.x).
    pub scaling_factor: f64,
    /// Image pixels per latent pixel along each axis: 2^(levels - 1).
    pub downscale: usize,
}

/// `vae/config.json` → candle's VAE configuration.
pub fn vae_settings(path: &Path) -> Result<VaeSettings, EngineError> {
    let json: VaeJson = parse(path, read_json(path)?)?;
    if json.block_out_channels.is_empty() || json.block_out_channels.len() > 8 {
        return Err(EngineError::invalid_model(
            path,
            format!(
                "block_out_channels {:?}: expected 1 to 8 levels",
                json.block_out_channels
            ),
        ));
    }
    if let Some(shift) = json.shift_factor {
        if shift != 0.0 {
            return Err(EngineError::invalid_model(
                path,
                format!("shift_factor = {shift} is not supported (SD 1.x VAEs have none)"),
            ));
        }
    }
    let downscale = 1usize << (json.block_out_channels.len() - 1);
    Ok(VaeSettings {
        in_channels: json.in_channels,
        out_channels: json.out_channels,
        config: AutoEncoderKLConfig {
            block_out_channels: json.block_out_channels,
            layers_per_block: json.layers_per_block,
            latent_channels: json.latent_channels,
            norm_num_groups: json.norm_num_groups,
            use_quant_conv: json.use_quant_conv,
            use_post_quant_conv: json.use_post_quant_conv,
        },
        scaling_factor: json.scaling_factor.unwrap_or(0.18215),
        downscale,
    })
}

#[derive(Debug, Deserialize)]
struct ClipJson {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_quick_gelu")]
    hidden_act: String,
    #[serde(default)]
    projection_dim: Option<usize>,
}

fn default_quick_gelu() -> String {
    "quick_gelu".into()
}

/// The text encoder's MLP activation (`hidden_act`, `quick_gelu` when absent).
pub fn clip_activation(path: &Path) -> Result<ClipActivation, EngineError> {
    let json: ClipJson = parse(path, read_json(path)?)?;
    clip_activation_of(path, &json.hidden_act)
}

fn clip_activation_of(path: &Path, name: &str) -> Result<ClipActivation, EngineError> {
    ClipActivation::from_hidden_act(name).ok_or_else(|| {
        EngineError::invalid_model(
            path,
            format!("hidden_act = {name:?} is not supported; accepted: \"quick_gelu\", \"gelu\""),
        )
    })
}

/// `text_encoder/config.json` → candle's CLIP text configuration.
pub fn clip_settings(path: &Path) -> Result<ClipTextConfig, EngineError> {
    let json: ClipJson = parse(path, read_json(path)?)?;
    // candle's config only knows quick_gelu; the activation itself is read by
    // `clip_activation` and applied by sdfarm's own layers.
    clip_activation_of(path, &json.hidden_act)?;
    let activation = Activation::QuickGelu;
    if json.num_attention_heads == 0 || json.hidden_size % json.num_attention_heads != 0 {
        return Err(EngineError::invalid_model(
            path,
            format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                json.hidden_size, json.num_attention_heads
            ),
        ));
    }
    Ok(ClipTextConfig {
        vocab_size: json.vocab_size,
        embed_dim: json.hidden_size,
        activation,
        intermediate_size: json.intermediate_size,
        max_position_embeddings: json.max_position_embeddings,
        pad_with: None,
        num_hidden_layers: json.num_hidden_layers,
        num_attention_heads: json.num_attention_heads,
        projection_dim: json.projection_dim.unwrap_or(json.hidden_size),
    })
}

/// The files a diffusers SD folder must have, relative to the folder.
pub const REQUIRED_FILES: &[&str] = &[
    "model_index.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
];

/// Paths of required files that are missing from `dir`.
pub fn missing_files(dir: &Path) -> Vec<PathBuf> {
    REQUIRED_FILES
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| !p.is_file())
        .collect()
}
