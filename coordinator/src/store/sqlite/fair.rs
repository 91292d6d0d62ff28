//! The fair claim on SQLite, with pausing and retrying a job. Same rules as the Postgres
//! backend's `fair.rs`: the owners whose best claimable task has the highest priority compete,
//! the one with the smallest `turn` is served and then moved to the back. Writes are
//! serialised (`BEGIN IMMEDIATE`), so choosing, leasing and moving the turn happen in one
//! transaction without races.

use super::SqliteStore;
use crate::store::rows::{claimed_in_order, TaskRow};
use crate::store::{JobRecord, Millis, Result, Store, StoreError, TaskRecord};

/// Each owner of pool `?1` with claimable work at `?2` and its best claimable priority, in
/// the order they are served. Paused tasks are outside `tasks_owner_claim_idx`.
const OWNER_HEADS: &str = "SELECT owner, head FROM ( \
         SELECT o.owner, o.turn, ( \
             SELECT t.priority FROM tasks t \
             WHERE t.pool = o.pool AND t.owner = o.owner \
               AND t.state IN ('available', 'retryable') AND t.paused = 0 \
               AND t.scheduled_at <= ?2 \
             ORDER BY t.priority DESC, t.id \
             LIMIT 1) AS head \
         FROM owner_turns o WHERE o.pool = ?1 \
     ) WHERE head IS NOT NULL \
     ORDER BY head DESC, turn, owner";

/// Of pool `?1`'s owners, the one whose turn it is among those with claimable tasks of the
/// models `?3` (a JSON array) at priority `?4`.
const MODEL_OWNER: &str = "SELECT o.owner FROM owner_turns o \
     WHERE o.pool = ?1 AND EXISTS ( \
         SELECT 1 FROM tasks t \
         WHERE t.pool = o.pool AND t.owner = o.owner \
           AND json_extract(t.params, '$.model') IN (SELECT value FROM json_each(?3)) \
           AND t.priority = ?4 \
           AND t.state IN ('available', 'retryable') AND t.paused = 0 \
           AND t.scheduled_at <= ?2) \
     ORDER BY o.turn, o.owner LIMIT 1";

/// Owner `?6`'s claimable tasks, highest priority first, then oldest.
const CLAIM_OWNER: &str = concat!(
    "UPDATE tasks \
     SET state = 'running', attempt = attempt + 1, lease_owner = ?1, lease_expires_at = ?2, \
         leased_at = ?3 \
     WHERE id IN ( \
         SELECT t.id FROM tasks t \
         WHERE t.pool = ?5 AND t.owner = ?6 \
           AND t.state IN ('available', 'retryable') AND t.paused = 0 \
           AND t.scheduled_at <= ?3 \
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = t.job_id AND j.cancelled) \
         ORDER BY t.priority DESC, t.id \
         LIMIT ?4 \
     ) \
     RETURNING ",
    task_columns!()
);

/// Owner `?6`'s claimable tasks of the models `?7` at priority `?8`, oldest first.
const CLAIM_OWNER_MODELS: &str = concat!(
    "UPDATE tasks \
     SET state = 'running', attempt = attempt + 1, lease_owner = ?1, lease_expires_at = ?2, \
         leased_at = ?3 \
     WHERE id IN ( \
         SELECT t.id FROM tasks t \
         WHERE t.pool = ?5 AND t.owner = ?6 \
           AND json_extract(t.params, '$.model') IN (SELECT value FROM json_each(?7)) \
           AND t.priority = ?8 \
           AND t.state IN ('available', 'retryable') AND t.paused = 0 \
           AND t.scheduled_at <= ?3 \
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = t.job_id AND j.cancelled) \
         ORDER BY t.id \
         LIMIT ?4 \
     ) \
     RETURNING ",
    task_columns!()
);

const SERVED: &str = "UPDATE owner_turns \
     SET turn = (SELECT max(turn) + 1 FROM owner_turns WHERE pool = ?1) \
     WHERE pool = ?1 AND owner = ?2";

/// A newcomer starts at turn 0, ahead of owners already served.
pub(super) const ADD_OWNER: &str =
    "INSERT INTO owner_turns (pool, owner) VALUES (?1, ?2) ON CONFLICT DO NOTHING";

/// A finished job stays as it finished.
const PAUSE_JOB: &str =
    "UPDATE jobs SET paused = ?2 WHERE id = ?1 AND finished_at IS NULL RETURNING id";
const PAUSE_TASKS: &str =
    "UPDATE tasks SET paused = ?2 WHERE job_id = ?1 AND finalized_at IS NULL AND paused <> ?2";

const JOB_PAUSED: &str = "SELECT paused FROM jobs WHERE id = ?1";
/// Fresh attempts; `errors` keeps every earlier attempt's reason.
const RETRY_TASKS: &str = "UPDATE tasks SET state = 'available', attempt = 0, scheduled_at = ?2, \
         finalized_at = NULL, paused = ?3 \
     WHERE job_id = ?1 AND state IN ('discarded', 'cancelled')";
const REOPEN_JOB: &str = "UPDATE jobs SET cancelled = 0, finished_at = NULL WHERE id = ?1";
const ADD_JOB_OWNER: &str = "INSERT INTO owner_turns (pool, owner) \
     SELECT DISTINCT pool, owner FROM tasks WHERE job_id = ?1 ON CONFLICT DO NOTHING";

impl SqliteStore {
    pub(super) async fn fair_claim(
        &self,
        worker: &str,
        pool: &str,
        max: u32,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Vec<TaskRecord>> {
        let mut tx = self.begin_write().await?;
        let heads: Vec<(String, i32)> = sqlx::query_as(OWNER_HEADS)
            .bind(pool)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        let Some((owner, _)) = heads.first().cloned() else {
            return Ok(Vec::new());
        };
        let rows: Vec<TaskRow> = sqlx::query_as(CLAIM_OWNER)
            .bind(worker)
            .bind(now.saturating_add(lease_ms))
            .bind(now)
            .bind(i64::from(max))
            .bind(pool)
            .bind(&owner)
            .fetch_all(&mut *tx)
            .await?;
        Self::served(&mut tx, pool, &owner, !rows.is_empty() && heads.len() > 1).await?;
        tx.commit().await?;
        claimed_in_order(rows)
    }

    pub(super) async fn fair_claim_for_models(
        &self,
        worker: &str,
        pool: &str,
        models: &[String],
        max: u32,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Vec<TaskRecord>> {
        let models = serde_json::to_string(models).expect("a list of strings serializes");
        let mut tx = self.begin_write().await?;
        let heads: Vec<(String, i32)> = sqlx::query_as(OWNER_HEADS)
            .bind(pool)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
        let Some(top) = heads.first().map(|(_, priority)| *priority) else {
            return Ok(Vec::new());
        };
        let owner: Option<String> = sqlx::query_scalar(MODEL_OWNER)
            .bind(pool)
            .bind(now)
            .bind(&models)
            .bind(top)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(owner) = owner else {
            return Ok(Vec::new());
        };
        let rows: Vec<TaskRow> = sqlx::query_as(CLAIM_OWNER_MODELS)
            .bind(worker)
            .bind(now.saturating_add(lease_ms))
            .bind(now)
            .bind(i64::from(max))
            .bind(pool)
            .bind(&owner)
            .bind(&models)
            .bind(top)
            .fetch_all(&mut *tx)
            .await?;
        Self::served(&mut tx, pool, &owner, !rows.is_empty() && heads.len() > 1).await?;
        tx.commit().await?;
        claimed_in_order(rows)
    }

    /// Moves `owner` to the back of the pool's turns if `moves`: when it was leased tasks
    /// while another owner waited too. An owner alone in the queue keeps its place.
    async fn served(
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        pool: &str,
        owner: &str,
        moves: bool,
    ) -> Result<()> {
        if moves {
            sqlx::query(SERVED)
                .bind(pool)
                .bind(owner)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    pub(super) async fn pause(&self, id: &str, paused: bool) -> Result<JobRecord> {
        let mut tx = self.begin_write().await?;
        let open: Option<String> = sqlx::query_scalar(PAUSE_JOB)
            .bind(id)
            .bind(paused)
            .fetch_optional(&mut *tx)
            .await?;
        if open.is_some() {
            sqlx::query(PAUSE_TASKS)
                .bind(id)
                .bind(paused)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        // Also the JobNotFound check when nothing was updated.
        self.get_job(id).await
    }

    pub(super) async fn retry(&self, id: &str, now: Millis) -> Result<(u64, JobRecord)> {
        let mut tx = self.begin_write().await?;
        let paused: Option<bool> = sqlx::query_scalar(JOB_PAUSED)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(paused) = paused else {
            return Err(StoreError::JobNotFound(id.to_string()));
        };
        let retried = sqlx::query(RETRY_TASKS)
            .bind(id)
            .bind(now)
            .bind(paused)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if retried > 0 {
            sqlx::query(REOPEN_JOB).bind(id).execute(&mut *tx).await?;
            sqlx::query(ADD_JOB_OWNER)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok((retried, self.get_job(id).await?))
    }
}
