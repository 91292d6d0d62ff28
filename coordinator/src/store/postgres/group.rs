//! Grouped completions on Postgres: many fenced completions under one transaction and one
//! durable commit, taking locks in the backend's one order (job rows, then task rows by id).

use std::collections::HashSet;

use super::PostgresStore;
use crate::store::{Completed, Millis, Result};

/// Finds and locks the jobs of the group's tasks, in id order (the backend's lock order:
/// job rows first). Its own statement, so the next one reads a snapshot taken after every
/// other finalizing writer of these jobs has committed.
const LOCK_TASK_JOBS: &str = "SELECT id FROM jobs \
     WHERE id IN (SELECT job_id FROM tasks WHERE id = ANY($1)) \
     ORDER BY id FOR NO KEY UPDATE";

/// The rest of the group in one statement: lock the task rows in id order (as the heartbeat
/// and rescuer lock them, so a group never waits on a lock in the opposite order), complete
/// each row fenced on its own lease, and finish the jobs left with no unfinalized task. The
/// finish check runs in this statement's snapshot, where the rows it completes still look
/// unfinalized, so it leaves them out by id; the job locks above keep every other finalizing
/// write of these jobs out until commit.
const COMPLETE_GROUP: &str = "WITH d AS ( \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
             AS d(id, worker, sha256, infotext, render_ms) \
     ), locked AS ( \
         SELECT id AS locked_id FROM tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE \
     ), done AS ( \
         UPDATE tasks \
         SET state = 'completed', sha256 = d.sha256, infotext = d.infotext, \
             render_ms = d.render_ms, finalized_at = $6, \
             completed_by = d.worker, lease_owner = NULL, lease_expires_at = NULL \
         FROM d, locked \
         WHERE tasks.id = d.id AND locked.locked_id = d.id \
           AND tasks.lease_owner = d.worker AND tasks.state = 'running' \
         RETURNING tasks.id, tasks.job_id \
     ), finished AS ( \
         UPDATE jobs SET finished_at = $6 \
         WHERE jobs.id IN (SELECT job_id FROM done) AND jobs.finished_at IS NULL \
           AND NOT EXISTS (SELECT 1 FROM tasks t \
                           WHERE t.job_id = jobs.id AND t.finalized_at IS NULL \
                             AND t.id NOT IN (SELECT id FROM done)) \
     ) \
     SELECT id FROM done";

impl PostgresStore {
    pub(super) async fn complete_group(
        &self,
        done: &[Completed],
        now: Millis,
    ) -> Result<Vec<bool>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        // A task id repeated in the group (a worker retrying its report) is written once,
        // from its first entry; the later entries are lost-lease answers, as they would be
        // one at a time.
        let mut seen = HashSet::new();
        let first: Vec<bool> = done.iter().map(|d| seen.insert(d.task_id)).collect();
        let rows = done.iter().zip(&first).filter(|(_, f)| **f).map(|(d, _)| d);
        let ids: Vec<i64> = rows.clone().map(|d| d.task_id).collect();
        let workers: Vec<&str> = rows.clone().map(|d| d.worker.as_str()).collect();
        let shas: Vec<&str> = rows.clone().map(|d| d.output.sha256.as_str()).collect();
        let infotexts: Vec<&str> = rows.clone().map(|d| d.output.infotext.as_str()).collect();
        let render_ms: Vec<i64> = rows
            .map(|d| i64::try_from(d.output.render_ms).unwrap_or(i64::MAX))
            .collect();

        let mut tx = self.pool.begin().await?;
        sqlx::query(LOCK_TASK_JOBS)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        let recorded: HashSet<i64> = sqlx::query_scalar(COMPLETE_GROUP)
            .bind(&ids)
            .bind(&workers)
            .bind(&shas)
            .bind(&infotexts)
            .bind(&render_ms)
            .bind(now)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        tx.commit().await?;
        Ok(done
            .iter()
            .zip(first)
            .map(|(d, first)| first && recorded.contains(&d.task_id))
            .collect())
    }
}
