//! Sweep files with `[wildcards]` and `dataset = "name"`: the wildcard folder read into the
//! submitted text, and what a dataset submission added.

use std::path::Path;

use anyhow::Context;
use sdfarm_coordinator::spec::{self, SweepFormat};
use sdfarm_proto::v1 as pb;
use sdfarm_worker::storage::OutputStore;

use crate::jobs::JobClient;

/// The sweep text with its `[wildcards] folder` files read in (relative to the sweep file, or
/// from an object-store prefix such as `s3://bucket/wildcards`), so the coordinator, wherever
/// it runs, gets everything in the text.
pub async fn bundle(path: &Path, text: &str) -> anyhow::Result<String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let format = SweepFormat::from_path(path);
    let bundled = match spec::wildcards::folder_of(text, format) {
        Some(url) if url.contains("://") => {
            let copy = tempfile::tempdir().context("creating a folder for the wildcard files")?;
            copy_prefix(&url, copy.path()).await?;
            spec::wildcards::bundle_copy(text, format, copy.path())
        }
        _ => spec::wildcards::bundle_folder(text, format, dir),
    };
    bundled.with_context(|| format!("{}", path.display()))
}

/// Copies every `.txt` object under `url` to `dir`, keys relative to the prefix, so
/// `__people/artists__` finds `people/artists.txt` as it would in a local folder.
async fn copy_prefix(url: &str, dir: &Path) -> anyhow::Result<()> {
    let problem = |what: String| anyhow::anyhow!("[wildcards] folder {url:?}: {what}");
    // Opening a local store creates its folder; a wildcard folder is only read.
    if let Some(local) = url.strip_prefix("file://") {
        if !Path::new(local).is_dir() {
            return Err(problem("no such prefix: the folder does not exist".into()));
        }
    }
    let store = OutputStore::open(url).map_err(|e| problem(e.to_string()))?;
    let keys = store
        .list("")
        .await
        .map_err(|e| problem(format!("cannot list the prefix (is it reachable?): {e}")))?;
    if keys.is_empty() {
        return Err(problem("no such prefix: it holds no objects".into()));
    }
    // Keys come from the store; one with an empty or `..` segment would land outside `dir`.
    let safe = |k: &str| k.split('/').all(|s| !s.is_empty() && s != "." && s != "..");
    let texts: Vec<&String> = keys
        .iter()
        .filter(|k| k.ends_with(".txt") && safe(k))
        .collect();
    if texts.is_empty() {
        return Err(problem(format!(
            "no .txt wildcard files under it ({} other objects, e.g. {:?})",
            keys.len(),
            keys[0]
        )));
    }
    for key in texts {
        let bytes = store
            .get(key)
            .await
            .map_err(|e| problem(format!("reading {key}: {e}")))?;
        let dest = dir.join(key);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&dest, bytes).with_context(|| format!("writing {}", dest.display()))?;
    }
    Ok(())
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
