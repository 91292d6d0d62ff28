//! LoRA networks as A1111 uses them: `<lora:name:weight>` in a prompt, kohya-format files
//! (`lora_unet_*` / `lora_te_*` with `lora_down`, `lora_up` and `alpha`), merged into the
//! UNet and text-encoder weights before the pipeline is built.
//!
//! A kohya key is the diffusers module path with dots turned into underscores, so the index
//! is built from the model's own tensor names rather than from a fixed table: whatever layer
//! a LoRA targets, it is found if the model has it, and a key that matches nothing is an
//! error naming it instead of a silently weaker network.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use super::assemble::ModelTensors;
use super::ldm_keys::Part;
use super::safe_file::SafeFile;
use crate::engine::EngineError;

/// One `<lora:name:te_weight[:unet_weight]>` from a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraTag {
    pub name: String,
    pub te_weight: f32,
    pub unet_weight: f32,
}

/// Removes A1111 `<lora:…>` tags from a prompt, returning the remaining text and the tags in
/// order. Other `<…>` text stays as written.
pub fn extract_tags(prompt: &str) -> Result<(String, Vec<LoraTag>), EngineError> {
    let mut text = String::with_capacity(prompt.len());
    let mut tags = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("<lora:") {
        let Some(len) = rest[start..].find('>') else {
            break;
        };
        text.push_str(&rest[..start]);
        let inner = &rest[start + "<lora:".len()..start + len];
        let mut args = inner.split(':');
        let name = args.next().unwrap_or_default().trim().to_string();
        let number = |arg: Option<&str>, default: f32| -> Result<f32, EngineError> {
            match arg.map(str::trim) {
                None | Some("") => Ok(default),
                Some(v) => v
                    .parse::<f32>()
                    .ok()
                    .filter(|w| w.is_finite())
                    .ok_or_else(|| {
                        EngineError::param(
                            "prompt",
                            format!("<lora:{inner}>"),
                            "<lora:name>, <lora:name:weight> or <lora:name:te_weight:unet_weight>",
                        )
                    }),
            }
        };
        let te_weight = number(args.next(), 1.0)?;
        let unet_weight = number(args.next(), te_weight)?;
        if name.is_empty() {
            return Err(EngineError::param(
                "prompt",
                format!("<lora:{inner}>"),
                "a LoRA name after <lora:",
            ));
        }
        tags.push(LoraTag {
            name,
            te_weight,
            unet_weight,
        });
        rest = &rest[start + len + 1..];
    }
    text.push_str(rest);
    Ok((text, tags))
}

/// A LoRA file with the weights to merge it at.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraUse {
    pub path: PathBuf,
    pub te_weight: f32,
    pub unet_weight: f32,
}

/// kohya module name → (part, diffusers weight name), for every weight of the model.
fn kohya_index(model: &ModelTensors) -> HashMap<String, (Part, String)> {
    let mut index = HashMap::new();
    for (part, tensors) in &model.parts {
        let prefix = match part {
            Part::Unet => "lora_unet_",
            Part::TextEncoder => "lora_te_",
            Part::Vae => continue,
        };
        for name in tensors.keys() {
            if let Some(module) = name.strip_suffix(".weight") {
                index.insert(
                    format!("{prefix}{}", module.replace('.', "_")),
                    (*part, name.clone()),
                );
            }
        }
    }
    index
}

/// Merges `lora` into `model`: `W += weight * alpha / rank * up @ down` for every module the
/// file holds. A weight of 0 leaves the model untouched.
pub fn merge(model: &mut ModelTensors, lora: &LoraUse, device: &Device) -> Result<(), EngineError> {
    let file = SafeFile::open(&lora.path)?;
    let bad = |reason: String| EngineError::invalid_model(&lora.path, reason);
    let mut modules: BTreeMap<&str, [Option<&str>; 3]> = BTreeMap::new();
    for name in file.tensors().keys() {
        let slot = if let Some(m) = name.strip_suffix(".lora_down.weight") {
            Some((m, 0))
        } else if let Some(m) = name.strip_suffix(".lora_up.weight") {
            Some((m, 1))
        } else {
            name.strip_suffix(".alpha").map(|m| (m, 2))
        };
        match slot {
            Some((module, i)) => modules.entry(module).or_default()[i] = Some(name),
            None => {
                return Err(bad(format!(
                    "tensor {name} is not part of a kohya LoRA (expected *.lora_down.weight, \
                     *.lora_up.weight and *.alpha)"
                )))
            }
        }
    }
    if modules.is_empty() {
        return Err(bad(
            "no LoRA modules (lora_down/lora_up pairs) in this file".into(),
        ));
    }
    let index = kohya_index(model);
    for (module, [down, up, alpha]) in modules {
        let (Some(down), Some(up)) = (down, up) else {
            return Err(bad(format!("module {module} lacks lora_down or lora_up")));
        };
        let (part, target) = index.get(module).ok_or_else(|| {
            bad(format!(
                "module {module} matches no layer of this model (wrong base model, or a LoRA \
                 format other than kohya's)"
            ))
        })?;
        let weight = match part {
            Part::TextEncoder => lora.te_weight,
            _ => lora.unet_weight,
        };
        if weight == 0.0 {
            continue;
        }
        let mut wanted = vec![(down, "down".to_string()), (up, "up".to_string())];
        if let Some(alpha) = alpha {
            wanted.push((alpha, "alpha".to_string()));
        }
        let t = file.read(&wanted, device)?;
        let (down, up) = (
            t["down"].to_dtype(DType::F32)?,
            t["up"].to_dtype(DType::F32)?,
        );
        let rank = down.dim(0)?;
        let alpha = match t.get("alpha") {
            Some(a) => a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?[0],
            None => rank as f32,
        };
        let base = model
            .parts
            .get_mut(part)
            .and_then(|tensors| tensors.get_mut(target))
            .expect("index built from these tensors");
        let out = up.dim(0)?;
        let delta = up
            .reshape((out, rank))?
            .matmul(&down.reshape((rank, down.elem_count() / rank))?)?;
        if delta.elem_count() != base.elem_count() {
            return Err(bad(format!(
                "module {module}: up {:?} x down {:?} does not fit {target} {:?}",
                up.dims(),
                down.dims(),
                base.dims()
            )));
        }
        let scale = (weight * alpha / rank as f32) as f64;
        let delta = delta.reshape(base.shape())?.affine(scale, 0.0)?;
        *base = (base.to_dtype(DType::F32)? + delta)?;
    }
    Ok(())
}

/// Finds a LoRA by name in `dir` as A1111's extra networks do (file stem, or relative path
/// without extension), or takes an existing path as it is.
pub fn find(dir: Option<&Path>, name: &str) -> Result<PathBuf, EngineError> {
    let direct = Path::new(name);
    if direct.is_absolute() && direct.is_file() {
        return Ok(direct.to_path_buf());
    }
    let candidates = dir.map(super::reference::list_models).unwrap_or_default();
    let mut no_hash = |_: &super::reference::Candidate| None;
    super::reference::find_by_name(&candidates, name, &mut no_hash)
        // Exact names only: a LoRA picked by a partial match would change images silently.
        .filter(|c| {
            let stem = c.path.file_stem().map(|s| s.to_string_lossy().into_owned());
            let without_ext = c.relative.rsplit_once('.').map(|(base, _)| base);
            c.path.is_file()
                && (c.relative == name
                    || stem.as_deref() == Some(name)
                    || without_ext == Some(name))
        })
        .map(|c| c.path.clone())
        .ok_or_else(|| EngineError::ModelNotFound {
            reference: format!("<lora:{name}>"),
            reason: match dir {
                None => "no LoRA folder is configured (SDFARM_LORA_DIR)".into(),
                Some(d) => format!(
                    "no LoRA named {name:?} in {}; available: {}",
                    d.display(),
                    candidates
                        .iter()
                        .map(|c| c.relative.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
        })
}

/// kohya's "addnet" hash, which A1111 uses for LoRA safetensors: the sha256 of everything
/// after the header, so editing a file's metadata keeps its hash.
pub fn addnet_hash(path: &Path) -> Result<String, EngineError> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Seek, SeekFrom};
    let file = SafeFile::open(path)?;
    let mut reader = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    reader
        .seek(SeekFrom::Start(file.data_start()))
        .map_err(|e| EngineError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| EngineError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
