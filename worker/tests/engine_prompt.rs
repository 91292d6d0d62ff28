//! A1111's prompt parser cases (`a1111/prompt_parser.json`: upstream doctests and extra cases)
//! through sdfarm's attention parser and prompt-editing schedules, plus chunking rules.

use std::path::{Path, PathBuf};

use sdfarm_worker::engine::prompt_parser::{parse_prompt_attention, prompt_schedule};
use serde_json::Value;

fn kit_file(name: &str) -> PathBuf {
    let shared = match std::env::var_os("SDFARM_REFERENCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference"),
    };
    let candidate = shared.join("a1111").join(name);
    if candidate.is_file() {
        return candidate;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/a1111")
        .join(name)
}

#[test]
fn prompt_parser_matches_a1111() {
    let path = kit_file("prompt_parser.json");
    let cases: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut checked = 0;
    for case in cases.as_array().unwrap() {
        let input = case["input"].as_str().unwrap();
        let args = &case["args"];
        match case["function"].as_str().unwrap() {
            "parse_prompt_attention" => {
                let ours = parse_prompt_attention(input);
                let expected: Vec<(String, f64)> = case["expected"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_f64().unwrap()))
                    .collect();
                assert_eq!(ours, expected, "parse_prompt_attention({input:?})");
            }
            "get_learned_conditioning_prompt_schedules" => {
                let base = args["base_steps"].as_u64().unwrap() as usize;
                let hires = args["hires_steps"].as_u64().map(|h| h as usize);
                let old = args["use_old_scheduling"].as_bool().unwrap_or(false);
                let ours = prompt_schedule(input, base, hires, old);
                let expected: Vec<(usize, String)> = case["expected"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        (
                            p[0].as_u64().unwrap() as usize,
                            p[1].as_str().unwrap().into(),
                        )
                    })
                    .collect();
                assert_eq!(ours, expected, "schedule of {input:?} with {args}");
            }
            // AND (composable diffusion) is not supported; its cases are skipped.
            _ => continue,
        }
        checked += 1;
    }
    println!("{checked} A1111 prompt parser cases match");
    assert!(checked >= 10);
}

#[test]
fn attention_edge_cases() {
    assert_eq!(parse_prompt_attention(""), vec![("".into(), 1.0)]);
    assert_eq!(
        parse_prompt_attention("BREAK b"),
        vec![("".into(), 1.0), ("BREAK".into(), -1.0), ("b".into(), 1.0)]
    );
    assert_eq!(parse_prompt_attention("\\(x\\)"), vec![("(x)".into(), 1.0)]);
    assert_eq!(parse_prompt_attention("[x]"), vec![("x".into(), 1.0 / 1.1)]);
    assert_eq!(
        parse_prompt_attention("(x:0.5) BREAK (y)"),
        vec![
            ("x".into(), 0.5),
            ("".into(), 1.0),
            ("BREAK".into(), -1.0),
            ("".into(), 1.0),
            ("y".into(), 1.1)
        ]
    );
}

#[test]
fn schedule_edge_cases() {
    assert_eq!(
        prompt_schedule("a|b", 5, None, false),
        vec![(5, "a|b".into())]
    );
    assert_eq!(
        prompt_schedule("x\\", 5, None, false),
        vec![(5, "x\\".into())]
    );
    assert_eq!(
        prompt_schedule("(a [b:c:0.5])", 4, None, false),
        vec![(2, "(a b)".into()), (4, "(a c)".into())]
    );
    assert_eq!(
        prompt_schedule("[a:b] (c", 4, None, false),
        vec![(4, "[a:b] (c".into())]
    );
}

#[test]
fn chunks_follow_a1111() {
    use sdfarm_worker::engine::conditioning::tokenize_line;
    use sdfarm_worker::engine::tokenizer::PromptTokenizer;
    let tok = PromptTokenizer::builtin().unwrap();

    let (chunks, count) = tokenize_line(&tok, "a photo of a cat").unwrap();
    assert_eq!((chunks.len(), count), (1, 5));
    assert_eq!(chunks[0].tokens, tok.encode("a photo of a cat").unwrap());
    assert!(chunks[0].unweighted());

    let (chunks, count) = tokenize_line(&tok, "").unwrap();
    assert_eq!((chunks.len(), count), (1, 0));

    // BREAK closes the chunk: the count includes its padding.
    let (chunks, count) = tokenize_line(&tok, "a cat BREAK a dog").unwrap();
    assert_eq!((chunks.len(), count), (2, 77));
    assert_eq!(&chunks[1].tokens[..4], &[49406, 320, 1929, 49407]);

    // 100 words: 75 in the first chunk, 25 in the second.
    let (chunks, count) = tokenize_line(&tok, &"cat ".repeat(100)).unwrap();
    assert_eq!((chunks.len(), count), (2, 100));
    assert!(chunks
        .iter()
        .all(|c| c.tokens.len() == 77 && c.multipliers.len() == 77));

    // A comma within 20 tokens of the chunk end moves what follows it to the next chunk.
    let text = format!("{}, {}", "cat ".repeat(70), "dog ".repeat(10));
    let (chunks, _) = tokenize_line(&tok, &text).unwrap();
    assert_eq!(chunks[0].tokens[71], 267, "chunk ends with the comma");
    assert_eq!(chunks[0].tokens[72], 49407);
    assert_eq!(chunks[1].tokens[1], 1929, "dog starts the second chunk");

    // Weights land on their tokens.
    let (chunks, _) = tokenize_line(&tok, "a (cat:1.5) [dog]").unwrap();
    assert_eq!(
        &chunks[0].multipliers[..4],
        &[1.0, 1.0, 1.5, (1.0f64 / 1.1) as f32]
    );
}
