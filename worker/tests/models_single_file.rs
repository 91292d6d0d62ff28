//! Single-file A1111 checkpoints against their diffusers folder, on the shared reference kit.
//!
//! The kit lives outside the repository (`../shared/reference`, or `SDFARM_REFERENCE_DIR`);
//! without it these tests print a note and pass.

use std::path::{Path, PathBuf};

use sdfarm_proto::RenderParams;
use sdfarm_worker::engine::Engine;
use sdfarm_worker::models::{ModelFormat, ModelResolver};
use sha2::{Digest, Sha256};

fn reference_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SDFARM_REFERENCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference"),
    };
    if dir.join("tiny-sd/tiny-sd-v1.safetensors").is_file() {
        Some(dir)
    } else {
        println!("skipped: ../shared/reference not found");
        None
    }
}

fn params(model: &Path, sampler: &str, seed: i64) -> RenderParams {
    RenderParams {
        prompt: "a photo of a cat".into(),
        negative_prompt: "blurry".into(),
        seed,
        steps: 4,
        sampler_name: sampler.into(),
        scheduler: "Automatic".into(),
        cfg_scale: 7.0,
        width: 32,
        height: 32,
        model: model.display().to_string(),
        rng: "CPU".into(),
        ..Default::default()
    }
}

#[test]
fn single_file_renders_the_pixels_of_its_diffusers_folder() {
    let Some(dir) = reference_dir() else { return };
    let single = dir.join("tiny-sd/tiny-sd-v1.safetensors");
    let folder = dir.join("tiny-sd/diffusers");
    let cache = tempfile::tempdir().unwrap();
    let engine = Engine::new(ModelResolver::new(cache.path()));

    let resolved = engine.resolver().resolve(single.to_str().unwrap()).unwrap();
    assert_eq!(resolved.format, ModelFormat::SingleFile);
    assert_eq!(resolved.name, "tiny-sd-v1");
    // A1111's "Model hash": the first 10 hex digits of `sha256sum` of the file.
    let sha = hex::encode(Sha256::digest(std::fs::read(&single).unwrap()));
    assert_eq!(resolved.hash, sha[..10]);

    for (sampler, seed) in [("Euler", 1234), ("DDIM", 7), ("Euler a", 99)] {
        let from_file = engine
            .render(&params(&single, sampler, seed), &mut |_, _| true)
            .unwrap();
        let from_folder = engine
            .render(&params(&folder, sampler, seed), &mut |_, _| true)
            .unwrap();
        assert_eq!(from_file.model_name, "tiny-sd-v1");
        assert_eq!(from_file.model_hash, sha[..10]);
        assert_eq!(from_folder.model_name, "diffusers");
        let distinct: std::collections::BTreeSet<u8> = from_file.rgb.iter().copied().collect();
        assert!(distinct.len() > 16, "image is nearly constant");
        assert!(
            from_file.rgb == from_folder.rgb,
            "{sampler}: single file and folder differ in {} of {} bytes",
            from_file
                .rgb
                .iter()
                .zip(&from_folder.rgb)
                .filter(|(a, b)| a != b)
                .count(),
            from_file.rgb.len()
        );
    }
}

/// The file holds the same weights as the folder, tensor for tensor, after renaming.
#[test]
fn every_folder_tensor_comes_from_the_single_file() {
    use sdfarm_worker::models::ldm_keys::{map_keys, Part};
    use sdfarm_worker::models::safe_file::SafeFile;
    let Some(dir) = reference_dir() else { return };
    let file = SafeFile::open(&dir.join("tiny-sd/tiny-sd-v1.safetensors")).unwrap();
    let map = map_keys(file.tensors().keys().map(String::as_str));
    assert!(map.unknown.is_empty(), "{:?}", map.unknown);
    for (part, sub) in [
        (Part::Unet, "unet/diffusion_pytorch_model.safetensors"),
        (Part::Vae, "vae/diffusion_pytorch_model.safetensors"),
        (Part::TextEncoder, "text_encoder/model.safetensors"),
    ] {
        let folder = SafeFile::open(&dir.join("tiny-sd/diffusers").join(sub)).unwrap();
        let wanted: Vec<(&str, String)> = map
            .targets
            .iter()
            .filter(|(_, t)| t.part == part)
            .map(|(stored, t)| (stored.as_str(), t.name.clone()))
            .collect();
        let names: std::collections::BTreeSet<&String> = wanted.iter().map(|(_, n)| n).collect();
        let expected: std::collections::BTreeSet<&String> = folder.tensors().keys().collect();
        assert_eq!(names, expected, "{sub}: names differ");
        let ours = file.read(&wanted, &candle_core::Device::Cpu).unwrap();
        let theirs = folder
            .read(
                &folder
                    .tensors()
                    .keys()
                    .map(|k| (k.as_str(), k.clone()))
                    .collect::<Vec<_>>(),
                &candle_core::Device::Cpu,
            )
            .unwrap();
        for (name, tensor) in &theirs {
            let a = ours[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert!(a == b, "{sub}: {name} differs");
        }
    }
}
