//! k-diffusion's `BrownianTreeNoiseSampler` (A1111's SDE-sampler noise) against the noise
//! torchsde recorded in `tests/fixtures/brownian/brownian_noise.json`
//! (`tests/fixtures/brownian/make_fixture.py` writes it): every recorded call of every
//! sampler for every seed, plus numpy's `SeedSequence` on known values.

use std::path::Path;

use sdfarm_worker::engine::brownian::{python_round, BrownianTreeNoiseSampler, SeedSequence};
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
