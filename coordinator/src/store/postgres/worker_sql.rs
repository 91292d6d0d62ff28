//! Queries for what a worker asks beyond the claim (see `fair.rs`): giving tasks back when
//! it drains.

/// Undoes the claim: the attempt is given back, the task is claimable again at once.
pub(super) const RELEASE: &str = "UPDATE tasks \
     SET state = CASE WHEN attempt > 1 THEN 'retryable' ELSE 'available' END, \
         attempt = attempt - 1, scheduled_at = $3, lease_owner = NULL, lease_expires_at = NULL \
     WHERE id = ANY($1) AND lease_owner = $2 AND state = 'running' \
     RETURNING id";
