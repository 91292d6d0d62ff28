//! One image's passes as A1111's `process_images` runs them: txt2img or img2img, then the
//! optional hires fix (upscale, crop, partial denoise at the new size), all in one task.

use candle_core::Tensor;
use image::RgbImage;
use sdfarm_proto::RenderParams;

use super::composable;
use super::conditioning::EmbeddingLookup;
use super::hires::{self, HiresPlan};
use super::noise::{self, NoiseSource};
use super::pipeline::{self, Pipeline, SampleSettings, ScheduledCond};
use super::prompt_parser::prompt_schedule;
use super::resample::{self, Upscaler};
use super::sampler::{Sampler, SamplerOptions};
use super::scheduler::{ScheduleOverrides, ScheduleType};
use super::torch_rng::TorchGenerator;
use super::unipc::UniPcOptions;
use super::EngineError;

mod batch;

pub(super) use batch::{render_pixels_batch, BatchImage};

/// A sampler name and schedule type resolved as A1111 does: a legacy name
/// ("DPM++ 2M Karras") names the schedule type unless one is given.
pub(super) fn resolve_sampler(
    sampler_name: &str,
    scheduler: &str,
) -> Result<(Sampler, ScheduleType), EngineError> {
    let (sampler, legacy_schedule) = Sampler::resolve(sampler_name)?;
    let requested = ScheduleType::from_request(scheduler)?;
    let schedule = match (requested, legacy_schedule) {
        (ScheduleType::Automatic, Some(legacy)) => ScheduleType::from_request(legacy.label())?,
        (requested, _) => requested,
    };
    Ok((sampler, schedule))
}

fn settings(
    params: &RenderParams,
    sampler: Sampler,
    schedule_type: ScheduleType,
    steps: usize,
) -> SampleSettings {
    SampleSettings {
        schedule_type,
        options: SamplerOptions::from_request(
            sampler,
            params.eta,
            params.s_churn,
            params.s_tmin,
            params.s_tmax,
            params.s_noise,
        ),
        overrides: ScheduleOverrides {
            sigma_min: params.sigma_min,
            sigma_max: params.sigma_max,
            rho: params.rho,
        },
        unipc: UniPcOptions::with_order(params.uni_pc_order),
        ..SampleSettings::new(sampler, steps, params.cfg_scale)
    }
}

/// The second pass of a hires fix, resolved and checked before anything renders.
struct HiresPass {
    plan: HiresPlan,
    upscaler: Upscaler,
    sampler: Sampler,
    schedule: ScheduleType,
    steps: usize,
}

/// Whether A1111 runs a second pass: `enable_hr` and a target size other than the first
/// pass's (A1111 quietly turns the fix off when they are equal).
pub(crate) fn hires_plan(
    params: &RenderParams,
    opt_f: u32,
) -> Result<Option<HiresPlan>, EngineError> {
    if !params.enable_hr {
        return Ok(None);
    }
    let plan = HiresPlan::new(
        params.width,
        params.height,
        params.hr_scale,
        params.hr_resize_x,
        params.hr_resize_y,
        opt_f,
    )?;
    Ok((plan.upscale_to != (params.width, params.height)).then_some(plan))
}

fn check_strength(params: &RenderParams, why: &str) -> Result<f32, EngineError> {
    let s = params.denoising_strength;
    if !(s.is_finite() && s > 0.0 && s <= 1.0) {
        return Err(EngineError::param(
            "denoising_strength",
            s,
            format!("a number above 0 and at most 1 ({why})"),
        ));
    }
    Ok(s)
}

impl HiresPass {
    fn new(
        params: &RenderParams,
        pipeline: &Pipeline,
        first: (Sampler, ScheduleType),
    ) -> Result<Option<Self>, EngineError> {
        let Some(plan) = hires_plan(params, pipeline.latent_downscale() as u32)? else {
            return Ok(None);
        };
        if !params.init_image.is_empty() {
            return Err(EngineError::param(
                "enable_hr",
                true,
                "false with init_image (A1111's hires fix is a txt2img option)",
            ));
        }
        check_strength(params, "the hires fix denoises its second pass")?;
        let (w, h) = plan.final_pixels;
        pipeline.latent_shape(w, h).map_err(|_| {
            EngineError::param(
                "hr_scale",
                format!("{} (second pass {w}x{h})", params.hr_scale),
                "a scale or hr_resize_x/hr_resize_y giving a second pass of at most 8192 pixels a side",
            )
        })?;
        let same_sampler = matches!(params.hr_sampler_name.as_str(), "" | "Use same sampler");
        let same_schedule = matches!(params.hr_scheduler.as_str(), "" | "Use same scheduler");
        let sampler_name = if same_sampler {
            params.sampler_name.as_str()
        } else {
            params.hr_sampler_name.as_str()
        };
        let scheduler = if same_schedule {
            params.scheduler.as_str()
        } else {
            params.hr_scheduler.as_str()
        };
        let (sampler, schedule) = if same_sampler && same_schedule {
            first
        } else {
            resolve_sampler(sampler_name, scheduler).map_err(|e| match e {
                EngineError::InvalidParam {
                    field,
                    value,
                    expected,
                } => EngineError::InvalidParam {
                    field: match field {
                        "sampler_name" if !same_sampler => "hr_sampler_name",
                        "scheduler" if !same_schedule => "hr_scheduler",
                        other => other,
                    },
                    value,
                    expected,
                },
                other => other,
            })?
        };
        let steps = match params.hr_second_pass_steps {
            0 => params.steps as usize,
            n => n as usize,
        };
        Ok(Some(HiresPass {
            plan,
            upscaler: Upscaler::from_name(&params.hr_upscaler)?,
            sampler,
            schedule,
            steps,
        }))
    }
}

/// Model calls of a pass: prompt editing counts them, and second-order samplers make two per
/// step (A1111's `total_steps`).
fn model_calls(sampler: Sampler, steps: usize) -> usize {
    steps * if sampler.second_order() { 2 } else { 1 }
}

/// Prompt embeddings for a pass. `hires` is `Some((first_pass_calls, hires_calls))` for the
/// hires pass, where A1111 reads `[a:b:when]` over both passes: integers count on from the
/// first pass, fractions above 1.0 fall in the second.
///
/// The negative prompt is encoded first, as A1111 does; the first pass's calls report the
/// textual-inversion embeddings they used (A1111 writes "TI hashes" before the hires pass).
///
/// The positive prompt is composable: each `AND` part (with its weight) is scheduled and
/// encoded on its own, as A1111's `get_multicond_learned_conditioning` does.
fn conds(
    pipeline: &Pipeline,
    prompt: &str,
    negative: &str,
    calls: usize,
    hires: Option<usize>,
    clip_skip: usize,
    embeddings: &dyn EmbeddingLookup,
) -> Result<(Vec<(ScheduledCond, f64)>, ScheduledCond), EngineError> {
    let encode = |text: &str, negative: bool| -> Result<ScheduledCond, EngineError> {
        let (ends, texts): (Vec<usize>, Vec<String>) = prompt_schedule(text, calls, hires, false)
            .into_iter()
            .unzip();
        let (encoded, used) = pipeline.encode_texts_as(&texts, clip_skip, embeddings, negative)?;
        if hires.is_none() {
            embeddings.note_call(&used)?;
        }
        Ok(ends.into_iter().zip(encoded).collect())
    };
    let uncond = encode(negative, true)?;
    let parts = composable::composable_parts(prompt)
        .into_iter()
        .map(|(text, weight)| Ok((encode(&text, false)?, weight)))
        .collect::<Result<Vec<_>, EngineError>>()?;
    Ok((parts, uncond))
}

/// The parts of a composable conditioning as [`Pipeline::sample_composable`] takes them.
fn weighted(parts: &[(ScheduledCond, f64)]) -> Vec<(&ScheduledCond, f64)> {
    parts.iter().map(|(c, w)| (c, *w)).collect()
}

/// The image's initial noise for a latent shape, and the source that continues it for
/// ancestral steps (A1111 creates a fresh `ImageRNG` for the hires pass).
///
/// "Seed resize from" applies to both passes, as A1111 passes it to both `ImageRNG`s; its
/// pixel size becomes latent pixels by the model's downscale factor `opt_f` (A1111 divides
/// by 8, which is every real SD model's factor).
fn noise_for(
    params: &RenderParams,
    shape: [usize; 4],
    opt_f: usize,
) -> Result<(Tensor, NoiseSource), EngineError> {
    let mut source = NoiseSource::new(&params.rng, params.seed)?;
    let per_image = [shape[1], shape[2], shape[3]];
    let resize_from = (params.seed_resize_from_w > 0 && params.seed_resize_from_h > 0).then(|| {
        [
            params.seed_resize_from_h as usize / opt_f,
            params.seed_resize_from_w as usize / opt_f,
        ]
    });
    let init = noise::initial_noise_resized(
        &mut source,
        &params.rng,
        params.seed,
        params.subseed,
        params.subseed_strength,
        per_image,
        resize_from,
    )?;
    Ok((
        Tensor::from_vec(init, shape.to_vec(), &candle_core::Device::Cpu)?,
        source,
    ))
}

/// VAE encode with A1111's posterior sample. A1111 draws it from torch's global CPU generator,
/// which its noise code has just seeded with the image's seed (`rng.randn` calls
/// `torch.manual_seed`), so a fresh generator seeded with the seed reproduces it.
fn encode(pipeline: &Pipeline, image: &RgbImage, seed: i64) -> Result<Tensor, EngineError> {
    let tensor = resample::image_to_tensor(image, pipeline.device())?;
    let mut generator = TorchGenerator::new(seed as u64);
    pipeline.encode(&tensor, &mut |numel| generator.randn(numel))
}

/// The hires pass's starting latents for one image: the first pass's latents upscaled
/// (interpolated, or decoded, upscaled as pixels and encoded with the image's seed), then
/// cropped to the second pass's size.
fn hires_start(
    pipeline: &Pipeline,
    hr: &HiresPass,
    params: &RenderParams,
    latents: &Tensor,
    decode: &dyn Fn(&Tensor) -> Result<Tensor, EngineError>,
) -> Result<Tensor, EngineError> {
    let plan = &hr.plan;
    let f = pipeline.latent_downscale() as u32;
    let (to_x, to_y) = plan.upscale_to;
    let upscaled = match hr.upscaler {
        Upscaler::Latent(mode) => {
            resample::interpolate(latents, (to_y / f) as usize, (to_x / f) as usize, mode)?
        }
        Upscaler::Pixels { chained } => {
            let decoded = decode(latents)?;
            let lowres = resample::decoded_to_image(&decoded)?;
            let image = resample::upscale_pixels(&lowres, to_x, to_y, chained);
            encode(pipeline, &image, params.seed)?
        }
    };
    let [r0, r1, c0, c1] = plan.crop_rows_cols.map(|v| v as usize);
    Ok(upscaled.narrow(2, r0, r1 - r0)?.narrow(3, c0, c1 - c0)?)
}

/// The prompts of the hires pass: `hr_prompt` / `hr_negative_prompt`, each the first pass's
/// when empty.
fn hires_prompts(params: &RenderParams) -> (&str, &str) {
    let prompt = if params.hr_prompt.is_empty() {
        &params.prompt
    } else {
        &params.hr_prompt
    };
    let negative = if params.hr_negative_prompt.is_empty() {
        &params.negative_prompt
    } else {
        &params.hr_negative_prompt
    };
    (prompt, negative)
}

/// Runs every pass of one image and returns its RGB8 pixels. `init_image` is the loaded
/// img2img input, if any; `clip_skip` is already checked; `decode` is the VAE decode in use
/// (the checkpoint's or an override).
pub(super) fn render_pixels(
    pipeline: &Pipeline,
    params: &RenderParams,
    init_image: Option<&RgbImage>,
    clip_skip: usize,
    embeddings: &dyn EmbeddingLookup,
    decode: &dyn Fn(&Tensor) -> Result<Tensor, EngineError>,
    on_step: &mut dyn FnMut(u32, u32) -> bool,
) -> Result<(u32, u32, Vec<u8>), EngineError> {
    let first = resolve_sampler(&params.sampler_name, &params.scheduler)?;
    let hires = HiresPass::new(params, pipeline, first)?;
    let shape = pipeline.latent_shape(params.width, params.height)?;
    let device = pipeline.device().clone();
    let steps = params.steps as usize;

    // Progress counts both passes; the second pass's length is known up front (A1111 runs
    // `hr_second_pass_steps` steps, DDIM one fewer).
    let second_total = hires.as_ref().map_or(0, |h| match h.sampler.algorithm() {
        Some(_) => h.steps,
        None => h.steps.saturating_sub(1),
    });
    let mut offset = 0usize;
    let mut first_total = 0usize;
    let mut report = |step: usize, total: usize, offset: usize| -> bool {
        on_step(
            (offset + step) as u32,
            (offset.max(total) + second_total) as u32,
        )
    };

    let (noise, mut source) = noise_for(params, shape, pipeline.latent_downscale())?;
    let noise = noise.to_device(&device)?;
    let numel: usize = shape.iter().product();
    let first_calls = model_calls(first.0, steps);
    let (cond, uncond) = conds(
        pipeline,
        &params.prompt,
        &params.negative_prompt,
        first_calls,
        None,
        clip_skip,
        embeddings,
    )?;
    let mut latents = {
        let mut fresh = || -> Result<Tensor, EngineError> {
            Ok(Tensor::from_vec(
                source.randn(numel),
                shape.to_vec(),
                &device,
            )?)
        };
        let mut observe = |t: pipeline::StepTrace<'_>| {
            first_total = t.total;
            report(t.step, t.total, 0)
        };
        match init_image {
            None => pipeline.sample_composable_seeded(
                &settings(params, first.0, first.1, steps),
                &weighted(&cond),
                &uncond,
                &noise,
                None,
                &[params.seed],
                &mut fresh,
                &mut observe,
            )?,
            Some(image) => {
                let strength = check_strength(params, "img2img keeps the rest of the image")?;
                // A1111's img2img "Just resize": one Lanczos resize to the render size.
                let resized = resample::upscale_pixels(image, params.width, params.height, false);
                let init = encode(pipeline, &resized, params.seed)?;
                let (schedule_len, t_enc) = hires::img2img_steps(steps, strength, false);
                pipeline.sample_composable_seeded(
                    &settings(params, first.0, first.1, schedule_len),
                    &weighted(&cond),
                    &uncond,
                    &noise,
                    Some((&init, t_enc)),
                    &[params.seed],
                    &mut fresh,
                    &mut observe,
                )?
            }
        }
    };
    offset += first_total;

    if let Some(hr) = hires {
        let cropped = hires_start(pipeline, &hr, params, &latents, decode)?;
        let (w, h) = hr.plan.final_pixels;
        let hr_shape = pipeline.latent_shape(w, h)?;
        let (hr_noise, mut hr_source) = noise_for(params, hr_shape, pipeline.latent_downscale())?;
        let hr_noise = hr_noise.to_device(&device)?;
        let hr_numel: usize = hr_shape.iter().product();
        let (prompt, negative) = hires_prompts(params);
        let hr_calls = model_calls(hr.sampler, hr.steps);
        let (hr_cond, hr_uncond) = conds(
            pipeline,
            prompt,
            negative,
            first_calls,
            Some(hr_calls),
            clip_skip,
            embeddings,
        )?;
        let (schedule_len, t_enc) = hires::img2img_steps(hr.steps, params.denoising_strength, true);
        let mut fresh = || -> Result<Tensor, EngineError> {
            Ok(Tensor::from_vec(
                hr_source.randn(hr_numel),
                hr_shape.to_vec(),
                &device,
            )?)
        };
        latents = pipeline.sample_composable_seeded(
            &settings(params, hr.sampler, hr.schedule, schedule_len),
            &weighted(&hr_cond),
            &hr_uncond,
            &hr_noise,
            Some((&cropped.contiguous()?, t_enc)),
            &[params.seed],
            &mut fresh,
            &mut |t| report(t.step, 0, offset),
        )?;
    }
    // A1111's pixels: `(255 * clamp((x + 1) / 2, 0, 1)).astype(uint8)` truncates, where
    // diffusers rounds; users compare with A1111, so sdfarm truncates too. Parity tests
    // against diffusers compare the float image and use `pipeline::decoded_to_rgb8`.
    let image = resample::decoded_to_image(&decode(&latents)?)?;
    Ok((image.width(), image.height(), image.into_raw()))
}
