//! Noise schedules: the discrete DDPM schedule of SD 1.x and the A1111 "Automatic" sigmas.
//!
//! Everything here runs on the host in the precision torch uses, because a one-ulp difference in
//! a sigma or timestep is visible after a few sampler steps:
//! * `alphas_cumprod` as the LDM code builds it: betas from a float64 `torch.linspace`, squared,
//!   cumulative product in float64, then stored as float32;
//! * k-diffusion's `CompVisDenoiser` sigmas `sqrt((1 - ac) / ac)` and their logs in float32
//!   (torch evaluates `** 0.5` with a vectorised pow that is within one ulp of the exact square
//!   root used here; 17% of the 1000 discrete sigmas come out one ulp apart);
//! * `get_sigmas(n)`: `t = torch.linspace(999, 0, n)` in float32, log-sigma interpolated between
//!   neighbouring integer timesteps, and a trailing zero.

use super::EngineError;

/// Vector widths of the AVX512 build the reference values came from: `torch.linspace` fills
/// two vectors at a time through `Vectorized::arange`, whose lanes are `base + k * step`, so the
/// lane grouping affects the last bit of the result.
const F32_LANES: usize = 16;
const F64_LANES: usize = 8;

/// `torch.linspace(start, end, steps)` in float64 as the CPU kernel computes it.
pub fn linspace_f64(start: f64, end: f64, steps: usize) -> Vec<f64> {
    linspace_generic(start, end, steps, F64_LANES)
}

/// `torch.linspace(start, end, steps)` in float32 as the CPU kernel computes it.
pub fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    linspace_generic(start, end, steps, F32_LANES)
}

trait LinspaceFloat:
    Copy
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    fn from_usize(v: usize) -> Self;
}

impl LinspaceFloat for f32 {
    fn from_usize(v: usize) -> Self {
        v as f32
    }
}

impl LinspaceFloat for f64 {
    fn from_usize(v: usize) -> Self {
        v as f64
    }
}

fn linspace_generic<T: LinspaceFloat>(start: T, end: T, steps: usize, lanes: usize) -> Vec<T> {
    match steps {
        0 => return Vec::new(),
        1 => return vec![start],
        _ => {}
    }
    let step = (end - start) / T::from_usize(steps - 1);
    let halfway = steps / 2;
    // The value a lane gets depends only on the index its vector (or the scalar) starts at.
    let base_at = |idx: usize| {
        if idx < halfway {
            start + step * T::from_usize(idx)
        } else {
            end - step * T::from_usize(steps - idx - 1)
        }
    };
    let mut out = Vec::with_capacity(steps);
    let mut idx = 0;
    // cpu_serial_kernel_vec: whole pairs of vectors first, then the scalar loop.
    while steps >= 2 * lanes && idx <= steps - 2 * lanes {
        for _ in 0..2 {
            let base = base_at(idx);
            for k in 0..lanes {
                out.push(if k == 0 {
                    base
                } else {
                    base + T::from_usize(k) * step
                });
            }
            idx += lanes;
        }
    }
    while idx < steps {
        out.push(base_at(idx));
        idx += 1;
    }
    out
}

/// The discrete training schedule of an epsilon-prediction latent diffusion model.
#[derive(Debug, Clone)]
pub struct DiscreteSchedule {
    alphas_cumprod: Vec<f32>,
    sigmas: Vec<f32>,
    log_sigmas: Vec<f32>,
}

impl DiscreteSchedule {
    /// SD 1.x: LDM "linear" (diffusers "scaled_linear") betas from 0.00085 to 0.012, 1000 steps.
    pub fn sd15() -> Self {
        Self::scaled_linear(0.00085, 0.012, 1000)
    }

    /// Betas `linspace(sqrt(start), sqrt(end), n)^2` in float64, as LDM builds them.
    pub fn scaled_linear(beta_start: f64, beta_end: f64, num_train_timesteps: usize) -> Self {
        let betas: Vec<f64> = linspace_f64(beta_start.sqrt(), beta_end.sqrt(), num_train_timesteps)
            .into_iter()
            .map(|b| b * b)
            .collect();
        Self::from_betas(&betas)
    }

    /// Betas `linspace(start, end, n)` in float64 (diffusers "linear").
    pub fn linear(beta_start: f64, beta_end: f64, num_train_timesteps: usize) -> Self {
        Self::from_betas(&linspace_f64(beta_start, beta_end, num_train_timesteps))
    }

    fn from_betas(betas: &[f64]) -> Self {
        let mut product = 1.0f64;
        let alphas_cumprod: Vec<f32> = betas
            .iter()
            .map(|b| {
                product *= 1.0 - b;
                product as f32
            })
            .collect();
        let sigmas: Vec<f32> = alphas_cumprod
            .iter()
            .map(|&ac| ((1.0 - ac) / ac).sqrt())
            .collect();
        let log_sigmas = sigmas.iter().map(|&s| s.ln()).collect();
        DiscreteSchedule {
            alphas_cumprod,
            sigmas,
            log_sigmas,
        }
    }

    /// Reads `beta_start`, `beta_end`, `beta_schedule`, `num_train_timesteps`
    /// from a diffusers `scheduler_config.json` value. Missing keys take the SD 1.x defaults;
    /// the prediction type is the pipeline's business.
    pub fn from_diffusers_config(config: &serde_json::Value) -> Result<Self, EngineError> {
        let num =
            |key: &str, default: f64| config.get(key).and_then(|v| v.as_f64()).unwrap_or(default);
        let beta_start = num("beta_start", 0.00085);
        let beta_end = num("beta_end", 0.012);
        let steps = num("num_train_timesteps", 1000.0) as usize;
        if !(2..=100_000).contains(&steps) {
            return Err(EngineError::Unsupported {
                what: format!("scheduler num_train_timesteps = {steps}"),
                hint: "expected a training schedule of 2..=100000 steps (SD uses 1000)".into(),
            });
        }
        match config
            .get("beta_schedule")
            .and_then(|v| v.as_str())
            .unwrap_or("scaled_linear")
        {
            "scaled_linear" => Ok(Self::scaled_linear(beta_start, beta_end, steps)),
            "linear" => Ok(Self::linear(beta_start, beta_end, steps)),
            other => Err(EngineError::Unsupported {
                what: format!("beta_schedule {other:?}"),
                hint: "accepted: \"scaled_linear\", \"linear\"".into(),
            }),
        }
    }

    /// Number of training timesteps (1000 for SD).
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Always false: a schedule has at least two timesteps.
    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }

    /// `alphas_cumprod` as the float32 buffer the model holds.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// k-diffusion's discrete sigmas, ascending; index = timestep.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    pub fn sigma_min(&self) -> f32 {
        self.sigmas[0]
    }

    pub fn sigma_max(&self) -> f32 {
        self.sigmas[self.sigmas.len() - 1]
    }

    /// `DiscreteSchedule.t_to_sigma`: log-linear interpolation between integer timesteps.
    pub fn t_to_sigma(&self, t: f32) -> f32 {
        let low = t.floor();
        let w = t - low;
        let low = low as usize;
        let high = t.ceil() as usize;
        let log_sigma = (1.0 - w) * self.log_sigmas[low] + w * self.log_sigmas[high];
        log_sigma.exp()
    }

    /// `DiscreteSchedule.sigma_to_t` without quantisation: the (fractional) timestep the UNet
    /// is given for a sigma.
    pub fn sigma_to_t(&self, sigma: f32) -> f32 {
        let log_sigma = sigma.ln();
        let last = self.log_sigmas.len() - 1;
        // Index of the last log-sigma not above log_sigma, kept one short of the end so that
        // `high` exists (argmax of the cumulative count of `dists >= 0`).
        let count = self
            .log_sigmas
            .iter()
            .filter(|&&ls| log_sigma - ls >= 0.0)
            .count();
        let low_idx = count.saturating_sub(1).min(last - 1);
        let high_idx = low_idx + 1;
        let low = self.log_sigmas[low_idx];
        let high = self.log_sigmas[high_idx];
        let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
        (1.0 - w) * low_idx as f32 + w * high_idx as f32
    }

    /// `CompVisDenoiser.get_sigmas(n)` plus the trailing zero: A1111's "Automatic" schedule for
    /// SD 1.x samplers without a preferred schedule type.
    pub fn automatic_sigmas(&self, steps: usize) -> Vec<f32> {
        let t_max = (self.len() - 1) as f32;
        let mut sigmas: Vec<f32> = linspace_f32(t_max, 0.0, steps)
            .into_iter()
            .map(|t| self.t_to_sigma(t))
            .collect();
        sigmas.push(0.0);
        sigmas
    }

    /// DDIM's timesteps, ascending: `i * (T / n) + 1` for `i in 0..n` (901..1 reversed for 10
    /// steps on T = 1000), as LDM's `DDIMSampler` and diffusers' "leading" spacing with
    /// `steps_offset = 1` give them. Exactly `n` steps: when `n` does not divide T,
    /// LDM's `range(0, T, T // n)` would yield an extra one.
    pub fn ddim_timesteps(&self, steps: usize) -> Vec<usize> {
        let stride = (self.len() / steps.max(1)).max(1);
        (0..steps.min(self.len()))
            .map(|i| (i * stride + 1).min(self.len() - 1))
            .collect()
    }
}
