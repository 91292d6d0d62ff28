//! A1111's schedule types (`sd_schedulers.py`): how a sampler's sigmas are laid out over the
//! steps, and [`sampler_sigmas`], which turns (sampler, schedule type, steps) into the sigma
//! list A1111's `KDiffusionSampler.get_sigmas` gives.
//!
//! The formulas are k-diffusion's `get_sigmas_*`, evaluated in float32 like the torch tensors
//! they come from (with float64 host scalars where the reference uses Python floats).

use super::sampler::Sampler;
use super::schedule::{linspace_f32, DiscreteSchedule};
use super::EngineError;

/// An A1111 schedule type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScheduleType {
    Automatic,
    Uniform,
    Karras,
    Exponential,
    Polyexponential,
    SgmUniform,
    KlOptimal,
    AlignYourSteps,
    Simple,
    Normal,
    Ddim,
    Beta,
}

/// Optional overrides ("Schedule min sigma", "Schedule max sigma", "Schedule rho"); 0 means
/// "not set", as in A1111's settings.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ScheduleOverrides {
    pub sigma_min: f32,
    pub sigma_max: f32,
    pub rho: f32,
}

impl ScheduleType {
    /// In A1111's order (which matters for legacy-name suffix matching).
    pub const ALL: &'static [ScheduleType] = &[
        ScheduleType::Automatic,
        ScheduleType::Uniform,
        ScheduleType::Karras,
        ScheduleType::Exponential,
        ScheduleType::Polyexponential,
        ScheduleType::SgmUniform,
        ScheduleType::KlOptimal,
        ScheduleType::AlignYourSteps,
        ScheduleType::Simple,
        ScheduleType::Normal,
        ScheduleType::Ddim,
        ScheduleType::Beta,
    ];

    /// Schedule types sdfarm renders.
    pub const RENDERED: &'static [ScheduleType] = &[
        ScheduleType::Automatic,
        ScheduleType::Uniform,
        ScheduleType::Karras,
        ScheduleType::Exponential,
        ScheduleType::Polyexponential,
        ScheduleType::SgmUniform,
    ];

    /// A1111's internal name (`karras`).
    pub fn name(self) -> &'static str {
        match self {
            ScheduleType::Automatic => "automatic",
            ScheduleType::Uniform => "uniform",
            ScheduleType::Karras => "karras",
            ScheduleType::Exponential => "exponential",
            ScheduleType::Polyexponential => "polyexponential",
            ScheduleType::SgmUniform => "sgm_uniform",
            ScheduleType::KlOptimal => "kl_optimal",
            ScheduleType::AlignYourSteps => "align_your_steps",
            ScheduleType::Simple => "simple",
            ScheduleType::Normal => "normal",
            ScheduleType::Ddim => "ddim",
            ScheduleType::Beta => "beta",
        }
    }

    /// The label infotexts and the API use (`Karras`).
    pub fn label(self) -> &'static str {
        match self {
            ScheduleType::Automatic => "Automatic",
            ScheduleType::Uniform => "Uniform",
            ScheduleType::Karras => "Karras",
            ScheduleType::Exponential => "Exponential",
            ScheduleType::Polyexponential => "Polyexponential",
            ScheduleType::SgmUniform => "SGM Uniform",
            ScheduleType::KlOptimal => "KL Optimal",
            ScheduleType::AlignYourSteps => "Align Your Steps",
            ScheduleType::Simple => "Simple",
            ScheduleType::Normal => "Normal",
            ScheduleType::Ddim => "DDIM",
            ScheduleType::Beta => "Beta",
        }
    }

    fn aliases(self) -> &'static [&'static str] {
        match self {
            ScheduleType::SgmUniform => &["SGMUniform"],
            _ => &[],
        }
    }

    /// `[label, name, aliases...]`, the order A1111 tries suffixes of legacy sampler names in.
    pub fn name_options(self) -> Vec<&'static str> {
        let mut v = vec![self.label(), self.name()];
        v.extend_from_slice(self.aliases());
        v
    }

    /// A1111's `schedulers_map` lookup: a name or a label (not an alias).
    pub fn from_name_or_label(s: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.name() == s || t.label() == s)
    }

    /// Parses `RenderParams.scheduler`: label, name or alias; empty means Automatic.
    pub fn from_request(s: &str) -> Result<Self, EngineError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(ScheduleType::Automatic);
        }
        let found = Self::ALL
            .iter()
            .copied()
            .find(|t| t.name_options().contains(&s))
            .ok_or_else(|| {
                EngineError::param(
                    "scheduler",
                    format!("{s:?}"),
                    format!("one of {}", Self::rendered_labels()),
                )
            })?;
        if !Self::RENDERED.contains(&found) {
            return Err(EngineError::Unsupported {
                what: format!("schedule type {:?}", found.label()),
                hint: format!("schedule types that render: {}", Self::rendered_labels()),
            });
        }
        Ok(found)
    }

    fn rendered_labels() -> String {
        Self::RENDERED
            .iter()
            .map(|t| t.label())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The `rho` a schedule type uses when none is set; `None` if it takes no rho.
    pub fn default_rho(self) -> Option<f32> {
        match self {
            ScheduleType::Karras => Some(7.0),
            ScheduleType::Polyexponential => Some(1.0),
            _ => None,
        }
    }
}

fn append_zero(mut sigmas: Vec<f32>) -> Vec<f32> {
    sigmas.push(0.0);
    sigmas
}

/// k-diffusion `get_sigmas_karras(n, sigma_min, sigma_max, rho)`, trailing zero included.
pub fn karras(n: usize, sigma_min: f32, sigma_max: f32, rho: f32) -> Vec<f32> {
    let inv = 1.0 / rho as f64;
    let min_inv_rho = (sigma_min as f64).powf(inv) as f32;
    let max_inv_rho = (sigma_max as f64).powf(inv) as f32;
    append_zero(
        linspace_f32(0.0, 1.0, n)
            .into_iter()
            .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
            .collect(),
    )
}

/// k-diffusion `get_sigmas_exponential`: log-sigmas evenly spaced.
pub fn exponential(n: usize, sigma_min: f32, sigma_max: f32) -> Vec<f32> {
    let (hi, lo) = (
        (sigma_max as f64).ln() as f32,
        (sigma_min as f64).ln() as f32,
    );
    append_zero(linspace_f32(hi, lo, n).into_iter().map(f32::exp).collect())
}

/// k-diffusion `get_sigmas_polyexponential`: `exp(ramp^rho * (ln max - ln min) + ln min)`.
pub fn polyexponential(n: usize, sigma_min: f32, sigma_max: f32, rho: f32) -> Vec<f32> {
    let (ln_max, ln_min) = ((sigma_max as f64).ln(), (sigma_min as f64).ln());
    let span = (ln_max - ln_min) as f32;
    append_zero(
        linspace_f32(1.0, 0.0, n)
            .into_iter()
            .map(|ramp| (ramp.powf(rho) * span + ln_min as f32).exp())
            .collect(),
    )
}

/// A1111's `sgm_uniform`: timesteps evenly spaced from `t(sigma_max)` to `t(sigma_min)` with
/// the endpoint left out, mapped back to sigmas, then a trailing zero.
pub fn sgm_uniform(n: usize, sigma_min: f32, sigma_max: f32, model: &DiscreteSchedule) -> Vec<f32> {
    let start = model.sigma_to_t(sigma_max);
    let end = model.sigma_to_t(sigma_min);
    let mut ts = linspace_f32(start, end, n + 1);
    ts.pop();
    append_zero(ts.into_iter().map(|t| model.t_to_sigma(t)).collect())
}

/// The sigmas A1111 samples `sampler` with for `steps` steps: "Automatic" becomes the
/// sampler's preferred type (or the model's own `get_sigmas` when it has none), overrides
/// apply as in `KDiffusionSampler.get_sigmas`, and samplers that discard the penultimate sigma
/// get one step more with that sigma dropped.
pub fn sampler_sigmas(
    sampler: Sampler,
    schedule_type: ScheduleType,
    steps: usize,
    model: &DiscreteSchedule,
    overrides: &ScheduleOverrides,
) -> Result<Vec<f32>, EngineError> {
    let info = sampler.info();
    let n = steps + usize::from(info.discard_penultimate);
    let schedule_type = match schedule_type {
        ScheduleType::Automatic => info.scheduler.unwrap_or(ScheduleType::Automatic),
        other => other,
    };
    let (m_min, m_max) = (model.sigma_min(), model.sigma_max());
    let sigma_min = if overrides.sigma_min != 0.0 {
        overrides.sigma_min
    } else {
        m_min
    };
    let sigma_max = if overrides.sigma_max != 0.0 {
        overrides.sigma_max
    } else {
        m_max
    };
    for (field, v) in [("sigma_min", sigma_min), ("sigma_max", sigma_max)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(EngineError::param(
                field,
                v,
                "a positive number (0 = the model's)",
            ));
        }
    }
    let rho = match schedule_type.default_rho() {
        Some(_) if overrides.rho != 0.0 => overrides.rho,
        Some(default) => default,
        None => 0.0,
    };
    if schedule_type.default_rho().is_some() && !(rho.is_finite() && rho > 0.0) {
        return Err(EngineError::param(
            "rho",
            rho,
            "a positive number (0 = default)",
        ));
    }
    let mut sigmas = match schedule_type {
        ScheduleType::Automatic | ScheduleType::Uniform => model.automatic_sigmas(n),
        ScheduleType::Karras => karras(n, sigma_min, sigma_max, rho),
        ScheduleType::Exponential => exponential(n, sigma_min, sigma_max),
        ScheduleType::Polyexponential => polyexponential(n, sigma_min, sigma_max, rho),
        ScheduleType::SgmUniform => sgm_uniform(n, sigma_min, sigma_max, model),
        other => {
            return Err(EngineError::Unsupported {
                what: format!("schedule type {:?}", other.label()),
                hint: format!(
                    "schedule types that render: {}",
                    ScheduleType::rendered_labels()
                ),
            })
        }
    };
    if info.discard_penultimate && sigmas.len() >= 3 {
        let last = sigmas.pop().expect("non-empty");
        sigmas.pop();
        sigmas.push(last);
    }
    Ok(sigmas)
}
