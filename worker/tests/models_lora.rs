//! LoRA networks made here for the built-in tiny model: merged, they change the image; at
//! weight 0 the base image comes back exactly; files that do not fit the model are refused.

use std::path::Path;

use candle_core::{Device, Tensor};
use safetensors::tensor::{Dtype, TensorView};
use sdfarm_worker::engine::pipeline::decoded_to_rgb8;
use sdfarm_worker::engine::{EngineError, Pipeline, SampleSettings, Sampler};
use sdfarm_worker::models::lora::{extract_tags, find, LoraTag, LoraUse};
use sdfarm_worker::models::{ModelResolver, BUILTIN_TINY};

/// A kohya-format LoRA of rank 4 on a UNet attention projection, a UNet 1x1 convolution and
/// a text-encoder projection of the tiny model (all 32 wide).
fn write_lora(path: &Path, modules: &[(&str, bool)]) {
    let rank = 4usize;
    let values = |n: usize, phase: f32| -> Vec<u8> {
        (0..n)
            .flat_map(|i| ((i as f32 * 0.37 + phase).sin() * 0.5).to_le_bytes())
            .collect()
    };
    let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, (module, conv)) in modules.iter().enumerate() {
        let (down, up) = if *conv {
            (vec![rank, 32, 1, 1], vec![32, rank, 1, 1])
        } else {
            (vec![rank, 32], vec![32, rank])
        };
        data.push((
            format!("{module}.lora_down.weight"),
            down,
            values(rank * 32, i as f32),
        ));
        data.push((
            format!("{module}.lora_up.weight"),
            up,
            values(rank * 32, 1.0 + i as f32),
        ));
        data.push((
            format!("{module}.alpha"),
            vec![],
            2.0f32.to_le_bytes().to_vec(),
        ));
    }
    let views = data.iter().map(|(n, s, b)| {
        (
            n.clone(),
            TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
        )
    });
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

const MODULES: &[(&str, bool)] = &[
    (
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
        false,
    ),
    ("lora_unet_down_blocks_0_attentions_0_proj_in", true),
    (
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj",
        false,
    ),
];

/// A 32x32, 2-step Euler render through the pipeline's stages.
fn render(pipeline: &Pipeline) -> Vec<u8> {
    let (sampler, _) = Sampler::resolve("Euler").unwrap();
    let settings = SampleSettings::new(sampler, 2, 7.0);
    let cond = pipeline.encode_prompt("a photo of a cat", 0).unwrap();
    let uncond = pipeline.encode_prompt("", 0).unwrap();
    let shape = pipeline.latent_shape(32, 32).unwrap();
    let numel: usize = shape.iter().product();
    let noise: Vec<f32> = (0..numel).map(|i| (i as f32 * 0.61).sin()).collect();
    let noise = Tensor::from_vec(noise, shape.to_vec(), &Device::Cpu).unwrap();
    let mut fresh = || -> Result<Tensor, EngineError> { unreachable!("Euler draws no noise") };
    let latents = pipeline
        .sample(&settings, &cond, &uncond, &noise, &mut fresh, &mut |_| true)
        .unwrap();
    decoded_to_rgb8(&pipeline.decode(&latents).unwrap())
        .unwrap()
        .2
}

#[test]
fn a_lora_changes_the_image_and_weight_zero_gives_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let resolver = ModelResolver::new(dir.path().join("cache"));
    let tiny = resolver.resolve(BUILTIN_TINY).unwrap();
    let loras = dir.path().join("Lora");
    std::fs::create_dir_all(&loras).unwrap();
    write_lora(&loras.join("tiny-style.safetensors"), MODULES);
    let path = find(Some(&loras), "tiny-style").unwrap();

    let base = render(&tiny.load().unwrap());
    let at = |te_weight: f32, unet_weight: f32| {
        let lora = LoraUse {
            path: path.clone(),
            te_weight,
            unet_weight,
        };
        render(&tiny.load_with_loras(&[lora]).unwrap())
    };
    assert_eq!(at(0.0, 0.0), base, "weight 0 must give the base image back");
    let full = at(1.0, 1.0);
    assert_ne!(full, base, "the LoRA did not change the image");
    assert_ne!(at(1.0, 0.0), base, "the text-encoder part did nothing");
    assert_ne!(at(0.0, 1.0), base, "the UNet part did nothing");
    assert_ne!(at(0.5, 0.5), full, "the weight is not applied");
}

#[test]
fn loras_that_do_not_fit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let resolver = ModelResolver::new(dir.path().join("cache"));
    let tiny = resolver.resolve(BUILTIN_TINY).unwrap();
    let wrong = dir.path().join("for-another-model.safetensors");
    write_lora(
        &wrong,
        &[("lora_unet_down_blocks_7_attentions_0_proj_in", true)],
    );
    let err = tiny
        .load_with_loras(&[LoraUse {
            path: wrong,
            te_weight: 1.0,
            unet_weight: 1.0,
        }])
        .err()
        .expect("a LoRA for another model must be refused");
    assert!(!err.retryable());
    assert!(err.to_string().contains("matches no layer"), "{err}");
    let missing = find(Some(dir.path()), "nothing").unwrap_err();
    assert!(!missing.retryable() && missing.to_string().contains("nothing"));
}

#[test]
fn prompt_tags_are_read_and_removed() {
    let (text, tags) =
        extract_tags("a cat <lora:tiny-style:0.8>, <lora:b>, <lora:c:1:0.5>").unwrap();
    assert_eq!(text, "a cat , , ");
    let tag = |name: &str, te_weight, unet_weight| LoraTag {
        name: name.into(),
        te_weight,
        unet_weight,
    };
    assert_eq!(
        tags,
        [
            tag("tiny-style", 0.8, 0.8),
            tag("b", 1.0, 1.0),
            tag("c", 1.0, 0.5)
        ]
    );
    assert!(extract_tags("<lora:x:heavy>").is_err());
    assert_eq!(extract_tags("no tags <here>").unwrap().0, "no tags <here>");
}

#[test]
fn prompts_with_lora_tags_render_through_the_engine() {
    use sdfarm_proto::RenderParams;
    use sdfarm_worker::engine::Engine;
    let dir = tempfile::tempdir().unwrap();
    let loras = dir.path().join("Lora");
    std::fs::create_dir_all(&loras).unwrap();
    write_lora(&loras.join("tiny-style.safetensors"), MODULES);
    let engine = Engine::new(ModelResolver::new(dir.path().join("cache")).with_lora_dir(&loras));
    let render = |prompt: &str| {
        let params = RenderParams {
            prompt: prompt.into(),
            seed: 4,
            steps: 2,
            sampler_name: "Euler".into(),
            cfg_scale: 7.0,
            width: 32,
            height: 32,
            model: BUILTIN_TINY.into(),
            rng: "CPU".into(),
            ..Default::default()
        };
        engine.render(&params, &mut |_, _| true)
    };
    let base = render("a cat").unwrap().rgb;
    // The tag is removed from the text and a weight of 0 changes no weight.
    assert_eq!(render("a cat<lora:tiny-style:0>").unwrap().rgb, base);
    assert_ne!(render("a cat<lora:tiny-style:1>").unwrap().rgb, base);
    let missing = render("a cat <lora:absent:1>").unwrap_err();
    assert!(!missing.retryable());
    assert!(missing.to_string().contains("absent"), "{missing}");
}
