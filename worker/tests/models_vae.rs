//! VAE overrides (`sd_vae`): diffusers-named and original-named VAE files decode like the
//! checkpoint's own VAE when they hold the same weights, change the image when they do not,
//! and are named in the infotext as A1111 writes them.

use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use sdfarm_proto::RenderParams;
use sdfarm_worker::engine::Engine;
use sdfarm_worker::models::{ModelResolver, BUILTIN_TINY};
use sdfarm_worker::output::infotext_with_vae;
use sha2::{Digest, Sha256};

fn params(model: &str, vae: &str) -> RenderParams {
    RenderParams {
        prompt: "a cat".into(),
        seed: 3,
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

/// Rewrites the safetensors file `from` into `to`, renaming and changing tensors.
fn rewrite(
    from: &Path,
    to: &Path,
    keep: impl Fn(&str) -> Option<String>,
    change: impl Fn(&str, &mut Vec<u8>),
) {
    let bytes = std::fs::read(from).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let data: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(name, view)| {
            let new_name = keep(&name)?;
            let mut data = view.data().to_vec();
            change(&new_name, &mut data);
            Some((new_name, view.dtype(), view.shape().to_vec(), data))
        })
        .collect();
    let views = data
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()));
    std::fs::write(to, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn short_sha(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))[..10].to_string()
}

#[test]
fn vae_overrides_decode_and_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let vaes = dir.path().join("VAE");
    std::fs::create_dir_all(&vaes).unwrap();
    let resolver = ModelResolver::new(dir.path().join("cache")).with_vae_dir(&vaes);
    let tiny = resolver.resolve(BUILTIN_TINY).unwrap();
    let own = tiny.dir.join("vae/diffusion_pytorch_model.safetensors");

    // The model's own VAE under diffusers names, and a copy with a shifted output bias.
    let same = vaes.join("same.safetensors");
    std::fs::copy(&own, &same).unwrap();
    let shifted = vaes.join("shifted.safetensors");
    rewrite(
        &own,
        &shifted,
        |n| Some(n.to_string()),
        |n, data| {
            if n == "decoder.conv_out.bias" {
                for chunk in data.chunks_exact_mut(4) {
                    let v = f32::from_le_bytes(chunk.try_into().unwrap()) + 0.25;
                    chunk.copy_from_slice(&v.to_le_bytes());
                }
            }
        },
    );

    let engine = Engine::new(resolver);
    let base = engine
        .render(&params(BUILTIN_TINY, ""), &mut |_, _| true)
        .unwrap();
    assert_eq!((base.vae_name.as_str(), base.vae_hash.as_str()), ("", ""));
    let none = engine
        .render(&params(BUILTIN_TINY, "None"), &mut |_, _| true)
        .unwrap();
    assert_eq!(none.rgb, base.rgb);

    // By name in the VAE folder, as A1111's sd_vae option is set.
    let with_same = engine
        .render(&params(BUILTIN_TINY, "same.safetensors"), &mut |_, _| true)
        .unwrap();
    assert_eq!(with_same.rgb, base.rgb, "the same weights decode the same");
    assert_eq!(with_same.vae_name, "same.safetensors");
    assert_eq!(with_same.vae_hash, short_sha(&same));

    let with_shifted = engine
        .render(
            &params(BUILTIN_TINY, shifted.to_str().unwrap()),
            &mut |_, _| true,
        )
        .unwrap();
    assert_ne!(
        with_shifted.rgb, base.rgb,
        "a different VAE changes the image"
    );
    assert_eq!(with_shifted.vae_hash, short_sha(&shifted));

    let text = infotext_with_vae(
        &params(BUILTIN_TINY, "same.safetensors"),
        "tiny-sd",
        "0123456789",
        &with_same.vae_name,
        &with_same.vae_hash,
    );
    let wanted = format!(
        "Model hash: 0123456789, Model: tiny-sd, VAE hash: {}, VAE: same.safetensors, ",
        with_same.vae_hash
    );
    assert!(text.contains(&wanted), "{text}");

    let missing = engine
        .render(&params(BUILTIN_TINY, "nope.safetensors"), &mut |_, _| true)
        .unwrap_err();
    assert!(!missing.retryable());
    assert!(
        missing.to_string().contains("same.safetensors"),
        "{missing}"
    );
    let not_a_vae = engine
        .render(
            &params(
                BUILTIN_TINY,
                tiny.dir
                    .join("unet/diffusion_pytorch_model.safetensors")
                    .to_str()
                    .unwrap(),
            ),
            &mut |_, _| true,
        )
        .unwrap_err();
    assert!(!not_a_vae.retryable(), "{not_a_vae}");
}

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

/// An A1111-style VAE file (original names, no prefix) cut from the single-file checkpoint
/// decodes the diffusers folder's latents exactly as the folder's own VAE.
#[test]
fn an_original_layout_vae_file_matches_the_folder_vae() {
    let Some(reference) = reference_dir() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vae = dir.path().join("tiny.vae.safetensors");
    rewrite(
        &reference.join("tiny-sd/tiny-sd-v1.safetensors"),
        &vae,
        |n| n.strip_prefix("first_stage_model.").map(str::to_string),
        |_, _| {},
    );
    let folder = reference.join("tiny-sd/diffusers");
    let engine = Engine::new(ModelResolver::new(dir.path().join("cache")));
    let folder_ref = folder.to_str().unwrap();
    let own = engine
        .render(&params(folder_ref, ""), &mut |_, _| true)
        .unwrap();
    let overridden = engine
        .render(&params(folder_ref, vae.to_str().unwrap()), &mut |_, _| true)
        .unwrap();
    assert_eq!(overridden.rgb, own.rgb);
    assert_eq!(overridden.vae_name, "tiny.vae.safetensors");
}
