//! The durable queue: jobs, their tasks, leases and retries. `Store` is implemented for
//! Postgres (production) and SQLite (the embedded default); one conformance suite runs
//! against both so they cannot drift apart.

use std::sync::Arc;

use async_trait::async_trait;
use sdfarm_proto::RenderParams;

#[cfg(test)]
mod conformance;
mod copy;
mod delta;
mod postgres;
mod provenance;
mod rows;
mod sqlite;

pub use postgres::PostgresStore;
pub use provenance::CompletedTask;
pub use sqlite::SqliteStore;

/// Opens the store named by `url` and brings its schema up to date: `postgres://…` (or
/// `postgresql://…`) for Postgres, `sqlite:…` (`sqlite://path/to/file.db`, `sqlite::memory:`)
/// for SQLite, creating the file if it is missing.
pub async fn open_store(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_string()))
    }
}

/// The pool of workers that declare none and of sweeps that name none.
pub const DEFAULT_POOL: &str = "default";

/// Milliseconds since the Unix epoch. Every store method takes `now` from the caller so
/// tests control time (the coordinator passes its clock).
pub type Millis = i64;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    JobNotFound(String),
    /// Completion or failure from a worker that no longer holds the task's lease
    /// (it expired and was rescued, or the job was cancelled). Never treated as success.
    #[error("task {task_id} is not leased to worker {worker} any more")]
    LeaseLost { task_id: i64, worker: String },
    #[error("stored data for task {task_id} is unreadable: {reason}")]
    Corrupt { task_id: i64, reason: String },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database url {0:?}: expected postgres://… or sqlite:…")]
    UnsupportedUrl(String),
}

/// Task states, in the spirit of River's: a task is `available` until leased, `running`
/// while a worker holds its lease, `retryable` (waiting out a backoff) after a failed attempt,
/// and finally `completed`, `cancelled` or `discarded` (attempts exhausted or not retryable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    Available,
    Running,
    Retryable,
    Completed,
    Cancelled,
    Discarded,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Available => "available",
            TaskState::Running => "running",
            TaskState::Retryable => "retryable",
            TaskState::Completed => "completed",
            TaskState::Cancelled => "cancelled",
            TaskState::Discarded => "discarded",
        }
    }

    pub fn parse(s: &str) -> Option<TaskState> {
        Some(match s {
            "available" => TaskState::Available,
            "running" => TaskState::Running,
            "retryable" => TaskState::Retryable,
            "completed" => TaskState::Completed,
            "cancelled" => TaskState::Cancelled,
            "discarded" => TaskState::Discarded,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Cancelled | TaskState::Discarded
        )
    }
}

/// A job as submitted: its tasks are inserted in the same transaction.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub name: String,
    /// The sweep file as submitted, kept so a job can be re-planned or audited.
    pub sweep: String,
    /// Object-store prefix under which the job's images are written.
    pub output_prefix: String,
    /// Attempts before a task is discarded (the first run counts as attempt 1).
    pub max_attempts: u32,
    pub priority: i32,
    /// Worker pool whose workers may render the job's tasks.
    pub pool: String,
    /// Who submitted the job: leases of equal priority go round robin across owners.
    pub owner: String,
}

/// The owner of jobs submitted without one (no authentication and no name given).
pub const ANONYMOUS_OWNER: &str = "anonymous";

#[derive(Debug, Clone)]
pub struct NewTask {
    pub image_index: u32,
    pub params: RenderParams,
    pub output_key: String,
    /// Dataset jobs: the cell key (hex, see `crate::dataset`); a job holds each key once.
    /// `None` for other jobs, whose cells may repeat.
    pub cell_key: Option<String>,
}

/// What a dataset job already holds: the keys of its cells and the next free image index.
#[derive(Debug, Clone, Default)]
pub struct DatasetCells {
    pub keys: std::collections::HashSet<crate::dataset::CellKey>,
    pub next_index: u32,
}

impl DatasetCells {
    /// Adds a cell key as a backend stores it (64 hex digits); anything else is corrupt data.
    fn add_stored_key(&mut self, text: &str, job_id: &str) -> Result<()> {
        let key = crate::dataset::parse_key(text).ok_or_else(|| StoreError::Corrupt {
            task_id: -1,
            reason: format!("cell key {text:?} of job {job_id} is not 64 hex digits"),
        })?;
        self.keys.insert(key);
        Ok(())
    }

    /// Sets the next free image index from the stored one (saturating at `u32::MAX`).
    fn set_next_index(&mut self, next: i64) {
        self.next_index = u32::try_from(next).unwrap_or(u32::MAX);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskCounts {
    pub total: u64,
    pub available: u64,
    pub running: u64,
    pub retryable: u64,
    pub completed: u64,
    pub cancelled: u64,
    pub discarded: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    /// Unfinished and paused: waiting tasks are not leased; running ones finish.
    Paused,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: String,
    pub name: String,
    pub sweep: String,
    pub output_prefix: String,
    pub max_attempts: u32,
    pub priority: i32,
    pub cancelled: bool,
    pub owner: String,
    pub paused: bool,
    pub created_at: Millis,
    /// Set when the last task reaches a final state.
    pub finished_at: Option<Millis>,
    pub counts: TaskCounts,
}

impl JobRecord {
    /// The job's state follows from its task counts; it is never stored separately so it
    /// cannot disagree with them.
    pub fn state(&self) -> JobState {
        // Paused only while unfinished: a paused job whose running tasks complete the last
        // images has succeeded.
        let c = &self.counts;
        if self.cancelled {
            JobState::Cancelled
        } else if c.completed == c.total {
            JobState::Succeeded
        } else if c.available + c.running + c.retryable == 0 {
            JobState::Failed
        } else if self.paused {
            JobState::Paused
        } else {
            JobState::Running
        }
    }
}

#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub id: i64,
    pub job_id: String,
    pub image_index: u32,
    pub params: RenderParams,
    pub state: TaskState,
    /// Attempts started so far (incremented by each claim).
    pub attempt: u32,
    pub max_attempts: u32,
    pub output_key: String,
    pub lease_owner: Option<String>,
    /// The worker whose completion was recorded (the lease owner is cleared then); `None`
    /// until the task completes.
    pub completed_by: Option<String>,
    pub lease_expires_at: Option<Millis>,
    /// When a retryable task may be claimed again.
    pub scheduled_at: Millis,
    pub sha256: Option<String>,
    pub infotext: Option<String>,
    /// One reason per failed attempt, oldest first.
    pub errors: Vec<String>,
    pub finalized_at: Option<Millis>,
    /// The worker pool the task may be leased to.
    pub pool: String,
}

/// Unfinished tasks of one (pool, model, state): what the metrics and the scaling signal
/// are computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCount {
    pub pool: String,
    pub model: String,
    /// `Available`, `Running` or `Retryable`.
    pub state: TaskState,
    pub count: u64,
}

/// What a worker reports when a task's image is safely in object storage.
#[derive(Debug, Clone)]
pub struct TaskOutput {
    pub sha256: String,
    pub infotext: String,
    pub render_ms: u64,
}

/// One task's completion inside a group (see [`Store::complete_many`]).
#[derive(Debug, Clone)]
pub struct Completed {
    pub task_id: i64,
    pub worker: String,
    pub output: TaskOutput,
}

/// Polynomial backoff with jitter between attempts: `base * attempt^exponent`, capped,
/// then spread by ±`jitter` so a burst of failures does not return all at once.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub base_ms: i64,
    pub exponent: u32,
    pub max_ms: i64,
    /// Fraction of the delay used as jitter (0.0 = deterministic).
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_ms: 1_000,
            exponent: 2,
            max_ms: 10 * 60 * 1_000,
            jitter: 0.1,
        }
    }
}

impl RetryPolicy {
    /// Delay before the next attempt after `attempt` attempts have failed (attempt >= 1).
    pub fn delay_ms(&self, attempt: u32) -> i64 {
        let raw = (self.base_ms as f64) * (attempt.max(1) as f64).powi(self.exponent as i32);
        let capped = raw.min(self.max_ms as f64);
        let spread = if self.jitter > 0.0 {
            capped * self.jitter * (rand::random::<f64>() * 2.0 - 1.0)
        } else {
            0.0
        };
        (capped + spread).max(0.0) as i64
    }
}

/// Tasks the rescuer handled in one pass.
#[derive(Debug, Clone, Default)]
pub struct RescueReport {
    /// Returned to the queue (state `retryable`) with a backoff.
    pub retried: Vec<i64>,
    /// Out of attempts: discarded with the reason recorded.
    pub discarded: Vec<i64>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts the job and all its tasks atomically: either the whole sweep is stored or
    /// nothing is.
    async fn create_job(&self, job: &NewJob, tasks: &[NewTask], now: Millis) -> Result<()>;

    /// `create_job` for sweeps too large to hold in memory: tasks are drawn from `tasks` and
    /// written in batches inside one transaction, so memory stays bounded and a failure
    /// stores nothing. Returns how many tasks were stored.
    async fn create_job_streaming(
        &self,
        job: &NewJob,
        tasks: &mut (dyn Iterator<Item = NewTask> + Send),
        now: Millis,
    ) -> Result<u64>;

    /// The cell keys a dataset job holds and its next free image index; `None` when the job
    /// does not exist. Keys are streamed in, so memory is the key set itself.
    async fn dataset_cells(&self, job_id: &str) -> Result<Option<DatasetCells>>;

    /// Adds tasks to an existing job in one transaction (streamed as in
    /// `create_job_streaming`), updates its stored sweep text, and, when any task is added,
    /// makes a finished or cancelled job unfinished again. A cell key the job already holds
    /// fails the whole call and stores nothing. Returns how many tasks were added.
    async fn extend_job_streaming(
        &self,
        job: &NewJob,
        tasks: &mut (dyn Iterator<Item = NewTask> + Send),
        now: Millis,
    ) -> Result<u64>;

    async fn get_job(&self, id: &str) -> Result<JobRecord>;

    /// Newest first.
    async fn list_jobs(&self, limit: u32) -> Result<Vec<JobRecord>>;

    /// In image order.
    async fn list_tasks(&self, job_id: &str) -> Result<Vec<TaskRecord>>;

    /// Leases up to `max` claimable tasks of `pool` (available, or retryable whose
    /// `scheduled_at` has passed, of jobs neither cancelled nor paused) to `worker` until
    /// `now + lease_ms`. Fair across owners: of the owners whose best claimable task has the
    /// highest priority, the one served longest ago gets this lease, filled from its tasks
    /// highest priority first, then oldest; serving it moves it to the back. Each claim
    /// increments the task's attempt. Two concurrent callers never receive the same task;
    /// tasks of other pools are never leased.
    async fn claim(
        &self,
        worker: &str,
        pool: &str,
        max: u32,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Vec<TaskRecord>>;

    /// Like `claim`, restricted to tasks whose model is one of `models` (those the worker
    /// holds in memory) and to the highest priority any claimable task of the pool has: a
    /// model load costs more than dozens of images, but never a higher priority's turn.
    /// Fair across owners as `claim` is, among the owners with such tasks.
    /// Empty when no such task waits; the caller then claims normally.
    async fn claim_for_models(
        &self,
        worker: &str,
        pool: &str,
        models: &[String],
        max: u32,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Vec<TaskRecord>>;

    /// Extends the leases `worker` holds on `task_ids` to `now + lease_ms`. Returns the ids
    /// of tasks it no longer holds (expired and rescued, completed elsewhere, cancelled).
    async fn heartbeat(
        &self,
        worker: &str,
        task_ids: &[i64],
        lease_ms: i64,
        now: Millis,
    ) -> Result<Vec<i64>>;

    /// Returns tasks `worker` holds to the queue, claimable at once, giving back the attempt
    /// their claim used (a draining worker that will not finish them). Returns the ids
    /// released, sorted; tasks the worker no longer holds are left alone.
    async fn release(&self, worker: &str, task_ids: &[i64], now: Millis) -> Result<Vec<i64>>;

    /// Marks a running task completed. Fenced on the lease owner: a worker that lost the
    /// lease gets `StoreError::LeaseLost` and nothing changes.
    async fn complete(
        &self,
        task_id: i64,
        worker: &str,
        output: &TaskOutput,
        now: Millis,
    ) -> Result<()>;

    /// `complete` for several tasks under one commit, so a busy farm pays one durable write
    /// per group of completions rather than one per image. Each entry is fenced on its own
    /// lease; the result holds, in input order, `true` for a recorded completion and `false`
    /// for a lost lease (a task id repeated in the group is recorded once, at its first entry).
    /// A database error fails the whole group. This default completes one task at a time
    /// (one commit each), for backends where grouping buys nothing.
    async fn complete_many(&self, done: &[Completed], now: Millis) -> Result<Vec<bool>> {
        let mut recorded = Vec::with_capacity(done.len());
        for d in done {
            match self.complete(d.task_id, &d.worker, &d.output, now).await {
                Ok(()) => recorded.push(true),
                Err(StoreError::LeaseLost { .. }) => recorded.push(false),
                Err(e) => return Err(e),
            }
        }
        Ok(recorded)
    }

    /// Records a failed attempt (fenced like `complete`). The task becomes `retryable` after a
    /// backoff, or `discarded` when it is not retryable or its attempts are used up.
    /// Returns the new state.
    async fn fail(
        &self,
        task_id: i64,
        worker: &str,
        reason: &str,
        retryable: bool,
        policy: &RetryPolicy,
        now: Millis,
    ) -> Result<TaskState>;

    /// Whether this replica should run the rescuer now. Among replicas on one database one
    /// leads at a time (Postgres: an advisory lock held by a session of the leader). Only to
    /// spare duplicate work: `rescue_expired` is safe to run concurrently. A single-process
    /// store always leads.
    async fn lead_rescue(&self) -> Result<bool> {
        Ok(true)
    }

    /// Returns running tasks whose lease expired before `now` to the queue with a backoff,
    /// or discards them when their attempts are used up, recording "lease expired" as the
    /// attempt's reason.
    async fn rescue_expired(&self, policy: &RetryPolicy, now: Millis) -> Result<RescueReport>;

    /// Cancels every task of the job that has not reached a final state and returns the job.
    /// A job that already finished is returned unchanged: its outcome stands.
    async fn cancel_job(&self, id: &str, now: Millis) -> Result<JobRecord>;

    /// Pauses (`paused = true`) or resumes a job: a paused job's waiting tasks are not
    /// leased (nor are its tasks that fail or are released while it is paused); tasks being
    /// rendered finish. A finished job is returned unchanged.
    async fn set_paused(&self, id: &str, paused: bool, now: Millis) -> Result<JobRecord>;

    /// Puts the job's discarded and cancelled tasks back in the queue with fresh attempts,
    /// keeping the reasons of their earlier attempts; a cancelled job is no longer cancelled
    /// and an ended job is unfinished again. Returns how many tasks were put back (0 leaves
    /// the job as it was) and the job.
    async fn retry_job(&self, id: &str, now: Millis) -> Result<(u64, JobRecord)>;

    /// The job's completed tasks whose image index is above `after` (from the first when
    /// `None`), in image order, at most `limit`: the job's manifest is read with it, one
    /// page at a time.
    async fn completed_tasks(
        &self,
        job_id: &str,
        after: Option<u32>,
        limit: u32,
    ) -> Result<Vec<CompletedTask>>;

    /// Counts of unfinished tasks (available, running, retryable) grouped by pool, model and
    /// state, ordered by those three. Read on every metrics scrape and scaling poll, so it
    /// only touches unfinished rows.
    async fn queue_counts(&self) -> Result<Vec<QueueCount>>;
}
