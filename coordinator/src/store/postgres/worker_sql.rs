//! Queries for what a worker asks beyond the plain claim: tasks of the models it holds,
//! and giving tasks back when it drains.

/// The claim of a worker that holds models in memory: their tasks, but only at the highest
/// priority anything claimable has, so affinity never jumps the priority order.
pub(super) const CLAIM_FOR_MODELS: &str = concat!(
    "WITH top AS ( \
         SELECT t.priority AS top_priority FROM tasks t \
         WHERE t.pool = $5 \
           AND t.state IN ('available', 'retryable') \
           AND t.scheduled_at <= $1 \
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = t.job_id AND j.cancelled) \
         ORDER BY t.priority DESC, t.id \
         LIMIT 1 \
     ), claimable AS ( \
         SELECT t.id AS claim_id FROM tasks t, top \
         WHERE t.pool = $5 \
           AND t.params->>'model' = ANY($6) \
           AND t.priority = top.top_priority \
           AND t.state IN ('available', 'retryable') \
           AND t.scheduled_at <= $1 \
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = t.job_id AND j.cancelled) \
         ORDER BY t.id \
         LIMIT $2 \
         FOR UPDATE OF t SKIP LOCKED \
     ) \
     UPDATE tasks \
     SET state = 'running', attempt = attempt + 1, lease_owner = $3, lease_expires_at = $4 \
     FROM claimable WHERE tasks.id = claimable.claim_id \
     RETURNING ",
    task_columns!()
);

/// Undoes the claim: the attempt is given back, the task is claimable again at once.
pub(super) const RELEASE: &str = "UPDATE tasks \
     SET state = CASE WHEN attempt > 1 THEN 'retryable' ELSE 'available' END, \
         attempt = attempt - 1, scheduled_at = $3, lease_owner = NULL, lease_expires_at = NULL \
     WHERE id = ANY($1) AND lease_owner = $2 AND state = 'running' \
     RETURNING id";
