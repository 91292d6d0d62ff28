//! The sampling loop of [`Pipeline`]: classifier-free guidance over the UNet, prompt-editing
//! schedules per model call, eps- and v-prediction denoisers, full and partial (img2img)
//! denoising with the k-diffusion samplers or DDIM.

use std::cell::RefCell;

use candle_core::{IndexOp, Tensor};

use super::super::batch;
use super::super::brownian::BrownianTreeNoiseSampler;
use super::super::composable;
use super::super::conditioning;
use super::super::kdiffusion;
use super::super::sampler::{self, DdimVariant, NoiseFn, StepInfo};
use super::super::sdxl;
use super::super::unet::AddedCond;
use super::super::EngineError;
use super::{Pipeline, Prediction, SampleSettings, ScheduledCond, StepTrace};

impl Pipeline {
    /// [`Pipeline::sample`] with prompt-editing schedules for both prompts.
    pub fn sample_scheduled(
        &self,
        settings: &SampleSettings,
        cond: &ScheduledCond,
        uncond: &ScheduledCond,
        noise: &Tensor,
        fresh_noise: &mut NoiseFn<'_>,
        observe: &mut dyn FnMut(StepTrace<'_>) -> bool,
    ) -> Result<Tensor, EngineError> {
        self.sample_from(
            settings,
            &[(cond, 1.0)],
            uncond,
            noise,
            None,
            None,
            fresh_noise,
            observe,
        )
    }

    /// [`Pipeline::sample_scheduled`] (or, with `partial = (init, t_enc)`,
    /// [`Pipeline::sample_img2img`]) for a composable prompt: each `AND` part's schedule with
    /// its weight, guided as A1111's `combine_denoised` does (see [`composable`]).
    /// [`StepTrace::unet_out`] is then `[uncond, cond_1, …, cond_n]`.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_composable(
        &self,
        settings: &SampleSettings,
        conds: &[(&ScheduledCond, f64)],
        uncond: &ScheduledCond,
        noise: &Tensor,
        partial: Option<(&Tensor, usize)>,
        fresh_noise: &mut NoiseFn<'_>,
        observe: &mut dyn FnMut(StepTrace<'_>) -> bool,
    ) -> Result<Tensor, EngineError> {
        self.sample_from(
            settings,
            conds,
            uncond,
            noise,
            partial,
            None,
            fresh_noise,
            observe,
        )
    }

    /// [`Pipeline::sample_composable`] for images with known seeds, one per latent row: the
    /// SDE samplers ([`sampler::Sampler::brownian_noise`]) then draw their noise from each
    /// image's Brownian tree seeded with its seed, as A1111's `create_noise_sampler` does;
    /// every other draw still comes from `fresh_noise`.
    #[allow(clippy::too_many_arguments)]
    pub fn sample_composable_seeded(
        &self,
        settings: &SampleSettings,
        conds: &[(&ScheduledCond, f64)],
        uncond: &ScheduledCond,
        noise: &Tensor,
        partial: Option<(&Tensor, usize)>,
        seeds: &[i64],
        fresh_noise: &mut NoiseFn<'_>,
        observe: &mut dyn FnMut(StepTrace<'_>) -> bool,
    ) -> Result<Tensor, EngineError> {
        self.sample_from(
            settings,
            conds,
            uncond,
            noise,
            partial,
            Some(seeds),
            fresh_noise,
            observe,
        )
    }

    /// A partial denoise of `init` latents as A1111's `sample_img2img`: `settings.steps` is
    /// the full schedule length and the last `t_enc + 1` sigmas run, starting from
    /// `init + noise * sigma` (DDIM: `init * sqrt(a) + noise * sqrt(1 - a)` at
    /// `timesteps[t_enc]`, then the timesteps before it).
    #[allow(clippy::too_many_arguments)]
    pub fn sample_img2img(
        &self,
        settings: &SampleSettings,
        cond: &ScheduledCond,
        uncond: &ScheduledCond,
        init: &Tensor,
        noise: &Tensor,
        t_enc: usize,
        fresh_noise: &mut NoiseFn<'_>,
        observe: &mut dyn FnMut(StepTrace<'_>) -> bool,
    ) -> Result<Tensor, EngineError> {
        self.sample_from(
            settings,
            &[(cond, 1.0)],
            uncond,
            noise,
            Some((init, t_enc)),
            None,
            fresh_noise,
            observe,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn sample_from(
        &self,
        settings: &SampleSettings,
        conds: &[(&ScheduledCond, f64)],
        uncond: &ScheduledCond,
        noise: &Tensor,
        partial: Option<(&Tensor, usize)>,
        seeds: Option<&[i64]>,
        fresh_noise: &mut NoiseFn<'_>,
        observe: &mut dyn FnMut(StepTrace<'_>) -> bool,
    ) -> Result<Tensor, EngineError> {
        if settings.steps == 0 || settings.steps > self.schedule.len() {
            return Err(EngineError::param(
                "steps",
                settings.steps,
                format!("1 to {}", self.schedule.len()),
            ));
        }
        if conds.is_empty() || conds.iter().any(|(c, _)| c.is_empty()) || uncond.is_empty() {
            return Err(EngineError::param(
                "prompt",
                "(no embeddings)",
                "at least one schedule entry",
            ));
        }
        let cfg = settings.cfg_scale;
        let last_unet_out: RefCell<Option<Tensor>> = RefCell::new(None);
        let calls = std::cell::Cell::new(0usize);
        let cond_ends: Vec<Vec<usize>> = conds
            .iter()
            .map(|(c, _)| c.iter().map(|(end, _)| *end).collect())
            .collect();
        let uncond_ends: Vec<usize> = uncond.iter().map(|(end, _)| *end).collect();

        // Guided model output for a model input already scaled for the UNet. A1111 counts
        // model calls to pick each prompt's scheduled embedding.
        let guided_eps = |model_input: &Tensor, timestep: f64| -> Result<Tensor, EngineError> {
            let call = calls.get();
            calls.set(call + 1);
            let scheduled: Vec<Tensor> = conds
                .iter()
                .zip(&cond_ends)
                .map(|((c, _), ends)| c[conditioning::entry_for_call(ends, call)].1.clone())
                .collect();
            // SDXL conditionings carry a pooled embedding beside the token context.
            let split = scheduled
                .iter()
                .map(|t| self.split_cond(t))
                .collect::<Result<Vec<_>, _>>()?;
            let (contexts, pooled): (Vec<Tensor>, Vec<Option<Tensor>>) = split.into_iter().unzip();
            // AND parts of different chunk counts are padded to the longest, as A1111's
            // reconstruct_multicond_batch does.
            let c = if contexts.len() == 1 {
                contexts
            } else {
                composable::pad_to_longest(&contexts)?
            };
            let (u, u_pooled) =
                self.split_cond(&uncond[conditioning::entry_for_call(&uncond_ends, call)].1)?;
            // Batch order [uncond, cond…], as diffusers stacks them; prompts of different
            // chunk counts run as two batches, as A1111 does without padding.
            let parts = c.len();
            let out = if c[0].dim(1)? == u.dim(1)? {
                let mut context = vec![u.clone()];
                context.extend(c.iter().cloned());
                let mut all_pooled = vec![u_pooled];
                all_pooled.extend(pooled);
                let context = Tensor::cat(&context, 0)?;
                let batch = Tensor::cat(&vec![model_input; parts + 1], 0)?;
                self.run_unet(&batch, timestep, &context, &all_pooled)?
            } else {
                let out_u = self.run_unet(model_input, timestep, &u, &[u_pooled])?;
                let context = Tensor::cat(&c, 0)?;
                let batch = Tensor::cat(&vec![model_input; parts], 0)?;
                let out_c = self.run_unet(&batch, timestep, &context, &pooled)?;
                Tensor::cat(&[out_u, out_c], 0)?
            };
            batch::note_unet_calls(if c[0].dim(1)? == u.dim(1)? { 1 } else { 2 });
            // A batch of n images (see [`batch`]) has n rows per part: `[uncond × n,
            // cond_1 × n, …]`, each image's rows in the same order.
            let n = model_input.dim(0)?;
            let out_uncond = out.i(0..n)?;
            let outs: Vec<Tensor> = (1..=parts)
                .map(|i| out.i(i * n..(i + 1) * n))
                .collect::<Result<_, _>>()?;
            let weighted: Vec<(&Tensor, f64)> =
                outs.iter().zip(conds.iter().map(|(_, w)| *w)).collect();
            let guided = composable::combine(&out_uncond, &weighted, cfg)?;
            *last_unet_out.borrow_mut() = Some(out);
            Ok(guided)
        };

        let mut on_step = |info: StepInfo<'_>| -> Result<bool, EngineError> {
            let unet_out = last_unet_out.borrow();
            let unet_out = unet_out
                .as_ref()
                .expect("the model runs before every step ends");
            Ok(observe(StepTrace {
                step: info.step,
                total: info.total,
                unet_out,
                latents: info.latents,
            }))
        };

        if settings.sampler == sampler::Sampler::UniPc {
            return self.run_unipc(settings, noise, partial, &guided_eps, &mut on_step);
        }
        match settings.sampler.algorithm() {
            Some(algorithm) => {
                let mut sigmas = settings.sigmas(&self.schedule)?;
                // A1111 bounds the Brownian trees by the full schedule, also for img2img.
                let trees = match seeds {
                    Some(seeds) if settings.sampler.brownian_noise() => {
                        Some(brownian_trees(noise, &sigmas, seeds)?)
                    }
                    _ => None,
                };
                let x = match partial {
                    None => noise.affine(sigmas[0] as f64, 0.0)?,
                    Some((init, t_enc)) => {
                        let first = super::super::hires::first_sigma_index(settings.steps, t_enc)
                            .min(sigmas.len() - 1);
                        sigmas.drain(..first);
                        (init + noise.affine(sigmas[0] as f64, 0.0)?)?
                    }
                };
                let dims = x.dims().to_vec();
                let device = x.device().clone();
                let mut trees = trees;
                let mut interval_noise = |sigma: f32, sigma_next: f32| match trees.as_mut() {
                    Some(trees) => {
                        let mut values = Vec::with_capacity(dims.iter().product());
                        for tree in trees.iter_mut() {
                            values.extend(tree.noise(sigma, sigma_next));
                        }
                        Ok(Tensor::from_vec(values, dims.clone(), &device)?)
                    }
                    None => fresh_noise(),
                };
                self.run_kdiffusion(
                    algorithm,
                    settings,
                    &sigmas,
                    x,
                    &guided_eps,
                    &mut interval_noise,
                    &mut on_step,
                )
            }
            None => {
                let mut timesteps = match settings.ddim {
                    DdimVariant::Diffusers => self.schedule.ddim_timesteps(settings.steps),
                    DdimVariant::A1111 => {
                        sampler::a1111_ddim_timesteps(self.schedule.len(), settings.steps)
                    }
                };
                let ac = self.schedule.alphas_cumprod();
                let x = match partial {
                    None => noise.clone(),
                    Some((init, t_enc)) => {
                        let t_enc = t_enc.min(timesteps.len() - 1);
                        let a = ac[timesteps[t_enc]];
                        timesteps.truncate(t_enc);
                        (init.affine(a.sqrt() as f64, 0.0)?
                            + noise.affine((1.0 - a).sqrt() as f64, 0.0)?)?
                    }
                };
                let mut eps_model = |x: &Tensor, t: usize| -> Result<Tensor, EngineError> {
                    let out = guided_eps(x, t as f64)?;
                    match self.prediction {
                        Prediction::Epsilon => Ok(out),
                        // eps = sqrt(a) * v + sqrt(1 - a) * x
                        Prediction::V => Ok((out.affine(ac[t].sqrt() as f64, 0.0)?
                            + x.affine((1.0 - ac[t]).sqrt() as f64, 0.0)?)?),
                    }
                };
                sampler::sample_ddim(
                    &mut eps_model,
                    x,
                    &self.schedule,
                    &timesteps,
                    settings.ddim,
                    settings.options.eta,
                    fresh_noise,
                    &mut on_step,
                )
            }
        }
    }

    /// One UNet evaluation of a batch; for SDXL with the batch's pooled embeddings (one per
    /// image, `[1, p]` each) and time ids for the batch's size in pixels.
    fn run_unet(
        &self,
        batch: &Tensor,
        timestep: f64,
        context: &Tensor,
        pooled: &[Option<Tensor>],
    ) -> Result<Tensor, EngineError> {
        let pooled: Option<Vec<Tensor>> = pooled.iter().cloned().collect();
        match pooled {
            Some(pooled) if !pooled.is_empty() => {
                let (n, _, h, w) = batch.dims4()?;
                let f = self.latent_downscale();
                let time_ids = sdxl::time_ids(n, h * f, w * f, batch.device())?;
                let pooled = Tensor::cat(&pooled, 0)?;
                let added = AddedCond {
                    pooled: &pooled,
                    time_ids: &time_ids,
                };
                Ok(self
                    .unet
                    .forward_with(batch, timestep, context, Some(added))?)
            }
            _ => Ok(self.unet.forward(batch, timestep, context)?),
        }
    }

    /// A k-diffusion sampler over the model wrapped as k-diffusion's `CompVisDenoiser`
    /// (`D(x, s) = x - s * eps(x * c_in, t(s))`) or `CompVisVDenoiser`
    /// (`D(x, s) = x / (s^2 + 1) - s / sqrt(s^2 + 1) * v(x * c_in, t(s))`), with
    /// `c_in = 1 / sqrt(s^2 + 1)`.
    #[allow(clippy::too_many_arguments)]
    fn run_kdiffusion(
        &self,
        algorithm: kdiffusion::Algorithm,
        settings: &SampleSettings,
        sigmas: &[f32],
        x: Tensor,
        guided_eps: &dyn Fn(&Tensor, f64) -> Result<Tensor, EngineError>,
        fresh_noise: &mut kdiffusion::IntervalNoiseFn<'_>,
        on_step: &mut sampler::StepFn<'_>,
    ) -> Result<Tensor, EngineError> {
        let mut denoise = |x: &Tensor, sigma: f32| -> Result<Tensor, EngineError> {
            let c_in = 1.0 / (sigma * sigma + 1.0).sqrt();
            let t = self.schedule.sigma_to_t(sigma) as f64;
            let out = guided_eps(&x.affine(c_in as f64, 0.0)?, t)?;
            match self.prediction {
                Prediction::Epsilon => Ok((x + out.affine(-sigma as f64, 0.0)?)?),
                Prediction::V => {
                    let s2 = sigma * sigma + 1.0;
                    let c_skip = 1.0 / s2;
                    let c_out = -sigma / s2.sqrt();
                    Ok((x.affine(c_skip as f64, 0.0)? + out.affine(c_out as f64, 0.0)?)?)
                }
            }
        };
        let options = settings.options.kdiffusion(settings.sampler);
        kdiffusion::sample_over_intervals(
            algorithm,
            &mut denoise,
            x,
            sigmas,
            &options,
            fresh_noise,
            on_step,
        )
    }
}

/// One [`BrownianTreeNoiseSampler`] per latent row (image), seeded with the image's seed and
/// bounded by `sigmas[sigmas > 0].min()` and `sigmas.max()`, as A1111's
/// `create_noise_sampler` builds k-diffusion's.
fn brownian_trees(
    noise: &Tensor,
    sigmas: &[f32],
    seeds: &[i64],
) -> Result<Vec<BrownianTreeNoiseSampler>, EngineError> {
    let dims = noise.dims();
    if dims.first() != Some(&seeds.len()) {
        return Err(EngineError::param(
            "seeds",
            seeds.len(),
            format!("one seed per latent row ({dims:?})"),
        ));
    }
    let per_image: usize = dims[1..].iter().product();
    let trees = seeds
        .iter()
        .map(|&seed| {
            let seed = u64::try_from(seed).map_err(|_| {
                EngineError::param(
                    "seed",
                    seed,
                    "a non-negative seed (the SDE samplers' Brownian tree is seeded through numpy's SeedSequence)",
                )
            })?;
            Ok(BrownianTreeNoiseSampler::for_sigmas(per_image, sigmas, seed))
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    Ok(trees)
}
