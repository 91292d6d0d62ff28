//! sdfarm's CLIP text transformer layers. candle's `ClipEncoder` only has `quick_gelu`, while
//! SD 2.x text encoders (OpenCLIP-H) use the exact, erf-based `gelu`; the layers here take
//! either, with transformers' `CLIPEncoderLayer` structure and tensor names.

use candle_core::{Module, Result, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

/// The MLP activation (`hidden_act` of the text encoder's config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)`: OpenAI CLIP (SD 1.x).
    QuickGelu,
    /// `x * Φ(x)` with the exact erf: OpenCLIP (SD 2.x, SDXL's second encoder).
    Gelu,
}

impl ClipActivation {
    /// transformers' `hidden_act` names sdfarm implements.
    pub fn from_hidden_act(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(ClipActivation::QuickGelu),
            "gelu" => Some(ClipActivation::Gelu),
            _ => None,
        }
    }

    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            ClipActivation::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702f64)?)?,
            ClipActivation::Gelu => xs.gelu_erf(),
        }
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: VarBuilder, dim: usize, heads: usize) -> Result<Self> {
        let linear = |name: &str| candle_nn::linear(dim, dim, vb.pp(name));
        Ok(Attention {
            q_proj: linear("q_proj")?,
            k_proj: linear("k_proj")?,
            v_proj: linear("v_proj")?,
            out_proj: linear("out_proj")?,
            heads,
            head_dim: dim / heads,
        })
    }

    /// `[b, s, dim]` → `[b, heads, s, head_dim]`.
    fn split(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, s, _) = xs.dims3()?;
        xs.reshape((b, s, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, s, dim) = xs.dims3()?;
        // transformers scales the queries before the product.
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = self.split(&(self.q_proj.forward(xs)? * scale)?)?;
        let k = self.split(&self.k_proj.forward(xs)?)?;
        let v = self.split(&self.v_proj.forward(xs)?)?;
        let weights = q
            .matmul(&k.transpose(2, 3)?.contiguous()?)?
            .broadcast_add(mask)?;
        let weights = candle_nn::ops::softmax_last_dim(&weights)?;
        let out = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, s, dim))?;
        self.out_proj.forward(&out)
    }
}

struct Layer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: ClipActivation,
}

impl Layer {
    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let attended = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, mask)?;
        let xs = (xs + attended)?;
        let hidden = self.fc1.forward(&self.layer_norm2.forward(&xs)?)?;
        let hidden = self.fc2.forward(&self.activation.apply(&hidden)?)?;
        xs + hidden
    }
}

/// The transformer layers under `text_model.encoder`.
pub struct ClipLayers {
    layers: Vec<Layer>,
}

/// Layer sizes of a CLIP text encoder.
pub struct ClipShape {
    pub dim: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub layers: usize,
    pub layer_norm_eps: f64,
    pub activation: ClipActivation,
}

impl ClipLayers {
    /// `vb` points at `text_model.encoder`.
    pub fn new(vb: VarBuilder, shape: &ClipShape) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..shape.layers)
            .map(|i| {
                let vb = vb.pp(i.to_string());
                let norm = |name: &str| {
                    candle_nn::layer_norm(shape.dim, shape.layer_norm_eps, vb.pp(name))
                };
                let mlp = vb.pp("mlp");
                Ok(Layer {
                    layer_norm1: norm("layer_norm1")?,
                    self_attn: Attention::new(vb.pp("self_attn"), shape.dim, shape.heads)?,
                    layer_norm2: norm("layer_norm2")?,
                    fc1: candle_nn::linear(shape.dim, shape.intermediate, mlp.pp("fc1"))?,
                    fc2: candle_nn::linear(shape.intermediate, shape.dim, mlp.pp("fc2"))?,
                    activation: shape.activation,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ClipLayers { layers })
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The output of the first `count` layers, with the additive causal `mask`
    /// (`[batch, 1, seq, seq]`).
    pub fn forward_layers(&self, xs: &Tensor, mask: &Tensor, count: usize) -> Result<Tensor> {
        self.forward_range(xs, mask, 0, count)
    }

    /// Layers `start..end` applied to `xs`, the output of layer `start - 1`.
    pub fn forward_range(
        &self,
        xs: &Tensor,
        mask: &Tensor,
        start: usize,
        end: usize,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for layer in self.layers.iter().take(end).skip(start) {
            xs = layer.forward(&xs, mask)?;
        }
        Ok(xs)
    }
}
