//! Client commands against a running coordinator: submit, status, watch, wait, cancel, ls
//! (pause, resume and retry are in `control`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use sdfarm_proto::auth::Bearer;
use sdfarm_proto::v1::{self as pb, job_service_client::JobServiceClient};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::progress;
use crate::CoordinatorAddr;

/// A job client that sends the configured token with every call.
pub type JobClient = JobServiceClient<InterceptedService<Channel, Bearer>>;

pub async fn connect(addr: &CoordinatorAddr) -> anyhow::Result<JobClient> {
    let bearer = Bearer::new(addr.token.as_deref()).context("--token / SDFARM_TOKEN")?;
    let channel = sdfarm_proto::tls::endpoint(&addr.url, addr.tls_ca.as_deref())?
        .connect()
        .await
        .with_context(|| format!("connecting to coordinator {}", addr.url))?;
    Ok(JobServiceClient::with_interceptor(channel, bearer))
}

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// Sweep file (.toml or .json).
    pub sweep: PathBuf,
    #[command(flatten)]
    pub coordinator: CoordinatorAddr,
    /// Job name (default: the sweep's `name`, else the file name).
    #[arg(long, env = "SDFARM_JOB_NAME")]
    pub name: Option<String>,
    /// Owner of the job, whose jobs share the farm round robin with other owners' (default:
    /// $USER). A coordinator with tokens takes the token's name instead.
    #[arg(long, env = "SDFARM_OWNER")]
    pub owner: Option<String>,
}

/// Reads a sweep file and the request that submits it.
pub async fn submit_request(
    path: &PathBuf,
    name: Option<String>,
) -> anyhow::Result<pb::SubmitRequest> {
    let sweep = std::fs::read_to_string(path)
        .with_context(|| format!("reading sweep file {}", path.display()))?;
    let sweep = crate::wildcards::bundle(path, &sweep).await?;
    let format = match sdfarm_coordinator::spec::SweepFormat::from_path(path) {
        sdfarm_coordinator::spec::SweepFormat::Json => "json",
        sdfarm_coordinator::spec::SweepFormat::Toml => "toml",
    };
    let name = name.unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    Ok(pb::SubmitRequest {
        sweep,
        format: format.into(),
        name,
        ..Default::default()
    })
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let mut request = submit_request(&args.sweep, args.name).await?;
    request.owner = args
        .owner
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default();
    let mut client = connect(&args.coordinator).await?;
    let dataset = crate::wildcards::before_submit(&mut client, &args.sweep, &request.sweep).await?;
    let job = client
        .submit(request)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .with_context(|| format!("submitting {}", args.sweep.display()))?
        .into_inner()
        .job
        .unwrap_or_default();
    if let Some(d) = dataset {
        eprintln!("{}", d.report(&job));
    }
    println!("{}", job.id);
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct JobArgs {
    /// Job id (as printed by `sdfarm submit`).
    pub job: String,
    #[command(flatten)]
    pub coordinator: CoordinatorAddr,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// One JSON object per line: the job, then one line per task.
    #[arg(long, env = "SDFARM_JSON")]
    pub json: bool,
}

pub fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Running => "running",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
        pb::JobState::Paused => "paused",
        pb::JobState::Unspecified => "unknown",
    }
}

fn task_state_name(state: i32) -> &'static str {
    match pb::TaskState::try_from(state).unwrap_or(pb::TaskState::Unspecified) {
        pb::TaskState::Available => "available",
        pb::TaskState::Running => "running",
        pb::TaskState::Retryable => "retryable",
        pb::TaskState::Completed => "completed",
        pb::TaskState::Cancelled => "cancelled",
        pb::TaskState::Discarded => "discarded",
        pb::TaskState::Unspecified => "unknown",
    }
}

pub fn job_json(job: &pb::Job) -> serde_json::Value {
    let c = job.counts.clone().unwrap_or_default();
    serde_json::json!({
        "id": job.id,
        "name": job.name,
        "owner": job.owner,
        "state": state_name(job.state),
        "output_prefix": job.output_prefix,
        "created_at_ms": job.created_at_ms,
        "finished_at_ms": (job.finished_at_ms != 0).then_some(job.finished_at_ms),
        "counts": {
            "total": c.total, "available": c.available, "running": c.running,
            "retryable": c.retryable, "completed": c.completed,
            "cancelled": c.cancelled, "discarded": c.discarded,
        },
    })
}

pub fn rpc_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.job.coordinator).await?;
    let job = client
        .get_job(pb::GetJobRequest {
            job_id: args.job.job.clone(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let tasks = client
        .list_tasks(pb::ListTasksRequest {
            job_id: args.job.job.clone(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .tasks;
    if args.json {
        println!("{}", job_json(&job));
        for t in &tasks {
            let line = serde_json::json!({
                "task_id": t.id,
                "image_index": t.image_index,
                "state": task_state_name(t.state),
                "attempt": t.attempt,
                "seed": t.params.as_ref().map(|p| p.seed),
                "output_key": t.output_key,
                "sha256": (!t.sha256.is_empty()).then_some(&t.sha256),
                "errors": t.errors,
                "worker": (!t.worker.is_empty()).then_some(&t.worker),
            });
            println!("{line}");
        }
    } else {
        let c = job.counts.clone().unwrap_or_default();
        println!("job      {} ({})", job.id, job.name);
        println!("owner    {}", job.owner);
        println!("state    {}", state_name(job.state));
        println!(
            "images   {} completed, {} rendering, {} waiting, {} retrying, {} discarded, {} cancelled, of {}",
            c.completed, c.running, c.available, c.retryable, c.discarded, c.cancelled, c.total
        );
        println!("output   {}/", job.output_prefix);
        for t in tasks.iter().filter(|t| !t.errors.is_empty()) {
            println!(
                "task {} (image {}) {}: {}",
                t.id,
                t.image_index,
                task_state_name(t.state),
                t.errors.join(" | ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints every failed attempt's reason, so a failed job says why.
pub async fn print_task_errors(client: &mut JobClient, job_id: &str) {
    let tasks = match client
        .list_tasks(pb::ListTasksRequest {
            job_id: job_id.to_string(),
        })
        .await
    {
        Ok(r) => r.into_inner().tasks,
        Err(status) => {
            eprintln!("could not list the job's tasks: {}", status.message());
            return;
        }
    };
    for t in tasks.iter().filter(|t| !t.errors.is_empty()) {
        eprintln!(
            "image {} ({}): {}",
            t.image_index,
            task_state_name(t.state),
            t.errors.join(" | ")
        );
    }
}

pub fn exit_code_for(job: &pb::Job) -> ExitCode {
    match pb::JobState::try_from(job.state).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Succeeded => ExitCode::SUCCESS,
        pb::JobState::Cancelled => ExitCode::from(3),
        _ => ExitCode::from(1),
    }
}

pub async fn watch(args: JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.coordinator).await?;
    let job = progress::follow(&mut client, &args.job, true).await?;
    println!("job {} {}", job.id, state_name(job.state));
    Ok(exit_code_for(&job))
}

pub async fn wait(args: JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.coordinator).await?;
    let job = progress::follow(&mut client, &args.job, false).await?;
    println!("job {} {}", job.id, state_name(job.state));
    if job.state != pb::JobState::Succeeded as i32 {
        print_task_errors(&mut client, &job.id).await;
    }
    Ok(exit_code_for(&job))
}

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub coordinator: CoordinatorAddr,
    /// One JSON object per job and line.
    #[arg(long, env = "SDFARM_JSON")]
    pub json: bool,
    /// How many of the newest jobs to list.
    #[arg(long, env = "SDFARM_LS_LIMIT", default_value_t = 50)]
    pub limit: u32,
}

pub async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.coordinator).await?;
    let jobs = client
        .list_jobs(pb::ListJobsRequest { limit: args.limit })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .jobs;
    for job in &jobs {
        if args.json {
            println!("{}", job_json(job));
        } else {
            let c = job.counts.clone().unwrap_or_default();
            println!(
                "{}  {:<10} {:>6}/{:<6} {}",
                job.id,
                state_name(job.state),
                c.completed,
                c.total,
                job.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
