//! Batched rendering against rendering one at a time, on the built-in tiny model.
//!
//! `cargo bench --profile dev -p sdfarm-worker --bench batching [-- ROUNDS [SIZE]]`
//!
//! Four compatible tasks (different seeds and prompts; Euler a, 10 steps, CFG 7, SIZE×SIZE
//! pixels, default 64) are rendered one after the other and then as one batch
//! ([`Engine::render_batch`]), ROUNDS times (default 3) after a warm-up that loads the model.
//! Prints the median time per image of each and their ratio, and the UNet calls of each.
//! Dependencies (candle) are optimised in the dev profile, so `--profile dev` measures the
//! engine's arithmetic as a release build does.
//!
//! Built by `cargo test` (the target has `test = true`) but only measures under `cargo bench`.

use std::time::Instant;

use sdfarm_proto::RenderParams;
use sdfarm_worker::engine::{unet_calls_on_this_thread, Engine};
use sdfarm_worker::models::{ModelResolver, BUILTIN_TINY};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("batching benchmark: skipped (run it with cargo bench)");
        return;
    }
    let numbers: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = numbers.first().copied().unwrap_or(3).max(1) as usize;
    let size = numbers.get(1).copied().unwrap_or(64);
    let cache = tempfile::tempdir().expect("temporary cache folder");
    let engine = Engine::new(ModelResolver::new(cache.path()));
    let tasks: Vec<RenderParams> = [
        "a lighthouse at dusk",
        "a red barn in the fields",
        "a cat on a sofa",
        "mountains",
    ]
    .iter()
    .enumerate()
    .map(|(i, prompt)| RenderParams {
        prompt: prompt.to_string(),
        negative_prompt: "blurry".into(),
        seed: 1000 + i as i64,
        steps: 10,
        sampler_name: "Euler a".into(),
        cfg_scale: 7.0,
        width: size,
        height: size,
        model: BUILTIN_TINY.into(),
        ..Default::default()
    })
    .collect();
    let n = tasks.len() as f64;
    engine
        .render(&tasks[0], &mut |_, _| true)
        .expect("warm-up render");

    let (mut alone, mut batched) = (Vec::new(), Vec::new());
    let (mut alone_calls, mut batched_calls) = (0, 0);
    for _ in 0..rounds {
        let calls = unet_calls_on_this_thread();
        let started = Instant::now();
        for t in &tasks {
            engine.render(t, &mut |_, _| true).expect("render alone");
        }
        alone.push(started.elapsed().as_secs_f64() / n);
        alone_calls = unet_calls_on_this_thread() - calls;

        let calls = unet_calls_on_this_thread();
        let started = Instant::now();
        for r in engine.render_batch(&tasks, &mut |_, _| true) {
            r.expect("render batched");
        }
        batched.push(started.elapsed().as_secs_f64() / n);
        batched_calls = unet_calls_on_this_thread() - calls;
    }
    let (a, b) = (median(alone), median(batched));
    println!(
        "batching: tiny-sd {size}x{size}, Euler a 10 steps, CFG 7, 4 images, median of {rounds}"
    );
    println!(
        "  one at a time: {:8.1} ms/image ({alone_calls} UNet calls)",
        a * 1e3
    );
    println!(
        "  batch of 4:    {:8.1} ms/image ({batched_calls} UNet calls)",
        b * 1e3
    );
    println!("  batched / alone: {:.2}", b / a);
}
