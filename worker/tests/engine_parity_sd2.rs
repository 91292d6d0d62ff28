//! Pipeline parity against diffusers on the shared tiny-sd2 reference: an SD 2.x-style model
//! with v-prediction, OpenCLIP's exact GELU in the text encoder, pad id 0, linear
//! projections and per-block attention heads in the UNet.
//!
//! The reference kit lives outside the repository (`../shared/reference`, or
//! `SDFARM_REFERENCE_DIR`); without it these tests print a note and pass.
//!
//! Tolerances: the README measured torch against itself at up to ~6e-6 on text embeddings,
//! ~5e-6 on a UNet output, ~1.6e-5 on latents up to 32 and ~4e-6 on the decoded image; the
//! bounds below sit a few times above that, and the 8-bit image must be within one level.

mod common;
use candle_core::{Device, Tensor};
use common::{check_decode, max_abs, max_abs_value, reference_dir, Cases, DecodeBounds};

use sdfarm_worker::engine::pipeline::Prediction;
use sdfarm_worker::engine::sampler::DdimVariant;
use sdfarm_worker::engine::torch_rng::TorchGenerator;
use sdfarm_worker::engine::{EngineError, Pipeline, SampleSettings, Sampler};

/// The file whose presence says the reference kit is there.
const REFERENCE_MARKER: &str = "tiny-sd2/pipeline_cases.safetensors";

#[test]
fn sd2_text_embeddings_match_diffusers() {
    let Some(dir) = reference_dir(REFERENCE_MARKER) else {
        println!("skipped: ../shared/reference not found");
        return;
    };
    let cases = Cases::load(&dir.join("tiny-sd2/pipeline_cases.safetensors"));
    let pipeline = Pipeline::load(&dir.join("tiny-sd2/diffusers")).unwrap();
    assert_eq!(pipeline.prediction(), Prediction::V);
    assert_eq!(pipeline.tokenizer().pad_id(), 0);
    for (key, text) in [("t00", "a photo of a cat"), ("t01", "")] {
        let ours = pipeline.encode_prompt(text, 0).unwrap();
        let reference = cases.tensor(&format!("text_embeds.{key}"));
        let err = max_abs(&ours, &reference);
        println!("tiny-sd2 text_embeds.{key} ({text:?}): max abs error {err:.3e}");
        assert!(err < 3e-5, "text embedding {key} differs by {err}");
    }
}

fn run_case(case: &str, sampler: Sampler) {
    let Some(dir) = reference_dir(REFERENCE_MARKER) else {
        println!("skipped: ../shared/reference not found");
        return;
    };
    let cases = Cases::load(&dir.join("tiny-sd2/pipeline_cases.safetensors"));
    let pipeline = Pipeline::load(&dir.join("tiny-sd2/diffusers")).unwrap();

    let latents_init = cases.tensor(&format!("{case}.latents_init"));
    let values = TorchGenerator::new(1234).randn(4 * 32 * 32);
    let ours_init = Tensor::from_vec(values, (1, 4, 32, 32), &Device::Cpu).unwrap();
    assert_eq!(max_abs(&ours_init, &latents_init), 0.0, "latents_init");

    let cond = pipeline.encode_prompt("a photo of a cat", 0).unwrap();
    let uncond = pipeline.encode_prompt("", 0).unwrap();
    let settings = SampleSettings {
        ddim: DdimVariant::Diffusers,
        ..SampleSettings::new(sampler, 10, 7.5)
    };
    let mut step_errors = Vec::new();
    let mut no_noise = || -> Result<Tensor, EngineError> { panic!("{case} draws no noise") };
    let final_latents = pipeline
        .sample(
            &settings,
            &cond,
            &uncond,
            &ours_init,
            &mut no_noise,
            &mut |trace| {
                let i = trace.step - 1;
                let unet_ref = cases.tensor(&format!("{case}.step_{i:02}.unet_out"));
                let latents_ref = cases.tensor(&format!("{case}.step_{i:02}.latents_after"));
                step_errors.push((
                    max_abs(trace.unet_out, &unet_ref),
                    max_abs(trace.latents, &latents_ref),
                    max_abs_value(&latents_ref),
                ));
                true
            },
        )
        .unwrap();
    assert_eq!(step_errors.len(), 10);
    for (i, (unet_err, latent_err, scale)) in step_errors.iter().enumerate() {
        println!(
            "{case} step {i}: v-prediction max abs error {unet_err:.3e}, latents {latent_err:.3e} \
             (|latents| up to {scale:.1})"
        );
    }
    assert!(
        step_errors[0].0 < 1e-4,
        "{case}: first UNet output differs by {}",
        step_errors[0].0
    );

    let final_ref = cases.tensor(&format!("{case}.final_latents"));
    let final_err = max_abs(&final_latents, &final_ref);
    let final_scale = max_abs_value(&final_ref);
    println!(
        "{case}: final latents max abs error {final_err:.3e} (relative {:.3e})",
        final_err / final_scale
    );
    assert!(
        final_err / final_scale < 1e-4,
        "{case}: final latents drift"
    );

    check_decode(
        &pipeline,
        &cases,
        case,
        &final_latents,
        &DecodeBounds {
            vae: 2e-5,
            image: 2e-5,
            levels: 1,
        },
    );
}

#[test]
fn sd2_ddim_pipeline_matches_diffusers() {
    run_case("cat_ddim", Sampler::Ddim);
}

#[test]
fn sd2_euler_pipeline_matches_diffusers() {
    run_case("cat_euler", Sampler::Euler);
}
