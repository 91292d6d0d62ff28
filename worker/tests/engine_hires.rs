//! Hires-fix target sizes, latent crop and second-pass step arithmetic against A1111's cases
//! (`a1111/hires_fix.json`).

use std::path::{Path, PathBuf};

use sdfarm_worker::engine::hires::{first_sigma_index, img2img_steps, HiresPlan};
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

fn pair(v: &Value) -> (u32, u32) {
    (v[0].as_u64().unwrap() as u32, v[1].as_u64().unwrap() as u32)
}

#[test]
fn hires_fix_matches_a1111() {
    let cases: Value =
        serde_json::from_slice(&std::fs::read(kit_file("hires_fix.json")).unwrap()).unwrap();
    for case in cases.as_array().unwrap() {
        let e = &case["expected"];
        let u = |k: &str| case[k].as_u64().unwrap();
        match case["kind"].as_str().unwrap() {
            "resolution" => {
                let plan = HiresPlan::new(
                    u("width") as u32,
                    u("height") as u32,
                    case["hr_scale"].as_f64().unwrap() as f32,
                    u("hr_resize_x") as u32,
                    u("hr_resize_y") as u32,
                    8,
                )
                .unwrap();
                assert_eq!(plan.upscale_to, pair(&e["hr_upscale_to"]), "{case}");
                assert_eq!(plan.truncate, pair(&e["truncate"]), "{case}");
                assert_eq!(
                    plan.latent_before_crop,
                    pair(&e["latent_before_crop"]),
                    "{case}"
                );
                let crop: Vec<u32> = e["latent_crop_rows_cols"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect();
                assert_eq!(plan.crop_rows_cols.to_vec(), crop, "{case}");
                assert_eq!(plan.final_latent, pair(&e["final_latent"]), "{case}");
                assert_eq!(plan.final_pixels, pair(&e["final_pixels"]), "{case}");
                let (key, value) = e["infotext_extra"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .next()
                    .unwrap();
                assert_eq!(plan.infotext.0, key);
                let expected = match value {
                    Value::String(s) => s.clone(),
                    other => {
                        let s = other.to_string();
                        if s.contains('.') {
                            s
                        } else {
                            format!("{s}.0")
                        }
                    }
                };
                assert_eq!(plan.infotext.1, expected, "{case}");
            }
            "hires_steps" => {
                let steps = u("steps") as usize;
                let second = u("hr_second_pass_steps") as usize;
                let requested = if second == 0 { steps } else { second };
                let strength = case["denoising_strength"].as_f64().unwrap() as f32;
                let (len, t_enc) = img2img_steps(requested, strength, true);
                assert_eq!(
                    len as u64,
                    e["schedule_len_steps"].as_u64().unwrap(),
                    "{case}"
                );
                assert_eq!(t_enc as u64, e["t_enc"].as_u64().unwrap(), "{case}");
                let from = first_sigma_index(len, t_enc);
                assert_eq!(from as u64, e["sigmas_used_from_index"].as_u64().unwrap());
                assert_eq!(
                    (t_enc + 1) as u64,
                    e["sampling_steps_run"].as_u64().unwrap()
                );
            }
            other => panic!("unknown hires case kind {other}"),
        }
    }
}
