//! A1111's "NV" Philox noise against `rng_philox.py` outputs (fixture copied from the shared
//! kit's `a1111/philox_randn.json`) and the tiny-sd NV latents.

use sdfarm_worker::engine::philox::PhiloxGenerator;
use sha2::{Digest, Sha256};

#[test]
fn matches_a1111_rng_philox() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/a1111/philox_randn.json");
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let cases = cases.as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let seed = case["seed"].as_u64().unwrap();
        let numel: usize = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .product();
        let mut generator = PhiloxGenerator::new(seed);
        for _ in 0..case["call_index"].as_u64().unwrap() {
            generator.randn(numel);
        }
        let values = generator.randn(numel);
        for (i, hex) in case["first_values_f32_hex"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let expected = u32::from_str_radix(hex.as_str().unwrap(), 16).unwrap();
            assert_eq!(values[i].to_bits(), expected, "seed {seed} value {i}");
        }
        if let Some(last) = case.get("last_values").and_then(|v| v.as_array()) {
            let tail = &values[numel - last.len()..];
            for (ours, expected) in tail.iter().zip(last) {
                assert_eq!(*ours, expected.as_f64().unwrap() as f32, "seed {seed} tail");
            }
        }
        if let Some(sum) = case.get("sum_f64").and_then(|v| v.as_f64()) {
            let ours: f64 = values.iter().map(|&v| v as f64).sum();
            assert!(
                (ours - sum).abs() < 1e-9,
                "seed {seed}: sum {ours} vs {sum}"
            );
        }
    }
}

/// The initial latents of the kit's NV pipeline cases, identified by their sha256.
#[test]
fn tiny_sd_nv_latents() {
    let values = PhiloxGenerator::new(1234).randn(4 * 32 * 32);
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(
        hex::encode(Sha256::digest(&bytes)),
        "cb011c7abf67ec4610fa81e2d5e712b0f1b49c02720c40e2d1e3a101b0098128"
    );
}
