//! Dataset jobs on Postgres: reading the cell keys a job holds, and adding tasks to an
//! existing job through the same `COPY` as a streaming submit.

use futures::TryStreamExt;

use super::{PostgresStore, COPY_TASKS};
use crate::store::copy::CopyRows;
use crate::store::delta::ParamsBase;
use crate::store::{DatasetCells, Millis, NewJob, NewTask, Result, StoreError};

/// Index-only on `tasks_cell_key_idx`.
const CELL_KEYS: &str = "SELECT cell_key FROM tasks WHERE job_id = $1 AND cell_key IS NOT NULL";
const NEXT_INDEX: &str = "SELECT COALESCE(max(image_index) + 1, 0) FROM tasks WHERE job_id = $1";
/// The job lock of the backend's lock order, with the base its tasks' parameters are
/// stored against.
const LOCK_JOB_BASE: &str = "SELECT base_params FROM jobs WHERE id = $1 FOR NO KEY UPDATE";
const JOB_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1)";
const UPDATE_SWEEP: &str = "UPDATE jobs SET sweep = $2 WHERE id = $1";
/// New tasks make the job unfinished again, whatever it ended as.
const REOPEN: &str = "UPDATE jobs SET finished_at = NULL, cancelled = false WHERE id = $1";
/// Tasks added to a paused job wait with the others.
const KEEP_PAUSED: &str = "UPDATE tasks SET paused = true \
     WHERE job_id = $1 AND finalized_at IS NULL AND NOT paused \
       AND (SELECT paused FROM jobs WHERE id = $1)";

pub(super) async fn cells(store: &PostgresStore, job_id: &str) -> Result<Option<DatasetCells>> {
    let exists: bool = sqlx::query_scalar(JOB_EXISTS)
        .bind(job_id)
        .fetch_one(&store.pool)
        .await?;
    if !exists {
        return Ok(None);
    }
    let mut cells = DatasetCells::default();
    let mut rows = sqlx::query_scalar::<_, String>(CELL_KEYS)
        .bind(job_id)
        .fetch(&store.pool);
    while let Some(text) = rows.try_next().await? {
        cells.add_stored_key(&text, job_id)?;
    }
    drop(rows);
    let next: i64 = sqlx::query_scalar(NEXT_INDEX)
        .bind(job_id)
        .fetch_one(&store.pool)
        .await?;
    cells.set_next_index(next);
    Ok(Some(cells))
}

pub(super) async fn extend(
    store: &PostgresStore,
    job: &NewJob,
    tasks: &mut (dyn Iterator<Item = NewTask> + Send),
    now: Millis,
) -> Result<u64> {
    let mut tx = store.pool.begin().await?;
    // The job lock orders this after (and before) any write that may finish the job.
    let base: Option<Option<String>> = sqlx::query_scalar(LOCK_JOB_BASE)
        .bind(&job.id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(base) = base else {
        return Err(StoreError::JobNotFound(job.id.clone()));
    };
    // New tasks are stored against the base the job's first tasks were.
    let base = match base {
        Some(json) => {
            ParamsBase::new(
                &serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                    task_id: -1,
                    reason: format!(
                        "base parameters of job {} are not RenderParams JSON: {e}",
                        job.id
                    ),
                })?,
            )
        }
        None => ParamsBase::defaults(),
    };
    sqlx::query(UPDATE_SWEEP)
        .bind(&job.id)
        .bind(&job.sweep)
        .execute(&mut *tx)
        .await?;
    let mut copy = tx.copy_in_raw(COPY_TASKS).await?;
    let mut rows = CopyRows::new(job, now, base);
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
    if stored > 0 {
        sqlx::query(REOPEN).bind(&job.id).execute(&mut *tx).await?;
        sqlx::query(KEEP_PAUSED)
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(super::fair::ADD_OWNER)
            .bind(&job.pool)
            .bind(&job.owner)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(stored)
}
