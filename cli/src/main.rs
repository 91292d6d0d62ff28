//! `sdfarm`: the one command people use to run sweeps, operate a farm and inspect images.

mod control;
mod dataset;
mod farm;
mod jobs;
mod local;
mod progress;
mod prompt;
mod rerender;
mod wildcards;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sdfarm",
    version,
    about = "Distributed batch renderer for Stable Diffusion"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "sdfarm_worker=debug".
    #[arg(long, global = true, env = "SDFARM_LOG", default_value = "warn")]
    log: String,
    /// Logs as JSON lines.
    #[arg(long, global = true, env = "SDFARM_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CoordinatorAddr {
    /// Coordinator gRPC address.
    #[arg(
        long = "coordinator",
        env = "SDFARM_COORDINATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub url: String,
    /// Bearer token for a coordinator that requires one (a client token for job commands,
    /// a worker token for `sdfarm worker`).
    #[arg(long = "token", env = "SDFARM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) the coordinator's TLS certificate is checked against, for an
    /// https:// address of a farm with its own CA; without it https:// uses the system roots.
    #[arg(long = "tls-ca", env = "SDFARM_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Render a sweep on this machine: embedded coordinator (SQLite), in-process worker, images in --out.
    Run(local::RunArgs),
    /// Show what a sweep expands to, without storing or rendering anything.
    Plan(local::PlanArgs),
    /// Read the generation parameters back from a PNG.
    Info(local::InfoArgs),
    /// Show how a prompt is read: attention weights, tokens per chunk, the editing schedule.
    Prompt(prompt::PromptArgs),
    /// Write the built-in tiny model (seeded random weights) as a diffusers folder.
    TinyModel {
        /// Folder to create.
        #[arg(long, env = "SDFARM_TINY_MODEL_OUT")]
        out: PathBuf,
    },
    /// Run a coordinator: stores jobs and leases tasks to workers.
    Coordinator(farm::CoordinatorArgs),
    /// Run a worker: leases tasks from a coordinator and renders them.
    Worker(farm::WorkerArgs),
    /// Ask a worker to drain (admin token): it finishes or releases its task and exits.
    Drain(farm::DrainArgs),
    /// Submit a sweep to a coordinator; prints the job id.
    Submit(jobs::SubmitArgs),
    /// Show a job's state and counts.
    Status(jobs::StatusArgs),
    /// Live progress bars for a job until it finishes.
    Watch(jobs::JobArgs),
    /// Wait for a job to finish; the exit code says whether it succeeded (0), failed (1) or was cancelled (3).
    Wait(jobs::JobArgs),
    /// Cancel a job: waiting tasks are dropped, rendering ones stop at their next step.
    Cancel(jobs::JobArgs),
    /// List recent jobs.
    Ls(jobs::LsArgs),
    /// Pause a job: its waiting images are not started until it is resumed; images being
    /// rendered finish.
    Pause(jobs::JobArgs),
    /// Resume a paused job.
    Resume(jobs::JobArgs),
    /// Put a job's failed (discarded) and cancelled images back in the queue with fresh
    /// attempts; the reasons of the earlier attempts are kept.
    Retry(jobs::JobArgs),
    /// Write a job's manifest (manifest.jsonl and manifest.parquet beside its images) again
    /// from the coordinator's store, and say where it is (or print it with --print).
    Manifest(dataset::ManifestArgs),
    /// Export a job's images as a Hugging Face imagefolder, WebDataset shards or JSON lines.
    Export(dataset::ExportArgs),
    /// Render an image's parameters again and say whether the result is byte-identical
    /// (exit 0) or where it first differs (exit 1).
    Rerender(rerender::RerenderArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log, cli.log_json);
    let result = match cli.command {
        Command::Run(args) => local::run(args).await,
        Command::Plan(args) => local::plan(args).await,
        Command::Info(args) => local::info(args),
        Command::Prompt(args) => prompt::prompt(args),
        Command::TinyModel { out } => local::tiny_model(&out),
        Command::Coordinator(args) => farm::coordinator(args).await,
        Command::Worker(args) => farm::worker(args).await,
        Command::Drain(args) => farm::drain(args).await,
        Command::Submit(args) => jobs::submit(args).await,
        Command::Status(args) => jobs::status(args).await,
        Command::Watch(args) => jobs::watch(args).await,
        Command::Wait(args) => jobs::wait(args).await,
        Command::Cancel(args) => control::cancel(args).await,
        Command::Ls(args) => jobs::ls(args).await,
        Command::Pause(args) => control::pause(args).await,
        Command::Resume(args) => control::resume(args).await,
        Command::Retry(args) => control::retry(args).await,
        Command::Manifest(args) => dataset::manifest(args).await,
        Command::Export(args) => dataset::export(args).await,
        Command::Rerender(args) => rerender::rerender(args).await,
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// The model cache used when none is given: `$XDG_CACHE_HOME/sdfarm` or `~/.cache/sdfarm`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("sdfarm");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache").join("sdfarm");
    }
    PathBuf::from(".sdfarm-cache")
}
