//! A1111 samplers over a model-agnostic denoiser.
//!
//! The k-diffusion samplers ("Euler", "Euler a") see the model as a denoiser `D(x, sigma)`
//! on unscaled latents; DDIM sees an epsilon predictor indexed by training timestep. The
//! pipeline supplies both views of the same UNet-with-guidance, so these loops are testable with
//! analytic models and carry no UNet details.
//!
//! Per-step scalars (sigma differences, ancestral sigmas, DDIM coefficients) are computed on the
//! host in float32, as the reference implementations do with 0-dim tensors, and only the
//! element-wise updates run as tensor operations.

use candle_core::Tensor;

use super::schedule::DiscreteSchedule;
use super::EngineError;

/// Sampler names accepted in `RenderParams.sampler_name`, in A1111 spelling.
pub const SAMPLER_NAMES: &[&str] = &["Euler", "Euler a", "DDIM"];

/// A sampling algorithm, as named in A1111.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    /// k-diffusion `sample_euler` (no churn).
    Euler,
    /// k-diffusion `sample_euler_ancestral`.
    EulerAncestral,
    /// DDIM over the uniform timesteps 1, 1 + T/n, ..., n model evaluations ending at
    /// `alphas_cumprod[0]`, as LDM's `DDIMSampler` (A1111 before 1.6) and diffusers do.
    /// A1111 1.6+ (`sd_samplers_timesteps_impl.ddim`) skips the evaluation at t = 1 and stops
    /// at `alphas_cumprod[1]`; that variant is deliberately not followed.
    Ddim,
}

impl Sampler {
    /// Parses an A1111 sampler name or one of its aliases (`k_euler`, `k_euler_a`, `ddim`).
    pub fn from_name(name: &str) -> Result<Self, EngineError> {
        match name.trim() {
            "Euler" | "k_euler" => Ok(Sampler::Euler),
            "Euler a" | "k_euler_a" | "k_euler_ancestral" => Ok(Sampler::EulerAncestral),
            "DDIM" | "ddim" => Ok(Sampler::Ddim),
            other => Err(EngineError::param(
                "sampler_name",
                format!("{other:?}"),
                format!("accepted samplers: {}", SAMPLER_NAMES.join(", ")),
            )),
        }
    }

    /// The A1111 display name.
    pub fn name(self) -> &'static str {
        match self {
            Sampler::Euler => "Euler",
            Sampler::EulerAncestral => "Euler a",
            Sampler::Ddim => "DDIM",
        }
    }

    /// The eta A1111 uses when the request leaves it at 0 ("not set"): ancestral samplers default
    /// to 1 (`eta_ancestral`), DDIM to 0 (`eta_ddim`).
    pub fn effective_eta(self, requested: f32) -> f32 {
        match self {
            Sampler::EulerAncestral if requested == 0.0 => 1.0,
            _ => requested,
        }
    }
}

/// The state after one sampler step, reported to the caller.
pub struct StepInfo<'a> {
    /// 1-based step number.
    pub step: usize,
    pub total: usize,
    /// Latents after the step.
    pub latents: &'a Tensor,
}

/// Fresh standard-normal noise shaped like the latents, for the ancestral and eta > 0 steps.
pub type NoiseFn<'a> = dyn FnMut() -> Result<Tensor, EngineError> + 'a;
/// Called after every step; returning `false` cancels the run.
pub type StepFn<'a> = dyn FnMut(StepInfo<'_>) -> Result<bool, EngineError> + 'a;

fn scaled(x: &Tensor, factor: f32) -> Result<Tensor, EngineError> {
    // `affine` keeps the multiplication in f32 with an f32 factor, like torch's tensor * scalar.
    Ok(x.affine(factor as f64, 0.0)?)
}

/// Exact element-wise division by a scalar (candle's `tensor / f64` multiplies by the
/// reciprocal, which differs from torch in the last bit).
fn divided(x: &Tensor, divisor: f32) -> Result<Tensor, EngineError> {
    let d = Tensor::new(&[divisor], x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_div(&d)?)
}

/// k-diffusion `sample_euler` with `s_churn = 0`: `d = (x - D(x, s)) / s`, `x += d * (s' - s)`.
///
/// `x` enters already multiplied by `sigmas[0]`.
pub fn sample_euler(
    denoise: &mut dyn FnMut(&Tensor, f32) -> Result<Tensor, EngineError>,
    mut x: Tensor,
    sigmas: &[f32],
    on_step: &mut StepFn<'_>,
) -> Result<Tensor, EngineError> {
    let total = sigmas.len() - 1;
    for i in 0..total {
        let sigma = sigmas[i];
        let denoised = denoise(&x, sigma)?;
        let d = divided(&(&x - &denoised)?, sigma)?;
        let dt = sigmas[i + 1] - sigma;
        x = (&x + scaled(&d, dt)?)?;
        if !on_step(StepInfo {
            step: i + 1,
            total,
            latents: &x,
        })? {
            return Err(EngineError::Cancelled);
        }
    }
    Ok(x)
}

/// k-diffusion `get_ancestral_step`: how far to step deterministically (`sigma_down`) and how
/// much fresh noise to add (`sigma_up`) between two sigmas.
pub fn ancestral_step(sigma_from: f32, sigma_to: f32, eta: f32) -> (f32, f32) {
    if eta == 0.0 {
        return (sigma_to, 0.0);
    }
    let sf2 = sigma_from * sigma_from;
    let st2 = sigma_to * sigma_to;
    let sigma_up = sigma_to.min(eta * (st2 * (sf2 - st2) / sf2).sqrt());
    let sigma_down = (st2 - sigma_up * sigma_up).sqrt();
    (sigma_down, sigma_up)
}

/// k-diffusion `sample_euler_ancestral` (`s_noise = 1`).
pub fn sample_euler_ancestral(
    denoise: &mut dyn FnMut(&Tensor, f32) -> Result<Tensor, EngineError>,
    mut x: Tensor,
    sigmas: &[f32],
    eta: f32,
    noise: &mut NoiseFn<'_>,
    on_step: &mut StepFn<'_>,
) -> Result<Tensor, EngineError> {
    let total = sigmas.len() - 1;
    for i in 0..total {
        let sigma = sigmas[i];
        let denoised = denoise(&x, sigma)?;
        let (sigma_down, sigma_up) = ancestral_step(sigma, sigmas[i + 1], eta);
        let d = divided(&(&x - &denoised)?, sigma)?;
        x = (&x + scaled(&d, sigma_down - sigma)?)?;
        if sigmas[i + 1] > 0.0 {
            x = (&x + scaled(&noise()?, sigma_up)?)?;
        }
        if !on_step(StepInfo {
            step: i + 1,
            total,
            latents: &x,
        })? {
            return Err(EngineError::Cancelled);
        }
    }
    Ok(x)
}

/// DDIM from timestep `timesteps.last()` down to `timesteps[0]`, then one final step to
/// `alphas_cumprod[0]` (LDM's `DDIMSampler` and diffusers' `DDIMScheduler` with
/// `set_alpha_to_one = false`):
///
/// `x0 = (x - sqrt(1 - a_t) * eps) / sqrt(a_t)`,
/// `x' = sqrt(a_prev) * x0 + sqrt(1 - a_prev - sigma_t^2) * eps + sigma_t * noise`.
///
/// `eps_model(x, t)` returns the guided noise prediction at integer timestep `t`.
pub fn sample_ddim(
    eps_model: &mut dyn FnMut(&Tensor, usize) -> Result<Tensor, EngineError>,
    mut x: Tensor,
    schedule: &DiscreteSchedule,
    timesteps: &[usize],
    eta: f32,
    noise: &mut NoiseFn<'_>,
    on_step: &mut StepFn<'_>,
) -> Result<Tensor, EngineError> {
    let ac = schedule.alphas_cumprod();
    let total = timesteps.len();
    for (i, index) in (0..total).rev().enumerate() {
        let t = timesteps[index];
        let a_t = ac[t];
        // The previous alpha is read as float64 (LDM casts that buffer up), the rest in f32.
        let a_prev = if index == 0 {
            ac[0]
        } else {
            ac[timesteps[index - 1]]
        } as f64;
        let sigma_t = if eta == 0.0 {
            0.0
        } else {
            let a_t = a_t as f64;
            (eta as f64 * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).sqrt()) as f32
        };
        let a_prev = a_prev as f32;
        let eps = eps_model(&x, t)?;

        let sqrt_one_minus_at = (1.0 - a_t).sqrt();
        let pred_x0 = divided(&(&x - scaled(&eps, sqrt_one_minus_at)?)?, a_t.sqrt())?;
        let dir_xt = scaled(&eps, (1.0 - a_prev - sigma_t * sigma_t).sqrt())?;
        x = (scaled(&pred_x0, a_prev.sqrt())? + dir_xt)?;
        if sigma_t > 0.0 {
            x = (&x + scaled(&noise()?, sigma_t)?)?;
        }
        if !on_step(StepInfo {
            step: i + 1,
            total,
            latents: &x,
        })? {
            return Err(EngineError::Cancelled);
        }
    }
    Ok(x)
}
