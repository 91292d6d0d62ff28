//! Sweep files with `[wildcards]` and `dataset = "name"`: the wildcard folder read into the
//! submitted text, and what a dataset submission added.

use std::path::Path;

use anyhow::Context;
use sdfarm_coordinator::spec::{self, SweepFormat};
use sdfarm_proto::v1 as pb;

use crate::jobs::JobClient;

/// The sweep text with its `[wildcards] folder` files read in (relative to the sweep file),
/// so the coordinator, wherever it runs, gets everything in the text.
pub fn bundle(path: &Path, text: &str) -> anyhow::Result<String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    spec::wildcards::bundle_folder(text, SweepFormat::from_path(path), dir)
        .with_context(|| format!("{}", path.display()))
}

/// The dataset a sweep names, and the job that holds it.
pub struct Dataset {
    pub name: String,
    pub job_id: String,
    /// Images the spec has.
    pub images: u64,
    /// Images the job held before this submission.
    pub before: u64,
}

/// Looks the dataset's job up before submitting, so the report can say what was added.
pub async fn before_submit(
    client: &mut JobClient,
    path: &Path,
    text: &str,
) -> anyhow::Result<Option<Dataset>> {
    let Ok(parsed) = spec::parse_sweep(text, SweepFormat::from_path(path)) else {
        // The coordinator names the mistake.
        return Ok(None);
    };
    let Some(name) = parsed.dataset.clone() else {
        return Ok(None);
    };
    let job_id = sdfarm_coordinator::dataset::job_id(&name);
    let before = match client
        .get_job(pb::GetJobRequest {
            job_id: job_id.clone(),
        })
        .await
    {
        Ok(r) => r.into_inner().counts.map_or(0, |c| c.total),
        Err(s) if s.code() == tonic::Code::NotFound => 0,
        Err(s) => return Err(crate::jobs::rpc_error(s)),
    };
    Ok(Some(Dataset {
        name,
        job_id,
        images: sdfarm_coordinator::expand::image_count(&parsed.resolved()),
        before,
    }))
}

impl Dataset {
    /// "dataset NAME: N new images, M already in job ID".
    pub fn report(&self, job: &pb::Job) -> String {
        let after = job.counts.as_ref().map_or(0, |c| c.total);
        let added = after.saturating_sub(self.before);
        format!(
            "dataset {:?}: {added} new images, {} already in job {}",
            self.name,
            self.images.saturating_sub(added),
            self.job_id
        )
    }
}
