//! X/Y/Z plots and prompt matrices through the `sdfarm` binary: `plan --json` cell lists,
//! and a 3x2x2 plot rendered on the built-in model with its A1111-style grids.

mod common;
use common::{job_dir, sdfarm, write};

use std::path::Path;

use sdfarm_coordinator::grid::draw::{font_size, text_size};
use serde_json::Value;

fn plan(text: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let sweep = write(dir.path(), "s.toml", text);
    let out = sdfarm(&["plan", &sweep, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn plan_lists_xyz_cells_in_a1111_order_with_vary_seeds() {
    let lines = plan(
        r#"model = "builtin:tiny-sd"
prompt = "a photo of a cat"
seed = 1000
[xyz]
x = { type = "Steps", values = "10-30 (+10)" }
y = { type = "Checkpoint name", values = "builtin:tiny-sd, /models/other" }
vary_seeds = { x = true }
"#,
    );
    let (cells, summary) = lines.split_at(lines.len() - 1);
    // Checkpoint name (cost 1) is the outer loop: each checkpoint's cells are contiguous.
    let order: Vec<(u64, u64)> = cells
        .iter()
        .map(|c| (c["x"].as_u64().unwrap(), c["y"].as_u64().unwrap()))
        .collect();
    assert_eq!(order, [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]);
    let steps: Vec<u64> = cells.iter().map(|c| c["steps"].as_u64().unwrap()).collect();
    assert_eq!(steps, [10, 20, 30, 10, 20, 30]);
    let seeds: Vec<i64> = cells.iter().map(|c| c["seed"].as_i64().unwrap()).collect();
    assert_eq!(seeds, [1000, 1001, 1002, 1000, 1001, 1002]);
    assert_eq!(cells[3]["model"], "/models/other");
    assert_eq!(cells[4]["cell"], 4);
    let s = &summary[0]["summary"];
    assert_eq!(s["cells"], 6);
    assert_eq!(s["checkpoint_switches"], 1);
    assert_eq!(s["images_per_checkpoint"]["/models/other"], 3);
}

#[test]
fn plan_reproduces_prompt_sr_and_matrix() {
    let lines = plan(
        r#"model = "builtin:tiny-sd"
prompt = "a photo of a cat, by artist"
negative_prompt = "blurry cat"
seed = 5
[xyz]
x = { type = "Prompt S/R", values = "cat, dog, bird" }
"#,
    );
    let prompts: Vec<(&str, &str)> = lines[..3]
        .iter()
        .map(|c| {
            (
                c["prompt"].as_str().unwrap(),
                c["negative_prompt"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        prompts,
        [
            ("a photo of a cat, by artist", "blurry cat"),
            ("a photo of a dog, by artist", "blurry dog"),
            ("a photo of a bird, by artist", "blurry bird"),
        ]
    );
    let lines = plan(
        "model = \"builtin:tiny-sd\"\nprompt = \"portrait|smiling|hat\"\nseed = 3\n[prompt_matrix]\ndifferent_seeds = true\n",
    );
    let got: Vec<(&str, i64)> = lines[..4]
        .iter()
        .map(|c| (c["prompt"].as_str().unwrap(), c["seed"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("portrait", 3),
            ("portrait, smiling", 4),
            ("portrait, hat", 5),
            ("portrait, smiling, hat", 6)
        ]
    );
    assert_eq!(lines[4]["summary"]["images"], 4);
}

#[test]
fn bad_axes_are_refused_naming_axis_and_value() {
    let dir = tempfile::tempdir().unwrap();
    for (axis, values, fragment) in [
        ("Size", "512x", "\"512x\" has no height"),
        ("Steps", "1-x", "'1-x'"),
        ("Prompt S/R", "dog, cat", "did not find \"dog\""),
        ("Sampling steps", "1", "is not an A1111 X/Y/Z axis"),
    ] {
        let sweep = write(
            dir.path(),
            "bad.toml",
            &format!("model = \"builtin:tiny-sd\"\nprompt = \"a cat\"\n[xyz]\nx = {{ type = \"{axis}\", values = \"{values}\" }}\n"),
        );
        let out = sdfarm(&["plan", &sweep]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(fragment) && err.contains("xyz.x") && err.contains("line 4"),
            "{err}"
        );
    }
}

fn png_size_and_text(path: &Path) -> ((u32, u32), String) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    let text = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == "parameters")
        .map(|c| c.text.clone())
        .unwrap_or_default();
    ((info.width, info.height), text)
}

/// `pad_top` of `draw_grid_annotations`: the tallest column label plus two line spacings.
fn pad_top(labels: &[&str], cell_w: u32, cell_h: u32) -> u32 {
    let fs = font_size(cell_w, cell_h);
    labels.iter().map(|l| text_size(l, fs).1).max().unwrap() + 2 * (fs / 2)
}

#[test]
fn xyz_plot_renders_cells_and_grids() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = write(
        dir.path(),
        "plot.toml",
        r#"model = "builtin:tiny-sd"
prompt = "a red barn"
seed = 7
steps = 2
width = 32
height = 32
[xyz]
x = { type = "CFG Scale", values = "5, 7, 9" }
y = { type = "Steps", values = "2, 3" }
z = { type = "Seed", values = "1, 2" }
include_sub_grids = true
margin_size = 4
"#,
    );
    let out_dir = dir.path().join("out");
    let out = sdfarm(&["run", &sweep, "--out", out_dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job_dir = job_dir(&out_dir);
    let mut names: Vec<String> = std::fs::read_dir(&job_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".png"))
        .collect();
    names.sort();
    let cells: Vec<&String> = names.iter().filter(|n| !n.starts_with("grid-")).collect();
    assert_eq!(cells.len(), 12, "{names:?}");
    assert!(names.contains(&"grid-xyz.png".to_string()), "{names:?}");

    // A sub-grid: 3 columns x 2 rows of 32 px cells, 4 px margins between them, row labels
    // in a column 3/4 of a cell wide, column labels above.
    let sub_w = 32 * 3 / 4 + 3 * 32 + 2 * 4;
    let sub_h = pad_top(
        &["CFG Scale: 5.0", "CFG Scale: 7.0", "CFG Scale: 9.0"],
        32,
        32,
    ) + 2 * 32
        + 4;
    for z in ["grid-xyz-z000.png", "grid-xyz-z001.png"] {
        let (size, text) = png_size_and_text(&job_dir.join(z));
        assert_eq!(size, (sub_w, sub_h), "{z}");
        assert!(text.contains("Script: X/Y/Z plot, X Type: CFG Scale, X Values: \"5, 7, 9\", Y Type: Steps, Y Values: \"2, 3\""), "{text}");
        assert!(!text.contains("Z Type"), "{text}");
    }
    // The main grid: the sub-grids side by side, Z labels above them.
    let (size, text) = png_size_and_text(&job_dir.join("grid-xyz.png"));
    let top = pad_top(&["Seed: 1", "Seed: 2"], sub_w, sub_h);
    assert_eq!(size, (2 * sub_w, sub_h + top));
    assert!(
        text.contains("Z Type: Seed, Z Values: \"1, 2\", Fixed Z Values: \"1, 2\""),
        "{text}"
    );
    assert!(text.starts_with("a red barn\n"), "{text}");
}

#[test]
fn seed_resize_from_reaches_the_plan_and_the_infotext() {
    let text = |resize: &str| {
        format!(
            "model = \"builtin:tiny-sd\"\nprompt = \"a red barn\"\nseed = 11\nsteps = 2\n\
             width = 32\nheight = 32\nsampler_name = \"Euler\"\n{resize}"
        )
    };
    let resized = text("seed_resize_from_w = 48\nseed_resize_from_h = 40\n");
    let lines = plan(&resized);
    assert_eq!(lines[0]["seed_resize_from_w"], 48, "{}", lines[0]);
    assert_eq!(lines[0]["seed_resize_from_h"], 40, "{}", lines[0]);

    let render = |sweep: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "s.toml", sweep);
        let out_dir = dir.path().join("out");
        let out = sdfarm(&["run", &path, "--out", out_dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let job = job_dir(&out_dir);
        let png = std::fs::read_dir(&job)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "png"))
            .expect("one image");
        let (_, infotext) = png_size_and_text(&png);
        (std::fs::read(&png).unwrap(), infotext)
    };
    let (resized_png, infotext) = render(&resized);
    assert!(
        infotext.contains("Seed resize from: 48x40"),
        "infotext should say where the seed's noise was resized from: {infotext}"
    );
    let (plain_png, plain_infotext) = render(&text(""));
    assert!(
        !plain_infotext.contains("Seed resize from"),
        "{plain_infotext}"
    );
    assert_ne!(
        resized_png, plain_png,
        "the resized noise changes the image"
    );
}
