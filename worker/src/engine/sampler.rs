//! A1111's sampler set: names, aliases, preferred schedule types, name resolution, and the
//! entry point [`run_sampler`] that runs a named sampler over a sigma list.
//!
//! The sigma-based samplers are k-diffusion's algorithms ([`super::kdiffusion`]); DDIM is a
//! timestep sampler over an epsilon predictor ([`sample_ddim`]), and so is UniPC
//! ([`super::unipc`]). All of them see the model
//! only through closures, so they are testable with analytic models and no UNet.

use candle_core::Tensor;

use super::kdiffusion::{self, Algorithm, DenoiseFn, SdeSolver};
use super::schedule::DiscreteSchedule;
use super::scheduler::ScheduleType;
use super::EngineError;

/// A sampling algorithm, as named in A1111.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sampler {
    Dpmpp2m,
    DpmppSde,
    Dpmpp2mSde,
    Dpmpp2mSdeHeun,
    Dpmpp2sAncestral,
    Dpmpp3mSde,
    EulerAncestral,
    Euler,
    Lms,
    Heun,
    Dpm2,
    Dpm2Ancestral,
    /// A1111 1.10's DDIM (`sd_samplers_timesteps_impl.ddim`): timesteps
    /// `range(0, 1000, 1000 // n) + 1`, one model evaluation fewer than there are timesteps,
    /// ending at `alphas_cumprod[1]`.
    Ddim,
    /// A1111 1.10's UniPC (`sd_samplers_timesteps_impl.unipc`): the multistep UniPC solver in
    /// the VP time formulation; run with [`super::unipc::sample_unipc`].
    UniPc,
}

/// One row of A1111's sampler table (`sd_samplers_kdiffusion.samplers_k_diffusion` and
/// `sd_samplers_timesteps.samplers_timesteps`), v1.10.1.
pub struct SamplerInfo {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// The schedule type "Automatic" means for this sampler (`options["scheduler"]`).
    pub scheduler: Option<ScheduleType>,
    /// `discard_next_to_last_sigma`: one extra step is scheduled and its penultimate sigma
    /// dropped.
    pub discard_penultimate: bool,
    /// `None` for names sdfarm knows but does not render.
    pub sampler: Option<Sampler>,
}

const fn row(
    name: &'static str,
    aliases: &'static [&'static str],
    scheduler: Option<ScheduleType>,
    discard_penultimate: bool,
    sampler: Option<Sampler>,
) -> SamplerInfo {
    SamplerInfo {
        name,
        aliases,
        scheduler,
        discard_penultimate,
        sampler,
    }
}

use ScheduleType::{Exponential, Karras};

/// In A1111's order; the first entry is what A1111 falls back to for an unknown name.
pub const SAMPLERS: &[SamplerInfo] = &[
    row(
        "DPM++ 2M",
        &["k_dpmpp_2m"],
        Some(Karras),
        false,
        Some(Sampler::Dpmpp2m),
    ),
    row(
        "DPM++ SDE",
        &["k_dpmpp_sde"],
        Some(Karras),
        false,
        Some(Sampler::DpmppSde),
    ),
    row(
        "DPM++ 2M SDE",
        &["k_dpmpp_2m_sde"],
        Some(Exponential),
        false,
        Some(Sampler::Dpmpp2mSde),
    ),
    row(
        "DPM++ 2M SDE Heun",
        &["k_dpmpp_2m_sde_heun"],
        Some(Exponential),
        false,
        Some(Sampler::Dpmpp2mSdeHeun),
    ),
    row(
        "DPM++ 2S a",
        &["k_dpmpp_2s_a"],
        Some(Karras),
        false,
        Some(Sampler::Dpmpp2sAncestral),
    ),
    row(
        "DPM++ 3M SDE",
        &["k_dpmpp_3m_sde"],
        Some(Exponential),
        true,
        Some(Sampler::Dpmpp3mSde),
    ),
    row(
        "Euler a",
        &["k_euler_a", "k_euler_ancestral"],
        None,
        false,
        Some(Sampler::EulerAncestral),
    ),
    row("Euler", &["k_euler"], None, false, Some(Sampler::Euler)),
    row("LMS", &["k_lms"], None, false, Some(Sampler::Lms)),
    row("Heun", &["k_heun"], None, false, Some(Sampler::Heun)),
    row(
        "DPM2",
        &["k_dpm_2"],
        Some(Karras),
        true,
        Some(Sampler::Dpm2),
    ),
    row(
        "DPM2 a",
        &["k_dpm_2_a"],
        Some(Karras),
        true,
        Some(Sampler::Dpm2Ancestral),
    ),
    row("DPM fast", &["k_dpm_fast"], None, false, None),
    row("DPM adaptive", &["k_dpm_ad"], None, false, None),
    row("Restart", &["restart"], Some(Karras), false, None),
    row("DDIM", &["ddim"], None, false, Some(Sampler::Ddim)),
    row("DDIM CFG++", &["ddim_cfgpp"], None, false, None),
    row("PLMS", &["plms"], None, false, None),
    row("UniPC", &["unipc"], None, false, Some(Sampler::UniPc)),
    row("LCM", &["k_lcm"], None, false, None),
];

/// Sampler names sdfarm renders, in A1111 spelling.
pub const SAMPLER_NAMES: &[&str] = &[
    "DPM++ 2M",
    "DPM++ SDE",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun",
    "DPM++ 2S a",
    "DPM++ 3M SDE",
    "Euler a",
    "Euler",
    "LMS",
    "Heun",
    "DPM2",
    "DPM2 a",
    "DDIM",
    "UniPC",
];

/// A1111's `sd_samplers.get_sampler_and_scheduler`, exactly: strips a trailing schedule-type
/// label, name or alias from a legacy sampler name ("DPM++ 2M Karras"), falls back to
/// "DPM++ 2M" for unknown sampler names and to "Automatic" for unknown schedule types, and with
/// `convert_automatic` reports a sampler's own preferred schedule type as "Automatic".
/// Returns `(sampler name, schedule type label)`. Aliases are not accepted here, as upstream.
pub fn a1111_sampler_and_scheduler(
    sampler_name: &str,
    scheduler_name: Option<&str>,
    convert_automatic: bool,
) -> (&'static str, &'static str) {
    let mut found = scheduler_name
        .and_then(ScheduleType::from_name_or_label)
        .unwrap_or(ScheduleType::Automatic);
    let mut name = if sampler_name.is_empty() {
        SAMPLERS[0].name
    } else {
        sampler_name
    };
    for &schedule in ScheduleType::ALL {
        for option in schedule.name_options() {
            if let Some(stripped) = name.strip_suffix(option).and_then(|n| n.strip_suffix(' ')) {
                found = schedule;
                name = stripped;
                break;
            }
        }
    }
    let info = SAMPLERS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or(&SAMPLERS[0]);
    if convert_automatic && info.scheduler == Some(found) {
        found = ScheduleType::Automatic;
    }
    (info.name, found.label())
}

impl Sampler {
    /// Resolves a sampler name from a render request: an A1111 name or alias, or a legacy
    /// name with the schedule type appended ("DPM++ 2M Karras"), which also yields that
    /// schedule type. Unlike A1111, unknown names are an error rather than "DPM++ 2M".
    pub fn resolve(name: &str) -> Result<(Self, Option<ScheduleType>), EngineError> {
        let name = name.trim();
        let known = |n: &str| {
            SAMPLERS
                .iter()
                .find(|s| s.name == n || s.aliases.contains(&n))
        };
        let (info, schedule) = match known(name) {
            Some(info) => (info, None),
            None => {
                let legacy = ScheduleType::ALL.iter().find_map(|&schedule| {
                    schedule.name_options().into_iter().find_map(|option| {
                        let base = name.strip_suffix(option)?.strip_suffix(' ')?;
                        Some((known(base)?, Some(schedule)))
                    })
                });
                legacy.ok_or_else(|| {
                    EngineError::param(
                        "sampler_name",
                        format!("{name:?}"),
                        format!("one of {}", SAMPLER_NAMES.join(", ")),
                    )
                })?
            }
        };
        let sampler = info.sampler.ok_or_else(|| EngineError::Unsupported {
            what: format!("sampler {:?}", info.name),
            hint: format!("samplers that render: {}", SAMPLER_NAMES.join(", ")),
        })?;
        Ok((sampler, schedule))
    }

    /// Parses a sampler name (see [`Sampler::resolve`]), ignoring any schedule type suffix.
    pub fn from_name(name: &str) -> Result<Self, EngineError> {
        Ok(Self::resolve(name)?.0)
    }

    /// This sampler's row of the A1111 table.
    pub fn info(self) -> &'static SamplerInfo {
        SAMPLERS
            .iter()
            .find(|s| s.sampler == Some(self))
            .expect("every sampler has a table row")
    }

    /// The A1111 display name.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The k-diffusion algorithm behind a sigma-based sampler; `None` for DDIM and UniPC.
    pub fn algorithm(self) -> Option<Algorithm> {
        Some(match self {
            Sampler::Dpmpp2m => Algorithm::Dpmpp2m,
            Sampler::DpmppSde => Algorithm::DpmppSde,
            Sampler::Dpmpp2mSde | Sampler::Dpmpp2mSdeHeun => Algorithm::Dpmpp2mSde,
            Sampler::Dpmpp2sAncestral => Algorithm::Dpmpp2sAncestral,
            Sampler::Dpmpp3mSde => Algorithm::Dpmpp3mSde,
            Sampler::EulerAncestral => Algorithm::EulerAncestral,
            Sampler::Euler => Algorithm::Euler,
            Sampler::Lms => Algorithm::Lms,
            Sampler::Heun => Algorithm::Heun,
            Sampler::Dpm2 => Algorithm::Dpm2,
            Sampler::Dpm2Ancestral => Algorithm::Dpm2Ancestral,
            Sampler::Ddim | Sampler::UniPc => return None,
        })
    }

    /// A1111's `brownian_noise` option: the sampler's noise comes from k-diffusion's
    /// `BrownianTreeNoiseSampler`, one tree per image seeded with the image's seed
    /// ([`super::brownian`]), instead of the image's generator.
    pub fn brownian_noise(self) -> bool {
        matches!(
            self,
            Sampler::DpmppSde | Sampler::Dpmpp2mSde | Sampler::Dpmpp2mSdeHeun | Sampler::Dpmpp3mSde
        )
    }

    /// A1111's `second_order` option: two model calls per step, so prompt-editing schedules
    /// are laid out over twice the steps.
    pub fn second_order(self) -> bool {
        matches!(
            self,
            Sampler::DpmppSde
                | Sampler::Dpmpp2sAncestral
                | Sampler::Heun
                | Sampler::Dpm2
                | Sampler::Dpm2Ancestral
        )
    }

    /// Whether the k-diffusion function takes `eta` (A1111 passes `eta_ancestral`, default 1,
    /// only to those).
    pub fn takes_eta(self) -> bool {
        matches!(
            self,
            Sampler::EulerAncestral
                | Sampler::Dpm2Ancestral
                | Sampler::Dpmpp2sAncestral
                | Sampler::DpmppSde
                | Sampler::Dpmpp2mSde
                | Sampler::Dpmpp2mSdeHeun
                | Sampler::Dpmpp3mSde
                | Sampler::Ddim
        )
    }

    /// The eta A1111 uses when the request leaves it at 0 ("not set"): k-diffusion samplers
    /// that take eta default to 1 (`eta_ancestral`), DDIM to 0 (`eta_ddim`).
    pub fn effective_eta(self, requested: f32) -> f32 {
        match self {
            Sampler::Ddim => requested,
            s if s.takes_eta() && requested == 0.0 => 1.0,
            _ => requested,
        }
    }
}

/// Sampler knobs beyond the sigmas, with A1111's "0 means default" already resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerOptions {
    pub eta: f32,
    pub s_churn: f32,
    pub s_tmin: f32,
    /// `f32::INFINITY` when not set.
    pub s_tmax: f32,
    pub s_noise: f32,
}

impl SamplerOptions {
    /// The defaults A1111 gives `sampler` (eta 1 for k-diffusion samplers taking eta, 0 for
    /// DDIM; no churn; noise scale 1).
    pub fn defaults_for(sampler: Sampler) -> Self {
        Self::from_request(sampler, 0.0, 0.0, 0.0, 0.0, 0.0)
    }

    /// Resolves the request's values, where 0 means "A1111's default" for each.
    pub fn from_request(
        sampler: Sampler,
        eta: f32,
        s_churn: f32,
        s_tmin: f32,
        s_tmax: f32,
        s_noise: f32,
    ) -> Self {
        SamplerOptions {
            eta: sampler.effective_eta(eta),
            s_churn,
            s_tmin,
            s_tmax: if s_tmax == 0.0 { f32::INFINITY } else { s_tmax },
            s_noise: if s_noise == 0.0 { 1.0 } else { s_noise },
        }
    }

    /// The k-diffusion keyword arguments for `sampler` with these options.
    pub(crate) fn kdiffusion(&self, sampler: Sampler) -> kdiffusion::Options {
        kdiffusion::Options {
            eta: self.eta,
            s_churn: self.s_churn,
            s_tmin: self.s_tmin,
            s_tmax: self.s_tmax,
            s_noise: self.s_noise,
            sde_solver: if sampler == Sampler::Dpmpp2mSdeHeun {
                SdeSolver::Heun
            } else {
                SdeSolver::Midpoint
            },
            ..kdiffusion::Options::default()
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

/// The next standard-normal draw shaped like the latents (ancestral, SDE, churn and eta
/// noise), from the image's own generator.
pub type NoiseFn<'a> = dyn FnMut() -> Result<Tensor, EngineError> + 'a;
/// Called after every step; returning `false` cancels the run.
pub type StepFn<'a> = dyn FnMut(StepInfo<'_>) -> Result<bool, EngineError> + 'a;

/// Runs the sampler named `name` (A1111 name, alias or legacy "name + schedule type") from
/// `x`, already at noise level `sigmas[0]`, down the given sigmas, with a caller-supplied
/// denoiser `D(x, sigma)` and noise source. `options` defaults to
/// [`SamplerOptions::defaults_for`]. DDIM is a timestep sampler and is refused here; run it
/// with [`sample_ddim`]; and UniPC, which works in VP time, with
/// [`super::unipc::sample_unipc`].
pub fn run_sampler(
    name: &str,
    denoise: &mut DenoiseFn<'_>,
    x: Tensor,
    sigmas: &[f32],
    options: Option<SamplerOptions>,
    noise: &mut NoiseFn<'_>,
    on_step: &mut StepFn<'_>,
) -> Result<Tensor, EngineError> {
    let (sampler, _) = Sampler::resolve(name)?;
    let algorithm = sampler.algorithm().ok_or_else(|| {
        EngineError::param(
            "sampler_name",
            format!("{name:?}"),
            "a sigma-based sampler (DDIM and UniPC run over timesteps: use sample_ddim or \
             unipc::sample_unipc)",
        )
    })?;
    let options = options.unwrap_or_else(|| SamplerOptions::defaults_for(sampler));
    kdiffusion::sample(
        algorithm,
        denoise,
        x,
        sigmas,
        &options.kdiffusion(sampler),
        noise,
        on_step,
    )
}

/// Which DDIM loop to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdimVariant {
    /// LDM's `DDIMSampler` / diffusers' `DDIMScheduler`: one evaluation per timestep, the last
    /// step going to `alphas_cumprod[0]`.
    Diffusers,
    /// A1111 1.10's `sd_samplers_timesteps_impl.ddim`: the lowest timestep is never evaluated;
    /// the last step goes to `alphas_cumprod[timesteps[0]]`.
    A1111,
}

/// DDIM from timestep `timesteps.last()` downwards:
///
/// `x0 = (x - sqrt(1 - a_t) * eps) / sqrt(a_t)`,
/// `x' = sqrt(a_prev) * x0 + sqrt(1 - a_prev - sigma_t^2) * eps + sigma_t * noise`.
///
/// `eps_model(x, t)` returns the guided noise prediction at integer timestep `t`; `x` enters
/// as unit-variance noise (DDIM's initial sigma is 1).
#[allow(clippy::too_many_arguments)]
pub fn sample_ddim(
    eps_model: &mut dyn FnMut(&Tensor, usize) -> Result<Tensor, EngineError>,
    mut x: Tensor,
    schedule: &DiscreteSchedule,
    timesteps: &[usize],
    variant: DdimVariant,
    eta: f32,
    noise: &mut NoiseFn<'_>,
    on_step: &mut StepFn<'_>,
) -> Result<Tensor, EngineError> {
    let ac = schedule.alphas_cumprod();
    let lowest = match variant {
        DdimVariant::Diffusers => 0,
        DdimVariant::A1111 => 1,
    };
    let total = timesteps.len().saturating_sub(lowest);
    for (i, index) in (lowest..timesteps.len()).rev().enumerate() {
        let t = timesteps[index];
        let a_t = ac[t];
        // The previous alpha is read as float64 (LDM and A1111 cast that buffer up), the rest
        // in f32.
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
        let pred_x0 = divided(
            &(&x - eps.affine(sqrt_one_minus_at as f64, 0.0)?)?,
            a_t.sqrt(),
        )?;
        let dir_xt = eps.affine((1.0 - a_prev - sigma_t * sigma_t).sqrt() as f64, 0.0)?;
        x = (pred_x0.affine(a_prev.sqrt() as f64, 0.0)? + dir_xt)?;
        if sigma_t > 0.0 {
            x = (&x + noise()?.affine(sigma_t as f64, 0.0)?)?;
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

/// Exact element-wise division by a scalar.
fn divided(x: &Tensor, divisor: f32) -> Result<Tensor, EngineError> {
    let d = Tensor::new(&[divisor], x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_div(&d)?)
}

/// A1111's DDIM timesteps, ascending: `clip(range(0, T, T // n) + 1, 0, T - 1)`. When `n`
/// does not divide `T` this has more than `n` entries (7 steps give 8 timesteps), and the
/// sampler evaluates all but the first.
pub fn a1111_ddim_timesteps(schedule_len: usize, steps: usize) -> Vec<usize> {
    let stride = (schedule_len / steps.max(1)).max(1);
    (0..schedule_len)
        .step_by(stride)
        .map(|t| (t + 1).min(schedule_len - 1))
        .collect()
}
