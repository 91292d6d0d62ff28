//! A job's rendered images as its manifest lists them: one row per completed task, read
//! page by page in image order so a job of any size is walked in bounded memory.

use sdfarm_proto::RenderParams;

use super::{Millis, Result, StoreError};

/// A completed task with what is known of how it was made.
#[derive(Debug, Clone, PartialEq)]
pub struct CompletedTask {
    pub task_id: i64,
    pub image_index: u32,
    pub params: RenderParams,
    pub output_key: String,
    pub sha256: String,
    pub infotext: String,
    /// The attempt whose completion was recorded (1 for a first-time success).
    pub attempt: u32,
    /// The worker whose completion was recorded; `None` for rows completed before the
    /// store kept it.
    pub worker: Option<String>,
    /// When the recorded attempt was leased; `None` for rows leased before the store kept it.
    pub leased_at: Option<Millis>,
    pub completed_at: Millis,
    pub render_ms: Option<u64>,
}

/// The row both backends select for a [`CompletedTask`] (`params` as JSON text).
#[derive(Debug, sqlx::FromRow)]
pub(super) struct CompletedRow {
    id: i64,
    image_index: i64,
    params: String,
    /// The job's base parameters when `params` is a delta against them (Postgres).
    #[sqlx(default)]
    base_params: Option<String>,
    output_key: String,
    sha256: Option<String>,
    infotext: Option<String>,
    attempt: i32,
    completed_by: Option<String>,
    leased_at: Option<i64>,
    finalized_at: Option<i64>,
    render_ms: Option<i64>,
}

impl CompletedRow {
    pub(super) fn into_task(self) -> Result<CompletedTask> {
        let corrupt = |reason: String| StoreError::Corrupt {
            task_id: self.id,
            reason,
        };
        let params: RenderParams =
            super::delta::full_params(self.base_params.as_deref(), &self.params)
                .map_err(|e| corrupt(format!("params are not RenderParams JSON: {e}")))?;
        let image_index = u32::try_from(self.image_index)
            .map_err(|_| corrupt(format!("image_index {} out of range", self.image_index)))?;
        // The schema's CHECK guarantees both for a completed task.
        let sha256 = self
            .sha256
            .ok_or_else(|| corrupt("completed without a sha256".into()))?;
        let infotext = self
            .infotext
            .ok_or_else(|| corrupt("completed without an infotext".into()))?;
        let completed_at = self
            .finalized_at
            .ok_or_else(|| corrupt("completed without finalized_at".into()))?;
        Ok(CompletedTask {
            task_id: self.id,
            image_index,
            params,
            output_key: self.output_key,
            sha256,
            infotext,
            attempt: self.attempt.max(0) as u32,
            worker: self.completed_by,
            leased_at: self.leased_at,
            completed_at,
            render_ms: self.render_ms.map(|ms| ms.max(0) as u64),
        })
    }
}

/// Columns of a [`CompletedRow`], for both backends (Postgres casts `params` to text itself).
macro_rules! completed_columns {
    ($params:expr) => {
        concat!(
            "id, image_index, ",
            $params,
            ", output_key, sha256, infotext, attempt, completed_by, leased_at, \
             finalized_at, render_ms"
        )
    };
}
pub(super) use completed_columns;
