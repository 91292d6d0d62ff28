//! Tensor names of original (CompVis/LDM, A1111) SD 1.x checkpoints mapped onto the diffusers
//! names sdfarm's modules are built from.
//!
//! An original checkpoint numbers its UNet blocks flatly (`input_blocks.4.1`) where diffusers
//! nests them (`down_blocks.1.attentions.0`), and numbers VAE decoder levels from the lowest
//! resolution where diffusers starts at the highest. The mapping is computed from the key set
//! itself (levels and layers per level are counted, not assumed), so any SD 1.x-shaped network
//! maps, whatever its size.

use std::collections::{BTreeMap, BTreeSet};

/// Which network a tensor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Part {
    Unet,
    Vae,
    TextEncoder,
}

impl Part {
    pub fn label(self) -> &'static str {
        match self {
            Part::Unet => "unet",
            Part::Vae => "vae",
            Part::TextEncoder => "text encoder",
        }
    }
}

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
/// SDXL's first text encoder (CLIP ViT-L, transformers naming) in an SGM checkpoint.
pub const SDXL_CLIP_PREFIX: &str = "conditioner.embedders.0.transformer.";

/// Where one stored tensor goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub part: Part,
    /// The diffusers name within its part.
    pub name: String,
    /// Stored as a 1x1 convolution `[C, C, 1, 1]` but used as a linear `[C, C]` (the original
    /// VAE's attention projections).
    pub squeeze: bool,
}

/// The mapping of a whole checkpoint.
#[derive(Debug, Default)]
pub struct KeyMap {
    /// Stored name → target, for every tensor that is used.
    pub targets: BTreeMap<String, Target>,
    /// Stored names under a UNet or VAE prefix that match no known layout; a non-empty list
    /// means the network is not SD 1.x-shaped and would be built wrong.
    pub unknown: Vec<String>,
}

/// Maps every key of an SD 1.x original checkpoint. Keys outside the three model prefixes
/// (EMA copies, noise-schedule buffers, `position_ids`) are left out.
pub fn map_keys<'a>(keys: impl IntoIterator<Item = &'a str> + Clone) -> KeyMap {
    let unet = UnetLayout::from_keys(keys.clone());
    let decoder_levels = decoder_up_levels(keys.clone());
    let mut map = KeyMap::default();
    for key in keys {
        let mapped = if let Some(rest) = key.strip_prefix(UNET_PREFIX) {
            Some(unet.map(rest).map(|name| Target {
                part: Part::Unet,
                name,
                squeeze: false,
            }))
        } else if let Some(rest) = key.strip_prefix(VAE_PREFIX) {
            Some(map_vae(rest, &decoder_levels))
        } else if let Some(rest) = key
            .strip_prefix(CLIP_PREFIX)
            .or_else(|| key.strip_prefix(SDXL_CLIP_PREFIX))
        {
            map_clip(rest).map(Some)
        } else {
            None
        };
        match mapped {
            Some(Some(target)) => {
                map.targets.insert(key.to_string(), target);
            }
            Some(None) => map.unknown.push(key.to_string()),
            None => {}
        }
    }
    map
}

/// Block counts of the original UNet, read off its keys.
#[derive(Debug)]
struct UnetLayout {
    /// Resnets per level (`layers_per_block`).
    layers: usize,
}

fn index_after<'a>(key: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = key.strip_prefix(prefix)?;
    let (index, rest) = rest.split_once('.')?;
    Some((index.parse().ok()?, rest))
}

impl UnetLayout {
    fn from_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Self {
        let mut inputs = BTreeSet::new();
        let mut downsamplers = BTreeSet::new();
        for key in keys {
            let Some(rest) = key.strip_prefix(UNET_PREFIX) else {
                continue;
            };
            if let Some((i, tail)) = index_after(rest, "input_blocks.") {
                inputs.insert(i);
                if tail.starts_with("0.op.") {
                    downsamplers.insert(i);
                }
            }
        }
        // input_blocks: 0 is conv_in, then per level `layers` resnets plus one downsampler,
        // except the last level, which has no downsampler.
        let levels = downsamplers.len() + 1;
        let blocks = inputs.iter().filter(|&&i| i > 0).count();
        let layers = blocks.saturating_sub(downsamplers.len()) / levels;
        UnetLayout {
            layers: layers.max(1),
        }
    }

    fn map(&self, key: &str) -> Option<String> {
        let per_level = self.layers + 1;
        let fixed = [
            ("time_embed.0.", "time_embedding.linear_1."),
            ("time_embed.2.", "time_embedding.linear_2."),
            // SDXL's pooled-text and size embedding.
            ("label_emb.0.0.", "add_embedding.linear_1."),
            ("label_emb.0.2.", "add_embedding.linear_2."),
            ("input_blocks.0.0.", "conv_in."),
            ("out.0.", "conv_norm_out."),
            ("out.2.", "conv_out."),
        ];
        for (from, to) in fixed {
            if let Some(rest) = key.strip_prefix(from) {
                return Some(format!("{to}{rest}"));
            }
        }
        if let Some((i, rest)) = index_after(key, "input_blocks.").filter(|(i, _)| *i > 0) {
            let (level, j) = ((i - 1) / per_level, (i - 1) % per_level);
            let base = format!("down_blocks.{level}");
            if j == self.layers {
                let rest = rest.strip_prefix("0.op.")?;
                return Some(format!("{base}.downsamplers.0.conv.{rest}"));
            }
            if let Some(rest) = rest.strip_prefix("0.") {
                return Some(format!("{base}.resnets.{j}.{}", resnet(rest)?));
            }
            let rest = rest.strip_prefix("1.")?;
            return Some(format!("{base}.attentions.{j}.{rest}"));
        }
        if let Some((i, rest)) = index_after(key, "middle_block.") {
            return match (i, rest) {
                (0, rest) => Some(format!("mid_block.resnets.0.{}", resnet(rest)?)),
                (1, rest) => Some(format!("mid_block.attentions.0.{rest}")),
                (2, rest) => Some(format!("mid_block.resnets.1.{}", resnet(rest)?)),
                _ => None,
            };
        }
        if let Some((i, rest)) = index_after(key, "output_blocks.") {
            let (level, j) = (i / per_level, i % per_level);
            let base = format!("up_blocks.{level}");
            if let Some(rest) = rest.strip_prefix("0.") {
                return Some(format!("{base}.resnets.{j}.{}", resnet(rest)?));
            }
            // The upsampler follows the resnet directly on levels without attention and the
            // attention otherwise; it is the only sub-module named `conv`.
            let (sub, tail) = rest.split_once('.')?;
            if let Some(param) = tail.strip_prefix("conv.") {
                return Some(format!("{base}.upsamplers.0.conv.{param}"));
            }
            return (sub == "1").then(|| format!("{base}.attentions.{j}.{tail}"));
        }
        None
    }
}

/// Renames inside a UNet resnet block.
fn resnet(rest: &str) -> Option<String> {
    let renames = [
        ("in_layers.0.", "norm1."),
        ("in_layers.2.", "conv1."),
        ("out_layers.0.", "norm2."),
        ("out_layers.3.", "conv2."),
        ("emb_layers.1.", "time_emb_proj."),
        ("skip_connection.", "conv_shortcut."),
    ];
    renames
        .iter()
        .find_map(|(from, to)| rest.strip_prefix(from).map(|r| format!("{to}{r}")))
}

/// Stored decoder level index → diffusers `up_blocks` index. Original decoders count levels
/// from the lowest resolution, diffusers from the highest; ranking the indices present (rather
/// than assuming four levels) also reads files written by converters that hard-code four.
fn decoder_up_levels<'a>(keys: impl IntoIterator<Item = &'a str>) -> BTreeMap<usize, usize> {
    let present: BTreeSet<usize> = keys
        .into_iter()
        .filter_map(|k| k.strip_prefix(VAE_PREFIX))
        .filter_map(|k| index_after(k, "decoder.up.").map(|(i, _)| i))
        .collect();
    present
        .iter()
        .rev()
        .enumerate()
        .map(|(rank, &i)| (i, rank))
        .collect()
}

fn map_vae(key: &str, decoder_levels: &BTreeMap<usize, usize>) -> Option<Target> {
    let plain = |name: String| {
        Some(Target {
            part: Part::Vae,
            name,
            squeeze: false,
        })
    };
    for top in ["quant_conv.", "post_quant_conv."] {
        if key.starts_with(top) {
            return plain(key.to_string());
        }
    }
    let (side, rest) = key.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    for (from, to) in [
        ("conv_in.", "conv_in."),
        ("conv_out.", "conv_out."),
        ("norm_out.", "conv_norm_out."),
    ] {
        if let Some(tail) = rest.strip_prefix(from) {
            return plain(format!("{side}.{to}{tail}"));
        }
    }
    if let Some(mid) = rest.strip_prefix("mid.") {
        if let Some(tail) = mid.strip_prefix("block_1.") {
            return plain(format!("{side}.mid_block.resnets.0.{}", vae_resnet(tail)));
        }
        if let Some(tail) = mid.strip_prefix("block_2.") {
            return plain(format!("{side}.mid_block.resnets.1.{}", vae_resnet(tail)));
        }
        let tail = mid.strip_prefix("attn_1.")?;
        let (module, param) = tail.split_once('.')?;
        let (name, squeeze) = match module {
            "norm" => ("group_norm", false),
            "q" => ("to_q", true),
            "k" => ("to_k", true),
            "v" => ("to_v", true),
            "proj_out" => ("to_out.0", true),
            _ => return None,
        };
        return Some(Target {
            part: Part::Vae,
            name: format!("{side}.mid_block.attentions.0.{name}.{param}"),
            squeeze: squeeze && param == "weight",
        });
    }
    let (stored_level, tail, blocks) = if side == "encoder" {
        let (i, tail) = index_after(rest, "down.")?;
        (i, tail, "down_blocks")
    } else {
        let (i, tail) = index_after(rest, "up.")?;
        (*decoder_levels.get(&i)?, tail, "up_blocks")
    };
    let base = format!("{side}.{blocks}.{stored_level}");
    if let Some((j, tail)) = index_after(tail, "block.") {
        return plain(format!("{base}.resnets.{j}.{}", vae_resnet(tail)));
    }
    for sampler in ["downsample.conv.", "upsample.conv."] {
        if let Some(param) = tail.strip_prefix(sampler) {
            let kind = &sampler[..sampler.find('.')?];
            return plain(format!("{base}.{kind}rs.0.conv.{param}"));
        }
    }
    None
}

/// Inside a VAE resnet only the shortcut is renamed.
fn vae_resnet(tail: &str) -> String {
    match tail.strip_prefix("nin_shortcut.") {
        Some(param) => format!("conv_shortcut.{param}"),
        None => tail.to_string(),
    }
}

/// `cond_stage_model.transformer.text_model.*` → `text_model.*`. Checkpoints saved with old
/// transformers versions lack the `text_model.` level; `position_ids` is a buffer, not a weight.
fn map_clip(rest: &str) -> Option<Target> {
    if rest.ends_with("position_ids") {
        return None;
    }
    let name = if rest.starts_with("text_model.") {
        rest.to_string()
    } else {
        format!("text_model.{rest}")
    };
    Some(Target {
        part: Part::TextEncoder,
        name,
        squeeze: false,
    })
}
