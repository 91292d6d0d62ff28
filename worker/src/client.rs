//! The worker's gRPC loop: register, lease (long-poll), heartbeat while rendering, report
//! progress, upload the PNG, then complete or fail the task.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sdfarm_proto::auth::Bearer;
use sdfarm_proto::v1::{self as pb, worker_service_client::WorkerServiceClient};
use sdfarm_proto::PROTOCOL_VERSION;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::engine::{Engine, EngineError};
use crate::models::ModelResolver;
use crate::output;
use crate::storage::{OutputStore, StorageError};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Coordinator gRPC address, e.g. `http://127.0.0.1:7070`.
    pub coordinator: String,
    /// Name shown in job records; the coordinator appends a unique suffix.
    pub name: String,
    /// Where resolved and built-in models are kept on disk.
    pub cache_dir: PathBuf,
    /// Long-poll duration of one lease call.
    pub lease_wait: Duration,
    /// Overrides the object store the coordinator announces (for workers that see it under
    /// another URL).
    pub store_url: Option<String>,
    /// Worker pool (GPU class); only this pool's tasks are leased. Empty: "default".
    pub pool: String,
    /// Free-form facts shown in the coordinator's logs (GPU model, node, zone).
    pub labels: BTreeMap<String, String>,
    /// Bearer token (a worker or admin token) for a coordinator that requires one.
    pub token: Option<String>,
    /// CA certificate (PEM) to check an `https://` coordinator's certificate against;
    /// `None`: the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// After shutdown is asked for, how long a task being rendered may still run; past it
    /// the render stops at its next step and the task is released to the queue.
    pub drain_timeout: Duration,
}

/// The worker's gRPC client: every call carries the configured token.
type Client = WorkerServiceClient<InterceptedService<Channel, Bearer>>;

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot reach coordinator at {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("worker token: {0}")]
    Token(#[from] sdfarm_proto::auth::InvalidToken),
    #[error(transparent)]
    Endpoint(#[from] sdfarm_proto::tls::EndpointError),
    #[error("coordinator refused: {0}")]
    Rpc(#[from] tonic::Status),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Runs the worker until `shutdown` resolves. From then on nothing new is leased; a task
/// being rendered is finished and reported if it can be within `drain_timeout`, otherwise
/// stopped at its next step and released back to the queue without using up an attempt.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Shutdown comes from the caller (SIGTERM) or from the coordinator (an operator's drain).
    let stop_tx = Arc::new(stop_tx);
    let on_shutdown = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = on_shutdown.send(true);
    });
    let bearer = Bearer::new(config.token.as_deref())?;
    let Some(mut client) = connect(
        &config.coordinator,
        config.tls_ca.as_deref(),
        bearer,
        stop_rx.clone(),
    )
    .await?
    else {
        return Ok(());
    };
    let reg = client
        .register(pb::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_name: config.name.clone(),
            max_batch: 1,
            pool: config.pool.clone(),
            labels: config.labels.clone().into_iter().collect(),
        })
        .await?
        .into_inner();
    let store_url = config.store_url.clone().unwrap_or(reg.store_url);
    let store = OutputStore::open(&store_url)?;
    let engine = Arc::new(Engine::new(ModelResolver::new(config.cache_dir.clone())));
    tracing::info!(worker = %reg.worker_id, pool = %config.pool, store = %store_url, "worker registered");
    let worker = Worker {
        client,
        id: reg.worker_id,
        pool: config.pool.clone(),
        lease: Duration::from_millis(reg.lease_ms.max(300) as u64),
        store,
        engine,
        stop: stop_rx.clone(),
        drain: stop_tx,
        drain_timeout: config.drain_timeout,
    };
    worker.serve(config.lease_wait, stop_rx).await
}

/// Connects, retrying while the coordinator is not up yet. `None` if shutdown came first.
async fn connect(
    addr: &str,
    ca: Option<&std::path::Path>,
    bearer: Bearer,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Client>, WorkerError> {
    let mut delay = Duration::from_millis(100);
    let started = Instant::now();
    let endpoint = sdfarm_proto::tls::endpoint(addr, ca)?;
    loop {
        match endpoint.connect().await {
            Ok(c) => return Ok(Some(WorkerServiceClient::with_interceptor(c, bearer))),
            Err(source) if started.elapsed() > Duration::from_secs(60) => {
                return Err(WorkerError::Connect {
                    addr: addr.to_string(),
                    source,
                })
            }
            Err(err) => tracing::warn!(%addr, error = %err, "coordinator not reachable yet"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return Ok(None),
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

struct Worker {
    client: Client,
    id: String,
    pool: String,
    lease: Duration,
    store: OutputStore,
    engine: Arc<Engine>,
    /// Turns true when the worker is asked to stop.
    stop: tokio::sync::watch::Receiver<bool>,
    /// Starts the drain when the coordinator asks for it.
    drain: Arc<tokio::sync::watch::Sender<bool>>,
    drain_timeout: Duration,
}

impl Worker {
    async fn serve(
        mut self,
        lease_wait: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), WorkerError> {
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let request = pb::LeaseRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: self.id.clone(),
                max_tasks: 1,
                wait_ms: lease_wait.as_millis() as u32,
                loaded_models: self.engine.loaded_models(),
                pool: self.pool.clone(),
                ..Default::default()
            };
            let mut client = self.client.clone();
            let leased = tokio::select! {
                r = client.lease(request) => r,
                _ = stop.wait_for(|s| *s) => return Ok(()),
            };
            let tasks = match leased {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.drain {
                        tracing::info!("the coordinator asks this worker to drain");
                        let _ = self.drain.send(true);
                    }
                    r.tasks
                }
                // Another attempt cannot fix a version mismatch or a refused token.
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::FailedPrecondition
                            | tonic::Code::Unauthenticated
                            | tonic::Code::PermissionDenied
                    ) =>
                {
                    return Err(status.into())
                }
                Err(status) => {
                    tracing::warn!(error = %status, "lease failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for task in tasks {
                self.process(task).await;
            }
        }
    }

    async fn process(&mut self, task: pb::LeasedTask) {
        let span = tracing::info_span!("task", task_id = task.task_id, job_id = %task.job_id);
        self.process_in_span(task).instrument(span).await
    }

    async fn process_in_span(&mut self, task: pb::LeasedTask) {
        let started = Instant::now();
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(heartbeat_loop(
            self.client.clone(),
            self.id.clone(),
            task.task_id,
            self.lease / 3,
            lost.clone(),
            self.drain.clone(),
        ));
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let progress = tokio::spawn(progress_loop(
            self.client.clone(),
            self.id.clone(),
            task.task_id,
            task.job_id.clone(),
            progress_rx,
        ));

        // Set once the drain deadline has passed after a stop request.
        let out_of_time = Arc::new(AtomicBool::new(false));
        let drain_timer = {
            let mut stop = self.stop.clone();
            let out_of_time = out_of_time.clone();
            let deadline = self.drain_timeout;
            tokio::spawn(async move {
                if stop.wait_for(|s| *s).await.is_ok() {
                    tokio::time::sleep(deadline).await;
                    out_of_time.store(true, Ordering::Relaxed);
                }
            })
        };

        let params = task.params.clone().unwrap_or_default();
        let engine = self.engine.clone();
        let lost_in_render = lost.clone();
        let out_of_time_in_render = out_of_time.clone();
        let rendered = tokio::task::spawn_blocking(move || {
            let mut on_step = |step: u32, total: u32| {
                let _ = progress_tx.send((step, total));
                !lost_in_render.load(Ordering::Relaxed)
                    && !out_of_time_in_render.load(Ordering::Relaxed)
            };
            engine.render(&params, &mut on_step)
        })
        .await;
        let _ = progress.await;

        let outcome = match rendered {
            Ok(Ok(image)) => {
                let params = task.params.clone().unwrap_or_default();
                self.deliver(&task, &params, image, started).await
            }
            Ok(Err(EngineError::Cancelled)) if lost.load(Ordering::Relaxed) => {
                tracing::info!("render stopped: lease lost or job cancelled");
                Ok(())
            }
            Ok(Err(EngineError::Cancelled)) => {
                self.release(&task).await;
                Ok(())
            }
            Ok(Err(err)) => Err(Failure::new("render", err.to_string(), err.retryable())),
            Err(join) => Err(Failure::new(
                "crash",
                format!("render crashed: {join}"),
                true,
            )),
        };
        heartbeat.abort();
        drain_timer.abort();
        if let Err(failure) = outcome {
            let req = pb::FailRequest {
                worker_id: self.id.clone(),
                task_id: task.task_id,
                reason: failure.reason,
                retryable: failure.retryable,
                reason_code: failure.code.into(),
            };
            if let Err(status) = self.client.fail(traced(req, &task)).await {
                tracing::warn!(error = %status, "could not report failure; the lease will expire");
            }
        }
    }

    /// Gives an unfinished task back at the drain deadline. If the call fails the lease
    /// simply expires and the rescuer retries the task (spending an attempt).
    async fn release(&mut self, task: &pb::LeasedTask) {
        let req = pb::ReleaseRequest {
            worker_id: self.id.clone(),
            task_ids: vec![task.task_id],
            reason: "draining: the worker is stopping".into(),
        };
        match self.client.release(traced(req, task)).await {
            Ok(_) => tracing::info!("drain deadline passed: task released to the queue"),
            Err(status) => {
                tracing::warn!(error = %status, "could not release the task; its lease will expire")
            }
        }
    }

    /// Encodes, uploads and completes. An error says what to report.
    async fn deliver(
        &mut self,
        task: &pb::LeasedTask,
        params: &sdfarm_proto::RenderParams,
        image: crate::engine::RenderedImage,
        started: Instant,
    ) -> Result<(), Failure> {
        let infotext = output::infotext_with_vae(
            params,
            &image.model_name,
            &image.model_hash,
            &image.vae_name,
            &image.vae_hash,
        );
        let png = output::encode_png(&image.rgb, image.width, image.height, &infotext)
            .map_err(|e| Failure::new("encode", format!("PNG encoding failed: {e}"), false))?;
        let sha256 = output::sha256_hex(&png);
        let mut attempt = 0;
        loop {
            match self.store.put(&task.output_key, png.clone()).await {
                Ok(()) => break,
                Err(err) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(error = %err, attempt, "upload failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(err) => {
                    return Err(Failure::new(
                        "upload",
                        format!("upload to {} failed: {err}", self.store.url()),
                        true,
                    ))
                }
            }
        }
        let req = pb::CompleteRequest {
            worker_id: self.id.clone(),
            task_id: task.task_id,
            output_key: task.output_key.clone(),
            sha256,
            infotext,
            render_ms: started.elapsed().as_millis() as u64,
            steps: params.steps,
            model_loaded: image.model_loaded,
            model_load_ms: image.model_load_ms,
            model: params.model.clone(),
        };
        match self.client.complete(traced(req, task)).await {
            Ok(_) => {
                tracing::info!(key = %task.output_key, "task completed");
                Ok(())
            }
            // Another worker holds the task now; its upload writes the same key, so dropping
            // this result loses nothing.
            Err(status) if status.code() == tonic::Code::Aborted => {
                tracing::warn!(error = %status, "completion refused: lease lost");
                Ok(())
            }
            Err(status) => Err(Failure::new(
                "complete",
                format!("completion not recorded: {status}"),
                true,
            )),
        }
    }
}

/// Wraps a report about `task` with its ids as gRPC metadata, so the coordinator's span for
/// the call carries the same `job_id` and `task_id` as the worker's.
fn traced<T>(message: T, task: &pb::LeasedTask) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Ok(v) = task.job_id.parse() {
        req.metadata_mut().insert(JOB_ID_HEADER, v);
    }
    req
}

/// gRPC metadata key naming the job a worker's report is about.
pub const JOB_ID_HEADER: &str = "x-sdfarm-job-id";

/// A failed attempt as reported to the coordinator: `code` is a short class used as the
/// metrics' `reason` label, `reason` the text people read.
struct Failure {
    code: &'static str,
    reason: String,
    retryable: bool,
}

impl Failure {
    fn new(code: &'static str, reason: String, retryable: bool) -> Failure {
        Failure {
            code,
            reason,
            retryable,
        }
    }
}

/// Extends the lease every third of its length; flags the task lost when the coordinator
/// says the worker no longer holds it.
async fn heartbeat_loop(
    mut client: Client,
    worker_id: String,
    task_id: i64,
    every: Duration,
    lost: Arc<AtomicBool>,
    drain: Arc<tokio::sync::watch::Sender<bool>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let req = pb::HeartbeatRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: worker_id.clone(),
            task_ids: vec![task_id],
            ..Default::default()
        };
        match client.heartbeat(req).await {
            Ok(r) if r.get_ref().lost_task_ids.contains(&task_id) => {
                lost.store(true, Ordering::Relaxed);
                return;
            }
            Ok(r) => {
                if r.get_ref().drain && !*drain.borrow() {
                    tracing::info!("the coordinator asks this worker to drain");
                    let _ = drain.send(true);
                }
            }
            Err(status) => tracing::warn!(error = %status, "heartbeat failed"),
        }
    }
}

/// Forwards step progress, at most a few times a second: progress is for people watching.
async fn progress_loop(
    mut client: Client,
    worker_id: String,
    task_id: i64,
    job_id: String,
    mut rx: mpsc::UnboundedReceiver<(u32, u32)>,
) {
    let min_gap = Duration::from_millis(200);
    let mut last_sent = Instant::now() - min_gap;
    while let Some((mut step, mut total)) = rx.recv().await {
        while let Ok((s, t)) = rx.try_recv() {
            (step, total) = (s, t);
        }
        if step < total && last_sent.elapsed() < min_gap {
            continue;
        }
        last_sent = Instant::now();
        let req = pb::ProgressRequest {
            worker_id: worker_id.clone(),
            progress: vec![pb::TaskProgress {
                task_id,
                step,
                total_steps: total,
                worker: worker_id.clone(),
                job_id: job_id.clone(),
            }],
        };
        let _ = client.progress(req).await;
    }
}
