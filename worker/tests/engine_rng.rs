//! torch-compatible noise against `torch.randn` outputs recorded with torch 2.15 (AVX512 build).
//!
//! The fixtures are a copy of `shared/reference/rng` so this runs on a fresh clone.

use std::path::PathBuf;

use safetensors::SafeTensors;
use sdfarm_worker::engine::torch_rng::TorchGenerator;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rng")
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[test]
fn randn_matches_torch_bit_for_bit() {
    let dir = fixtures();
    let raw = std::fs::read(dir.join("torch_randn.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&raw).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let cases = index["cases"].as_array().unwrap();

    // Independent cases: one fresh generator each.
    let mut checked = 0;
    for case in cases {
        let key = case["key"].as_str().unwrap();
        if !key.starts_with("randn.") {
            continue;
        }
        let seed = case["seed"].as_u64().unwrap();
        let numel = case["numel"].as_u64().unwrap() as usize;
        let expected = f32s(tensors.tensor(key).unwrap().data());
        let got = TorchGenerator::new(seed).randn(numel);
        assert_bits_eq(key, &got, &expected);
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} independent cases found");

    // Sequences: one generator per sequence, state carried across draws (this covers the
    // cached Box-Muller value of the small path and the tail redraw of the blocked one).
    let sequences = index["sequences"].as_array().unwrap();
    assert!(!sequences.is_empty(), "no sequence cases");
    for sequence in sequences {
        let mut generator = TorchGenerator::new(sequence["seed"].as_u64().unwrap());
        for draw in sequence["draws"].as_array().unwrap() {
            let key = draw["key"].as_str().unwrap();
            let numel: usize = draw["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .product();
            let expected = f32s(tensors.tensor(key).unwrap().data());
            assert_bits_eq(key, &generator.randn(numel), &expected);
        }
    }
}

fn assert_bits_eq(key: &str, got: &[f32], expected: &[f32]) {
    assert_eq!(got.len(), expected.len(), "{key}: length");
    let mismatches: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != expected[i].to_bits())
        .collect();
    assert!(
        mismatches.is_empty(),
        "{key}: {} of {} values differ; first at {}: got {} expected {}",
        mismatches.len(),
        got.len(),
        mismatches[0],
        got[mismatches[0]],
        expected[mismatches[0]]
    );
}
