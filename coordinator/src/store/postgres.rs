//! Postgres implementation of `Store`: the production backend, shared by every coordinator
//! replica.
//!
//! Concurrency rests on row locks, taken in one order everywhere so replicas never deadlock:
//! the job row first (`FOR NO KEY UPDATE`, held by any write that may finish the job), then
//! task rows in id order. The claim never waits: it skips locked tasks (`SKIP LOCKED`), so
//! claimers on many replicas each get different tasks without blocking each other.
//! Finalizing writes of one job serialise on its row; each holds it for a few statements,
//! far less than an image takes to render.

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::delta::ParamsBase;
use super::rows::{
    attempts_to_sql, jobs_from_rows, lease_expired_reason, params_json, queue_counts_from_rows,
    AfterFailure, JobCountRow, QueueCountRow, TaskRow,
};
use super::{
    Completed, JobRecord, Millis, NewJob, NewTask, QueueCount, RescueReport, Result, RetryPolicy,
    Store, StoreError, TaskOutput, TaskRecord, TaskState,
};

mod counts;
mod dataset;
mod group;

pub(super) use counts::ModelCounts;

static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// A task's parameters as stored (its delta) and its job's base, which the reader lays the
/// delta under (see `store::delta`); the base is `NULL` for jobs that store full parameters.
/// `$base` selects the base; by default, per row from the task's job.
macro_rules! task_params {
    () => {
        task_params!("(SELECT j.base_params FROM jobs j WHERE j.id = tasks.job_id)")
    };
    ($base:literal) => {
        concat!("params, ", $base, " AS base_params")
    };
}

/// Columns every task query returns, in `TaskRow`'s shape.
macro_rules! task_columns {
    ($($base:literal)?) => {
        concat!(
            "id, job_id, image_index, priority, ",
            task_params!($($base)?),
            ", state, attempt, \
         max_attempts, output_key, lease_owner, completed_by, lease_expires_at, scheduled_at, \
         sha256, infotext, errors::text AS errors, finalized_at, pool"
        )
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
mod fair;
mod provenance;
mod worker_sql;
use worker_sql::RELEASE;

const GET_JOB: &str = jobs_with_counts!("SELECT * FROM jobs WHERE id = $1");
const LIST_JOBS: &str =
    jobs_with_counts!("SELECT * FROM jobs ORDER BY created_at DESC, id DESC LIMIT $1");

const INSERT_JOB: &str = "INSERT INTO jobs \
     (id, name, sweep, output_prefix, max_attempts, priority, created_at, finished_at, owner, \
      base_params) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// One statement for the whole sweep: large jobs insert in a single round trip.
const INSERT_TASKS: &str = "INSERT INTO tasks \
     (job_id, image_index, priority, params, max_attempts, output_key, scheduled_at, pool, \
      owner, cell_key, model) \
     SELECT $1, t.image_index, $2, t.params, $3, t.output_key, $4, $8, $9, t.cell_key, \
            t.params::jsonb->>'model' \
     FROM UNNEST($5::bigint[], $6::text[], $7::text[], $10::text[]) \
          AS t(image_index, params, output_key, cell_key)";

/// Streaming submit: COPY is the fastest way into Postgres and takes rows as they are made.
const COPY_TASKS: &str = "COPY tasks \
     (job_id, image_index, priority, params, max_attempts, output_key, scheduled_at, pool, \
      owner, cell_key, model) \
     FROM STDIN";

/// One job's tasks share its base, read once rather than per row.
const LIST_TASKS: &str = concat!(
    "SELECT ",
    task_columns!("(SELECT base_params FROM jobs WHERE id = $1)"),
    " FROM tasks WHERE job_id = $1 ORDER BY image_index"
);

/// Locks in id order (see module docs) before extending.
const HEARTBEAT: &str = "WITH held AS ( \
         SELECT id AS held_id FROM tasks \
         WHERE id = ANY($1) AND lease_owner = $2 AND state = 'running' \
         ORDER BY id FOR UPDATE \
     ) \
     UPDATE tasks SET lease_expires_at = $3 FROM held WHERE tasks.id = held.held_id \
     RETURNING tasks.id";

const TASK_JOB: &str = "SELECT job_id FROM tasks WHERE id = $1";
const LOCK_JOB: &str = "SELECT id FROM jobs WHERE id = $1 FOR NO KEY UPDATE";

const COMPLETE: &str = "UPDATE tasks \
     SET state = 'completed', sha256 = $3, infotext = $4, render_ms = $5, finalized_at = $6, \
         completed_by = lease_owner, lease_owner = NULL, lease_expires_at = NULL \
     WHERE id = $1 AND lease_owner = $2 AND state = 'running'";

const LEASED_ATTEMPT: &str = "SELECT attempt, max_attempts FROM tasks \
     WHERE id = $1 AND lease_owner = $2 AND state = 'running' FOR UPDATE";

const RECORD_FAILURE: &str = "UPDATE tasks \
     SET state = $2, errors = errors || jsonb_build_array($3::text), \
         scheduled_at = COALESCE($4, scheduled_at), finalized_at = $5, \
         lease_owner = NULL, lease_expires_at = NULL \
     WHERE id = $1";

const EXPIRED_JOBS: &str = "SELECT DISTINCT job_id FROM tasks \
     WHERE state = 'running' AND lease_expires_at < $1 ORDER BY job_id";
const LOCK_JOBS: &str = "SELECT id FROM jobs WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE";
/// Re-checked under the task lock: a heartbeat that won the race has moved the expiry on.
const EXPIRED_TASKS: &str = "SELECT id, job_id, lease_owner, attempt, max_attempts FROM tasks \
     WHERE state = 'running' AND lease_expires_at < $1 AND job_id = ANY($2) \
     ORDER BY id FOR UPDATE";

/// Holds only under the job lock: every write that finalizes a task takes it first, so the
/// last one to commit sees all the others' tasks final.
const FINISH_JOB_IF_DONE: &str = "UPDATE jobs SET finished_at = $2 \
     WHERE id = $1 AND finished_at IS NULL \
       AND NOT EXISTS (SELECT 1 FROM tasks WHERE job_id = $1 AND finalized_at IS NULL)";

/// A finished job stays as it finished: cancelling it changes nothing.
const CANCEL_JOB: &str = "UPDATE jobs SET cancelled = true, finished_at = $2 \
     WHERE id = $1 AND finished_at IS NULL RETURNING id";
const CANCEL_TASKS: &str = "WITH doomed AS ( \
         SELECT id AS doomed_id FROM tasks WHERE job_id = $1 AND finalized_at IS NULL \
         ORDER BY id FOR UPDATE \
     ) \
     UPDATE tasks SET state = 'cancelled', finalized_at = $2, \
         lease_owner = NULL, lease_expires_at = NULL \
     FROM doomed WHERE tasks.id = doomed.doomed_id";

const JOB_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1)";

pub struct PostgresStore {
    pool: PgPool,
    /// The session holding the rescuer's advisory lock while this replica leads; the lock
    /// goes with the session, so a replica that dies hands the lead on by itself.
    rescuer: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
}

/// Advisory lock key of the rescuer leader ("sdfarm" and 1). Advisory locks are scoped to the
/// database, so farms on other databases of one server do not contend.
const RESCUER_LOCK_KEY: i64 = 0x7364_6661_726d_0001;

impl PostgresStore {
    /// Connects to `url` (`postgres://…`) and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Self> {
        let options: PgConnectOptions = url.parse()?;
        Self::connect_with(PgPoolOptions::new().max_connections(16), options).await
    }

    pub async fn connect_with(pool: PgPoolOptions, options: PgConnectOptions) -> Result<Self> {
        Self::from_pool(pool.connect_with(options).await?).await
    }

    /// Uses an existing pool, running any pending migrations (sqlx serialises concurrent
    /// migrators with an advisory lock, so replicas may start together).
    pub async fn from_pool(pool: PgPool) -> Result<Self> {
        MIGRATOR.run(&pool).await?;
        Ok(PostgresStore {
            pool,
            rescuer: tokio::sync::Mutex::new(None),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Finds the task's job and locks it, so a finalizing write can tell whether it was the
    /// job's last. `None` when the task does not exist.
    async fn lock_job_of(
        tx: &mut Transaction<'static, Postgres>,
        task_id: i64,
    ) -> Result<Option<String>> {
        let job_id: Option<String> = sqlx::query_scalar(TASK_JOB)
            .bind(task_id)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(job_id) = &job_id {
            sqlx::query(LOCK_JOB)
                .bind(job_id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(job_id)
    }

    async fn finish_job_if_done(
        tx: &mut Transaction<'static, Postgres>,
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

    async fn record_failure(
        tx: &mut Transaction<'static, Postgres>,
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
impl Store for PostgresStore {
    #[tracing::instrument(skip_all, fields(job_id = %job.id, tasks = tasks.len()))]
    async fn create_job(&self, job: &NewJob, tasks: &[NewTask], now: Millis) -> Result<()> {
        let mut tx = self.pool.begin().await?;
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
            .bind(None::<String>)
            .execute(&mut *tx)
            .await?;
        let indexes: Vec<i64> = tasks.iter().map(|t| i64::from(t.image_index)).collect();
        let params: Vec<String> = tasks.iter().map(|t| params_json(&t.params)).collect();
        let keys: Vec<String> = tasks.iter().map(|t| t.output_key.clone()).collect();
        sqlx::query(INSERT_TASKS)
            .bind(&job.id)
            .bind(job.priority)
            .bind(attempts_to_sql(job.max_attempts))
            .bind(now)
            .bind(indexes)
            .bind(params)
            .bind(keys)
            .bind(&job.pool)
            .bind(&job.owner)
            .bind(tasks.iter().map(|t| t.cell_key.clone()).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        ModelCounts::of(tasks).store(&mut tx, job).await?;
        sqlx::query(fair::ADD_OWNER)
            .bind(&job.pool)
            .bind(&job.owner)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(job_id = %job.id))]
    async fn create_job_streaming(
        &self,
        job: &NewJob,
        tasks: &mut (dyn Iterator<Item = NewTask> + Send),
        now: Millis,
    ) -> Result<u64> {
        // The first task's parameters are the job's base; every task stores its difference.
        let mut tasks = tasks.peekable();
        let base = tasks.peek().map(|t| t.params.clone());
        let base_json = base.as_ref().map(|b| ParamsBase::defaults().delta_json(b));
        let base = base
            .as_ref()
            .map_or_else(ParamsBase::defaults, ParamsBase::new);
        let mut tx = self.pool.begin().await?;
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
            .bind(base_json)
            .execute(&mut *tx)
            .await?;
        let mut copy = tx.copy_in_raw(COPY_TASKS).await?;
        let mut rows = super::copy::CopyRows::new(job, now, base);
        let mut stored = 0u64;
        for task in tasks {
            stored += 1;
            if let Some(chunk) = rows.push(&task) {
                copy.send(chunk).await?;
            }
        }
        let (last, counts) = rows.finish();
        copy.send(last).await?;
        copy.finish().await?;
        counts.store(&mut tx, job).await?;
        sqlx::query(fair::ADD_OWNER)
            .bind(&job.pool)
            .bind(&job.owner)
            .execute(&mut *tx)
            .await?;
        if stored == 0 {
            // A job with nothing to render is finished the moment it exists.
            sqlx::query("UPDATE jobs SET finished_at = $2 WHERE id = $1")
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
        let held: Vec<i64> = sqlx::query_scalar(HEARTBEAT)
            .bind(task_ids)
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

    async fn lead_rescue(&self) -> Result<bool> {
        use sqlx::Connection;
        let mut held = self.rescuer.lock().await;
        if let Some(conn) = held.as_mut() {
            if conn.ping().await.is_ok() {
                return Ok(true);
            }
            // The session is gone and the server released the lock with it.
            *held = None;
        }
        let options = self.pool.connect_options();
        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
        let leads: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RESCUER_LOCK_KEY)
            .fetch_one(&mut conn)
            .await?;
        if leads {
            tracing::info!("this replica now leads the rescuer");
            *held = Some(conn);
        }
        Ok(leads)
    }

    async fn release(&self, worker: &str, task_ids: &[i64], now: Millis) -> Result<Vec<i64>> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut released: Vec<i64> = sqlx::query_scalar(RELEASE)
            .bind(task_ids)
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
        let lost = || StoreError::LeaseLost {
            task_id,
            worker: worker.to_string(),
        };
        let mut tx = self.pool.begin().await?;
        let job_id = Self::lock_job_of(&mut tx, task_id)
            .await?
            .ok_or_else(lost)?;
        let done = sqlx::query(COMPLETE)
            .bind(task_id)
            .bind(worker)
            .bind(&output.sha256)
            .bind(&output.infotext)
            .bind(i64::try_from(output.render_ms).unwrap_or(i64::MAX))
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(lost());
        }
        Self::finish_job_if_done(&mut tx, &job_id, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn complete_many(&self, done: &[Completed], now: Millis) -> Result<Vec<bool>> {
        self.complete_group(done, now).await
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
        let lost = || StoreError::LeaseLost {
            task_id,
            worker: worker.to_string(),
        };
        let mut tx = self.pool.begin().await?;
        let job_id = Self::lock_job_of(&mut tx, task_id)
            .await?
            .ok_or_else(lost)?;
        let (attempt, max_attempts): (i32, i32) = sqlx::query_as(LEASED_ATTEMPT)
            .bind(task_id)
            .bind(worker)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(lost)?;
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
        let mut tx = self.pool.begin().await?;
        let job_ids: Vec<String> = sqlx::query_scalar(EXPIRED_JOBS)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        let mut report = RescueReport::default();
        if job_ids.is_empty() {
            return Ok(report);
        }
        sqlx::query(LOCK_JOBS)
            .bind(&job_ids)
            .execute(&mut *tx)
            .await?;
        let expired: Vec<(i64, String, String, i32, i32)> = sqlx::query_as(EXPIRED_TASKS)
            .bind(now)
            .bind(&job_ids)
            .fetch_all(&mut *tx)
            .await?;
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
        let mut tx = self.pool.begin().await?;
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
        let rows: Vec<QueueCountRow> = sqlx::query_as(counts::QUEUE_COUNTS)
            .fetch_all(&self.pool)
            .await?;
        Ok(queue_counts_from_rows(rows))
    }
}
