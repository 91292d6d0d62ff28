//! A single-file SDXL checkpoint (SGM layout) against its diffusers folder, on the shared
//! reference kit: the file's networks are the folder's (same conditioning, same UNet output),
//! both render the same pixels through `Engine::render`, and the image's model hash is the
//! file's A1111 hash.
//!
//! The kit lives outside the repository (`../shared/reference`, or `SDFARM_REFERENCE_DIR`);
//! without it these tests print a note and pass.

use std::path::Path;

use candle_core::{Device, Tensor};
use sdfarm_proto::RenderParams;
use sdfarm_worker::engine::{Engine, Pipeline};
use sdfarm_worker::models::single_file_xl::load_sdxl;
use sdfarm_worker::models::{ModelFormat, ModelResolver};
use sha2::{Digest, Sha256};

mod common;
use common::{max_abs, reference_dir};

const MARKER: &str = "tiny-sdxl/tiny-sdxl-v1.safetensors";

fn params(model: &Path, sampler: &str, seed: i64) -> RenderParams {
    RenderParams {
        prompt: "a photo of a (cat:1.2)".into(),
        negative_prompt: String::new(),
        seed,
        steps: 4,
        sampler_name: sampler.into(),
        scheduler: "Automatic".into(),
        cfg_scale: 5.0,
        width: 64,
        height: 48,
        model: model.display().to_string(),
        rng: "CPU".into(),
        ..Default::default()
    }
}

#[test]
fn sdxl_single_file_holds_the_folder_networks() {
    let Some(dir) = reference_dir(MARKER) else {
        println!("skipped: ../shared/reference not found");
        return;
    };
    let file = load_sdxl(&dir.join(MARKER), &Device::Cpu).unwrap();
    let folder = Pipeline::load_on(&dir.join("tiny-sdxl/diffusers"), Device::Cpu).unwrap();
    assert!(file.is_sdxl());
    assert_eq!(file.vae_scaling_factor(), folder.vae_scaling_factor());
    for text in ["a photo of a cat", "a (red:1.3) cat, BREAK a dog", ""] {
        let a = file.encode_prompt(text, 0).unwrap();
        let b = folder.encode_prompt(text, 0).unwrap();
        let err = max_abs(&a, &b);
        println!("{text:?}: conditioning max abs difference {err:.3e}");
        assert!(err <= 1e-6, "{text:?}: conditioning differs by {err}");
    }
    let cond = folder.encode_prompt("a photo of a cat", 0).unwrap();
    let noise = Tensor::randn(0f32, 1f32, (1, 4, 32, 32), &Device::Cpu).unwrap();
    let decoded_a = file.decode(&noise).unwrap();
    let decoded_b = folder.decode(&noise).unwrap();
    assert_eq!(max_abs(&decoded_a, &decoded_b), 0.0, "VAE decode");
    let settings =
        sdfarm_worker::engine::SampleSettings::new(sdfarm_worker::engine::Sampler::Euler, 2, 5.0);
    let mut none = || -> Result<Tensor, sdfarm_worker::engine::EngineError> { unreachable!() };
    let run = |p: &Pipeline, none: &mut dyn FnMut() -> Result<Tensor, _>| {
        p.sample(
            &settings,
            &cond,
            &cond.zeros_like().unwrap(),
            &noise,
            none,
            &mut |_| true,
        )
        .unwrap()
    };
    let err = max_abs(&run(&file, &mut none), &run(&folder, &mut none));
    println!("two Euler steps: latents max abs difference {err:.3e}");
    assert!(err <= 1e-5, "sampled latents differ by {err}");
}

#[test]
fn sdxl_single_file_renders_the_pixels_of_its_folder() {
    let Some(dir) = reference_dir(MARKER) else {
        println!("skipped: ../shared/reference not found");
        return;
    };
    let single = dir.join(MARKER);
    let folder = dir.join("tiny-sdxl/diffusers");
    let cache = tempfile::tempdir().unwrap();
    let engine = Engine::new(ModelResolver::new(cache.path()));

    let resolved = engine.resolver().resolve(single.to_str().unwrap()).unwrap();
    assert_eq!(resolved.format, ModelFormat::SingleFile);
    assert_eq!(resolved.name, "tiny-sdxl-v1");
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
        assert_eq!((from_file.width, from_file.height), (64, 48));
        assert_eq!(from_file.model_name, "tiny-sdxl-v1");
        assert_eq!(from_file.model_hash, sha[..10]);
        let distinct: std::collections::BTreeSet<u8> = from_file.rgb.iter().copied().collect();
        assert!(distinct.len() > 16, "image is nearly constant");
        let differing = from_file
            .rgb
            .iter()
            .zip(&from_folder.rgb)
            .filter(|(a, b)| a != b)
            .count();
        println!(
            "{sampler}: {differing} of {} bytes differ",
            from_file.rgb.len()
        );
        assert_eq!(differing, 0, "{sampler}: single file and folder differ");
    }
}

/// Tasks that share a pass render as one batch; each SDXL image (its own pooled embedding and
/// time ids in the batch) comes out as it renders alone.
#[test]
fn sdxl_batch_matches_rendering_alone() {
    let Some(dir) = reference_dir(MARKER) else {
        println!("skipped: ../shared/reference not found");
        return;
    };
    let folder = dir.join("tiny-sdxl/diffusers");
    let cache = tempfile::tempdir().unwrap();
    let engine = Engine::new(ModelResolver::new(cache.path()));
    let cells = [
        (11, "a lighthouse at dusk", ""),
        (2024, "a red barn in the fields", "blurry"),
        (7, "a [cat:dog:2] on a sofa", ""),
    ];
    let params: Vec<RenderParams> = cells
        .iter()
        .enumerate()
        .map(|(i, (seed, prompt, negative))| RenderParams {
            prompt: prompt.to_string(),
            negative_prompt: negative.to_string(),
            batch_index: i as u32,
            ..params(&folder, "DPM++ 2M", *seed)
        })
        .collect();
    for p in &params[1..] {
        assert!(sdfarm_worker::render::batchable(&params[0], p));
    }
    let batched = engine.render_batch(&params, &mut |_, _| true);
    for (p, many) in params.iter().zip(batched) {
        let many = many.unwrap();
        let one = engine.render(p, &mut |_, _| true).unwrap();
        let worst = one
            .rgb
            .iter()
            .zip(&many.rgb)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        println!("seed {}: batched vs alone worst {worst}/255", p.seed);
        assert!(
            worst <= 1,
            "seed {}: batched differs by {worst}/255",
            p.seed
        );
    }
}
