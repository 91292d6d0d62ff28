//! The built-in tiny model, model resolution and `Engine::render` end to end.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::SafeTensors;
use sdfarm_proto::RenderParams;
use sdfarm_worker::engine::{Engine, EngineError, Pipeline};
use sdfarm_worker::models::{write_tiny_model, ModelResolver, BUILTIN_TINY};
use sha2::{Digest, Sha256};

fn file_hashes(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(
                    rel,
                    hex::encode(Sha256::digest(std::fs::read(&path).unwrap())),
                );
            }
        }
    }
    out
}

#[test]
fn tiny_model_is_byte_stable_and_loads() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    write_tiny_model(a.path()).unwrap();
    write_tiny_model(b.path()).unwrap();
    let hashes = file_hashes(a.path());
    assert_eq!(hashes, file_hashes(b.path()), "two writes differ");
    for (file, hash) in &hashes {
        println!("{file}: {hash}");
    }
    // Pinned so that a change in the generator, the init rules or the writer is noticed: the
    // built-in model's bytes (and so every image rendered with it) must not drift silently.
    assert_eq!(
        &hashes["unet/diffusion_pytorch_model.safetensors"][..16],
        PINNED_UNET_SHA256_PREFIX
    );
    Pipeline::load(a.path()).unwrap();
}

const PINNED_UNET_SHA256_PREFIX: &str = "62756ef51d4f2d4b";

/// The tiny model has exactly the tensors (names and shapes) of the reference diffusers
/// folder, so diffusers could load it too.
#[test]
fn tiny_model_has_the_reference_tensor_layout() {
    let reference = match std::env::var_os("SDFARM_REFERENCE_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference"),
    }
    .join("tiny-sd/diffusers");
    if !reference.is_dir() {
        println!("skipped: ../shared/reference not found");
        return;
    }
    let ours = tempfile::tempdir().unwrap();
    write_tiny_model(ours.path()).unwrap();
    for file in [
        "text_encoder/model.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ] {
        let layout = |dir: &Path| -> BTreeMap<String, Vec<usize>> {
            let bytes = std::fs::read(dir.join(file)).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            st.tensors()
                .into_iter()
                .map(|(name, view)| (name, view.shape().to_vec()))
                .collect()
        };
        let (ours, theirs) = (layout(ours.path()), layout(&reference));
        println!("{file}: {} tensors", ours.len());
        assert_eq!(ours, theirs, "{file}");
    }
}

fn params(seed: i64) -> RenderParams {
    RenderParams {
        prompt: "a photo of a cat".into(),
        negative_prompt: "blurry".into(),
        seed,
        steps: 4,
        sampler_name: "Euler".into(),
        scheduler: "Automatic".into(),
        cfg_scale: 7.0,
        width: 32,
        height: 32,
        model: BUILTIN_TINY.into(),
        rng: "CPU".into(),
        ..Default::default()
    }
}

#[test]
fn renders_are_deterministic_and_seed_dependent() {
    let cache = tempfile::tempdir().unwrap();
    let engine = Engine::new(ModelResolver::new(cache.path()));
    let mut steps = Vec::new();
    let first = engine
        .render(&params(1), &mut |step, total| {
            steps.push((step, total));
            true
        })
        .unwrap();
    assert_eq!(steps, vec![(1, 4), (2, 4), (3, 4), (4, 4)]);
    assert_eq!(
        (first.width, first.height, first.rgb.len()),
        (32, 32, 32 * 32 * 3)
    );
    assert_eq!(first.model_name, "tiny-sd");
    assert_eq!(first.model_hash.len(), 10);
    assert_eq!(engine.loaded_models(), vec![BUILTIN_TINY.to_string()]);
    assert!(first.model_loaded);

    let again = engine.render(&params(1), &mut |_, _| true).unwrap();
    assert!(!again.model_loaded && again.model_load_ms == 0);
    assert_eq!(first.rgb, again.rgb, "same parameters, different bytes");
    let other = engine.render(&params(2), &mut |_, _| true).unwrap();
    assert_ne!(first.rgb, other.rgb, "different seeds, same image");

    let distinct: std::collections::BTreeSet<u8> = first.rgb.iter().copied().collect();
    assert!(distinct.len() > 16, "image is nearly constant");

    for sampler in ["DDIM", "Euler a"] {
        let p = RenderParams {
            sampler_name: sampler.into(),
            ..params(3)
        };
        let a = engine.render(&p, &mut |_, _| true).unwrap();
        let b = engine.render(&p, &mut |_, _| true).unwrap();
        assert_eq!(a, b, "{sampler} is not deterministic");
    }

    let nv = RenderParams {
        rng: "NV".into(),
        ..params(1)
    };
    let nv_image = engine.render(&nv, &mut |_, _| true).unwrap();
    assert_eq!(nv_image, engine.render(&nv, &mut |_, _| true).unwrap());
    assert_ne!(
        nv_image.rgb, first.rgb,
        "NV and CPU noise gave the same image"
    );

    let variation = RenderParams {
        subseed: 77,
        subseed_strength: 0.3,
        ..params(1)
    };
    let varied = engine.render(&variation, &mut |_, _| true).unwrap();
    assert_ne!(varied.rgb, first.rgb, "variation seed had no effect");
}

#[test]
fn cancellation_and_bad_parameters_are_reported() {
    let cache = tempfile::tempdir().unwrap();
    let engine = Engine::new(ModelResolver::new(cache.path()));

    let cancelled = engine.render(&params(1), &mut |step, _| step < 2);
    assert!(
        matches!(cancelled, Err(EngineError::Cancelled)),
        "{cancelled:?}"
    );

    let cases: Vec<(RenderParams, &str)> = vec![
        (
            RenderParams {
                sampler_name: "Heun++".into(),
                ..params(1)
            },
            "Euler a",
        ),
        (
            RenderParams {
                scheduler: "Beta".into(),
                ..params(1)
            },
            "not supported yet",
        ),
        (
            RenderParams {
                scheduler: "Fancy".into(),
                ..params(1)
            },
            "scheduler",
        ),
        (
            RenderParams {
                width: 33,
                ..params(1)
            },
            "width",
        ),
        (
            RenderParams {
                rng: "GPU".into(),
                ..params(1)
            },
            "rng",
        ),
        (
            RenderParams {
                steps: 0,
                ..params(1)
            },
            "steps",
        ),
        (
            RenderParams {
                model: "builtin:huge".into(),
                ..params(1)
            },
            "builtin:tiny-sd",
        ),
    ];
    for (p, needle) in cases {
        let err = engine.render(&p, &mut |_, _| true).unwrap_err();
        assert!(!err.retryable(), "{err} should not be retryable");
        assert!(err.to_string().contains(needle), "{err:?} lacks {needle:?}");
    }
}

#[test]
fn resolver_checks_references() {
    let cache = tempfile::tempdir().unwrap();
    let resolver = ModelResolver::new(cache.path());
    let tiny = resolver.resolve(BUILTIN_TINY).unwrap();
    assert_eq!(tiny.dir, cache.path().join("builtin/tiny-sd"));
    assert_eq!(tiny.name, "tiny-sd");
    assert!(tiny
        .hash
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_eq!(resolver.resolve(BUILTIN_TINY).unwrap(), tiny);

    // A folder is used where it is, named after itself, and hashed the same way.
    let copy = cache.path().join("my-model");
    write_tiny_model(&copy).unwrap();
    let resolved = resolver.resolve(copy.to_str().unwrap()).unwrap();
    assert_eq!(
        (resolved.name.as_str(), &resolved.hash),
        ("my-model", &tiny.hash)
    );

    let missing = resolver.resolve("/nonexistent/model").unwrap_err();
    assert!(
        matches!(missing, EngineError::ModelNotFound { .. }),
        "{missing:?}"
    );
    assert!(!missing.retryable());

    let ckpt = cache.path().join("model.ckpt");
    std::fs::write(&ckpt, b"not really a pickle").unwrap();
    let err = resolver.resolve(ckpt.to_str().unwrap()).unwrap_err();
    assert!(err.to_string().contains("pickle"), "{err}");
    assert!(!err.retryable());

    let single = cache.path().join("model.safetensors");
    std::fs::write(&single, b"{}").unwrap();
    let err = resolver.resolve(single.to_str().unwrap()).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(!err.retryable());

    std::fs::remove_file(copy.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let err = resolver.resolve(copy.to_str().unwrap()).unwrap_err();
    assert!(
        err.to_string()
            .contains("unet/diffusion_pytorch_model.safetensors"),
        "{err}"
    );

    let empty = resolver.resolve("  ").unwrap_err();
    assert!(empty.to_string().contains("model"), "{empty}");
}
