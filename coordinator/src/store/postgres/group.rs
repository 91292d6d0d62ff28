//! Grouped completions on Postgres: many fenced completions under one transaction and one
//! durable commit, taking locks in the backend's one order (job rows, then task rows by id).

use std::collections::HashSet;

use super::{PostgresStore, LOCK_JOBS};
use crate::store::{Completed, Millis, Result};

const TASK_JOBS: &str = "SELECT DISTINCT job_id FROM tasks WHERE id = ANY($1) ORDER BY job_id";

/// Task rows locked in id order before the update, as the heartbeat and rescuer lock them,
/// so a group never waits on a lock in the opposite order.
const LOCK_TASKS: &str = "SELECT id FROM tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE";

/// `COMPLETE` for a set of (task, worker, output) rows; each row is fenced on its own lease.
const COMPLETE_GROUP: &str = "UPDATE tasks \
     SET state = 'completed', sha256 = d.sha256, infotext = d.infotext, \
         render_ms = d.render_ms, finalized_at = $6, \
         lease_owner = NULL, lease_expires_at = NULL \
     FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
          AS d(id, worker, sha256, infotext, render_ms) \
     WHERE tasks.id = d.id AND tasks.lease_owner = d.worker AND tasks.state = 'running' \
     RETURNING tasks.id";

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
        let jobs: Vec<String> = sqlx::query_scalar(TASK_JOBS)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query(LOCK_JOBS).bind(&jobs).execute(&mut *tx).await?;
        sqlx::query(LOCK_TASKS).bind(&ids).execute(&mut *tx).await?;
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
        for job in &jobs {
            Self::finish_job_if_done(&mut tx, job, now).await?;
        }
        tx.commit().await?;
        Ok(done
            .iter()
            .zip(first)
            .map(|(d, first)| first && recorded.contains(&d.task_id))
            .collect())
    }
}
