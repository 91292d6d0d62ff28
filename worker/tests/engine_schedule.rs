//! Schedules and sampler loops against k-diffusion (fixtures copied from the shared kit's
//! `kdiffusion/` folder, so these run on a fresh clone).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use safetensors::SafeTensors;
use sdfarm_worker::engine::run_sampler;
use sdfarm_worker::engine::sampler::{a1111_ddim_timesteps, StepInfo};
use sdfarm_worker::engine::schedule::DiscreteSchedule;
use sdfarm_worker::engine::EngineError;

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kdiffusion")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn values(bytes: &[u8], key: &str) -> (Vec<f32>, Vec<usize>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let view = st.tensor(key).unwrap_or_else(|e| panic!("{key}: {e}"));
    let v = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (v, view.shape().to_vec())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

#[test]
fn sd15_schedule_matches_ldm_and_k_diffusion() {
    let bytes = fixture("schedules.safetensors");
    let schedule = DiscreteSchedule::sd15();

    let (ac, _) = values(&bytes, "sd15.alphas_cumprod_f32");
    assert_eq!(schedule.alphas_cumprod(), &ac[..], "alphas_cumprod");
    // torch's `** 0.5` goes through a vectorised pow accurate to one ulp; ours is the exact
    // square root, so individual sigmas may differ in the last bit.
    let (sigmas, _) = values(&bytes, "sd15.sigmas_1000");
    let worst = schedule
        .sigmas()
        .iter()
        .zip(&sigmas)
        .map(|(a, b)| ulps(*a, *b))
        .max()
        .unwrap();
    println!("discrete sigmas: worst difference {worst} ulp");
    assert!(worst <= 1, "discrete sigmas differ by {worst} ulp");

    let (normal, _) = values(&bytes, "normal_n10.sigmas");
    let ours = schedule.automatic_sigmas(10);
    let worst = ours
        .iter()
        .zip(&normal)
        .map(|(a, b)| ulps(*a, *b))
        .max()
        .unwrap();
    println!("Automatic schedule, 10 steps: worst difference {worst} ulp");
    assert!(worst <= 1, "ours {ours:?}\nref  {normal:?}");

    // sigma_to_t for every schedule kind the kit has, including non-integer timesteps.
    for name in ["normal_n10", "karras_n10", "exponential_n10"] {
        let (s, _) = values(&bytes, &format!("{name}.sigmas"));
        let (t, _) = values(&bytes, &format!("{name}.t"));
        let ours: Vec<f32> = s[..s.len() - 1]
            .iter()
            .map(|&x| schedule.sigma_to_t(x))
            .collect();
        let err = max_abs_diff(&ours, &t);
        println!("{name}: sigma_to_t max abs error {err:.3e}");
        assert!(err < 1e-3, "{name}: {ours:?} vs {t:?}");
    }

    assert_eq!(
        schedule.ddim_timesteps(10),
        vec![1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    );
    assert_eq!(schedule.ddim_timesteps(3), vec![1, 334, 667]);
}

/// The kit's analytic model: the exact posterior mean for data ~ N(mu, 0.5^2), in f32.
fn analytic_denoiser(mu: &Tensor) -> impl FnMut(&Tensor, f32) -> Result<Tensor, EngineError> + '_ {
    move |x: &Tensor, sigma: f32| {
        let sig2 = sigma * sigma;
        let num = (x.affine(0.25, 0.0)? + mu.affine(sig2 as f64, 0.0)?)?;
        let den = Tensor::new(&[0.25f32 + sig2], x.device())?;
        Ok(num.broadcast_div(&den)?)
    }
}

fn tensor(bytes: &[u8], key: &str) -> Tensor {
    let (v, shape) = values(bytes, key);
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn cancelling_stops_the_loop() {
    let bytes = fixture("sampler_cases.safetensors");
    let mu = tensor(&bytes, "mu");
    let (sigmas, _) = values(&bytes, "sample_euler.karras_n10.sigmas");
    let x = tensor(&bytes, "sample_euler.karras_n10.x_init");
    let mut steps = 0;
    let result = run_sampler(
        "Euler",
        &mut analytic_denoiser(&mu),
        x,
        &sigmas,
        None,
        &mut || panic!("Euler without churn draws no noise"),
        &mut |info: StepInfo<'_>| {
            steps = info.step;
            Ok(info.step < 3)
        },
    );
    assert!(matches!(result, Err(EngineError::Cancelled)));
    assert_eq!(steps, 3);
}

#[test]
fn a1111_ddim_timestep_counts() {
    assert_eq!(
        a1111_ddim_timesteps(1000, 10),
        vec![1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    );
    // 1000 // 7 = 142 leaves a remainder: 8 timesteps, 7 evaluations.
    assert_eq!(a1111_ddim_timesteps(1000, 7).len(), 8);
    assert_eq!(*a1111_ddim_timesteps(1000, 7).last().unwrap(), 995);
}
