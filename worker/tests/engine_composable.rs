//! Composable diffusion (`AND` prompts) as A1111 runs it: the part list and weights of
//! `get_multicond_prompt_list` (the kit's `a1111/prompt_parser.json` cases plus edge cases),
//! the guided prediction `uncond + sum_i (cond_i - uncond) * w_i * cfg` checked against the
//! UNet outputs of separate single-prompt runs, and `a AND b :0` rendering as `a`.

use candle_core::Tensor;
use sdfarm_proto::RenderParams;
use sdfarm_worker::engine::composable::{composable_parts, multicond_prompt_list, split_and};
use sdfarm_worker::engine::{Engine, EngineError, Pipeline, SampleSettings, Sampler};
use sdfarm_worker::models::{write_tiny_model, ModelResolver, BUILTIN_TINY};
use serde_json::Value;

mod common;
use common::{max_abs, reference_dir};

#[test]
fn multicond_prompt_list_matches_a1111() {
    let Some(kit) = reference_dir("a1111/prompt_parser.json") else {
        println!("skipped: ../shared/reference not found");
        return;
    };
    let cases: Value =
        serde_json::from_slice(&std::fs::read(kit.join("a1111/prompt_parser.json")).unwrap())
            .unwrap();
    let mut checked = 0;
    for case in cases.as_array().unwrap() {
        if case["function"] != "get_multicond_prompt_list" {
            continue;
        }
        let input = case["input"].as_str().unwrap();
        let (indexes, flat) = multicond_prompt_list(&[input]);
        let want_flat: Vec<String> = case["expected"]["subprompts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let want_indexes: Vec<(usize, f64)> = case["expected"]["indexes_weights"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_f64().unwrap()))
            .collect();
        assert_eq!(flat, want_flat, "{input:?}");
        assert_eq!(indexes, vec![want_indexes], "{input:?}");
        checked += 1;
    }
    println!("{checked} get_multicond_prompt_list cases match");
    assert!(checked >= 1);
}

#[test]
fn parts_edge_cases() {
    // `\bAND\b`: only the whole word splits.
    assert_eq!(split_and("ANDROID AND BRAND"), vec!["ANDROID ", " BRAND"]);
    assert_eq!(split_and("a ANDb"), vec!["a ANDb"]);
    assert_eq!(split_and("x AND"), vec!["x ", ""]);
    let parts = |p: &str| composable_parts(p);
    assert_eq!(parts("a cat"), vec![("a cat".to_string(), 1.0)]);
    // A trailing weight applies even without AND; a weight inside attention does not.
    assert_eq!(parts("cat:0.5"), vec![("cat".to_string(), 0.5)]);
    assert_eq!(parts("(cat:1.3)"), vec![("(cat:1.3)".to_string(), 1.0)]);
    assert_eq!(parts("a:1:2"), vec![("a:1".to_string(), 2.0)]);
    assert_eq!(parts("a : -.5  "), vec![("a".to_string(), -0.5)]);
    assert_eq!(parts("a:5."), vec![("a".to_string(), 5.0)]);
    assert_eq!(parts("a:1.2.3"), vec![("a:1.2.3".to_string(), 1.0)]);
    assert_eq!(
        parts("a AND b :0"),
        vec![("a".to_string(), 1.0), (" b".to_string(), 0.0)]
    );
    // Repeated part texts share one entry of the flat list.
    let (indexes, flat) = multicond_prompt_list(&["x AND y AND y", "y"]);
    assert_eq!(flat, vec!["x", " y", "y"]);
    assert_eq!(
        indexes,
        vec![vec![(0, 1.0), (1, 1.0), (1, 1.0)], vec![(2, 1.0)]]
    );
}

fn tiny_pipeline() -> (tempfile::TempDir, Pipeline) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_model(dir.path()).unwrap();
    let pipeline = Pipeline::load(dir.path()).unwrap();
    (dir, pipeline)
}

/// One Euler step to sigma 0 ends at the denoised estimate `x - sigma * eps_guided`, so the
/// composable run's result can be computed from the UNet outputs of single-prompt runs.
#[test]
fn guidance_combines_the_parts_as_a1111() {
    let (_dir, pipeline) = tiny_pipeline();
    let a = pipeline.encode_prompt("a red cat", 0).unwrap();
    let b = pipeline.encode_prompt("a blue dog in the snow", 0).unwrap();
    let u = pipeline.encode_prompt("", 0).unwrap();
    let settings = SampleSettings::new(Sampler::Euler, 1, 6.0);
    let noise = Tensor::from_vec(
        sdfarm_worker::engine::torch_rng::TorchGenerator::new(3).randn(4 * 8 * 8),
        (1, 4, 8, 8),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let mut no_noise = || -> Result<Tensor, EngineError> { panic!("Euler draws no noise") };

    let single = |cond: &Tensor| -> Tensor {
        let mut out = None;
        let sched = vec![(1usize, cond.clone())];
        let uncond = vec![(1usize, u.clone())];
        pipeline
            .sample_scheduled(
                &settings,
                &sched,
                &uncond,
                &noise,
                &mut || -> Result<Tensor, EngineError> { panic!("no noise") },
                &mut |t| {
                    out = Some(t.unet_out.clone());
                    true
                },
            )
            .unwrap();
        out.unwrap()
    };
    let out_a = single(&a); // [uncond, a]
    let out_b = single(&b); // [uncond, b]

    let (wa, wb) = (1.0f64, 0.7f64);
    let sched_a = vec![(1usize, a.clone())];
    let sched_b = vec![(1usize, b.clone())];
    let uncond = vec![(1usize, u.clone())];
    let mut composed_out = None;
    let composed = pipeline
        .sample_composable(
            &settings,
            &[(&sched_a, wa), (&sched_b, wb)],
            &uncond,
            &noise,
            None,
            &mut no_noise,
            &mut |t| {
                composed_out = Some(t.unet_out.clone());
                true
            },
        )
        .unwrap();
    let composed_out = composed_out.unwrap();
    assert_eq!(composed_out.dims()[0], 3, "[uncond, a, b]");

    // The UNet outputs of the batched run are the separate runs' outputs.
    let pick = |t: &Tensor, i: usize| t.narrow(0, i, 1).unwrap();
    assert!(max_abs(&pick(&composed_out, 0), &pick(&out_a, 0)) < 1e-5);
    assert!(max_abs(&pick(&composed_out, 1), &pick(&out_a, 1)) < 1e-5);
    assert!(max_abs(&pick(&composed_out, 2), &pick(&out_b, 1)) < 1e-5);

    // The formula, evaluated by hand on the separate runs' outputs.
    let (eu, ea, eb) = (pick(&out_a, 0), pick(&out_a, 1), pick(&out_b, 1));
    let cfg = 6.0f64;
    let guided = (&eu
        + (&ea - &eu).unwrap().affine(wa * cfg, 0.0).unwrap()
        + (&eb - &eu).unwrap().affine(wb * cfg, 0.0).unwrap())
    .unwrap();
    let sigma = settings.sigmas(pipeline.schedule()).unwrap()[0] as f64;
    let x = noise.affine(sigma, 0.0).unwrap();
    let expected = (&x - guided.affine(sigma, 0.0).unwrap()).unwrap();
    let diff = max_abs(&composed, &expected);
    println!("a AND b:0.7 vs formula on separate outputs: max abs diff {diff:e}");
    assert!(diff < 1e-3 * sigma as f32, "{diff}");
}

#[test]
fn zero_weight_part_renders_as_the_prompt_alone() {
    let cache = tempfile::tempdir().unwrap();
    let engine = Engine::new(ModelResolver::new(cache.path()));
    let params = |prompt: &str| RenderParams {
        prompt: prompt.into(),
        negative_prompt: "blurry".into(),
        seed: 21,
        steps: 3,
        sampler_name: "Euler a".into(),
        scheduler: "Automatic".into(),
        cfg_scale: 7.0,
        width: 32,
        height: 32,
        model: BUILTIN_TINY.into(),
        rng: "CPU".into(),
        ..Default::default()
    };
    let alone = engine.render(&params("a cat"), &mut |_, _| true).unwrap();
    let zero = engine
        .render(&params("a cat AND a dog :0"), &mut |_, _| true)
        .unwrap();
    let max_diff = alone
        .rgb
        .iter()
        .zip(&zero.rgb)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap();
    println!("a cat vs a cat AND a dog :0: max pixel difference {max_diff}");
    assert!(max_diff <= 1, "{max_diff}");
    let both = engine
        .render(&params("a cat AND a dog"), &mut |_, _| true)
        .unwrap();
    assert_ne!(both.rgb, alone.rgb, "the second part had no effect");
    assert_eq!(
        both,
        engine
            .render(&params("a cat AND a dog"), &mut |_, _| true)
            .unwrap()
    );
}
