//! Bringing remote models onto this machine: object-store and HTTP(S) URLs into the
//! [`DiskCache`](super::disk_cache::DiskCache), Hugging Face Hub repositories through the
//! `hf-hub` crate and its own cache.
//!
//! Resolution runs on the render's blocking thread, while the clients are async; each fetch
//! runs on a scoped thread with its own small runtime, which works whether or not the caller
//! is itself inside a tokio runtime.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use object_store::ObjectStore;

use crate::engine::config::REQUIRED_FILES;
use crate::engine::EngineError;

/// Runs `fut` to completion on a fresh current-thread runtime in a scoped thread.
fn block_on<F: Future + Send>(fut: F) -> Result<F::Output, EngineError>
where
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| EngineError::io("tokio runtime", e))?;
                Ok(runtime.block_on(fut))
            })
            .join()
            .unwrap_or_else(|_| {
                Err(EngineError::io(
                    "model download",
                    std::io::Error::other("download thread panicked"),
                ))
            })
    })
}

/// A transient failure (network, server): retryable, naming what was being fetched.
fn transient(what: &str, reason: impl std::fmt::Display) -> EngineError {
    EngineError::io(what, std::io::Error::other(reason.to_string()))
}

/// The last path segment of a URL, which names the cached file (and so A1111's "Model").
pub fn url_file_name(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or(url);
    without_query
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Streams the object at `url` into `dest`.
pub fn download_url(url: &str, dest: &Path) -> Result<(), EngineError> {
    let parsed = url::Url::parse(url).map_err(|e| {
        EngineError::param("model", format!("{url:?}"), format!("a valid URL ({e})"))
    })?;
    let (store, path): (Box<dyn ObjectStore>, object_store::path::Path) = match parsed.scheme() {
        "s3" | "s3a" => {
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_url(url)
                .build()
                .map_err(|e| transient(url, e))?;
            let key = object_store::path::Path::from_url_path(parsed.path())
                .map_err(|e| transient(url, e))?;
            (Box::new(store), key)
        }
        _ => {
            let env: Vec<(String, String)> = std::env::vars().collect();
            object_store::parse_url_opts(&parsed, env).map_err(|e| {
                EngineError::param(
                    "model",
                    format!("{url:?}"),
                    format!("a URL an object store can open ({e})"),
                )
            })?
        }
    };
    block_on(async move {
        let result = store.get(&path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => EngineError::ModelNotFound {
                reference: url.to_string(),
                reason: "the object store has no such object".into(),
            },
            other => transient(url, other),
        })?;
        let mut file = std::fs::File::create(dest).map_err(|e| EngineError::io(dest, e))?;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| transient(url, e))?;
            file.write_all(&chunk)
                .map_err(|e| EngineError::io(dest, e))?;
        }
        file.sync_all().map_err(|e| EngineError::io(dest, e))
    })?
}

/// The files of a diffusers repository sdfarm loads.
const HUB_FOLDER_FILES: &[&str] = &[
    "scheduler/scheduler_config.json",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
];

/// Fetches from the Hugging Face Hub into `cache_dir` (hf-hub's layout, shared with its other
/// users). Without `file`, the repository must be a diffusers folder; its snapshot folder is
/// returned. `HF_ENDPOINT` and `HF_TOKEN` are honoured as by the Python client.
pub fn download_hub(
    cache_dir: &Path,
    repo: &str,
    revision: Option<&str>,
    file: Option<&str>,
) -> Result<PathBuf, EngineError> {
    let what = match file {
        Some(f) => format!("hf:{repo}/{f}"),
        None => format!("hf:{repo}"),
    };
    let mut builder = hf_hub::api::tokio::ApiBuilder::new()
        .with_cache_dir(cache_dir.to_path_buf())
        .with_progress(false);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    let api = builder.build().map_err(|e| transient(&what, e))?;
    let repo_handle = match revision {
        Some(rev) => api.repo(hf_hub::Repo::with_revision(
            repo.to_string(),
            hf_hub::RepoType::Model,
            rev.to_string(),
        )),
        None => api.model(repo.to_string()),
    };
    let hub_error = |name: &str, e: hf_hub::api::tokio::ApiError| {
        let message = e.to_string();
        if message.contains("404") {
            EngineError::ModelNotFound {
                reference: what.clone(),
                reason: format!("the hub has no {name} in {repo} ({message})"),
            }
        } else {
            transient(
                &what,
                format!("could not fetch {name} from the Hugging Face Hub: {message}"),
            )
        }
    };
    block_on(async {
        if let Some(file) = file {
            return repo_handle.get(file).await.map_err(|e| hub_error(file, e));
        }
        let index = repo_handle
            .get("model_index.json")
            .await
            .map_err(|e| hub_error("model_index.json", e))?;
        for name in REQUIRED_FILES.iter().filter(|f| **f != "model_index.json") {
            repo_handle
                .get(name)
                .await
                .map_err(|e| hub_error(name, e))?;
        }
        for name in HUB_FOLDER_FILES {
            // Optional: the engine falls back to its own tokenizer and SD 1.5's schedule.
            let _ = repo_handle.get(name).await;
        }
        Ok(index
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| cache_dir.to_path_buf()))
    })?
}
