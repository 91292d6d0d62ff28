//! What the worker loop renders with, and which leased tasks may share one pass.
//!
//! [`Renderer`] is the candle [`Engine`] in production; benchmarks and tests of the loop
//! put an engine of fixed duration behind it, so the loop's own cost can be measured apart
//! from rendering.

use sdfarm_proto::RenderParams;

use crate::engine::{Engine, EngineError, RenderedImage};

/// Renders images for the worker loop. Blocking and CPU (or GPU) heavy: the loop calls it
/// from a blocking thread.
pub trait Renderer: Send + Sync + 'static {
    /// Renders one image. `on_step(step, total)` runs after every sampler step (1-based);
    /// returning `false` stops the render with [`EngineError::Cancelled`].
    fn render(
        &self,
        params: &RenderParams,
        on_step: &mut dyn FnMut(u32, u32) -> bool,
    ) -> Result<RenderedImage, EngineError>;

    /// Renders images that share one pass (see [`batch_key`]); one result per image, in
    /// order, each identical to rendering that image alone. `on_step` reports the batch's
    /// steps. This default renders them one after the other.
    fn render_batch(
        &self,
        params: &[RenderParams],
        on_step: &mut dyn FnMut(u32, u32) -> bool,
    ) -> Vec<Result<RenderedImage, EngineError>> {
        params.iter().map(|p| self.render(p, on_step)).collect()
    }

    /// Model references held in memory, for the coordinator's affinity.
    fn loaded_models(&self) -> Vec<String>;

    /// Model references on disk that load without a download (reported with
    /// [`Renderer::loaded_models`]).
    fn cached_models(&self) -> Vec<String> {
        Vec::new()
    }

    /// Starts bringing a leased task's model onto disk in the background, so it is there
    /// when the task's turn comes.
    fn prefetch(&self, _model: &str) {}
}

impl Renderer for Engine {
    fn render(
        &self,
        params: &RenderParams,
        on_step: &mut dyn FnMut(u32, u32) -> bool,
    ) -> Result<RenderedImage, EngineError> {
        Engine::render(self, params, on_step)
    }

    fn render_batch(
        &self,
        params: &[RenderParams],
        on_step: &mut dyn FnMut(u32, u32) -> bool,
    ) -> Vec<Result<RenderedImage, EngineError>> {
        Engine::render_batch(self, params, on_step)
    }

    fn loaded_models(&self) -> Vec<String> {
        Engine::loaded_models(self)
    }

    fn cached_models(&self) -> Vec<String> {
        self.resolver().cached_models()
    }

    fn prefetch(&self, model: &str) {
        Engine::prefetch(self, model)
    }
}

/// What tasks must share to be rendered in one batch: every render parameter except the
/// per-image ones — the seed, the variation seed, the position in the A1111 batch and the
/// prompts. Two tasks with equal keys run the same model, size, steps, sampler, schedule, CFG,
/// LoRA set (the `<lora:…>` tags of both prompts, in order), hires and img2img settings; their
/// noise and their prompts' conditioning (prompt-editing schedules and hires prompts
/// included) are per image.
pub fn batch_key(params: &RenderParams) -> RenderParams {
    RenderParams {
        seed: 0,
        subseed: 0,
        batch_index: 0,
        prompt: format!(
            "{}{}",
            networks(&params.prompt),
            networks(&params.negative_prompt)
        ),
        negative_prompt: String::new(),
        hr_prompt: String::new(),
        hr_negative_prompt: String::new(),
        // Dynamic-prompt bookkeeping, not read by the renderer.
        prompt_template: String::new(),
        prompt_choices: Vec::new(),
        ..params.clone()
    }
}

/// The LoRA networks a prompt activates, as one string; a prompt whose tags do not parse is
/// kept whole, so it only batches with the same prompt (rendering reports the error).
fn networks(prompt: &str) -> String {
    match crate::models::lora::extract_tags(prompt) {
        Ok((_, tags)) => tags
            .iter()
            .map(|t| format!("<lora:{}:{}:{}>", t.name, t.te_weight, t.unet_weight))
            .collect(),
        Err(_) => prompt.to_string(),
    }
}

/// Whether two tasks may share one pass.
pub fn batchable(a: &RenderParams, b: &RenderParams) -> bool {
    batch_key(a) == batch_key(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: i64) -> RenderParams {
        RenderParams {
            prompt: "a lighthouse".into(),
            seed,
            steps: 4,
            sampler_name: "Euler".into(),
            cfg_scale: 7.0,
            width: 64,
            height: 64,
            model: "builtin:tiny-sd".into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_per_image_seeds_and_prompts_may_differ() {
        let a = params(1);
        let b = RenderParams {
            subseed: 9,
            batch_index: 3,
            prompt: "a [red:blue:2] barn, (detailed:1.3)".into(),
            negative_prompt: "blurry".into(),
            ..params(2)
        };
        assert!(batchable(&a, &b));
        let with_lora = |prompt: &str, negative: &str| RenderParams {
            prompt: prompt.into(),
            negative_prompt: negative.into(),
            ..params(3)
        };
        assert!(batchable(
            &with_lora("a cat <lora:x:0.5>", ""),
            &with_lora("<lora:x:0.5> a dog", "ugly")
        ));
        assert!(!batchable(
            &with_lora("a cat <lora:x:0.5>", ""),
            &with_lora("a cat <lora:x:0.7>", "")
        ));
        let differs = [
            RenderParams {
                cfg_scale: 5.0,
                ..params(2)
            },
            RenderParams {
                prompt: "a lighthouse <lora:x:1>".into(),
                ..params(2)
            },
            RenderParams {
                steps: 5,
                ..params(2)
            },
            RenderParams {
                width: 128,
                ..params(2)
            },
            RenderParams {
                enable_hr: true,
                ..params(2)
            },
            RenderParams {
                subseed_strength: 0.5,
                ..params(2)
            },
        ];
        for other in differs {
            assert!(
                !batchable(&a, &other),
                "{other:?} should not batch with {a:?}"
            );
        }
    }
}
