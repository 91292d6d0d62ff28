//! Every sampler case of the k-diffusion reference (`kdiffusion/sampler_cases.*`) through
//! sdfarm's samplers with the kit's analytic denoiser and its recorded noise draws, plus the
//! A1111 sampler/schedule tables and name resolution (`a1111/samplers.json`).
//!
//! The shared kit (`../shared/reference` or `SDFARM_REFERENCE_DIR`) is used when present, so a
//! kit with more cases tests them all; otherwise the copies in `tests/fixtures` run.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use safetensors::SafeTensors;
use sdfarm_worker::engine::kdiffusion::{self, Algorithm, Options, SdeSolver};
use sdfarm_worker::engine::sampler::{a1111_sampler_and_scheduler, SAMPLERS};
use sdfarm_worker::engine::schedule::DiscreteSchedule;
use sdfarm_worker::engine::scheduler::{self, ScheduleOverrides, ScheduleType};
use sdfarm_worker::engine::{run_sampler, EngineError, Sampler};
use serde_json::Value;

fn kit_file(sub: &str, name: &str) -> PathBuf {
    let shared = match std::env::var_os("SDFARM_REFERENCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference"),
    };
    let candidate = shared.join(sub).join(name);
    if candidate.is_file() {
        return candidate;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(sub)
        .join(name)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tensor(bytes: &[u8], key: &str) -> Tensor {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let view = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    let v: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Tensor::from_vec(v, view.shape(), &Device::Cpu).unwrap()
}

fn has(bytes: &[u8], key: &str) -> bool {
    SafeTensors::deserialize(bytes).unwrap().tensor(key).is_ok()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    flat(a)
        .iter()
        .zip(flat(b))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The kit's model: the exact posterior mean for data ~ N(mu, 0.5^2), in f32.
fn analytic(mu: &Tensor, x: &Tensor, sigma: f32) -> Result<Tensor, EngineError> {
    let sig2 = sigma * sigma;
    let num = (x.affine(0.25, 0.0)? + mu.affine(sig2 as f64, 0.0)?)?;
    let den = Tensor::new(&[0.25f32 + sig2], x.device())?;
    Ok(num.broadcast_div(&den)?)
}

/// k-diffusion function name → (A1111 sampler name, algorithm).
fn algorithm_for(function: &str, kwargs: &Value) -> (&'static str, Algorithm) {
    match function {
        "sample_euler" => ("Euler", Algorithm::Euler),
        "sample_euler_ancestral" => ("Euler a", Algorithm::EulerAncestral),
        "sample_heun" => ("Heun", Algorithm::Heun),
        "sample_dpm_2" => ("DPM2", Algorithm::Dpm2),
        "sample_dpm_2_ancestral" => ("DPM2 a", Algorithm::Dpm2Ancestral),
        "sample_lms" => ("LMS", Algorithm::Lms),
        "sample_dpmpp_2s_ancestral" => ("DPM++ 2S a", Algorithm::Dpmpp2sAncestral),
        "sample_dpmpp_sde" => ("DPM++ SDE", Algorithm::DpmppSde),
        "sample_dpmpp_2m" => ("DPM++ 2M", Algorithm::Dpmpp2m),
        "sample_dpmpp_2m_sde" if kwargs["solver_type"] == "heun" => {
            ("DPM++ 2M SDE Heun", Algorithm::Dpmpp2mSde)
        }
        "sample_dpmpp_2m_sde" => ("DPM++ 2M SDE", Algorithm::Dpmpp2mSde),
        "sample_dpmpp_3m_sde" => ("DPM++ 3M SDE", Algorithm::Dpmpp3mSde),
        other => panic!("no sdfarm sampler for k-diffusion's {other}"),
    }
}

fn options_from(kwargs: &Value) -> Options {
    let mut o = Options::default();
    let f = |k: &str| kwargs.get(k).and_then(Value::as_f64).map(|v| v as f32);
    if let Some(v) = f("eta") {
        o.eta = v;
    }
    if let Some(v) = f("s_noise") {
        o.s_noise = v;
    }
    if let Some(v) = f("r") {
        o.sde_r = v;
    }
    if let Some(v) = kwargs.get("order").and_then(Value::as_u64) {
        o.lms_order = v as usize;
    }
    if kwargs["solver_type"] == "heun" {
        o.sde_solver = SdeSolver::Heun;
    }
    o
}

/// Runs one reference case; returns (final error, per-step state error).
fn run_case(bytes: &[u8], case: &Value) -> (f32, f32) {
    let name = case["case"].as_str().unwrap();
    let function = case["sampler"].as_str().unwrap();
    let kwargs = &case["kwargs"];
    let (a1111_name, algorithm) = algorithm_for(function, kwargs);
    let mu = tensor(bytes, "mu");
    let sigmas = flat(&tensor(bytes, &format!("{name}.sigmas")));
    let x = tensor(bytes, &format!("{name}.x_init"));

    let mut draws = 0;
    let mut noise = || -> Result<Tensor, EngineError> {
        let t = tensor(bytes, &format!("{name}.noise_{draws:02}"));
        draws += 1;
        Ok(t)
    };
    let mut calls: Vec<f32> = Vec::new();
    let mut denoise = |x: &Tensor, sigma: f32| {
        calls.push(sigma);
        analytic(&mu, x, sigma)
    };
    let mut states = vec![x.clone()];
    let mut on_step = |info: kdiffusion_step::Info<'_>| {
        states.push(info.latents.clone());
        Ok(true)
    };
    let opts = options_from(kwargs);
    let ours = kdiffusion::sample(
        algorithm,
        &mut denoise,
        x.clone(),
        &sigmas,
        &opts,
        &mut noise,
        &mut on_step,
    )
    .unwrap();
    assert_eq!(
        draws as u64,
        case["n_noise_calls"].as_u64().unwrap(),
        "{name}: noise draws"
    );
    let expected_calls: Vec<f32> = case["model_call_sigmas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(calls.len(), expected_calls.len(), "{name}: model calls");
    for (ours, theirs) in calls.iter().zip(&expected_calls) {
        assert!(
            (ours - theirs).abs() <= 2e-6 * theirs.abs().max(1e-3),
            "{name}: model called at sigma {ours}, reference {theirs}"
        );
    }
    let final_err = max_abs(&ours, &tensor(bytes, &format!("{name}.final")));

    let mut step_err = 0f32;
    for (i, state) in states.iter().enumerate() {
        let key = format!("{name}.step_{i:02}.x");
        if has(bytes, &key) {
            step_err = step_err.max(max_abs(state, &tensor(bytes, &key)));
        }
    }

    // The named entry point gives the same result when the case uses A1111's defaults.
    let only_defaults = kwargs
        .as_object()
        .is_none_or(|m| m.keys().all(|k| k == "solver_type"));
    if only_defaults {
        let mut draws = 0;
        let mut noise = || -> Result<Tensor, EngineError> {
            let t = tensor(bytes, &format!("{name}.noise_{draws:02}"));
            draws += 1;
            Ok(t)
        };
        let named = run_sampler(
            a1111_name,
            &mut |x, s| analytic(&mu, x, s),
            x,
            &sigmas,
            None,
            &mut noise,
            &mut |_| Ok(true),
        )
        .unwrap();
        assert_eq!(
            flat(&named),
            flat(&ours),
            "{name}: run_sampler({a1111_name:?})"
        );
    }
    (final_err, step_err)
}

/// Step reporting type, aliased for readability above.
mod kdiffusion_step {
    pub use sdfarm_worker::engine::sampler::StepInfo as Info;
}

#[test]
fn samplers_match_k_diffusion() {
    let json: Value =
        serde_json::from_slice(&read(&kit_file("kdiffusion", "sampler_cases.json"))).unwrap();
    let bytes = read(&kit_file("kdiffusion", "sampler_cases.safetensors"));
    let cases = json["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let (final_err, step_err) = run_case(&bytes, case);
        println!(
            "{}: final max abs error {final_err:.3e}, per-step states {step_err:.3e}",
            case["case"].as_str().unwrap()
        );
        assert!(
            final_err <= 1e-4,
            "{}: final differs by {final_err}",
            case["case"]
        );
        assert!(
            step_err <= 1e-4,
            "{}: a step differs by {step_err}",
            case["case"]
        );
    }
}

#[test]
fn schedules_match_k_diffusion() {
    let json: Value =
        serde_json::from_slice(&read(&kit_file("kdiffusion", "schedules.json"))).unwrap();
    let model = DiscreteSchedule::sd15();
    for (name, entry) in json["schedules"].as_object().unwrap() {
        let expected: Vec<f32> = entry["sigmas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let n = expected.len() - 1;
        let how = entry["how"].as_str().unwrap();
        // The kit's Karras/exponential cases use rounded sigma bounds given in `how`.
        let ours = if how.contains("get_sigmas_karras") {
            scheduler::karras(n, 0.0292, 14.6146, 7.0)
        } else if how.contains("get_sigmas_exponential") {
            scheduler::exponential(n, 0.0292, 14.6146)
        } else {
            scheduler::sampler_sigmas(
                Sampler::Euler,
                ScheduleType::Uniform,
                n,
                &model,
                &ScheduleOverrides::default(),
            )
            .unwrap()
        };
        let worst = ours
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-6))
            .fold(0.0, f32::max);
        println!("{name}: worst relative sigma error {worst:.3e}");
        assert!(worst < 2e-6, "{name}: {ours:?} vs {expected:?}");
    }
}

#[test]
fn a1111_defaults_and_discarded_sigma() {
    let model = DiscreteSchedule::sd15();
    let none = ScheduleOverrides::default();
    let sigmas =
        |s: Sampler, t: ScheduleType| scheduler::sampler_sigmas(s, t, 10, &model, &none).unwrap();
    // DPM++ 2M's Automatic is Karras over the model's own sigma range.
    let karras = scheduler::karras(10, model.sigma_min(), model.sigma_max(), 7.0);
    assert_eq!(sigmas(Sampler::Dpmpp2m, ScheduleType::Automatic), karras);
    assert_eq!(sigmas(Sampler::Euler, ScheduleType::Karras), karras);
    assert_eq!(
        sigmas(Sampler::Euler, ScheduleType::Automatic),
        model.automatic_sigmas(10)
    );
    assert_eq!(
        sigmas(Sampler::Dpmpp2mSde, ScheduleType::Automatic),
        scheduler::exponential(10, model.sigma_min(), model.sigma_max())
    );
    // DPM2 schedules 11 steps and drops the penultimate sigma: still 10 steps.
    let dpm2 = sigmas(Sampler::Dpm2, ScheduleType::Automatic);
    let eleven = scheduler::karras(11, model.sigma_min(), model.sigma_max(), 7.0);
    assert_eq!(dpm2.len(), 11);
    assert_eq!(&dpm2[..10], &eleven[..10]);
    assert_eq!(dpm2[10], 0.0);
    // SGM Uniform: n timesteps from t(sigma_max), endpoint excluded, then 0.
    let sgm = sigmas(Sampler::Euler, ScheduleType::SgmUniform);
    assert_eq!(sgm.len(), 11);
    assert!((sgm[0] - model.sigma_max()).abs() < 1e-4);
    assert!(sgm[9] > model.sigma_min() && sgm[10] == 0.0);
    // Polyexponential with rho 1 equals exponential up to rounding.
    let poly = sigmas(Sampler::Euler, ScheduleType::Polyexponential);
    let exp = scheduler::exponential(10, model.sigma_min(), model.sigma_max());
    for (a, b) in poly.iter().zip(&exp) {
        assert!((a - b).abs() <= 1e-5 * b.max(1.0), "{poly:?} vs {exp:?}");
    }
    // Overrides replace the bounds and rho.
    let custom = ScheduleOverrides {
        sigma_min: 0.1,
        sigma_max: 10.0,
        rho: 3.0,
    };
    assert_eq!(
        scheduler::sampler_sigmas(Sampler::Euler, ScheduleType::Karras, 10, &model, &custom)
            .unwrap(),
        scheduler::karras(10, 0.1, 10.0, 3.0)
    );
}

#[test]
fn sampler_table_and_legacy_names_match_a1111() {
    let json: Value = serde_json::from_slice(&read(&kit_file("a1111", "samplers.json"))).unwrap();
    let table = json["samplers"].as_array().unwrap();
    assert_eq!(table.len(), SAMPLERS.len());
    for (theirs, ours) in table.iter().zip(SAMPLERS) {
        assert_eq!(theirs["name"], ours.name);
        let aliases: Vec<&str> = theirs["aliases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(aliases, ours.aliases, "{}", ours.name);
        let scheduler = theirs["options"]["scheduler"].as_str();
        assert_eq!(scheduler, ours.scheduler.map(|s| s.name()), "{}", ours.name);
        let discard = theirs["options"]["discard_next_to_last_sigma"] == true;
        assert_eq!(discard, ours.discard_penultimate, "{}", ours.name);
    }
    for (theirs, ours) in json["schedulers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(ScheduleType::ALL)
    {
        assert_eq!(theirs["name"], ours.name());
        assert_eq!(theirs["label"], ours.label());
        let rho = theirs["default_rho"].as_f64().unwrap();
        assert_eq!(ours.default_rho().map_or(-1.0, |r| r as f64), rho);
    }
    for case in json["get_sampler_and_scheduler_cases"].as_array().unwrap() {
        let got = a1111_sampler_and_scheduler(
            case["sampler_in"].as_str().unwrap(),
            case["scheduler_in"].as_str(),
            case["convert_automatic"].as_bool().unwrap(),
        );
        let expected = (
            case["expected"][0].as_str().unwrap(),
            case["expected"][1].as_str().unwrap(),
        );
        assert_eq!(got, expected, "{case}");
    }
}

#[test]
fn render_names_resolve_strictly() {
    assert_eq!(
        Sampler::resolve("DPM++ 2M Karras").unwrap(),
        (Sampler::Dpmpp2m, Some(ScheduleType::Karras))
    );
    assert_eq!(
        Sampler::resolve("k_euler_a").unwrap(),
        (Sampler::EulerAncestral, None)
    );
    assert_eq!(
        Sampler::resolve("DPM++ 2M SDE Heun Exponential").unwrap(),
        (Sampler::Dpmpp2mSdeHeun, Some(ScheduleType::Exponential))
    );
    // A1111 strips " Uniform" first and falls back to DPM++ 2M here; sdfarm finds the
    // sampler the user meant.
    assert_eq!(
        Sampler::resolve("Euler SGM Uniform").unwrap(),
        (Sampler::Euler, Some(ScheduleType::SgmUniform))
    );
    let err = Sampler::resolve("Euler b").unwrap_err().to_string();
    assert!(
        err.contains("sampler_name") && err.contains("DPM++ 2M"),
        "{err}"
    );
    assert!(matches!(
        Sampler::resolve("PLMS"),
        Err(EngineError::Unsupported { .. })
    ));
    assert!(matches!(
        ScheduleType::from_request("Beta"),
        Err(EngineError::Unsupported { .. })
    ));
    assert_eq!(
        ScheduleType::from_request("SGMUniform").unwrap(),
        ScheduleType::SgmUniform
    );
}
