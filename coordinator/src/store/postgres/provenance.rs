//! Postgres: a page of a job's completed tasks for its manifest.

use super::PostgresStore;
use crate::store::provenance::{completed_columns, CompletedRow, CompletedTask};
use crate::store::Result;

/// Walks `UNIQUE (job_id, image_index)`'s index from `$2` on.
/// The job's base is read once for the page.
const COMPLETED_PAGE: &str = concat!(
    "SELECT ",
    completed_columns!(task_params!("(SELECT base_params FROM jobs WHERE id = $1)")),
    " FROM tasks WHERE job_id = $1 AND image_index > $2 AND state = 'completed' \
     ORDER BY image_index LIMIT $3"
);

impl PostgresStore {
    pub(super) async fn completed_page(
        &self,
        job_id: &str,
        after: Option<u32>,
        limit: u32,
    ) -> Result<Vec<CompletedTask>> {
        let rows: Vec<CompletedRow> = sqlx::query_as(COMPLETED_PAGE)
            .bind(job_id)
            .bind(after.map_or(-1, i64::from))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(CompletedRow::into_task).collect()
    }
}
