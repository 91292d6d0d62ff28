//! Dataset jobs on SQLite: reading the cell keys a job holds, and adding tasks to an
//! existing job with the same prepared insert as a streaming submit.

use futures::TryStreamExt;

use super::{SqliteStore, INSERT_TASK};
use crate::store::copy::compact_params_json;
use crate::store::rows::attempts_to_sql;
use crate::store::{DatasetCells, Millis, NewJob, NewTask, Result, StoreError};

const CELL_KEYS: &str = "SELECT cell_key FROM tasks WHERE job_id = ?1 AND cell_key IS NOT NULL";
const NEXT_INDEX: &str = "SELECT COALESCE(max(image_index) + 1, 0) FROM tasks WHERE job_id = ?1";
const JOB_EXISTS: &str = "SELECT EXISTS (SELECT 1 FROM jobs WHERE id = ?1)";
const UPDATE_SWEEP: &str = "UPDATE jobs SET sweep = ?2 WHERE id = ?1";
/// New tasks make the job unfinished again, whatever it ended as.
const REOPEN: &str = "UPDATE jobs SET finished_at = NULL, cancelled = 0 WHERE id = ?1";
/// Tasks added to a paused job wait with the others.
const KEEP_PAUSED: &str = "UPDATE tasks SET paused = 1 \
     WHERE job_id = ?1 AND finalized_at IS NULL AND NOT paused \
       AND (SELECT paused FROM jobs WHERE id = ?1)";

pub(super) async fn cells(store: &SqliteStore, job_id: &str) -> Result<Option<DatasetCells>> {
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
    store: &SqliteStore,
    job: &NewJob,
    tasks: &mut (dyn Iterator<Item = NewTask> + Send),
    now: Millis,
) -> Result<u64> {
    // BEGIN IMMEDIATE: the whole addition is one write, serialised with every other.
    let mut tx = store.begin_write().await?;
    let updated = sqlx::query(UPDATE_SWEEP)
        .bind(&job.id)
        .bind(&job.sweep)
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::JobNotFound(job.id.clone()));
    }
    let mut stored = 0u64;
    for task in tasks {
        stored += 1;
        sqlx::query(INSERT_TASK)
            .bind(&job.id)
            .bind(i64::from(task.image_index))
            .bind(job.priority)
            .bind(compact_params_json(&task.params))
            .bind(attempts_to_sql(job.max_attempts))
            .bind(&task.output_key)
            .bind(now)
            .bind(&job.pool)
            .bind(&job.owner)
            .bind(&task.cell_key)
            .execute(&mut *tx)
            .await?;
    }
    if stored > 0 {
        sqlx::query(REOPEN).bind(&job.id).execute(&mut *tx).await?;
        sqlx::query(KEEP_PAUSED)
            .bind(&job.id)
            .execute(&mut *tx)
            .await?;
        SqliteStore::add_owner(&mut tx, job).await?;
    }
    tx.commit().await?;
    Ok(stored)
}
