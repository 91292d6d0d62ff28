//! Infotext against AUTOMATIC1111's own parser output (`fixtures/infotext.json`, produced by
//! v1.10.1's `parse_generation_parameters`), and sdfarm's PNGs read back to the parameters
//! they were rendered with.

use sdfarm_proto::RenderParams;
use sdfarm_worker::output::{
    decode_png_rgb, encode_png, infotext, parse_infotext, read_png_parameters,
};
use serde_json::Value;

#[test]
fn parser_matches_every_a1111_case() {
    let cases: Vec<Value> =
        serde_json::from_str(include_str!("fixtures/infotext.json")).expect("fixture is JSON");
    assert!(!cases.is_empty());
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let got = parse_infotext(text).to_json();
        let want = &case["expected"];
        assert_eq!(&got, want, "case {:?}\n{text}", case["description"]);
    }
}

fn submitted() -> RenderParams {
    RenderParams {
        prompt: "a photo of a cat, (best quality:1.2)\nsecond line: with colon".into(),
        negative_prompt: "blurry, \"low\" quality".into(),
        seed: 4_000_000_123,
        steps: 6,
        sampler_name: "Euler a".into(),
        scheduler: "Karras".into(),
        cfg_scale: 7.5,
        width: 40,
        height: 24,
        model: "tiny-sd".into(),
        rng: "NV".into(),
        subseed: 77,
        subseed_strength: 0.25,
        batch_index: 0,
        clip_skip: 2,
        eta: 0.75,
        seed_resize_from_w: 48,
        seed_resize_from_h: 32,
        ..Default::default()
    }
}

#[test]
fn png_infotext_parses_back_to_the_submitted_params() {
    let params = submitted();
    let rgb: Vec<u8> = (0..40 * 24 * 3).map(|i| (i * 31 % 251) as u8).collect();
    let png = encode_png(&rgb, 40, 24, &infotext(&params, "tiny-sd", "abcdef0123")).unwrap();

    let text = read_png_parameters(&png)
        .unwrap()
        .expect("parameters chunk");
    let parsed = parse_infotext(&text);
    assert_eq!(parsed.to_render_params(), params, "{text}");
    assert_eq!(parsed.get_str("Model hash"), Some("abcdef0123"));
    assert_eq!(parsed.get_str("Emphasis"), Some("Original"));
    assert_eq!(decode_png_rgb(&png).unwrap(), (rgb, 40, 24));
}

#[test]
fn defaults_round_trip_too() {
    let params = RenderParams {
        prompt: "cat".into(),
        seed: 1,
        steps: 20,
        sampler_name: "Euler".into(),
        scheduler: "Automatic".into(),
        cfg_scale: 7.0,
        width: 512,
        height: 512,
        model: "m".into(),
        rng: "CPU".into(),
        clip_skip: 1,
        eta: 1.0,
        ..Default::default()
    };
    let text = infotext(&params, "m", "");
    assert_eq!(parse_infotext(&text).to_render_params(), params, "{text}");
}

#[test]
fn identical_renders_are_identical_files() {
    let params = submitted();
    let rgb = vec![9u8; 8 * 8 * 3];
    let a = encode_png(&rgb, 8, 8, &infotext(&params, "tiny-sd", "abcdef0123")).unwrap();
    let b = encode_png(&rgb, 8, 8, &infotext(&params, "tiny-sd", "abcdef0123")).unwrap();
    assert_eq!(a, b);
}
