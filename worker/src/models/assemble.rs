//! A model's weights as plain tensor maps (diffusers names, per network) plus its settings,
//! from a diffusers folder or a single-file checkpoint, so they can be changed (LoRA merges)
//! before the [`Pipeline`] is built from them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::text_model::ClipTextConfig;

use super::ldm_keys::Part;
use super::safe_file::SafeFile;
use super::{ModelFormat, ResolvedModel};
use crate::engine::clip::ClipActivation;
use crate::engine::config::{self, UNetSettings, VaeSettings};
use crate::engine::pipeline::{PartWeights, PipelineParts, Prediction};
use crate::engine::schedule::DiscreteSchedule;
use crate::engine::tokenizer::PromptTokenizer;
use crate::engine::{EngineError, Pipeline};

/// Everything a pipeline is built from, with the weights still editable.
pub struct ModelTensors {
    pub origin: PathBuf,
    pub tokenizer: PromptTokenizer,
    pub clip_config: ClipTextConfig,
    pub clip_layer_norm_eps: f64,
    /// The text encoder's MLP activation.
    pub clip_activation: ClipActivation,
    pub unet_settings: UNetSettings,
    pub vae_settings: VaeSettings,
    pub schedule: DiscreteSchedule,
    pub prediction: Prediction,
    /// Diffusers-named tensors per network.
    pub parts: BTreeMap<Part, HashMap<String, Tensor>>,
    /// The file each network came from, for errors.
    pub sources: BTreeMap<Part, PathBuf>,
}

fn read_all(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>, EngineError> {
    let file = SafeFile::open(path)?;
    let wanted: Vec<(&str, String)> = file
        .tensors()
        .iter()
        .filter(|(name, info)| {
            !name.ends_with("position_ids") && info.dtype.starts_with(['F', 'B'])
        })
        .map(|(name, _)| (name.as_str(), name.clone()))
        .collect();
    file.read(&wanted, device)
}

/// `prediction_type` of a diffusers scheduler config.
fn prediction(dir: &Path) -> Result<(DiscreteSchedule, Prediction), EngineError> {
    let path = dir.join("scheduler/scheduler_config.json");
    if !path.is_file() {
        return Ok((DiscreteSchedule::sd15(), Prediction::Epsilon));
    }
    let json = config::read_json(&path)?;
    let prediction = match json.get("prediction_type").and_then(|v| v.as_str()) {
        None | Some("epsilon") => Prediction::Epsilon,
        Some("v_prediction") => Prediction::V,
        Some(other) => {
            return Err(EngineError::invalid_model(
                &path,
                format!(
                    "prediction_type {other:?} is not supported; accepted: \"epsilon\", \
                     \"v_prediction\""
                ),
            ))
        }
    };
    Ok((DiscreteSchedule::from_diffusers_config(&json)?, prediction))
}

impl ModelTensors {
    /// Reads a resolved model's weights onto `device`.
    pub fn read(model: &ResolvedModel, device: &Device) -> Result<Self, EngineError> {
        match model.format {
            ModelFormat::SingleFile => super::single_file::read_sd1(&model.dir, device),
            ModelFormat::Diffusers => Self::read_folder(&model.dir, device),
        }
    }

    fn read_folder(dir: &Path, device: &Device) -> Result<Self, EngineError> {
        if dir.join("text_encoder_2").is_dir() {
            return Err(EngineError::invalid_model(
                dir,
                "this is an SDXL folder; LoRA networks merge into SD 1.x / 2.x models only so \
                 far (render without <lora:…>)",
            ));
        }
        let clip_json = dir.join("text_encoder/config.json");
        let files = [
            (Part::TextEncoder, "text_encoder/model.safetensors"),
            (Part::Unet, "unet/diffusion_pytorch_model.safetensors"),
            (Part::Vae, "vae/diffusion_pytorch_model.safetensors"),
        ];
        let mut parts = BTreeMap::new();
        let mut sources = BTreeMap::new();
        for (part, file) in files {
            let path = dir.join(file);
            parts.insert(part, read_all(&path, device)?);
            sources.insert(part, path);
        }
        let (schedule, prediction) = prediction(dir)?;
        Ok(ModelTensors {
            origin: dir.to_path_buf(),
            tokenizer: PromptTokenizer::for_model(dir)?,
            clip_config: config::clip_settings(&clip_json)?,
            clip_layer_norm_eps: config::read_json(&clip_json)?
                .get("layer_norm_eps")
                .and_then(|v| v.as_f64())
                .unwrap_or(1e-5),
            clip_activation: config::clip_activation(&clip_json)?,
            unet_settings: config::unet_settings(&dir.join("unet/config.json"))?,
            vae_settings: config::vae_settings(&dir.join("vae/config.json"))?,
            schedule,
            prediction,
            parts,
            sources,
        })
    }

    /// Builds the pipeline on `device`.
    pub fn into_pipeline(mut self, device: &Device) -> Result<Pipeline, EngineError> {
        let mut weights = |part: Part| PartWeights {
            vb: VarBuilder::from_tensors(
                self.parts.remove(&part).unwrap_or_default(),
                DType::F32,
                device,
            ),
            source: self
                .sources
                .get(&part)
                .cloned()
                .unwrap_or_else(|| self.origin.clone()),
            label: part.label(),
        };
        let (clip, unet, vae) = (
            weights(Part::TextEncoder),
            weights(Part::Unet),
            weights(Part::Vae),
        );
        Pipeline::from_parts(
            PipelineParts {
                origin: self.origin,
                tokenizer: self.tokenizer,
                clip_config: self.clip_config,
                clip_layer_norm_eps: self.clip_layer_norm_eps,
                clip_activation: self.clip_activation,
                clip,
                clip_2: None,
                unet_settings: self.unet_settings,
                unet,
                vae_settings: self.vae_settings,
                vae,
                schedule: self.schedule,
                prediction: self.prediction,
            },
            device.clone(),
        )
    }
}
