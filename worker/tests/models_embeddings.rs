//! Textual-inversion embeddings made here for the built-in tiny model: used by name in a
//! prompt they change the image; an embedding whose vectors are the token embeddings of the
//! words it replaces gives the base image back; multi-vector embeddings take token slots of
//! the 75-token chunk as in A1111; unusable files are refused with a reason; and the infotext
//! lists them as A1111's "TI hashes".

use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use sdfarm_proto::RenderParams;
use sdfarm_worker::engine::conditioning::{tokenize_line, tokenize_line_with};
use sdfarm_worker::engine::tokenizer::PromptTokenizer;
use sdfarm_worker::engine::Engine;
use sdfarm_worker::models::{ModelResolver, BUILTIN_TINY};
use sdfarm_worker::output::{infotext_with_networks, parse_infotext};
use sha2::{Digest, Sha256};

/// The tiny model's text width.
const WIDTH: usize = 32;

/// Writes a safetensors file of F32 tensors.
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

/// `n` vectors of the tiny model's width that no word has.
fn style_vectors(n: usize) -> Vec<f32> {
    (0..n * WIDTH)
        .map(|i| (i as f32 * 0.71).sin() * 0.8)
        .collect()
}

/// Token-embedding rows of the tiny model's text encoder for `ids`.
fn token_rows(resolver: &ModelResolver, ids: &[u32]) -> Vec<f32> {
    let model = resolver.resolve(BUILTIN_TINY).unwrap();
    let bytes = std::fs::read(model.dir.join("text_encoder/model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let table = st
        .tensor("text_model.embeddings.token_embedding.weight")
        .unwrap();
    assert_eq!(table.dtype(), Dtype::F32);
    assert_eq!(table.shape()[1], WIDTH);
    let values: Vec<f32> = table
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    ids.iter()
        .flat_map(|&id| values[id as usize * WIDTH..(id as usize + 1) * WIDTH].to_vec())
        .collect()
}

fn params(prompt: &str, negative: &str) -> RenderParams {
    RenderParams {
        prompt: prompt.into(),
        negative_prompt: negative.into(),
        seed: 5,
        steps: 2,
        sampler_name: "Euler".into(),
        cfg_scale: 7.0,
        width: 32,
        height: 32,
        model: BUILTIN_TINY.into(),
        rng: "CPU".into(),
        ..Default::default()
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    embeddings: PathBuf,
    cache: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let embeddings = dir.path().join("embeddings");
    std::fs::create_dir_all(&embeddings).unwrap();
    Setup {
        cache: dir.path().join("cache"),
        embeddings,
        _dir: dir,
    }
}

fn sha12(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))[..12].to_string()
}

#[test]
fn an_embedding_changes_the_image_and_its_own_words_give_it_back() {
    let s = setup();
    let tokenizer = PromptTokenizer::builtin().unwrap();
    let plain = Engine::new(ModelResolver::new(&s.cache));
    let base = plain
        .render(&params("a photo of tinystyle", ""), &mut |_, _| true)
        .unwrap();
    assert!(base.ti_hashes.is_empty());

    // The name's own token vectors: the same conditioning as the words, so the same image.
    let ids = tokenizer.tokenize_fragment("tinystyle").unwrap();
    assert!(ids.len() >= 2, "a multi-token name: {ids:?}");
    let same = s.embeddings.join("tinystyle.safetensors");
    write_tensors(
        &same,
        &[(
            "emb_params",
            vec![ids.len(), WIDTH],
            token_rows(plain.resolver(), &ids),
        )],
    );
    let engine = Engine::new(ModelResolver::new(&s.cache).with_embeddings_dir(&s.embeddings));
    let identity = engine
        .render(&params("a photo of tinystyle", ""), &mut |_, _| true)
        .unwrap();
    assert_eq!(
        identity.rgb, base.rgb,
        "the words' own vectors must render the base image"
    );
    assert_eq!(identity.ti_hashes, format!("tinystyle: {}", sha12(&same)));

    // Other vectors change the image, in the prompt and in the negative prompt; the
    // attention weight applies to them.
    write_tensors(&same, &[("emb_params", vec![3, WIDTH], style_vectors(3))]);
    let styled = engine
        .render(&params("a photo of tinystyle", ""), &mut |_, _| true)
        .unwrap();
    assert_ne!(
        styled.rgb, base.rgb,
        "the embedding did not change the image"
    );
    assert_eq!(
        styled.ti_hashes,
        format!("tinystyle: {}", sha12(&same)),
        "rehashed after the file changed"
    );
    let weighted = engine
        .render(&params("a photo of (tinystyle:1.4)", ""), &mut |_, _| true)
        .unwrap();
    assert_ne!(weighted.rgb, styled.rgb, "the weight is not applied");
    let negative_base = plain
        .render(&params("a photo", "tinystyle"), &mut |_, _| true)
        .unwrap();
    let negative = engine
        .render(&params("a photo", "tinystyle"), &mut |_, _| true)
        .unwrap();
    assert_ne!(
        negative.rgb, negative_base.rgb,
        "the negative prompt's embedding did nothing"
    );
}

#[test]
fn file_layouts_are_read_and_bad_ones_refused_with_the_reason() {
    let s = setup();
    write_tensors(
        &s.embeddings.join("one-vector.safetensors"),
        &[("string_to_param.*", vec![WIDTH], style_vectors(1))],
    );
    write_tensors(
        &s.embeddings.join("wide.safetensors"),
        &[("emb_params", vec![2, 768], vec![0.1; 2 * 768])],
    );
    write_tensors(
        &s.embeddings.join("xlstyle.safetensors"),
        &[
            ("clip_g", vec![2, 1280], vec![0.1; 2 * 1280]),
            ("clip_l", vec![2, 768], vec![0.1; 2 * 768]),
        ],
    );
    write_tensors(
        &s.embeddings.join("two-terms.safetensors"),
        &[
            ("a", vec![1, WIDTH], style_vectors(1)),
            ("b", vec![1, WIDTH], style_vectors(1)),
        ],
    );
    std::fs::write(s.embeddings.join("pickled.pt"), b"\x80\x02}q\x00.").unwrap();
    let engine = Engine::new(ModelResolver::new(&s.cache).with_embeddings_dir(&s.embeddings));
    let render = |prompt: &str| engine.render(&params(prompt, ""), &mut |_, _| true);

    let one = render("a one-vector cat").unwrap();
    assert!(
        one.ti_hashes.starts_with("one-vector: "),
        "{}",
        one.ti_hashes
    );
    for (prompt, phrase) in [
        ("a wide cat", "768-wide"),
        ("an xlstyle cat", "SDXL"),
        ("a two-terms cat", "one (emb_params"),
        ("a pickled cat", "pickle"),
    ] {
        let err = render(prompt)
            .err()
            .unwrap_or_else(|| panic!("{prompt} rendered"));
        assert!(!err.retryable(), "{prompt}: {err}");
        assert!(err.to_string().contains(phrase), "{prompt}: {err}");
    }
    // The same engine goes on rendering; an unused bad file is never read.
    assert!(render("a cat").unwrap().ti_hashes.is_empty());
}

#[test]
fn vectors_take_token_slots_and_move_to_the_next_chunk_when_they_do_not_fit() {
    let s = setup();
    write_tensors(
        &s.embeddings.join("triple.safetensors"),
        &[("emb_params", vec![3, WIDTH], style_vectors(3))],
    );
    let tokenizer = PromptTokenizer::builtin().unwrap();
    let resolver = ModelResolver::new(&s.cache).with_embeddings_dir(&s.embeddings);
    let set = resolver
        .embeddings_for(&tokenizer, &candle_core::Device::Cpu)
        .unwrap();
    assert_eq!(set.names(), ["triple"]);

    let (chunks, count) = tokenize_line_with(&tokenizer, "a triple cat", &set).unwrap();
    assert_eq!(count, 5, "a, three vectors, cat");
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].fixes.len(), 1);
    assert_eq!(chunks[0].fixes[0].offset, 2);
    assert_eq!(chunks[0].fixes[0].vectors, 3);
    assert_eq!(&chunks[0].tokens[2..5], &[0, 0, 0]);
    // Matching is on tokens, so case does not matter (CLIP lowercases).
    let (upper, _) = tokenize_line_with(&tokenizer, "a TRIPLE cat", &set).unwrap();
    assert_eq!(upper[0].fixes, chunks[0].fixes);

    // 73 words leave two slots: the three vectors start the second chunk.
    let filler = "cat ".repeat(73);
    let (plain, _) = tokenize_line(&tokenizer, &filler).unwrap();
    assert_eq!(plain.len(), 1);
    let (chunks, count) = tokenize_line_with(&tokenizer, &format!("{filler}triple"), &set).unwrap();
    assert_eq!(chunks.len(), 2);
    assert_eq!(count, 75 + 3);
    assert!(chunks[0].fixes.is_empty());
    assert_eq!(chunks[1].fixes[0].offset, 1);
    // 72 words leave three: they fit.
    let (chunks, _) =
        tokenize_line_with(&tokenizer, &format!("{}triple", "cat ".repeat(72)), &set).unwrap();
    assert_eq!(chunks.len(), 1);
    assert_eq!(chunks[0].fixes[0].offset, 73);
}

#[test]
fn the_infotext_lists_used_embeddings_as_a1111_does() {
    let s = setup();
    write_tensors(
        &s.embeddings.join("EasyNegative.safetensors"),
        &[("emb_params", vec![2, WIDTH], style_vectors(2))],
    );
    write_tensors(
        &s.embeddings.join("tinystyle.safetensors"),
        &[("emb_params", vec![1, WIDTH], style_vectors(1))],
    );
    let engine = Engine::new(ModelResolver::new(&s.cache).with_embeddings_dir(&s.embeddings));
    let p = params("a tinystyle cat", "EasyNegative, blurry");
    let image = engine.render(&p, &mut |_, _| true).unwrap();
    // A1111 encodes the negative prompt first and lists each later call's embeddings first.
    let easy = sha12(&s.embeddings.join("EasyNegative.safetensors"));
    let tiny = sha12(&s.embeddings.join("tinystyle.safetensors"));
    assert_eq!(
        image.ti_hashes,
        format!("tinystyle: {tiny}, EasyNegative: {easy}")
    );
    let text = infotext_with_networks(
        &p,
        &image.model_name,
        &image.model_hash,
        "",
        "",
        &image.lora_hashes,
        &image.ti_hashes,
    );
    assert!(
        text.contains(&format!(
            "TI hashes: \"tinystyle: {tiny}, EasyNegative: {easy}\", Version: "
        )),
        "{text}"
    );
    let parsed = parse_infotext(&text);
    assert_eq!(
        parsed.get_str("TI hashes"),
        Some(format!("tinystyle: {tiny}, EasyNegative: {easy}").as_str())
    );
}
