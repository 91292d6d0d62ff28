//! SQLite implementation of `Store`: the embedded default for `sdfarm run` and single-node
//! coordinators.
//!
//! SQLite allows one writer at a time, so every write transaction starts with
//! `BEGIN IMMEDIATE`: it takes the write lock before reading, which serialises concurrent
//! claimers (no two can pick the same task) and avoids the busy-snapshot errors a deferred
//! transaction gets when it upgrades from reading to writing. (The heartbeat is a single
//! `UPDATE`, which SQLite already runs as a write from its first step.) Readers never wait
//! (WAL mode); writers wait up to the busy timeout.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Sqlite, Transaction};

use super::rows::{
    attempts_to_sql, jobs_from_rows, lease_expired_reason, params_json, queue_counts_from_rows,
    AfterFailure, JobCountRow, QueueCountRow, TaskRow,
};
use super::{
    JobRecord, Millis, NewJob, NewTask, QueueCount, RescueReport, Result, RetryPolicy, Store,
    StoreError, TaskOutput, TaskRecord, TaskState,
};

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a writer waits for another to commit before failing with "database is locked".
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Columns every task query returns, in `TaskRow`'s shape.
macro_rules! task_columns {
    () => {
        "id, job_id, image_index, priority, params, state, attempt, max_attempts, output_key, \
         lease_owner, completed_by, lease_expires_at, scheduled_at, sha256, infotext, errors, \
         finalized_at, pool"
    };
}

/// Selects the page of jobs in `page`, each joined with its per-state task counts.
macro_rules! jobs_with_counts {
    ($page:literal) => {
        concat!(
            "WITH page AS (",
            $page,
            ") \
             SELECT page.id, page.name, page.sweep, page.output_prefix, page.max_attempts, \
                    page.priority, page.cancelled, page.owner, page.paused, page.created_at, \
                    page.finished_at, \
                    c.state, c.n \
             FROM page \
             LEFT JOIN (SELECT job_id, state, count(*) AS n FROM tasks \
                        WHERE job_id IN (SELECT id FROM page) GROUP BY job_id, state) c \
                    ON c.job_id = page.id \
             ORDER BY page.created_at DESC, page.id DESC"
        )
    };
}

// After the column macros, which its queries use.
mod dataset;
mod fair;
mod provenance;

const GET_JOB: &str = jobs_with_counts!("SELECT * FROM jobs WHERE id = ?1");
const LIST_JOBS: &str =
    jobs_with_counts!("SELECT * FROM jobs ORDER BY created_at DESC, id DESC LIMIT ?1");

const INSERT_JOB: &str = "INSERT INTO jobs \
     (id, name, sweep, output_prefix, max_attempts, priority, created_at, finished_at, owner) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

const INSERT_TASK: &str = "INSERT INTO tasks \
     (job_id, image_index, priority, params, max_attempts, output_key, scheduled_at, pool, \
      owner, cell_key) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

const LIST_TASKS: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM tasks WHERE job_id = ?1 ORDER BY image_index"
);

/// `?1` is a JSON array of task ids: SQLite has no array parameters.
const HEARTBEAT: &str = "UPDATE tasks SET lease_expires_at = ?3 \
     WHERE id IN (SELECT value FROM json_each(?1)) AND lease_owner = ?2 AND state = 'running' \
     RETURNING id";

/// Undoes the claim: the attempt is given back, the task is claimable again at once.
const RELEASE: &str = "UPDATE tasks \
     SET state = CASE WHEN attempt > 1 THEN 'retryable' ELSE 'available' END, \
         attempt = attempt - 1, scheduled_at = ?3, lease_owner = NULL, lease_expires_at = NULL \
     WHERE id IN (SELECT value FROM json_each(?1)) AND lease_owner = ?2 AND state = 'running' \
     RETURNING id";

const COMPLETE: &str = "UPDATE tasks \
     SET state = 'completed', sha256 = ?3, infotext = ?4, render_ms = ?5, finalized_at = ?6, \
         completed_by = lease_owner, lease_owner = NULL, lease_expires_at = NULL \
     WHERE id = ?1 AND lease_owner = ?2 AND state = 'running' \
     RETURNING job_id";

const LEASED_ATTEMPT: &str = "SELECT job_id, attempt, max_attempts FROM tasks \
     WHERE id = ?1 AND lease_owner = ?2 AND state = 'running'";

const RECORD_FAILURE: &str = "UPDATE tasks \
     SET state = ?2, errors = json_insert(errors, '$[#]', ?3), \
         scheduled_at = COALESCE(?4, scheduled_at), finalized_at = ?5, \
         lease_owner = NULL, lease_expires_at = NULL \
     WHERE id = ?1";

const EXPIRED_TASKS: &str = "SELECT id, job_id, lease_owner, attempt, max_attempts FROM tasks \
     WHERE state = 'running' AND lease_expires_at < ?1 ORDER BY id";

/// Correct because writes are serialised: no other task of the job can change between the
/// finalizing write and this check.
const FINISH_JOB_IF_DONE: &str = "UPDATE jobs SET finished_at = ?2 \
     WHERE id = ?1 AND finished_at IS NULL \
       AND NOT EXISTS (SELECT 1 FROM tasks WHERE job_id = ?1 AND finalized_at IS NULL)";

/// A finished job stays as it finished: cancelling it changes nothing.
const CANCEL_JOB: &str = "UPDATE jobs SET cancelled = 1, finished_at = ?2 \
     WHERE id = ?1 AND finished_at IS NULL RETURNING id";
const CANCEL_TASKS: &str = "UPDATE tasks SET state = 'cancelled', finalized_at = ?2, \
         lease_owner = NULL, lease_expires_at = NULL \
     WHERE job_id = ?1 AND finalized_at IS NULL";

/// Unfinished rows only (`tasks_unfinished_idx`): finished history never slows a scrape.
/// Waiting tasks of paused jobs are left out: no worker should start for them.
const QUEUE_COUNTS: &str =
    "SELECT pool, json_extract(params, '$.model') AS model, state, count(*) AS n \
     FROM tasks WHERE finalized_at IS NULL AND (state = 'running' OR paused = 0) \
     GROUP BY pool, model, state ORDER BY pool, model, state";

const JOB_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1)";

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens `url` (`sqlite://path/to/file.db`, `sqlite:file.db` or `sqlite::memory:`),
    /// creating the file if missing, and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let (pool, options) = if in_memory {
            // An in-memory database lives exactly as long as its connections; one connection
            // kept open for the pool's lifetime is the whole store.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
            (pool, options)
        } else {
            // `create_if_missing` makes the file, not its folder.
            if let Some(dir) = options.get_filename().parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
                }
            }
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal);
            (SqlitePoolOptions::new().max_connections(8), options)
        };
        Self::from_pool(pool.connect_with(options).await?).await
    }

    /// Uses an existing pool, running any pending migrations.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self> {
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn finish_job_if_done(
        tx: &mut Transaction<'static, Sqlite>,
        job_id: &str,
        now: Millis,
    ) -> Result<()> {
        sqlx::query(FINISH_JOB_IF_DONE)
            .bind(job_id)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn add_owner(tx: &mut Transaction<'static, Sqlite>, job: &NewJob) -> Result<()> {
        sqlx::query(fair::ADD_OWNER)
            .bind(&job.pool)
            .bind(&job.owner)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn record_failure(
        tx: &mut Transaction<'static, Sqlite>,
        task_id: i64,
        outcome: AfterFailure,
        reason: &str,
        now: Millis,
    ) -> Result<()> {
        sqlx::query(RECORD_FAILURE)
            .bind(task_id)
            .bind(outcome.state().as_str())
            .bind(reason)
            .bind(outcome.scheduled_at())
            .bind(outcome.finalized_at(now))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
    #[tracing::instrument(skip_all, fields(job_id = %job.id, tasks = tasks.len()))]
    async fn create_job(&self, job: &NewJob, tasks: &[NewTask], now: Millis) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // A job with nothing to render is finished the moment it exists.
        let finished_at = tasks.is_empty().then_some(now);
        sqlx::query(INSERT_JOB)
            .bind(&job.id)
            .bind(&job.name)
            .bind(&job.sweep)
            .bind(&job.output_prefix)
            .bind(attempts_to_sql(job.max_attempts))
            .bind(job.priority)
            .bind(now)
            .bind(finished_at)
            .bind(&job.owner)
            .execute(&mut *tx)
            .await?;
        for task in tasks {
            sqlx::query(INSERT_TASK)
                .bind(&job.id)
                .bind(i64::from(task.image_index))
                .bind(job.priority)
                .bind(params_json(&task.params))
                .bind(attempts_to_sql(job.max_attempts))
                .bind(&task.output_key)
                .bind(now)
                .bind(&job.pool)
                .bind(&job.owner)
                .bind(&task.cell_key)
                .execute(&mut *tx)
                .await?;
        }
        Self::add_owner(&mut tx, job).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_job_streaming(
        &self,
        job: &NewJob,
        tasks: &mut (dyn Iterator<Item = NewTask> + Send),
        now: Millis,
    ) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        sqlx::query(INSERT_JOB)
            .bind(&job.id)
            .bind(&job.name)
            .bind(&job.sweep)
            .bind(&job.output_prefix)
            .bind(attempts_to_sql(job.max_attempts))
            .bind(job.priority)
            .bind(now)
            .bind(None::<Millis>)
            .bind(&job.owner)
            .execute(&mut *tx)
            .await?;
        // One prepared statement per row inside one transaction: SQLite's fastest path,
        // and nothing but the current task is held.
        let mut stored = 0u64;
        for task in tasks {
            stored += 1;
            sqlx::query(INSERT_TASK)
                .bind(&job.id)
                .bind(i64::from(task.image_index))
                .bind(job.priority)
                .bind(super::copy::compact_params_json(&task.params))
                .bind(attempts_to_sql(job.max_attempts))
                .bind(&task.output_key)
                .bind(now)
                .bind(&job.pool)
                .bind(&job.owner)
                .bind(&task.cell_key)
                .execute(&mut *tx)
                .await?;
        }
        Self::add_owner(&mut tx, job).await?;
        if stored == 0 {
            sqlx::query("UPDATE jobs SET finished_at = ?2 WHERE id = ?1")
                .bind(&job.id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn dataset_cells(&self, job_id: &str) -> Result<Option<super::DatasetCells>> {
        dataset::cells(self, job_id).await
    }

    #[tracing::instrument(skip_all, fields(job_id = %job.id))]
    async fn extend_job_streaming(
        &self,
        job: &NewJob,
        tasks: &mut (dyn Iterator<Item = NewTask> + Send),
        now: Millis,
    ) -> Result<u64> {
        dataset::extend(self, job, tasks, now).await
    }

    async fn get_job(&self, id: &str) -> Result<JobRecord> {
        let rows: Vec<JobCountRow> = sqlx::query_as(GET_JOB)
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        jobs_from_rows(rows)
            .pop()
            .ok_or_else(|| StoreError::JobNotFound(id.to_string()))
    }

    async fn list_jobs(&self, limit: u32) -> Result<Vec<JobRecord>> {
        let rows: Vec<JobCountRow> = sqlx::query_as(LIST_JOBS)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(jobs_from_rows(rows))
    }

    async fn list_tasks(&self, job_id: &str) -> Result<Vec<TaskRecord>> {
        let rows: Vec<TaskRow> = sqlx::query_as(LIST_TASKS)
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?;
        if rows.is_empty() {
            let exists: bool = sqlx::query_scalar(JOB_EXISTS)
                .bind(job_id)
                .fetch_one(&self.pool)
                .await?;
            if !exists {
                return Err(StoreError::JobNotFound(job_id.to_string()));
            }
        }
        rows.into_iter().map(TaskRow::into_record).collect()
    }

    #[tracing::instrument(skip(self))]
    async fn claim(
        &self,
        worker: &str,
        pool: &str,
        max: u32,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Vec<TaskRecord>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.fair_claim(worker, pool, max, lease_ms, now).await
    }

    async fn claim_for_models(
        &self,
        worker: &str,
        pool: &str,
        models: &[String],
        max: u32,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Vec<TaskRecord>> {
        if max == 0 || models.is_empty() {
            return Ok(Vec::new());
        }
        self.fair_claim_for_models(worker, pool, models, max, lease_ms, now)
            .await
    }

    async fn heartbeat(
        &self,
        worker: &str,
        task_ids: &[i64],
        lease_ms: i64,
        now: Millis,
    ) -> Result<Vec<i64>> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(task_ids).expect("a list of integers serializes");
        let held: Vec<i64> = sqlx::query_scalar(HEARTBEAT)
            .bind(ids)
            .bind(worker)
            .bind(now.saturating_add(lease_ms))
            .fetch_all(&self.pool)
            .await?;
        Ok(task_ids
            .iter()
            .copied()
            .filter(|id| !held.contains(id))
            .collect())
    }

    async fn release(&self, worker: &str, task_ids: &[i64], now: Millis) -> Result<Vec<i64>> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = serde_json::to_string(task_ids).expect("a list of integers serializes");
        let mut released: Vec<i64> = sqlx::query_scalar(RELEASE)
            .bind(ids)
            .bind(worker)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        released.sort_unstable();
        Ok(released)
    }

    #[tracing::instrument(skip(self, output))]
    async fn complete(
        &self,
        task_id: i64,
        worker: &str,
        output: &TaskOutput,
        now: Millis,
    ) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let job_id: Option<String> = sqlx::query_scalar(COMPLETE)
            .bind(task_id)
            .bind(worker)
            .bind(&output.sha256)
            .bind(&output.infotext)
            .bind(i64::try_from(output.render_ms).unwrap_or(i64::MAX))
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(job_id) = job_id else {
            return Err(StoreError::LeaseLost {
                task_id,
                worker: worker.to_string(),
            });
        };
        Self::finish_job_if_done(&mut tx, &job_id, now).await?;
        tx.commit().await?;
        Ok(())
    }

    #[tracing::instrument(skip(self, policy))]
    async fn fail(
        &self,
        task_id: i64,
        worker: &str,
        reason: &str,
        retryable: bool,
        policy: &RetryPolicy,
        now: Millis,
    ) -> Result<TaskState> {
        let mut tx = self.begin_write().await?;
        let leased: Option<(String, i32, i32)> = sqlx::query_as(LEASED_ATTEMPT)
            .bind(task_id)
            .bind(worker)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((job_id, attempt, max_attempts)) = leased else {
            return Err(StoreError::LeaseLost {
                task_id,
                worker: worker.to_string(),
            });
        };
        let outcome = AfterFailure::decide(attempt, max_attempts, retryable, policy, now);
        Self::record_failure(&mut tx, task_id, outcome, reason, now).await?;
        if outcome == AfterFailure::Discard {
            Self::finish_job_if_done(&mut tx, &job_id, now).await?;
        }
        tx.commit().await?;
        Ok(outcome.state())
    }

    #[tracing::instrument(skip(self, policy))]
    async fn rescue_expired(&self, policy: &RetryPolicy, now: Millis) -> Result<RescueReport> {
        let mut tx = self.begin_write().await?;
        let expired: Vec<(i64, String, String, i32, i32)> = sqlx::query_as(EXPIRED_TASKS)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        let mut report = RescueReport::default();
        let mut finished_jobs: Vec<String> = Vec::new();
        for (task_id, job_id, owner, attempt, max_attempts) in expired {
            let outcome = AfterFailure::decide(attempt, max_attempts, true, policy, now);
            let reason = lease_expired_reason(&owner, attempt);
            Self::record_failure(&mut tx, task_id, outcome, &reason, now).await?;
            match outcome {
                AfterFailure::Retry { .. } => report.retried.push(task_id),
                AfterFailure::Discard => {
                    report.discarded.push(task_id);
                    if !finished_jobs.contains(&job_id) {
                        finished_jobs.push(job_id);
                    }
                }
            }
        }
        for job_id in &finished_jobs {
            Self::finish_job_if_done(&mut tx, job_id, now).await?;
        }
        tx.commit().await?;
        if !report.retried.is_empty() || !report.discarded.is_empty() {
            tracing::info!(
                retried = report.retried.len(),
                discarded = report.discarded.len(),
                "rescued expired leases"
            );
        }
        Ok(report)
    }

    #[tracing::instrument(skip_all, fields(job_id = %id))]
    async fn cancel_job(&self, id: &str, now: Millis) -> Result<JobRecord> {
        let mut tx = self.begin_write().await?;
        let cancelled: Option<String> = sqlx::query_scalar(CANCEL_JOB)
            .bind(id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        if cancelled.is_some() {
            sqlx::query(CANCEL_TASKS)
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        // Also the JobNotFound check when nothing was updated.
        self.get_job(id).await
    }

    async fn set_paused(&self, id: &str, paused: bool, _now: Millis) -> Result<JobRecord> {
        self.pause(id, paused).await
    }

    async fn retry_job(&self, id: &str, now: Millis) -> Result<(u64, JobRecord)> {
        self.retry(id, now).await
    }

    async fn completed_tasks(
        &self,
        job_id: &str,
        after: Option<u32>,
        limit: u32,
    ) -> Result<Vec<super::CompletedTask>> {
        self.completed_page(job_id, after, limit).await
    }

    async fn queue_counts(&self) -> Result<Vec<QueueCount>> {
        let rows: Vec<QueueCountRow> = sqlx::query_as(QUEUE_COUNTS).fetch_all(&self.pool).await?;
        Ok(queue_counts_from_rows(rows))
    }
}
