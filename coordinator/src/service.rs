//! The coordinator's behaviour: submitting sweeps, leasing tasks to workers (long-poll),
//! recording results, and rescuing expired leases. The gRPC layer only converts to and from
//! this module.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sdfarm_proto::v1::TaskProgress;
use sdfarm_proto::PROTOCOL_VERSION;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::completions::CompletionGroups;
use crate::error::{Error, Result};
use crate::events::{Event, Events, Presence};
use crate::expand;
use crate::metrics::{Completion, Metrics};
use crate::scaling::{self, PoolSignal};
use crate::spec::{self, SweepFormat};
use crate::store::{
    Completed, JobRecord, NewJob, NewTask, RetryPolicy, Store, StoreError, TaskOutput, TaskRecord,
    TaskState, DEFAULT_POOL,
};
pub use crate::workers::WorkerInfo;
use crate::workers::Workers;

mod dataset;
pub use dataset::DatasetSubmit;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Object-store URL handed to workers at registration (`file:///…`, `s3://bucket/prefix`).
    pub store_url: String,
    /// How long a lease lasts without a heartbeat.
    pub lease: Duration,
    /// How often expired leases are looked for.
    pub rescue_interval: Duration,
    pub retry: RetryPolicy,
    /// Largest sweep accepted, in images; larger ones are refused with the count.
    pub max_images: u64,
    /// Largest sweep accepted, in cells (X/Y/Z combinations, matrix prompts).
    pub max_cells: u64,
    /// Upper bound on a worker's long-poll, whatever it asks for.
    pub max_lease_wait: Duration,
    /// Pool of sweeps that name none.
    pub default_pool: String,
    /// Tasks one worker is expected to keep busy with, for the scaling signal; a scaler may
    /// ask with its own per-pool target instead.
    pub tasks_per_worker: u32,
    /// Bearer tokens and their roles; empty: every call is admitted.
    pub tokens: crate::auth::Tokens,
    /// Certificate and key gRPC is served with; `None`: plaintext.
    pub tls: Option<crate::tls::TlsIdentity>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            store_url: "file:///tmp/sdfarm-out".into(),
            lease: Duration::from_secs(30),
            rescue_interval: Duration::from_secs(2),
            retry: RetryPolicy::default(),
            max_images: 10_000_000,
            max_cells: 1_000_000,
            max_lease_wait: Duration::from_secs(30),
            default_pool: DEFAULT_POOL.into(),
            tasks_per_worker: 1,
            tokens: crate::auth::Tokens::default(),
            tls: None,
        }
    }
}

pub struct Coordinator {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: CoordinatorConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) events: Events,
    /// Wakes long-polling leases when work may have appeared (submit, retry, rescue).
    pub(crate) work_ready: Notify,
    workers: Workers,
    metrics: Metrics,
    /// Jobs whose grids are still to be composed (see `grid::job`).
    pub(crate) grids: crate::grid::GridQueue,
    completions: CompletionGroups,
    /// Which checkpoint each worker renders next (see `scheduling`).
    scheduler: crate::scheduling::Scheduler,
}

/// How often a waiting lease re-checks the store even without a wake-up: work can appear
/// through another replica, or a retry backoff can run out.
const LEASE_POLL: Duration = Duration::from_millis(500);

impl Coordinator {
    pub fn new(store: Arc<dyn Store>, config: CoordinatorConfig, clock: Arc<dyn Clock>) -> Self {
        Coordinator {
            events: Events::default(),
            work_ready: Notify::new(),
            workers: Workers::default(),
            metrics: Metrics::new(),
            grids: crate::grid::GridQueue::default(),
            completions: CompletionGroups::new(store.clone(), clock.clone(), true),
            scheduler: crate::scheduling::Scheduler::default(),
            store,
            config,
            clock,
        }
    }

    /// With `false`, every completion is committed on its own instead of in groups (the
    /// dispatch benchmark compares the two in one run).
    pub fn with_grouped_completions(mut self, grouped: bool) -> Self {
        self.completions = CompletionGroups::new(self.store.clone(), self.clock.clone(), grouped);
        self
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Shares progress, job changes and worker presence with the other replicas through
    /// Redis. Without it a replica's `watch` sees only what reaches that replica, plus what
    /// it re-reads from the store.
    pub fn connect_redis(
        self: &Arc<Self>,
        config: &crate::relay::RedisConfig,
    ) -> std::result::Result<(), crate::relay::RelayError> {
        crate::relay::start(&self.events, config)?;
        let mut rx = self.events.subscribe();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let event = match rx.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(me) = me.upgrade() else { return };
                let now = me.clock.now_ms();
                match event {
                    Event::Presence(p) => {
                        me.workers.seen(&p.worker, Some(&p.pool), now);
                        if let Some(n) = p.holding {
                            me.workers.holding(&p.worker, n);
                        }
                    }
                    Event::Drain(worker) => me.workers.drain(&worker, now),
                    _ => {}
                }
            }
        });
        Ok(())
    }

    /// Asks a worker to drain: its next heartbeat or lease reply says so (on every replica
    /// when Redis connects them; otherwise on this one).
    pub fn drain_worker(&self, worker_id: &str) -> Result<()> {
        if worker_id.is_empty() {
            return Err(Error::InvalidArgument("worker_id is empty".into()));
        }
        self.workers.drain(worker_id, self.clock.now_ms());
        tracing::info!(worker = worker_id, "worker asked to drain");
        self.events.publish(Event::Drain(worker_id.to_string()));
        Ok(())
    }

    pub fn is_draining(&self, worker_id: &str) -> bool {
        self.workers.is_draining(worker_id)
    }

    /// Tells every replica this worker is alive (only the pool and, when known, its load).
    fn announce(&self, worker_id: &str, pool: Option<String>, holding: Option<u32>) {
        if let Some(pool) = pool.or_else(|| self.workers.pool_of(worker_id)) {
            self.events.publish(Event::Presence(Presence {
                worker: worker_id.to_string(),
                pool,
                holding,
            }));
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    pub fn worker(&self, worker_id: &str) -> Option<WorkerInfo> {
        self.workers.get(worker_id)
    }

    /// Scaling signals of every pool with unfinished tasks and of `pools`; `target` overrides
    /// the configured tasks per worker.
    pub async fn scaling(
        &self,
        pools: &[&str],
        target: Option<u32>,
    ) -> Result<BTreeMap<String, PoolSignal>> {
        let counts = self.store.queue_counts().await?;
        let target = target.unwrap_or(self.config.tasks_per_worker);
        Ok(scaling::signals(&counts, pools.iter().copied(), |_| target))
    }

    /// The `/metrics` exposition.
    pub async fn render_metrics(&self) -> Result<String> {
        let counts = self.store.queue_counts().await?;
        let target = self.config.tasks_per_worker;
        let signals = scaling::signals(&counts, [], |_| target);
        // A long-polling worker is silent for up to the long-poll, then a lease or two.
        let lost_after = (self.config.max_lease_wait + 2 * self.config.lease).as_millis() as i64;
        let workers = self.workers.counts(self.clock.now_ms(), lost_after);
        Ok(self.metrics.render(&counts, &signals, &workers))
    }

    fn lease_ms(&self) -> i64 {
        self.config.lease.as_millis() as i64
    }

    /// Parses, expands and stores a sweep as one job of the anonymous owner. Nothing is
    /// stored if any part fails.
    pub async fn submit(&self, sweep: &str, format: &str, name: &str) -> Result<JobRecord> {
        self.submit_as(sweep, format, name, crate::store::ANONYMOUS_OWNER)
            .await
    }

    /// `submit` for `owner` (see `job_control::owner_name`), whose jobs share the farm
    /// round robin with other owners' jobs of the same priority.
    pub async fn submit_as(
        &self,
        sweep: &str,
        format: &str,
        name: &str,
        owner: &str,
    ) -> Result<JobRecord> {
        let owner = crate::job_control::owner_name(owner)?;
        let format = if format.is_empty() {
            SweepFormat::Toml
        } else {
            SweepFormat::parse(format).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "sweep format {format:?} is not known (accepted: \"toml\", \"json\")"
                ))
            })?
        };
        let spec = spec::parse_sweep(sweep, format)?.resolved();
        let cells = expand::cell_count(&spec);
        if cells > self.config.max_cells {
            return Err(Error::TooManyCells {
                count: cells,
                limit: self.config.max_cells,
            });
        }
        let count = expand::image_count(&spec);
        if count > self.config.max_images {
            return Err(Error::TooManyImages {
                count,
                limit: self.config.max_images,
            });
        }
        // Already drawn by `resolved()`, except with "Keep -1 for seeds", where this only
        // seeds the per-cell draws.
        let seed = expand::resolve_seed(spec.base.seed);
        let name = spec
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| name.to_string());
        if spec.dataset.is_some() {
            let done = self.submit_dataset(&spec, seed, sweep, name, owner).await?;
            return Ok(done.job);
        }
        let id = uuid::Uuid::new_v4().to_string();
        let pool = spec
            .pool
            .clone()
            .unwrap_or_else(|| self.config.default_pool.clone());
        let grid_plan = crate::grid::GridPlan::for_sweep(&expand::Cells::new(&spec, seed));
        if let Some(plan) = &grid_plan {
            self.save_grid_plan(&id, plan).await?;
        }
        let mut tasks = expand::expand(&spec, seed).map(|img| NewTask {
            output_key: expand::output_key(&id, img.image_index, img.params.seed),
            image_index: img.image_index,
            params: img.params,
            cell_key: None,
        });
        let job = NewJob {
            id: id.clone(),
            name,
            sweep: sweep.to_string(),
            output_prefix: id.clone(),
            max_attempts: spec.max_attempts,
            priority: spec.priority,
            pool,
            owner,
        };
        let stored = self
            .store
            .create_job_streaming(&job, &mut tasks, self.clock.now_ms())
            .await?;
        if grid_plan.is_some() {
            self.await_grids(&id);
        }
        self.metrics.submitted(&job.pool, stored as usize);
        self.scheduler.invalidate();
        tracing::info!(job_id = %id, cells, images = stored, pool = %job.pool, "job submitted");
        self.work_ready.notify_waiters();
        self.events.publish(Event::JobChanged(Some(id.clone())));
        Ok(self.store.get_job(&id).await?)
    }

    pub async fn cancel(&self, job_id: &str) -> Result<JobRecord> {
        let job = self.store.cancel_job(job_id, self.clock.now_ms()).await?;
        tracing::info!(job_id, "job cancelled");
        self.events
            .publish(Event::JobChanged(Some(job_id.to_string())));
        Ok(job)
    }

    fn check_protocol(version: u32) -> Result<()> {
        if version != PROTOCOL_VERSION {
            return Err(Error::ProtocolMismatch {
                got: version,
                want: PROTOCOL_VERSION,
            });
        }
        Ok(())
    }

    /// Registers a worker of `pool` (empty: the default pool) and gives it a unique id for
    /// its leases.
    pub fn register(
        &self,
        protocol_version: u32,
        name: &str,
        pool: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<String> {
        Self::check_protocol(protocol_version)?;
        let pool = worker_pool(pool)?;
        let name = if name.is_empty() { "worker" } else { name };
        let id = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        tracing::info!(worker = %id, pool, ?labels, "worker registered");
        self.workers
            .register(&id, name, pool, labels, self.clock.now_ms());
        Ok(id)
    }

    fn touch_worker(&self, worker_id: &str) {
        self.workers.seen(worker_id, None, self.clock.now_ms());
    }

    /// Leases up to `max` tasks of `pool` (empty: the default pool), waiting up to `wait`
    /// for work to appear. Tasks for the `loaded_models` the worker holds come first, within
    /// the highest waiting priority; when a model must be loaded, `scheduling` picks which
    /// (or leaves the worker waiting when no load would pay).
    pub async fn lease(
        &self,
        protocol_version: u32,
        worker_id: &str,
        pool: &str,
        loaded_models: &[String],
        max: u32,
        wait: Duration,
    ) -> Result<Vec<TaskRecord>> {
        Self::check_protocol(protocol_version)?;
        let pool = worker_pool(pool)?;
        self.workers
            .seen(worker_id, Some(pool), self.clock.now_ms());
        self.announce(worker_id, Some(pool.to_string()), None);
        let deadline = tokio::time::Instant::now() + wait.min(self.config.max_lease_wait);
        let cached = self
            .workers
            .get(worker_id)
            .map(|w| w.cached_models)
            .unwrap_or_default();
        loop {
            // Register interest before claiming so a submit between the claim and the wait
            // is not missed.
            let notified = self.work_ready.notified();
            let now = self.clock.now_ms();
            let tasks = self
                .scheduler
                .claim(
                    &*self.store,
                    worker_id,
                    pool,
                    loaded_models,
                    &cached,
                    max.max(1),
                    self.lease_ms(),
                    now,
                )
                .await?;
            if !tasks.is_empty() {
                self.workers.leased(worker_id, tasks.len() as u32);
                let now = self.clock.now_ms();
                for t in &tasks {
                    self.metrics.leased(pool, now - t.scheduled_at);
                    tracing::info!(task_id = t.id, job_id = %t.job_id, worker = worker_id, attempt = t.attempt, "task leased");
                    self.events
                        .publish(Event::JobChanged(Some(t.job_id.clone())));
                }
                return Ok(tasks);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let nap = (deadline - now).min(LEASE_POLL);
            let _ = tokio::time::timeout(nap, notified).await;
        }
    }

    /// Records the models a worker reports in memory and on disk (every heartbeat and lease
    /// carries them).
    pub fn worker_models(&self, worker_id: &str, loaded: &[String], cached: &[String]) {
        self.workers.models(worker_id, loaded, cached);
    }

    /// Extends the worker's leases; returns the tasks it no longer holds and the new expiry.
    pub async fn heartbeat(
        &self,
        protocol_version: u32,
        worker_id: &str,
        task_ids: &[i64],
    ) -> Result<(Vec<i64>, i64)> {
        Self::check_protocol(protocol_version)?;
        self.touch_worker(worker_id);
        let now = self.clock.now_ms();
        self.scheduler.touch(worker_id, now);
        let lost = self
            .store
            .heartbeat(worker_id, task_ids, self.lease_ms(), now)
            .await?;
        let holding = (task_ids.len() - lost.len()) as u32;
        self.workers.holding(worker_id, holding);
        self.announce(worker_id, None, Some(holding));
        Ok((lost, now + self.lease_ms()))
    }

    pub fn progress(&self, progress: Vec<TaskProgress>) {
        for p in progress {
            self.events.publish(Event::Progress(p));
        }
    }

    pub async fn complete(
        &self,
        worker_id: &str,
        task_id: i64,
        output: TaskOutput,
        report: Completion,
    ) -> Result<()> {
        self.touch_worker(worker_id);
        let recorded = self
            .completions
            .complete(Completed {
                task_id,
                worker: worker_id.to_string(),
                output,
            })
            .await?;
        if !recorded {
            return Err(StoreError::LeaseLost {
                task_id,
                worker: worker_id.to_string(),
            }
            .into());
        }
        self.workers.released(worker_id);
        self.grids.poke();
        let pool = self.workers.pool_of(worker_id);
        self.metrics
            .completed(pool.as_deref().unwrap_or("unknown"), &report);
        self.scheduler
            .observe(pool.as_deref().unwrap_or("unknown"), &report);
        tracing::info!(task_id, worker = worker_id, "task completed");
        self.events.publish(Event::JobChanged(None));
        Ok(())
    }

    /// Records several completions of one worker in one commit (see `completions`); returns
    /// the ids whose lease the worker no longer held, which were not recorded.
    pub async fn complete_many(
        &self,
        worker_id: &str,
        done: Vec<(i64, TaskOutput, Completion)>,
    ) -> Result<Vec<i64>> {
        self.touch_worker(worker_id);
        let (completed, reports): (Vec<Completed>, Vec<Completion>) = done
            .into_iter()
            .map(|(task_id, output, report)| {
                let c = Completed {
                    task_id,
                    worker: worker_id.to_string(),
                    output,
                };
                (c, report)
            })
            .unzip();
        let recorded = self.completions.complete_many(completed.clone()).await?;
        let pool = self.workers.pool_of(worker_id);
        let mut lost = Vec::new();
        for ((c, report), ok) in completed.iter().zip(&reports).zip(recorded) {
            if !ok {
                lost.push(c.task_id);
                continue;
            }
            self.workers.released(worker_id);
            self.metrics
                .completed(pool.as_deref().unwrap_or("unknown"), report);
            self.scheduler
                .observe(pool.as_deref().unwrap_or("unknown"), report);
            tracing::info!(task_id = c.task_id, worker = worker_id, "task completed");
        }
        if lost.len() < completed.len() {
            self.grids.poke();
            self.events.publish(Event::JobChanged(None));
        }
        Ok(lost)
    }

    pub async fn fail(
        &self,
        worker_id: &str,
        task_id: i64,
        reason: &str,
        reason_code: &str,
        retryable: bool,
    ) -> Result<TaskState> {
        self.touch_worker(worker_id);
        let state = self
            .store
            .fail(
                task_id,
                worker_id,
                reason,
                retryable,
                &self.config.retry,
                self.clock.now_ms(),
            )
            .await?;
        self.workers.released(worker_id);
        self.metrics.failed(reason_code, state);
        tracing::warn!(
            task_id,
            worker = worker_id,
            retryable,
            state = state.as_str(),
            reason,
            "task failed"
        );
        self.events.publish(Event::JobChanged(None));
        if state == TaskState::Retryable {
            self.work_ready.notify_waiters();
        }
        Ok(state)
    }

    /// Gives tasks a stopping worker will not finish back to the queue, attempt unused.
    pub async fn release(
        &self,
        worker_id: &str,
        task_ids: &[i64],
        reason: &str,
    ) -> Result<Vec<i64>> {
        self.touch_worker(worker_id);
        let released = self
            .store
            .release(worker_id, task_ids, self.clock.now_ms())
            .await?;
        for _ in &released {
            self.workers.released(worker_id);
        }
        if !released.is_empty() {
            tracing::info!(worker = worker_id, ?released, reason, "tasks released");
            self.events.publish(Event::JobChanged(None));
            self.work_ready.notify_waiters();
        }
        Ok(released)
    }

    /// One rescuer pass: expired leases go back to the queue (or are discarded). `None` when
    /// another replica leads the rescuer and this one did nothing.
    pub async fn rescue_once(&self) -> Result<Option<crate::store::RescueReport>> {
        if !self.store.lead_rescue().await? {
            return Ok(None);
        }
        let report = self
            .store
            .rescue_expired(&self.config.retry, self.clock.now_ms())
            .await?;
        if !report.retried.is_empty() || !report.discarded.is_empty() {
            self.metrics
                .rescued(report.retried.len(), report.discarded.len());
            tracing::warn!(
                retried = ?report.retried,
                discarded = ?report.discarded,
                "rescued expired leases"
            );
            self.events.publish(Event::JobChanged(None));
            self.work_ready.notify_waiters();
        }
        Ok(Some(report))
    }

    /// Runs the rescuer until the coordinator shuts down.
    pub async fn rescue_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.rescue_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(err) = self.rescue_once().await {
                tracing::error!(error = %err, "rescuer pass failed; will retry");
            }
        }
    }
}

/// A worker's pool as it declared it: empty means the default pool; anything else must be a
/// valid pool name (it becomes a Kubernetes name and a URL path segment).
fn worker_pool(pool: &str) -> Result<&str> {
    if pool.is_empty() {
        return Ok(DEFAULT_POOL);
    }
    if !spec::is_pool_name(pool) {
        return Err(Error::InvalidArgument(format!(
            "worker pool {pool:?} is not a valid pool name ({})",
            spec::POOL_NAME_RULE
        )));
    }
    Ok(pool)
}
