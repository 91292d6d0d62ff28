//! A1111's UniPC sampler (`sd_samplers_timesteps_impl.unipc` over `uni_pc.py`).
//!
//! The reference kit has no UniPC trajectories, so these tests check what can be derived
//! independently: A1111's step count and solver times, the VP schedule against the model's
//! `alphas_cumprod`, that one first-order step is exactly a DDIM step, that the solver
//! converges to the exact probability-flow ODE solution of a Gaussian data distribution (and
//! faster with a higher order), determinism, option checks, name resolution and a render.

use candle_core::{Device, Tensor};
use sdfarm_proto::RenderParams;
use sdfarm_worker::engine::sampler::{a1111_ddim_timesteps, sample_ddim, DdimVariant};
use sdfarm_worker::engine::schedule::DiscreteSchedule;
use sdfarm_worker::engine::unipc::{
    a1111_unipc_steps, sample_unipc, time_steps, UniPcOptions, UniPcSkipType, UniPcVariant,
    VpSchedule,
};
use sdfarm_worker::engine::{run_sampler, Engine, EngineError, Sampler};
use sdfarm_worker::models::{ModelResolver, BUILTIN_TINY};

mod common;
use common::max_abs;

const S: f32 = 0.5;

fn mu() -> Tensor {
    let v: Vec<f32> = (0..256)
        .map(|k| {
            let k = k as f64;
            (0.8 * (0.37 * k).sin() + 0.3 * (0.11 * k).cos() - 0.1) as f32
        })
        .collect();
    Tensor::from_vec(v, (1, 4, 8, 8), &Device::Cpu).unwrap()
}

fn noise(seed: u64) -> Tensor {
    let v = sdfarm_worker::engine::torch_rng::TorchGenerator::new(seed).randn(256);
    Tensor::from_vec(v, (1, 4, 8, 8), &Device::Cpu).unwrap()
}

/// The exact noise prediction for data ~ N(mu, S^2) under `x = alpha * x0 + sigma * eps`, at
/// model time `t_model` (continuous time `t_model / 1000 + 1/N`).
fn gaussian_eps(
    ns: &VpSchedule,
    mu: &Tensor,
    x: &Tensor,
    t_model: f32,
) -> Result<Tensor, EngineError> {
    let t = t_model / 1000.0 + 1.0 / ns.total_n() as f32;
    let (a, s) = (ns.alpha(t) as f64, ns.std(t) as f64);
    let v = (S * S) as f64;
    let den = a * a * v + s * s;
    // x0 = (a v x + s^2 mu) / den; eps = (x - a x0) / s
    let x0 = (x.affine(a * v / den, 0.0)? + mu.affine(s * s / den, 0.0)?)?;
    Ok((x - x0.affine(a, 0.0)?)?.affine(1.0 / s, 0.0)?)
}

/// The exact ODE solution from `x` at time `t_from` to `t_to`: the standardised coordinate
/// `(x - alpha mu) / sqrt(alpha^2 S^2 + sigma^2)` is constant along the flow.
fn exact(ns: &VpSchedule, mu: &Tensor, x: &Tensor, t_from: f32, t_to: f32) -> Tensor {
    let scale = |t: f32| {
        let (a, s) = (ns.alpha(t) as f64, ns.std(t) as f64);
        (a, (a * a * (S * S) as f64 + s * s).sqrt())
    };
    let (a0, k0) = scale(t_from);
    let (a1, k1) = scale(t_to);
    let z = (x - mu.affine(a0, 0.0).unwrap())
        .unwrap()
        .affine(1.0 / k0, 0.0)
        .unwrap();
    (z.affine(k1, 0.0).unwrap() + mu.affine(a1, 0.0).unwrap()).unwrap()
}

fn run(ns: &VpSchedule, steps: usize, options: UniPcOptions, x: &Tensor) -> (Tensor, usize) {
    let mu = mu();
    let mut calls = 0;
    let mut reported = Vec::new();
    let out = sample_unipc(
        &mut |x, t| {
            calls += 1;
            gaussian_eps(ns, &mu, x, t)
        },
        x.clone(),
        ns,
        steps,
        None,
        &options,
        &mut |info| {
            reported.push((info.step, info.total));
            Ok(true)
        },
    )
    .unwrap();
    let expected: Vec<(usize, usize)> = (1..=steps).map(|s| (s, steps)).collect();
    assert_eq!(reported, expected, "one report per solver step");
    (out, calls)
}

#[test]
fn step_count_and_times_follow_a1111() {
    for steps in [1, 7, 10, 20, 30, 33, 999, 1000] {
        // A1111 runs len(range(0, 1000, 1000 // steps)) solver steps.
        let expected = (0..1000).step_by(1000 / steps).count();
        assert_eq!(a1111_unipc_steps(1000, steps), expected, "{steps} steps");
        assert_eq!(a1111_ddim_timesteps(1000, steps).len(), expected);
    }
    let ns = VpSchedule::from_schedule(&DiscreteSchedule::sd15());
    let ts = time_steps(&ns, UniPcSkipType::TimeUniform, 1.0, 1.0 / 1000.0, 20);
    assert_eq!(ts.len(), 21);
    assert_eq!((ts[0], ts[20]), (1.0, 0.001));
    let gaps: Vec<f32> = ts.windows(2).map(|w| w[0] - w[1]).collect();
    for g in &gaps {
        assert!((g - 0.999 / 20.0).abs() < 1e-6, "uneven spacing {gaps:?}");
    }
    let quadratic = time_steps(&ns, UniPcSkipType::TimeQuadratic, 1.0, 0.001, 10);
    for (i, t) in quadratic.iter().enumerate() {
        let r = 1.0 + (0.001f64.sqrt() - 1.0) * i as f64 / 10.0;
        assert!((*t as f64 - r * r).abs() < 1e-6, "time_quadratic {i}: {t}");
    }
    let log_snr = time_steps(&ns, UniPcSkipType::LogSnr, 1.0, 0.001, 10);
    let lambdas: Vec<f32> = log_snr.iter().map(|&t| ns.lambda(t)).collect();
    let step = (lambdas[10] - lambdas[0]) / 10.0;
    for w in lambdas.windows(2) {
        assert!(
            (w[1] - w[0] - step).abs() < 2e-3,
            "logSNR spacing {lambdas:?}"
        );
    }
}

#[test]
fn vp_schedule_matches_alphas_cumprod() {
    let schedule = DiscreteSchedule::sd15();
    let ns = VpSchedule::from_schedule(&schedule);
    let ac = schedule.alphas_cumprod();
    assert_eq!(ns.total_n(), 1000);
    for i in [0usize, 1, 250, 500, 998, 999] {
        // Discrete timestep i sits at continuous time (i + 1) / N and model time i.
        let t = (i as f32 + 1.0) / 1000.0;
        let alpha2 = (ns.alpha(t) as f64).powi(2);
        assert!(
            (alpha2 - ac[i] as f64).abs() < 2e-6 * ac[i] as f64 + 1e-9,
            "alpha^2 at {i}: {alpha2} vs {}",
            ac[i]
        );
        let s = ns.std(t) as f64;
        assert!((alpha2 + s * s - 1.0).abs() < 1e-5);
        assert!((ns.model_time(t) - i as f32).abs() < 1e-3);
        let back = ns.inverse_lambda(ns.lambda(t));
        assert!(
            (back - t).abs() < 1e-4,
            "inverse_lambda at {i}: {back} vs {t}"
        );
    }
}

/// One first-order step without the corrector (the last step never corrects) is DDIM from
/// timestep 999 to alphas_cumprod[0], whatever the model.
#[test]
fn one_first_order_step_is_ddim() {
    let schedule = DiscreteSchedule::sd15();
    let ns = VpSchedule::from_schedule(&schedule);
    let mu = mu();
    let x = noise(7);
    let options = UniPcOptions {
        order: 1,
        ..UniPcOptions::default()
    };
    let mut times = Vec::new();
    let ours = sample_unipc(
        &mut |x, t| {
            times.push(t);
            gaussian_eps(&ns, &mu, x, t)
        },
        x.clone(),
        &ns,
        1,
        None,
        &options,
        &mut |_| Ok(true),
    )
    .unwrap();
    assert_eq!(times.len(), 1, "one model call");
    assert!((times[0] - 999.0).abs() < 1e-3, "model time {}", times[0]);

    let ddim = sample_ddim(
        &mut |x, t| gaussian_eps(&ns, &mu, x, t as f32),
        x,
        &schedule,
        &[0, 999],
        DdimVariant::A1111,
        0.0,
        &mut || -> Result<Tensor, EngineError> { panic!("eta 0 draws no noise") },
        &mut |_| Ok(true),
    )
    .unwrap();
    let diff = max_abs(&ours, &ddim);
    println!("UniPC order 1, one step vs DDIM: max abs diff {diff:e}");
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn converges_to_the_exact_ode_solution() {
    let ns = VpSchedule::from_schedule(&DiscreteSchedule::sd15());
    let mu = mu();
    let x = noise(11);
    let target = exact(&ns, &mu, &x, 1.0, 0.001);
    let err = |steps: usize, order: usize, variant: UniPcVariant| {
        let options = UniPcOptions {
            order,
            variant,
            ..UniPcOptions::default()
        };
        let (out, calls) = run(&ns, steps, options, &x);
        // One model call per step plus the initial one; the last step skips the corrector.
        assert_eq!(calls, steps, "model calls for {steps} steps, order {order}");
        max_abs(&out, &target)
    };
    let table: Vec<(usize, usize, UniPcVariant, f32)> = [
        (5, 1, UniPcVariant::Bh1),
        (5, 3, UniPcVariant::Bh1),
        (10, 1, UniPcVariant::Bh1),
        (10, 2, UniPcVariant::Bh1),
        (10, 3, UniPcVariant::Bh1),
        (10, 3, UniPcVariant::Bh2),
        (20, 3, UniPcVariant::Bh1),
        (50, 3, UniPcVariant::Bh1),
    ]
    .into_iter()
    .map(|(s, o, v)| (s, o, v, err(s, o, v)))
    .collect();
    for (s, o, v, e) in &table {
        println!("steps {s:>2} order {o} {v:?}: max abs error {e:e}");
    }
    let e = |s: usize, o: usize, v: UniPcVariant| {
        table
            .iter()
            .find(|r| r.0 == s && r.1 == o && r.2 == v)
            .unwrap()
            .3
    };
    use UniPcVariant::*;
    assert!(e(10, 3, Bh1) < e(10, 1, Bh1), "order 3 no better than 1");
    assert!(e(5, 3, Bh1) < e(5, 1, Bh1));
    assert!(e(20, 3, Bh1) < e(10, 3, Bh1) && e(50, 3, Bh1) < e(20, 3, Bh1));
    assert!(e(10, 1, Bh1) < e(5, 1, Bh1));
    // A1111's time-uniform spacing leaves a long last step (lambda from about 1 to 3.5) that
    // lower_order_final takes at first order, so the error falls about linearly in the steps.
    assert!(
        e(50, 3, Bh1) < 0.05,
        "50 steps of order 3: {}",
        e(50, 3, Bh1)
    );
    assert!(e(10, 3, Bh2) < e(10, 1, Bh1));
}

#[test]
fn deterministic_and_checks_its_options() {
    let ns = VpSchedule::from_schedule(&DiscreteSchedule::sd15());
    let x = noise(3);
    let a = run(&ns, 8, UniPcOptions::default(), &x).0;
    let b = run(&ns, 8, UniPcOptions::default(), &x).0;
    assert_eq!(max_abs(&a, &b), 0.0);
    let no_lower = UniPcOptions {
        lower_order_final: false,
        ..UniPcOptions::default()
    };
    assert!(max_abs(&a, &run(&ns, 8, no_lower, &x).0) > 0.0);
    assert_eq!(UniPcOptions::with_order(0), UniPcOptions::default());
    assert_eq!(UniPcOptions::with_order(2).order, 2);

    let mu = mu();
    for (order, steps) in [(4usize, 3usize), (0, 5)] {
        let options = UniPcOptions {
            order,
            ..UniPcOptions::default()
        };
        let err = sample_unipc(
            &mut |x, t| gaussian_eps(&ns, &mu, x, t),
            x.clone(),
            &ns,
            steps,
            None,
            &options,
            &mut |_| Ok(true),
        )
        .unwrap_err();
        assert!(err.to_string().contains("uni_pc_order"), "{err}");
    }
    // Order equal to the step count is allowed, as in A1111.
    run(
        &ns,
        3,
        UniPcOptions {
            order: 3,
            ..UniPcOptions::default()
        },
        &x,
    );
}

#[test]
fn name_resolves_and_the_sigma_entry_point_refers_to_sample_unipc() {
    assert_eq!(Sampler::from_name("UniPC").unwrap(), Sampler::UniPc);
    assert_eq!(Sampler::from_name("unipc").unwrap(), Sampler::UniPc);
    assert_eq!(Sampler::UniPc.name(), "UniPC");
    assert!(!Sampler::UniPc.second_order());
    let err = run_sampler(
        "UniPC",
        &mut |x, _| Ok(x.clone()),
        noise(1),
        &[1.0, 0.0],
        None,
        &mut || -> Result<Tensor, EngineError> { panic!("no noise") },
        &mut |_| Ok(true),
    )
    .unwrap_err();
    assert!(err.to_string().contains("sample_unipc"), "{err}");
}

#[test]
fn renders_txt2img_and_hires_with_unipc() {
    let cache = tempfile::tempdir().unwrap();
    let engine = Engine::new(ModelResolver::new(cache.path()));
    let params = RenderParams {
        prompt: "a photo of a cat".into(),
        seed: 5,
        steps: 7,
        sampler_name: "UniPC".into(),
        scheduler: "Automatic".into(),
        cfg_scale: 7.0,
        width: 32,
        height: 32,
        model: BUILTIN_TINY.into(),
        rng: "CPU".into(),
        ..Default::default()
    };
    let mut steps = Vec::new();
    let first = engine
        .render(&params, &mut |s, t| {
            steps.push((s, t));
            true
        })
        .unwrap();
    // 7 steps are 8 UniPC steps in A1111 (range(0, 1000, 142) has 8 entries).
    assert_eq!(steps.last().unwrap().0, 8, "{steps:?}");
    assert_eq!(
        first.rgb,
        engine.render(&params, &mut |_, _| true).unwrap().rgb
    );
    let order1 = RenderParams {
        uni_pc_order: 1,
        ..params.clone()
    };
    assert_ne!(
        first.rgb,
        engine.render(&order1, &mut |_, _| true).unwrap().rgb,
        "uni_pc_order had no effect"
    );
    let ddim = RenderParams {
        sampler_name: "DDIM".into(),
        ..params.clone()
    };
    assert_ne!(
        first.rgb,
        engine.render(&ddim, &mut |_, _| true).unwrap().rgb
    );
    let too_high = RenderParams {
        uni_pc_order: 9,
        ..params.clone()
    };
    let err = engine.render(&too_high, &mut |_, _| true).unwrap_err();
    assert!(err.to_string().contains("uni_pc_order"), "{err}");

    let hires = RenderParams {
        enable_hr: true,
        hr_scale: 2.0,
        hr_upscaler: "Latent".into(),
        denoising_strength: 0.6,
        ..params.clone()
    };
    let a = engine.render(&hires, &mut |_, _| true).unwrap();
    assert_eq!((a.width, a.height), (64, 64));
    assert_eq!(a.rgb, engine.render(&hires, &mut |_, _| true).unwrap().rgb);
}
