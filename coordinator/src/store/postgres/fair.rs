//! The fair claim on Postgres, with pausing and retrying a job: everything that decides whose
//! tasks a lease takes.
//!
//! Whose turn it is lives in `owner_turns` (one row per pool and owner, a handful): the owners
//! whose best claimable task has the highest priority compete, and the one with the smallest
//! `turn` is served, then moved to the back with the next value of `owner_turn_seq` (when
//! another owner waits too). Each
//! owner's best task is the first entry of its range of `tasks_owner_claim_idx`, so a claim is
//! one short index probe per owner plus the usual walk inside the chosen owner's range.
//!
//! The turn update takes the owner row `SKIP LOCKED`: claimers serving the same owner at once
//! never wait for each other (one of them moves it to the back, which is what both would do).

use super::{PostgresStore, LOCK_JOB};
use crate::store::rows::{claimed_in_order, TaskRow};
use crate::store::{JobRecord, Millis, Result, Store, StoreError, TaskRecord};

/// Each owner of pool `$5` with claimable work, with the priority of its best claimable task
/// (`$1` is now). Paused tasks are outside the index, so they cost nothing here.
macro_rules! heads {
    () => {
        "heads AS ( \
             SELECT o.owner, o.turn, h.priority \
             FROM owner_turns o \
             CROSS JOIN LATERAL ( \
                 SELECT t.priority FROM tasks t \
                 WHERE t.pool = o.pool AND t.owner = o.owner \
                   AND t.state IN ('available', 'retryable') AND NOT t.paused \
                   AND t.scheduled_at <= $1 \
                 ORDER BY t.priority DESC, t.id \
                 LIMIT 1 \
             ) h \
             WHERE o.pool = $5 \
         )"
    };
}

/// Moves the owner in `chosen` to the back of the pool's turns when `claimable` took a task
/// and `$when` (SQL) holds.
macro_rules! served {
    ($when:literal) => {
        concat!(
            "served AS ( \
                 UPDATE owner_turns SET turn = nextval('owner_turn_seq') \
                 WHERE (pool, owner) IN ( \
                     SELECT pool, owner FROM owner_turns \
                     WHERE pool = $5 AND owner = (SELECT owner FROM chosen) \
                       AND EXISTS (SELECT 1 FROM claimable) ",
            $when,
            " FOR UPDATE SKIP LOCKED) \
             )"
        )
    };
}

/// Only when another owner waits too: an owner alone in the queue keeps its place, and its
/// claims write nothing beyond the tasks (most farms, most of the time).
macro_rules! served_among_others {
    () => {
        served!("AND (SELECT count(*) FROM heads) > 1")
    };
}

/// Leases the rows of `claimable` ($2 max, $3 worker, $4 lease expiry).
macro_rules! lease_claimable {
    () => {
        concat!(
            "UPDATE tasks \
             SET state = 'running', attempt = attempt + 1, lease_owner = $3, \
                 lease_expires_at = $4, leased_at = $1 \
             FROM claimable WHERE tasks.id = claimable.claim_id \
             RETURNING ",
            task_columns!()
        )
    };
}

/// The chosen owner's claimable tasks, highest priority first, then oldest.
macro_rules! owner_claimable {
    () => {
        "claimable AS ( \
             SELECT t.id AS claim_id FROM tasks t \
             WHERE t.pool = $5 \
               AND t.owner = (SELECT owner FROM chosen) \
               AND t.state IN ('available', 'retryable') AND NOT t.paused \
               AND t.scheduled_at <= $1 \
               AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = t.job_id AND j.cancelled) \
             ORDER BY t.priority DESC, t.id \
             LIMIT $2 \
             FOR UPDATE OF t SKIP LOCKED \
         )"
    };
}

/// The fair claim: the owner whose turn it is among those at the highest priority.
const FAIR_CLAIM: &str = concat!(
    "WITH ",
    heads!(),
    ", chosen AS (SELECT owner FROM heads ORDER BY priority DESC, turn, owner LIMIT 1), ",
    owner_claimable!(),
    ", ",
    served_among_others!(),
    " ",
    lease_claimable!()
);

/// Owners with claimable work in the order they would be served, for when the first one's
/// tasks were all being leased by concurrent claimers.
const OWNERS_IN_TURN: &str = concat!(
    "WITH ",
    heads!(),
    " SELECT owner FROM heads WHERE owner <> ALL($6) ORDER BY priority DESC, turn, owner \
     LIMIT 1"
);

/// `FAIR_CLAIM` for the owner `$6`.
const CLAIM_OWNER: &str = concat!(
    "WITH chosen AS (SELECT $6::text AS owner), ",
    owner_claimable!(),
    ", ",
    served!(""),
    " ",
    lease_claimable!()
);

/// The affinity claim, fair as `FAIR_CLAIM`: at the pool's highest claimable priority, the
/// owner whose turn it is among those with tasks of the models `$6`.
const FAIR_CLAIM_FOR_MODELS: &str = concat!(
    "WITH ",
    heads!(),
    ", top AS (SELECT max(priority) AS top_priority FROM heads), \
     chosen AS ( \
         SELECT o.owner FROM owner_turns o, top \
         WHERE o.pool = $5 AND EXISTS ( \
             SELECT 1 FROM tasks t \
             WHERE t.pool = o.pool AND t.owner = o.owner \
               AND t.model = ANY($6) \
               AND t.priority = top.top_priority \
               AND t.state IN ('available', 'retryable') AND NOT t.paused \
               AND t.scheduled_at <= $1) \
         ORDER BY o.turn, o.owner LIMIT 1 \
     ), claimable AS ( \
         SELECT t.id AS claim_id FROM tasks t, top \
         WHERE t.pool = $5 \
           AND t.owner = (SELECT owner FROM chosen) \
           AND t.model = ANY($6) \
           AND t.priority = top.top_priority \
           AND t.state IN ('available', 'retryable') AND NOT t.paused \
           AND t.scheduled_at <= $1 \
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = t.job_id AND j.cancelled) \
         ORDER BY t.id \
         LIMIT $2 \
         FOR UPDATE OF t SKIP LOCKED \
     ), ",
    served_among_others!(),
    " ",
    lease_claimable!()
);

/// A newcomer starts at turn 0, ahead of owners already served.
pub(super) const ADD_OWNER: &str =
    "INSERT INTO owner_turns (pool, owner) VALUES ($1, $2) ON CONFLICT DO NOTHING";

/// A finished job stays as it finished. `UPDATE` takes the job row lock first (see module
/// docs of the backend), then the task rows in id order.
const PAUSE_JOB: &str =
    "UPDATE jobs SET paused = $2 WHERE id = $1 AND finished_at IS NULL RETURNING id";
const PAUSE_TASKS: &str = "WITH held AS ( \
         SELECT id AS held_id FROM tasks \
         WHERE job_id = $1 AND finalized_at IS NULL AND paused <> $2 \
         ORDER BY id FOR UPDATE \
     ) \
     UPDATE tasks SET paused = $2 FROM held WHERE tasks.id = held.held_id";

const JOB_PAUSED: &str = "SELECT paused FROM jobs WHERE id = $1";
/// Fresh attempts; `errors` keeps every earlier attempt's reason.
const RETRY_TASKS: &str = "WITH again AS ( \
         SELECT id AS again_id FROM tasks \
         WHERE job_id = $1 AND state IN ('discarded', 'cancelled') \
         ORDER BY id FOR UPDATE \
     ) \
     UPDATE tasks SET state = 'available', attempt = 0, scheduled_at = $2, \
         finalized_at = NULL, paused = $3 \
     FROM again WHERE tasks.id = again.again_id";
const REOPEN_JOB: &str = "UPDATE jobs SET cancelled = false, finished_at = NULL WHERE id = $1";
const ADD_JOB_OWNER: &str = "INSERT INTO owner_turns (pool, owner) \
     SELECT DISTINCT pool, owner FROM tasks WHERE job_id = $1 ON CONFLICT DO NOTHING";

impl PostgresStore {
    pub(super) async fn fair_claim(
        &self,
        worker: &str,
        pool: &str,
        max: u32,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Vec<TaskRecord>> {
        let expires = now.saturating_add(lease_ms);
        let rows: Vec<TaskRow> = sqlx::query_as(FAIR_CLAIM)
            .bind(now)
            .bind(i64::from(max))
            .bind(worker)
            .bind(expires)
            .bind(pool)
            .fetch_all(&self.pool)
            .await?;
        if !rows.is_empty() {
            return claimed_in_order(rows);
        }
        // Nothing claimed: either nothing waits, or every claimable task of the owner whose
        // turn it was is being leased right now by another claimer. Then the next owners.
        let mut tried: Vec<String> = Vec::new();
        loop {
            let next: Option<String> = sqlx::query_scalar(OWNERS_IN_TURN)
                .bind(now)
                .bind(0i64)
                .bind(worker)
                .bind(expires)
                .bind(pool)
                .bind(&tried)
                .fetch_optional(&self.pool)
                .await?;
            let Some(owner) = next else {
                return Ok(Vec::new());
            };
            let rows: Vec<TaskRow> = sqlx::query_as(CLAIM_OWNER)
                .bind(now)
                .bind(i64::from(max))
                .bind(worker)
                .bind(expires)
                .bind(pool)
                .bind(&owner)
                .fetch_all(&self.pool)
                .await?;
            if !rows.is_empty() {
                return claimed_in_order(rows);
            }
            tried.push(owner);
        }
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
        let rows: Vec<TaskRow> = sqlx::query_as(FAIR_CLAIM_FOR_MODELS)
            .bind(now)
            .bind(i64::from(max))
            .bind(worker)
            .bind(now.saturating_add(lease_ms))
            .bind(pool)
            .bind(models)
            .fetch_all(&self.pool)
            .await?;
        claimed_in_order(rows)
    }

    pub(super) async fn pause(&self, id: &str, paused: bool) -> Result<JobRecord> {
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
        let exists: Option<String> = sqlx::query_scalar(LOCK_JOB)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_none() {
            return Err(StoreError::JobNotFound(id.to_string()));
        }
        let paused: bool = sqlx::query_scalar(JOB_PAUSED)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
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
