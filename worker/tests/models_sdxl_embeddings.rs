//! SDXL textual-inversion embeddings (`clip_l` + `clip_g` vectors): each of the model's two
//! text encoders takes the vectors of its own width. An embedding made of the token rows of a
//! word in both encoders conditions exactly as the word does, so renders the same image; one
//! with other vectors changes the image and is named in "TI hashes".
//!
//! Needs the reference kit's tiny SDXL folder (`../shared/reference`, or
//! `SDFARM_REFERENCE_DIR`); without it the test prints a note and passes.

use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sdfarm_proto::RenderParams;
use sdfarm_worker::engine::tokenizer::PromptTokenizer;
use sdfarm_worker::engine::Engine;
use sdfarm_worker::models::ModelResolver;

mod common;
use common::reference_dir;

fn write_tensors(path: &Path, tensors: &[(&str, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors.iter().zip(&bytes).map(|((name, shape, _), b)| {
        (
            name.to_string(),
            TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
        )
    });
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Token-embedding rows for `ids` of one encoder's weights, and the encoder's width.
fn token_rows(weights: &Path, ids: &[u32]) -> (Vec<f32>, usize) {
    let bytes = std::fs::read(weights).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let table = st
        .tensor("text_model.embeddings.token_embedding.weight")
        .unwrap();
    let width = table.shape()[1];
    let values: Vec<f32> = table
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let rows = ids
        .iter()
        .flat_map(|&id| values[id as usize * width..(id as usize + 1) * width].to_vec())
        .collect();
    (rows, width)
}

fn params(model: &Path, prompt: &str) -> RenderParams {
    RenderParams {
        prompt: prompt.into(),
        negative_prompt: "blurry".into(),
        seed: 5,
        steps: 3,
        sampler_name: "Euler".into(),
        cfg_scale: 5.0,
        width: 32,
        height: 32,
        model: model.display().to_string(),
        rng: "CPU".into(),
        ..Default::default()
    }
}

#[test]
fn sdxl_embeddings_feed_both_encoders() {
    let Some(dir) = reference_dir("tiny-sdxl/diffusers/text_encoder_2/model.safetensors") else {
        println!("skipped: ../shared/reference not found");
        return;
    };
    let model = dir.join("tiny-sdxl/diffusers");
    let tmp = tempfile::tempdir().unwrap();
    let embeddings = tmp.path().join("embeddings");
    std::fs::create_dir_all(&embeddings).unwrap();

    let tokenizer = PromptTokenizer::builtin().unwrap();
    let ids = tokenizer.tokenize_fragment("lighthouse").unwrap();
    let (l, wl) = token_rows(&model.join("text_encoder/model.safetensors"), &ids);
    let (g, wg) = token_rows(&model.join("text_encoder_2/model.safetensors"), &ids);
    assert_ne!(wl, wg);
    write_tensors(
        &embeddings.join("tinyword.safetensors"),
        &[
            ("clip_l", vec![ids.len(), wl], l),
            ("clip_g", vec![ids.len(), wg], g),
        ],
    );
    let n = 2;
    write_tensors(
        &embeddings.join("tinystyle.safetensors"),
        &[
            (
                "clip_l",
                vec![n, wl],
                (0..n * wl).map(|i| (i as f32 * 0.7).sin()).collect(),
            ),
            (
                "clip_g",
                vec![n, wg],
                (0..n * wg).map(|i| (i as f32 * 0.3).cos()).collect(),
            ),
        ],
    );

    let engine =
        Engine::new(ModelResolver::new(tmp.path().join("cache")).with_embeddings_dir(&embeddings));
    let words = engine
        .render(
            &params(&model, "a (lighthouse:1.1) at dusk"),
            &mut |_, _| true,
        )
        .unwrap();
    assert!(words.ti_hashes.is_empty());
    let same = engine
        .render(&params(&model, "a (tinyword:1.1) at dusk"), &mut |_, _| {
            true
        })
        .unwrap();
    assert!(
        same.ti_hashes.starts_with("tinyword: "),
        "{}",
        same.ti_hashes
    );
    assert!(
        same.rgb == words.rgb,
        "the word's own vectors render another image"
    );
    let style = engine
        .render(&params(&model, "a (tinystyle:1.1) at dusk"), &mut |_, _| {
            true
        })
        .unwrap();
    assert!(
        style.ti_hashes.starts_with("tinystyle: "),
        "{}",
        style.ti_hashes
    );
    assert!(
        style.rgb != words.rgb,
        "the embedding left the image unchanged"
    );
}
