//! Commands that need no running farm: `run` (the embedded farm), `plan`, `info`, and
//! writing the built-in tiny model.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sdfarm_coordinator::spec::{self, SweepFormat};
use sdfarm_coordinator::store::open_store;
use sdfarm_coordinator::{expand, Coordinator, CoordinatorConfig, SystemClock};

use crate::{jobs, progress, CoordinatorAddr};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Sweep file (.toml or .json).
    pub sweep: PathBuf,
    /// Folder the images are written to (one sub-folder per job).
    #[arg(long, env = "SDFARM_OUT")]
    pub out: PathBuf,
    /// Model cache folder.
    #[arg(long, env = "SDFARM_CACHE")]
    pub cache: Option<PathBuf>,
    /// Job store (default: a SQLite file in <out>/.sdfarm/).
    #[arg(long, env = "SDFARM_DATABASE_URL")]
    pub database_url: Option<String>,
}

/// The embedded farm: the same coordinator and worker as a distributed farm, in one
/// process, talking gRPC over loopback, with SQLite and a local-folder object store.
pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let request = jobs::submit_request(&args.sweep, None).await?;
    // Refuse a bad sweep before anything starts.
    parse_sweep_file(&args.sweep, &request.sweep)?;

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating output folder {}", args.out.display()))?;
    let out = std::fs::canonicalize(&args.out)?;
    let state_dir = out.join(".sdfarm");
    std::fs::create_dir_all(&state_dir)?;
    let database_url = args
        .database_url
        .unwrap_or_else(|| format!("sqlite://{}", state_dir.join("jobs.db").display()));
    let store = open_store(&database_url)
        .await
        .with_context(|| format!("opening job store {database_url}"))?;
    let config = CoordinatorConfig {
        store_url: format!("file://{}", out.display()),
        ..CoordinatorConfig::default()
    };
    let coordinator = Arc::new(Coordinator::new(store, config, Arc::new(SystemClock)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);

    let (stop_coord, coord_stopped) = tokio::sync::oneshot::channel::<()>();
    let coord_task = tokio::spawn(sdfarm_coordinator::run(
        listener,
        None,
        coordinator.clone(),
        async {
            let _ = coord_stopped.await;
        },
    ));
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker_task = tokio::spawn(sdfarm_worker::run(
        sdfarm_worker::WorkerConfig {
            coordinator: addr.clone(),
            name: "local".into(),
            cache_dir: args.cache.unwrap_or_else(crate::default_cache_dir),
            lease_wait: Duration::from_secs(5),
            store_url: None,
            pool: String::new(),
            labels: Default::default(),
            token: None,
            tls_ca: None,
            drain_timeout: Duration::from_secs(30),
            batch_size: 1,
        },
        async {
            let _ = worker_stopped.await;
        },
    ));

    let mut client = jobs::connect(&CoordinatorAddr {
        url: addr,
        token: None,
        tls_ca: None,
    })
    .await?;
    let dataset = crate::wildcards::before_submit(&mut client, &args.sweep, &request.sweep).await?;
    let job = client
        .submit(request)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .job
        .unwrap_or_default();
    eprintln!(
        "job {} ({} images)",
        job.id,
        job.counts.clone().unwrap_or_default().total
    );
    if let Some(d) = dataset {
        eprintln!("{}", d.report(&job));
    }
    let finished = tokio::select! {
        r = progress::follow(&mut client, &job.id, true) => r?,
        _ = crate::shutdown_signal() => {
            eprintln!("interrupted: job {} stays in {} and can be resumed", job.id, database_url);
            return Ok(ExitCode::from(130));
        }
    };

    if finished.state != sdfarm_proto::v1::JobState::Succeeded as i32 {
        jobs::print_task_errors(&mut client, &finished.id).await;
    }
    // The coordinator composes grids as the last image lands; make sure they are written
    // before the embedded farm stops (a no-op when they already are).
    if let Err(err) = coordinator.compose_grids(&finished.id).await {
        eprintln!("grids: {err}");
    }
    // Likewise the manifest: written from the store once every task is final.
    if let Err(err) = coordinator.write_manifest(&finished.id).await {
        eprintln!("manifest: {err}");
    }
    let _ = stop_worker.send(());
    if let Ok(Err(err)) = worker_task.await {
        eprintln!("worker: {err}");
    }
    let _ = stop_coord.send(());
    let _ = coord_task.await;

    let folder = out.join(&finished.output_prefix);
    let c = finished.counts.clone().unwrap_or_default();
    println!(
        "job {} {}: {} of {} images in {}",
        finished.id,
        jobs::state_name(finished.state),
        c.completed,
        c.total,
        folder.display()
    );
    Ok(jobs::exit_code_for(&finished))
}

fn parse_sweep_file(path: &Path, text: &str) -> anyhow::Result<spec::SweepSpec> {
    spec::parse_sweep(text, SweepFormat::from_path(path))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Sweep file (.toml or .json).
    pub sweep: PathBuf,
    /// One JSON object per cell (A1111 txt2img API field names), then a summary object.
    #[arg(long, env = "SDFARM_JSON")]
    pub json: bool,
}

pub async fn plan(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.sweep)
        .with_context(|| format!("reading sweep file {}", args.sweep.display()))?;
    let text = crate::wildcards::bundle(&args.sweep, &text).await?;
    let spec = parse_sweep_file(&args.sweep, &text)?.resolved();
    let seed = expand::resolve_seed(spec.base.seed);
    if args.json {
        for line in expand::plan_json_lines(&spec, seed) {
            println!("{line}");
        }
    } else {
        let mut images = 0u64;
        for img in expand::expand(&spec, seed) {
            images += 1;
            let p = &img.params;
            println!(
                "image {:>5}  cell {}  seed {}  {}x{}  {} steps  {}  cfg {}  {:?}",
                img.image_index,
                img.cell_index,
                p.seed,
                p.width,
                p.height,
                p.steps,
                p.sampler_name,
                p.cfg_scale,
                p.prompt
            );
        }
        let summary = expand::plan_summary(&spec);
        println!(
            "{} cells, {images} images ({} per cell), {} checkpoint switches",
            summary.cells, summary.images_per_cell, summary.checkpoint_switches
        );
        for (model, n) in &summary.images_per_checkpoint {
            println!("  {n} images with checkpoint {model}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// PNG written by sdfarm or AUTOMATIC1111.
    pub image: PathBuf,
    /// Print the parsed parameters as one JSON object.
    #[arg(long, env = "SDFARM_JSON")]
    pub json: bool,
}

pub fn info(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let bytes =
        std::fs::read(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    let text = sdfarm_worker::output::read_png_parameters(&bytes)
        .with_context(|| format!("reading PNG {}", args.image.display()))?
        .ok_or_else(|| {
            anyhow::anyhow!("{} has no `parameters` text chunk", args.image.display())
        })?;
    let parsed = sdfarm_worker::output::parse_infotext(&text);
    if args.json {
        println!("{}", serde_json::to_string(&parsed.to_json())?);
    } else {
        println!("{text}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn tiny_model(out: &Path) -> anyhow::Result<ExitCode> {
    sdfarm_worker::models::write_tiny_model(out)
        .with_context(|| format!("writing the tiny model to {}", out.display()))?;
    println!("tiny model written to {}", out.display());
    Ok(ExitCode::SUCCESS)
}
