//! Pipeline parity against diffusers' `StableDiffusionXLPipeline` on the shared tiny-sdxl
//! reference, for every case in `tiny-sdxl/pipeline_cases.json`: text conditioning (two
//! encoders' penultimate layers, the pooled projection, zeros for an empty negative prompt),
//! time ids, every recorded step's UNet output and latents, the final latents, the VAE decode
//! and the image.
//!
//! The reference kit lives outside the repository (`../shared/reference`, or
//! `SDFARM_REFERENCE_DIR`); without it these tests print a note and pass.
//!
//! Each case names its diffusers scheduler class; the run drives the same schedule: Euler
//! over the case's own sigmas, starting from `latents_init * init_noise_sigma` (which
//! "leading" spacing makes `sqrt(sigma_max^2 + 1)`, not the first sigma), and DDIM over
//! diffusers' timesteps, checked against the case's.
//!
//! Tolerances, from the README's table of torch against itself for tiny-sdxl (max over 1
//! thread, AVX2 and scalar kernels): prompt and pooled embeddings ≤ 1.2e-5, UNet outputs
//! ≤ 2.2e-6, latents ≤ 3.8e-5 at values up to 38.2 (1e-6 relative), VAE decode ≤ 2.0e-6 and
//! image ≤ 1.1e-6. The bounds sit a few times above those: 3e-5 on embeddings, 2e-5 on a
//! UNet output, 1e-4 relative on latents (the errors compound over ten steps of a random,
//! non-denoising UNet), 2e-5 on the decode and the float image, one 8-bit level.

mod common;
use candle_core::{Device, Tensor};
use common::{check_decode, max_abs, max_abs_value, read_json, reference_dir, Cases, DecodeBounds};
use serde_json::Value;

use sdfarm_worker::engine::conditioning::NoEmbeddings;
use sdfarm_worker::engine::sampler::DdimVariant;
use sdfarm_worker::engine::sdxl;
use sdfarm_worker::engine::torch_rng::TorchGenerator;
use sdfarm_worker::engine::{EngineError, Pipeline, SampleSettings, Sampler};

/// The file whose presence says the reference kit is there.
const REFERENCE_MARKER: &str = "tiny-sdxl/pipeline_cases.safetensors";

const EMBED_BOUND: f32 = 3e-5;
const UNET_BOUND: f32 = 2e-5;
const LATENT_RELATIVE_BOUND: f32 = 1e-4;
const DECODE: DecodeBounds = DecodeBounds {
    vae: 2e-5,
    image: 2e-5,
    levels: 1,
};

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn usize_of(case: &Value, key: &str) -> usize {
    case[key]
        .as_u64()
        .unwrap_or_else(|| panic!("case field {key} missing")) as usize
}

/// The sampler and settings that reproduce a case's diffusers scheduler, and the factor the
/// unit noise must be scaled by so that the sampler's `noise * sigmas[0]` start equals
/// diffusers' `latents_init * init_noise_sigma`.
fn schedule_for(pipeline: &Pipeline, case: &Value, name: &str) -> (SampleSettings, f64) {
    let steps = usize_of(case, "steps");
    let cfg = case["guidance_scale"].as_f64().unwrap() as f32;
    let class = case["scheduler_class"].as_str().unwrap();
    let timesteps: Vec<usize> = f32s(&case["timesteps"])
        .into_iter()
        .map(|t| t as usize)
        .collect();
    match class {
        "EulerDiscreteScheduler" => {
            let sigmas = f32s(&case["scheduler_sigmas"]);
            let init = case["init_noise_sigma"].as_f64().unwrap();
            // The sampler evaluates the UNet at `sigma_to_t(sigma)`; it must land on the
            // case's discrete timesteps.
            for (sigma, t) in sigmas.iter().zip(&timesteps) {
                let ours = pipeline.schedule().sigma_to_t(*sigma);
                assert!(
                    (ours - *t as f32).abs() < 1e-2,
                    "{name}: sigma {sigma} maps to t {ours}, diffusers used {t}"
                );
            }
            let settings = SampleSettings {
                explicit_sigmas: Some(sigmas.clone()),
                ..SampleSettings::new(Sampler::Euler, steps, cfg)
            };
            (settings, init / sigmas[0] as f64)
        }
        "DDIMScheduler" => {
            let config = &case["scheduler_config"];
            assert_eq!(
                config["timestep_spacing"], "leading",
                "{name}: DDIM spacing"
            );
            assert_eq!(config["steps_offset"], 1, "{name}: DDIM steps_offset");
            let mut ours = pipeline.schedule().ddim_timesteps(steps);
            ours.reverse();
            assert_eq!(ours, timesteps, "{name}: DDIM timesteps");
            let settings = SampleSettings {
                ddim: DdimVariant::Diffusers,
                ..SampleSettings::new(Sampler::Ddim, steps, cfg)
            };
            (settings, 1.0)
        }
        other => panic!("{name}: scheduler class {other} has no sdfarm equivalent in this test"),
    }
}

fn run_case(pipeline: &Pipeline, cases: &Cases, case: &Value) {
    let name = case["name"].as_str().unwrap();
    let (height, width) = (usize_of(case, "height"), usize_of(case, "width"));
    let shape: Vec<usize> = f32s(&case["latents_shape"])
        .into_iter()
        .map(|d| d as usize)
        .collect();

    let latents_init = cases.tensor(&format!("{name}.latents_init"));
    let seed = case["latents_seed"].as_u64().unwrap();
    let numel = shape.iter().product();
    let noise =
        Tensor::from_vec(TorchGenerator::new(seed).randn(numel), shape, &Device::Cpu).unwrap();
    assert_eq!(max_abs(&noise, &latents_init), 0.0, "{name}: latents_init");

    // Text conditioning.
    let prompt = case["prompt"].as_str().unwrap();
    let cond = pipeline.encode_prompt(prompt, 0).unwrap();
    let (context, pooled) = pipeline.split_cond(&cond).unwrap();
    let pooled = pooled.expect("an SDXL pipeline gives pooled embeddings");
    let negative_text = case["negative_prompt"].as_str().unwrap_or("").to_string();
    // negative_prompt=None is diffusers' zeros; A1111 zeroes an all-empty negative prompt,
    // which is how sdfarm encodes a negative prompt. An explicit text (even '') is encoded.
    let as_negative = case["negative_is_zeros"].as_bool().unwrap();
    let (uncond, _) = pipeline
        .encode_texts_as(&[negative_text], 0, &NoEmbeddings, as_negative)
        .unwrap();
    let uncond = uncond.into_iter().next().unwrap();
    let (u_context, u_pooled) = pipeline.split_cond(&uncond).unwrap();
    for (key, ours) in [
        ("prompt_embeds", &context),
        ("pooled_prompt_embeds", &pooled),
        ("negative_prompt_embeds", &u_context),
        ("negative_pooled_prompt_embeds", &u_pooled.unwrap()),
    ] {
        let reference = cases.tensor(&format!("{name}.{key}"));
        let err = max_abs(ours, &reference);
        println!("{name}: {key} max abs error {err:.3e}");
        assert!(err < EMBED_BOUND, "{name}: {key} differs by {err}");
    }
    let f = pipeline.latent_downscale();
    let time_ids = sdxl::time_ids(2, height / f * f, width / f * f, &Device::Cpu).unwrap();
    let time_ids_ref = cases.tensor(&format!("{name}.add_time_ids"));
    assert_eq!(
        max_abs(&time_ids, &time_ids_ref),
        0.0,
        "{name}: add_time_ids"
    );

    // Sampling.
    let (settings, noise_scale) = schedule_for(pipeline, case, name);
    let start = noise.affine(noise_scale, 0.0).unwrap();
    let steps = settings.steps;
    let mut checked = (0, 0);
    let mut no_noise = || -> Result<Tensor, EngineError> { panic!("{name} draws no noise") };
    let final_latents = pipeline
        .sample(
            &settings,
            &cond,
            &uncond,
            &start,
            &mut no_noise,
            &mut |trace| {
                let i = trace.step - 1;
                let unet_key = format!("{name}.step_{i:02}.unet_out");
                if cases.has(&unet_key) {
                    let err = max_abs(trace.unet_out, &cases.tensor(&unet_key));
                    println!("{name} step {i}: unet_out max abs error {err:.3e}");
                    assert!(
                        err < UNET_BOUND,
                        "{name} step {i}: unet_out differs by {err}"
                    );
                    checked.0 += 1;
                }
                let latents_key = format!("{name}.step_{i:02}.latents_after");
                if cases.has(&latents_key) {
                    let reference = cases.tensor(&latents_key);
                    let err = max_abs(trace.latents, &reference);
                    let scale = max_abs_value(&reference).max(1.0);
                    println!(
                        "{name} step {i}: latents max abs error {err:.3e} (|x| up to {scale:.1})"
                    );
                    assert!(
                        err / scale < LATENT_RELATIVE_BOUND,
                        "{name} step {i}: latents differ by {err}"
                    );
                    checked.1 += 1;
                }
                true
            },
        )
        .unwrap();
    assert!(checked.0 >= 1, "{name}: no UNet output was compared");
    println!(
        "{name}: {steps} steps, {} UNet outputs and {} latents compared",
        checked.0, checked.1
    );

    let final_ref = cases.tensor(&format!("{name}.final_latents"));
    let err = max_abs(&final_latents, &final_ref);
    let scale = max_abs_value(&final_ref).max(1.0);
    println!("{name}: final latents max abs error {err:.3e} (|x| up to {scale:.1})");
    assert!(
        err / scale < LATENT_RELATIVE_BOUND,
        "{name}: final latents differ by {err}"
    );

    check_decode(pipeline, cases, name, &final_latents, &DECODE);
}

#[test]
fn sdxl_pipeline_cases_match_diffusers() {
    let Some(dir) = reference_dir(REFERENCE_MARKER) else {
        println!("skipped: ../shared/reference not found");
        return;
    };
    let root = dir.join("tiny-sdxl");
    let json = read_json(&root.join("pipeline_cases.json"));
    let cases = Cases::load(&root.join("pipeline_cases.safetensors"));
    let pipeline = Pipeline::load(&root.join("diffusers")).unwrap();
    assert!(pipeline.is_sdxl());
    assert_eq!(pipeline.vae_scaling_factor(), 0.13025);
    let list = json["cases"].as_array().expect("cases list");
    assert!(!list.is_empty(), "no cases in pipeline_cases.json");
    for case in list {
        run_case(&pipeline, &cases, case);
    }
}

#[test]
fn sdxl_tokenizers_pad_as_the_folders_say() {
    let Some(dir) = reference_dir(REFERENCE_MARKER) else {
        println!("skipped: ../shared/reference not found");
        return;
    };
    let root = dir.join("tiny-sdxl");
    let json = read_json(&root.join("pipeline_cases.json"));
    let tokenizer = sdfarm_worker::engine::tokenizer::PromptTokenizer::from_dir(
        &root.join("diffusers/tokenizer"),
    )
    .unwrap();
    let pad_2 = sdfarm_worker::engine::tokenizer::PromptTokenizer::from_dir(
        &root.join("diffusers/tokenizer_2"),
    )
    .unwrap()
    .pad_id();
    for case in json["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let ids = tokenizer.encode(prompt).unwrap();
        let expected: Vec<u32> = f32s(&case["input_ids_tokenizer"])
            .into_iter()
            .map(|v| v as u32)
            .collect();
        assert_eq!(ids, expected, "tokenizer ids for {prompt:?}");
        let expected_2: Vec<u32> = f32s(&case["input_ids_tokenizer_2"])
            .into_iter()
            .map(|v| v as u32)
            .collect();
        assert_eq!(
            sdxl::pad_after_end(&ids, pad_2),
            expected_2,
            "tokenizer_2 ids"
        );
    }
}

#[test]
fn unknown_unet_features_are_refused_by_name() {
    let Some(dir) = reference_dir(REFERENCE_MARKER) else {
        println!("skipped: ../shared/reference not found");
        return;
    };
    let config = read_json(&dir.join("tiny-sdxl/diffusers/unet/config.json"));
    let tmp = tempfile::tempdir().unwrap();
    for (key, value) in [
        ("addition_embed_type", serde_json::json!("text_image")),
        ("class_embed_type", serde_json::json!("timestep")),
        ("resnet_time_scale_shift", serde_json::json!("scale_shift")),
        (
            "mid_block_type",
            serde_json::json!("UNetMidBlock2DSimpleCrossAttn"),
        ),
    ] {
        let mut changed = config.clone();
        changed[key] = value;
        let path = tmp.path().join("config.json");
        std::fs::write(&path, serde_json::to_vec(&changed).unwrap()).unwrap();
        let err = sdfarm_worker::engine::config::unet_settings(&path).unwrap_err();
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
    let path = tmp.path().join("config.json");
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let settings = sdfarm_worker::engine::config::unet_settings(&path).unwrap();
    let text_time = settings.text_time.expect("text_time");
    assert_eq!(text_time.pooled_dim(), 8);
}
