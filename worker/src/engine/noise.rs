//! Initial and per-step noise, the way A1111 draws it for one image.
//!
//! Each image owns a generator seeded with its seed: the initial latent noise is its first draw
//! and ancestral samplers keep drawing from it. With a variation seed ("Var. seed"/"Var.
//! strength"), the initial noise is A1111's `slerp(strength, noise(seed), noise(subseed))`,
//! where the subseed noise comes from a separate, fresh generator.

use super::philox::PhiloxGenerator;
use super::torch_rng::TorchGenerator;
use super::EngineError;

/// The `RenderParams.rng` values this build understands.
pub const RNG_NAMES: &[&str] = &["CPU", "NV"];

/// A per-image noise generator.
pub enum NoiseSource {
    /// `torch.Generator('cpu')`, A1111's "CPU" setting.
    Torch(TorchGenerator),
    /// A1111's Philox generator, its "NV" setting (GPU-style noise made on any machine).
    Philox(PhiloxGenerator),
}

impl NoiseSource {
    /// Picks the generator named by `RenderParams.rng` ("" means "CPU").
    pub fn new(rng: &str, seed: i64) -> Result<Self, EngineError> {
        match rng.trim() {
            "" | "CPU" | "cpu" => Ok(NoiseSource::Torch(TorchGenerator::new(seed as u64))),
            "NV" | "nv" => Ok(NoiseSource::Philox(PhiloxGenerator::new(seed as u64))),
            other => Err(EngineError::param(
                "rng",
                format!("{other:?}"),
                format!("one of {}", RNG_NAMES.join(", ")),
            )),
        }
    }

    /// The next `numel` standard-normal values.
    pub fn randn(&mut self, numel: usize) -> Vec<f32> {
        match self {
            NoiseSource::Torch(g) => g.randn(numel),
            NoiseSource::Philox(g) => g.randn(numel),
        }
    }
}

/// A1111's `slerp(val, low, high)` for one image's noise of shape `[C, H, W]`.
///
/// It normalises along dim 1 (the rows), not over the whole tensor, and when the two noises
/// are nearly parallel it falls back to `low * val + high * (1 - val)` (weights swapped
/// relative to the spherical branch). Both quirks are kept so variation seeds reproduce.
pub fn slerp(val: f32, low: &[f32], high: &[f32], shape: [usize; 3]) -> Vec<f32> {
    let [c, h, w] = shape;
    let at = |ci: usize, hi: usize, wi: usize| (ci * h + hi) * w + wi;
    let norm = |v: &[f32], ci: usize, wi: usize| -> f32 {
        (0..h)
            .map(|hi| (v[at(ci, hi, wi)] as f64).powi(2))
            .sum::<f64>()
            .sqrt() as f32
    };
    // dot[ci][wi] of the row-normalised tensors.
    let mut dot = vec![0f32; c * w];
    for ci in 0..c {
        for wi in 0..w {
            let (nl, nh) = (norm(low, ci, wi), norm(high, ci, wi));
            dot[ci * w + wi] = (0..h)
                .map(|hi| ((low[at(ci, hi, wi)] / nl) * (high[at(ci, hi, wi)] / nh)) as f64)
                .sum::<f64>() as f32;
        }
    }
    let mean_dot = dot.iter().map(|&d| d as f64).sum::<f64>() / dot.len() as f64;
    if mean_dot > 0.9995 {
        return low
            .iter()
            .zip(high)
            .map(|(&l, &h)| l * val + h * (1.0 - val))
            .collect();
    }
    let mut out = vec![0f32; low.len()];
    for ci in 0..c {
        for wi in 0..w {
            let omega = dot[ci * w + wi].acos();
            let so = omega.sin();
            let a = ((1.0 - val) * omega).sin() / so;
            let b = (val * omega).sin() / so;
            for hi in 0..h {
                let i = at(ci, hi, wi);
                out[i] = a * low[i] + b * high[i];
            }
        }
    }
    out
}

/// The initial noise for one image of `numel = C*H*W` latent values, drawn from `source`
/// (which then continues for ancestral steps), with the variation seed blended in when
/// `subseed_strength` is non-zero.
pub fn initial_noise(
    source: &mut NoiseSource,
    rng: &str,
    subseed: i64,
    subseed_strength: f32,
    shape: [usize; 3],
) -> Result<Vec<f32>, EngineError> {
    let numel = shape.iter().product();
    if !subseed_strength.is_finite() || !(0.0..=1.0).contains(&subseed_strength) {
        return Err(EngineError::param(
            "subseed_strength",
            subseed_strength,
            "a number from 0 to 1",
        ));
    }
    if subseed_strength == 0.0 {
        return Ok(source.randn(numel));
    }
    // A1111 draws the subseed noise first, from its own generator.
    let sub = NoiseSource::new(rng, subseed)?.randn(numel);
    let main = source.randn(numel);
    Ok(slerp(subseed_strength, &main, &sub, shape))
}

/// Where "Seed resize from" pastes the noise made at the source size into the image's noise,
/// per axis: `(target_start, source_start, length)`, as A1111's `ImageRNG.first` computes it
/// (`d = (target - source) // 2`, floor division; a larger source is cropped centred, and an
/// odd difference then leaves the last target row or column with the image's own noise).
pub fn paste_span(target: usize, source: usize) -> (usize, usize, usize) {
    let d = (target as i64 - source as i64).div_euclid(2);
    let len = if d >= 0 {
        source as i64
    } else {
        source as i64 + 2 * d
    };
    let to = d.max(0);
    let from = (-d).max(0);
    (to as usize, from as usize, len.max(0) as usize)
}

/// The initial noise of one image `[C, H, W]` with A1111's "Seed resize from"
/// (`ImageRNG.first` with `seed_resize_from_h/w`): when `source_hw` (the source size in
/// latent pixels) differs from `[H, W]`, the seed's noise (blended with the variation seed's,
/// both made at the source size by fresh generators) is pasted centred into the image
/// generator's first draw at the full size, and that generator continues for ancestral
/// noise. Otherwise this is [`initial_noise`].
#[allow(clippy::too_many_arguments)]
pub fn initial_noise_resized(
    source: &mut NoiseSource,
    rng: &str,
    seed: i64,
    subseed: i64,
    subseed_strength: f32,
    shape: [usize; 3],
    source_hw: Option<[usize; 2]>,
) -> Result<Vec<f32>, EngineError> {
    let [c, h, w] = shape;
    let Some([sh, sw]) = source_hw.filter(|&hw| hw != [h, w]) else {
        return initial_noise(source, rng, subseed, subseed_strength, shape);
    };
    if sh == 0 || sw == 0 {
        return Err(EngineError::param(
            "seed_resize_from_w",
            format!("{sw}x{sh} latent pixels"),
            "a size of at least one latent pixel each way (or 0 for off)",
        ));
    }
    if !subseed_strength.is_finite() || !(0.0..=1.0).contains(&subseed_strength) {
        return Err(EngineError::param(
            "subseed_strength",
            subseed_strength,
            "a number from 0 to 1",
        ));
    }
    let small_shape = [c, sh, sw];
    let small_numel = c * sh * sw;
    let sub = (subseed_strength != 0.0)
        .then(|| NoiseSource::new(rng, subseed).map(|mut g| g.randn(small_numel)))
        .transpose()?;
    let mut small = NoiseSource::new(rng, seed)?.randn(small_numel);
    if let Some(sub) = sub {
        small = slerp(subseed_strength, &small, &sub, small_shape);
    }
    let mut x = source.randn(c * h * w);
    let (ty, sy, rows) = paste_span(h, sh);
    let (tx, sx, cols) = paste_span(w, sw);
    for ci in 0..c {
        for r in 0..rows {
            let to = (ci * h + ty + r) * w + tx;
            let from = (ci * sh + sy + r) * sw + sx;
            x[to..to + cols].copy_from_slice(&small[from..from + cols]);
        }
    }
    Ok(x)
}
