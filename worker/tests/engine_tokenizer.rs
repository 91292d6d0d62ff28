//! The embedded CLIP tokenizer against transformers' `CLIPTokenizer` (fixture copied from the
//! shared kit's `tiny-sd/tokenizer_cases.json`).

use sdfarm_worker::engine::tokenizer::PromptTokenizer;

#[test]
fn matches_transformers_clip_tokenizer() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tokenizer_cases.json");
    let cases: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let tokenizer = PromptTokenizer::builtin().unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tokenizer.encode_unpadded(text).unwrap(),
            ids(&case["hf_ids"]),
            "{text:?}"
        );
        assert_eq!(
            tokenizer.encode(text).unwrap(),
            ids(&case["hf_ids_padded_77"]),
            "{text:?} padded"
        );
    }
}
