//! Several images in one sampler pass: latents `[n, C, h, w]`, one UNet call per model call
//! for all of them (batch `n × (parts + 1)`: every image's uncond, then every image's cond
//! rows) — and every image as it renders alone (the VAE decodes each image on its own).
//!
//! What stays per image is what A1111 keeps per image in a batch: the seed's generator for
//! the initial noise and for every ancestral / SDE / eta draw (each step draws each image's
//! noise from its own generator, in order), the variation seed, the img2img posterior sample,
//! the prompt and negative prompt with their own prompt-editing schedules, and the
//! textual-inversion embeddings they used. Schedules that switch at different model calls are
//! merged: the pass's schedule has an entry at every image's switch, each image's rows being
//! its own entry for those calls.
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
use super::super::pipeline::{Pipeline, ScheduledCond};
use super::super::resample;
use super::super::EngineError;
use super::{check_strength, conds, encode, model_calls, noise_for, resolve_sampler, settings};

/// One image of a batch: its parameters and the embeddings lookup that records the
/// textual-inversion embeddings its prompts use.
pub(in crate::engine) struct BatchImage<'a> {
    pub params: &'a RenderParams,
    pub embeddings: &'a dyn EmbeddingLookup,
}

/// One image's inputs to the pass, as it would have them alone.
struct Prepared {
    noise: Tensor,
    source: NoiseSource,
    cond: Vec<(ScheduledCond, f64)>,
    uncond: ScheduledCond,
    /// The img2img init latents (encoded with the image's own seed).
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

/// Renders images that share everything but their seeds, variation seeds and prompts, and run
/// no hires fix (the caller checks), in as few passes as their conditioning shapes allow.
/// Returns each image's RGB8 pixels in order. `on_step` counts the steps of all passes.
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
    let shape = pipeline.latent_shape(params.width, params.height)?;
    let device = pipeline.device().clone();
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

    let mut prepared = Vec::with_capacity(images.len());
    for image in images {
        let p = image.params;
        let (noise, source) = noise_for(p, shape, pipeline.latent_downscale())?;
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
        prepared.push(Prepared {
            noise: noise.to_device(&device)?,
            source,
            cond,
            uncond,
            init,
        });
    }

    // One pass per conditioning shape, in the order the shapes first appear.
    let mut passes: Vec<Vec<usize>> = Vec::new();
    let mut by_key: HashMap<ShapeKey, usize> = HashMap::new();
    for (i, p) in prepared.iter().enumerate() {
        let next = passes.len();
        let pass = *by_key.entry(shape_key(p)?).or_insert(next);
        if pass == next {
            passes.push(Vec::new());
        }
        passes[pass].push(i);
    }

    let pass_count = passes.len();
    let mut done_steps = 0u32;
    let mut pixels: Vec<Option<(u32, u32, Vec<u8>)>> = vec![None; images.len()];
    for members in passes {
        let n = members.len();
        let per_image: usize = shape.iter().product();
        let batch_shape = [n, shape[1], shape[2], shape[3]];
        let noise = Tensor::cat(
            &members
                .iter()
                .map(|&i| prepared[i].noise.clone())
                .collect::<Vec<_>>(),
            0,
        )?;
        let parts = prepared[members[0]].cond.len();
        let cond = (0..parts)
            .map(|j| {
                let schedules: Vec<&ScheduledCond> =
                    members.iter().map(|&i| &prepared[i].cond[j].0).collect();
                Ok((stack_schedules(&schedules)?, prepared[members[0]].cond[j].1))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let uncond = stack_schedules(
            &members
                .iter()
                .map(|&i| &prepared[i].uncond)
                .collect::<Vec<_>>(),
        )?;
        let init = match strength {
            Some(_) => Some(Tensor::cat(
                &members
                    .iter()
                    .map(|&i| {
                        prepared[i]
                            .init
                            .clone()
                            .expect("img2img images are encoded above")
                    })
                    .collect::<Vec<_>>(),
                0,
            )?),
            None => None,
        };
        // Each draw is every image's next draw from its own generator, in batch order.
        let mut sources: Vec<&mut NoiseSource> = Vec::with_capacity(n);
        for (i, p) in prepared.iter_mut().enumerate() {
            if members.contains(&i) {
                sources.push(&mut p.source);
            }
        }
        let mut fresh = || -> Result<Tensor, EngineError> {
            let mut values = Vec::with_capacity(per_image * n);
            for source in sources.iter_mut() {
                values.extend(source.randn(per_image));
            }
            Ok(Tensor::from_vec(values, batch_shape.to_vec(), &device)?)
        };
        let mut pass_steps = 0u32;
        let mut observe = |t: super::super::pipeline::StepTrace<'_>| {
            pass_steps = t.total as u32;
            on_step(
                done_steps + t.step as u32,
                t.total as u32 * pass_count as u32,
            )
        };
        let weighted = super::weighted(&cond);
        let latents = match (&init, strength) {
            (Some(init), Some(strength)) => {
                let (schedule_len, t_enc) = hires::img2img_steps(steps, strength, false);
                pipeline.sample_composable(
                    &settings(params, first.0, first.1, schedule_len),
                    &weighted,
                    &uncond,
                    &noise,
                    Some((init, t_enc)),
                    &mut fresh,
                    &mut observe,
                )?
            }
            _ => pipeline.sample_composable(
                &settings(params, first.0, first.1, steps),
                &weighted,
                &uncond,
                &noise,
                None,
                &mut fresh,
                &mut observe,
            )?,
        };
        done_steps += pass_steps;
        // The VAE decodes image by image: candle's batched decode rounds differently enough
        // (up to 5/255 on the tiny model) to break "identical to rendering it alone", and the
        // decode is a small part of a render next to the sampler's steps.
        for (k, &i) in members.iter().enumerate() {
            let decoded = decode(&latents.i(k..k + 1)?)?;
            let image = resample::decoded_to_image(&decoded)?;
            pixels[i] = Some((image.width(), image.height(), image.into_raw()));
        }
    }
    Ok(pixels
        .into_iter()
        .map(|p| p.expect("every image belongs to one pass"))
        .collect())
}
