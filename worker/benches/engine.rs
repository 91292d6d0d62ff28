//! Engine speed on the CPU: one UNet evaluation at Stable Diffusion 1.5's real shape and the
//! tiny reference pipeline end to end, each next to a baseline from the same run.
//!
//! `cargo bench -p sdfarm-worker --bench engine [-- STEPS]` (STEPS timed UNet evaluations,
//! default 2, after one warm-up).
//!
//! - UNet step: SD 1.5's UNet (860 M parameters, zero weights: the arithmetic does not depend on
//!   the values), a 32×32 latent (a 256² image), batch 2 as classifier-free guidance runs it,
//!   a 77-token context.
//! - Tiny pipeline: `../shared/reference/tiny-sd/diffusers` (or `SDFARM_TINY_SD`), a 64×64
//!   image, Euler, 10 steps, CFG 7.5: prompt encoding, sampling, VAE decode, RGB conversion.
//! - Baselines: a 1024³ f32 matmul in the same process (the machine's own arithmetic rate,
//!   so figures from a busy machine can be compared), and `benches/torch_baseline.py` running
//!   the same two workloads in PyTorch/diffusers when `python3` has torch (it prints a skip
//!   message otherwise); the ratios candle/torch are printed when it ran.
//!
//! Built by `cargo test` (the target has `test = true`) but only measures under `cargo bench`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::unet_2d::{
    BlockConfig, UNet2DConditionModelConfig,
};
use sdfarm_worker::engine::attention::{attend, attend_unfused};
use sdfarm_worker::engine::pipeline::decoded_to_rgb8;
use sdfarm_worker::engine::unet::UNet;
use sdfarm_worker::engine::{EngineError, Pipeline, SampleSettings, Sampler};

/// SD 1.5's `unet/config.json` (runwayml/stable-diffusion-v1-5).
fn sd15_unet() -> UNet2DConditionModelConfig {
    let block = |out_channels, use_cross_attn| BlockConfig {
        out_channels,
        use_cross_attn,
        attention_head_dim: 8,
    };
    UNet2DConditionModelConfig {
        blocks: vec![
            block(320, Some(1)),
            block(640, Some(1)),
            block(1280, Some(1)),
            block(1280, None),
        ],
        center_input_sample: false,
        cross_attention_dim: 768,
        downsample_padding: 1,
        flip_sin_to_cos: true,
        freq_shift: 0.,
        layers_per_block: 2,
        mid_block_scale_factor: 1.,
        norm_eps: 1e-5,
        norm_num_groups: 32,
        sliced_attention_size: None,
        use_linear_projection: false,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Seconds per 1024³ f32 matmul, best of five after a warm-up.
fn matmul_seconds() -> anyhow::Result<f64> {
    let a = Tensor::ones((1024, 1024), DType::F32, &Device::Cpu)?;
    let b = Tensor::ones((1024, 1024), DType::F32, &Device::Cpu)?;
    a.matmul(&b)?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        a.matmul(&b)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn unet_step_seconds(steps: usize) -> anyhow::Result<f64> {
    let device = Device::Cpu;
    let vb = VarBuilder::zeros(DType::F32, &device);
    let unet = UNet::new(vb, 4, 4, &sd15_unet(), None)?;
    let latents = Tensor::randn(0f32, 1., (2, 4, 32, 32), &device)?;
    let context = Tensor::randn(0f32, 1., (2, 77, 768), &device)?;
    unet.forward(&latents, 999., &context)?;
    let mut times = Vec::new();
    for _ in 0..steps.max(1) {
        let t = Instant::now();
        unet.forward(&latents, 999., &context)?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// Milliseconds of the tiled attention and of the untiled form (score tensor, softmax, value
/// product, as candle's `CrossAttention` computes it), best of three, for `[2, n, heads·d]`
/// queries over `m` keys.
fn attention_ms(n: usize, m: usize, heads: usize, d: usize) -> anyhow::Result<(f64, f64)> {
    let q = Tensor::randn(0f32, 1., (2, n, heads * d), &Device::Cpu)?;
    let k = Tensor::randn(0f32, 1., (2, m, heads * d), &Device::Cpu)?;
    let v = Tensor::randn(0f32, 1., (2, m, heads * d), &Device::Cpu)?;
    let scale = 1.0 / (d as f64).sqrt();
    let best = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> anyhow::Result<f64> {
        f()?;
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            f()?;
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(best)
    };
    Ok((
        best(&|| attend(&q, &k, &v, heads, scale))?,
        best(&|| attend_unfused(&q, &k, &v, heads, scale))?,
    ))
}

fn tiny_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("SDFARM_TINY_SD") {
        return Some(PathBuf::from(dir));
    }
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    [
        here.join("../../shared/reference/tiny-sd/diffusers"),
        here.join("../shared/reference/tiny-sd/diffusers"),
    ]
    .into_iter()
    .find(|d| d.join("model_index.json").exists())
}

/// One 64×64 render: prompt encoding, 10 Euler steps with CFG, VAE decode, RGB8.
fn tiny_render(pipeline: &Pipeline) -> anyhow::Result<f64> {
    let t = Instant::now();
    let cond = pipeline.encode_prompt("a photo of a cat", 0)?;
    let uncond = pipeline.encode_prompt("", 0)?;
    let shape = pipeline.latent_shape(64, 64)?;
    let noise = Tensor::randn(0f32, 1., shape.to_vec(), pipeline.device())?;
    let settings = SampleSettings::new(Sampler::Euler, 10, 7.5);
    let mut no_noise = || -> Result<Tensor, EngineError> {
        Err(EngineError::Candle(candle_core::Error::Msg(
            "Euler draws no noise".into(),
        )))
    };
    let latents = pipeline.sample(
        &settings,
        &cond,
        &uncond,
        &noise,
        &mut no_noise,
        &mut |_| true,
    )?;
    let (_, _, rgb) = decoded_to_rgb8(&pipeline.decode(&latents)?)?;
    anyhow::ensure!(rgb.len() == 64 * 64 * 3, "decoded {} bytes", rgb.len());
    Ok(t.elapsed().as_secs_f64())
}

/// The torch figures (`unet_step_s`, `tiny_pipeline_s`) or why there are none.
fn torch_baseline(tiny: Option<&PathBuf>) -> Result<(f64, f64), String> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/torch_baseline.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script);
    if let Some(dir) = tiny {
        cmd.arg("--tiny").arg(dir);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    match (value("unet_step_s"), value("tiny_pipeline_s")) {
        (Some(unet), Some(tiny)) => Ok((unet, tiny)),
        _ => Err(text.trim().to_string() + String::from_utf8_lossy(&out.stderr).trim()),
    }
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("engine: built; measure with `cargo bench -p sdfarm-worker --bench engine`");
        return Ok(());
    }
    let steps = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(2);
    let matmul = matmul_seconds()?;
    println!(
        "engine: 1024³ f32 matmul {:.1} ms ({:.1} GFLOP/s) on this machine, this run",
        matmul * 1e3,
        2.0 * 1024f64.powi(3) / matmul / 1e9
    );

    // The UNet's largest attentions: SD 1.5's first level (1024 tokens, 8 heads of 40; self
    // and cross) and the tiny model's (1024 tokens, 8 heads of 4).
    for (what, n, m, heads, d) in [
        ("SD 1.5 self ", 1024, 1024, 8, 40),
        ("SD 1.5 cross", 1024, 77, 8, 40),
        ("tiny self   ", 1024, 1024, 8, 4),
    ] {
        let (fused, unfused) = attention_ms(n, m, heads, d)?;
        println!(
            "  attention {what} [2, {n}, {heads}×{d}] × {m} keys: tiled {fused:.1} ms, untiled {unfused:.1} ms ({:.1}x)",
            unfused / fused
        );
    }

    let unet = unet_step_seconds(steps)?;
    println!(
        "  SD 1.5 UNet, 32×32 latent, batch 2: {unet:.2} s/step (median of {steps}) = {:.0} matmuls",
        unet / matmul
    );

    let tiny = tiny_dir();
    let pipeline_s = match &tiny {
        Some(dir) => {
            let t = Instant::now();
            let pipeline = Pipeline::load(dir)?;
            let load = t.elapsed().as_secs_f64();
            tiny_render(&pipeline)?;
            let render = median(vec![tiny_render(&pipeline)?, tiny_render(&pipeline)?]);
            println!(
                "  tiny-sd 64×64, Euler 10 steps, CFG: {render:.2} s/image (load {load:.2} s) = {:.0} matmuls",
                render / matmul
            );
            Some(render)
        }
        None => {
            println!("  tiny-sd: skipped, reference folder not found (set SDFARM_TINY_SD)");
            None
        }
    };

    match torch_baseline(tiny.as_ref()) {
        Ok((torch_unet, torch_tiny)) => {
            println!(
                "  torch: UNet {torch_unet:.2} s/step, candle/torch {:.2}",
                unet / torch_unet
            );
            if let Some(ours) = pipeline_s {
                println!(
                    "  torch: tiny pipeline {torch_tiny:.2} s/image, candle/torch {:.2}",
                    ours / torch_tiny
                );
            }
        }
        Err(why) => println!("  torch baseline not run: {why}"),
    }
    Ok(())
}
