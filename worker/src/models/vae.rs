//! VAE overrides (A1111's `sd_vae`): finding the file, loading it, decoding with it.
//!
//! A VAE file comes in three layouts: original names without a prefix (`encoder.down.0…`, as
//! A1111's `models/VAE` files are), original names under `first_stage_model.`, or diffusers
//! names (`encoder.down_blocks.0…`). All are mapped onto diffusers names and the network's
//! shape is read off the tensors, as for single-file checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::vae::AutoEncoderKL;

use super::ldm_keys::{self, Part, VAE_PREFIX};
use super::safe_file::SafeFile;
use super::single_file;
use crate::engine::config::VaeSettings;
use crate::engine::EngineError;

/// A VAE reference resolved to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedVae {
    pub path: PathBuf,
    /// The file name with extension, as A1111 writes "VAE" in the infotext.
    pub name: String,
    /// First 10 hex digits of the file's sha256 ("VAE hash").
    pub hash: String,
}

/// Whether an `sd_vae` value means "the checkpoint's own VAE".
pub fn is_builtin_choice(value: &str) -> bool {
    let v = value.trim();
    v.is_empty() || v.eq_ignore_ascii_case("automatic") || v.eq_ignore_ascii_case("none")
}

/// A1111's "Automatic": a `<checkpoint stem>.vae.safetensors` next to a single-file
/// checkpoint is used when it exists.
pub fn sidecar_for(checkpoint: &Path) -> Option<PathBuf> {
    let stem = checkpoint.file_stem()?.to_string_lossy().into_owned();
    let sidecar = checkpoint.with_file_name(format!("{stem}.vae.safetensors"));
    sidecar.is_file().then_some(sidecar)
}

/// A loaded VAE and how to use it.
pub struct LoadedVae {
    pub vae: AutoEncoderKL,
    pub settings: VaeSettings,
}

impl LoadedVae {
    /// Decodes final latents the way the pipeline's own VAE would: divide by the model
    /// family's `scaling_factor`, then decode.
    pub fn decode(&self, latents: &Tensor, scaling_factor: f64) -> Result<Tensor, EngineError> {
        let factor = Tensor::new(&[scaling_factor as f32], latents.device())?;
        Ok(self.vae.decode(&latents.broadcast_div(&factor)?)?)
    }
}

/// Stored name → diffusers name for every tensor of a standalone VAE file.
fn vae_names(file: &SafeFile) -> Result<BTreeMap<String, (String, bool)>, EngineError> {
    let keys: Vec<&str> = file.tensors().keys().map(String::as_str).collect();
    let diffusers = keys.iter().any(|k| k.contains(".down_blocks."));
    if diffusers {
        return Ok(keys
            .iter()
            .filter(|k| !k.ends_with("position_ids"))
            .map(|k| (k.to_string(), (k.to_string(), false)))
            .collect());
    }
    // Original names: give bare ones the checkpoint prefix so one mapping covers both.
    let prefixed: Vec<String> = keys
        .iter()
        .map(|k| {
            if k.starts_with(VAE_PREFIX) {
                k.to_string()
            } else {
                format!("{VAE_PREFIX}{k}")
            }
        })
        .collect();
    let map = ldm_keys::map_keys(prefixed.iter().map(String::as_str));
    if !map.unknown.is_empty() {
        return Err(EngineError::invalid_model(
            file.path(),
            format!(
                "{} tensors are not part of an SD VAE (e.g. {}); expected encoder.*/decoder.* \
                 tensors in original or diffusers naming",
                map.unknown.len(),
                map.unknown[0]
            ),
        ));
    }
    Ok(keys
        .iter()
        .zip(&prefixed)
        .filter_map(|(stored, p)| {
            let target = map.targets.get(p)?;
            (target.part == Part::Vae)
                .then(|| (stored.to_string(), (target.name.clone(), target.squeeze)))
        })
        .collect())
}

/// Loads a standalone VAE file onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<LoadedVae, EngineError> {
    let file = SafeFile::open(path)?;
    let names = vae_names(&file)?;
    if !names.values().any(|(n, _)| n == "decoder.conv_in.weight") {
        return Err(EngineError::invalid_model(
            path,
            "not a VAE: it has no decoder.conv_in.weight; expected an SD VAE .safetensors file",
        ));
    }
    let shapes: BTreeMap<String, Vec<usize>> = names
        .iter()
        .filter_map(|(stored, (name, squeeze))| {
            let mut shape = file.tensors().get(stored)?.shape.clone();
            if *squeeze {
                shape.truncate(2);
            }
            Some((name.clone(), shape))
        })
        .collect();
    let settings = single_file::vae_settings(&shapes)
        .map_err(|reason| EngineError::invalid_model(path, reason))?;
    let wanted: Vec<(&str, String)> = names
        .iter()
        .map(|(stored, (name, _))| (stored.as_str(), name.clone()))
        .collect();
    let mut tensors: HashMap<String, Tensor> = file.read(&wanted, device)?;
    for (name, squeeze) in names.values() {
        if let (true, Some(t)) = (*squeeze, tensors.get_mut(name)) {
            if t.rank() == 4 {
                let (out, inp) = (t.dim(0)?, t.dim(1)?);
                *t = t.reshape((out, inp))?;
            }
        }
    }
    let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
    let vae = AutoEncoderKL::new(
        vb,
        settings.in_channels,
        settings.out_channels,
        settings.config.clone(),
    )
    .map_err(|e| EngineError::invalid_model(path, format!("vae: {e}")))?;
    Ok(LoadedVae { vae, settings })
}
