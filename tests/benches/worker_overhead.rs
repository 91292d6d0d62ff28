//! Worker overhead between tasks: the time from one task's completion reaching the
//! coordinator to the next task's first sampler step being reported, with the real worker
//! loop (`sdfarm_worker::run`) against an in-process coordinator on Postgres, the model
//! already cached.
//!
//! `cargo bench -p sdfarm-e2e --bench worker_overhead [-- TASKS]` (default 20).
//!
//! The worker loop has no seam for a fake engine, so the gap is read from the coordinator's
//! own event stream (a completion publishes `JobChanged(None)`, the first step of a task a
//! `Progress` with step 1 — the worker reports step 1 at once) and the engine's share of it
//! is measured in the same process first: the same render through `Engine::render`, timed
//! from the call to its first step callback. Overhead = median gap − median engine time to
//! first step; it covers the complete reply, the lease round trip and claim, the spawn of the
//! render, and the progress report.
//!
//! Built by `cargo test` (the target has `test = true`) but only measures under `cargo bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sdfarm_coordinator::events::Event;
use sdfarm_coordinator::store::open_store;
use sdfarm_coordinator::{Coordinator, CoordinatorConfig, SystemClock};
use sdfarm_e2e::TestDb;
use sdfarm_worker::engine::Engine;
use sdfarm_worker::models::ModelResolver;

fn sweep(tasks: usize) -> String {
    format!(
        "model = \"builtin:tiny-sd\"\nprompt = \"a lighthouse\"\nseed = 1\nsteps = 2\n\
         sampler_name = \"Euler\"\nwidth = 32\nheight = 32\nn_iter = {tasks}\n"
    )
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "worker_overhead: built; measure with `cargo bench -p sdfarm-e2e --bench worker_overhead`"
        );
        return Ok(());
    }
    let tasks = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(20)
        .max(3);
    let db = TestDb::create().await;
    let out = tempfile::tempdir()?;
    let cache = tempfile::tempdir()?;
    let store = open_store(&db.url).await?;
    let config = CoordinatorConfig {
        store_url: format!("file://{}", out.path().display()),
        ..CoordinatorConfig::default()
    };
    let coordinator = Arc::new(Coordinator::new(store, config, Arc::new(SystemClock)));
    let job = coordinator
        .submit(&sweep(tasks), "toml", "overhead")
        .await?;

    // Baseline: the engine alone on the job's own parameters, model cached after the first.
    let params = coordinator.store().list_tasks(&job.id).await?[0]
        .params
        .clone();
    let engine_cache = cache.path().to_path_buf();
    let to_first_step = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<f64>> {
        let engine = Engine::new(ModelResolver::new(engine_cache));
        let mut times = Vec::new();
        for _ in 0..tasks.min(10) + 1 {
            let started = Instant::now();
            let mut first = None;
            engine.render(&params, &mut |_, _| {
                first.get_or_insert(started.elapsed());
                true
            })?;
            times.push(first.unwrap_or_default().as_secs_f64());
        }
        times.remove(0);
        Ok(times)
    })
    .await??;
    let engine_ms = median(to_first_step) * 1e3;

    let mut events = coordinator.events().subscribe();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sdfarm_coordinator::run(
        listener,
        None,
        coordinator.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(sdfarm_worker::run(
        sdfarm_worker::WorkerConfig {
            coordinator: addr,
            name: "bench".into(),
            cache_dir: cache.path().to_path_buf(),
            lease_wait: Duration::from_secs(5),
            store_url: None,
            pool: String::new(),
            labels: Default::default(),
            token: None,
            tls_ca: None,
            drain_timeout: Duration::from_secs(30),
        },
        async move {
            let _ = worker_stopped.await;
        },
    ));

    let mut last_complete: Option<Instant> = None;
    let mut gaps = Vec::new();
    let mut completed = 0;
    while completed < tasks {
        let event = tokio::time::timeout(Duration::from_secs(120), events.recv()).await??;
        let now = Instant::now();
        match event {
            Event::JobChanged(None) => {
                completed += 1;
                last_complete = Some(now);
            }
            Event::Progress(p) if p.step == 1 => {
                if let Some(done) = last_complete.take() {
                    gaps.push((now - done).as_secs_f64());
                }
            }
            _ => {}
        }
    }
    let _ = stop_worker.send(());
    worker.await??;
    let _ = stop.send(());
    server.await??;

    let job = coordinator.store().get_job(&job.id).await?;
    anyhow::ensure!(
        job.counts.completed == tasks as u64,
        "{} of {tasks} tasks completed",
        job.counts.completed
    );
    let gap_ms = median(gaps.clone()) * 1e3;
    println!(
        "worker_overhead: {tasks} tasks of tiny-sd 32×32, 2 Euler steps, one worker, model cached"
    );
    println!("  engine alone, call to first step : {engine_ms:7.2} ms (median)");
    println!(
        "  completion -> next first step    : {gap_ms:7.2} ms (median of {})",
        gaps.len()
    );
    println!(
        "  worker overhead                  : {:7.2} ms (target <= 5 ms: {})",
        gap_ms - engine_ms,
        if gap_ms - engine_ms <= 5.0 {
            "met"
        } else {
            "missed"
        }
    );
    Ok(())
}
