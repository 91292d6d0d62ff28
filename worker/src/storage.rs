//! Where rendered images go: an `object_store` opened from a URL (`file:///dir`, a plain
//! folder path, `s3://bucket/prefix`, `gs://…`, `az://…`), with keys relative to its prefix.

use std::sync::Arc;

use futures::TryStreamExt;
use object_store::{path::Path as ObjectPath, prefix::PrefixStore, ObjectStore, PutPayload};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object store URL {url:?} is not usable: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

#[derive(Clone)]
pub struct OutputStore {
    store: Arc<dyn ObjectStore>,
    url: String,
}

impl std::fmt::Debug for OutputStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputStore")
            .field("url", &self.url)
            .finish()
    }
}

impl OutputStore {
    /// Opens the store named by `url`. S3 credentials and endpoint come from the usual
    /// `AWS_*` environment variables (`AWS_ENDPOINT` for S3-compatible servers).
    pub fn open(url: &str) -> Result<Self, StorageError> {
        let bad = |reason: String| StorageError::BadUrl {
            url: url.to_string(),
            reason,
        };
        let store: Arc<dyn ObjectStore> = if !url.contains("://") || url.starts_with("file://") {
            let dir = url.strip_prefix("file://").unwrap_or(url);
            std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create {dir}: {e}")))?;
            Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(dir)
                    .map_err(|e| bad(e.to_string()))?,
            )
        } else {
            let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
            let prefix = ObjectPath::from(parsed.path().trim_matches('/'));
            let inner: Arc<dyn ObjectStore> = match parsed.scheme() {
                "s3" | "s3a" => Arc::new(
                    object_store::aws::AmazonS3Builder::from_env()
                        .with_url(url)
                        .build()
                        .map_err(|e| bad(e.to_string()))?,
                ),
                _ => {
                    let env: Vec<(String, String)> = std::env::vars().collect();
                    let (store, _) = object_store::parse_url_opts(&parsed, env)
                        .map_err(|e| bad(e.to_string()))?;
                    Arc::from(store)
                }
            };
            if prefix.as_ref().is_empty() {
                inner
            } else {
                Arc::new(PrefixStore::new(inner, prefix))
            }
        };
        Ok(OutputStore {
            store,
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The store itself, keys relative to the URL's prefix: for streaming reads and
    /// multipart writes of objects too large to hold in memory.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Writes `bytes` at `key`, replacing what was there: a re-run task rewrites the same key.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.store
            .put(&ObjectPath::from(key), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let data = self
            .store
            .get(&ObjectPath::from(key))
            .await?
            .bytes()
            .await?;
        Ok(data.to_vec())
    }

    /// Keys under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let prefix = ObjectPath::from(prefix);
        let mut keys: Vec<String> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await?;
        keys.sort();
        Ok(keys)
    }
}
