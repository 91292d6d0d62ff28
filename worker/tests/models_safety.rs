//! Untrusted model files: pickles, truncated files, lying headers and header bombs are
//! refused with a reason a person can act on, never retried, and the engine that refused them
//! renders the next task as if nothing happened. Every bad file is built here, so these tests
//! need nothing but the repository.

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use sdfarm_proto::RenderParams;
use sdfarm_worker::engine::{Engine, EngineError};
use sdfarm_worker::models::safe_file::SafeFile;
use sdfarm_worker::models::{ModelResolver, BUILTIN_TINY};

/// A valid `.safetensors` file with the given F32 tensors (values are their index).
fn safetensors_bytes(tensors: &[(&str, Vec<usize>)]) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let bytes = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
            (name.to_string(), shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// A file whose header is exactly `header`, followed by `data`.
fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Bad files and a phrase each one's error must contain.
fn bad_files(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    let good = safetensors_bytes(&[
        ("model.diffusion_model.input_blocks.0.0.weight", vec![4, 4]),
        ("model.diffusion_model.out.2.bias", vec![4]),
    ]);
    let mut header_bomb = u64::MAX.to_le_bytes().to_vec();
    header_bomb.extend_from_slice(b"{}");
    vec![
        (write(dir, "pickled.ckpt", b"\x80\x02}q\x00."), "pickle"),
        (
            write(dir, "renamed-pickle.safetensors", b"\x80\x04\x95}q\x00."),
            "pickle",
        ),
        (
            write(dir, "torch-zip.safetensors", b"PK\x03\x04archive/data.pkl"),
            "zip checkpoint",
        ),
        (write(dir, "empty.safetensors", b""), "truncated"),
        (
            write(dir, "truncated.safetensors", &good[..good.len() - 10]),
            "truncated",
        ),
        (
            write(dir, "header-bomb.safetensors", &header_bomb),
            "header claims",
        ),
        (
            write(dir, "short-header.safetensors", &{
                let mut b = 4096u64.to_le_bytes().to_vec();
                b.extend_from_slice(b"{\"a\":");
                b
            }),
            "truncated",
        ),
        (
            write(
                dir,
                "huge-tensor.safetensors",
                &raw_file(
                    r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#,
                    &[0; 4],
                ),
            ),
            "2^64 bytes",
        ),
        (
            write(
                dir,
                "claims-more.safetensors",
                &raw_file(
                    r#"{"w":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}"#,
                    &[0; 16],
                ),
            ),
            "truncated or lying header",
        ),
        (
            write(
                dir,
                "overlap.safetensors",
                &raw_file(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                    &[0; 12],
                ),
            ),
            "offsets are inconsistent",
        ),
        (
            write(
                dir,
                "wrong-size.safetensors",
                &raw_file(
                    r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                    &[0; 8],
                ),
            ),
            "header lies",
        ),
        (
            write(dir, "not-json.safetensors", &raw_file("not json", &[])),
            "not valid JSON",
        ),
        (
            write(dir, "unet-only.safetensors", &good),
            "UNet without text encoder",
        ),
        (
            write(
                dir,
                "a-vae.safetensors",
                &safetensors_bytes(&[
                    ("encoder.conv_in.weight", vec![2]),
                    ("decoder.conv_in.weight", vec![2]),
                ]),
            ),
            "VAE override",
        ),
        (
            write(
                dir,
                "a-lora.safetensors",
                &safetensors_bytes(&[("lora_unet_down_blocks_0.lora_down.weight", vec![2])]),
            ),
            "<lora:",
        ),
        (
            write(
                dir,
                "sdxl-refiner.safetensors",
                &safetensors_bytes(&[
                    ("model.diffusion_model.out.2.bias", vec![4]),
                    ("conditioner.embedders.0.model.ln_final.weight", vec![4]),
                ]),
            ),
            "SDXL refiner",
        ),
        (
            write(
                dir,
                "random.safetensors",
                &safetensors_bytes(&[("weight", vec![2])]),
            ),
            "not a Stable Diffusion checkpoint",
        ),
    ]
}

#[test]
fn bad_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let resolver = ModelResolver::new(dir.path().join("cache"));
    for (path, needle) in bad_files(dir.path()) {
        let err = resolver.resolve(path.to_str().unwrap()).unwrap_err();
        let message = err.to_string();
        println!("{}: {message}", path.display());
        assert!(
            matches!(err, EngineError::InvalidModel { .. }),
            "{}: {err:?}",
            path.display()
        );
        assert!(!err.retryable(), "{message} is retryable");
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        assert!(
            message.contains(path.file_name().unwrap().to_str().unwrap()),
            "{message:?} does not name the file"
        );
    }
}

#[test]
fn pickles_are_refused_with_how_to_convert() {
    let dir = tempfile::tempdir().unwrap();
    let resolver = ModelResolver::new(dir.path());
    for name in ["model.ckpt", "model.pt", "model.pth", "model.bin"] {
        let path = write(dir.path(), name, b"anything");
        let err = resolver.resolve(path.to_str().unwrap()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("arbitrary code"), "{message}");
        assert!(message.contains("safetensors"), "{message}");
        assert!(message.contains("weights_only=True"), "{message}");
    }
}

#[test]
fn a_valid_header_is_read_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "ok.safetensors",
        &safetensors_bytes(&[("b", vec![3]), ("a", vec![2, 2])]),
    );
    let file = SafeFile::open(&path).unwrap();
    assert_eq!(file.tensors().len(), 2);
    assert_eq!(file.tensors()["a"].shape, vec![2, 2]);
    let read = file
        .read(&[("a", "renamed".into())], &candle_core::Device::Cpu)
        .unwrap();
    let values = read["renamed"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(values, vec![0.0, 1.0, 2.0, 3.0]);
}

/// One engine is given every bad file in turn, then a good model: the failures leave nothing
/// behind and the next render works.
#[test]
fn the_engine_keeps_rendering_after_bad_models() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(ModelResolver::new(dir.path().join("cache")));
    let params = |model: &str| RenderParams {
        prompt: "a cat".into(),
        seed: 5,
        steps: 2,
        sampler_name: "Euler".into(),
        cfg_scale: 7.0,
        width: 32,
        height: 32,
        model: model.into(),
        rng: "CPU".into(),
        ..Default::default()
    };
    let before = engine
        .render(&params(BUILTIN_TINY), &mut |_, _| true)
        .unwrap();
    for (path, needle) in bad_files(dir.path()) {
        let err = engine
            .render(&params(path.to_str().unwrap()), &mut |_, _| true)
            .unwrap_err();
        assert!(!err.retryable(), "{err}");
        assert!(err.to_string().contains(needle), "{err}");
        let after = engine
            .render(&params(BUILTIN_TINY), &mut |_, _| true)
            .unwrap();
        assert_eq!(after.rgb, before.rgb);
    }
    // An SDXL base checkpoint resolves like any other, but one missing its second text
    // encoder fails to load with the part named, and the engine goes on.
    let partial = write(
        dir.path(),
        "sdxl-partial.safetensors",
        &safetensors_bytes(&[
            ("model.diffusion_model.out.2.bias", vec![4]),
            ("conditioner.embedders.1.model.ln_final.weight", vec![4]),
        ]),
    );
    let err = engine
        .render(&params(partial.to_str().unwrap()), &mut |_, _| true)
        .unwrap_err();
    assert!(!err.retryable(), "{err}");
    assert!(err.to_string().contains("second text encoder"), "{err}");
    let after = engine
        .render(&params(BUILTIN_TINY), &mut |_, _| true)
        .unwrap();
    assert_eq!(after.rgb, before.rgb);
    assert_eq!(engine.loaded_models(), vec![BUILTIN_TINY.to_string()]);
}
