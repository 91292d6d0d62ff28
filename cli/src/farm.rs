//! `sdfarm coordinator` and `sdfarm worker`: the long-running farm processes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sdfarm_coordinator::store::{open_store, RetryPolicy};
use sdfarm_coordinator::{Coordinator, CoordinatorConfig, SystemClock};

#[derive(clap::Args, Debug)]
pub struct CoordinatorArgs {
    /// Job store: postgres://user@host/db, or sqlite://path/to/file.db.
    #[arg(
        long,
        env = "SDFARM_DATABASE_URL",
        default_value = "sqlite://sdfarm.db"
    )]
    pub database_url: String,
    /// gRPC listen address (workers and clients).
    #[arg(long, env = "SDFARM_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// HTTP listen address for /healthz and /readyz; empty to disable.
    #[arg(long, env = "SDFARM_HTTP", default_value = "127.0.0.1:7071")]
    pub http: String,
    /// Object store for images, announced to workers: file:///srv/out, s3://bucket/prefix, ...
    #[arg(long, env = "SDFARM_STORE")]
    pub store: String,
    /// Lease length; workers heartbeat every third of it.
    #[arg(long, env = "SDFARM_LEASE_SECONDS", default_value_t = 30.0)]
    pub lease_seconds: f64,
    /// How often expired leases are returned to the queue.
    #[arg(long, env = "SDFARM_RESCUE_SECONDS", default_value_t = 2.0)]
    pub rescue_seconds: f64,
    /// Base of the polynomial retry backoff.
    #[arg(long, env = "SDFARM_RETRY_BASE_SECONDS", default_value_t = 1.0)]
    pub retry_base_seconds: f64,
    /// Largest sweep accepted, in images.
    #[arg(long, env = "SDFARM_MAX_IMAGES", default_value_t = 10_000_000)]
    pub max_images: u64,
}

pub fn config_from(args: &CoordinatorArgs) -> anyhow::Result<CoordinatorConfig> {
    let secs = |name: &str, v: f64| -> anyhow::Result<Duration> {
        anyhow::ensure!(
            v.is_finite() && v > 0.0,
            "--{name} must be a positive number of seconds, got {v}"
        );
        Ok(Duration::from_secs_f64(v))
    };
    Ok(CoordinatorConfig {
        store_url: args.store.clone(),
        lease: secs("lease-seconds", args.lease_seconds)?,
        rescue_interval: secs("rescue-seconds", args.rescue_seconds)?,
        retry: RetryPolicy {
            base_ms: secs("retry-base-seconds", args.retry_base_seconds)?.as_millis() as i64,
            ..RetryPolicy::default()
        },
        max_images: args.max_images,
        ..CoordinatorConfig::default()
    })
}

pub async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<ExitCode> {
    let config = config_from(&args)?;
    let store = open_store(&args.database_url)
        .await
        .with_context(|| format!("opening job store {}", args.database_url))?;
    let grpc = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding gRPC address {}", args.listen))?;
    let http = if args.http.is_empty() {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(&args.http)
                .await
                .with_context(|| format!("binding HTTP address {}", args.http))?,
        )
    };
    eprintln!(
        "sdfarm coordinator: gRPC on {}, store {}",
        grpc.local_addr()?,
        args.store
    );
    let coordinator = Arc::new(Coordinator::new(store, config, Arc::new(SystemClock)));
    sdfarm_coordinator::run(grpc, http, coordinator, crate::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub coordinator: crate::CoordinatorAddr,
    /// Model cache folder (downloaded and built-in models).
    #[arg(long, env = "SDFARM_CACHE")]
    pub cache: Option<PathBuf>,
    /// Worker name shown in job records (default: host name).
    #[arg(long, env = "SDFARM_WORKER_NAME")]
    pub name: Option<String>,
    /// Object store URL to use instead of the one the coordinator announces.
    #[arg(long, env = "SDFARM_WORKER_STORE")]
    pub store: Option<String>,
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let name = args.name.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "worker".into())
    });
    let config = sdfarm_worker::WorkerConfig {
        coordinator: args.coordinator.url,
        name,
        cache_dir: args.cache.unwrap_or_else(crate::default_cache_dir),
        lease_wait: Duration::from_secs(20),
        store_url: args.store,
    };
    sdfarm_worker::run(config, crate::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
