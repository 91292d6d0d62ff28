//! Row shapes shared by both backends, their conversion into the store's records, and the
//! retry rule both backends apply, so Postgres and SQLite decide every transition the same way.

use std::cmp::Reverse;

use sdfarm_proto::RenderParams;

use super::{
    JobRecord, Millis, QueueCount, Result, RetryPolicy, StoreError, TaskCounts, TaskRecord,
    TaskState,
};

/// A task row as both backends select it (`params` and `errors` as JSON text).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct TaskRow {
    id: i64,
    job_id: String,
    image_index: i64,
    /// The owning job's priority; only used to order a claim's result.
    priority: i32,
    params: String,
    /// The job's base parameters when `params` is a delta against them (Postgres).
    #[sqlx(default)]
    base_params: Option<String>,
    state: String,
    attempt: i32,
    max_attempts: i32,
    output_key: String,
    lease_owner: Option<String>,
    completed_by: Option<String>,
    lease_expires_at: Option<i64>,
    scheduled_at: i64,
    sha256: Option<String>,
    infotext: Option<String>,
    errors: String,
    finalized_at: Option<i64>,
    pool: String,
}

impl TaskRow {
    pub(super) fn into_record(self) -> Result<TaskRecord> {
        let corrupt = |reason: String| StoreError::Corrupt {
            task_id: self.id,
            reason,
        };
        let params: RenderParams =
            super::delta::full_params(self.base_params.as_deref(), &self.params)
                .map_err(|e| corrupt(format!("params are not RenderParams JSON: {e}")))?;
        let errors: Vec<String> = serde_json::from_str(&self.errors)
            .map_err(|e| corrupt(format!("errors are not a JSON array of strings: {e}")))?;
        let state = TaskState::parse(&self.state)
            .ok_or_else(|| corrupt(format!("unknown state {:?}", self.state)))?;
        let image_index = u32::try_from(self.image_index)
            .map_err(|_| corrupt(format!("image_index {} out of range", self.image_index)))?;
        Ok(TaskRecord {
            id: self.id,
            job_id: self.job_id,
            image_index,
            params,
            state,
            attempt: self.attempt.max(0) as u32,
            max_attempts: self.max_attempts.max(0) as u32,
            output_key: self.output_key,
            lease_owner: self.lease_owner,
            completed_by: self.completed_by,
            lease_expires_at: self.lease_expires_at,
            scheduled_at: self.scheduled_at,
            sha256: self.sha256,
            infotext: self.infotext,
            errors,
            finalized_at: self.finalized_at,
            pool: self.pool,
        })
    }
}

/// `UPDATE … RETURNING` yields rows in no particular order; a claim promises highest job
/// priority first, then oldest task.
pub(super) fn claimed_in_order(mut rows: Vec<TaskRow>) -> Result<Vec<TaskRecord>> {
    rows.sort_by_key(|r| (Reverse(r.priority), r.id));
    rows.into_iter().map(TaskRow::into_record).collect()
}

/// One `(pool, model, state, n)` group of unfinished tasks.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct QueueCountRow {
    pool: String,
    model: Option<String>,
    state: String,
    n: i64,
}

pub(super) fn queue_counts_from_rows(rows: Vec<QueueCountRow>) -> Vec<QueueCount> {
    rows.into_iter()
        .filter_map(|r| {
            Some(QueueCount {
                pool: r.pool,
                model: r.model.unwrap_or_default(),
                state: TaskState::parse(&r.state)?,
                count: r.n.max(0) as u64,
            })
        })
        .collect()
}

/// A job row joined with one `(state, count)` group of its tasks; a job without tasks
/// appears once with `state` and `n` null.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct JobCountRow {
    id: String,
    name: String,
    sweep: String,
    output_prefix: String,
    max_attempts: i32,
    priority: i32,
    cancelled: bool,
    owner: String,
    paused: bool,
    created_at: i64,
    finished_at: Option<i64>,
    state: Option<String>,
    n: Option<i64>,
}

/// Folds rows ordered by job into records. Counts and job columns come from one statement,
/// so a record's counts and `finished_at` always describe the same instant.
pub(super) fn jobs_from_rows(rows: Vec<JobCountRow>) -> Vec<JobRecord> {
    let mut jobs: Vec<JobRecord> = Vec::new();
    for row in rows {
        if jobs.last().map(|j| j.id != row.id).unwrap_or(true) {
            jobs.push(JobRecord {
                id: row.id.clone(),
                name: row.name,
                sweep: row.sweep,
                output_prefix: row.output_prefix,
                max_attempts: row.max_attempts.max(0) as u32,
                priority: row.priority,
                cancelled: row.cancelled,
                owner: row.owner,
                paused: row.paused,
                created_at: row.created_at,
                finished_at: row.finished_at,
                counts: TaskCounts::default(),
            });
        }
        let job = jobs.last_mut().expect("pushed above");
        if let (Some(state), Some(n)) = (row.state, row.n) {
            add_count(&mut job.counts, &state, n.max(0) as u64);
        }
    }
    jobs
}

fn add_count(counts: &mut TaskCounts, state: &str, n: u64) {
    counts.total += n;
    // The schema's CHECK admits only the six states, so nothing else reaches here.
    match TaskState::parse(state) {
        Some(TaskState::Available) => counts.available += n,
        Some(TaskState::Running) => counts.running += n,
        Some(TaskState::Retryable) => counts.retryable += n,
        Some(TaskState::Completed) => counts.completed += n,
        Some(TaskState::Cancelled) => counts.cancelled += n,
        Some(TaskState::Discarded) => counts.discarded += n,
        None => {}
    }
}

/// What a failed attempt turns a task into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterFailure {
    /// Back in the queue once `scheduled_at` has passed.
    Retry { scheduled_at: Millis },
    /// Final: not retryable, or the attempt just failed was the last one allowed.
    Discard,
}

impl AfterFailure {
    pub(super) fn decide(
        attempt: i32,
        max_attempts: i32,
        retryable: bool,
        policy: &RetryPolicy,
        now: Millis,
    ) -> AfterFailure {
        if !retryable || attempt >= max_attempts {
            AfterFailure::Discard
        } else {
            let attempt = attempt.max(1) as u32;
            AfterFailure::Retry {
                scheduled_at: now.saturating_add(policy.delay_ms(attempt)),
            }
        }
    }

    pub(super) fn state(self) -> TaskState {
        match self {
            AfterFailure::Retry { .. } => TaskState::Retryable,
            AfterFailure::Discard => TaskState::Discarded,
        }
    }

    /// `scheduled_at` to store; `None` keeps the current value.
    pub(super) fn scheduled_at(self) -> Option<Millis> {
        match self {
            AfterFailure::Retry { scheduled_at } => Some(scheduled_at),
            AfterFailure::Discard => None,
        }
    }

    /// `finalized_at` to store: set exactly when the task becomes final.
    pub(super) fn finalized_at(self, now: Millis) -> Option<Millis> {
        match self {
            AfterFailure::Retry { .. } => None,
            AfterFailure::Discard => Some(now),
        }
    }
}

/// The reason the rescuer records for an attempt whose worker went silent.
pub(super) fn lease_expired_reason(owner: &str, attempt: i32) -> String {
    format!("lease expired: worker {owner} stopped heartbeating (attempt {attempt})")
}

pub(super) fn params_json(params: &RenderParams) -> String {
    // RenderParams holds only strings and numbers, which always serialize.
    serde_json::to_string(params).expect("RenderParams serializes to JSON")
}

/// Attempt limits are stored as SQL integers; a limit beyond i32 is effectively unlimited.
pub(super) fn attempts_to_sql(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
