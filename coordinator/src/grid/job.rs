//! Composing a finished job's grids: reading its images back from the object store,
//! drawing, and writing `grid-….png` beside them.
//!
//! Idempotent by construction: grids are a pure function of the job's images and its
//! `grid-plan.json`, so composing twice (two replicas, or a retry after a crash) writes the
//! same bytes to the same keys, and `grid-done.json`, written last, ends the work. A
//! coordinator learns of grid jobs at submit; after a restart it finds unfinished ones among
//! the recent jobs.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use image::RgbImage;
use tokio::sync::Notify;

use super::storage::OutputStore;
use super::{cell_tile, compose, encode_png, GridPlan, DONE_OBJECT, PLAN_OBJECT};
use crate::service::Coordinator;
use crate::store::{JobState, TaskState};

/// How often jobs waiting for grids are checked without a wake-up: their last image may
/// complete on another replica.
const POLL: Duration = Duration::from_secs(2);
/// Recent jobs looked at on start-up for grids a previous run did not finish.
const STARTUP_SCAN: u32 = 200;

/// The coordinator's grid bookkeeping.
#[derive(Default)]
pub struct GridQueue {
    outputs: OnceLock<Option<OutputStore>>,
    /// Jobs with a grid plan whose grids are not known to be done.
    waiting: Mutex<BTreeSet<String>>,
    wake: Notify,
}

#[derive(Debug, thiserror::Error)]
pub enum GridError {
    #[error("object store: {0}")]
    Storage(#[from] super::storage::StorageError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("grid plan of job {job_id} is unreadable: {reason}")]
    Plan { job_id: String, reason: String },
    #[error("encoding grid {name}: {reason}")]
    Encode { name: String, reason: String },
}

impl GridQueue {
    /// Something completed: a waiting job may have finished.
    pub fn poke(&self) {
        self.wake.notify_one();
    }
}

impl Coordinator {
    fn outputs(&self) -> Option<&OutputStore> {
        self.grids
            .outputs
            .get_or_init(|| match OutputStore::open(&self.config.store_url) {
                Ok(s) => Some(s),
                Err(err) => {
                    tracing::error!(error = %err, "object store unusable: no grids will be composed");
                    None
                }
            })
            .as_ref()
    }

    /// Stores the plan before the job exists, so a job never finishes without one.
    pub(crate) async fn save_grid_plan(
        &self,
        prefix: &str,
        plan: &GridPlan,
    ) -> Result<(), GridError> {
        let Some(outputs) = self.outputs() else {
            return Ok(());
        };
        let json = serde_json::to_vec(plan).expect("grid plans serialise");
        outputs
            .put(&format!("{prefix}/{PLAN_OBJECT}"), json)
            .await?;
        Ok(())
    }

    pub(crate) fn await_grids(&self, job_id: &str) {
        self.grids
            .waiting
            .lock()
            .unwrap()
            .insert(job_id.to_string());
        self.grids.poke();
    }

    /// Composes the job's grids if it has finished and they are missing. Returns whether
    /// the job needs nothing more (grids done, no grids, or cancelled).
    pub async fn compose_grids(&self, job_id: &str) -> Result<bool, GridError> {
        let job = self.store.get_job(job_id).await?;
        if job.finished_at.is_none() {
            return Ok(false);
        }
        let Some(outputs) = self.outputs() else {
            return Ok(true);
        };
        if job.state() == JobState::Cancelled {
            return Ok(true);
        }
        let prefix = job.output_prefix.trim_end_matches('/');
        let plan: GridPlan = match outputs.get(&format!("{prefix}/{PLAN_OBJECT}")).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| GridError::Plan {
                job_id: job_id.to_string(),
                reason: e.to_string(),
            })?,
            // No plan: a plain sweep, or one too large for a grid.
            Err(_) => return Ok(true),
        };
        if outputs
            .get(&format!("{prefix}/{DONE_OBJECT}"))
            .await
            .is_ok()
        {
            return Ok(true);
        }
        let tasks = self.store.list_tasks(job_id).await?;
        let mut images: HashMap<u64, RgbImage> = HashMap::new();
        let mut infotexts: HashMap<u64, String> = HashMap::new();
        let (mut w, mut h) = (0, 0);
        for t in tasks.iter().filter(|t| t.state == TaskState::Completed) {
            let index = u64::from(t.image_index);
            let bytes = outputs.get(&t.output_key).await?;
            match image::load_from_memory(&bytes) {
                Ok(img) => {
                    let img = img.to_rgb8();
                    (w, h) = (img.width(), img.height());
                    images.insert(index, img);
                }
                Err(err) => {
                    tracing::warn!(job_id, key = %t.output_key, error = %err, "image unreadable; its grid cell stays black")
                }
            }
            if let Some(info) = &t.infotext {
                infotexts.insert(index, info.clone());
            }
        }
        // A cell that failed is black, as in A1111; sized like the images that did render.
        let black = RgbImage::new(w.max(1), h.max(1));
        let tile = |pos: u64| {
            cell_tile(
                plan.images_of(pos)
                    .map(|i| images.get(&i).cloned().unwrap_or_else(|| black.clone()))
                    .collect(),
            )
        };
        let infotext = |pos: u64| {
            infotexts
                .get(&plan.images_of(pos).start)
                .cloned()
                .unwrap_or_default()
        };
        let grids = compose(&plan, tile, infotext);
        let mut names = Vec::new();
        for grid in grids {
            let png = encode_png(&grid.image, &grid.infotext).map_err(|e| GridError::Encode {
                name: grid.name.clone(),
                reason: e.to_string(),
            })?;
            outputs.put(&format!("{prefix}/{}", grid.name), png).await?;
            names.push(grid.name);
        }
        let done = serde_json::to_vec(&serde_json::json!({ "grids": names })).expect("json");
        outputs
            .put(&format!("{prefix}/{DONE_OBJECT}"), done)
            .await?;
        tracing::info!(job_id, grids = ?names, "grids composed");
        Ok(true)
    }

    /// Composes grids as jobs finish, until the coordinator shuts down.
    pub async fn grid_loop(self: Arc<Self>) {
        if let Ok(jobs) = self.store.list_jobs(STARTUP_SCAN).await {
            let mut waiting = self.grids.waiting.lock().unwrap();
            waiting.extend(jobs.into_iter().map(|j| j.id));
        }
        loop {
            let _ = tokio::time::timeout(POLL, self.grids.wake.notified()).await;
            self.compose_waiting().await;
        }
    }

    /// One pass over the jobs waiting for grids.
    pub async fn compose_waiting(&self) {
        let jobs: Vec<String> = self.grids.waiting.lock().unwrap().iter().cloned().collect();
        for job_id in jobs {
            match self.compose_grids(&job_id).await {
                Ok(true) => {
                    self.grids.waiting.lock().unwrap().remove(&job_id);
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::error!(job_id, error = %err, "composing grids failed; will retry")
                }
            }
        }
    }
}
