//! Hires fix and img2img through `sdfarm run` on the built-in tiny model (32x32 first pass):
//! latent and Lanczos upscalers, init images from a path, a `file://` URL and an input-store
//! key, infotexts that read back through `sdfarm info`, and byte-identical PNGs when a task
//! renders twice.

mod common;
use common::{job_dir, sdfarm};

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Renders `sweep` into `dir/<out>` and returns the job's image paths (grids left out), in
/// name order.
fn run(dir: &Path, out: &str, sweep: &str) -> Vec<PathBuf> {
    run_with(dir, out, sweep, &[])
}

fn run_with(dir: &Path, out: &str, sweep: &str, env: &[(&str, &Path)]) -> Vec<PathBuf> {
    let sweep_path = dir.join(format!("{out}.toml"));
    std::fs::write(&sweep_path, sweep).unwrap();
    let out_dir = dir.join(out);
    let cache = dir.join("cache");
    let res = Command::new(env!("CARGO_BIN_EXE_sdfarm"))
        .args([
            "run",
            sweep_path.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
        ])
        .envs(env.iter().copied())
        .output()
        .expect("running sdfarm");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let job_dir = job_dir(&out_dir);
    let mut images: Vec<PathBuf> = std::fs::read_dir(&job_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".png") && name.as_bytes()[..5].iter().all(u8::is_ascii_digit)
        })
        .collect();
    images.sort();
    images
}

fn size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let reader = decoder.read_info().unwrap();
    (reader.info().width, reader.info().height)
}

fn info(path: &Path) -> Value {
    let out = sdfarm(&["info", path.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const HIRES: &str = r#"model = "builtin:tiny-sd"
prompt = "a red barn"
negative_prompt = "fog"
seed = 7
steps = 3
width = 32
height = 32
enable_hr = true
hr_scale = 2
hr_second_pass_steps = 2
denoising_strength = 0.6
[xyz]
x = { type = "Hires upscaler", values = "Latent, Latent (bicubic antialiased), Lanczos" }
"#;

#[test]
fn hires_fix_with_latent_and_lanczos_upscalers_reads_back_and_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let images = run(dir.path(), "a", HIRES);
    assert_eq!(images.len(), 3);
    let upscalers = ["Latent", "Latent (bicubic antialiased)", "Lanczos"];
    for (path, upscaler) in images.iter().zip(upscalers) {
        assert_eq!(size(path), (64, 64), "{}", path.display());
        let info = info(path);
        assert_eq!(info["Size-1"], "32");
        assert_eq!(info["Size-2"], "32");
        assert_eq!(info["Denoising strength"], "0.6");
        assert_eq!(info["Hires upscale"], "2.0");
        assert_eq!(info["Hires steps"], "2");
        assert_eq!(info["Hires upscaler"], upscaler);
        assert_eq!(info["Hires sampler"], "Use same sampler");
        assert_eq!(info["Hires resize-1"], 0);
    }
    let bytes: Vec<Vec<u8>> = images.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert_ne!(bytes[0], bytes[1], "the latent modes differ");
    assert_ne!(bytes[0], bytes[2], "latent and pixel upscales differ");

    // The same tasks rendered again are the same files, byte for byte.
    let again = run(dir.path(), "b", HIRES);
    for (a, b) in images.iter().zip(&again) {
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    }
}

#[test]
fn hires_resize_and_second_pass_sampler_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let images = run(
        dir.path(),
        "r",
        r#"model = "builtin:tiny-sd"
prompt = "a red barn"
seed = 3
steps = 2
width = 32
height = 32
enable_hr = true
hr_resize_x = 48
hr_resize_y = 40
hr_upscaler = "Latent (nearest-exact)"
hr_sampler_name = "DPM++ 2M"
hr_prompt = "a blue barn"
denoising_strength = 0.5
"#,
    );
    assert_eq!(images.len(), 1);
    // 32x32 -> 48x48, cropped to 48x40 in latent pixels.
    assert_eq!(size(&images[0]), (48, 40));
    let info = info(&images[0]);
    assert_eq!(info["Hires resize-1"], "48");
    assert_eq!(info["Hires resize-2"], "40");
    assert_eq!(info["Hires sampler"], "DPM++ 2M");
    assert_eq!(info["Hires schedule type"], "Karras");
    assert_eq!(info["Hires prompt"], "a blue barn");
    assert_eq!(info["Hires steps"], Value::Null);
}

#[test]
fn img2img_from_a_path_and_a_url_denoises_the_init_image() {
    let dir = tempfile::tempdir().unwrap();
    // An init image of another size: a 40x24 gradient, resized to 32x32 as A1111 does.
    let init = dir.path().join("init.png");
    let (w, h) = (40u32, 24u32);
    let rgb: Vec<u8> = (0..w * h)
        .flat_map(|i| {
            let (x, y) = (i % w, i / w);
            [(x * 6) as u8, (y * 10) as u8, 128]
        })
        .collect();
    std::fs::write(
        &init,
        sdfarm_worker::output::encode_png(&rgb, w, h, "").unwrap(),
    )
    .unwrap();
    let sweep = |source: &str, strength: f32| {
        format!(
            "model = \"builtin:tiny-sd\"\nprompt = \"a red barn\"\nseed = 11\nsteps = 4\n\
             width = 32\nheight = 32\ninit_image = \"{source}\"\ndenoising_strength = {strength}\n"
        )
    };
    let path = init.to_str().unwrap().to_string();
    let by_path = run(dir.path(), "p", &sweep(&path, 0.5));
    let url = format!("file://{path}");
    let by_url = run(dir.path(), "u", &sweep(&url, 0.5));
    let stronger = run(dir.path(), "s", &sweep(&path, 0.9));
    // A bare key is read from the worker's input store.
    let by_key = run_with(
        dir.path(),
        "k",
        &sweep("init.png", 0.5),
        &[("SDFARM_INPUT_STORE", dir.path())],
    );
    assert_eq!(
        std::fs::read(&by_path[0]).unwrap(),
        std::fs::read(&by_key[0]).unwrap()
    );
    assert_eq!(size(&by_path[0]), (32, 32));
    assert_eq!(
        std::fs::read(&by_path[0]).unwrap(),
        std::fs::read(&by_url[0]).unwrap(),
        "a path and a file:// URL name the same image"
    );
    assert_ne!(
        std::fs::read(&by_path[0]).unwrap(),
        std::fs::read(&stronger[0]).unwrap()
    );
    let info = info(&by_path[0]);
    assert_eq!(info["Denoising strength"], "0.5");
    assert_eq!(info["Steps"], "4");
    assert_eq!(info.get("Hires upscaler"), None);

    // A missing init image fails the task naming the field and what it accepts.
    let missing = dir.path().join("missing.toml");
    std::fs::write(&missing, sweep("/nonexistent/x.png", 0.5)).unwrap();
    let out = sdfarm(&[
        "run",
        missing.to_str().unwrap(),
        "--out",
        dir.path().join("m").to_str().unwrap(),
        "--cache",
        dir.path().join("cache").to_str().unwrap(),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("init_image"), "{text}");
}
