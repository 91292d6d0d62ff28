//! The worker's gRPC loop: register, lease (long-poll), heartbeat, report progress, upload
//! the PNGs, then complete or fail the tasks.
//!
//! Rendering is the only thing on the path from one task to the next: the worker keeps one
//! batch leased ahead (the next lease runs while the current batch renders), and a reporter
//! task encodes, uploads and completes finished images while the next ones render. One
//! heartbeat extends every lease held — queued, rendering or being reported — so a task
//! leased ahead is never lost to expiry; a worker that dies leaves leases that expire and
//! are rescued like any other.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sdfarm_proto::auth::Bearer;
use sdfarm_proto::v1::{self as pb, worker_service_client::WorkerServiceClient};
use sdfarm_proto::PROTOCOL_VERSION;
use tokio::sync::mpsc;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::engine::{Engine, EngineError};
use crate::models::ModelResolver;
use crate::output;
use crate::render::{batch_key, Renderer};
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
    /// Most compatible tasks rendered in one pass (see [`crate::render::batch_key`]); also
    /// how many tasks are kept leased ahead of the one rendering. 0 is taken as 1.
    pub batch_size: u32,
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

/// Runs the worker until `shutdown` resolves. From then on nothing new is leased or started;
/// tasks leased ahead are released at once; a batch being rendered is finished and reported
/// if it can be within `drain_timeout`, otherwise stopped at its next step and released back
/// to the queue without using up an attempt.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let engine = Arc::new(Engine::new(ModelResolver::new(config.cache_dir.clone())));
    run_with_renderer(config, engine, shutdown).await
}

/// [`run`] rendering with `renderer` instead of the candle engine (benchmarks and tests of
/// the loop itself).
pub async fn run_with_renderer(
    config: WorkerConfig,
    renderer: Arc<dyn Renderer>,
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
    let batch_size = config.batch_size.max(1);
    let reg = client
        .register(pb::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_name: config.name.clone(),
            max_batch: batch_size,
            pool: config.pool.clone(),
            labels: config.labels.clone().into_iter().collect(),
        })
        .await?
        .into_inner();
    let store_url = config.store_url.clone().unwrap_or(reg.store_url);
    let store = OutputStore::open(&store_url)?;
    tracing::info!(worker = %reg.worker_id, pool = %config.pool, store = %store_url, batch_size, "worker registered");
    let worker = Worker {
        client,
        id: reg.worker_id,
        pool: config.pool.clone(),
        lease: Duration::from_millis(reg.lease_ms.max(300) as u64),
        store,
        renderer,
        batch_size: batch_size as usize,
        stop: stop_rx.clone(),
        drain: stop_tx,
        drain_timeout: config.drain_timeout,
        leases: Arc::default(),
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
    renderer: Arc<dyn Renderer>,
    /// Most tasks rendered in one pass, and how many are kept leased ahead.
    batch_size: usize,
    /// Turns true when the worker is asked to stop.
    stop: tokio::sync::watch::Receiver<bool>,
    /// Starts the drain when the coordinator asks for it.
    drain: Arc<tokio::sync::watch::Sender<bool>>,
    drain_timeout: Duration,
    leases: Arc<Leases>,
}

/// The leases the worker holds: every task leased and not yet reported or released, whether
/// queued, rendering or uploading. One heartbeat extends them all.
#[derive(Default)]
struct Leases {
    held: Mutex<BTreeSet<i64>>,
    /// Tasks the coordinator says this worker no longer holds (cancelled, or expired and
    /// leased elsewhere): not started if queued, stopped if rendering, not reported.
    lost: Mutex<HashSet<i64>>,
}

impl Leases {
    fn hold(&self, tasks: &[pb::LeasedTask]) {
        let mut held = self.held.lock().expect("lease set");
        held.extend(tasks.iter().map(|t| t.task_id));
    }

    fn drop_ids(&self, ids: impl IntoIterator<Item = i64>) {
        let mut held = self.held.lock().expect("lease set");
        for id in ids {
            held.remove(&id);
        }
    }

    fn held(&self) -> Vec<i64> {
        self.held
            .lock()
            .expect("lease set")
            .iter()
            .copied()
            .collect()
    }

    fn mark_lost(&self, ids: &[i64]) {
        self.drop_ids(ids.iter().copied());
        self.lost.lock().expect("lease set").extend(ids);
    }

    fn is_lost(&self, id: i64) -> bool {
        self.lost.lock().expect("lease set").contains(&id)
    }
}

/// A batch's outcome, handed from the render loop to the reporter.
enum Outcome {
    Rendered {
        image: crate::engine::RenderedImage,
        render_ms: u64,
    },
    Failed(Failure),
    /// Stopped at the drain deadline: goes back to the queue.
    Release,
    /// The lease was lost while rendering: nothing to report.
    Lost,
}

/// The lease call of the render loop, running while it renders.
type LeaseCall = tokio::task::JoinHandle<Result<pb::LeaseResponse, tonic::Status>>;

impl Worker {
    async fn serve(
        self,
        lease_wait: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), WorkerError> {
        let heartbeat = tokio::spawn(heartbeat_loop(
            self.client.clone(),
            self.id.clone(),
            self.lease / 3,
            self.leases.clone(),
            self.drain.clone(),
            self.renderer.clone(),
        ));
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let reporter = tokio::spawn(report_loop(
            self.client.clone(),
            self.id.clone(),
            self.store.clone(),
            self.leases.clone(),
            report_rx,
        ));
        let mut queue: VecDeque<pb::LeasedTask> = VecDeque::new();
        let mut leasing: Option<LeaseCall> = None;
        let result = loop {
            if *stop.borrow() {
                break Ok(());
            }
            queue.retain(|t| !self.leases.is_lost(t.task_id));
            if queue.is_empty() {
                let call =
                    leasing.get_or_insert_with(|| self.start_lease(lease_wait, self.batch_size));
                let leased = tokio::select! {
                    r = call => r,
                    _ = stop.wait_for(|s| *s) => break Ok(()),
                };
                leasing = None;
                match self.absorb(leased, &mut queue) {
                    Ok(()) => continue,
                    Err(e) => break Err(e),
                }
            }
            let batch = take_batch(&mut queue, self.batch_size);
            // Keep the next batch leased ahead: this lease runs while the batch renders.
            if leasing.is_none() && queue.len() < self.batch_size {
                leasing = Some(self.start_lease(lease_wait, self.batch_size - queue.len()));
            }
            let (outcomes, lease_error) = self.render(&batch, &mut leasing, &mut queue).await;
            for (task, outcome) in batch.into_iter().zip(outcomes) {
                let _ = report_tx.send((task, outcome));
            }
            if let Some(e) = lease_error {
                break Err(e);
            }
        };
        // Stopping: nothing new is started; what is queued goes back at once, what finished
        // is still reported.
        if let Some(call) = leasing.take() {
            call.abort();
        }
        let queued: Vec<pb::LeasedTask> = queue
            .drain(..)
            .filter(|t| !self.leases.is_lost(t.task_id))
            .collect();
        for task in queued {
            let _ = report_tx.send((task, Outcome::Release));
        }
        drop(report_tx);
        let _ = reporter.await;
        heartbeat.abort();
        result
    }

    fn start_lease(&self, wait: Duration, max: usize) -> LeaseCall {
        let request = pb::LeaseRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: self.id.clone(),
            max_tasks: max as u32,
            wait_ms: wait.as_millis() as u32,
            loaded_models: self.renderer.loaded_models(),
            pool: self.pool.clone(),
            cached_models: self.renderer.cached_models(),
        };
        let mut client = self.client.clone();
        tokio::spawn(async move {
            match client.lease(request).await {
                Ok(r) => Ok(r.into_inner()),
                // Another attempt cannot fix a version mismatch or a refused token.
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::FailedPrecondition
                            | tonic::Code::Unauthenticated
                            | tonic::Code::PermissionDenied
                    ) =>
                {
                    Err(status)
                }
                Err(status) => {
                    tracing::warn!(error = %status, "lease failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Ok(pb::LeaseResponse::default())
                }
            }
        })
    }

    /// Takes a finished lease call's tasks into the queue (and the heartbeat's care).
    fn absorb(
        &self,
        leased: Result<Result<pb::LeaseResponse, tonic::Status>, tokio::task::JoinError>,
        queue: &mut VecDeque<pb::LeasedTask>,
    ) -> Result<(), WorkerError> {
        let response = match leased {
            Ok(Ok(r)) => r,
            Ok(Err(status)) => return Err(status.into()),
            Err(join) => return Err(tonic::Status::internal(format!("lease call: {join}")).into()),
        };
        if response.drain && !*self.drain.borrow() {
            tracing::info!("the coordinator asks this worker to drain");
            let _ = self.drain.send(true);
        }
        self.leases.hold(&response.tasks);
        for task in &response.tasks {
            if let Some(params) = &task.params {
                self.renderer.prefetch(&params.model);
            }
        }
        queue.extend(response.tasks);
        Ok(())
    }

    /// Renders one batch while the lease call in flight (if any) fills the queue; one
    /// outcome per task, and a fatal lease error that came meanwhile.
    async fn render(
        &self,
        batch: &[pb::LeasedTask],
        leasing: &mut Option<LeaseCall>,
        queue: &mut VecDeque<pb::LeasedTask>,
    ) -> (Vec<Outcome>, Option<WorkerError>) {
        let span = tracing::info_span!(
            "task",
            task_id = batch[0].task_id,
            job_id = %batch[0].job_id,
            batch = batch.len()
        );
        let started = Instant::now();
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let progress = tokio::spawn(progress_loop(
            self.client.clone(),
            self.id.clone(),
            batch
                .iter()
                .map(|t| (t.task_id, t.job_id.clone()))
                .collect(),
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
        let params: Vec<sdfarm_proto::RenderParams> = batch
            .iter()
            .map(|t| t.params.clone().unwrap_or_default())
            .collect();
        let ids: Vec<i64> = batch.iter().map(|t| t.task_id).collect();
        let renderer = self.renderer.clone();
        let leases = self.leases.clone();
        let out_of_time_in_render = out_of_time.clone();
        let mut rendering = tokio::task::spawn_blocking(move || {
            let mut on_step = |step: u32, total: u32| {
                let _ = progress_tx.send((step, total));
                !out_of_time_in_render.load(Ordering::Relaxed)
                    && !ids.iter().all(|id| leases.is_lost(*id))
            };
            if params.len() == 1 {
                vec![renderer.render(&params[0], &mut on_step)]
            } else {
                renderer.render_batch(&params, &mut on_step)
            }
        });
        let mut lease_error = None;
        let rendered = loop {
            let Some(call) = leasing.as_mut() else {
                break (&mut rendering).await;
            };
            tokio::select! {
                r = &mut rendering => break r,
                leased = call => {
                    *leasing = None;
                    if let Err(e) = self.absorb(leased, queue) {
                        lease_error = Some(e);
                    }
                }
            }
        };
        drain_timer.abort();
        let _ = progress.await;
        let render_ms = started.elapsed().as_millis() as u64;
        let outcomes = match rendered {
            Ok(results) => batch
                .iter()
                .zip(results)
                .map(|(task, r)| match r {
                    _ if self.leases.is_lost(task.task_id) => Outcome::Lost,
                    Ok(image) => Outcome::Rendered { image, render_ms },
                    // Stopped at the drain deadline.
                    Err(EngineError::Cancelled) => Outcome::Release,
                    Err(err) => {
                        Outcome::Failed(Failure::new("render", err.to_string(), err.retryable()))
                    }
                })
                .collect(),
            Err(join) => batch
                .iter()
                .map(|_| {
                    Outcome::Failed(Failure::new(
                        "crash",
                        format!("render crashed: {join}"),
                        true,
                    ))
                })
                .collect(),
        };
        span.in_scope(|| tracing::debug!(render_ms, "batch rendered"));
        (outcomes, lease_error)
    }
}

/// The next batch: the first queued task and the queued tasks that may share its pass, in
/// queue order, up to `max`.
fn take_batch(queue: &mut VecDeque<pb::LeasedTask>, max: usize) -> Vec<pb::LeasedTask> {
    let first = queue.pop_front().expect("queue is not empty");
    let key = batch_key(&first.params.clone().unwrap_or_default());
    let mut batch = vec![first];
    let mut i = 0;
    while batch.len() < max && i < queue.len() {
        if batch_key(&queue[i].params.clone().unwrap_or_default()) == key {
            batch.extend(queue.remove(i));
        } else {
            i += 1;
        }
    }
    batch
}

/// Uploads and reports what the render loop hands over, off its path: everything that
/// finished while the previous report was in flight goes in one `CompleteMany` call. Ends
/// when the render loop is done and everything handed over is reported.
async fn report_loop(
    mut client: Client,
    worker_id: String,
    store: OutputStore,
    leases: Arc<Leases>,
    mut rx: mpsc::UnboundedReceiver<(pb::LeasedTask, Outcome)>,
) {
    let mut items = Vec::new();
    while rx.recv_many(&mut items, 64).await > 0 {
        let mut completions = Vec::new();
        let mut failures = Vec::new();
        let mut releases = Vec::new();
        let mut uploads = Vec::new();
        for (task, outcome) in items.drain(..) {
            match outcome {
                Outcome::Rendered { image, render_ms } => {
                    uploads.push(deliver(&store, &worker_id, task, image, render_ms))
                }
                Outcome::Failed(f) => failures.push((task, f)),
                Outcome::Release => releases.push(task),
                Outcome::Lost => {
                    tracing::info!(
                        task_id = task.task_id,
                        "render stopped: lease lost or job cancelled"
                    );
                    leases.drop_ids([task.task_id]);
                }
            }
        }
        for (task, delivered) in futures::future::join_all(uploads).await {
            match delivered {
                Ok(req) => completions.push((task, req)),
                Err(f) => failures.push((task, f)),
            }
        }
        if !completions.is_empty() {
            for (task, failure) in complete_all(&mut client, &worker_id, completions).await {
                failures.push((task, failure));
            }
        }
        if !releases.is_empty() {
            release(&mut client, &worker_id, &releases).await;
            leases.drop_ids(releases.iter().map(|t| t.task_id));
        }
        for (task, failure) in failures {
            let req = pb::FailRequest {
                worker_id: worker_id.clone(),
                task_id: task.task_id,
                reason: failure.reason,
                retryable: failure.retryable,
                reason_code: failure.code.into(),
            };
            if let Err(status) = client.fail(traced(req, &task)).await {
                tracing::warn!(task_id = task.task_id, error = %status, "could not report failure; the lease will expire");
            }
            leases.drop_ids([task.task_id]);
        }
    }
}

/// Reports completions in one call; returns those to report as failed instead. A lost lease
/// is no failure: another worker holds the task now and its upload writes the same key.
async fn complete_all(
    client: &mut Client,
    worker_id: &str,
    completions: Vec<(pb::LeasedTask, pb::CompleteRequest)>,
) -> Vec<(pb::LeasedTask, Failure)> {
    let ids: Vec<i64> = completions.iter().map(|(t, _)| t.task_id).collect();
    let request = pb::CompleteManyRequest {
        worker_id: worker_id.to_string(),
        completions: completions.iter().map(|(_, r)| r.clone()).collect(),
    };
    let mut req = traced(request, &completions[0].0);
    if completions.len() > 1 {
        req.metadata_mut().remove(JOB_ID_HEADER);
    }
    match client.complete_many(req).await {
        Ok(r) => {
            let lost = r.into_inner().lost_task_ids;
            for (task, _) in &completions {
                if lost.contains(&task.task_id) {
                    tracing::warn!(task_id = task.task_id, "completion refused: lease lost");
                } else {
                    tracing::info!(task_id = task.task_id, key = %task.output_key, "task completed");
                }
            }
            Vec::new()
        }
        // A coordinator without the batched call: one call per task.
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            let mut failed = Vec::new();
            for (task, req) in completions {
                match client.complete(traced(req, &task)).await {
                    Ok(_) => {
                        tracing::info!(task_id = task.task_id, key = %task.output_key, "task completed")
                    }
                    Err(status) if status.code() == tonic::Code::Aborted => {
                        tracing::warn!(task_id = task.task_id, error = %status, "completion refused: lease lost")
                    }
                    Err(status) => failed.push((
                        task,
                        Failure::new(
                            "complete",
                            format!("completion not recorded: {status}"),
                            true,
                        ),
                    )),
                }
            }
            failed
        }
        Err(status) => {
            tracing::warn!(tasks = ?ids, error = %status, "completions not recorded");
            completions
                .into_iter()
                .map(|(task, _)| {
                    (
                        task,
                        Failure::new(
                            "complete",
                            format!("completion not recorded: {status}"),
                            true,
                        ),
                    )
                })
                .collect()
        }
    }
}

/// Gives unfinished tasks back (drain). If the call fails the leases simply expire and the
/// rescuer retries the tasks (spending an attempt).
async fn release(client: &mut Client, worker_id: &str, tasks: &[pb::LeasedTask]) {
    let req = pb::ReleaseRequest {
        worker_id: worker_id.to_string(),
        task_ids: tasks.iter().map(|t| t.task_id).collect(),
        reason: "draining: the worker is stopping".into(),
    };
    match client.release(traced(req, &tasks[0])).await {
        Ok(r) => tracing::info!(
            released = ?r.into_inner().released_task_ids,
            "worker stopping: tasks released to the queue"
        ),
        Err(status) => {
            tracing::warn!(error = %status, "could not release tasks; their leases will expire")
        }
    }
}

/// Encodes and uploads one image; the completion to report, or the failure.
async fn deliver(
    store: &OutputStore,
    worker_id: &str,
    task: pb::LeasedTask,
    image: crate::engine::RenderedImage,
    render_ms: u64,
) -> (pb::LeasedTask, Result<pb::CompleteRequest, Failure>) {
    let result = deliver_inner(store, worker_id, &task, image, render_ms).await;
    (task, result)
}

async fn deliver_inner(
    store: &OutputStore,
    worker_id: &str,
    task: &pb::LeasedTask,
    image: crate::engine::RenderedImage,
    render_ms: u64,
) -> Result<pb::CompleteRequest, Failure> {
    let params = task.params.clone().unwrap_or_default();
    let encoded = {
        let params = params.clone();
        tokio::task::spawn_blocking(move || {
            let infotext = output::infotext_with_networks(
                &params,
                &image.model_name,
                &image.model_hash,
                &image.vae_name,
                &image.vae_hash,
                &image.lora_hashes,
                &image.ti_hashes,
            );
            let png = output::encode_png(&image.rgb, image.width, image.height, &infotext)?;
            Ok::<_, crate::output::OutputError>((
                infotext,
                png,
                image.model_loaded,
                image.model_load_ms,
            ))
        })
        .await
    };
    let (infotext, png, model_loaded, model_load_ms) = match encoded {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            return Err(Failure::new(
                "encode",
                format!("PNG encoding failed: {e}"),
                false,
            ))
        }
        Err(join) => {
            return Err(Failure::new(
                "crash",
                format!("PNG encoding crashed: {join}"),
                true,
            ))
        }
    };
    let sha256 = output::sha256_hex(&png);
    let mut attempt = 0;
    loop {
        match store.put(&task.output_key, png.clone()).await {
            Ok(()) => break,
            Err(err) if attempt < 3 => {
                attempt += 1;
                tracing::warn!(task_id = task.task_id, error = %err, attempt, "upload failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(err) => {
                return Err(Failure::new(
                    "upload",
                    format!("upload to {} failed: {err}", store.url()),
                    true,
                ))
            }
        }
    }
    Ok(pb::CompleteRequest {
        worker_id: worker_id.to_string(),
        task_id: task.task_id,
        output_key: task.output_key.clone(),
        sha256,
        infotext,
        render_ms,
        steps: params.steps,
        model_loaded,
        model_load_ms,
        model: params.model.clone(),
    })
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

/// Extends every lease the worker holds every third of the lease's length; marks the tasks
/// the coordinator says it no longer holds as lost.
async fn heartbeat_loop(
    mut client: Client,
    worker_id: String,
    every: Duration,
    leases: Arc<Leases>,
    drain: Arc<tokio::sync::watch::Sender<bool>>,
    renderer: Arc<dyn Renderer>,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let task_ids = leases.held();
        if task_ids.is_empty() {
            continue;
        }
        let req = pb::HeartbeatRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: worker_id.clone(),
            task_ids,
            loaded_models: renderer.loaded_models(),
            cached_models: renderer.cached_models(),
        };
        match client.heartbeat(req).await {
            Ok(r) => {
                let r = r.into_inner();
                if !r.lost_task_ids.is_empty() {
                    tracing::info!(tasks = ?r.lost_task_ids, "leases lost (cancelled or expired)");
                    leases.mark_lost(&r.lost_task_ids);
                }
                if r.drain && !*drain.borrow() {
                    tracing::info!("the coordinator asks this worker to drain");
                    let _ = drain.send(true);
                }
            }
            Err(status) => tracing::warn!(error = %status, "heartbeat failed"),
        }
    }
}

/// Forwards step progress of a batch's tasks, at most a few times a second: progress is for
/// people watching.
async fn progress_loop(
    mut client: Client,
    worker_id: String,
    tasks: Vec<(i64, String)>,
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
            progress: tasks
                .iter()
                .map(|(task_id, job_id)| pb::TaskProgress {
                    task_id: *task_id,
                    step,
                    total_steps: total,
                    worker: worker_id.clone(),
                    job_id: job_id.clone(),
                })
                .collect(),
        };
        let _ = client.progress(req).await;
    }
}
