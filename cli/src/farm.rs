//! `sdfarm coordinator` and `sdfarm worker`: the long-running farm processes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sdfarm_coordinator::store::{open_store, RetryPolicy};
use sdfarm_coordinator::{Coordinator, CoordinatorConfig, SystemClock};
use sdfarm_worker::engine::Engine;
use sdfarm_worker::models::ModelResolver;

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
    /// HTTP listen address for /healthz, /readyz, /metrics and /scaling; empty to disable.
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
    /// Largest sweep accepted, in cells (X/Y/Z combinations, prompt-matrix prompts).
    #[arg(long, env = "SDFARM_MAX_CELLS", default_value_t = 1_000_000)]
    pub max_cells: u64,
    /// Worker pool of sweeps that name no `pool`.
    #[arg(long, env = "SDFARM_DEFAULT_POOL", default_value = "default")]
    pub default_pool: String,
    /// Tasks one worker keeps busy with, for the scaling signal (a scaler may pass its own
    /// per-pool `?target=`).
    #[arg(long, env = "SDFARM_TASKS_PER_WORKER", default_value_t = 1)]
    pub tasks_per_worker: u32,
    /// Bearer tokens and their roles, one `<client|worker|admin> <token> [name]` a line;
    /// without it the coordinator is open to anyone who can reach it.
    #[arg(long, env = "SDFARM_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Redis shared by the replicas for progress and worker presence (redis://host:port);
    /// optional: without it each replica's watch sees what reaches it and the store.
    #[arg(long, env = "SDFARM_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Redis pub/sub channel of this farm (farms sharing a Redis use different ones).
    #[arg(long, env = "SDFARM_REDIS_CHANNEL", default_value = sdfarm_coordinator::relay::DEFAULT_CHANNEL)]
    pub redis_channel: String,
    /// Serve gRPC over TLS with this certificate (PEM; the server's first, then any
    /// intermediates). Needs --tls-key.
    #[arg(long, env = "SDFARM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The TLS certificate's private key (PEM). Needs --tls-cert.
    #[arg(long, env = "SDFARM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
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
        max_cells: args.max_cells,
        default_pool: {
            anyhow::ensure!(
                sdfarm_coordinator::spec::is_pool_name(&args.default_pool),
                "--default-pool {:?} is not a pool name ({})",
                args.default_pool,
                sdfarm_coordinator::spec::POOL_NAME_RULE
            );
            args.default_pool.clone()
        },
        tasks_per_worker: {
            anyhow::ensure!(
                args.tasks_per_worker >= 1,
                "--tasks-per-worker must be 1 or more"
            );
            args.tasks_per_worker
        },
        tokens: match &args.tokens_file {
            Some(path) => {
                let tokens = sdfarm_coordinator::auth::Tokens::load(path)?;
                anyhow::ensure!(
                    !tokens.is_open(),
                    "--tokens-file {} holds no tokens; omit it to run an open coordinator",
                    path.display()
                );
                tokens
            }
            None => Default::default(),
        },
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(sdfarm_coordinator::tls::TlsIdentity::load(cert, key)?),
            _ => None,
        },
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
    if let Some(url) = args.redis_url.as_deref().filter(|u| !u.is_empty()) {
        coordinator.connect_redis(&sdfarm_coordinator::relay::RedisConfig {
            url: url.to_string(),
            channel: args.redis_channel.clone(),
        })?;
    }
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
    /// Worker pool (GPU class, e.g. a100): only this pool's tasks are leased.
    #[arg(long, env = "SDFARM_POOL", default_value = "default")]
    pub pool: String,
    /// Labels shown in the coordinator's logs, as key=value (repeat, or comma-separate in
    /// SDFARM_LABELS).
    #[arg(long = "label", env = "SDFARM_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
    /// On SIGTERM, how long the task being rendered may still run before it is stopped and
    /// released to the queue. Below Kubernetes' default 30 s grace period, so the release
    /// happens before the pod is killed.
    #[arg(long, env = "SDFARM_DRAIN_SECONDS", default_value_t = 25.0)]
    pub drain_seconds: f64,
    /// Most compatible tasks (same parameters but the seeds and prompts, same LoRA set)
    /// rendered in one pass; also how many tasks are kept leased ahead of the one rendering.
    #[arg(long, env = "SDFARM_BATCH_SIZE", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    pub batch_size: u32,
    /// Textual-inversion embeddings folder, where a prompt's embedding names are looked up
    /// (default: <models folder>/embeddings, the models folder being SDFARM_MODELS_DIR).
    #[arg(long, env = "SDFARM_EMBEDDINGS_DIR")]
    pub embeddings_dir: Option<PathBuf>,
}

/// `key=value` labels into a map; a malformed one is an error naming it.
pub fn parse_labels(
    labels: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    labels
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => anyhow::bail!("--label {l:?} must be key=value"),
        })
        .collect()
}

pub async fn worker(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        sdfarm_coordinator::spec::is_pool_name(&args.pool),
        "--pool {:?} is not a pool name ({})",
        args.pool,
        sdfarm_coordinator::spec::POOL_NAME_RULE
    );
    let labels = parse_labels(&args.labels)?;
    let name = args.name.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_string())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "worker".into())
    });
    let config = sdfarm_worker::WorkerConfig {
        coordinator: args.coordinator.url,
        token: args.coordinator.token,
        tls_ca: args.coordinator.tls_ca,
        drain_timeout: {
            anyhow::ensure!(
                args.drain_seconds.is_finite() && args.drain_seconds >= 0.0,
                "--drain-seconds must be zero or more, got {}",
                args.drain_seconds
            );
            Duration::from_secs_f64(args.drain_seconds)
        },
        name,
        cache_dir: args.cache.unwrap_or_else(crate::default_cache_dir),
        lease_wait: Duration::from_secs(20),
        store_url: args.store,
        pool: args.pool,
        labels,
        batch_size: args.batch_size,
    };
    let mut resolver = ModelResolver::new(config.cache_dir.clone());
    if let Some(dir) = args.embeddings_dir {
        anyhow::ensure!(
            dir.is_dir(),
            "--embeddings-dir (SDFARM_EMBEDDINGS_DIR) {}: no such folder",
            dir.display()
        );
        resolver = resolver.with_embeddings_dir(dir);
    }
    let engine = Arc::new(Engine::new(resolver));
    sdfarm_worker::run_with_renderer(config, engine, crate::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    /// Worker id, as `sdfarm status --json` shows it for the tasks it holds.
    pub worker_id: String,
    #[command(flatten)]
    pub coordinator: crate::CoordinatorAddr,
}

pub async fn drain(args: DrainArgs) -> anyhow::Result<ExitCode> {
    use sdfarm_proto::v1::{worker_service_client::WorkerServiceClient, DrainRequest};
    let bearer = sdfarm_proto::auth::Bearer::new(args.coordinator.token.as_deref())
        .context("--token / SDFARM_TOKEN")?;
    let channel =
        sdfarm_proto::tls::endpoint(&args.coordinator.url, args.coordinator.tls_ca.as_deref())?
            .connect()
            .await
            .with_context(|| format!("connecting to coordinator {}", args.coordinator.url))?;
    WorkerServiceClient::with_interceptor(channel, bearer)
        .drain(DrainRequest {
            worker_id: args.worker_id.clone(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    eprintln!(
        "worker {} will drain at its next heartbeat or lease",
        args.worker_id
    );
    Ok(ExitCode::SUCCESS)
}
