//! Submitting a dataset spec (`dataset = "name"`): the first submission creates the job,
//! later ones add only the cells it does not hold yet and put its failed, discarded and
//! cancelled cells back in the queue (see `crate::dataset`).

use super::{Coordinator, Error, Event, NewJob, NewTask, Result};
use crate::dataset;
use crate::expand;
use crate::spec::SweepSpec;
use crate::store::{JobRecord, StoreError};

/// What a dataset submission did.
#[derive(Debug, Clone)]
pub struct DatasetSubmit {
    pub job: JobRecord,
    /// Cells (images) the spec has that the job did not: stored now.
    pub added: u64,
    /// Cells of the spec the job already held (or that repeat another cell of the spec).
    pub present: u64,
    /// Failed, discarded or cancelled cells put back in the queue.
    pub requeued: u64,
}

impl Coordinator {
    /// `spec` is resolved and within the limits; `seed` as in `submit_as`.
    pub(super) async fn submit_dataset(
        &self,
        spec: &SweepSpec,
        seed: i64,
        sweep: &str,
        name: String,
        owner: String,
    ) -> Result<DatasetSubmit> {
        let dataset = spec.dataset.as_deref().expect("a dataset spec");
        let id = dataset::job_id(dataset);
        let existing = self.store.dataset_cells(&id).await?;
        let creating = existing.is_none();
        let (mut known, mut next_index) =
            existing.map(|c| (c.keys, c.next_index)).unwrap_or_default();
        let images = expand::image_count(spec);
        let job = NewJob {
            id: id.clone(),
            name,
            sweep: sweep.to_string(),
            output_prefix: id.clone(),
            max_attempts: spec.max_attempts,
            priority: spec.priority,
            pool: spec
                .pool
                .clone()
                .unwrap_or_else(|| self.config.default_pool.clone()),
            owner,
        };
        // New cells get the image indices after the job's last one, in spec order.
        let mut tasks = expand::expand(spec, seed).filter_map(|img| {
            let key = dataset::cell_key(&img.params);
            if !known.insert(key) {
                return None;
            }
            let index = next_index;
            next_index += 1;
            Some(NewTask {
                output_key: expand::output_key(&id, index, img.params.seed),
                image_index: index,
                params: img.params,
                cell_key: Some(dataset::key_hex(&key)),
            })
        });
        let now = self.clock.now_ms();
        let stored = if creating {
            self.store.create_job_streaming(&job, &mut tasks, now).await
        } else {
            self.store.extend_job_streaming(&job, &mut tasks, now).await
        }
        .map_err(|e| concurrent(e, dataset))?;
        let requeued = if creating {
            0
        } else {
            self.store.retry_job(&id, now).await?.0
        };
        self.metrics.submitted(&job.pool, stored as usize);
        self.scheduler.invalidate();
        tracing::info!(
            job_id = %id, dataset, added = stored, present = images - stored, requeued,
            "dataset submitted"
        );
        self.work_ready.notify_waiters();
        self.events.publish(Event::JobChanged(Some(id.clone())));
        Ok(DatasetSubmit {
            job: self.store.get_job(&id).await?,
            added: stored,
            present: images - stored,
            requeued,
        })
    }
}

/// Two submissions of one dataset at the same moment: the second finds the first's job or
/// cell keys taken, and nothing of it is stored.
fn concurrent(e: StoreError, dataset: &str) -> Error {
    match &e {
        StoreError::Db(sqlx::Error::Database(d)) if d.is_unique_violation() => {
            Error::InvalidArgument(format!(
                "dataset {dataset:?} was being submitted by another request at the same time; \
                 nothing of this submission was stored: submit it again to add what is missing"
            ))
        }
        _ => e.into(),
    }
}
