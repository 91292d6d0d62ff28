//! The CLIP text encoder: embeddings, sdfarm's transformer layers and the final norm.
//!
//! candle's `ClipTextTransformer` only returns the last layer, but A1111's "Clip skip" needs an
//! earlier one: with clip skip `n > 1` the prompt embedding is `final_layer_norm` applied to the
//! output of the n-th layer from the end. candle's layers also lack SD 2.x's exact GELU, so the
//! layers are [`super::clip`]'s, under the same `text_model.*` tensor names as transformers.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use candle_transformers::models::clip::text_model::ClipTextConfig;

use super::clip::{ClipActivation, ClipLayers, ClipShape};

/// CLIP text model: token + position embeddings, transformer layers, final layer norm.
pub struct TextEncoder {
    token_embedding: Embedding,
    position_embedding: Embedding,
    encoder: ClipLayers,
    final_layer_norm: LayerNorm,
    num_layers: usize,
    width: usize,
}

impl TextEncoder {
    /// Builds an OpenAI CLIP (`quick_gelu`) encoder from `text_model.*` tensors.
    pub fn new(
        vb: VarBuilder,
        config: &ClipTextConfig,
        layer_norm_eps: f64,
    ) -> candle_core::Result<Self> {
        Self::with_activation(vb, config, layer_norm_eps, ClipActivation::QuickGelu)
    }

    /// Builds the encoder with the MLP activation its config names.
    pub fn with_activation(
        vb: VarBuilder,
        config: &ClipTextConfig,
        layer_norm_eps: f64,
        activation: ClipActivation,
    ) -> candle_core::Result<Self> {
        let vb = vb.pp("text_model");
        let emb = vb.pp("embeddings");
        let token_embedding = candle_nn::embedding(
            config.vocab_size,
            config.embed_dim,
            emb.pp("token_embedding"),
        )?;
        let position_embedding = candle_nn::embedding(
            config.max_position_embeddings,
            config.embed_dim,
            emb.pp("position_embedding"),
        )?;
        let encoder = ClipLayers::new(
            vb.pp("encoder"),
            &ClipShape {
                dim: config.embed_dim,
                intermediate: config.intermediate_size,
                heads: config.num_attention_heads,
                layers: config.num_hidden_layers,
                layer_norm_eps,
                activation,
            },
        )?;
        let final_layer_norm =
            candle_nn::layer_norm(config.embed_dim, layer_norm_eps, vb.pp("final_layer_norm"))?;
        Ok(TextEncoder {
            token_embedding,
            position_embedding,
            encoder,
            final_layer_norm,
            num_layers: config.num_hidden_layers,
            width: config.embed_dim,
        })
    }

    pub fn num_layers(&self) -> usize {
        self.num_layers
    }

    /// Width of the token embeddings (and of the hidden states).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Hidden states `[batch, seq, dim]` for token ids `[batch, seq]`.
    ///
    /// `clip_skip` 0 or 1 takes the last layer; `n > 1` the n-th from the end. Either way the
    /// final layer norm is applied, as both diffusers and A1111 do for SD 1.x.
    pub fn forward(&self, ids: &Tensor, clip_skip: usize) -> candle_core::Result<Tensor> {
        self.forward_with_vectors(ids, clip_skip, &[])
    }

    /// [`TextEncoder::forward`] for one sequence (`ids` `[1, seq]`) with textual-inversion
    /// vectors: each `(offset, vectors [n, width])` replaces the token embeddings from
    /// `offset` on (cut at the sequence end), before the position embeddings are added, as
    /// A1111's `EmbeddingsWithFixes` does.
    pub fn forward_with_vectors(
        &self,
        ids: &Tensor,
        clip_skip: usize,
        fixes: &[(usize, Tensor)],
    ) -> candle_core::Result<Tensor> {
        let layers = self.encoder.len();
        let count = layers + 1 - clip_skip.max(1).min(layers);
        let hidden = self.hidden_states(ids, count, fixes)?;
        self.final_layer_norm.forward(&hidden)
    }

    /// transformers' `hidden_states[count]`: the output of the first `count` layers, without
    /// the final layer norm, with textual-inversion vectors as in
    /// [`TextEncoder::forward_with_vectors`].
    pub fn hidden_states(
        &self,
        ids: &Tensor,
        count: usize,
        fixes: &[(usize, Tensor)],
    ) -> candle_core::Result<Tensor> {
        let (xs, mask) = self.embed(ids, fixes)?;
        self.encoder.forward_range(&xs, &mask, 0, count)
    }

    /// SDXL's use of an encoder, in one pass: `hidden_states[-2]` (no final norm) and the
    /// last layer's output after the final layer norm.
    pub fn penultimate_and_last(
        &self,
        ids: &Tensor,
        fixes: &[(usize, Tensor)],
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (xs, mask) = self.embed(ids, fixes)?;
        let layers = self.encoder.len();
        let penultimate = self
            .encoder
            .forward_range(&xs, &mask, 0, layers.saturating_sub(1))?;
        let last =
            self.encoder
                .forward_range(&penultimate, &mask, layers.saturating_sub(1), layers)?;
        Ok((penultimate, self.final_layer_norm.forward(&last)?))
    }

    /// Token embeddings (with textual-inversion vectors) plus position embeddings, and the
    /// causal mask.
    fn embed(
        &self,
        ids: &Tensor,
        fixes: &[(usize, Tensor)],
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (batch, seq) = ids.dims2()?;
        let positions = Tensor::arange(0u32, seq as u32, ids.device())?.unsqueeze(0)?;
        let mut tokens = self.token_embedding.forward(ids)?;
        if !fixes.is_empty() {
            if batch != 1 {
                candle_core::bail!("embedding vectors need a batch of one sequence");
            }
            let mut rows = tokens.squeeze(0)?;
            for (offset, vectors) in fixes {
                let offset = (*offset).min(seq);
                let n = vectors.dim(0)?.min(seq - offset);
                if n == 0 {
                    continue;
                }
                let vectors = vectors.narrow(0, 0, n)?.to_dtype(rows.dtype())?;
                let mut parts = Vec::with_capacity(3);
                if offset > 0 {
                    parts.push(rows.narrow(0, 0, offset)?);
                }
                parts.push(vectors);
                if offset + n < seq {
                    parts.push(rows.narrow(0, offset + n, seq - offset - n)?);
                }
                rows = Tensor::cat(&parts, 0)?;
            }
            tokens = rows.unsqueeze(0)?;
        }
        let xs = tokens.broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(batch, seq, ids.device())?;
        Ok((xs, mask))
    }
}

/// Additive attention mask that hides later tokens: `[batch, 1, seq, seq]`.
fn causal_mask(batch: usize, seq: usize, device: &Device) -> candle_core::Result<Tensor> {
    let values: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::MIN } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (seq, seq), device)?
        .to_dtype(DType::F32)?
        .broadcast_as((batch, 1, seq, seq))
}
