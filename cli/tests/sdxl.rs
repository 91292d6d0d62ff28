//! SDXL through the normal path: `sdfarm run` with a sweep whose model is the reference kit's
//! tiny SDXL diffusers folder or its single-file checkpoint. Renders with prompt editing,
//! composable prompts, an empty negative prompt (zero conditioning) and the hires fix; the
//! PNGs carry the model's name and A1111 hash, and the file renders the folder's pixels.
//!
//! The kit lives outside the repository (`../shared/reference`, or `SDFARM_REFERENCE_DIR`);
//! without it this test prints a note and passes.

mod common;
use common::{job_dir, sdfarm, write};

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn reference_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("SDFARM_REFERENCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference"),
    };
    dir.join("tiny-sdxl/tiny-sdxl-v1.safetensors")
        .is_file()
        .then_some(dir)
}

/// Runs the sweep for `model` and returns `(file name, pixels, infotext json)` per image.
fn render(dir: &Path, out: &str, model: &Path) -> Vec<(String, Vec<u8>, serde_json::Value)> {
    let sweep = format!(
        r#"name = "sdxl"
model = "{}"
prompt = "a [red:blue:2] lighthouse, (dramatic clouds:1.2)"
negative_prompt = ""
seed = 1234
steps = 4
cfg_scale = 5
width = 64
height = 48
enable_hr = true
hr_scale = 1.5
hr_second_pass_steps = 2
denoising_strength = 0.5
[xyz]
x = {{ type = "Sampler", values = "Euler a, DPM++ 2M" }}
y = {{ type = "Prompt S/R", values = "lighthouse, cat AND a dog" }}
"#,
        model.display()
    );
    let sweep = write(dir, &format!("{out}.toml"), &sweep);
    let out_dir = dir.join(out);
    let cache = dir.join("cache");
    let res = sdfarm(&[
        "run",
        &sweep,
        "--out",
        out_dir.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let mut images: Vec<PathBuf> = std::fs::read_dir(job_dir(&out_dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".png") && name.as_bytes()[..5].iter().all(u8::is_ascii_digit)
        })
        .collect();
    images.sort();
    images
        .iter()
        .map(|path| {
            let decoder =
                png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
            let mut reader = decoder.read_info().unwrap();
            let mut pixels = vec![0; reader.output_buffer_size()];
            let info = reader.next_frame(&mut pixels).unwrap();
            assert_eq!((info.width, info.height), (96, 72), "hires size");
            pixels.truncate(info.buffer_size());
            let res = sdfarm(&["info", path.to_str().unwrap(), "--json"]);
            assert!(
                res.status.success(),
                "{}",
                String::from_utf8_lossy(&res.stderr)
            );
            let json: serde_json::Value = serde_json::from_slice(&res.stdout).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, pixels, json)
        })
        .collect()
}

fn field<'a>(json: &'a serde_json::Value, key: &str) -> &'a str {
    json.get(key)
        .or_else(|| json.get("parameters").and_then(|p| p.get(key)))
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("infotext has no {key}: {json}"))
}

#[test]
fn sdfarm_run_renders_sdxl_folders_and_single_files() {
    let Some(reference) = reference_dir() else {
        println!("skipped: ../shared/reference not found");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = reference.join("tiny-sdxl/tiny-sdxl-v1.safetensors");
    let from_folder = render(dir.path(), "folder", &reference.join("tiny-sdxl/diffusers"));
    let from_file = render(dir.path(), "file", &file);
    assert_eq!(from_folder.len(), 4);
    assert_eq!(from_file.len(), 4);
    let sha = hex::encode(Sha256::digest(std::fs::read(&file).unwrap()));
    for ((name_a, pixels_a, info_a), (name_b, pixels_b, info_b)) in
        from_folder.iter().zip(&from_file)
    {
        assert_eq!(name_a, name_b);
        assert_eq!(field(info_b, "Model hash"), &sha[..10]);
        assert_eq!(field(info_b, "Model"), "tiny-sdxl-v1");
        assert_eq!(field(info_a, "Model"), "diffusers");
        let distinct: std::collections::BTreeSet<u8> = pixels_a.iter().copied().collect();
        assert!(distinct.len() > 16, "{name_a}: image is nearly constant");
        assert!(
            pixels_a == pixels_b,
            "{name_a}: the single file renders other pixels"
        );
    }
    // Different prompts and samplers give different images.
    let unique: std::collections::BTreeSet<&Vec<u8>> =
        from_folder.iter().map(|(_, p, _)| p).collect();
    assert_eq!(unique.len(), 4, "two of the four renders are identical");
}
