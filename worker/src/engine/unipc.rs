//! A1111's "UniPC" sampler: the multistep UniPC solver (predictor UniP plus corrector UniC,
//! `B(h)` variants) as A1111 1.10 runs it from `sd_samplers_timesteps_impl.unipc` and
//! `modules/models/diffusion/uni_pc/uni_pc.py`, in sdfarm's own code.
//!
//! Unlike the k-diffusion samplers, A1111's UniPC works on the discrete model in the
//! variance-preserving formulation: `x_t = alpha_t * x0 + sigma_t * eps`, continuous time
//! `t` in `[1/N, 1]` (N = 1000 training steps), `log(alpha_t)` interpolated piecewise linearly
//! between the discrete timesteps, and the half-log-SNR `lambda_t = log(alpha_t / sigma_t)` as
//! the solver's variable. The model is asked for a (guided) noise prediction at the model
//! time `(t - 1/N) * 1000`, a fractional timestep, and the solver works on the data
//! prediction `x0 = (x - sigma_t * eps) / alpha_t`.
//!
//! What A1111 fixes around the solver: the step count is the length of its timestep list
//! `range(0, 1000, 1000 // steps)` ([`a1111_unipc_steps`]: 7 steps run 8), the run goes from
//! `t = 1` to `t = 1/N` with the sampler's own spacing (the schedule type is ignored), the
//! initial latents are the unscaled noise, and the options come from settings: order
//! (`uni_pc_order`, default 3, "UniPC Order" in X/Y/Z), variant (`bh1`), skip type
//! (`time_uniform`) and `lower_order_final` (true).
//!
//! Scalars are computed on the host in float32, as the reference computes them with float32
//! tensors; the small linear systems for the solver coefficients are solved in float64 and
//! rounded (torch solves them in float32 with LAPACK, which agrees to a few ulps).

use candle_core::Tensor;

use super::sampler::{StepFn, StepInfo};
use super::schedule::{linspace_f32, DiscreteSchedule};
use super::EngineError;

/// The noise prediction `eps(x, t_model)` at a fractional model timestep `t_model` in
/// `[0, N - 1]`, guidance already applied.
pub type EpsFn<'a> = dyn FnMut(&Tensor, f32) -> Result<Tensor, EngineError> + 'a;

/// `uni_pc_variant`: how the `B(h)` factor of the update is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniPcVariant {
    /// `B(h) = h` (A1111's default).
    Bh1,
    /// `B(h) = e^h - 1`.
    Bh2,
}

/// `uni_pc_skip_type`: how the solver's timesteps are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniPcSkipType {
    /// Evenly in `t` (A1111's default).
    TimeUniform,
    /// Evenly in `sqrt(t)`.
    TimeQuadratic,
    /// Evenly in `lambda`.
    LogSnr,
}

/// A1111's UniPC settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UniPcOptions {
    /// Solver order (`uni_pc_order`), at least 1 and at most the number of steps.
    pub order: usize,
    pub variant: UniPcVariant,
    pub skip_type: UniPcSkipType,
    /// Lower the order over the last steps (`uni_pc_lower_order_final`).
    pub lower_order_final: bool,
}

impl Default for UniPcOptions {
    /// A1111's defaults: order 3, `bh1`, `time_uniform`, lower order final.
    fn default() -> Self {
        UniPcOptions {
            order: 3,
            variant: UniPcVariant::Bh1,
            skip_type: UniPcSkipType::TimeUniform,
            lower_order_final: true,
        }
    }
}

impl UniPcOptions {
    /// The defaults with the order from a render request, where 0 means "A1111's default (3)".
    pub fn with_order(order: u32) -> Self {
        UniPcOptions {
            order: if order == 0 { 3 } else { order as usize },
            ..Self::default()
        }
    }
}

/// How many solver steps A1111's UniPC takes for `steps` requested steps: the length of
/// `range(0, N, N // steps)` (A1111's timestep list), so 20 steps run 20 but 7 run 8 and
/// 30 run 31.
pub fn a1111_unipc_steps(schedule_len: usize, steps: usize) -> usize {
    let stride = (schedule_len / steps.max(1)).max(1);
    schedule_len.div_ceil(stride)
}

/// `NoiseScheduleVP('discrete', alphas_cumprod=...)`: `log(alpha_t)` at the continuous times
/// `t_i = (i + 1) / N`, interpolated linearly in between (and extrapolated beyond).
#[derive(Debug, Clone)]
pub struct VpSchedule {
    t_array: Vec<f32>,
    log_alpha: Vec<f32>,
}

impl VpSchedule {
    /// From the model's float32 `alphas_cumprod`: `log_alpha = 0.5 * log(ac)` in float32.
    pub fn new(alphas_cumprod: &[f32]) -> Self {
        let n = alphas_cumprod.len();
        let mut t_array = linspace_f32(0.0, 1.0, n + 1);
        t_array.remove(0);
        VpSchedule {
            t_array,
            log_alpha: alphas_cumprod.iter().map(|&a| 0.5 * a.ln()).collect(),
        }
    }

    pub fn from_schedule(schedule: &DiscreteSchedule) -> Self {
        Self::new(schedule.alphas_cumprod())
    }

    /// Number of discrete training steps N.
    pub fn total_n(&self) -> usize {
        self.log_alpha.len()
    }

    /// `log(alpha_t)`.
    pub fn log_mean_coeff(&self, t: f32) -> f32 {
        interpolate(t, &self.t_array, &self.log_alpha)
    }

    pub fn alpha(&self, t: f32) -> f32 {
        self.log_mean_coeff(t).exp()
    }

    /// `sigma_t = sqrt(1 - alpha_t^2)`.
    pub fn std(&self, t: f32) -> f32 {
        (1.0 - (2.0 * self.log_mean_coeff(t)).exp()).sqrt()
    }

    /// `lambda_t = log(alpha_t) - log(sigma_t)`.
    pub fn lambda(&self, t: f32) -> f32 {
        let lmc = self.log_mean_coeff(t);
        lmc - 0.5 * (1.0 - (2.0 * lmc).exp()).ln()
    }

    /// The time whose `lambda` is `lamb` (`inverse_lambda`).
    pub fn inverse_lambda(&self, lamb: f32) -> f32 {
        let log_alpha = -0.5 * logaddexp(0.0, -2.0 * lamb);
        let xp: Vec<f32> = self.log_alpha.iter().rev().copied().collect();
        let yp: Vec<f32> = self.t_array.iter().rev().copied().collect();
        interpolate(log_alpha, &xp, &yp)
    }

    /// The model timestep for a continuous time: `(t - 1/N) * 1000`.
    pub fn model_time(&self, t: f32) -> f32 {
        (t - 1.0 / self.total_n() as f32) * 1000.0
    }
}

/// `torch.logaddexp` for float32 scalars.
fn logaddexp(a: f32, b: f32) -> f32 {
    let m = a.max(b);
    m + (-(a - b).abs()).exp().ln_1p()
}

/// uni_pc's `interpolate_fn` for one value: the segment is the one whose right end is the
/// first keypoint not below `x` (torch's stable sort puts `x` before an equal keypoint), the
/// first or last segment beyond the ends, evaluated as
/// `start_y + (x - start_x) * (end_y - start_y) / (end_x - start_x)`.
fn interpolate(x: f32, xp: &[f32], yp: &[f32]) -> f32 {
    let k = xp.len();
    let below = xp.iter().filter(|&&p| p < x).count();
    let start = below.saturating_sub(1).min(k - 2);
    let (sx, ex) = (xp[start], xp[start + 1]);
    let (sy, ey) = (yp[start], yp[start + 1]);
    sy + (x - sx) * (ey - sy) / (ex - sx)
}

/// The solver's `steps + 1` times from `t_start` down to `t_end` (`get_time_steps`).
pub fn time_steps(
    ns: &VpSchedule,
    skip_type: UniPcSkipType,
    t_start: f32,
    t_end: f32,
    steps: usize,
) -> Vec<f32> {
    match skip_type {
        UniPcSkipType::TimeUniform => linspace_f32(t_start, t_end, steps + 1),
        UniPcSkipType::TimeQuadratic => {
            let (a, b) = ((t_start as f64).sqrt() as f32, (t_end as f64).sqrt() as f32);
            linspace_f32(a, b, steps + 1)
                .into_iter()
                .map(|v| v * v)
                .collect()
        }
        UniPcSkipType::LogSnr => linspace_f32(ns.lambda(t_start), ns.lambda(t_end), steps + 1)
            .into_iter()
            .map(|l| ns.inverse_lambda(l))
            .collect(),
    }
}

fn scaled(x: &Tensor, k: f32) -> Result<Tensor, EngineError> {
    Ok(x.affine(k as f64, 0.0)?)
}

/// Exact division by a scalar (candle's `tensor / f64` multiplies by the reciprocal).
fn divided(x: &Tensor, divisor: f32) -> Result<Tensor, EngineError> {
    let d = Tensor::new(&[divisor], x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_div(&d)?)
}

/// `sum_k w[k] * ts[k]` in index order (the einsum `k,bkchw->bchw`).
fn weighted_sum(w: &[f32], ts: &[Tensor]) -> Result<Option<Tensor>, EngineError> {
    let mut acc: Option<Tensor> = None;
    for (k, t) in w.iter().zip(ts) {
        let term = scaled(t, *k)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    Ok(acc)
}

/// Solves `a x = b` (row-major `n x n`) by Gaussian elimination with partial pivoting in
/// float64.
fn solve(a: &[Vec<f32>], b: &[f32]) -> Result<Vec<f32>, EngineError> {
    let n = b.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .zip(b)
        .map(|(row, &bi)| {
            let mut r: Vec<f64> = row[..n].iter().map(|&v| v as f64).collect();
            r.push(bi as f64);
            r
        })
        .collect();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))
            .expect("non-empty range");
        if m[pivot][col] == 0.0 || !m[pivot][col].is_finite() {
            return Err(EngineError::param(
                "uni_pc_order",
                n,
                "an order whose coefficient system is solvable for these steps (a lower order)",
            ));
        }
        m.swap(col, pivot);
        for row in col + 1..n {
            let f = m[row][col] / m[col][col];
            for c in col..=n {
                m[row][c] -= f * m[col][c];
            }
        }
    }
    let mut x = vec![0f64; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|c| m[row][c] * x[c]).sum();
        x[row] = (m[row][n] - s) / m[row][row];
    }
    Ok(x.into_iter().map(|v| v as f32).collect())
}

/// The data prediction `x0 = (x - sigma_t * eps) / alpha_t` at continuous time `t`.
fn data_prediction(
    eps_model: &mut EpsFn<'_>,
    ns: &VpSchedule,
    x: &Tensor,
    t: f32,
) -> Result<Tensor, EngineError> {
    let eps = eps_model(x, ns.model_time(t))?;
    let (alpha_t, sigma_t) = (ns.alpha(t), ns.std(t));
    divided(&(x - scaled(&eps, sigma_t)?)?, alpha_t)
}

/// One `multistep_uni_pc_bh_update` with data prediction: the predictor step to `t` from the
/// last `order` data predictions, then (with `use_corrector`) the corrector, which evaluates
/// the model at the predicted point. Returns the new `x` and that evaluation.
#[allow(clippy::too_many_arguments)]
fn bh_update(
    eps_model: &mut EpsFn<'_>,
    ns: &VpSchedule,
    variant: UniPcVariant,
    x: &Tensor,
    model_prev: &[Tensor],
    t_prev: &[f32],
    t: f32,
    order: usize,
    use_corrector: bool,
) -> Result<(Tensor, Option<Tensor>), EngineError> {
    let last = model_prev.len() - 1;
    let t_prev_0 = t_prev[last];
    let lambda_prev_0 = ns.lambda(t_prev_0);
    let lambda_t = ns.lambda(t);
    let model_prev_0 = &model_prev[last];
    let (sigma_prev_0, sigma_t) = (ns.std(t_prev_0), ns.std(t));
    let alpha_t = ns.log_mean_coeff(t).exp();
    let h = lambda_t - lambda_prev_0;

    let mut rks = Vec::with_capacity(order);
    let mut d1s = Vec::with_capacity(order);
    for i in 1..order {
        let lambda_prev_i = ns.lambda(t_prev[last - i]);
        let rk = (lambda_prev_i - lambda_prev_0) / h;
        rks.push(rk);
        d1s.push(divided(&(&model_prev[last - i] - model_prev_0)?, rk)?);
    }
    rks.push(1.0);

    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let b_h = match variant {
        UniPcVariant::Bh1 => hh,
        UniPcVariant::Bh2 => hh.exp_m1(),
    };
    let mut r = Vec::with_capacity(order);
    let mut b = Vec::with_capacity(order);
    let mut factorial: u64 = 1;
    for i in 1..=order {
        r.push(
            rks.iter()
                .map(|&rk| rk.powi(i as i32 - 1))
                .collect::<Vec<f32>>(),
        );
        b.push(h_phi_k * factorial as f32 / b_h);
        factorial *= i as u64 + 1;
        h_phi_k = h_phi_k / hh - 1.0 / factorial as f32;
    }

    let x_t_ = (scaled(x, sigma_t / sigma_prev_0)? - scaled(model_prev_0, alpha_t * h_phi_1)?)?;
    let x_t = if d1s.is_empty() {
        x_t_.clone()
    } else {
        let rhos_p = if order == 2 {
            vec![0.5]
        } else {
            let sub: Vec<Vec<f32>> = r[..order - 1]
                .iter()
                .map(|row| row[..order - 1].to_vec())
                .collect();
            solve(&sub, &b[..order - 1])?
        };
        let pred_res = weighted_sum(&rhos_p, &d1s)?.expect("predictor terms exist");
        (&x_t_ - scaled(&pred_res, alpha_t * b_h)?)?
    };
    if !use_corrector {
        return Ok((x_t, None));
    }
    let rhos_c = if order == 1 {
        vec![0.5]
    } else {
        solve(&r, &b)?
    };
    let model_t = data_prediction(eps_model, ns, &x_t, t)?;
    let d1_t = (&model_t - model_prev_0)?;
    let last_term = scaled(&d1_t, rhos_c[order - 1])?;
    let corr = match weighted_sum(&rhos_c[..order - 1], &d1s)? {
        Some(corr_res) => (corr_res + last_term)?,
        None => last_term,
    };
    let x_t = (&x_t_ - scaled(&corr, alpha_t * b_h)?)?;
    Ok((x_t, Some(model_t)))
}

/// UniPC's multistep `sample` (A1111's UniPC): `steps` solver steps from continuous time
/// `t_start` (1 for txt2img) to `1/N`, starting from `x` at that time (for txt2img the unit
/// noise itself, A1111's initial scale for timestep samplers is 1). `on_step` sees the
/// latents after each step and stops the run by returning `false`.
///
/// `steps` must be at least `options.order` (A1111 asserts "UniPC order must be < sampling
/// steps"); an error names `uni_pc_order` otherwise.
pub fn sample_unipc(
    eps_model: &mut EpsFn<'_>,
    x: Tensor,
    ns: &VpSchedule,
    steps: usize,
    t_start: Option<f32>,
    options: &UniPcOptions,
    on_step: &mut StepFn<'_>,
) -> Result<Tensor, EngineError> {
    let order = options.order;
    if order == 0 {
        return Err(EngineError::param("uni_pc_order", order, "at least 1"));
    }
    if steps < order {
        return Err(EngineError::param(
            "uni_pc_order",
            order,
            format!("at most the {steps} UniPC steps of this pass (A1111: order must be < sampling steps)"),
        ));
    }
    let t_0 = 1.0 / ns.total_n() as f32;
    let t_t = t_start.unwrap_or(1.0);
    let timesteps = time_steps(ns, options.skip_type, t_t, t_0, steps);

    let mut x = x;
    let mut model_prev = vec![data_prediction(eps_model, ns, &x, timesteps[0])?];
    let mut t_prev = vec![timesteps[0]];
    let mut done = 0usize;
    let mut report = |x: &Tensor, done: &mut usize| -> Result<(), EngineError> {
        *done += 1;
        if !on_step(StepInfo {
            step: *done,
            total: steps,
            latents: x,
        })? {
            return Err(EngineError::Cancelled);
        }
        Ok(())
    };

    // The first `order - 1` steps warm up with the orders 1, 2, ...
    for (init_order, &t) in timesteps.iter().enumerate().take(order).skip(1) {
        let (next, model_x) = bh_update(
            eps_model,
            ns,
            options.variant,
            &x,
            &model_prev,
            &t_prev,
            t,
            init_order,
            true,
        )?;
        x = next;
        report(&x, &mut done)?;
        model_prev.push(model_x.expect("the corrector evaluates the model"));
        t_prev.push(t);
    }
    for (step, &t) in timesteps.iter().enumerate().skip(order) {
        let step_order = if options.lower_order_final {
            order.min(steps + 1 - step)
        } else {
            order
        };
        // The corrector is skipped on the last step: its model value would not be used.
        let use_corrector = step != steps;
        let (next, model_x) = bh_update(
            eps_model,
            ns,
            options.variant,
            &x,
            &model_prev,
            &t_prev,
            t,
            step_order,
            use_corrector,
        )?;
        x = next;
        report(&x, &mut done)?;
        // The window keeps the last `order` times and predictions.
        model_prev.remove(0);
        t_prev.remove(0);
        t_prev.push(t);
        if step < steps {
            model_prev.push(match model_x {
                Some(m) => m,
                None => data_prediction(eps_model, ns, &x, t)?,
            });
        } else {
            // Never read again; keeps the lists the same length.
            model_prev.push(x.clone());
        }
    }
    Ok(x)
}
