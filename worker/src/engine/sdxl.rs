//! SDXL's text conditioning, as A1111 builds it (`sd_models_xl`, `sd_hijack_clip`,
//! `sd_hijack_open_clip`) and diffusers' `StableDiffusionXLPipeline.encode_prompt` agrees on
//! for plain prompts:
//!
//! - both encoders see the same 75-token chunks (one tokenization with the CLIP BPE); the
//!   first (CLIP ViT-L) pads with `<|endoftext|>`, the second (OpenCLIP bigG) with its
//!   tokenizer's pad token (`!`, id 0) after the first end token;
//! - each encoder's `hidden_states[-2]` (the penultimate layer, no final layer norm) is
//!   weighted with the "Original" emphasis on its own, and the two are concatenated along the
//!   feature axis (`[1, 77 * chunks, width_1 + width_2]`);
//! - the pooled embedding is `text_projection(final_layer_norm(last layer))` at the first end
//!   token of the first chunk, unweighted;
//! - an all-empty negative prompt gives zeros for both (A1111's `force_zero_negative_prompt`,
//!   diffusers' `force_zeros_for_empty_prompt` with `negative_prompt=None`);
//! - the UNet's time ids are `(height, width, 0, 0, height, width)` of the pass being sampled.
//!
//! A1111 ignores clip skip for SDXL by default (`sdxl_clip_l_skip` off), and so does sdfarm.
//!
//! Inside the pipeline a prompt's SDXL conditioning travels as one tensor, so prompt editing,
//! composable prompts and the hires pass handle it like SD 1.x embeddings: the token context
//! followed by one extra row holding the pooled embedding, zero-padded to the context width
//! ([`pack`] / [`unpack`]).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::config;
use super::text_encoder::TextEncoder;
use super::tokenizer::{PromptTokenizer, END_OF_TEXT};
use super::EngineError;

/// SDXL's second text encoder (OpenCLIP bigG in transformers' layout) with its projection
/// and pad token.
pub struct SecondEncoder {
    pub encoder: TextEncoder,
    projection: Linear,
    projection_dim: usize,
    pad_id: u32,
}

impl SecondEncoder {
    /// Builds it from `text_model.*` and `text_projection.weight` tensors.
    pub fn new(
        vb: VarBuilder,
        encoder: TextEncoder,
        projection_dim: usize,
        pad_id: u32,
    ) -> candle_core::Result<Self> {
        let projection =
            candle_nn::linear_no_bias(encoder.width(), projection_dim, vb.pp("text_projection"))?;
        Ok(SecondEncoder {
            encoder,
            projection,
            projection_dim,
            pad_id,
        })
    }

    /// `text_encoder_2/` and `tokenizer_2/` of a diffusers SDXL folder, `None` when the folder
    /// has no second encoder.
    pub fn load_folder(
        dir: &Path,
        device: &Device,
        load_weights: impl Fn(&Path, &Device) -> Result<VarBuilder<'static>, EngineError>,
    ) -> Result<Option<Self>, EngineError> {
        let config_path = dir.join("text_encoder_2/config.json");
        if !config_path.is_file() {
            return Ok(None);
        }
        let clip_config = config::clip_settings(&config_path)?;
        let json = config::read_json(&config_path)?;
        let eps = json
            .get("layer_norm_eps")
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-5);
        let projection_dim = json
            .get("projection_dim")
            .and_then(|v| v.as_u64())
            .map_or(clip_config.embed_dim, |v| v as usize);
        let weights = dir.join("text_encoder_2/model.safetensors");
        let vb = load_weights(&weights, device)?;
        let pad_id = PromptTokenizer::from_dir(&dir.join("tokenizer_2"))?.pad_id();
        let build = || -> candle_core::Result<Self> {
            let encoder = TextEncoder::with_activation(
                vb.clone(),
                &clip_config,
                eps,
                config::clip_activation(&config_path).map_err(candle_core::Error::wrap)?,
            )?;
            Self::new(vb.clone(), encoder, projection_dim, pad_id)
        };
        build()
            .map(Some)
            .map_err(|e| EngineError::invalid_model(&weights, e.to_string()))
    }

    pub fn projection_dim(&self) -> usize {
        self.projection_dim
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
}

/// Token ids with everything after the first end token replaced by `pad` (A1111's
/// `process_tokens` for encoders whose pad differs from the end token).
pub fn pad_after_end(tokens: &[u32], pad: u32) -> Vec<u32> {
    let mut ids = tokens.to_vec();
    if pad != END_OF_TEXT {
        if let Some(end) = ids.iter().position(|&t| t == END_OF_TEXT) {
            ids[end + 1..].iter_mut().for_each(|t| *t = pad);
        }
    }
    ids
}

/// One chunk through both encoders: the weighted, concatenated context `[1, 77, w1 + w2]`
/// and the pooled embedding `[1, projection_dim]`. `weigh` applies the emphasis to one
/// encoder's output; `fixes_*` are each encoder's textual-inversion vectors.
pub fn encode_chunk(
    first: &TextEncoder,
    second: &SecondEncoder,
    tokens: &[u32],
    fixes_1: &[(usize, Tensor)],
    fixes_2: &[(usize, Tensor)],
    device: &Device,
    weigh: &dyn Fn(Tensor) -> Result<Tensor, EngineError>,
) -> Result<(Tensor, Tensor), EngineError> {
    let len = tokens.len();
    let ids_1 = Tensor::from_vec(tokens.to_vec(), (1, len), device)?;
    let penultimate_1 =
        first.hidden_states(&ids_1, first.num_layers().saturating_sub(1), fixes_1)?;
    let ids_2_vec = pad_after_end(tokens, second.pad_id);
    // OpenCLIP pools at `text.argmax(-1)`: the first end token, the highest id.
    let eos = ids_2_vec
        .iter()
        .position(|&t| t == END_OF_TEXT)
        .unwrap_or(len - 1);
    let ids_2 = Tensor::from_vec(ids_2_vec, (1, len), device)?;
    let (penultimate_2, last_2) = second.encoder.penultimate_and_last(&ids_2, fixes_2)?;
    let pooled = second
        .projection
        .forward(&last_2.narrow(1, eos, 1)?.squeeze(1)?)?;
    let context = Tensor::cat(&[weigh(penultimate_1)?, weigh(penultimate_2)?], 2)?;
    Ok((context, pooled))
}

/// The pipeline's one-tensor form of an SDXL conditioning: `context` `[1, n, dim]` followed
/// by a row holding `pooled` `[1, p]` (p <= dim), zero-padded.
pub fn pack(context: &Tensor, pooled: &Tensor) -> Result<Tensor, EngineError> {
    let dim = context.dim(2)?;
    let p = pooled.dim(1)?;
    if p > dim {
        return Err(EngineError::Candle(candle_core::Error::Msg(format!(
            "pooled embedding ({p} wide) is wider than the context ({dim})"
        ))));
    }
    let row = pooled.pad_with_zeros(1, 0, dim - p)?.unsqueeze(1)?;
    Ok(Tensor::cat(&[context, &row.to_dtype(context.dtype())?], 1)?)
}

/// Splits [`pack`]'s form into the context `[B, n, dim]` and pooled `[B, pooled_dim]`.
pub fn unpack(packed: &Tensor, pooled_dim: usize) -> Result<(Tensor, Tensor), EngineError> {
    let rows = packed.dim(1)?;
    if rows < 2 {
        return Err(EngineError::Candle(candle_core::Error::Msg(format!(
            "an SDXL conditioning needs a context and a pooled row, got {rows} rows"
        ))));
    }
    let context = packed.narrow(1, 0, rows - 1)?;
    let pooled = packed
        .narrow(1, rows - 1, 1)?
        .squeeze(1)?
        .narrow(1, 0, pooled_dim)?;
    Ok((context, pooled))
}

/// The time ids of every image in a batch: original size, crop top-left (0, 0) and target
/// size, heights first, all the size of the pass (`[batch, 6]`).
pub fn time_ids(
    batch: usize,
    height: usize,
    width: usize,
    device: &Device,
) -> Result<Tensor, EngineError> {
    let (h, w) = (height as f32, width as f32);
    let row = [h, w, 0.0, 0.0, h, w];
    let values: Vec<f32> = (0..batch).flat_map(|_| row).collect();
    Ok(Tensor::from_vec(values, (batch, 6), device)?.to_dtype(DType::F32)?)
}
