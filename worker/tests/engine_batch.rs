//! Batched rendering on the built-in tiny model: tasks that share a pass render as one batch
//! (one UNet call per model call for all images) and each image comes out as it renders
//! alone — same pixels within 1/255, same infotext.

use sdfarm_proto::RenderParams;
use sdfarm_worker::engine::{unet_calls_on_this_thread, Engine, EngineError, RenderedImage};
use sdfarm_worker::models::{ModelResolver, BUILTIN_TINY};
use sdfarm_worker::output::infotext_with_networks;
use sdfarm_worker::render::batchable;

/// Four tasks that share one pass: different seeds, prompts (one with a prompt-editing
/// schedule) and negative prompts.
fn tasks(sampler: &str, steps: u32) -> Vec<RenderParams> {
    let base = RenderParams {
        steps,
        sampler_name: sampler.into(),
        scheduler: "Automatic".into(),
        cfg_scale: 6.5,
        width: 32,
        height: 32,
        model: BUILTIN_TINY.into(),
        ..Default::default()
    };
    let cells = [
        (11, "a lighthouse at dusk", ""),
        (2024, "a red barn in the fields", "blurry"),
        (
            -1i64 as u32 as i64,
            "a [cat:dog:2] on a sofa",
            "low quality",
        ),
        (987654321, "mountains", "text, watermark"),
    ];
    cells
        .iter()
        .enumerate()
        .map(|(i, (seed, prompt, negative))| RenderParams {
            seed: *seed,
            prompt: prompt.to_string(),
            negative_prompt: negative.to_string(),
            batch_index: i as u32,
            ..base.clone()
        })
        .collect()
}

fn infotext(p: &RenderParams, image: &RenderedImage) -> String {
    infotext_with_networks(
        p,
        &image.model_name,
        &image.model_hash,
        &image.vae_name,
        &image.vae_hash,
        &image.lora_hashes,
        &image.ti_hashes,
    )
}

/// Renders `params` one at a time and as one batch; checks every image pair and returns the
/// UNet calls (alone, batched).
fn compare(engine: &Engine, params: &[RenderParams]) -> (u64, u64) {
    for p in &params[1..] {
        assert!(batchable(&params[0], p), "test tasks must share a pass");
    }
    let before = unet_calls_on_this_thread();
    let alone: Vec<RenderedImage> = params
        .iter()
        .map(|p| {
            engine
                .render(p, &mut |_, _| true)
                .unwrap_or_else(|e| panic!("rendering seed {} alone: {e}", p.seed))
        })
        .collect();
    let between = unet_calls_on_this_thread();
    let mut steps = Vec::new();
    let batched = engine.render_batch(params, &mut |step, total| {
        steps.push((step, total));
        true
    });
    let after = unet_calls_on_this_thread();
    assert_eq!(batched.len(), params.len(), "one result per task");
    assert!(!steps.is_empty(), "the batch reported no progress");
    for (i, (p, (one, many))) in params.iter().zip(alone.iter().zip(batched)).enumerate() {
        let many = many.unwrap_or_else(|e| panic!("batch image {i} (seed {}): {e}", p.seed));
        assert_eq!(
            (many.width, many.height),
            (one.width, one.height),
            "image {i}"
        );
        let worst = one
            .rgb
            .iter()
            .zip(&many.rgb)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        let off = one
            .rgb
            .iter()
            .zip(&many.rgb)
            .filter(|(a, b)| a != b)
            .count();
        println!(
            "image {i}: worst {worst}, {off} of {} values differ",
            one.rgb.len()
        );
        assert!(
            worst <= 1,
            "image {i} (seed {}, {:?}): batched pixels differ from the image alone by up to \
             {worst}/255",
            p.seed,
            p.prompt
        );
        assert_eq!(infotext(p, &many), infotext(p, one), "image {i} infotext");
    }
    // The images are really per-image: no two alike.
    for i in 0..alone.len() {
        for j in i + 1..alone.len() {
            assert_ne!(alone[i].rgb, alone[j].rgb, "images {i} and {j} are equal");
        }
    }
    (between - before, after - between)
}

fn engine() -> (tempfile::TempDir, Engine) {
    let cache = tempfile::tempdir().unwrap();
    let engine = Engine::new(ModelResolver::new(cache.path()));
    (cache, engine)
}

#[test]
fn batch_of_four_matches_rendering_alone_ancestral_and_deterministic() {
    let (_cache, engine) = engine();
    // Euler a draws ancestral noise every step; DPM++ 2M draws none; DPM++ SDE makes two
    // model calls per step and draws SDE noise; DDIM with eta draws per-step noise too.
    for (sampler, extra_eta, calls_per_step) in [
        ("Euler a", 0.0, 1),
        ("DPM++ 2M", 0.0, 1),
        ("DPM++ SDE", 0.0, 2),
        ("DDIM", 0.5, 1),
    ] {
        let steps = 5;
        let params: Vec<RenderParams> = tasks(sampler, steps)
            .into_iter()
            .map(|p| RenderParams {
                eta: extra_eta,
                ..p
            })
            .collect();
        let (alone, batched) = compare(&engine, &params);
        println!("{sampler}: UNet calls alone {alone}, batched {batched}");
        // DDIM runs one step fewer than asked; the count is whatever one image needs.
        let per_image = alone / params.len() as u64;
        assert!(
            per_image >= (steps as u64 - 1) * calls_per_step,
            "{sampler}: {per_image} UNet calls per image"
        );
        assert_eq!(
            batched,
            per_image,
            "{sampler}: the batch of {} must run as one pass (one UNet call per model call)",
            params.len()
        );
    }
}

#[test]
fn batched_img2img_and_variation_seeds_match_rendering_alone() {
    let (cache, engine) = engine();
    let init = cache.path().join("init.png");
    let pixels: Vec<u8> = (0..32 * 32 * 3).map(|i| (i * 7 % 251) as u8).collect();
    image::RgbImage::from_raw(32, 32, pixels)
        .unwrap()
        .save(&init)
        .unwrap();
    let params: Vec<RenderParams> = tasks("Euler a", 6)
        .into_iter()
        .map(|p| RenderParams {
            init_image: init.display().to_string(),
            denoising_strength: 0.6,
            subseed: p.seed + 1,
            subseed_strength: 0.3,
            ..p
        })
        .collect();
    let (alone, batched) = compare(&engine, &params);
    assert_eq!(
        batched * params.len() as u64,
        alone,
        "img2img batch ran as one pass"
    );
}

#[test]
fn batched_hires_fix_matches_rendering_alone() {
    let (_cache, engine) = engine();
    // A latent upscaler and a pixel one (decode, Lanczos, encode with each image's seed);
    // the second pass with its own sampler, and per-image hires prompts.
    for (upscaler, hr_sampler) in [("Latent", "Use same sampler"), ("Lanczos", "DPM++ 2M")] {
        let params: Vec<RenderParams> = tasks("Euler a", 4)
            .into_iter()
            .enumerate()
            .map(|(i, p)| RenderParams {
                enable_hr: true,
                hr_scale: 1.5,
                hr_upscaler: upscaler.into(),
                hr_sampler_name: hr_sampler.into(),
                hr_second_pass_steps: 3,
                denoising_strength: 0.55,
                hr_prompt: if i == 2 {
                    "a dog on a sofa".into()
                } else {
                    String::new()
                },
                ..p
            })
            .collect();
        let (alone, batched) = compare(&engine, &params);
        println!("hires {upscaler}: UNet calls alone {alone}, batched {batched}");
        assert_eq!(
            batched * params.len() as u64,
            alone,
            "hires {upscaler}: both passes should run batched"
        );
    }
}

/// SDXL (the reference kit's tiny SDXL folder): pooled embeddings and size conditioning per
/// image, an empty negative prompt (encoded as zeros) beside non-empty ones.
#[test]
fn batched_sdxl_matches_rendering_alone() {
    let kit = match std::env::var_os("SDFARM_REFERENCE_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference"),
    };
    let model = kit.join("tiny-sdxl/diffusers");
    if !model.is_dir() {
        println!("skipped: ../shared/reference (tiny-sdxl) not found");
        return;
    }
    let (_cache, engine) = engine();
    let params: Vec<RenderParams> = tasks("Euler a", 4)
        .into_iter()
        .map(|p| RenderParams {
            model: model.display().to_string(),
            width: 64,
            height: 64,
            ..p
        })
        .collect();
    let (alone, batched) = compare(&engine, &params);
    assert_eq!(
        batched * params.len() as u64,
        alone,
        "SDXL batch ran as one pass"
    );
}

#[test]
fn prompts_of_different_lengths_share_the_batch_in_separate_passes() {
    let (_cache, engine) = engine();
    let long = ["a very detailed painting of a harbour"; 12].join(", ");
    let mut params = tasks("Euler a", 4);
    params[1].prompt = long.clone();
    params[3].negative_prompt = long;
    let (alone, batched) = compare(&engine, &params);
    // Four model calls per image. Alone: images 0 and 2 make one UNet call per model call,
    // images 1 (more cond chunks) and 3 (more uncond chunks) two (cond and uncond differ in
    // length). Batched: images 0 and 2 share a pass, 1 and 3 each have their own shape.
    let calls = 4;
    assert_eq!(alone, calls * (1 + 2 + 1 + 2), "UNet calls alone");
    assert_eq!(batched, calls * (1 + 2 + 2), "UNet calls batched");
}

#[test]
fn requests_that_cannot_share_a_pass_render_one_by_one_with_their_own_errors() {
    let (_cache, engine) = engine();
    let mut params = tasks("Euler", 3);
    params.truncate(3);
    params[2].sampler_name = "No such sampler".into();
    let results = engine.render_batch(&params, &mut |_, _| true);
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[1].is_ok());
    match &results[2] {
        Err(EngineError::InvalidParam { field, .. }) => assert_eq!(*field, "sampler_name"),
        other => panic!("expected an invalid sampler_name, got {other:?}"),
    }
    let alone = engine.render(&params[0], &mut |_, _| true).unwrap();
    assert_eq!(results[0].as_ref().unwrap().rgb, alone.rgb);

    // Cancelling a batch cancels every image in it.
    let params = tasks("Euler", 3);
    assert_eq!(params.len(), 4);
    let results = engine.render_batch(&params, &mut |step, _| step < 2);
    assert!(results
        .iter()
        .all(|r| matches!(r, Err(EngineError::Cancelled))));
}
