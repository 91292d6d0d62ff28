//! `sdfarm rerender IMAGE.png`: renders the exact parameters of an image's infotext again,
//! on an embedded farm or on a coordinator, and says whether the new PNG is byte-identical.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sdfarm_coordinator::store::{
    open_store, NewJob, NewTask, Store, TaskState, ANONYMOUS_OWNER, DEFAULT_POOL,
};
use sdfarm_coordinator::{expand, Coordinator, CoordinatorConfig, SystemClock};
use sdfarm_proto::v1 as pb;
use sdfarm_proto::RenderParams;
use sdfarm_worker::models::{ModelResolver, BUILTIN_TINY};
use sdfarm_worker::output::{decode_png_rgb, parse_infotext, read_png_parameters};
use sdfarm_worker::storage::OutputStore;
use serde_json::{json, Value};

use crate::{jobs, CoordinatorAddr};

/// How often the embedded farm's job is looked at while it renders.
const POLL: Duration = Duration::from_millis(100);

#[derive(clap::Args, Debug)]
pub struct RerenderArgs {
    /// PNG written by sdfarm (its `parameters` text is rendered again).
    pub image: PathBuf,
    /// Model to render with instead of the infotext's `Model` and `Model hash`.
    #[arg(long, env = "SDFARM_MODEL")]
    pub model: Option<String>,
    /// Render on this coordinator instead of an embedded farm.
    #[arg(long = "coordinator", env = "SDFARM_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Bearer token for the coordinator.
    #[arg(long = "token", env = "SDFARM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With --coordinator: the object store its workers write to (default: the one the
    /// coordinator names).
    #[arg(long, env = "SDFARM_STORE")]
    pub store: Option<String>,
    /// Model cache folder of the embedded worker.
    #[arg(long, env = "SDFARM_CACHE")]
    pub cache: Option<PathBuf>,
    /// Keep the new PNG here.
    #[arg(long, env = "SDFARM_RERENDER_OUT")]
    pub out: Option<PathBuf>,
}

/// Exit codes: 0 byte-identical, 1 different (the first difference is printed), 2 error.
pub async fn rerender(args: RerenderArgs) -> anyhow::Result<ExitCode> {
    let original =
        std::fs::read(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    let text = read_png_parameters(&original)
        .with_context(|| format!("reading PNG {}", args.image.display()))?
        .ok_or_else(|| {
            anyhow::anyhow!("{} has no `parameters` text chunk", args.image.display())
        })?;
    let parsed = parse_infotext(&text);
    let mut params = parsed.to_render_params();
    let cache = args.cache.clone().unwrap_or_else(crate::default_cache_dir);
    params.model = match &args.model {
        Some(model) => model.clone(),
        None => {
            model_reference(
                parsed.get_str("Model").unwrap_or_default(),
                parsed.get_str("Model hash"),
                &cache,
            )
            .await?
        }
    };
    if params.model.is_empty() {
        anyhow::bail!(
            "{}: the infotext names no Model; give one with --model",
            args.image.display()
        );
    }
    eprintln!("rendering seed {} with model {}", params.seed, params.model);
    let rendered = match &args.coordinator {
        Some(url) => on_coordinator(&args, url, &params).await?,
        None => embedded(&cache, params).await?,
    };
    if let Some(out) = &args.out {
        std::fs::write(out, &rendered).with_context(|| format!("writing {}", out.display()))?;
    }
    match first_difference(&original, &rendered) {
        None => {
            println!(
                "identical: {} reproduces byte for byte ({} bytes)",
                args.image.display(),
                original.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(difference) => {
            println!("different: {difference}");
            Ok(ExitCode::from(1))
        }
    }
}

/// The model the infotext names, as a reference the worker resolves: the built-in tiny model
/// when name and hash are its own, else A1111's title form `name [hash]` (a checkpoint name in
/// the worker's model folder, checked against the hash).
async fn model_reference(name: &str, hash: Option<&str>, cache: &Path) -> anyhow::Result<String> {
    if name.is_empty() {
        return Ok(String::new());
    }
    let cache = cache.to_path_buf();
    let tiny = tokio::task::spawn_blocking(move || ModelResolver::new(cache).resolve(BUILTIN_TINY))
        .await?
        .context("preparing the built-in tiny model")?;
    if name == tiny.name && hash.is_none_or(|h| h.eq_ignore_ascii_case(&tiny.hash)) {
        return Ok(BUILTIN_TINY.to_string());
    }
    Ok(match hash {
        Some(hash) if !hash.is_empty() => format!("{name} [{hash}]"),
        _ => name.to_string(),
    })
}

/// Renders on an embedded farm (SQLite, a local folder, an in-process worker) in a temporary
/// folder. The task goes into the store with the parameters exactly as read.
async fn embedded(cache: &Path, params: RenderParams) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let database_url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let store = open_store(&database_url).await?;
    let config = CoordinatorConfig {
        store_url: format!("file://{}", out.display()),
        ..CoordinatorConfig::default()
    };
    let coordinator = Arc::new(Coordinator::new(
        store.clone(),
        config,
        Arc::new(SystemClock),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let (stop_coord, coord_stopped) = tokio::sync::oneshot::channel::<()>();
    let coord_task = tokio::spawn(sdfarm_coordinator::run(
        listener,
        None,
        coordinator,
        async {
            let _ = coord_stopped.await;
        },
    ));
    let (stop_worker, worker_stopped) = tokio::sync::oneshot::channel::<()>();
    let worker_task = tokio::spawn(sdfarm_worker::run(
        sdfarm_worker::WorkerConfig {
            coordinator: addr,
            name: "rerender".into(),
            cache_dir: cache.to_path_buf(),
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

    let result = render_one(&*store, &out, params).await;
    let _ = stop_worker.send(());
    if let Ok(Err(err)) = worker_task.await {
        eprintln!("worker: {err}");
    }
    let _ = stop_coord.send(());
    let _ = coord_task.await;
    result
}

async fn render_one(
    store: &dyn Store,
    out: &Path,
    params: RenderParams,
) -> anyhow::Result<Vec<u8>> {
    let id = uuid::Uuid::new_v4().to_string();
    let key = expand::output_key(&id, 0, params.seed);
    let job = NewJob {
        id: id.clone(),
        name: "rerender".into(),
        sweep: String::new(),
        output_prefix: id.clone(),
        max_attempts: 1,
        priority: 0,
        pool: DEFAULT_POOL.into(),
        owner: ANONYMOUS_OWNER.into(),
    };
    let task = NewTask {
        image_index: 0,
        params,
        output_key: key.clone(),
        cell_key: None,
    };
    store.create_job(&job, &[task], now_ms()).await?;
    loop {
        tokio::time::sleep(POLL).await;
        if store.get_job(&id).await?.finished_at.is_some() {
            break;
        }
    }
    let task = store
        .list_tasks(&id)
        .await?
        .pop()
        .context("the job lost its task")?;
    if task.state != TaskState::Completed {
        anyhow::bail!("the render failed: {}", task.errors.join("; "));
    }
    let path = out.join(&key);
    std::fs::read(&path).with_context(|| format!("reading the new image {}", path.display()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Submits the parameters as a one-image sweep, waits for it, and reads the image back.
async fn on_coordinator(
    args: &RerenderArgs,
    url: &str,
    params: &RenderParams,
) -> anyhow::Result<Vec<u8>> {
    let mut client = jobs::connect(&CoordinatorAddr {
        url: url.to_string(),
        token: args.token.clone(),
        tls_ca: None,
    })
    .await?;
    let job = client
        .submit(pb::SubmitRequest {
            sweep: sweep_json(params).to_string(),
            format: "json".into(),
            name: "rerender".into(),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .context("submitting the parameters")?
        .into_inner()
        .job
        .unwrap_or_default();
    let finished = crate::progress::follow(&mut client, &job.id, false).await?;
    let task = client
        .list_tasks(pb::ListTasksRequest {
            job_id: finished.id.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .tasks
        .pop()
        .context("the job has no task")?;
    if task.state != pb::TaskState::Completed as i32 {
        anyhow::bail!("the render failed: {}", task.errors.join("; "));
    }
    let store_url = match &args.store {
        Some(url) => url.clone(),
        None => {
            client
                .write_manifest(pb::WriteManifestRequest {
                    job_id: finished.id.clone(),
                    only_if_missing: true,
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner()
                .store_url
        }
    };
    let store = OutputStore::open(&store_url)?;
    store
        .get(&task.output_key)
        .await
        .with_context(|| format!("reading {} from {store_url}", task.output_key))
}

/// The parameters as a sweep (A1111 txt2img API names); unset optional fields are left out.
fn sweep_json(p: &RenderParams) -> Value {
    let mut sweep = json!({
        "prompt": p.prompt,
        "negative_prompt": p.negative_prompt,
        "seed": p.seed,
        "steps": p.steps,
        "sampler_name": p.sampler_name,
        "scheduler": p.scheduler,
        "cfg_scale": p.cfg_scale,
        "width": p.width,
        "height": p.height,
        "model": p.model,
        "rng": p.rng,
        "clip_skip": p.clip_skip,
        "eta": p.eta,
        "max_attempts": 1,
    });
    if p.subseed_strength != 0.0 {
        sweep["subseed"] = json!(p.subseed);
        sweep["subseed_strength"] = json!(p.subseed_strength);
    }
    if !p.vae.is_empty() {
        sweep["sd_vae"] = json!(p.vae);
    }
    if p.enable_hr {
        sweep["enable_hr"] = json!(true);
        sweep["hr_scale"] = json!(p.hr_scale);
        sweep["hr_resize_x"] = json!(p.hr_resize_x);
        sweep["hr_resize_y"] = json!(p.hr_resize_y);
        sweep["hr_second_pass_steps"] = json!(p.hr_second_pass_steps);
        sweep["hr_upscaler"] = json!(p.hr_upscaler);
        sweep["denoising_strength"] = json!(p.denoising_strength);
        for (key, value) in [
            ("hr_sampler_name", &p.hr_sampler_name),
            ("hr_scheduler", &p.hr_scheduler),
            ("hr_prompt", &p.hr_prompt),
            ("hr_negative_prompt", &p.hr_negative_prompt),
        ] {
            if !value.is_empty() {
                sweep[key] = json!(value);
            }
        }
    }
    sweep
}

/// The first way `new` differs from `old`: size, pixels, then metadata; `None` when the
/// bytes are identical.
fn first_difference(old: &[u8], new: &[u8]) -> Option<String> {
    if old == new {
        return None;
    }
    let (a, b) = match (decode_png_rgb(old), decode_png_rgb(new)) {
        (Ok(a), Ok(b)) => (a, b),
        (_, Err(e)) => return Some(format!("the new image is not a readable PNG: {e}")),
        (Err(e), _) => return Some(format!("the given image is not a readable PNG: {e}")),
    };
    let ((pa, wa, ha), (pb, wb, hb)) = (a, b);
    if (wa, ha) != (wb, hb) {
        return Some(format!("size: {wa}x{ha} given, {wb}x{hb} rendered"));
    }
    if pa != pb {
        let differing = pa
            .chunks(3)
            .zip(pb.chunks(3))
            .filter(|(x, y)| x != y)
            .count();
        let first = pa
            .chunks(3)
            .zip(pb.chunks(3))
            .position(|(x, y)| x != y)
            .unwrap_or(0);
        let (x, y) = (first as u32 % wa, first as u32 / wa);
        return Some(format!(
            "pixels: {differing} of {} differ; the first at ({x}, {y}): {:?} given, {:?} rendered",
            wa * ha,
            &pa[first * 3..first * 3 + 3],
            &pb[first * 3..first * 3 + 3],
        ));
    }
    let text = |png: &[u8]| read_png_parameters(png).ok().flatten().unwrap_or_default();
    let (ta, tb) = (text(old), text(new));
    if ta != tb {
        let at = ta
            .chars()
            .zip(tb.chars())
            .position(|(x, y)| x != y)
            .unwrap_or(ta.chars().count().min(tb.chars().count()));
        let around = |t: &str| {
            t.chars()
                .skip(at.saturating_sub(20))
                .take(50)
                .collect::<String>()
        };
        return Some(format!(
            "metadata: the parameters differ at character {at}: {:?} given, {:?} rendered",
            around(&ta),
            around(&tb)
        ));
    }
    Some(format!(
        "encoding: same pixels and parameters, but the files differ ({} bytes given, {} rendered)",
        old.len(),
        new.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32, fill: u8, text: &str) -> Vec<u8> {
        sdfarm_worker::output::encode_png(&vec![fill; (w * h * 3) as usize], w, h, text).unwrap()
    }

    #[test]
    fn differences_are_reported_size_then_pixels_then_metadata() {
        let a = png(4, 4, 10, "a cat\nSteps: 2, Seed: 1");
        assert_eq!(first_difference(&a, &a), None);
        let bigger = png(8, 4, 10, "a cat\nSteps: 2, Seed: 1");
        assert!(first_difference(&a, &bigger)
            .unwrap()
            .starts_with("size: 4x4 given, 8x4"));
        let darker = png(4, 4, 9, "a cat\nSteps: 2, Seed: 1");
        let d = first_difference(&a, &darker).unwrap();
        assert!(
            d.starts_with("pixels: 16 of 16 differ; the first at (0, 0)"),
            "{d}"
        );
        let other_text = png(4, 4, 10, "a cat\nSteps: 3, Seed: 1");
        let d = first_difference(&a, &other_text).unwrap();
        assert!(
            d.starts_with("metadata: the parameters differ at character 13"),
            "{d}"
        );
    }
}
