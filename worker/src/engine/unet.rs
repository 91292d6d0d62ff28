//! sdfarm's conditional UNet (diffusers `UNet2DConditionModel` layout and tensor names) for
//! SD 1.x, SD 2.x and SDXL (per-level transformer depth, levels without attention, and the
//! `text_time` added conditioning: pooled text embedding plus size/crop time ids).
//!
//! candle ships a UNet, but its transformer feed-forward uses the tanh approximation of GELU
//! where diffusers (and the original LDM code) use the exact erf form. The approximation moves
//! every UNet output by ~5e-5, which is visible in the final latents after a few steps. The
//! network is therefore assembled here from candle's public pieces (ResNet blocks, timestep
//! embeddings) around sdfarm's own transformer block with the exact GELU and tiled attention
//! (`attention.rs`), which brings a UNet evaluation within torch's own run-to-run spread (~2e-6).
//!
//! Two more differences from candle's assembly: the down/up ResNet blocks use the configured
//! `norm_num_groups` (candle hard-codes 32), and linear `proj_out` maps inner_dim → channels.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{self as nn, VarBuilder};
use candle_transformers::models::stable_diffusion::embeddings::{TimestepEmbedding, Timesteps};
use candle_transformers::models::stable_diffusion::resnet::{ResnetBlock2D, ResnetBlock2DConfig};
use candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModelConfig;

use super::attention::Attention;
use super::config::TextTimeEmbedding;

/// `GEGLU` followed by the output projection, with the exact (erf) GELU.
struct FeedForward {
    proj_in: nn::Linear,
    proj_out: nn::Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        let vb = vb.pp("net");
        Ok(FeedForward {
            proj_in: nn::linear(dim, inner * 2, vb.pp("0").pp("proj"))?,
            proj_out: nn::linear(inner, dim, vb.pp("2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let halves = self.proj_in.forward(xs)?.chunk(2, D::Minus1)?;
        let gated = (&halves[0] * halves[1].gelu_erf()?)?;
        self.proj_out.forward(&gated)
    }
}

/// Self-attention, cross-attention and feed-forward, each pre-normed and residual.
struct TransformerBlock {
    norm1: nn::LayerNorm,
    attn1: Attention,
    norm2: nn::LayerNorm,
    attn2: Attention,
    norm3: nn::LayerNorm,
    ff: FeedForward,
}

impl TransformerBlock {
    fn new(vb: VarBuilder, dim: usize, heads: usize, context_dim: usize) -> Result<Self> {
        let head_dim = dim / heads;
        Ok(TransformerBlock {
            norm1: nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, None, heads, head_dim)?,
            norm2: nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, Some(context_dim), heads, head_dim)?,
            norm3: nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = (self.attn1.forward(&self.norm1.forward(xs)?, None)? + xs)?;
        let xs = (self
            .attn2
            .forward(&self.norm2.forward(&xs)?, Some(context))?
            + xs)?;
        self.ff.forward(&self.norm3.forward(&xs)?)? + xs
    }
}

enum Projection {
    Conv(nn::Conv2d),
    Linear(nn::Linear),
}

/// diffusers `Transformer2DModel`: group norm, projection to tokens, transformer blocks, back.
struct SpatialTransformer {
    norm: nn::GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl SpatialTransformer {
    fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        depth: usize,
        c: &UNetConfig,
    ) -> Result<Self> {
        let norm = nn::group_norm(c.norm_num_groups, channels, 1e-6, vb.pp("norm"))?;
        let projection = |name: &str, from: usize, to: usize| -> Result<Projection> {
            Ok(if c.use_linear_projection {
                Projection::Linear(nn::linear(from, to, vb.pp(name))?)
            } else {
                Projection::Conv(nn::conv2d(from, to, 1, Default::default(), vb.pp(name))?)
            })
        };
        let blocks = (0..depth)
            .map(|i| {
                TransformerBlock::new(
                    vb.pp("transformer_blocks").pp(i.to_string()),
                    channels,
                    heads,
                    c.cross_attention_dim,
                )
            })
            .collect::<Result<_>>()?;
        Ok(SpatialTransformer {
            norm,
            proj_in: projection("proj_in", channels, channels)?,
            blocks,
            proj_out: projection("proj_out", channels, channels)?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = xs.dims4()?;
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            t.permute((0, 2, 3, 1))?
                .reshape((batch, height * width, channels))
        };
        let to_map = |t: &Tensor| -> Result<Tensor> {
            t.reshape((batch, height, width, channels))?
                .permute((0, 3, 1, 2))?
                .contiguous()
        };
        let normed = self.norm.forward(xs)?;
        let mut tokens = match &self.proj_in {
            Projection::Conv(p) => to_tokens(&p.forward(&normed)?)?,
            Projection::Linear(p) => p.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let out = match &self.proj_out {
            Projection::Conv(p) => p.forward(&to_map(&tokens)?)?,
            Projection::Linear(p) => to_map(&p.forward(&tokens)?)?,
        };
        out + xs
    }
}

/// One resolution level: ResNet blocks, each optionally followed by a spatial transformer.
struct Level {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialTransformer>,
    /// Stride-2 convolution (down path) or nearest-neighbour upsample + convolution (up path).
    resample: Option<nn::Conv2d>,
    /// `downsample_padding = 0` pads only right and bottom before the stride-2 convolution.
    pad_before_resample: bool,
}

impl Level {
    fn run(&self, index: usize, xs: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = self.resnets[index].forward(xs, Some(temb))?;
        match self.attentions.get(index) {
            Some(attention) => attention.forward(&xs, context),
            None => Ok(xs),
        }
    }
}

/// The configuration subset this UNet understands (see `config::unet_settings`).
type UNetConfig = UNet2DConditionModelConfig;

/// SDXL's `add_time_proj` + `add_embedding`.
struct TextTimeEmbed {
    time_proj: Timesteps,
    embedding: TimestepEmbedding,
    pooled_dim: usize,
}

impl TextTimeEmbed {
    /// `pooled` `[B, pooled_dim]`, `time_ids` `[B, 6]` → `[B, time_dim]`.
    fn forward(&self, pooled: &Tensor, time_ids: &Tensor) -> Result<Tensor> {
        let batch = time_ids.dim(0)?;
        let ids = time_ids.flatten_all()?;
        let embedded = self.time_proj.forward(&ids)?.reshape((batch, ()))?;
        let input = Tensor::cat(&[pooled, &embedded.to_dtype(pooled.dtype())?], D::Minus1)?;
        self.embedding.forward(&input)
    }
}

/// The SDXL conditioning besides the token context: pooled text embeddings `[B, pooled]`
/// and time ids `[B, 6]` (original size, crop top-left, target size; heights first).
pub struct AddedCond<'a> {
    pub pooled: &'a Tensor,
    pub time_ids: &'a Tensor,
}

/// Conditional UNet predicting noise (or velocity) from latents, a timestep and text
/// embeddings.
pub struct UNet {
    conv_in: nn::Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    text_time: Option<TextTimeEmbed>,
    down: Vec<Level>,
    mid: (ResnetBlock2D, Vec<(SpatialTransformer, ResnetBlock2D)>),
    up: Vec<Level>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2d,
    center_input_sample: bool,
}

impl UNet {
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        c: &UNetConfig,
        text_time: Option<TextTimeEmbedding>,
    ) -> Result<Self> {
        let n = c.blocks.len();
        let channels: Vec<usize> = c.blocks.iter().map(|b| b.out_channels).collect();
        let time_dim = channels[0] * 4;
        let padded = nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let resnet = |vb: VarBuilder, cin: usize, cout: usize| {
            ResnetBlock2D::new(
                vb,
                cin,
                ResnetBlock2DConfig {
                    out_channels: Some(cout),
                    temb_channels: Some(time_dim),
                    groups: c.norm_num_groups,
                    eps: c.norm_eps,
                    ..Default::default()
                },
            )
        };

        let mut down = Vec::with_capacity(n);
        let mut skip_channels = vec![channels[0]];
        for (i, block) in c.blocks.iter().enumerate() {
            let vb = vb.pp("down_blocks").pp(i.to_string());
            let cin = if i == 0 { channels[0] } else { channels[i - 1] };
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..c.layers_per_block {
                let from = if j == 0 { cin } else { block.out_channels };
                resnets.push(resnet(
                    vb.pp("resnets").pp(j.to_string()),
                    from,
                    block.out_channels,
                )?);
                if let Some(depth) = block.use_cross_attn {
                    attentions.push(SpatialTransformer::new(
                        vb.pp("attentions").pp(j.to_string()),
                        block.out_channels,
                        block.attention_head_dim,
                        depth,
                        c,
                    )?);
                }
                skip_channels.push(block.out_channels);
            }
            let resample = if i + 1 < n {
                skip_channels.push(block.out_channels);
                let cfg = nn::Conv2dConfig {
                    stride: 2,
                    padding: c.downsample_padding,
                    ..Default::default()
                };
                let conv = vb.pp("downsamplers").pp("0").pp("conv");
                Some(nn::conv2d(
                    block.out_channels,
                    block.out_channels,
                    3,
                    cfg,
                    conv,
                )?)
            } else {
                None
            };
            down.push(Level {
                resnets,
                attentions,
                resample,
                pad_before_resample: c.downsample_padding == 0,
            });
        }

        let last = &c.blocks[n - 1];
        let mid_vb = vb.pp("mid_block");
        let mid_resnet = |j: usize| {
            resnet(
                mid_vb.pp("resnets").pp(j.to_string()),
                last.out_channels,
                last.out_channels,
            )
        };
        let mid = (
            mid_resnet(0)?,
            vec![(
                SpatialTransformer::new(
                    mid_vb.pp("attentions").pp("0"),
                    last.out_channels,
                    last.attention_head_dim,
                    last.use_cross_attn.unwrap_or(1),
                    c,
                )?,
                mid_resnet(1)?,
            )],
        );

        let mut up = Vec::with_capacity(n);
        let mut prev = last.out_channels;
        for i in 0..n {
            let block = &c.blocks[n - 1 - i];
            let vb = vb.pp("up_blocks").pp(i.to_string());
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..=c.layers_per_block {
                let skip = skip_channels.pop().expect("one skip per up resnet");
                let from = if j == 0 { prev } else { block.out_channels };
                resnets.push(resnet(
                    vb.pp("resnets").pp(j.to_string()),
                    from + skip,
                    block.out_channels,
                )?);
                if let Some(depth) = block.use_cross_attn {
                    attentions.push(SpatialTransformer::new(
                        vb.pp("attentions").pp(j.to_string()),
                        block.out_channels,
                        block.attention_head_dim,
                        depth,
                        c,
                    )?);
                }
            }
            let resample = if i + 1 < n {
                let conv = vb.pp("upsamplers").pp("0").pp("conv");
                Some(nn::conv2d(
                    block.out_channels,
                    block.out_channels,
                    3,
                    padded,
                    conv,
                )?)
            } else {
                None
            };
            prev = block.out_channels;
            up.push(Level {
                resnets,
                attentions,
                resample,
                pad_before_resample: false,
            });
        }

        Ok(UNet {
            conv_in: nn::conv2d(in_channels, channels[0], 3, padded, vb.pp("conv_in"))?,
            time_proj: Timesteps::new(channels[0], c.flip_sin_to_cos, c.freq_shift),
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), channels[0], time_dim)?,
            text_time: match text_time {
                None => None,
                Some(t) => Some(TextTimeEmbed {
                    time_proj: Timesteps::new(t.time_embed_dim, c.flip_sin_to_cos, c.freq_shift),
                    embedding: TimestepEmbedding::new(
                        vb.pp("add_embedding"),
                        t.input_dim,
                        time_dim,
                    )?,
                    pooled_dim: t.pooled_dim(),
                }),
            },
            down,
            mid,
            up,
            conv_norm_out: nn::group_norm(
                c.norm_num_groups,
                channels[0],
                c.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: nn::conv2d(channels[0], out_channels, 3, padded, vb.pp("conv_out"))?,
            center_input_sample: c.center_input_sample,
        })
    }

    /// Noise prediction for `xs` `[B, C, h, w]` at one timestep shared by the batch, with
    /// `context` `[B, 77, dim]`.
    pub fn forward(&self, xs: &Tensor, timestep: f64, context: &Tensor) -> Result<Tensor> {
        self.forward_with(xs, timestep, context, None)
    }

    /// Width of the pooled text embedding an SDXL UNet takes, `None` for SD 1.x / 2.x.
    pub fn pooled_dim(&self) -> Option<usize> {
        self.text_time.as_ref().map(|t| t.pooled_dim)
    }

    /// [`UNet::forward`] with SDXL's added conditioning, which an SDXL UNet requires and
    /// other UNets refuse.
    pub fn forward_with(
        &self,
        xs: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<AddedCond<'_>>,
    ) -> Result<Tensor> {
        let batch = xs.dim(0)?;
        let xs = if self.center_input_sample {
            xs.affine(2.0, -1.0)?
        } else {
            xs.clone()
        };
        let t = Tensor::full(timestep as f32, batch, xs.device())?;
        let temb = self
            .time_embedding
            .forward(&self.time_proj.forward(&t)?.to_dtype(xs.dtype())?)?;
        let temb = match (&self.text_time, added) {
            (None, None) => temb,
            (Some(embed), Some(added)) => (temb + embed.forward(added.pooled, added.time_ids)?)?,
            (Some(_), None) => candle_core::bail!(
                "this UNet (addition_embed_type \"text_time\") needs pooled text embeddings and time ids"
            ),
            (None, Some(_)) => {
                candle_core::bail!("this UNet takes no pooled text embeddings or time ids")
            }
        };

        let mut xs = self.conv_in.forward(&xs)?;
        let mut skips = vec![xs.clone()];
        for level in &self.down {
            for j in 0..level.resnets.len() {
                xs = level.run(j, &xs, &temb, context)?;
                skips.push(xs.clone());
            }
            if let Some(conv) = &level.resample {
                if level.pad_before_resample {
                    xs = xs
                        .pad_with_zeros(D::Minus1, 0, 1)?
                        .pad_with_zeros(D::Minus2, 0, 1)?;
                }
                xs = conv.forward(&xs)?;
                skips.push(xs.clone());
            }
        }

        xs = self.mid.0.forward(&xs, Some(&temb))?;
        for (attention, resnet) in &self.mid.1 {
            xs = resnet.forward(&attention.forward(&xs, context)?, Some(&temb))?;
        }

        for level in &self.up {
            for j in 0..level.resnets.len() {
                let skip = skips.pop().expect("one skip per up resnet");
                xs = Tensor::cat(&[&xs, &skip], 1)?;
                xs = level.run(j, &xs, &temb, context)?;
            }
            if let Some(conv) = &level.resample {
                // Upsample to the size of the skip it will meet, which is not always 2x when
                // the latent size is not a multiple of the total downscale.
                let (h, w) = match skips.last() {
                    Some(skip) => (skip.dim(2)?, skip.dim(3)?),
                    None => (xs.dim(2)? * 2, xs.dim(3)? * 2),
                };
                xs = conv.forward(&xs.upsample_nearest2d(h, w)?)?;
            }
        }

        let xs = nn::ops::silu(&self.conv_norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}
