//! k-diffusion's samplers over a denoiser `D(x, sigma)`: sdfarm's own implementation of the
//! update rules of `k_diffusion.sampling` (v0.1.1), which A1111 runs for all its sigma-based
//! samplers.
//!
//! The model is only seen through the denoiser closure and the noise through a closure that
//! returns the next standard-normal draw ([`sample`]) or the draw for a given `(sigma,
//! sigma_next)` ([`sample_over_intervals`], k-diffusion's `noise_sampler`), so every
//! algorithm here is testable with analytic models and caller-chosen noise. Per-step scalars (log-sigmas, step sizes, expm1 factors) are
//! computed on the host in float32, as the reference computes them with 0-dim float32 tensors;
//! only the element-wise updates are tensor operations.

use candle_core::Tensor;

use super::sampler::{NoiseFn, StepFn, StepInfo};
use super::EngineError;

/// The standard-normal draw for the step from `sigma` to `sigma_next` (k-diffusion's
/// `noise_sampler(sigma, sigma_next)`), shaped like the latents.
pub type IntervalNoiseFn<'a> = dyn FnMut(f32, f32) -> Result<Tensor, EngineError> + 'a;

/// `D(x, sigma)`: the denoised estimate of `x` at noise level `sigma`.
pub type DenoiseFn<'a> = dyn FnMut(&Tensor, f32) -> Result<Tensor, EngineError> + 'a;

/// The sigma-space algorithms of `k_diffusion.sampling`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Euler,
    EulerAncestral,
    Heun,
    Dpm2,
    Dpm2Ancestral,
    Lms,
    Dpmpp2sAncestral,
    DpmppSde,
    Dpmpp2m,
    Dpmpp2mSde,
    Dpmpp3mSde,
}

/// Solver variant of DPM++ 2M SDE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdeSolver {
    Midpoint,
    Heun,
}

/// The keyword arguments of the k-diffusion functions; `Default` gives their defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Ancestral / SDE noise amount (`eta`).
    pub eta: f32,
    /// Karras churn for Euler, Heun and DPM2 (`s_churn`, `s_tmin`, `s_tmax`).
    pub s_churn: f32,
    pub s_tmin: f32,
    pub s_tmax: f32,
    /// Scale of every noise draw (`s_noise`).
    pub s_noise: f32,
    /// LMS order.
    pub lms_order: usize,
    /// DPM++ SDE's intermediate-step ratio `r`.
    pub sde_r: f32,
    pub sde_solver: SdeSolver,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            eta: 1.0,
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f32::INFINITY,
            s_noise: 1.0,
            lms_order: 4,
            sde_r: 0.5,
            sde_solver: SdeSolver::Midpoint,
        }
    }
}

fn scaled(x: &Tensor, factor: f32) -> Result<Tensor, EngineError> {
    // `affine` multiplies in f32 by an f32 factor, like torch's tensor * 0-dim f32 tensor.
    Ok(x.affine(factor as f64, 0.0)?)
}

/// `a + b * k`.
fn add_scaled(a: &Tensor, b: &Tensor, k: f32) -> Result<Tensor, EngineError> {
    Ok((a + scaled(b, k)?)?)
}

/// `a * ka + b * kb`.
fn lin2(a: &Tensor, ka: f32, b: &Tensor, kb: f32) -> Result<Tensor, EngineError> {
    Ok((scaled(a, ka)? + scaled(b, kb)?)?)
}

/// Exact division by a scalar; candle's `tensor / f64` multiplies by the reciprocal.
fn divided(x: &Tensor, divisor: f32) -> Result<Tensor, EngineError> {
    let d = Tensor::new(&[divisor], x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_div(&d)?)
}

/// `to_d`: the ODE derivative `(x - D) / sigma`.
fn to_d(x: &Tensor, sigma: f32, denoised: &Tensor) -> Result<Tensor, EngineError> {
    divided(&(x - denoised)?, sigma)
}

/// k-diffusion `get_ancestral_step`: the deterministic target (`sigma_down`) and the fresh
/// noise (`sigma_up`) of a step from `sigma_from` to `sigma_to`.
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

/// `t = -ln(sigma)` and back; `sigma = 0` maps to `t = inf` and back to 0, as in torch.
fn t_fn(sigma: f32) -> f32 {
    -sigma.ln()
}
fn sigma_fn(t: f32) -> f32 {
    (-t).exp()
}

/// `sigma.log().lerp(other.log(), 0.5).exp()`: the geometric midpoint DPM2 steps through.
fn log_midpoint(a: f32, b: f32) -> f32 {
    let (la, lb) = (a.ln(), b.ln());
    (la + 0.5 * (lb - la)).exp()
}

/// Runs `algorithm` from `x` (already at noise level `sigmas[0]`) down the given sigmas.
///
/// `noise` is called for every noise draw in the reference order: once per ancestral/SDE
/// step (twice per DPM++ SDE step) and, when `s_churn > 0`, once at the start of every Euler,
/// Heun or DPM2 step, as k-diffusion's `torch.randn_like` does. `on_step` sees the latents
/// after each step and stops the run by returning `false`.
pub fn sample(
    algorithm: Algorithm,
    denoise: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f32],
    opts: &Options,
    noise: &mut NoiseFn<'_>,
    on_step: &mut StepFn<'_>,
) -> Result<Tensor, EngineError> {
    let mut next = |_: f32, _: f32| noise();
    sample_over_intervals(algorithm, denoise, x, sigmas, opts, &mut next, on_step)
}

/// [`sample`] with a noise source told which step each draw is for: `noise(sigma,
/// sigma_next)` as k-diffusion calls its `noise_sampler` (the SDE samplers' pairs, including
/// DPM++ SDE's intermediate sigma; ancestral draws get the step's two sigmas, churn draws
/// `sigmas[i], sigmas[i + 1]`). A1111's SDE samplers use it for the Brownian-tree noise
/// ([`super::brownian`]).
pub fn sample_over_intervals(
    algorithm: Algorithm,
    denoise: &mut DenoiseFn<'_>,
    mut x: Tensor,
    sigmas: &[f32],
    opts: &Options,
    noise: &mut IntervalNoiseFn<'_>,
    on_step: &mut StepFn<'_>,
) -> Result<Tensor, EngineError> {
    if sigmas.len() < 2 {
        return Ok(x);
    }
    let total = sigmas.len() - 1;
    let mut history = History::default();
    for i in 0..total {
        x = match algorithm {
            Algorithm::Euler | Algorithm::Heun | Algorithm::Dpm2 => {
                churned_step(algorithm, denoise, x, sigmas, i, opts, noise)?
            }
            Algorithm::EulerAncestral => {
                let (s, s_next) = (sigmas[i], sigmas[i + 1]);
                let denoised = denoise(&x, s)?;
                let (down, up) = ancestral_step(s, s_next, opts.eta);
                let d = to_d(&x, s, &denoised)?;
                let mut x = add_scaled(&x, &d, down - s)?;
                if s_next > 0.0 {
                    x = add_scaled(&x, &noise(s, s_next)?, opts.s_noise * up)?;
                }
                x
            }
            Algorithm::Dpm2Ancestral => {
                let (s, s_next) = (sigmas[i], sigmas[i + 1]);
                let denoised = denoise(&x, s)?;
                let (down, up) = ancestral_step(s, s_next, opts.eta);
                let d = to_d(&x, s, &denoised)?;
                if down == 0.0 {
                    add_scaled(&x, &d, down - s)?
                } else {
                    let mid = log_midpoint(s, down);
                    let x2 = add_scaled(&x, &d, mid - s)?;
                    let d2 = to_d(&x2, mid, &denoise(&x2, mid)?)?;
                    let x = add_scaled(&x, &d2, down - s)?;
                    add_scaled(&x, &noise(s, s_next)?, opts.s_noise * up)?
                }
            }
            Algorithm::Lms => {
                let s = sigmas[i];
                let denoised = denoise(&x, s)?;
                history.ds.push(to_d(&x, s, &denoised)?);
                if history.ds.len() > opts.lms_order.max(1) {
                    history.ds.remove(0);
                }
                let order = (i + 1).min(opts.lms_order.max(1));
                let mut x = x;
                for (j, d) in history.ds.iter().rev().enumerate() {
                    let coeff = lms_coefficient(order, sigmas, i, j);
                    x = add_scaled(&x, d, coeff as f32)?;
                }
                x
            }
            Algorithm::Dpmpp2sAncestral => {
                let (s, s_next) = (sigmas[i], sigmas[i + 1]);
                let denoised = denoise(&x, s)?;
                let (down, up) = ancestral_step(s, s_next, opts.eta);
                let mut x = if down == 0.0 {
                    let d = to_d(&x, s, &denoised)?;
                    add_scaled(&x, &d, down - s)?
                } else {
                    let (t, t_next) = (t_fn(s), t_fn(down));
                    let h = t_next - t;
                    let s_mid = t + 0.5 * h;
                    let x2 = lin2(
                        &x,
                        sigma_fn(s_mid) / sigma_fn(t),
                        &denoised,
                        -(-h * 0.5).exp_m1(),
                    )?;
                    let denoised2 = denoise(&x2, sigma_fn(s_mid))?;
                    lin2(
                        &x,
                        sigma_fn(t_next) / sigma_fn(t),
                        &denoised2,
                        -(-h).exp_m1(),
                    )?
                };
                if s_next > 0.0 {
                    x = add_scaled(&x, &noise(s, s_next)?, opts.s_noise * up)?;
                }
                x
            }
            Algorithm::DpmppSde => dpmpp_sde_step(denoise, x, sigmas, i, opts, noise)?,
            Algorithm::Dpmpp2m => {
                let (s, s_next) = (sigmas[i], sigmas[i + 1]);
                let denoised = denoise(&x, s)?;
                let (t, t_next) = (t_fn(s), t_fn(s_next));
                let h = t_next - t;
                let ratio = sigma_fn(t_next) / sigma_fn(t);
                let x = match history.denoised.take() {
                    Some(old) if s_next != 0.0 => {
                        let h_last = t - t_fn(sigmas[i - 1]);
                        let r = h_last / h;
                        let k = 1.0 / (2.0 * r);
                        let denoised_d = lin2(&denoised, 1.0 + k, &old, -k)?;
                        lin2(&x, ratio, &denoised_d, -(-h).exp_m1())?
                    }
                    _ => lin2(&x, ratio, &denoised, -(-h).exp_m1())?,
                };
                history.denoised = Some(denoised);
                x
            }
            Algorithm::Dpmpp2mSde => {
                dpmpp_2m_sde_step(denoise, x, sigmas, i, opts, noise, &mut history)?
            }
            Algorithm::Dpmpp3mSde => {
                dpmpp_3m_sde_step(denoise, x, sigmas, i, opts, noise, &mut history)?
            }
        };
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

/// What the multistep methods carry from one step to the next.
#[derive(Default)]
struct History {
    /// LMS derivatives, oldest first.
    ds: Vec<Tensor>,
    /// The previous (and the one before) denoised estimates.
    denoised: Option<Tensor>,
    denoised_2: Option<Tensor>,
    /// The previous step sizes in log-sigma.
    h_1: Option<f32>,
    h_2: Option<f32>,
}

/// One step of Euler, Heun or DPM2 with Karras churn (`sample_euler`/`_heun`/`_dpm_2`).
fn churned_step(
    algorithm: Algorithm,
    denoise: &mut DenoiseFn<'_>,
    mut x: Tensor,
    sigmas: &[f32],
    i: usize,
    opts: &Options,
    noise: &mut IntervalNoiseFn<'_>,
) -> Result<Tensor, EngineError> {
    let (s, s_next) = (sigmas[i], sigmas[i + 1]);
    let gamma = if opts.s_tmin <= s && s <= opts.s_tmax {
        (opts.s_churn / (sigmas.len() - 1) as f32).min(2f32.sqrt() - 1.0)
    } else {
        0.0
    };
    // k-diffusion draws this noise on every step whatever gamma is; it only changes the
    // generator's position, which matters only when churn is on at all.
    let eps = if opts.s_churn > 0.0 {
        Some(scaled(&noise(sigmas[i], sigmas[i + 1])?, opts.s_noise)?)
    } else {
        None
    };
    let sigma_hat = s * (gamma + 1.0);
    if gamma > 0.0 {
        let eps = eps.expect("drawn when churn is on");
        x = add_scaled(&x, &eps, (sigma_hat * sigma_hat - s * s).sqrt())?;
    }
    let denoised = denoise(&x, sigma_hat)?;
    let d = to_d(&x, sigma_hat, &denoised)?;
    let dt = s_next - sigma_hat;
    if algorithm == Algorithm::Euler || s_next == 0.0 {
        return add_scaled(&x, &d, dt);
    }
    if algorithm == Algorithm::Heun {
        let x2 = add_scaled(&x, &d, dt)?;
        let d2 = to_d(&x2, s_next, &denoise(&x2, s_next)?)?;
        let d_prime = ((d + d2)? * 0.5)?;
        return add_scaled(&x, &d_prime, dt);
    }
    let mid = log_midpoint(sigma_hat, s_next);
    let x2 = add_scaled(&x, &d, mid - sigma_hat)?;
    let d2 = to_d(&x2, mid, &denoise(&x2, mid)?)?;
    add_scaled(&x, &d2, dt)
}

/// `linear_multistep_coeff`: the integral over `[sigmas[i], sigmas[i+1]]` of the Lagrange basis
/// polynomial `j` through the last `order` sigmas. The polynomial has degree < 4, so 5-point
/// Gauss-Legendre quadrature is exact (scipy's adaptive `quad` converges to the same value).
fn lms_coefficient(order: usize, sigmas: &[f32], i: usize, j: usize) -> f64 {
    let t = |k: usize| sigmas[i - k] as f64;
    let basis = |tau: f64| {
        (0..order)
            .filter(|&k| k != j)
            .map(|k| (tau - t(k)) / (t(j) - t(k)))
            .product::<f64>()
    };
    const NODES: [(f64, f64); 5] = [
        (0.0, 0.568_888_888_888_888_9),
        (-0.538_469_310_105_683_1, 0.478_628_670_499_366_47),
        (0.538_469_310_105_683_1, 0.478_628_670_499_366_47),
        (-0.906_179_845_938_664, 0.236_926_885_056_189_08),
        (0.906_179_845_938_664, 0.236_926_885_056_189_08),
    ];
    let (a, b) = (sigmas[i] as f64, sigmas[i + 1] as f64);
    let (half, center) = ((b - a) / 2.0, (a + b) / 2.0);
    NODES
        .iter()
        .map(|&(node, weight)| weight * basis(center + half * node))
        .sum::<f64>()
        * half
}

/// One step of `sample_dpmpp_sde` (DPM-Solver++ with an SDE midpoint).
fn dpmpp_sde_step(
    denoise: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f32],
    i: usize,
    opts: &Options,
    noise: &mut IntervalNoiseFn<'_>,
) -> Result<Tensor, EngineError> {
    let (s, s_next) = (sigmas[i], sigmas[i + 1]);
    let denoised = denoise(&x, s)?;
    if s_next == 0.0 {
        let d = to_d(&x, s, &denoised)?;
        return add_scaled(&x, &d, s_next - s);
    }
    let (t, t_next) = (t_fn(s), t_fn(s_next));
    let h = t_next - t;
    let s_mid = t + h * opts.sde_r;
    let fac = 1.0 / (2.0 * opts.sde_r);

    let (sd, su) = ancestral_step(sigma_fn(t), sigma_fn(s_mid), opts.eta);
    let s_ = t_fn(sd);
    let x2 = lin2(
        &x,
        sigma_fn(s_) / sigma_fn(t),
        &denoised,
        -(t - s_).exp_m1(),
    )?;
    let x2 = add_scaled(
        &x2,
        &noise(sigma_fn(t), sigma_fn(s_mid))?,
        opts.s_noise * su,
    )?;
    let denoised2 = denoise(&x2, sigma_fn(s_mid))?;

    let (sd, su) = ancestral_step(sigma_fn(t), sigma_fn(t_next), opts.eta);
    let t_next_ = t_fn(sd);
    let denoised_d = lin2(&denoised, 1.0 - fac, &denoised2, fac)?;
    let x = lin2(
        &x,
        sigma_fn(t_next_) / sigma_fn(t),
        &denoised_d,
        -(t - t_next_).exp_m1(),
    )?;
    add_scaled(
        &x,
        &noise(sigma_fn(t), sigma_fn(t_next))?,
        opts.s_noise * su,
    )
}

/// One step of `sample_dpmpp_2m_sde`.
fn dpmpp_2m_sde_step(
    denoise: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f32],
    i: usize,
    opts: &Options,
    noise: &mut IntervalNoiseFn<'_>,
    history: &mut History,
) -> Result<Tensor, EngineError> {
    let (s, s_next) = (sigmas[i], sigmas[i + 1]);
    let denoised = denoise(&x, s)?;
    let mut h = history.h_1;
    let x = if s_next == 0.0 {
        denoised.clone()
    } else {
        let step = t_fn(s_next) - t_fn(s);
        h = Some(step);
        let eta_h = opts.eta * step;
        let one_minus = -(-step - eta_h).exp_m1();
        let mut x = lin2(&x, s_next / s * (-eta_h).exp(), &denoised, one_minus)?;
        if let (Some(old), Some(h_last)) = (&history.denoised, history.h_1) {
            let r = h_last / step;
            let k = match opts.sde_solver {
                SdeSolver::Heun => (one_minus / (-step - eta_h) + 1.0) * (1.0 / r),
                SdeSolver::Midpoint => 0.5 * one_minus * (1.0 / r),
            };
            x = add_scaled(&x, &(&denoised - old)?, k)?;
        }
        if opts.eta != 0.0 {
            let k = s_next * (-(-2.0 * eta_h).exp_m1()).sqrt() * opts.s_noise;
            x = add_scaled(&x, &noise(s, s_next)?, k)?;
        }
        x
    };
    history.denoised = Some(denoised);
    history.h_1 = h;
    Ok(x)
}

/// One step of `sample_dpmpp_3m_sde`.
fn dpmpp_3m_sde_step(
    denoise: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f32],
    i: usize,
    opts: &Options,
    noise: &mut IntervalNoiseFn<'_>,
    history: &mut History,
) -> Result<Tensor, EngineError> {
    let (s, s_next) = (sigmas[i], sigmas[i + 1]);
    let denoised = denoise(&x, s)?;
    // `h` keeps its previous value on the final (denoising) step, as in the reference.
    let mut h = history.h_1;
    let x = if s_next == 0.0 {
        denoised.clone()
    } else {
        let step = t_fn(s_next) - t_fn(s);
        h = Some(step);
        let h_eta = step * (opts.eta + 1.0);
        let mut x = lin2(&x, (-h_eta).exp(), &denoised, -(-h_eta).exp_m1())?;
        let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
        match (
            &history.denoised,
            &history.denoised_2,
            history.h_1,
            history.h_2,
        ) {
            (Some(d_1), Some(d_2), Some(h_1), Some(h_2)) => {
                let r0 = h_1 / step;
                let r1 = h_2 / step;
                let d1_0 = divided(&(&denoised - d_1)?, r0)?;
                let d1_1 = divided(&(d_1 - d_2)?, r1)?;
                let diff = (&d1_0 - &d1_1)?;
                let d1 = add_scaled(&d1_0, &diff, r0 / (r0 + r1))?;
                let d2 = divided(&diff, r0 + r1)?;
                let phi_3 = phi_2 / h_eta - 0.5;
                x = lin2(&(x + scaled(&d1, phi_2)?)?, 1.0, &d2, -phi_3)?;
            }
            (Some(d_1), _, Some(h_1), _) => {
                let r = h_1 / step;
                let d = divided(&(&denoised - d_1)?, r)?;
                x = add_scaled(&x, &d, phi_2)?;
            }
            _ => {}
        }
        if opts.eta != 0.0 {
            let k = s_next * (-(-2.0 * step * opts.eta).exp_m1()).sqrt() * opts.s_noise;
            x = add_scaled(&x, &noise(s, s_next)?, k)?;
        }
        x
    };
    history.denoised_2 = history.denoised.take();
    history.denoised = Some(denoised);
    history.h_2 = history.h_1;
    history.h_1 = h;
    Ok(x)
}
