//! Pipeline parity against diffusers on the shared tiny-sd reference.
//!
//! The reference kit lives outside the repository (`../shared/reference`, or
//! `SDFARM_REFERENCE_DIR`); without it these tests print a note and pass.
//!
//! Tolerances: the reference README measured torch against itself under different CPU settings
//! at up to ~2.7e-6 on a UNet output, ~1e-4 on final latents (values up to 61) and ~2e-6 on
//! the float image. The bounds below sit a few times above that, so they catch real
//! regressions (the tanh GELU of candle's stock UNet alone gives 5e-5 on step 0), and the
//! final 8-bit image must be within one level, as rendered PNGs are compared.

mod common;
use candle_core::{Device, Tensor};
use common::{max_abs, max_abs_value, reference_dir, Cases};

use sdfarm_worker::engine::philox::PhiloxGenerator;
use sdfarm_worker::engine::pipeline::decoded_to_rgb8;
use sdfarm_worker::engine::sampler::DdimVariant;
use sdfarm_worker::engine::torch_rng::TorchGenerator;
use sdfarm_worker::engine::{EngineError, Pipeline, SampleSettings, Sampler};

/// The file whose presence says the reference kit is there.
const REFERENCE_MARKER: &str = "tiny-sd/pipeline_cases.safetensors";

#[test]
fn text_embeddings_match_diffusers() {
    let Some(dir) = reference_dir(REFERENCE_MARKER) else {
        println!("skipped: ../shared/reference not found");
        return;
    };
    let cases = Cases::load(&dir.join("tiny-sd/pipeline_cases.safetensors"));
    let pipeline = Pipeline::load(&dir.join("tiny-sd/diffusers")).unwrap();
    for (key, text) in [("t00", "a photo of a cat"), ("t01", "")] {
        let ours = pipeline.encode_prompt(text, 0).unwrap();
        let reference = cases.tensor(&format!("text_embeds.{key}"));
        let err = max_abs(&ours, &reference);
        println!("text_embeds.{key} ({text:?}): max abs error {err:.3e}");
        assert!(err < 1e-5, "text embedding {key} differs by {err}");
    }
}

/// Which generator made a case's initial latents (seed 1234, shape [1, 4, 32, 32]).
enum Noise {
    Torch,
    Philox,
}

fn run_case(file: &str, case: &str, sampler: Sampler, noise: Noise) {
    let Some(dir) = reference_dir(REFERENCE_MARKER) else {
        println!("skipped: ../shared/reference not found");
        return;
    };
    let cases = Cases::load(&dir.join("tiny-sd").join(file));
    let pipeline = Pipeline::load(&dir.join("tiny-sd/diffusers")).unwrap();

    let latents_init = cases.tensor(&format!("{case}.latents_init"));
    let values = match noise {
        Noise::Torch => TorchGenerator::new(1234).randn(4 * 32 * 32),
        Noise::Philox => PhiloxGenerator::new(1234).randn(4 * 32 * 32),
    };
    let ours_init = Tensor::from_vec(values, (1, 4, 32, 32), &Device::Cpu).unwrap();
    assert_eq!(max_abs(&ours_init, &latents_init), 0.0, "latents_init");

    let cond = pipeline.encode_prompt("a photo of a cat", 0).unwrap();
    let uncond = pipeline.encode_prompt("", 0).unwrap();
    // diffusers' DDIM evaluates every timestep down to alphas_cumprod[0]; A1111's skips t=1.
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
            "{case} step {i}: unet_out max abs error {unet_err:.3e}, latents {latent_err:.3e} \
             (|latents| up to {scale:.1})"
        );
    }
    // Step 0 sees identical inputs, so it measures the UNet alone.
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

    // The VAE alone, on the reference's own final latents.
    let decoded_ref = cases.tensor(&format!("{case}.vae_decoded_raw"));
    let vae_err = max_abs(&pipeline.decode(&final_ref).unwrap(), &decoded_ref);
    println!("{case}: VAE decode of reference latents max abs error {vae_err:.3e}");
    assert!(vae_err < 1e-5, "{case}: VAE decode differs by {vae_err}");

    // The whole chain, in 8-bit pixels.
    let decoded = pipeline.decode(&final_latents).unwrap();
    let image_ref = cases.tensor(&format!("{case}.image"));
    // The float image before 8-bit rounding, NHWC like the reference.
    let float_image = ((&decoded / 2.0).unwrap() + 0.5)
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap()
        .permute((0, 2, 3, 1))
        .unwrap();
    let float_err = max_abs(&float_image, &image_ref);
    println!("{case}: float image max abs error {float_err:.3e}");
    assert!(
        float_err < 1e-5,
        "{case}: float image differs by {float_err}"
    );

    let (width, height, rgb) = decoded_to_rgb8(&decoded).unwrap();
    assert_eq!((width, height), (64, 64));
    let image_ref: Vec<f32> = image_ref.flatten_all().unwrap().to_vec1().unwrap();
    let mut max_float_err = 0f32;
    let mut max_level_err = 0i32;
    for (&ours, &reference) in rgb.iter().zip(&image_ref) {
        max_float_err = max_float_err.max((ours as f32 / 255.0 - reference).abs());
        let reference_u8 = (reference * 255.0).round_ties_even() as i32;
        max_level_err = max_level_err.max((ours as i32 - reference_u8).abs());
    }
    println!(
        "{case}: image max error {max_level_err} levels of 255 (vs the float image {max_float_err:.3e})"
    );
    assert!(
        max_level_err <= 1,
        "{case}: image differs by {max_level_err}/255"
    );
}

#[test]
fn ddim_pipeline_matches_diffusers() {
    run_case(
        "pipeline_cases.safetensors",
        "cat_ddim",
        Sampler::Ddim,
        Noise::Torch,
    );
}

#[test]
fn euler_pipeline_matches_diffusers() {
    run_case(
        "pipeline_cases.safetensors",
        "cat_euler",
        Sampler::Euler,
        Noise::Torch,
    );
}

#[test]
fn nv_noise_ddim_pipeline_matches_diffusers() {
    run_case(
        "nv_cases.safetensors",
        "nv_seed1234_ddim",
        Sampler::Ddim,
        Noise::Philox,
    );
}

#[test]
fn nv_noise_euler_pipeline_matches_diffusers() {
    run_case(
        "nv_cases.safetensors",
        "nv_seed1234_euler",
        Sampler::Euler,
        Noise::Philox,
    );
}
