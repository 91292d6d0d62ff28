//! Single-file SD 2.x checkpoints. The reference kit has no SD 2.x single file, so the test
//! writes one from the tiny-sd2 diffusers folder in the original Stability layout
//! (`model.diffusion_model.*` and `first_stage_model.*` named as in the kit's tiny-sd-v1 file,
//! the text encoder as OpenCLIP under `cond_stage_model.model.*`: fused q/k/v, `resblocks`, a
//! last resblock that SD 2.x does not use, as diffusers' conversion drops it) and checks that
//! it renders the folder's pixels, with v-prediction taken from the file's metadata.
//!
//! Needs `../shared/reference` (or `SDFARM_REFERENCE_DIR`); without it the test prints a note
//! and passes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sdfarm_proto::RenderParams;
use sdfarm_worker::engine::pipeline::Prediction;
use sdfarm_worker::engine::Engine;
use sdfarm_worker::models::ldm_keys::{map_keys, Part};
use sdfarm_worker::models::single_file_sd2::load_sd2;
use sdfarm_worker::models::ModelResolver;

mod common;
use common::reference_dir;

/// name → (shape, little-endian f32 bytes)
type Tensors = BTreeMap<String, (Vec<usize>, Vec<u8>)>;

fn read(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), Dtype::F32, "{name}");
            (name, (view.shape().to_vec(), view.data().to_vec()))
        })
        .collect()
}

fn write(path: &Path, tensors: &Tensors, metadata: Option<HashMap<String, String>>) {
    let views = tensors.iter().map(|(name, (shape, data))| {
        (
            name.clone(),
            TensorView::new(Dtype::F32, shape.clone(), data).unwrap(),
        )
    });
    std::fs::write(path, safetensors::serialize(views, metadata).unwrap()).unwrap();
}

/// diffusers' `text_model.*` → OpenCLIP names under `cond_stage_model.model.`, q/k/v fused,
/// plus one more resblock (the one SD 2.x leaves unused), a text projection and logit scale.
fn open_clip_text(folder: &Tensors) -> Tensors {
    const P: &str = "cond_stage_model.model.";
    let mut out = Tensors::new();
    let mut layers = 0;
    for (name, value) in folder {
        let rest = name.strip_prefix("text_model.").unwrap();
        let renamed = match rest {
            "embeddings.token_embedding.weight" => Some("token_embedding.weight".to_string()),
            "embeddings.position_embedding.weight" => Some("positional_embedding".to_string()),
            "final_layer_norm.weight" => Some("ln_final.weight".to_string()),
            "final_layer_norm.bias" => Some("ln_final.bias".to_string()),
            _ => None,
        };
        if let Some(n) = renamed {
            out.insert(format!("{P}{n}"), value.clone());
            continue;
        }
        let rest = rest.strip_prefix("encoder.layers.").unwrap();
        let (layer, tail) = rest.split_once('.').unwrap();
        layers = layers.max(layer.parse::<usize>().unwrap() + 1);
        let tail = [
            ("layer_norm1.", "ln_1."),
            ("layer_norm2.", "ln_2."),
            ("self_attn.out_proj.", "attn.out_proj."),
            ("mlp.fc1.", "mlp.c_fc."),
            ("mlp.fc2.", "mlp.c_proj."),
        ]
        .iter()
        .find_map(|(from, to)| tail.strip_prefix(from).map(|p| format!("{to}{p}")));
        if let Some(tail) = tail {
            out.insert(
                format!("{P}transformer.resblocks.{layer}.{tail}"),
                value.clone(),
            );
        }
    }
    for layer in 0..layers {
        for param in ["weight", "bias"] {
            let mut shape = Vec::new();
            let mut data = Vec::new();
            for which in ["q_proj", "k_proj", "v_proj"] {
                let (s, d) = &folder
                    [&format!("text_model.encoder.layers.{layer}.self_attn.{which}.{param}")];
                shape = s.clone();
                data.extend_from_slice(d);
            }
            shape[0] *= 3;
            out.insert(
                format!("{P}transformer.resblocks.{layer}.attn.in_proj_{param}"),
                (shape, data),
            );
        }
    }
    // The unused last resblock: layer 0's tensors with other values.
    let first = format!("{P}transformer.resblocks.0.");
    let extra: Vec<(String, (Vec<usize>, Vec<u8>))> = out
        .iter()
        .filter_map(|(name, (shape, data))| {
            let tail = name.strip_prefix(&first)?;
            let data = data
                .chunks_exact(4)
                .flat_map(|b| {
                    (f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * -3.0 + 0.25).to_le_bytes()
                })
                .collect();
            Some((
                format!("{P}transformer.resblocks.{layers}.{tail}"),
                (shape.clone(), data),
            ))
        })
        .collect();
    out.extend(extra);
    let width = folder["text_model.final_layer_norm.weight"].0[0];
    let identity: Vec<u8> = (0..width * width)
        .flat_map(|i| if i % (width + 1) == 0 { 1f32 } else { 0f32 }.to_le_bytes())
        .collect();
    out.insert(
        format!("{P}text_projection"),
        (vec![width, width], identity),
    );
    out.insert(
        format!("{P}logit_scale"),
        (vec![], 4.6f32.to_le_bytes().to_vec()),
    );
    out
}

/// The tiny-sd2 folder as an original SD 2.x checkpoint.
fn convert(reference: &Path) -> Tensors {
    let folder = reference.join("tiny-sd2/diffusers");
    let unet = read(&folder.join("unet/diffusion_pytorch_model.safetensors"));
    let vae = read(&folder.join("vae/diffusion_pytorch_model.safetensors"));
    // The original names of an SD 1.x-shaped UNet and VAE of these sizes.
    let v1 = read(&reference.join("tiny-sd/tiny-sd-v1.safetensors"));
    let map = map_keys(v1.keys().map(String::as_str));
    let mut out = Tensors::new();
    let mut covered = 0;
    for (stored, target) in &map.targets {
        let source = match target.part {
            Part::Unet => &unet,
            Part::Vae => &vae,
            Part::TextEncoder => continue,
        };
        // tiny-sd's VAE has channel-changing shortcuts tiny-sd2's does not.
        let Some((shape, data)) = source.get(&target.name) else {
            continue;
        };
        let mut shape = shape.clone();
        if target.squeeze {
            shape.extend([1, 1]);
        }
        out.insert(stored.clone(), (shape, data.clone()));
        covered += 1;
    }
    assert_eq!(
        covered,
        unet.len() + vae.len(),
        "every UNet and VAE tensor is written"
    );
    out.extend(open_clip_text(&read(
        &folder.join("text_encoder/model.safetensors"),
    )));
    out
}

fn params(model: &Path, sampler: &str, seed: i64) -> RenderParams {
    RenderParams {
        prompt: "a photo of a (cat:1.2), BREAK a dog".into(),
        negative_prompt: "blurry".into(),
        seed,
        steps: 4,
        sampler_name: sampler.into(),
        scheduler: "Automatic".into(),
        cfg_scale: 7.0,
        width: 64,
        height: 48,
        model: model.display().to_string(),
        rng: "CPU".into(),
        ..Default::default()
    }
}

#[test]
fn sd2_single_file_renders_the_pixels_of_its_folder() {
    let Some(reference) = reference_dir("tiny-sd2/diffusers/unet/config.json") else {
        println!("skipped: ../shared/reference not found");
        return;
    };
    let tensors = convert(&reference);
    let tmp = tempfile::tempdir().unwrap();
    let v_file = tmp.path().join("tiny-sd2-v.safetensors");
    let meta = |v: &str| {
        Some(HashMap::from([(
            "modelspec.prediction_type".to_string(),
            v.to_string(),
        )]))
    };
    write(&v_file, &tensors, meta("v"));
    let eps_file = tmp.path().join("tiny-sd2-eps.safetensors");
    write(&eps_file, &tensors, meta("epsilon"));
    let bare_file = tmp.path().join("tiny-sd2-bare.safetensors");
    write(&bare_file, &tensors, None);

    let cpu = candle_core::Device::Cpu;
    assert_eq!(load_sd2(&v_file, &cpu).unwrap().prediction(), Prediction::V);
    assert_eq!(
        load_sd2(&eps_file, &cpu).unwrap().prediction(),
        Prediction::Epsilon
    );
    let bare = load_sd2(&bare_file, &cpu).unwrap();
    println!(
        "without metadata, A1111's UNet test says {:?} for the random tiny UNet",
        bare.prediction()
    );
    assert_eq!(
        bare.prediction() == Prediction::V,
        bare.unet_suggests_v_prediction().unwrap()
    );

    let folder = reference.join("tiny-sd2/diffusers");
    let engine = Engine::new(ModelResolver::new(tmp.path().join("cache")));
    for (sampler, seed) in [("Euler", 1234), ("DDIM", 7), ("DPM++ 2M", 99)] {
        let from_folder = engine
            .render(&params(&folder, sampler, seed), &mut |_, _| true)
            .unwrap();
        let from_file = engine
            .render(&params(&v_file, sampler, seed), &mut |_, _| true)
            .unwrap();
        assert_eq!(from_file.model_name, "tiny-sd2-v");
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
        assert_eq!(
            differing, 0,
            "{sampler}: the single file renders other pixels"
        );
        let as_eps = engine
            .render(&params(&eps_file, sampler, seed), &mut |_, _| true)
            .unwrap();
        assert!(
            as_eps.rgb != from_folder.rgb,
            "{sampler}: prediction type has no effect"
        );
    }
}
