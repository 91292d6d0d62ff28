//! AUTOMATIC1111's sampler and schedule-type names (v1.10.1 `sd_samplers_*.py`,
//! `sd_schedulers.py`), so a sweep is checked and canonicalised before any task is queued.

/// One sampler: its infotext name, the API aliases A1111 also accepts, and the schedule
/// type that "Automatic" stands for with it.
pub(crate) struct Sampler {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub default_scheduler: Option<&'static str>,
    /// Timestep (DDIM-family) samplers take their eta from `eta_ddim` (default 0); the
    /// k-diffusion ones from `eta_ancestral` (default 1).
    pub timestep_family: bool,
}

const fn k(
    name: &'static str,
    aliases: &'static [&'static str],
    default_scheduler: Option<&'static str>,
) -> Sampler {
    Sampler {
        name,
        aliases,
        default_scheduler,
        timestep_family: false,
    }
}

const fn t(name: &'static str, aliases: &'static [&'static str]) -> Sampler {
    Sampler {
        name,
        aliases,
        default_scheduler: None,
        timestep_family: true,
    }
}

/// In A1111's order: the first entry is what it falls back to for an unknown name.
pub(crate) const SAMPLERS: &[Sampler] = &[
    k("DPM++ 2M", &["k_dpmpp_2m"], Some("karras")),
    k("DPM++ SDE", &["k_dpmpp_sde"], Some("karras")),
    k("DPM++ 2M SDE", &["k_dpmpp_2m_sde"], Some("exponential")),
    k(
        "DPM++ 2M SDE Heun",
        &["k_dpmpp_2m_sde_heun"],
        Some("exponential"),
    ),
    k("DPM++ 2S a", &["k_dpmpp_2s_a"], Some("karras")),
    k("DPM++ 3M SDE", &["k_dpmpp_3m_sde"], Some("exponential")),
    k("Euler a", &["k_euler_a", "k_euler_ancestral"], None),
    k("Euler", &["k_euler"], None),
    k("LMS", &["k_lms"], None),
    k("Heun", &["k_heun"], None),
    k("DPM2", &["k_dpm_2"], Some("karras")),
    k("DPM2 a", &["k_dpm_2_a"], Some("karras")),
    k("DPM fast", &["k_dpm_fast"], None),
    k("DPM adaptive", &["k_dpm_ad"], None),
    k("Restart", &["restart"], Some("karras")),
    t("DDIM", &["ddim"]),
    t("DDIM CFG++", &["ddim_cfgpp"]),
    t("PLMS", &["plms"]),
    t("UniPC", &["unipc"]),
    k("LCM", &["k_lcm"], None),
];

/// `(name, label, aliases)`; the label is what infotext and the API use.
pub(crate) const SCHEDULERS: &[(&str, &str, &[&str])] = &[
    ("automatic", "Automatic", &[]),
    ("uniform", "Uniform", &[]),
    ("karras", "Karras", &[]),
    ("exponential", "Exponential", &[]),
    ("polyexponential", "Polyexponential", &[]),
    ("sgm_uniform", "SGM Uniform", &["SGMUniform"]),
    ("kl_optimal", "KL Optimal", &[]),
    ("align_your_steps", "Align Your Steps", &[]),
    ("simple", "Simple", &[]),
    ("normal", "Normal", &[]),
    ("ddim", "DDIM", &[]),
    ("beta", "Beta", &[]),
];

pub(crate) fn find_sampler(name: &str) -> Option<&'static Sampler> {
    SAMPLERS
        .iter()
        .find(|s| s.name == name || s.aliases.contains(&name))
}

/// Index into [`SCHEDULERS`] by name, label or alias, as A1111's `schedulers_map` does.
fn find_scheduler(name: &str) -> Option<usize> {
    SCHEDULERS
        .iter()
        .position(|(n, label, aliases)| *n == name || *label == name || aliases.contains(&name))
}

/// Why a sampler/scheduler pair was refused.
#[derive(Debug)]
pub(crate) enum Refused {
    Sampler,
    Scheduler,
}

/// Port of A1111's `get_sampler_and_scheduler(…, convert_automatic=True)`, which the txt2img
/// API applies: a legacy name such as "DPM++ 2M Karras" is split into sampler and schedule
/// type, and a schedule type equal to the sampler's own default becomes "Automatic".
/// Unlike A1111, an unknown name is refused instead of silently becoming "DPM++ 2M".
pub(crate) fn canonical(
    sampler: &str,
    scheduler: &str,
) -> Result<(&'static str, &'static str), Refused> {
    let mut found = Some(find_scheduler(scheduler).ok_or(Refused::Scheduler)?);
    let mut name = sampler;
    for (sname, label, aliases) in SCHEDULERS {
        for option in [*label, *sname].iter().chain(aliases.iter()) {
            if let Some(stripped) = name.strip_suffix(option).and_then(|s| s.strip_suffix(' ')) {
                found = find_scheduler(sname);
                name = stripped;
                break;
            }
        }
    }
    let sampler = find_sampler(name).ok_or(Refused::Sampler)?;
    let mut scheduler = found.expect("every SCHEDULERS entry finds itself");
    if sampler.default_scheduler == Some(SCHEDULERS[scheduler].0) {
        scheduler = 0;
    }
    Ok((sampler.name, SCHEDULERS[scheduler].1))
}

pub(crate) fn sampler_names() -> impl Iterator<Item = &'static str> {
    SAMPLERS.iter().map(|s| s.name)
}

pub(crate) fn scheduler_labels() -> impl Iterator<Item = &'static str> {
    SCHEDULERS.iter().map(|s| s.1)
}
