//! Sweep files (TOML or JSON) parsed into a validated `SweepSpec`; errors name the key and line.
//!
//! Top-level keys are AUTOMATIC1111 txt2img API names, so a sweep reads like an A1111 request.
//! Defaults follow the A1111 API where it has one, with two choices of our own: `sampler_name`
//! defaults to "Euler" and `rng` to "CPU" (A1111's "GPU" noise cannot be reproduced off CUDA).
//! `[xyz]` holds an A1111 X/Y/Z plot and `[prompt_matrix]` a Prompt matrix; a sweep has at
//! most one of them, as A1111 runs one script at a time.

pub mod axes;
mod error;
mod read;
mod samplers;
mod source;
mod suggest;
pub mod tables;
#[cfg(test)]
mod tests;
pub mod values;
pub mod wildcards;

use std::ops::RangeInclusive;
use std::path::Path;

use sdfarm_proto::RenderParams;

pub use error::{Result, SpecError, SpecErrorDetails, SpecErrorKind};
use read::{
    boolean, float_in, int_in, seed, seed_resize_pair, seed_resize_side, side, string, wrong_type,
};
use source::{Entry, Raw};
use suggest::{nearest, suggest};
pub use tables::{Axis, PromptMatrixSpec, PromptType, XyzSpec};
pub use wildcards::{WildcardMode, WildcardsSpec};

/// Longest side, and the granularity A1111's latent space (1/8 of the image) imposes.
pub const SIDE_RANGE: RangeInclusive<u32> = 8..=4096;
pub const SIDE_MULTIPLE: u32 = 8;
/// Pixels rendered at once (`width * height * batch_size`): 64 images of 512x512 or one of
/// 4096x4096. Beyond this a worker runs out of memory long before it produces anything.
pub const MAX_BATCH_PIXELS: u64 = 4096 * 4096;
pub const STEPS_RANGE: RangeInclusive<i64> = 1..=1000;
pub const BATCH_SIZE_RANGE: RangeInclusive<i64> = 1..=64;
pub const N_ITER_RANGE: RangeInclusive<i64> = 1..=1_000_000;
/// A1111's Clip skip slider range.
pub const CLIP_SKIP_RANGE: RangeInclusive<i64> = 1..=12;
pub const MAX_ATTEMPTS_RANGE: RangeInclusive<i64> = 1..=100;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const BUILTIN_MODELS: &[&str] = &["builtin:tiny-sd"];
const MODEL_ACCEPTED: &str =
    "a single-file .safetensors checkpoint, a diffusers folder, a checkpoint name, \
     hf:org/repo[/file], an s3:// or https://…#sha256:… URL, or \"builtin:tiny-sd\"";

/// Keys a sweep may set, in the order they are listed in error messages.
#[rustfmt::skip]
pub const KNOWN_KEYS: &[&str] = &[
    "prompt", "negative_prompt", "seed", "steps", "sampler_name", "scheduler", "cfg_scale",
    "width", "height", "batch_size", "n_iter", "model", "rng", "subseed", "subseed_strength",
    "clip_skip", "eta", "name", "priority", "max_attempts", "pool", "sd_vae",
    "enable_hr", "hr_scale", "hr_resize_x", "hr_resize_y", "hr_upscaler",
    "hr_second_pass_steps", "denoising_strength", "hr_sampler_name", "hr_scheduler",
    "hr_prompt", "hr_negative_prompt", "init_image", "seed_resize_from_w", "seed_resize_from_h",
    "xyz", "prompt_matrix", "wildcards", "dataset",
];

/// A1111's hires upscalers sdfarm implements: the latent modes and the Lanczos pixel resize.
#[rustfmt::skip]
pub const HR_UPSCALERS: &[&str] = &[
    "Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
    "Latent (nearest)", "Latent (nearest-exact)", "Lanczos", "None",
];
/// Denoising strength when the sweep sets none: A1111's UI defaults for the hires fix and
/// for img2img.
const HR_DENOISING_DEFAULT: f32 = 0.7;
const IMG2IMG_DENOISING_DEFAULT: f32 = 0.75;

/// A1111 API fields sdfarm does not implement; named so the error says so instead of
/// calling them unknown.
#[rustfmt::skip]
const A1111_UNSUPPORTED: &[&str] = &[
    "hr_checkpoint_name", "firstphase_width", "firstphase_height",
    "restore_faces", "tiling", "styles", "override_settings",
    "override_settings_restore_afterwards",
    "refiner_checkpoint", "refiner_switch_at", "s_churn", "s_tmax", "s_tmin", "s_noise",
    "s_min_uncond", "script_name", "script_args", "alwayson_scripts", "do_not_save_samples",
    "do_not_save_grid", "send_images", "save_images", "infotext", "force_task_id", "comments",
    "disable_extra_networks",
];

/// Names people reach for that are not the A1111 API's.
#[rustfmt::skip]
const ALIASES: &[(&str, &str)] = &[
    ("sampler", "sampler_name"), ("sampler_index", "sampler_name"), ("cfg", "cfg_scale"),
    ("guidance_scale", "cfg_scale"), ("checkpoint", "model"), ("sd_model_checkpoint", "model"),
    ("negative", "negative_prompt"), ("batch_count", "n_iter"),
    ("num_inference_steps", "steps"), ("schedule_type", "scheduler"),
    ("variation_seed", "subseed"), ("init_images", "init_image"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepFormat {
    Toml,
    Json,
}

impl SweepFormat {
    /// `.json` is JSON; anything else is read as TOML, the documented format.
    pub fn from_path(p: &Path) -> SweepFormat {
        match p.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => SweepFormat::Json,
            _ => SweepFormat::Toml,
        }
    }

    pub fn parse(s: &str) -> Option<SweepFormat> {
        match s.to_ascii_lowercase().as_str() {
            "toml" => Some(SweepFormat::Toml),
            "json" => Some(SweepFormat::Json),
            _ => None,
        }
    }
}

/// A validated sweep: one set of parameters rendered `n_iter` batches of `batch_size`.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSpec {
    pub name: Option<String>,
    /// `seed` and `subseed` may still be -1 (random) here; see [`SweepSpec::resolved`].
    /// Sampler and schedule type are canonical A1111 names; `eta` is concrete (A1111's
    /// default for the sampler's family when the file left it out).
    pub base: RenderParams,
    pub batch_size: u32,
    pub n_iter: u32,
    pub priority: i32,
    pub max_attempts: u32,
    /// Whether the file set `eta`; if not, a Sampler axis changes it to the new sampler's
    /// family default, as A1111 does.
    pub eta_explicit: bool,
    pub xyz: Option<XyzSpec>,
    pub prompt_matrix: Option<PromptMatrixSpec>,
    /// Worker pool to render on; `None` means the coordinator's default pool.
    pub pool: Option<String>,
    /// `[wildcards]`: dynamic prompts, each wildcard cell expanded as the rest of the sweep
    /// says (see `expand`).
    pub wildcards: Option<WildcardsSpec>,
    /// `dataset = "name"`: a resumable run whose job is found again by name, so submitting
    /// the same file twice renders only what is missing (see `crate::dataset`).
    pub dataset: Option<String>,
}

/// What a pool name may be: it names Kubernetes objects and a URL path segment.
pub const POOL_NAME_RULE: &str =
    "1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit";

pub fn is_pool_name(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&b.len())
        && b.iter().all(|c| inner(c) || *c == b'-')
        && inner(&b[0])
        && inner(&b[b.len() - 1])
}

impl SweepSpec {
    /// A copy with random seeds (-1) drawn, as A1111's `fix_seed` does once per run. Store this
    /// copy, so a retried or re-planned job renders the same images.
    ///
    /// Seed and Var. seed axis values of -1 are drawn here too, as `fix_axis_seeds` does;
    /// with "Keep -1 for seeds" neither happens and each cell draws its own.
    pub fn resolved(&self) -> SweepSpec {
        let mut spec = self.clone();
        let keep = spec.xyz.as_ref().is_some_and(|x| x.keep_random_seeds);
        // A dataset's random seed is a function of its name, so a re-submitted spec finds
        // the cells (and wildcard draws) it made before.
        if let Some(name) = &spec.dataset {
            if spec.base.seed == -1 {
                spec.base.seed = crate::dataset::name_seed(name, "seed");
            }
            if spec.base.subseed == -1 {
                spec.base.subseed = crate::dataset::name_seed(name, "subseed");
            }
        }
        if !keep {
            spec.base.seed = crate::expand::resolve_seed(spec.base.seed);
            spec.base.subseed = crate::expand::resolve_seed(spec.base.subseed);
        }
        if let Some(xyz) = spec.xyz.as_mut().filter(|x| !x.keep_random_seeds) {
            for axis in &mut xyz.axes {
                if matches!(axis.def.field, axes::Field::Seed | axes::Field::Subseed) {
                    for v in &mut axis.values {
                        if let axes::AxisValue::Int(s) = v {
                            *s = crate::expand::resolve_seed(*s);
                        }
                    }
                }
            }
        }
        spec
    }
}

/// A1111's eta default for a sampler: `eta_ddim` (0) for the timestep family, otherwise
/// `eta_ancestral` (1).
pub fn default_eta(sampler: &str) -> f32 {
    match samplers::find_sampler(sampler) {
        Some(s) if s.timestep_family => 0.0,
        _ => 1.0,
    }
}

/// Reads a sweep file, choosing the format from its extension and naming it in errors.
pub fn parse_sweep_file(path: &Path) -> Result<SweepSpec> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        SpecError::new(SpecErrorKind::Syntax, format!("cannot be read: {e}")).in_file(&name)
    })?;
    parse_sweep(&text, SweepFormat::from_path(path)).map_err(|e| e.in_file(name))
}

pub fn parse_sweep(text: &str, format: SweepFormat) -> Result<SweepSpec> {
    let mut entries = match format {
        SweepFormat::Toml => source::toml_entries(text)?,
        SweepFormat::Json => source::json_entries(text)?,
    };
    // Both parsers hand keys back sorted by name; report the first mistake in reading order.
    entries.sort_by_key(|e| e.offset);
    entries.retain(|e| !matches!(e.value, Raw::Null));
    build(&entries)
}

/// Hires-fix and img2img settings after every key is read: A1111's defaults for what was
/// left out, and the combinations A1111 refuses.
fn hires_fields<'a>(
    p: &mut RenderParams,
    denoising: Option<f32>,
    find: &dyn Fn(&str) -> Option<&'a Entry>,
) -> Result<()> {
    let img2img = !p.init_image.is_empty();
    if p.enable_hr && img2img {
        let e = find("enable_hr").expect("enable_hr was set");
        return Err(SpecError::at(
            SpecErrorKind::InvalidValue,
            e,
            "cannot be combined with init_image (the hires fix is a txt2img option)",
            "false, or no init_image",
        ));
    }
    if p.enable_hr {
        if p.hr_scale == 0.0 {
            p.hr_scale = 2.0;
        }
        if p.hr_upscaler.is_empty() {
            p.hr_upscaler = "Latent".into();
        }
    }
    let strength = denoising.unwrap_or(if img2img {
        IMG2IMG_DENOISING_DEFAULT
    } else if p.enable_hr {
        HR_DENOISING_DEFAULT
    } else {
        0.0
    });
    if (img2img || p.enable_hr) && strength == 0.0 {
        let e = find("denoising_strength").expect("0 was written");
        return Err(SpecError::at(
            SpecErrorKind::InvalidValue,
            e,
            "leaves the image as it is; sdfarm needs some denoising",
            "a number above 0 and at most 1",
        ));
    }
    p.denoising_strength = strength;
    // A1111's "Use same …" choices are sdfarm's empty values.
    if p.hr_sampler_name == "Use same sampler" {
        p.hr_sampler_name.clear();
    }
    if p.hr_scheduler == "Use same scheduler" {
        p.hr_scheduler.clear();
    }
    if !p.hr_sampler_name.is_empty() || !p.hr_scheduler.is_empty() {
        let sampler = if p.hr_sampler_name.is_empty() {
            p.sampler_name.clone()
        } else {
            p.hr_sampler_name.clone()
        };
        let scheduler = if p.hr_scheduler.is_empty() {
            "Automatic".to_string()
        } else {
            p.hr_scheduler.clone()
        };
        match samplers::canonical(&sampler, &scheduler) {
            Ok((s, sched)) => {
                // A legacy name ("DPM++ 2M Karras") carries its schedule type.
                let legacy = !p.hr_sampler_name.is_empty() && p.hr_sampler_name != s;
                if !p.hr_sampler_name.is_empty() {
                    p.hr_sampler_name = s.into();
                }
                if !p.hr_scheduler.is_empty() || legacy {
                    p.hr_scheduler = sched.into();
                }
            }
            Err(refused) => {
                let (key, names): (_, Vec<_>) = match refused {
                    samplers::Refused::Sampler => {
                        ("hr_sampler_name", samplers::sampler_names().collect())
                    }
                    samplers::Refused::Scheduler => {
                        ("hr_scheduler", samplers::scheduler_labels().collect())
                    }
                };
                let listed = names
                    .iter()
                    .map(|n| format!("\"{n}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                let e = find(key).expect("only written names are refused");
                return Err(SpecError::at(
                    SpecErrorKind::InvalidValue,
                    e,
                    "is not an A1111 name",
                    listed,
                ));
            }
        }
    }
    Ok(())
}

fn build(entries: &[Entry]) -> Result<SweepSpec> {
    let mut p = RenderParams {
        seed: -1,
        steps: 20,
        sampler_name: "Euler".into(),
        scheduler: "Automatic".into(),
        cfg_scale: 7.0,
        width: 512,
        height: 512,
        rng: "CPU".into(),
        subseed: -1,
        clip_skip: 1,
        ..Default::default()
    };
    let (mut batch_size, mut n_iter, mut priority, mut max_attempts) =
        (1u32, 1u32, 0i32, DEFAULT_MAX_ATTEMPTS);
    let (mut name, mut model, mut eta, mut pool) = (None, None, None, None);
    let (mut xyz_entry, mut matrix_entry) = (None, None);
    let (mut wildcards_entry, mut dataset) = (None, None);
    let mut denoising: Option<f32> = None;
    let find = |key: &str| entries.iter().find(|e| e.key == key);

    for e in entries {
        match e.key.as_str() {
            "prompt" => p.prompt = string(e, "any text")?,
            "negative_prompt" => p.negative_prompt = string(e, "any text")?,
            "seed" => p.seed = seed(e)?,
            "subseed" => p.subseed = seed(e)?,
            "steps" => p.steps = int_in(e, STEPS_RANGE)? as u32,
            "sampler_name" => {
                p.sampler_name = string(e, "an A1111 sampler name such as \"Euler\"")?
            }
            "scheduler" => p.scheduler = string(e, "an A1111 schedule type such as \"Karras\"")?,
            "cfg_scale" => {
                p.cfg_scale = float_in(e, f64::MIN..=f64::MAX, "any finite number")? as f32
            }
            "width" => p.width = side(e)?,
            "height" => p.height = side(e)?,
            "batch_size" => batch_size = int_in(e, BATCH_SIZE_RANGE)? as u32,
            "n_iter" => n_iter = int_in(e, N_ITER_RANGE)? as u32,
            "model" => model = Some((string(e, MODEL_ACCEPTED)?, e)),
            "rng" => {
                let rng = string(e, "\"CPU\" or \"NV\"")?;
                p.rng = match rng.to_ascii_uppercase().as_str() {
                    "CPU" => "CPU".into(),
                    "NV" => "NV".into(),
                    _ => {
                        let problem = "is not a noise source sdfarm can reproduce";
                        return Err(SpecError::at(
                            SpecErrorKind::InvalidValue,
                            e,
                            problem,
                            "\"CPU\" or \"NV\"",
                        ));
                    }
                };
            }
            "subseed_strength" => {
                p.subseed_strength = float_in(e, 0.0..=1.0, "a number from 0 to 1")? as f32
            }
            "clip_skip" => p.clip_skip = int_in(e, CLIP_SKIP_RANGE)? as u32,
            "sd_vae" => {
                p.vae = string(
                    e,
                    "\"Automatic\", \"None\", or a VAE file name, path or URL",
                )?
            }
            "eta" => eta = Some(float_in(e, 0.0..=f64::MAX, "a number of 0 or more")? as f32),
            "name" => name = Some(string(e, "any text")?),
            "priority" => priority = int_in(e, i64::from(i32::MIN)..=i64::from(i32::MAX))? as i32,
            "max_attempts" => max_attempts = int_in(e, MAX_ATTEMPTS_RANGE)? as u32,
            "pool" => {
                let p = string(e, POOL_NAME_RULE)?;
                if !is_pool_name(&p) {
                    let problem = "is not a valid worker pool name";
                    return Err(SpecError::at(
                        SpecErrorKind::InvalidValue,
                        e,
                        problem,
                        POOL_NAME_RULE,
                    ));
                }
                pool = Some(p);
            }
            "enable_hr" => p.enable_hr = boolean(e)?,
            "hr_scale" => p.hr_scale = float_in(e, 1.0..=8.0, "a number from 1 to 8")? as f32,
            "hr_resize_x" => p.hr_resize_x = int_in(e, 0..=8192)? as u32,
            "hr_resize_y" => p.hr_resize_y = int_in(e, 0..=8192)? as u32,
            "hr_second_pass_steps" => p.hr_second_pass_steps = int_in(e, 0..=1000)? as u32,
            "hr_upscaler" => {
                let listed = HR_UPSCALERS
                    .iter()
                    .map(|n| format!("\"{n}\""))
                    .collect::<Vec<_>>()
                    .join(", ");
                let name = string(e, &listed)?;
                if !HR_UPSCALERS.contains(&name.as_str()) {
                    let problem = "is not an upscaler sdfarm has";
                    return Err(SpecError::at(
                        SpecErrorKind::InvalidValue,
                        e,
                        problem,
                        listed,
                    ));
                }
                p.hr_upscaler = name;
            }
            "denoising_strength" => {
                denoising = Some(float_in(e, 0.0..=1.0, "a number from 0 to 1")? as f32)
            }
            "hr_sampler_name" => {
                p.hr_sampler_name = string(e, "an A1111 sampler name, or \"Use same sampler\"")?
            }
            "hr_scheduler" => {
                p.hr_scheduler = string(e, "an A1111 schedule type, or \"Use same scheduler\"")?
            }
            "hr_prompt" => p.hr_prompt = string(e, "any text")?,
            "hr_negative_prompt" => p.hr_negative_prompt = string(e, "any text")?,
            "seed_resize_from_w" => p.seed_resize_from_w = seed_resize_side(e)?,
            "seed_resize_from_h" => p.seed_resize_from_h = seed_resize_side(e)?,
            "init_image" => {
                p.init_image = string(e, "a PNG path or object-store URL (s3://bucket/a.png)")?
            }
            "xyz" => xyz_entry = Some(e),
            "prompt_matrix" => matrix_entry = Some(e),
            "wildcards" => wildcards_entry = Some(e),
            "dataset" => {
                let name = string(e, "a dataset name")?;
                if name.trim().is_empty() {
                    let problem = "is empty";
                    return Err(SpecError::at(
                        SpecErrorKind::InvalidValue,
                        e,
                        problem,
                        "a non-empty name",
                    ));
                }
                dataset = Some(name);
            }
            key => return Err(not_a_sweep_key(e, key)),
        }
    }

    let Some((model, model_entry)) = model else {
        let mut err = SpecError::new(SpecErrorKind::MissingKey, "is missing");
        err.key = Some("model".into());
        err.accepted = Some(MODEL_ACCEPTED.into());
        return Err(err);
    };
    if model.trim().is_empty()
        || (model.starts_with("builtin:") && !BUILTIN_MODELS.contains(&model.as_str()))
    {
        let problem = if model.trim().is_empty() {
            "is empty"
        } else {
            "is not a built-in model"
        };
        return Err(SpecError::at(
            SpecErrorKind::InvalidValue,
            model_entry,
            problem,
            MODEL_ACCEPTED,
        ));
    }
    p.model = model;
    hires_fields(&mut p, denoising, &find)?;
    seed_resize_pair(&p, &find)?;

    let (sampler, scheduler) =
        samplers::canonical(&p.sampler_name, &p.scheduler).map_err(|refused| {
            let (key, problem, names): (_, _, Vec<_>) = match refused {
                samplers::Refused::Sampler => (
                    "sampler_name",
                    "is not an A1111 sampler",
                    samplers::sampler_names().collect(),
                ),
                samplers::Refused::Scheduler => (
                    "scheduler",
                    "is not an A1111 schedule type",
                    samplers::scheduler_labels().collect(),
                ),
            };
            let written = if key == "scheduler" {
                &p.scheduler
            } else {
                &p.sampler_name
            };
            let hint = nearest(written, names.iter().copied())
                .map(|n| format!("; did you mean \"{n}\"?"))
                .unwrap_or_default();
            let listed = names
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ");
            match find(key) {
                Some(e) => SpecError::at(
                    SpecErrorKind::InvalidValue,
                    e,
                    format!("{problem}{hint}"),
                    listed,
                ),
                None => {
                    // Only the default was involved, e.g. a legacy name in `sampler_name` with
                    // a `scheduler` the user never wrote; blame the key that was written.
                    let e = find("sampler_name")
                        .or(find("scheduler"))
                        .expect("a default is valid");
                    SpecError::at(
                        SpecErrorKind::InvalidValue,
                        e,
                        format!("{problem}{hint}"),
                        listed,
                    )
                }
            }
        })?;
    p.sampler_name = sampler.into();
    p.scheduler = scheduler.into();
    let family = samplers::find_sampler(sampler).expect("canonical names are known");
    p.eta = eta.unwrap_or(if family.timestep_family { 0.0 } else { 1.0 });

    let pixels = u64::from(p.width) * u64::from(p.height) * u64::from(batch_size);
    if pixels > MAX_BATCH_PIXELS {
        let e = find("batch_size")
            .or(find("width"))
            .or(find("height"))
            .expect("defaults fit");
        let problem = format!(
            "makes a batch of {batch_size} x {}x{} = {pixels} pixels, more than the limit of {MAX_BATCH_PIXELS}",
            p.width, p.height
        );
        let accepted =
            format!("width * height * batch_size up to {MAX_BATCH_PIXELS}, e.g. 64 x 512x512");
        return Err(SpecError::at(
            SpecErrorKind::InvalidValue,
            e,
            problem,
            accepted,
        ));
    }

    // Image i gets seed + i (or subseed + i); the last one must still be a valid seed.
    let last = i64::from(batch_size) * i64::from(n_iter) - 1;
    for key in ["seed", "subseed"] {
        let v = if key == "seed" { p.seed } else { p.subseed };
        if v.checked_add(last).is_none() {
            let e = find(key).expect("the default seed is -1");
            let problem = format!(
                "leaves no room for {} images (seed + image index must fit in 64 bits)",
                last + 1
            );
            let accepted = format!("-1, or 0 to {}", i64::MAX - last);
            return Err(SpecError::at(
                SpecErrorKind::InvalidValue,
                e,
                problem,
                accepted,
            ));
        }
    }

    if let (Some(_), Some(m)) = (xyz_entry, matrix_entry) {
        return Err(SpecError::at(
            SpecErrorKind::InvalidValue,
            m,
            "cannot be combined with [xyz]: A1111 runs one script per generation",
            "either [xyz] or [prompt_matrix]",
        ));
    }
    let xyz = xyz_entry.map(|e| tables::xyz(e, &p)).transpose()?;
    let prompt_matrix = matrix_entry
        .map(|e| tables::prompt_matrix(e, &p))
        .transpose()?;
    let eta_explicit = eta.is_some();
    let wildcards = wildcards_entry
        .map(|e| {
            wildcards::read(
                e,
                (&p.prompt, find("prompt")),
                (&p.negative_prompt, find("negative_prompt")),
            )
        })
        .transpose()?;

    Ok(SweepSpec {
        name,
        base: p,
        batch_size,
        n_iter,
        priority,
        max_attempts,
        eta_explicit,
        xyz,
        prompt_matrix,
        pool,
        wildcards,
        dataset,
    })
}

fn not_a_sweep_key(e: &Entry, key: &str) -> SpecError {
    if A1111_UNSUPPORTED.contains(&key) {
        let problem = "is an AUTOMATIC1111 option sdfarm does not support yet";
        return SpecError::at(SpecErrorKind::Unsupported, e, problem, "remove it");
    }
    let problem = match suggest(key) {
        Some(s) => format!("is not a sweep key; did you mean `{s}`?"),
        None => "is not a sweep key".to_string(),
    };
    SpecError::at(SpecErrorKind::UnknownKey, e, problem, KNOWN_KEYS.join(", "))
}
