//! Sweep parsing: good files in both formats, and one test per kind of mistake, each
//! checking the message names the key, the value as written, the line and what is accepted.

use super::*;

fn toml(text: &str) -> Result<SweepSpec> {
    parse_sweep(text, SweepFormat::Toml)
}

fn toml_err(text: &str) -> SpecError {
    toml(text).expect_err("should be refused")
}

/// Asserts the rendered message carries each fragment.
fn assert_says(err: &SpecError, fragments: &[&str]) {
    let msg = err.to_string();
    for f in fragments {
        assert!(msg.contains(f), "message {msg:?} should contain {f:?}");
    }
}

#[test]
fn minimal_file_gets_a1111_defaults() {
    let s = toml("model = \"builtin:tiny-sd\"\n").unwrap();
    let p = &s.base;
    assert_eq!(p.prompt, "");
    assert_eq!(p.seed, -1);
    assert_eq!(p.subseed, -1);
    assert_eq!(
        (p.steps, p.cfg_scale, p.width, p.height),
        (20, 7.0, 512, 512)
    );
    assert_eq!(
        (p.sampler_name.as_str(), p.scheduler.as_str()),
        ("Euler", "Automatic")
    );
    assert_eq!(
        (p.rng.as_str(), p.clip_skip, p.subseed_strength),
        ("CPU", 1, 0.0)
    );
    assert_eq!(
        p.eta, 1.0,
        "k-diffusion samplers default to eta_ancestral = 1"
    );
    assert_eq!(
        (s.batch_size, s.n_iter, s.priority, s.max_attempts),
        (1, 1, 0, 3)
    );
    assert_eq!(s.name, None);
}

const FULL: &str = r#"# a complete sweep
name = "cats"
model = "/models/sd15"
prompt = "a photo of a cat, (masterpiece:1.2)"
negative_prompt = "blurry"
seed = 1234
steps = 30
sampler_name = "DPM++ 2M"
scheduler = "Exponential"
cfg_scale = 7.5
width = 768
height = 512
batch_size = 4
n_iter = 3
rng = "NV"
subseed = 99
subseed_strength = 0.25
clip_skip = 2
eta = 0.5
priority = -3
max_attempts = 5
"#;

#[test]
fn full_toml_file() {
    let s = toml(FULL).unwrap();
    let p = &s.base;
    assert_eq!(s.name.as_deref(), Some("cats"));
    assert_eq!(p.model, "/models/sd15");
    assert_eq!(p.prompt, "a photo of a cat, (masterpiece:1.2)");
    assert_eq!(p.negative_prompt, "blurry");
    assert_eq!((p.seed, p.steps, p.cfg_scale), (1234, 30, 7.5));
    assert_eq!(
        (p.sampler_name.as_str(), p.scheduler.as_str()),
        ("DPM++ 2M", "Exponential")
    );
    assert_eq!(
        (p.width, p.height, s.batch_size, s.n_iter),
        (768, 512, 4, 3)
    );
    assert_eq!(
        (p.rng.as_str(), p.subseed, p.subseed_strength),
        ("NV", 99, 0.25)
    );
    assert_eq!(
        (p.clip_skip, p.eta, s.priority, s.max_attempts),
        (2, 0.5, -3, 5)
    );
}

#[test]
fn json_file_matches_toml() {
    let json = r#"{
  "name": "cats", "model": "/models/sd15",
  "prompt": "a photo of a cat, (masterpiece:1.2)", "negative_prompt": "blurry",
  "seed": 1234, "steps": 30, "sampler_name": "DPM++ 2M", "scheduler": "Exponential",
  "cfg_scale": 7.5, "width": 768, "height": 512, "batch_size": 4, "n_iter": 3,
  "rng": "NV", "subseed": 99, "subseed_strength": 0.25, "clip_skip": 2, "eta": 0.5,
  "priority": -3, "max_attempts": 5, "styles": null
}"#;
    assert_eq!(
        parse_sweep(json, SweepFormat::Json).unwrap(),
        toml(FULL).unwrap()
    );
}

#[test]
fn sampler_names_are_canonicalised_like_the_a1111_api() {
    let cases = [
        ("k_euler_a", "Automatic", "Euler a", "Automatic"),
        ("DPM++ 2M Karras", "Automatic", "DPM++ 2M", "Automatic"),
        ("DPM++ 2M", "karras", "DPM++ 2M", "Automatic"),
        ("DPM++ 2M", "Exponential", "DPM++ 2M", "Exponential"),
        ("Euler a", "Karras", "Euler a", "Karras"),
        ("DPM++ 2M SDE Karras", "Automatic", "DPM++ 2M SDE", "Karras"),
        ("Euler SGMUniform", "Automatic", "Euler", "SGM Uniform"),
        ("DPM2 a Karras", "Automatic", "DPM2 a", "Automatic"),
    ];
    for (sampler, scheduler, want_sampler, want_scheduler) in cases {
        let text = format!(
            "model = \"builtin:tiny-sd\"\nsampler_name = \"{sampler}\"\nscheduler = \"{scheduler}\""
        );
        let s = toml(&text).unwrap();
        assert_eq!(
            (s.base.sampler_name.as_str(), s.base.scheduler.as_str()),
            (want_sampler, want_scheduler),
            "{sampler} / {scheduler}"
        );
    }
}

#[test]
fn ddim_family_defaults_eta_to_zero() {
    let s = toml("model = \"builtin:tiny-sd\"\nsampler_name = \"DDIM\"").unwrap();
    assert_eq!(s.base.eta, 0.0);
}

#[test]
fn width_not_multiple_of_8() {
    let err = toml_err("model = \"builtin:tiny-sd\"\nprompt = \"x\"\n\nwidth = 513\n");
    assert_eq!(err.kind, SpecErrorKind::InvalidValue);
    assert_eq!(err.line, Some(4));
    assert_eq!(
        err.clone().in_file("sweep.toml").to_string(),
        "sweep.toml line 4: `width` = 513 is not a multiple of 8 (accepted: multiples of 8 from 8 to 4096)"
    );
}

#[test]
fn side_out_of_range() {
    let err = toml_err("model = \"builtin:tiny-sd\"\nheight = 8192");
    assert_says(
        &err,
        &[
            "line 2",
            "`height` = 8192",
            "out of range",
            "from 8 to 4096",
        ],
    );
    let err = toml_err("model = \"builtin:tiny-sd\"\nheight = 0");
    assert_says(&err, &["line 2", "`height` = 0", "from 8 to 4096"]);
}

#[test]
fn too_many_pixels_per_batch() {
    let err = toml_err("model = \"builtin:tiny-sd\"\nwidth = 2048\nheight = 2048\nbatch_size = 8");
    assert_eq!(err.kind, SpecErrorKind::InvalidValue);
    assert_says(
        &err,
        &["line 4", "`batch_size` = 8", "33554432 pixels", "16777216"],
    );
}

#[test]
fn integer_ranges() {
    for (text, fragments) in [
        ("steps = 0", ["`steps` = 0", "from 1 to 1000"]),
        ("steps = 1001", ["`steps` = 1001", "from 1 to 1000"]),
        ("batch_size = 65", ["`batch_size` = 65", "from 1 to 64"]),
        ("n_iter = 0", ["`n_iter` = 0", "from 1 to 1000000"]),
        ("clip_skip = 0", ["`clip_skip` = 0", "from 1 to 12"]),
        ("max_attempts = 0", ["`max_attempts` = 0", "from 1 to 100"]),
        ("seed = -2", ["`seed` = -2", "-1 for a random seed"]),
    ] {
        let err = toml_err(&format!("model = \"builtin:tiny-sd\"\n{text}"));
        assert_eq!(err.kind, SpecErrorKind::InvalidValue, "{text}");
        assert_says(&err, &["line 2", fragments[0], fragments[1]]);
    }
}

#[test]
fn floats_must_be_finite_and_in_range() {
    let err = toml_err("model = \"builtin:tiny-sd\"\ncfg_scale = nan");
    assert_says(
        &err,
        &[
            "line 2",
            "`cfg_scale` = nan",
            "not a finite number",
            "any finite number",
        ],
    );
    let err = toml_err("model = \"builtin:tiny-sd\"\ncfg_scale = inf");
    assert_says(&err, &["`cfg_scale` = inf", "not a finite number"]);
    let err = toml_err("model = \"builtin:tiny-sd\"\nsubseed_strength = 1.5");
    assert_says(&err, &["`subseed_strength` = 1.5", "from 0 to 1"]);
    assert_eq!(
        toml("model = \"builtin:tiny-sd\"\ncfg_scale = 5")
            .unwrap()
            .base
            .cfg_scale,
        5.0
    );
}

#[test]
fn wrong_types() {
    let err = toml_err("model = \"builtin:tiny-sd\"\nsteps = \"20\"");
    assert_eq!(err.kind, SpecErrorKind::WrongType);
    assert_says(
        &err,
        &[
            "line 2",
            "`steps` = \"20\"",
            "is a string, expected an integer",
            "from 1 to 1000",
        ],
    );
    let err = toml_err("model = \"builtin:tiny-sd\"\nwidth = 512.0");
    assert_says(
        &err,
        &["`width` = 512.0", "is a float, expected an integer"],
    );
    let err = toml_err("prompt = 3\nmodel = \"builtin:tiny-sd\"");
    assert_says(&err, &["line 1", "`prompt` = 3", "expected a string"]);
    let err = toml_err("model = \"builtin:tiny-sd\"\ncfg_scale = true");
    assert_says(
        &err,
        &["`cfg_scale` = true", "is a boolean, expected a number"],
    );
    let err = toml_err("model = \"builtin:tiny-sd\"\nseed = 99999999999999999999");
    assert_eq!(err.kind, SpecErrorKind::WrongType);
    assert_says(
        &err,
        &["`seed` = 99999999999999999999", "integer too large"],
    );
}

#[test]
fn unknown_key_suggests_nearest() {
    let err = toml_err("model = \"builtin:tiny-sd\"\nwidht = 512");
    assert_eq!(err.kind, SpecErrorKind::UnknownKey);
    assert_says(
        &err,
        &[
            "line 2",
            "`widht` = 512",
            "did you mean `width`?",
            "accepted: prompt, negative_prompt",
        ],
    );
    let err = toml_err("model = \"builtin:tiny-sd\"\ncfg = 7");
    assert_says(&err, &["did you mean `cfg_scale`?"]);
    let err = toml_err("model = \"builtin:tiny-sd\"\nflavour = \"mint\"");
    assert_says(
        &err,
        &["`flavour` = \"mint\" is not a sweep key (accepted:"],
    );
}

#[test]
fn a1111_options_we_lack_are_named_as_such() {
    let err = toml_err("model = \"builtin:tiny-sd\"\nrestore_faces = true");
    assert_eq!(err.kind, SpecErrorKind::Unsupported);
    assert_says(
        &err,
        &[
            "line 2",
            "`restore_faces` = true",
            "AUTOMATIC1111 option sdfarm does not support yet",
        ],
    );
}

#[test]
fn script_tables_reject_unknown_keys_with_their_line() {
    let err = toml_err("model = \"builtin:tiny-sd\"\n\n[xyz]\nx_type = \"Steps\"\n");
    assert_eq!(err.kind, SpecErrorKind::UnknownKey);
    assert_says(
        &err,
        &["line 4", "`xyz.x_type`", "not a key of [xyz]", "vary_seeds"],
    );
    let err = toml_err("model = \"builtin:tiny-sd\"\n[prompt_matrix]\nseeds = 1\n");
    assert_says(
        &err,
        &["line 3", "`prompt_matrix.seeds`", "different_seeds"],
    );
    let err = parse_sweep(
        "{\"model\": \"builtin:tiny-sd\",\n \"xyz\": [], \"prompt\": \"a\"}",
        SweepFormat::Json,
    )
    .unwrap_err();
    assert_says(&err, &["line 2", "`xyz`", "expected a table"]);
}

#[test]
fn model_is_required_and_checked() {
    let err = toml_err("prompt = \"a cat\"");
    assert_eq!(err.kind, SpecErrorKind::MissingKey);
    assert_eq!(
        err.in_file("s.toml").to_string(),
        "s.toml: `model` is missing (accepted: a single-file .safetensors checkpoint, a diffusers \
         folder, a checkpoint name, hf:org/repo[/file], an s3:// or https://…#sha256:… URL, or \
         \"builtin:tiny-sd\")"
    );
    let err = toml_err("model = \"builtin:huge\"");
    assert_says(
        &err,
        &[
            "line 1",
            "`model` = \"builtin:huge\"",
            "not a built-in model",
            "builtin:tiny-sd",
        ],
    );
}

#[test]
fn unknown_sampler_and_scheduler_suggest() {
    let err = toml_err("model = \"builtin:tiny-sd\"\nsampler_name = \"Euler A\"");
    assert_says(
        &err,
        &[
            "line 2",
            "`sampler_name` = \"Euler A\"",
            "not an A1111 sampler",
            "did you mean \"Euler a\"?",
            "\"DPM++ 2M\"",
        ],
    );
    let err = toml_err("model = \"builtin:tiny-sd\"\n\nscheduler = \"karas\"");
    assert_says(
        &err,
        &[
            "line 3",
            "`scheduler` = \"karas\"",
            "did you mean \"Karras\"?",
        ],
    );
}

#[test]
fn rng_sources() {
    assert_eq!(
        toml("model = \"builtin:tiny-sd\"\nrng = \"nv\"")
            .unwrap()
            .base
            .rng,
        "NV"
    );
    let err = toml_err("model = \"builtin:tiny-sd\"\nrng = \"GPU\"");
    assert_says(&err, &["line 2", "`rng` = \"GPU\"", "\"CPU\" or \"NV\""]);
}

#[test]
fn seed_must_leave_room_for_every_image() {
    let err = toml_err(&format!(
        "model = \"builtin:tiny-sd\"\nn_iter = 10\nseed = {}",
        i64::MAX - 3
    ));
    assert_says(
        &err,
        &[
            "line 3",
            "`seed`",
            "no room for 10 images",
            "0 to 9223372036854775798",
        ],
    );
}

#[test]
fn first_mistake_in_reading_order_is_reported() {
    // Keys come back from the parser sorted by name; `zzz` sorts after `steps` but is
    // written first.
    let err = toml_err("zzz = 1\nsteps = 0\nmodel = \"builtin:tiny-sd\"");
    assert_says(&err, &["line 1", "`zzz`"]);
}

#[test]
fn syntax_errors_carry_a_line() {
    let err = toml_err("model = \"builtin:tiny-sd\"\nsteps = = 3\n");
    assert_eq!(err.kind, SpecErrorKind::Syntax);
    assert_eq!(err.line, Some(2));
    assert_says(&err, &["line 2: is not valid TOML"]);
    let err = parse_sweep("{\n \"model\": \"x\",\n \"steps\": }", SweepFormat::Json).unwrap_err();
    assert_eq!(err.kind, SpecErrorKind::Syntax);
    assert_eq!(err.line, Some(3));
    let err = parse_sweep("[1, 2]", SweepFormat::Json).unwrap_err();
    assert_says(&err, &["is not a JSON object"]);
}

#[test]
fn json_errors_name_the_line_of_the_key() {
    let text =
        "{\n  \"model\": \"builtin:tiny-sd\",\n  \"nested\": {\"width\": 1},\n  \"width\": 100\n}";
    let err = parse_sweep(text, SweepFormat::Json).unwrap_err();
    assert_says(&err, &["line 3", "`nested` = {…}", "not a sweep key"]);
    let text = "{\n  \"model\": \"builtin:tiny-sd\",\n  \"width\": 100\n}";
    let err = parse_sweep(text, SweepFormat::Json).unwrap_err();
    assert_says(&err, &["line 3", "`width` = 100", "not a multiple of 8"]);
}

#[test]
fn long_string_values_are_shortened_in_messages() {
    let long = "x".repeat(500);
    let err = toml_err(&format!(
        "model = \"builtin:tiny-sd\"\nsampler_name = \"{long}\""
    ));
    assert!(err.to_string().len() < 400, "{err}");
}

#[test]
fn formats_from_paths_and_names() {
    assert_eq!(
        SweepFormat::from_path(Path::new("a/b.json")),
        SweepFormat::Json
    );
    assert_eq!(
        SweepFormat::from_path(Path::new("a/b.JSON")),
        SweepFormat::Json
    );
    assert_eq!(
        SweepFormat::from_path(Path::new("a/b.toml")),
        SweepFormat::Toml
    );
    assert_eq!(
        SweepFormat::from_path(Path::new("sweep")),
        SweepFormat::Toml
    );
    assert_eq!(SweepFormat::parse("JSON"), Some(SweepFormat::Json));
    assert_eq!(SweepFormat::parse("toml"), Some(SweepFormat::Toml));
    assert_eq!(SweepFormat::parse("yaml"), None);
}

#[test]
fn reading_a_file_names_it_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sweep.toml");
    std::fs::write(&path, "model = \"builtin:tiny-sd\"\nwidth = 513\n").unwrap();
    let err = parse_sweep_file(&path).unwrap_err();
    assert!(err
        .to_string()
        .starts_with(&format!("{} line 2: `width` = 513", path.display())));
}

#[test]
fn hires_and_img2img_keys_take_a1111_defaults() {
    let spec = toml_ok("model = \"builtin:tiny-sd\"\nenable_hr = true");
    assert!(spec.base.enable_hr);
    assert_eq!(spec.base.hr_scale, 2.0);
    assert_eq!(spec.base.hr_upscaler, "Latent");
    assert_eq!(spec.base.denoising_strength, 0.7);
    let spec = toml_ok(
        "model = \"builtin:tiny-sd\"\ninit_image = \"in.png\"\nhr_sampler_name = \"Use same sampler\"",
    );
    assert_eq!(spec.base.denoising_strength, 0.75);
    assert_eq!(spec.base.hr_sampler_name, "");
    let spec = toml_ok(
        "model = \"builtin:tiny-sd\"\nenable_hr = true\nhr_sampler_name = \"DPM++ 2M Karras\"",
    );
    assert_eq!(
        (
            spec.base.hr_sampler_name.as_str(),
            spec.base.hr_scheduler.as_str()
        ),
        ("DPM++ 2M", "Automatic")
    );
    let err =
        toml_err("model = \"builtin:tiny-sd\"\nenable_hr = true\nhr_upscaler = \"ESRGAN_4x\"");
    assert_says(
        &err,
        &["`hr_upscaler`", "\"Latent (nearest-exact)\"", "\"Lanczos\""],
    );
    let err = toml_err("model = \"builtin:tiny-sd\"\nenable_hr = true\ninit_image = \"a.png\"");
    assert_says(&err, &["`enable_hr`", "init_image"]);
}

fn toml_ok(text: &str) -> SweepSpec {
    toml(text).expect("should parse")
}

#[test]
fn seed_resize_from_reaches_every_task() {
    let s = toml(
        "model = \"builtin:tiny-sd\"\nseed = 3\nwidth = 64\nheight = 64\nbatch_size = 2\n\
         seed_resize_from_w = 96\nseed_resize_from_h = 48\n\
         [xyz]\nx = { type = \"Steps\", values = \"2, 3\" }\n",
    )
    .unwrap();
    let images: Vec<_> = crate::expand::expand(&s.resolved(), 3).collect();
    assert_eq!(images.len(), 4);
    for img in &images {
        let p = &img.params;
        assert_eq!(
            (p.seed_resize_from_w, p.seed_resize_from_h),
            (96, 48),
            "{p:?}"
        );
    }
    // A1111's "off" values, -1 (the API's default) and 0, leave it off.
    for off in ["-1", "0"] {
        let s = toml(&format!(
            "model = \"builtin:tiny-sd\"\nseed_resize_from_w = {off}\nseed_resize_from_h = {off}\n"
        ))
        .unwrap();
        assert_eq!(
            (s.base.seed_resize_from_w, s.base.seed_resize_from_h),
            (0, 0)
        );
    }
}

#[test]
fn seed_resize_from_mistakes_are_named() {
    let err = toml_err("model = \"builtin:tiny-sd\"\nseed_resize_from_w = 64\n");
    assert_says(
        &err,
        &["seed_resize_from_w", "seed_resize_from_h as well", "line 2"],
    );
    let err =
        toml_err("model = \"builtin:tiny-sd\"\nseed_resize_from_w = 4\nseed_resize_from_h = 64\n");
    assert_says(
        &err,
        &["seed_resize_from_w", "4", "latent pixel", "8 to 8192"],
    );
    let err = toml_err(
        "model = \"builtin:tiny-sd\"\nseed_resize_from_w = 64\nseed_resize_from_h = 9000\n",
    );
    assert_says(&err, &["seed_resize_from_h", "9000", "out of range"]);
}
