//! The `sdfarm` binary as a user runs it, on the embedded default: no services needed.

mod common;
use common::{job_dir, sdfarm, write};

const SWEEP: &str = r#"model = "builtin:tiny-sd"
prompt = "a red barn"
negative_prompt = "fog"
seed = 10
steps = 3
sampler_name = "Euler"
cfg_scale = 6.5
width = 32
height = 32
batch_size = 2
n_iter = 2
"#;

#[test]
fn plan_json_lists_the_cells_with_a1111_field_names() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = write(dir.path(), "s.toml", SWEEP);
    let out = sdfarm(&["plan", &sweep, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let cell = &lines[0];
    assert_eq!(cell["prompt"], "a red barn");
    assert_eq!(cell["negative_prompt"], "fog");
    assert_eq!(cell["sampler_name"], "Euler");
    assert_eq!(cell["cfg_scale"], 6.5);
    assert_eq!(cell["width"], 32);
    assert_eq!(cell["seeds"], serde_json::json!([10, 11, 12, 13]));
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["images"], 4);
    assert_eq!(
        summary["checkpoints"],
        serde_json::json!(["builtin:tiny-sd"])
    );
}

#[test]
fn a_bad_sweep_is_refused_with_key_value_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = write(
        dir.path(),
        "bad.toml",
        "model = \"builtin:tiny-sd\"\nprompt = \"x\"\nwidth = 513\n",
    );
    for cmd in ["plan", "run"] {
        let mut args = vec![cmd, sweep.as_str()];
        let out_dir = dir.path().join("out");
        if cmd == "run" {
            args.extend(["--out", out_dir.to_str().unwrap()]);
        }
        let out = sdfarm(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd} accepted width 513");
        assert!(
            err.contains("width") && err.contains("513") && err.contains("line 3"),
            "{cmd}: {err}"
        );
        assert!(
            !out_dir.join(".sdfarm").exists(),
            "{cmd} stored something for a bad sweep"
        );
    }
    let typo = write(dir.path(), "typo.toml", "model = \"m\"\nstpes = 20\n");
    let out = sdfarm(&["plan", &typo]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("stpes") && err.contains("steps") && err.contains("line 2"),
        "{err}"
    );
}

#[test]
fn embedded_run_writes_pngs_whose_infotext_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = write(dir.path(), "s.toml", SWEEP);
    let out_dir = dir.path().join("out");
    let cache = dir.path().join("cache");
    let out = sdfarm(&[
        "run",
        &sweep,
        "--out",
        out_dir.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job_dir = job_dir(&out_dir);
    let mut names: Vec<String> = std::fs::read_dir(&job_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "00000-10.png",
            "00001-11.png",
            "00002-12.png",
            "00003-13.png"
        ]
    );

    for (i, name) in names.iter().enumerate() {
        let path = job_dir.join(name);
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (32, 32));

        let out = sdfarm(&["info", path.to_str().unwrap(), "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["Prompt"], "a red barn");
        assert_eq!(info["Negative prompt"], "fog");
        assert_eq!(info["Seed"], (10 + i).to_string());
        assert_eq!(info["Steps"], "3");
        assert_eq!(info["Model"], "tiny-sd");
    }
    // Different seeds give different images.
    let a = std::fs::read(job_dir.join(&names[0])).unwrap();
    let b = std::fs::read(job_dir.join(&names[1])).unwrap();
    assert_ne!(a, b);
}

#[test]
fn info_explains_a_png_without_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.png");
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, 1, 1);
        enc.set_color(png::ColorType::Rgb);
        enc.write_header()
            .unwrap()
            .write_image_data(&[0, 0, 0])
            .unwrap();
    }
    std::fs::write(&path, bytes).unwrap();
    let out = sdfarm(&["info", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no `parameters` text chunk"));
}

#[test]
fn a_missing_model_fails_the_job_with_a_reason_and_no_retry() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-model");
    let sweep = write(
        dir.path(),
        "s.toml",
        &format!(
            "model = \"{}\"\nprompt = \"p\"\nwidth = 32\nheight = 32\nsteps = 2\n",
            missing.display()
        ),
    );
    let out_dir = dir.path().join("out");
    let out = sdfarm(&["run", &sweep, "--out", out_dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("failed"), "{stdout}");
    assert!(
        stderr.contains("no-such-model"),
        "the reason names the model: {stderr}"
    );
    assert!(
        stderr.contains("image 0 (discarded)"),
        "not retried: {stderr}"
    );
}
