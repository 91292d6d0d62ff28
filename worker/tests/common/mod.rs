//! Helpers shared by the engine's parity tests: finding the reference kit, reading its
//! tensors, and measuring differences.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use safetensors::SafeTensors;

/// The reference kit (`SDFARM_REFERENCE_DIR`, else `../shared/reference` beside the
/// checkout), if it holds `marker`; callers say they are skipped when it does not.
pub fn reference_dir(marker: &str) -> Option<PathBuf> {
    let dir = match std::env::var_os("SDFARM_REFERENCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference"),
    };
    dir.join(marker).is_file().then_some(dir)
}

/// One reference `.safetensors` file of little-endian f32 tensors.
pub struct Cases {
    bytes: Vec<u8>,
}

impl Cases {
    pub fn load(path: &Path) -> Self {
        Cases {
            bytes: std::fs::read(path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
        }
    }

    pub fn tensor(&self, key: &str) -> Tensor {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let view = st
            .tensor(key)
            .unwrap_or_else(|e| panic!("reference key {key}: {e}"));
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Tensor::from_vec(values, view.shape(), &Device::Cpu).unwrap()
    }
}

pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    max_abs_value(&(a - b).unwrap())
}

pub fn max_abs_value(a: &Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

impl Cases {
    /// Whether the file has `key` (hidden case sets record some tensors for fewer steps).
    pub fn has(&self, key: &str) -> bool {
        SafeTensors::deserialize(&self.bytes)
            .unwrap()
            .tensor(key)
            .is_ok()
    }
}

/// A reference JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&raw).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// diffusers' `output_type='np'` image of a decode: `(x / 2 + 0.5).clamp(0, 1)`, NHWC.
pub fn float_image(decoded: &Tensor) -> Tensor {
    ((decoded / 2.0).unwrap() + 0.5)
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap()
        .permute((0, 2, 3, 1))
        .unwrap()
}

/// Bounds for the decode checks of [`check_decode`].
pub struct DecodeBounds {
    /// VAE decode of the reference's final latents against `vae_decoded_raw`.
    pub vae: f32,
    /// Float image of our final latents against `image`.
    pub image: f32,
    /// 8-bit levels (diffusers' rounding) between our image and the reference's.
    pub levels: i32,
}

/// Checks `<case>.vae_decoded_raw` (when the file has it) with the reference's final latents,
/// then `<case>.image` against the decode of `final_latents`, as floats and as 8-bit pixels.
pub fn check_decode(
    pipeline: &sdfarm_worker::engine::Pipeline,
    cases: &Cases,
    case: &str,
    final_latents: &Tensor,
    bounds: &DecodeBounds,
) {
    let raw_key = format!("{case}.vae_decoded_raw");
    if cases.has(&raw_key) {
        let final_ref = cases.tensor(&format!("{case}.final_latents"));
        let err = max_abs(
            &pipeline.decode(&final_ref).unwrap(),
            &cases.tensor(&raw_key),
        );
        println!("{case}: VAE decode of reference latents max abs error {err:.3e}");
        assert!(err < bounds.vae, "{case}: VAE decode differs by {err}");
    }
    let decoded = pipeline.decode(final_latents).unwrap();
    let image_ref = cases.tensor(&format!("{case}.image"));
    let float_err = max_abs(&float_image(&decoded), &image_ref);
    println!("{case}: float image max abs error {float_err:.3e}");
    assert!(
        float_err < bounds.image,
        "{case}: float image differs by {float_err}"
    );
    let (_, _, rgb) = sdfarm_worker::engine::pipeline::decoded_to_rgb8(&decoded).unwrap();
    let reference: Vec<f32> = image_ref.flatten_all().unwrap().to_vec1().unwrap();
    let levels = rgb
        .iter()
        .zip(&reference)
        .map(|(&ours, &r)| (ours as i32 - (r * 255.0).round_ties_even() as i32).abs())
        .max()
        .unwrap();
    println!("{case}: image max error {levels} levels of 255");
    assert!(
        levels <= bounds.levels,
        "{case}: image differs by {levels}/255"
    );
}
