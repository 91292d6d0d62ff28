//! The VAE encoder for img2img and the pixel hires fix. candle's `AutoEncoderKL::encode`
//! only offers a posterior sample drawn from an unseeded generator, so sdfarm builds the same
//! network from candle's blocks and returns the posterior's mean and standard deviation;
//! the caller draws the sample from a seeded generator and renders stay repeatable.

use candle_core::{Module, Result, Tensor};
use candle_nn as nn;
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
};
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKLConfig;

/// diffusers' `Encoder` plus `quant_conv`.
#[derive(Debug)]
pub struct VaeEncoder {
    conv_in: nn::Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2d,
    quant_conv: Option<nn::Conv2d>,
}

impl VaeEncoder {
    /// `vb` is the whole VAE's (`encoder.*` and `quant_conv.*` are read).
    pub fn new(
        vb: nn::VarBuilder,
        in_channels: usize,
        config: &AutoEncoderKLConfig,
    ) -> Result<Self> {
        let enc = vb.pp("encoder");
        let padded = nn::Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let channels = &config.block_out_channels;
        let conv_in = nn::conv2d(in_channels, channels[0], 3, padded, enc.pp("conv_in"))?;
        let mut down_blocks = Vec::with_capacity(channels.len());
        for (index, &out) in channels.iter().enumerate() {
            let input = if index > 0 {
                channels[index - 1]
            } else {
                channels[0]
            };
            let cfg = DownEncoderBlock2DConfig {
                num_layers: config.layers_per_block,
                resnet_eps: 1e-6,
                resnet_groups: config.norm_num_groups,
                add_downsample: index + 1 != channels.len(),
                downsample_padding: 0,
                ..Default::default()
            };
            down_blocks.push(DownEncoderBlock2D::new(
                enc.pp("down_blocks").pp(index.to_string()),
                input,
                out,
                cfg,
            )?);
        }
        let last = *channels.last().expect("a VAE has at least one block");
        let mid_cfg = UNetMidBlock2DConfig {
            resnet_eps: 1e-6,
            output_scale_factor: 1.,
            attn_num_head_channels: None,
            resnet_groups: Some(config.norm_num_groups),
            ..Default::default()
        };
        let mid_block = UNetMidBlock2D::new(enc.pp("mid_block"), last, None, mid_cfg)?;
        let conv_norm_out =
            nn::group_norm(config.norm_num_groups, last, 1e-6, enc.pp("conv_norm_out"))?;
        let moments = 2 * config.latent_channels;
        let conv_out = nn::conv2d(last, moments, 3, padded, enc.pp("conv_out"))?;
        let quant_conv = if config.use_quant_conv {
            Some(nn::conv2d(
                moments,
                moments,
                1,
                Default::default(),
                vb.pp("quant_conv"),
            )?)
        } else {
            None
        };
        Ok(VaeEncoder {
            conv_in,
            down_blocks,
            mid_block,
            conv_norm_out,
            conv_out,
            quant_conv,
        })
    }

    /// The posterior `(mean, std)` of an image `[1, 3, H, W]` in [-1, 1], with the log
    /// variance clamped to [-30, 20] as LDM's `DiagonalGaussianDistribution` does.
    pub fn moments(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut xs = image.apply(&self.conv_in)?;
        for block in &self.down_blocks {
            xs = xs.apply(block)?;
        }
        let xs = self
            .mid_block
            .forward(&xs, None)?
            .apply(&self.conv_norm_out)?;
        let mut xs = nn::ops::silu(&xs)?.apply(&self.conv_out)?;
        if let Some(quant_conv) = &self.quant_conv {
            xs = quant_conv.forward(&xs)?;
        }
        let halves = xs.chunk(2, 1)?;
        let logvar = halves[1].clamp(-30f32, 20f32)?;
        Ok((halves[0].clone(), (logvar * 0.5)?.exp()?))
    }
}
