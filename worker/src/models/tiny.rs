//! The built-in tiny model: SD 1.x architecture at toy size, with seeded random weights.
//!
//! It has the configuration of the shared reference `tiny-sd` (2-level UNet with 32/64
//! channels, 2-level VAE, 5-layer CLIP of width 32), so every code path of a real SD 1.x render
//! runs, in well under a second per step. The weights are noise, so the images are too; what
//! matters is that they are finite, vary with the seed and are identical everywhere.
//!
//! Determinism: the tensor list comes from building the networks against a recording
//! `VarBuilder` backend (so it always matches what the loader asks for), each tensor gets its own
//! torch-compatible generator seeded from a hash of its name, and the safetensors writer orders
//! tensors by name. Same bytes on every run and machine.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;
use safetensors::tensor::{Dtype as StDtype, TensorView};
use sha2::{Digest, Sha256};

use crate::engine::config;
use crate::engine::text_encoder::TextEncoder;
use crate::engine::torch_rng::TorchGenerator;
use crate::engine::unet::UNet;
use crate::engine::EngineError;

/// Config files of the tiny model, identical to the reference tiny-sd's.
const FILES: &[(&str, &[u8])] = &[
    (
        "model_index.json",
        include_bytes!("../../assets/tiny-sd/model_index.json"),
    ),
    (
        "scheduler/scheduler_config.json",
        include_bytes!("../../assets/tiny-sd/scheduler/scheduler_config.json"),
    ),
    (
        "text_encoder/config.json",
        include_bytes!("../../assets/tiny-sd/text_encoder/config.json"),
    ),
    (
        "unet/config.json",
        include_bytes!("../../assets/tiny-sd/unet/config.json"),
    ),
    (
        "vae/config.json",
        include_bytes!("../../assets/tiny-sd/vae/config.json"),
    ),
    (
        "tokenizer/tokenizer_config.json",
        include_bytes!("../../assets/tiny-sd/tokenizer/tokenizer_config.json"),
    ),
    (
        "tokenizer/special_tokens_map.json",
        include_bytes!("../../assets/tiny-sd/tokenizer/special_tokens_map.json"),
    ),
    (
        "tokenizer/tokenizer.json",
        include_bytes!("../../assets/clip-tokenizer.json"),
    ),
];

/// A `VarBuilder` backend that hands out zeros and remembers every tensor asked for.
#[derive(Default)]
struct Recorder {
    shapes: Arc<Mutex<BTreeMap<String, Vec<usize>>>>,
}

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.shapes
            .lock()
            .expect("recorder lock")
            .insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros(s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("tensor {name} requested without a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        // Makes the VAE attention pick the current diffusers names (to_q/to_k/to_v/to_out.0).
        true
    }
}

/// Builds `build` against a recorder and returns the tensors it asked for.
fn record(
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<()>,
) -> Result<BTreeMap<String, Vec<usize>>, EngineError> {
    let recorder = Recorder::default();
    let shapes = recorder.shapes.clone();
    build(VarBuilder::from_backend(
        Box::new(recorder),
        DType::F32,
        Device::Cpu,
    ))?;
    let shapes = shapes.lock().expect("recorder lock").clone();
    Ok(shapes)
}

/// Deterministic initial values for one tensor, shaped like a typical fresh network:
/// norms scale 1, biases 0, embeddings N(0, 0.02²), weight matrices and kernels
/// N(0, 1/(3·fan_in)) (the variance of torch's default uniform init).
fn init_values(name: &str, shape: &[usize]) -> Vec<f32> {
    let numel: usize = shape.iter().product();
    let leaf = name.rsplit('.').nth(1).unwrap_or("");
    let is_norm = leaf.contains("norm") || leaf.starts_with("ln");
    if name.ends_with(".bias") {
        return vec![0.0; numel];
    }
    if is_norm && shape.len() == 1 {
        return vec![1.0; numel];
    }
    let std = if name.contains("embedding") {
        0.02
    } else {
        let fan_in = if shape.is_empty() || shape[0] == 0 {
            1
        } else {
            numel / shape[0]
        };
        (1.0 / (3.0 * fan_in as f64)).sqrt() as f32
    };
    let digest = Sha256::digest(name.as_bytes());
    let seed = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    TorchGenerator::new(seed)
        .randn(numel)
        .into_iter()
        .map(|v| v * std)
        .collect()
}

fn write_safetensors(
    path: &Path,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<(), EngineError> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .iter()
        .map(|(name, shape)| {
            let bytes = init_values(name, shape)
                .into_iter()
                .flat_map(f32::to_le_bytes)
                .collect();
            (name.clone(), shape.clone(), bytes)
        })
        .collect();
    let views = data
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(StDtype::F32, shape.clone(), bytes)
                .map(|view| (name.clone(), view))
                .map_err(|e| EngineError::invalid_model(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| EngineError::invalid_model(path, format!("serialising: {e}")))?;
    std::fs::write(path, bytes).map_err(|e| EngineError::io(path, e))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, e))?;
    }
    std::fs::write(path, bytes).map_err(|e| EngineError::io(path, e))
}

/// Writes the deterministic tiny SD-1.x-architecture model into `dir` as a diffusers folder
/// (configs, tokenizer, and safetensors weights). `dir` is created if needed; existing files
/// are overwritten.
pub fn write_tiny_model(dir: &Path) -> Result<(), EngineError> {
    for (relative, bytes) in FILES {
        write_file(&dir.join(relative), bytes)?;
    }

    let clip_config = config::clip_settings(&dir.join("text_encoder/config.json"))?;
    let clip = record(|vb| TextEncoder::new(vb, &clip_config, 1e-5).map(|_| ()))?;

    let unet_settings = config::unet_settings(&dir.join("unet/config.json"))?;
    let unet = record(|vb| {
        UNet::new(
            vb,
            unet_settings.in_channels,
            unet_settings.out_channels,
            &unet_settings.config,
            unet_settings.text_time,
        )
        .map(|_| ())
    })?;

    let vae_settings = config::vae_settings(&dir.join("vae/config.json"))?;
    let vae = record(|vb| {
        AutoEncoderKL::new(
            vb,
            vae_settings.in_channels,
            vae_settings.out_channels,
            vae_settings.config.clone(),
        )
        .map(|_| ())
    })?;

    write_safetensors(&dir.join("text_encoder/model.safetensors"), &clip)?;
    write_safetensors(&dir.join("unet/diffusion_pytorch_model.safetensors"), &unet)?;
    write_safetensors(&dir.join("vae/diffusion_pytorch_model.safetensors"), &vae)?;
    Ok(())
}
