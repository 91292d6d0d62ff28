//! A1111's NaN check: a checkpoint or VAE whose weights hold NaN renders no image; the task
//! fails, not retryably, with a reason naming the network and what to try, and the same
//! engine renders the next task.

use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use sdfarm_proto::RenderParams;
use sdfarm_worker::engine::Engine;
use sdfarm_worker::models::{write_tiny_model, ModelResolver, BUILTIN_TINY};

/// Rewrites `file` with tensor `name` filled with NaN.
fn poison(file: &Path, name: &str) {
    let bytes = std::fs::read(file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let data: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let mut raw = t.data().to_vec();
            if n == name {
                assert_eq!(t.dtype(), safetensors::Dtype::F32);
                raw = raw
                    .chunks_exact(4)
                    .flat_map(|_| f32::NAN.to_le_bytes())
                    .collect();
            }
            (n, t.dtype(), t.shape().to_vec(), raw)
        })
        .collect();
    assert!(data.iter().any(|(n, ..)| n == name), "no tensor {name}");
    let views = data
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()));
    std::fs::write(file, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn params(model: &str, vae: &str) -> RenderParams {
    RenderParams {
        prompt: "a cat".into(),
        seed: 1,
        steps: 2,
        sampler_name: "Euler".into(),
        cfg_scale: 7.0,
        width: 32,
        height: 32,
        model: model.into(),
        vae: vae.into(),
        rng: "CPU".into(),
        ..Default::default()
    }
}

#[test]
fn nan_weights_fail_the_task_with_a_reason_and_the_engine_keeps_rendering() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken-unet");
    write_tiny_model(&broken).unwrap();
    poison(
        &broken.join("unet/diffusion_pytorch_model.safetensors"),
        "conv_out.bias",
    );
    let vae_dir = dir.path().join("vae");
    write_tiny_model(&vae_dir).unwrap();
    let broken_vae = vae_dir.join("vae/diffusion_pytorch_model.safetensors");
    poison(&broken_vae, "decoder.conv_out.bias");

    let engine = Engine::new(ModelResolver::new(dir.path().join("cache")));
    let render = |p: RenderParams| engine.render(&p, &mut |_, _| true);

    let err = render(params(broken.to_str().unwrap(), "")).unwrap_err();
    let text = err.to_string();
    assert!(!err.retryable(), "{text}");
    assert!(text.contains("UNet produced NaN"), "{text}");
    assert!(text.contains("another checkpoint"), "{text}");
    assert!(
        render(params(BUILTIN_TINY, "")).is_ok(),
        "the engine stopped rendering"
    );

    let err = render(params(BUILTIN_TINY, broken_vae.to_str().unwrap())).unwrap_err();
    let text = err.to_string();
    assert!(!err.retryable(), "{text}");
    assert!(text.contains("VAE produced NaN"), "{text}");
    assert!(text.contains("sd_vae = \"None\""), "{text}");
    assert!(render(params(BUILTIN_TINY, "None")).is_ok());
}
