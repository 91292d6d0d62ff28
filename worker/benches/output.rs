//! Output path speed: what a worker does with every rendered image — A1111 infotext, PNG
//! encode with the text chunk, sha256, and a put to a local `file://` store — for 512×512
//! images, on one thread and then on every core.
//!
//! `cargo bench -p sdfarm-worker --bench output [-- IMAGES]` (IMAGES per thread, default 24).
//!
//! The image is a smooth gradient with mild per-pixel noise, compressing about as a rendered
//! photo does (pure noise would not compress and a flat image would compress for free).
//! The baseline in the same run is the single-thread rate; the multi-thread figure is
//! printed per core and as a fraction of it, so contention shows however busy the machine is.
//!
//! Built by `cargo test` (the target has `test = true`) but only measures under `cargo bench`.

use std::time::{Duration, Instant};

use sdfarm_proto::RenderParams;
use sdfarm_worker::output::{encode_png, infotext, sha256_hex};
use sdfarm_worker::storage::OutputStore;

const SIDE: u32 = 512;

fn image() -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let mut rgb = Vec::with_capacity((SIDE * SIDE * 3) as usize);
    for y in 0..SIDE {
        for x in 0..SIDE {
            for c in 0..3u32 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let base = (x * (c + 1) + y * (3 - c)) / 4;
                rgb.push((base + (state % 9)).min(255) as u8);
            }
        }
    }
    rgb
}

fn params() -> RenderParams {
    RenderParams {
        prompt: "a lighthouse at dusk, (oil painting:1.2), dramatic clouds".into(),
        negative_prompt: "blurry, lowres".into(),
        seed: 1234,
        steps: 20,
        sampler_name: "DPM++ 2M".into(),
        scheduler: "Karras".into(),
        cfg_scale: 7.0,
        width: SIDE,
        height: SIDE,
        model: "builtin:tiny-sd".into(),
        ..Default::default()
    }
}

/// Time spent in each stage over `images` images on this thread.
#[derive(Default, Clone, Copy)]
struct Stages {
    infotext: Duration,
    encode: Duration,
    sha: Duration,
    put: Duration,
    bytes: usize,
}

fn run_thread(thread: usize, images: usize, store_url: &str) -> anyhow::Result<Stages> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let store = OutputStore::open(store_url)?;
    let rgb = image();
    let mut params = params();
    let mut s = Stages::default();
    for i in 0..images {
        params.seed = i as i64;
        let t = Instant::now();
        let text = infotext(&params, "tiny-sd", "0123456789");
        s.infotext += t.elapsed();
        let t = Instant::now();
        let png = encode_png(&rgb, SIDE, SIDE, &text)?;
        s.encode += t.elapsed();
        let t = Instant::now();
        std::hint::black_box(sha256_hex(&png));
        s.sha += t.elapsed();
        s.bytes = png.len();
        let t = Instant::now();
        runtime.block_on(store.put(&format!("bench/{thread}/{i}.png"), png))?;
        s.put += t.elapsed();
    }
    Ok(s)
}

/// Images/s over `threads` threads, with the first thread's stage times.
fn run(threads: usize, images: usize, store_url: &str) -> anyhow::Result<(f64, Stages)> {
    let started = Instant::now();
    let stages = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || run_thread(t, images, store_url)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("bench thread panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let rate = (threads * images) as f64 / started.elapsed().as_secs_f64();
    Ok((rate, stages[0]))
}

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("output: built; measure with `cargo bench -p sdfarm-worker --bench output`");
        return Ok(());
    }
    let images = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(24);
    let dir = tempfile::tempdir()?;
    let url = format!("file://{}", dir.path().display());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    run_thread(0, 2, &url)?;
    let (single, s) = run(1, images, &url)?;
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / images as f64;
    println!(
        "output: {SIDE}×{SIDE} PNG ({} KiB with infotext), {images} images per thread",
        s.bytes / 1024
    );
    println!(
        "  1 thread : {single:6.1} images/s  (infotext {:.3} ms, encode {:.1} ms, sha256 {:.1} ms, put {:.1} ms per image)",
        ms(s.infotext),
        ms(s.encode),
        ms(s.sha),
        ms(s.put)
    );
    let (all, _) = run(cores, images, &url)?;
    println!(
        "  {cores} threads: {all:6.1} images/s = {:.1} images/s per core, {:.2} of the single-thread rate per core",
        all / cores as f64,
        all / cores as f64 / single
    );
    Ok(())
}
