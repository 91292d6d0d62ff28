//! Several images in one sampler pass: latents `[n, C, h, w]`, one UNet call per model call
//! for all of them (batch `n × (parts + 1)`: every image's uncond, then every image's cond
//! rows) — and every image as it renders alone (the VAE decodes each image on its own).
//!
//! What stays per image is what A1111 keeps per image in a batch: the seed's generator for
//! the initial noise and for every ancestral / eta draw (each step draws each image's noise
//! from its own generator, in order), the SDE samplers' Brownian tree seeded with the image's
//! seed, the variation seed, the img2img posterior sample,
//! the prompt and negative prompt with their own prompt-editing schedules, and the
//! textual-inversion embeddings they used. Schedules that switch at different model calls are
//! merged: the pass's schedule has an entry at every image's switch, each image's rows being
//! its own entry for those calls.
//!
//! The hires fix's second pass is batched the same way: each image's first-pass latents are
//! upscaled on their own (a pixel upscaler decodes them and encodes the result with the
//! image's seed), each image gets the fresh generator and hires prompts it gets alone, and
//! the second passes run stacked.
//!
//! Conditionings are stacked, not padded: images whose prompts encode to different token
//! lengths (chunk counts) would need A1111's batch padding, which changes their pixels
//! against a render alone. Such images run as separate passes (one per conditioning shape),
//! which keeps each identical to rendering it alone.

use std::collections::HashMap;

use candle_core::{IndexOp, Tensor};
use image::RgbImage;
use sdfarm_proto::RenderParams;

use super::super::conditioning::{self, EmbeddingLookup};
use super::super::hires;
use super::super::noise::NoiseSource;
use super::super::pipeline::{Pipeline, SampleSettings, ScheduledCond, StepTrace};
use super::super::resample;
use super::super::EngineError;
use super::{
    check_strength, conds, encode, hires_prompts, hires_start, model_calls, noise_for,
    resolve_sampler, settings, weighted, HiresPass,
};

/// One image of a batch: its parameters and the embeddings lookup that records the
/// textual-inversion embeddings its prompts use.
pub(in crate::engine) struct BatchImage<'a> {
    pub params: &'a RenderParams,
    pub embeddings: &'a dyn EmbeddingLookup,
}

/// One image's inputs to a pass, as it would have them alone.
struct Prepared {
    /// Unit-variance initial noise `[1, C, h, w]`.
    noise: Tensor,
    /// The image's generator, continuing after the initial noise.
    source: NoiseSource,
    /// The image's seed, which also seeds the SDE samplers' Brownian tree.
    seed: i64,
    cond: Vec<(ScheduledCond, f64)>,
    uncond: ScheduledCond,
    /// The latents a partial pass starts from: img2img's init (encoded with the image's own
    /// seed) or the hires pass's upscaled first pass.
    init: Option<Tensor>,
}

/// What images must share to be stacked: the token length of every schedule entry of the
/// negative prompt and of each `AND` part, and the parts' weights.
type ShapeKey = (Vec<(usize, usize)>, Vec<(u64, Vec<(usize, usize)>)>);

/// A schedule's token lengths: one length when all its entries have it (the switch points
/// then do not matter), otherwise every `(end, length)`.
fn lengths(schedule: &ScheduledCond) -> Result<Vec<(usize, usize)>, EngineError> {
    let all = schedule
        .iter()
        .map(|(end, t)| Ok((*end, t.dim(1)?)))
        .collect::<Result<Vec<_>, EngineError>>()?;
    let first = all.first().map_or(0, |(_, l)| *l);
    if all.iter().all(|(_, l)| *l == first) {
        Ok(vec![(0, first)])
    } else {
        Ok(all)
    }
}

fn shape_key(p: &Prepared) -> Result<ShapeKey, EngineError> {
    let parts = p
        .cond
        .iter()
        .map(|(c, w)| Ok((w.to_bits(), lengths(c)?)))
        .collect::<Result<Vec<_>, EngineError>>()?;
    Ok((lengths(&p.uncond)?, parts))
}

/// The images' schedules as one: an entry at every end any of them has, each image's rows
/// being the entry it uses for those model calls ([`conditioning::entry_for_call`]).
fn stack_schedules(schedules: &[&ScheduledCond]) -> Result<ScheduledCond, EngineError> {
    let mut ends: Vec<usize> = schedules
        .iter()
        .flat_map(|s| s.iter().map(|(end, _)| *end))
        .collect();
    ends.sort_unstable();
    ends.dedup();
    ends.into_iter()
        .map(|end| {
            let rows = schedules
                .iter()
                .map(|s| {
                    let own: Vec<usize> = s.iter().map(|(e, _)| *e).collect();
                    s[conditioning::entry_for_call(&own, end)].1.clone()
                })
                .collect::<Vec<_>>();
            Ok((end, Tensor::cat(&rows, 0)?))
        })
        .collect()
}

/// Progress of a batch over all its passes: `on_step(step, total)` with the steps done so
/// far, and a total that counts the passes known so far plus the expected rest.
struct Progress<'a> {
    on_step: &'a mut dyn FnMut(u32, u32) -> bool,
    done: u32,
    /// Expected steps after the passes running now (the hires passes, one shape each).
    later: u32,
}

/// Runs `inputs` (each image's noise, generator, conditioning and, for a partial denoise,
/// init latents) with `settings`, in one pass per conditioning shape, and returns each
/// image's final latents `[1, C, h, w]` in order. `t_enc` makes the passes partial
/// ([`Pipeline::sample_composable`]).
fn run_passes(
    pipeline: &Pipeline,
    inputs: &mut [Prepared],
    settings: &SampleSettings,
    t_enc: Option<usize>,
    progress: &mut Progress<'_>,
) -> Result<Vec<Tensor>, EngineError> {
    // One pass per conditioning shape, in the order the shapes first appear.
    let mut passes: Vec<Vec<usize>> = Vec::new();
    let mut by_key: HashMap<ShapeKey, usize> = HashMap::new();
    for (i, p) in inputs.iter().enumerate() {
        let next = passes.len();
        let pass = *by_key.entry(shape_key(p)?).or_insert(next);
        if pass == next {
            passes.push(Vec::new());
        }
        passes[pass].push(i);
    }
    let device = pipeline.device().clone();
    let pass_count = passes.len() as u32;
    let mut latents: Vec<Option<Tensor>> = vec![None; inputs.len()];
    for members in passes {
        let n = members.len();
        let stacked = |f: &dyn Fn(&Prepared) -> Tensor| -> Result<Tensor, EngineError> {
            let rows: Vec<Tensor> = members.iter().map(|&i| f(&inputs[i])).collect();
            Ok(Tensor::cat(&rows, 0)?)
        };
        let noise = stacked(&|p| p.noise.clone())?;
        let init = match t_enc {
            Some(t_enc) => Some((
                stacked(&|p| p.init.clone().expect("a partial pass has init latents"))?,
                t_enc,
            )),
            None => None,
        };
        let head = &inputs[members[0]];
        let cond = (0..head.cond.len())
            .map(|j| {
                let schedules: Vec<&ScheduledCond> =
                    members.iter().map(|&i| &inputs[i].cond[j].0).collect();
                Ok((stack_schedules(&schedules)?, head.cond[j].1))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let uncond = stack_schedules(
            &members
                .iter()
                .map(|&i| &inputs[i].uncond)
                .collect::<Vec<_>>(),
        )?;
        let seeds: Vec<i64> = members.iter().map(|&i| inputs[i].seed).collect();
        let dims = noise.dims().to_vec();
        let per_image: usize = dims[1..].iter().product();
        // Each draw is every image's next draw from its own generator, in batch order.
        let mut sources: Vec<&mut NoiseSource> = inputs
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| members.contains(i))
            .map(|(_, p)| &mut p.source)
            .collect();
        let mut fresh = || -> Result<Tensor, EngineError> {
            let mut values = Vec::with_capacity(per_image * n);
            for source in sources.iter_mut() {
                values.extend(source.randn(per_image));
            }
            Ok(Tensor::from_vec(values, dims.clone(), &device)?)
        };
        let (done, later) = (progress.done, progress.later);
        let mut pass_steps = 0u32;
        let on_step = &mut progress.on_step;
        let mut observe = |t: StepTrace<'_>| {
            pass_steps = t.total as u32;
            on_step(
                done + t.step as u32,
                done + t.total as u32 * pass_count + later,
            )
        };
        let out = pipeline.sample_composable_seeded(
            settings,
            &weighted(&cond),
            &uncond,
            &noise,
            init.as_ref().map(|(init, t_enc)| (init, *t_enc)),
            &seeds,
            &mut fresh,
            &mut observe,
        )?;
        progress.done += pass_steps;
        for (k, &i) in members.iter().enumerate() {
            latents[i] = Some(out.i(k..k + 1)?);
        }
    }
    Ok(latents
        .into_iter()
        .map(|l| l.expect("every image belongs to one pass"))
        .collect())
}

/// Renders images that share everything but their seeds, variation seeds and prompts (the
/// caller checks), in as few passes as their conditioning shapes allow: the first pass
/// (txt2img or img2img), then the hires fix's second pass when the request has one. Returns
/// each image's RGB8 pixels in order. `on_step` counts the steps of all passes.
pub(in crate::engine) fn render_pixels_batch(
    pipeline: &Pipeline,
    images: &[BatchImage<'_>],
    init_image: Option<&RgbImage>,
    clip_skip: usize,
    decode: &dyn Fn(&Tensor) -> Result<Tensor, EngineError>,
    on_step: &mut dyn FnMut(u32, u32) -> bool,
) -> Result<Vec<(u32, u32, Vec<u8>)>, EngineError> {
    let Some(head) = images.first() else {
        return Ok(Vec::new());
    };
    let params = head.params;
    let first = resolve_sampler(&params.sampler_name, &params.scheduler)?;
    let hires = HiresPass::new(params, pipeline, first)?;
    let shape = pipeline.latent_shape(params.width, params.height)?;
    let device = pipeline.device().clone();
    let opt_f = pipeline.latent_downscale();
    let steps = params.steps as usize;
    let calls = model_calls(first.0, steps);
    let strength = match init_image {
        Some(_) => Some(check_strength(
            params,
            "img2img keeps the rest of the image",
        )?),
        None => None,
    };
    // A1111's img2img "Just resize", once for all: every image starts from the same picture.
    let resized =
        init_image.map(|image| resample::upscale_pixels(image, params.width, params.height, false));

    let mut inputs = Vec::with_capacity(images.len());
    for image in images {
        let p = image.params;
        let (noise, source) = noise_for(p, shape, opt_f)?;
        let (cond, uncond) = conds(
            pipeline,
            &p.prompt,
            &p.negative_prompt,
            calls,
            None,
            clip_skip,
            image.embeddings,
        )?;
        let init = match &resized {
            Some(resized) => Some(encode(pipeline, resized, p.seed)?),
            None => None,
        };
        inputs.push(Prepared {
            noise: noise.to_device(&device)?,
            source,
            seed: p.seed,
            cond,
            uncond,
            init,
        });
    }
    let mut progress = Progress {
        on_step,
        done: 0,
        later: hires.as_ref().map_or(0, |h| match h.sampler.algorithm() {
            Some(_) => h.steps as u32,
            None => h.steps.saturating_sub(1) as u32,
        }),
    };
    let mut latents = match strength {
        Some(strength) => {
            let (schedule_len, t_enc) = hires::img2img_steps(steps, strength, false);
            let settings = settings(params, first.0, first.1, schedule_len);
            run_passes(pipeline, &mut inputs, &settings, Some(t_enc), &mut progress)?
        }
        None => {
            let settings = settings(params, first.0, first.1, steps);
            run_passes(pipeline, &mut inputs, &settings, None, &mut progress)?
        }
    };

    if let Some(hr) = hires {
        let (w, h) = hr.plan.final_pixels;
        let hr_shape = pipeline.latent_shape(w, h)?;
        let hr_calls = model_calls(hr.sampler, hr.steps);
        // Each image's second pass as it runs alone: a fresh generator, its own upscaled
        // start and its own hires prompts.
        let mut hr_inputs = Vec::with_capacity(images.len());
        for (image, first_latents) in images.iter().zip(&latents) {
            let p = image.params;
            let start = hires_start(pipeline, &hr, p, first_latents, decode)?;
            let (noise, source) = noise_for(p, hr_shape, opt_f)?;
            let (prompt, negative) = hires_prompts(p);
            let (cond, uncond) = conds(
                pipeline,
                prompt,
                negative,
                calls,
                Some(hr_calls),
                clip_skip,
                image.embeddings,
            )?;
            hr_inputs.push(Prepared {
                noise: noise.to_device(&device)?,
                source,
                seed: p.seed,
                cond,
                uncond,
                init: Some(start.contiguous()?),
            });
        }
        let (schedule_len, t_enc) = hires::img2img_steps(hr.steps, params.denoising_strength, true);
        let settings = settings(params, hr.sampler, hr.schedule, schedule_len);
        progress.later = 0;
        latents = run_passes(
            pipeline,
            &mut hr_inputs,
            &settings,
            Some(t_enc),
            &mut progress,
        )?;
    }

    // The VAE decodes image by image: candle's batched decode rounds differently enough
    // (up to 5/255 on the tiny model) to break "identical to rendering it alone", and the
    // decode is a small part of a render next to the sampler's steps.
    latents
        .iter()
        .map(|l| {
            let image = resample::decoded_to_image(&decode(l)?)?;
            Ok((image.width(), image.height(), image.into_raw()))
        })
        .collect()
}
