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
