//! Batched rendering: [`Engine::render_batch`] renders tasks that share one pass (see
//! [`crate::render::batch_key`]) as one batch — one UNet call per model call for all images —
//! each image identical to rendering it alone (see `chain/batch.rs` for what stays per image).
//!
//! What runs batched: txt2img and img2img passes and the hires fix's second pass. A set of
//! requests that do not share a model, LoRA set, VAE, clip skip and img2img input after
//! loading renders one by one. Images whose prompts encode to different token lengths share
//! the batch but run as separate passes.

use std::cell::Cell;
use std::sync::Arc;

use sdfarm_proto::RenderParams;

use super::chain::{self, BatchImage};
use super::{Engine, EngineError, RenderedImage};

thread_local! {
    static UNET_CALLS: Cell<u64> = const { Cell::new(0) };
}

/// Counts UNet evaluations made on this thread (each may hold many images).
pub(crate) fn note_unet_calls(calls: u64) {
    UNET_CALLS.with(|c| c.set(c.get() + calls));
}

/// UNet evaluations made on the calling thread so far. Renders run on the thread that calls
/// [`Engine::render`] / [`Engine::render_batch`], so the difference around a render is the
/// number of UNet calls it made — how tests see that a batch ran as one pass.
pub fn unet_calls_on_this_thread() -> u64 {
    UNET_CALLS.with(Cell::get)
}

impl Engine {
    /// Renders requests that share one pass; one result per request, in order, each as
    /// [`Engine::render`] gives it alone. `on_step` reports the batch's steps.
    ///
    /// Requests that cannot share a pass render one after the other, as does the whole batch
    /// when the batched pass fails for another reason than cancellation, so each request
    /// gets its own error.
    pub fn render_batch(
        &self,
        params: &[RenderParams],
        on_step: &mut dyn FnMut(u32, u32) -> bool,
    ) -> Vec<Result<RenderedImage, EngineError>> {
        let one_by_one = |on_step: &mut dyn FnMut(u32, u32) -> bool| {
            params
                .iter()
                .map(|p| self.render(p, on_step))
                .collect::<Vec<_>>()
        };
        if params.len() < 2 {
            return one_by_one(on_step);
        }
        match self.render_together(params, on_step) {
            Some(Ok(images)) => images.into_iter().map(Ok).collect(),
            Some(Err(EngineError::Cancelled)) => {
                params.iter().map(|_| Err(EngineError::Cancelled)).collect()
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "batched pass failed; rendering its images one by one");
                one_by_one(on_step)
            }
            None => one_by_one(on_step),
        }
    }

    /// The batched pass, or `None` when the requests cannot share it.
    fn render_together(
        &self,
        params: &[RenderParams],
        on_step: &mut dyn FnMut(u32, u32) -> bool,
    ) -> Option<Result<Vec<RenderedImage>, EngineError>> {
        let mut prepared = Vec::with_capacity(params.len());
        for p in params {
            // A request that does not prepare reports its own error when rendered alone.
            prepared.push(self.prepare(p).ok()?);
        }
        let head = &prepared[0];
        let shared = prepared.iter().all(|p| {
            Arc::ptr_eq(&p.pipeline, &head.pipeline)
                && p.vae_ref.as_ref().map(|v| &v.path) == head.vae_ref.as_ref().map(|v| &v.path)
                && p.clip_skip == head.clip_skip
                && p.params.init_image == head.params.init_image
                && crate::render::batchable(&p.params, &head.params)
        });
        if !shared {
            return None;
        }
        Some(self.render_prepared(prepared, on_step))
    }

    fn render_prepared(
        &self,
        prepared: Vec<super::Prepared>,
        on_step: &mut dyn FnMut(u32, u32) -> bool,
    ) -> Result<Vec<RenderedImage>, EngineError> {
        let head = &prepared[0];
        // Each image records the embeddings its own prompts use ("TI hashes").
        let embeddings = prepared
            .iter()
            .map(|_| {
                self.resolver
                    .embeddings_for(head.pipeline.tokenizer(), head.pipeline.device())
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        let images: Vec<BatchImage<'_>> = prepared
            .iter()
            .zip(&embeddings)
            .map(|(p, e)| BatchImage {
                params: &p.params,
                embeddings: e,
            })
            .collect();
        let pixels = chain::render_pixels_batch(
            &head.pipeline,
            &images,
            head.init_image.as_ref(),
            head.clip_skip,
            &|latents| head.decode(latents),
            on_step,
        )?;
        drop(images);
        prepared
            .into_iter()
            .zip(&embeddings)
            .zip(pixels)
            .map(|((prep, e), (width, height, rgb))| self.finish(prep, e, width, height, rgb))
            .collect()
    }
}
