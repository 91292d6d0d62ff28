//! k-diffusion's `BrownianTreeNoiseSampler` (A1111's SDE-sampler noise) against the noise
//! torchsde recorded in `tests/fixtures/brownian/brownian_noise.json`
//! (`tests/fixtures/brownian/make_fixture.py` writes it): every recorded call of every
//! sampler for every seed, plus numpy's `SeedSequence` on known values.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use sdfarm_worker::engine::brownian::{python_round, BrownianTreeNoiseSampler, SeedSequence};
use sdfarm_worker::engine::hires::first_sigma_index;
use sdfarm_worker::engine::kdiffusion::{self, Algorithm, Options};
use sdfarm_worker::engine::torch_rng::TorchGenerator;
use sdfarm_worker::engine::{EngineError, Pipeline, SampleSettings, Sampler};
use sdfarm_worker::models::write_tiny_model;
use serde_json::Value;

fn fixture() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/brownian/brownian_noise.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32_of(v: &Value, what: &str) -> f32 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number")) as f32
}

fn hex_f32s(hex: &str) -> Vec<f32> {
    assert_eq!(
        hex.len() % 8,
        0,
        "noise hex length {} is not whole f32s",
        hex.len()
    );
    (0..hex.len() / 8)
        .map(|i| f32::from_bits(u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).unwrap()))
        .collect()
}

#[test]
fn brownian_tree_noise_matches_torchsde() {
    let fx = fixture();
    let seeds: Vec<u64> = fx["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    let numel: usize = fx["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .product();
    let sigmas: Vec<f32> = fx["sigmas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| f32_of(s, "sigma"))
        .collect();
    let samplers = fx["samplers"].as_object().expect("samplers object");
    assert!(!samplers.is_empty(), "fixture has no sampler records");
    let mut checked = 0usize;
    let mut worst = 0f32;
    for (name, calls) in samplers {
        let calls = calls.as_array().unwrap();
        assert!(!calls.is_empty(), "{name}: no calls recorded");
        for (image, &seed) in seeds.iter().enumerate() {
            let mut ns = BrownianTreeNoiseSampler::for_sigmas(numel, &sigmas, seed);
            for (k, call) in calls.iter().enumerate() {
                let sigma = f32_of(&call["sigma"], "sigma");
                let sigma_next = f32_of(&call["sigma_next"], "sigma_next");
                let want = hex_f32s(call["noise"][image].as_str().unwrap());
                assert_eq!(want.len(), numel);
                let got = ns.noise(sigma, sigma_next);
                let call_worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0f32, f32::max);
                if call_worst > 0.0 {
                    println!("{name}, seed {seed}, call {k} ({sigma} -> {sigma_next}): largest difference {call_worst:e}");
                }
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    let diff = (g - w).abs();
                    worst = worst.max(diff);
                    assert!(
                        diff <= 1e-6,
                        "{name}, seed {seed}, call {k} ({sigma} -> {sigma_next}), element {j}: {g} vs torchsde {w}"
                    );
                }
                checked += 1;
            }
        }
    }
    println!("{checked} noise draws match, largest difference {worst:e}");
}

/// sdfarm's DPM++ 2M SDE and DPM++ SDE, with the Brownian-tree noise source, ask for the
/// (sigma, sigma_next) pairs k-diffusion passed to its noise sampler and get its noise.
/// DPM++ SDE's intermediate sigmas come from float32 `exp(-t)` / `-log(sigma)`, where torch's
/// vectorised exp/log and Rust's can differ by an ulp, so pairs are compared to 1e-6
/// (relative) and the noise to 1e-6.
#[test]
fn samplers_draw_the_recorded_noise() {
    let fx = fixture();
    let seeds: Vec<u64> = fx["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    let numel: usize = fx["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .product();
    let sigmas: Vec<f32> = fx["sigmas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| f32_of(s, "sigma"))
        .collect();
    let samplers = fx["samplers"].as_object().expect("samplers object");
    let (mut exact_pairs, mut pairs) = (0usize, 0usize);
    for (name, calls) in samplers {
        let algorithm = match name.as_str() {
            "DPM++ 2M SDE" => Algorithm::Dpmpp2mSde,
            "DPM++ SDE" => Algorithm::DpmppSde,
            other => panic!("fixture sampler {other} has no sdfarm algorithm mapped here"),
        };
        let calls = calls.as_array().unwrap();
        for (image, &seed) in seeds.iter().enumerate() {
            let mut tree = BrownianTreeNoiseSampler::for_sigmas(numel, &sigmas, seed);
            let x = Tensor::ones(numel, DType::F32, &Device::Cpu).unwrap();
            let mut denoise = |x: &Tensor, _sigma: f32| -> Result<Tensor, EngineError> {
                Ok(x.affine(0.5, 0.0)?)
            };
            let mut k = 0usize;
            let mut noise = |sigma: f32, sigma_next: f32| -> Result<Tensor, EngineError> {
                let call = calls.get(k).unwrap_or_else(|| {
                    panic!("{name}: more draws than the {} recorded", calls.len())
                });
                let (ws, wn) = (
                    f32_of(&call["sigma"], "sigma"),
                    f32_of(&call["sigma_next"], "sigma_next"),
                );
                for (got, want) in [(sigma, ws), (sigma_next, wn)] {
                    assert!(
                        (got - want).abs() <= 1e-6 * want.abs(),
                        "{name}: draw {k} asked for ({sigma}, {sigma_next}), k-diffusion for ({ws}, {wn})"
                    );
                }
                pairs += 1;
                exact_pairs += usize::from(sigma == ws && sigma_next == wn);
                let got = tree.noise(sigma, sigma_next);
                let want = hex_f32s(call["noise"][image].as_str().unwrap());
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-6,
                        "{name}, seed {seed}, draw {k}, element {j}: {g} vs torchsde {w}"
                    );
                }
                k += 1;
                Ok(Tensor::from_vec(got, numel, &Device::Cpu)?)
            };
            let options = Options {
                eta: 1.0,
                ..Options::default()
            };
            kdiffusion::sample_over_intervals(
                algorithm,
                &mut denoise,
                x,
                &sigmas,
                &options,
                &mut noise,
                &mut |_| Ok(true),
            )
            .unwrap();
            assert_eq!(k, calls.len(), "{name}: number of noise draws");
        }
    }
    println!("{pairs} draws, {exact_pairs} with bit-identical sigmas");
}

#[test]
fn sampler_bounds_are_a1111s() {
    let fx = fixture();
    let sigmas: Vec<f32> = fx["sigmas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| f32_of(s, "sigma"))
        .collect();
    let min = sigmas
        .iter()
        .copied()
        .filter(|&s| s > 0.0)
        .fold(f32::INFINITY, f32::min);
    let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(min, f32_of(&fx["sigma_min"], "sigma_min"));
    assert_eq!(max, f32_of(&fx["sigma_max"], "sigma_max"));
}

#[test]
fn python_round_ties_to_even_on_the_binary_value() {
    // 0.0078125 is exactly halfway between 0.007812 and 0.007813.
    assert_eq!(python_round(0.0078125, 6), 0.007812);
    assert_eq!(python_round(14.614643096923828, 6), 14.614643);
}

#[test]
fn seed_sequence_matches_numpy() {
    let fx = fixture();
    let cases = fx["seed_sequences"]
        .as_array()
        .expect("seed_sequences array");
    assert!(!cases.is_empty(), "fixture has no SeedSequence cases");
    for case in cases {
        let entropy = case["entropy"].as_u64().unwrap() as u128;
        let key: Vec<u128> = case["spawn_key"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_u64().unwrap() as u128)
            .collect();
        let pool = case["pool_size"].as_u64().unwrap() as usize;
        let want: Vec<u32> = case["state"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = SeedSequence::new(entropy, &key, pool).generate_state(want.len());
        assert_eq!(
            got, want,
            "SeedSequence(entropy={entropy}, spawn_key={key:?}, pool_size={pool})"
        );
    }
}

/// The pipeline's SDE samplers, given the image seeds, take their noise from each image's
/// Brownian tree bounded by the full schedule (also for a partial, img2img-style denoise) and
/// never from the image generator: the result equals a run fed those tree draws explicitly.
#[test]
fn pipeline_sde_samplers_draw_from_the_image_seed_tree() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path()).unwrap();
    let pipeline = Pipeline::load(dir.path()).unwrap();
    let cond = vec![(1usize, pipeline.encode_prompt("a red cat", 0).unwrap())];
    let uncond = vec![(1usize, pipeline.encode_prompt("", 0).unwrap())];
    let shape = pipeline.latent_shape(64, 64).unwrap();
    let numel: usize = shape.iter().product();
    let device = pipeline.device().clone();
    let latents = |seed: u64| {
        Tensor::from_vec(
            TorchGenerator::new(seed).randn(numel),
            shape.to_vec(),
            &device,
        )
        .unwrap()
    };
    let init = latents(99);
    let mut runs = 0;
    for sampler in [Sampler::Dpmpp2mSde, Sampler::Dpmpp3mSde] {
        for seed in [5u64, (1 << 32) + 9] {
            for partial in [None, Some((&init, 3usize))] {
                let settings = SampleSettings::new(sampler, 6, 5.0);
                let noise = latents(seed);
                let mut never = || -> Result<Tensor, EngineError> {
                    panic!("{sampler:?} drew noise from the image generator")
                };
                let seeded = pipeline
                    .sample_composable_seeded(
                        &settings,
                        &[(&cond, 1.0)],
                        &uncond,
                        &noise,
                        partial,
                        &[seed as i64],
                        &mut never,
                        &mut |_| true,
                    )
                    .unwrap();

                // The same run with the tree's draws supplied in k-diffusion's call order.
                let full = settings.sigmas(pipeline.schedule()).unwrap();
                let first = partial.map_or(0, |(_, t_enc)| {
                    first_sigma_index(settings.steps, t_enc).min(full.len() - 1)
                });
                let run = &full[first..];
                let mut tree = BrownianTreeNoiseSampler::for_sigmas(numel, &full, seed);
                let mut draws = (0..run.len() - 1)
                    .filter(|&i| run[i + 1] > 0.0)
                    .map(|i| tree.noise(run[i], run[i + 1]))
                    .collect::<Vec<_>>()
                    .into_iter();
                let mut explicit = || -> Result<Tensor, EngineError> {
                    let values = draws.next().expect("more draws than steps");
                    Ok(Tensor::from_vec(values, shape.to_vec(), &device)?)
                };
                let fed = pipeline
                    .sample_composable(
                        &settings,
                        &[(&cond, 1.0)],
                        &uncond,
                        &noise,
                        partial,
                        &mut explicit,
                        &mut |_| true,
                    )
                    .unwrap();
                assert_eq!(draws.len(), 0, "{sampler:?}: not every tree draw was used");
                let diff = (&seeded - &fed)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .max(0)
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert_eq!(
                    diff, 0.0,
                    "{sampler:?}, seed {seed}, partial {}: seeded run differs from the tree's draws",
                    partial.is_some()
                );
                runs += 1;
            }
        }
    }
    println!("{runs} pipeline runs take the Brownian tree's noise");
}
