//! Writing a job's manifest into the object store, and the coordinator loop that writes it
//! when a job finishes.
//!
//! Both files are written to temporary files first, page by page from the store, then
//! uploaded (multipart above a few MB), so a job of a million images is written in bounded
//! memory. Writing again produces the same bytes: two replicas, or a restart, can both write it.

use std::collections::BTreeSet;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use sdfarm_proto::v1 as pb;
use tokio::sync::broadcast::error::RecvError;

use super::parquet_file::ParquetManifest;
use super::{png_size, ManifestRow, JSONL_OBJECT, PARQUET_OBJECT};
use crate::events::Event;
use crate::grid::storage::{OutputStore, StorageError};
use crate::service::Coordinator;
use crate::store::StoreError;

/// Completed tasks read from the store per query.
const PAGE: u32 = 1000;
/// PNG headers read from the object store at once.
const HEADER_READS: usize = 16;
/// Files up to this size go up in one request; larger ones as a multipart upload.
const SINGLE_PUT: u64 = 8 << 20;
/// How often unfinished jobs are looked at without an event: their last image may complete
/// on another replica.
const POLL: Duration = Duration::from_secs(2);
/// Recent jobs looked at on start-up for manifests a previous run did not write.
const STARTUP_SCAN: u32 = 200;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("object store: {0}")]
    Storage(#[from] StorageError),
    #[error("object store: {0}")]
    Object(#[from] object_store::Error),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("image {key} is not a readable PNG: {reason}")]
    Image { key: String, reason: String },
    #[error("writing the manifest: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing the Parquet manifest: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

impl From<ManifestError> for tonic::Status {
    fn from(err: ManifestError) -> Self {
        match err {
            ManifestError::Store(e) => crate::Error::from(e).into(),
            other => tonic::Status::internal(other.to_string()),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestSummary {
    pub rows: u64,
    pub jsonl_key: String,
    pub parquet_key: String,
}

impl Coordinator {
    /// Writes the job's `manifest.jsonl` and `manifest.parquet` beside its images from the
    /// store's completed tasks (all of them so far, for a job still running).
    pub async fn write_manifest(&self, job_id: &str) -> Result<ManifestSummary, ManifestError> {
        let job = self.store.get_job(job_id).await?;
        let outputs = OutputStore::open(&self.config.store_url)?;
        let objects = outputs.object_store();
        let prefix = job.output_prefix.trim_end_matches('/');

        let mut jsonl = BufWriter::new(tempfile::tempfile()?);
        let parquet_file = tempfile::tempfile()?;
        let mut parquet = ParquetManifest::new(BufWriter::new(parquet_file.try_clone()?))?;
        let mut rows = 0u64;
        let mut after = None;
        loop {
            let page = self.store.completed_tasks(job_id, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.image_index);
            let sized: Vec<ManifestRow> = futures::stream::iter(page)
                .map(|task| {
                    let objects = objects.clone();
                    async move {
                        let (w, h) = image_size(&*objects, &task.output_key).await?;
                        Ok::<_, ManifestError>(ManifestRow::new(task, w, h))
                    }
                })
                .buffered(HEADER_READS)
                .try_collect()
                .await?;
            for row in sized {
                jsonl.write_all(row.to_json_line().as_bytes())?;
                jsonl.write_all(b"\n")?;
                parquet.push(row)?;
                rows += 1;
            }
        }
        let jsonl = jsonl.into_inner().map_err(|e| e.into_error())?;
        // Flushed through the clone; the original handle is read back from its start.
        drop(parquet.finish()?.into_inner().map_err(|e| e.into_error())?);

        let jsonl_key = format!("{prefix}/{JSONL_OBJECT}");
        let parquet_key = format!("{prefix}/{PARQUET_OBJECT}");
        upload(&*objects, &jsonl_key, jsonl).await?;
        upload(&*objects, &parquet_key, parquet_file).await?;
        tracing::info!(job_id, rows, "manifest written");
        Ok(ManifestSummary {
            rows,
            jsonl_key,
            parquet_key,
        })
    }

    /// The `WriteManifest` call: writes the manifest (or keeps an existing one when
    /// `only_if_missing`) and says where it is.
    pub async fn manifest_request(
        &self,
        job_id: &str,
        only_if_missing: bool,
    ) -> Result<pb::WriteManifestResponse, ManifestError> {
        let job = self.store.get_job(job_id).await?;
        let prefix = job.output_prefix.trim_end_matches('/').to_string();
        let mut reply = pb::WriteManifestResponse {
            job: None,
            rows: 0,
            written: false,
            jsonl_key: format!("{prefix}/{JSONL_OBJECT}"),
            parquet_key: format!("{prefix}/{PARQUET_OBJECT}"),
            store_url: self.config.store_url.clone(),
        };
        if !(only_if_missing && self.has_manifest(&prefix).await) {
            let summary = self.write_manifest(job_id).await?;
            reply.rows = summary.rows;
            reply.written = true;
        }
        reply.job = Some(crate::grpc::job_to_proto(&job));
        Ok(reply)
    }

    /// Writes manifests as jobs finish (cancelled jobs excepted), until the coordinator
    /// shuts down. Jobs are learnt
    /// of from the event bus (submits, and other replicas' through the relay) and from the
    /// recent jobs at start-up.
    pub async fn manifest_loop(self: Arc<Self>) {
        let mut events = self.events.subscribe();
        let mut waiting = BTreeSet::new();
        self.scan_recent(&mut waiting).await;
        loop {
            match tokio::time::timeout(POLL, events.recv()).await {
                Ok(Ok(Event::JobChanged(Some(job_id)))) => {
                    waiting.insert(job_id);
                }
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(RecvError::Lagged(_))) => self.scan_recent(&mut waiting).await,
                Ok(Err(RecvError::Closed)) => return,
            }
            self.write_finished(&mut waiting).await;
        }
    }

    /// Finished recent jobs without a manifest get one now; unfinished ones are waited for.
    async fn scan_recent(&self, waiting: &mut BTreeSet<String>) {
        let Ok(jobs) = self.store.list_jobs(STARTUP_SCAN).await else {
            return;
        };
        for job in jobs {
            if job.cancelled {
                continue;
            }
            if job.finished_at.is_none() {
                waiting.insert(job.id);
            } else if !self.has_manifest(&job.output_prefix).await {
                if let Err(err) = self.write_manifest(&job.id).await {
                    tracing::error!(job_id = %job.id, error = %err, "writing the manifest failed");
                }
            }
        }
    }

    async fn has_manifest(&self, prefix: &str) -> bool {
        let Ok(outputs) = OutputStore::open(&self.config.store_url) else {
            return false;
        };
        let key = format!("{}/{PARQUET_OBJECT}", prefix.trim_end_matches('/'));
        outputs
            .object_store()
            .head(&ObjectPath::from(key))
            .await
            .is_ok()
    }

    /// Writes the manifest of every waiting job that has finished since it was last looked at.
    async fn write_finished(&self, waiting: &mut BTreeSet<String>) {
        let ids: Vec<String> = waiting.iter().cloned().collect();
        for job_id in ids {
            match self.store.get_job(&job_id).await {
                // A cancelled job gets no manifest unless one is asked for.
                Ok(job) if job.cancelled => {
                    waiting.remove(&job_id);
                }
                Ok(job) if job.finished_at.is_some() => match self.write_manifest(&job_id).await {
                    Ok(_) => {
                        waiting.remove(&job_id);
                    }
                    Err(err) => {
                        tracing::error!(job_id, error = %err, "writing the manifest failed; will retry")
                    }
                },
                Ok(_) => {}
                Err(StoreError::JobNotFound(_)) => {
                    waiting.remove(&job_id);
                }
                Err(err) => tracing::warn!(job_id, error = %err, "reading the job failed"),
            }
        }
    }
}

/// The PNG's size, from its first 24 bytes.
async fn image_size(objects: &dyn ObjectStore, key: &str) -> Result<(u32, u32), ManifestError> {
    let header = objects.get_range(&ObjectPath::from(key), 0..24).await?;
    png_size(&header).ok_or_else(|| ManifestError::Image {
        key: key.to_string(),
        reason: "no PNG header".into(),
    })
}

/// Uploads a (temporary) file from its start: in one request when small, as a multipart
/// upload otherwise, so the file is never held in memory whole.
pub async fn upload(
    objects: &dyn ObjectStore,
    key: &str,
    mut file: std::fs::File,
) -> Result<(), ManifestError> {
    let size = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let path = ObjectPath::from(key);
    if size <= SINGLE_PUT {
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes)?;
        objects.put(&path, PutPayload::from(bytes)).await?;
        return Ok(());
    }
    let mut upload = WriteMultipart::new(objects.put_multipart(&path).await?);
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        upload.wait_for_capacity(4).await?;
        upload.write(&chunk[..n]);
    }
    upload.finish().await?;
    Ok(())
}
