//! Queue counts on Postgres without scanning the backlog (migration 0011): each job keeps
//! its unfinished tasks per pool and model in `job_model_counts`, the store adds what it
//! inserts, and a trigger follows every task that is finalized or made unfinished again.

use sqlx::{Postgres, Transaction};

use crate::store::{NewJob, NewTask, Result};

/// Adds `$4[i]` unfinished tasks of model `$3[i]` to job `$1` in pool `$2`.
const ADD_COUNTS: &str = "INSERT INTO job_model_counts AS c (job_id, pool, model, unfinished) \
     SELECT $1, $2, u.model, u.n FROM UNNEST($3::text[], $4::bigint[]) AS u(model, n) \
     ON CONFLICT (job_id, pool, model) DO UPDATE SET unfinished = c.unfinished + excluded.unfinished";

/// Running tasks come from `tasks_lease_idx`, waiting retries from `tasks_retryable_idx`, and
/// the rest of the unfinished tasks of jobs that are neither finished nor paused from their
/// counters: available = unfinished - running - retryable, all of unpaused jobs (a paused
/// job's waiting tasks are left out; its running ones still count).
pub(super) const QUEUE_COUNTS: &str = "WITH running AS ( \
         SELECT pool, model, count(*) AS n, count(*) FILTER (WHERE NOT paused) AS unpaused \
         FROM tasks WHERE state = 'running' GROUP BY pool, model \
     ), retryable AS ( \
         SELECT pool, model, count(*) AS n FROM tasks \
         WHERE state = 'retryable' AND NOT paused GROUP BY pool, model \
     ), open AS ( \
         SELECT c.pool, c.model, sum(c.unfinished)::bigint AS n \
         FROM jobs j JOIN job_model_counts c ON c.job_id = j.id \
         WHERE j.finished_at IS NULL AND NOT j.paused GROUP BY c.pool, c.model \
     ), groups AS ( \
         SELECT pool, model FROM running UNION SELECT pool, model FROM retryable \
         UNION SELECT pool, model FROM open \
     ) \
     SELECT g.pool, g.model, s.state, s.n FROM groups g \
     LEFT JOIN running r ON r.pool = g.pool AND r.model = g.model \
     LEFT JOIN retryable q ON q.pool = g.pool AND q.model = g.model \
     LEFT JOIN open o ON o.pool = g.pool AND o.model = g.model \
     CROSS JOIN LATERAL (VALUES \
         ('available', COALESCE(o.n, 0) - COALESCE(r.unpaused, 0) - COALESCE(q.n, 0)), \
         ('retryable', COALESCE(q.n, 0)), \
         ('running', COALESCE(r.n, 0)) \
     ) AS s(state, n) \
     WHERE s.n > 0 ORDER BY g.pool, g.model, s.state";

/// Unfinished tasks per model, in the order models first appear.
#[derive(Default)]
pub(in crate::store) struct ModelCounts {
    models: Vec<String>,
    counts: Vec<i64>,
}

impl ModelCounts {
    pub(in crate::store) fn add(&mut self, model: &str) {
        // A sweep has a handful of models, usually one: the last one seen is the likely hit.
        match self.models.iter().rposition(|m| m == model) {
            Some(i) => self.counts[i] += 1,
            None => {
                self.models.push(model.to_string());
                self.counts.push(1);
            }
        }
    }

    pub(super) fn of(tasks: &[NewTask]) -> ModelCounts {
        let mut counts = ModelCounts::default();
        for task in tasks {
            counts.add(&task.params.model);
        }
        counts
    }

    /// Records the counted tasks as inserted into `job`.
    pub(super) async fn store(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        job: &NewJob,
    ) -> Result<()> {
        if self.models.is_empty() {
            return Ok(());
        }
        sqlx::query(ADD_COUNTS)
            .bind(&job.id)
            .bind(&job.pool)
            .bind(&self.models)
            .bind(&self.counts)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
