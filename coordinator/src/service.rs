//! The coordinator's behaviour: submitting sweeps, leasing tasks to workers (long-poll),
//! recording results, and rescuing expired leases. The gRPC layer only converts to and from
//! this module.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sdfarm_proto::v1::TaskProgress;
use sdfarm_proto::PROTOCOL_VERSION;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::events::{Event, Events};
use crate::expand;
use crate::spec::{self, SweepFormat};
use crate::store::{
    JobRecord, NewJob, NewTask, RetryPolicy, Store, TaskOutput, TaskRecord, TaskState,
};

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
    /// Upper bound on a worker's long-poll, whatever it asks for.
    pub max_lease_wait: Duration,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            store_url: "file:///tmp/sdfarm-out".into(),
            lease: Duration::from_secs(30),
            rescue_interval: Duration::from_secs(2),
            retry: RetryPolicy::default(),
            max_images: 10_000_000,
            max_lease_wait: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub name: String,
    pub registered_at: i64,
    pub last_seen: i64,
}

pub struct Coordinator {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: CoordinatorConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) events: Events,
    /// Wakes long-polling leases when work may have appeared (submit, retry, rescue).
    work_ready: Notify,
    workers: Mutex<HashMap<String, WorkerInfo>>,
}

/// How often a waiting lease re-checks the store even without a wake-up: work can appear
/// through another replica, or a retry backoff can run out.
const LEASE_POLL: Duration = Duration::from_millis(500);

impl Coordinator {
    pub fn new(store: Arc<dyn Store>, config: CoordinatorConfig, clock: Arc<dyn Clock>) -> Self {
        Coordinator {
            store,
            config,
            clock,
            events: Events::default(),
            work_ready: Notify::new(),
            workers: Mutex::new(HashMap::new()),
        }
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn lease_ms(&self) -> i64 {
        self.config.lease.as_millis() as i64
    }

    /// Parses, expands and stores a sweep as one job. Nothing is stored if any part fails.
    pub async fn submit(&self, sweep: &str, format: &str, name: &str) -> Result<JobRecord> {
        let format = if format.is_empty() {
            SweepFormat::Toml
        } else {
            SweepFormat::parse(format).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "sweep format {format:?} is not known (accepted: \"toml\", \"json\")"
                ))
            })?
        };
        let spec = spec::parse_sweep(sweep, format)?;
        let count = expand::image_count(&spec);
        if count > self.config.max_images {
            return Err(Error::TooManyImages {
                count,
                limit: self.config.max_images,
            });
        }
        let seed = expand::resolve_seed(spec.base.seed);
        let id = uuid::Uuid::new_v4().to_string();
        let name = spec
            .name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| name.to_string());
        let tasks: Vec<NewTask> = expand::expand(&spec, seed)
            .map(|img| NewTask {
                output_key: expand::output_key(&id, img.image_index, img.params.seed),
                image_index: img.image_index,
                params: img.params,
            })
            .collect();
        let job = NewJob {
            id: id.clone(),
            name,
            sweep: sweep.to_string(),
            output_prefix: id.clone(),
            max_attempts: spec.max_attempts,
            priority: spec.priority,
        };
        self.store
            .create_job(&job, &tasks, self.clock.now_ms())
            .await?;
        tracing::info!(job_id = %id, images = tasks.len(), "job submitted");
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

    /// Registers a worker and gives it a unique id for its leases.
    pub fn register(&self, protocol_version: u32, name: &str) -> Result<String> {
        Self::check_protocol(protocol_version)?;
        let name = if name.is_empty() { "worker" } else { name };
        let id = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let now = self.clock.now_ms();
        self.workers.lock().unwrap().insert(
            id.clone(),
            WorkerInfo {
                name: name.to_string(),
                registered_at: now,
                last_seen: now,
            },
        );
        tracing::info!(worker = %id, "worker registered");
        Ok(id)
    }

    fn touch_worker(&self, worker_id: &str) {
        if let Some(w) = self.workers.lock().unwrap().get_mut(worker_id) {
            w.last_seen = self.clock.now_ms();
        }
    }

    /// Leases up to `max` tasks, waiting up to `wait` for work to appear.
    pub async fn lease(
        &self,
        protocol_version: u32,
        worker_id: &str,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<TaskRecord>> {
        Self::check_protocol(protocol_version)?;
        self.touch_worker(worker_id);
        let deadline = tokio::time::Instant::now() + wait.min(self.config.max_lease_wait);
        loop {
            // Register interest before claiming so a submit between the claim and the wait
            // is not missed.
            let notified = self.work_ready.notified();
            let tasks = self
                .store
                .claim(worker_id, max.max(1), self.lease_ms(), self.clock.now_ms())
                .await?;
            if !tasks.is_empty() {
                for t in &tasks {
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
        let lost = self
            .store
            .heartbeat(worker_id, task_ids, self.lease_ms(), now)
            .await?;
        Ok((lost, now + self.lease_ms()))
    }

    pub fn progress(&self, progress: Vec<TaskProgress>) {
        for p in progress {
            self.events.publish(Event::Progress(p));
        }
    }

    pub async fn complete(&self, worker_id: &str, task_id: i64, output: TaskOutput) -> Result<()> {
        self.touch_worker(worker_id);
        self.store
            .complete(task_id, worker_id, &output, self.clock.now_ms())
            .await?;
        tracing::info!(task_id, worker = worker_id, "task completed");
        self.events.publish(Event::JobChanged(None));
        Ok(())
    }

    pub async fn fail(
        &self,
        worker_id: &str,
        task_id: i64,
        reason: &str,
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
        tracing::warn!(task_id, worker = worker_id, retryable, state = state.as_str(), reason, "task failed");
        self.events.publish(Event::JobChanged(None));
        if state == TaskState::Retryable {
            self.work_ready.notify_waiters();
        }
        Ok(state)
    }

    /// One rescuer pass: expired leases go back to the queue (or are discarded).
    pub async fn rescue_once(&self) -> Result<()> {
        let report = self
            .store
            .rescue_expired(&self.config.retry, self.clock.now_ms())
            .await?;
        if !report.retried.is_empty() || !report.discarded.is_empty() {
            tracing::warn!(
                retried = ?report.retried,
                discarded = ?report.discarded,
                "rescued expired leases"
            );
            self.events.publish(Event::JobChanged(None));
            self.work_ready.notify_waiters();
        }
        Ok(())
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
