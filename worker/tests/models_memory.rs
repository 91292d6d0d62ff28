//! The engine's in-memory model cache: capped by count and by float32 weight bytes, least
//! recently used dropped first, the model being rendered always kept.

use sdfarm_proto::RenderParams;
use sdfarm_worker::engine::Engine;
use sdfarm_worker::models::{write_tiny_model, ModelResolver};

fn render(engine: &Engine, model: &str) -> bool {
    let params = RenderParams {
        prompt: "a cat".into(),
        seed: 1,
        steps: 1,
        sampler_name: "Euler".into(),
        cfg_scale: 7.0,
        width: 32,
        height: 32,
        model: model.into(),
        rng: "CPU".into(),
        ..Default::default()
    };
    engine
        .render(&params, &mut |_, _| true)
        .unwrap()
        .model_loaded
}

/// Three distinct model folders (copies of the tiny model).
fn three_models(dir: &std::path::Path) -> Vec<String> {
    ["a", "b", "c"]
        .iter()
        .map(|name| {
            let path = dir.join(name);
            write_tiny_model(&path).unwrap();
            path.display().to_string()
        })
        .collect()
}

#[test]
fn count_cap_drops_the_least_recently_used() {
    let dir = tempfile::tempdir().unwrap();
    let models = three_models(dir.path());
    let engine =
        Engine::new(ModelResolver::new(dir.path().join("cache"))).with_memory_limits(2, u64::MAX);
    assert!(render(&engine, &models[0]));
    assert!(render(&engine, &models[1]));
    assert!(!render(&engine, &models[0]), "a stayed loaded");
    assert!(render(&engine, &models[2]));
    assert_eq!(
        engine.loaded_models(),
        [models[0].clone(), models[2].clone()]
    );
    assert!(render(&engine, &models[1]), "b was dropped and loads again");
    assert_eq!(
        engine.loaded_models(),
        [models[1].clone(), models[2].clone()]
    );
}

#[test]
fn byte_cap_drops_models_until_the_rest_fit() {
    let dir = tempfile::tempdir().unwrap();
    let models = three_models(dir.path());
    let resolver = ModelResolver::new(dir.path().join("cache"));
    let one = resolver
        .resolve(&models[0])
        .unwrap()
        .memory_bytes()
        .unwrap();
    // The tiny model's float32 weights: UNet, VAE and CLIP (with its 49408-token table).
    assert!(one > 5_000_000 && one < 20_000_000, "{one}");
    let engine = Engine::new(resolver).with_memory_limits(10, one * 2 + one / 2);
    for model in &models {
        assert!(render(&engine, model));
    }
    assert_eq!(
        engine.loaded_models(),
        [models[1].clone(), models[2].clone()]
    );
    assert_eq!(engine.loaded_bytes(), 2 * one);

    // A cap below one model still keeps the model being rendered.
    let small = Engine::new(ModelResolver::new(dir.path().join("cache"))).with_memory_limits(10, 1);
    assert!(render(&small, &models[0]));
    assert!(render(&small, &models[1]));
    assert_eq!(small.loaded_models(), [models[1].clone()]);
}
