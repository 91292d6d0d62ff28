//! The worker's download cache: each remote file once on disk, verified by sha256, written
//! atomically, fetched once however many tasks ask at the same time, and evicted least
//! recently used first when the cache grows past its byte cap.
//!
//! Layout: `<root>/<16 hex of sha256(source)>/<file name>` plus a `.used` marker whose
//! modification time records the last use (the file's own mtime stays untouched, so the
//! resolver's hash cache, keyed by size and mtime, stays valid). Downloads land in
//! `<root>/.partial-*` first and are renamed into place only once verified, so a reader never
//! sees a partial file and a crash leaves nothing that looks complete.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::engine::EngineError;

const USED_MARKER: &str = ".used";
/// The model references that name an entry, one per line (several references can name the
/// same URL: with and without a sha256 pin).
const REFS_FILE: &str = ".refs";

/// One cached download: its folder and total size.
#[derive(Debug, Clone)]
struct Entry {
    dir: PathBuf,
    bytes: u64,
    last_used: SystemTime,
}

/// A byte-capped, LRU-evicted cache of downloaded files.
pub struct DiskCache {
    root: PathBuf,
    cap_bytes: u64,
    /// One lock per source being fetched, so concurrent requests wait for one download.
    inflight: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    downloads: AtomicUsize,
}

/// The sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, EngineError> {
    let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| EngineError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn touch(dir: &Path) {
    let marker = dir.join(USED_MARKER);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&marker);
    if let Ok(file) = file {
        let _ = file.set_modified(SystemTime::now());
    }
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

impl DiskCache {
    pub fn new(root: impl Into<PathBuf>, cap_bytes: u64) -> Self {
        DiskCache {
            root: root.into(),
            cap_bytes,
            inflight: Mutex::new(HashMap::new()),
            downloads: AtomicUsize::new(0),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn cap_bytes(&self) -> u64 {
        self.cap_bytes
    }

    /// How many downloads this cache has started (tests check deduplication with it).
    pub fn downloads(&self) -> usize {
        self.downloads.load(Ordering::SeqCst)
    }

    fn entry_dir(&self, source: &str) -> PathBuf {
        let key = hex::encode(Sha256::digest(source.as_bytes()));
        self.root.join(&key[..16])
    }

    /// The cached copy of `source` named `file_name`, downloading it with `fetch` (which writes
    /// the given temporary path) when absent. With `sha256`, the bytes must hash to it.
    /// Returns the path and the file's full sha256.
    pub fn get_or_fetch(
        &self,
        source: &str,
        file_name: &str,
        sha256: Option<&str>,
        fetch: &mut dyn FnMut(&Path) -> Result<(), EngineError>,
    ) -> Result<(PathBuf, Option<String>), EngineError> {
        if file_name.is_empty() || file_name.contains(['/', '\\']) || file_name.starts_with('.') {
            return Err(EngineError::param(
                "model",
                format!("{source:?}"),
                "a URL that ends in a file name",
            ));
        }
        let dir = self.entry_dir(source);
        let target = dir.join(file_name);
        let lock = self
            .inflight
            .lock()
            .expect("download locks")
            .entry(source.to_string())
            .or_default()
            .clone();
        let guard = lock.lock().expect("download lock");
        if target.is_file() {
            touch(&dir);
            return Ok((target, None));
        }
        std::fs::create_dir_all(&self.root).map_err(|e| EngineError::io(&self.root, e))?;
        let partial = self
            .root
            .join(format!(".partial-{}-{file_name}", unique_suffix()));
        self.downloads.fetch_add(1, Ordering::SeqCst);
        let result = fetch(&partial).and_then(|()| {
            let actual = sha256_file(&partial)?;
            if let Some(expected) = sha256 {
                if actual != expected.to_ascii_lowercase() {
                    return Err(EngineError::invalid_model(
                        &target,
                        format!(
                            "downloaded from {source} but its sha256 is {actual}, not the \
                             pinned {expected}; the file changed or the pin is wrong"
                        ),
                    ));
                }
            }
            std::fs::create_dir_all(&dir).map_err(|e| EngineError::io(&dir, e))?;
            std::fs::rename(&partial, &target).map_err(|e| EngineError::io(&target, e))?;
            touch(&dir);
            Ok(actual)
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        drop(guard);
        self.inflight.lock().expect("download locks").remove(source);
        let actual = result?;
        self.evict(&dir);
        Ok((target, Some(actual)))
    }

    /// Cached entries, least recently used first.
    fn entries(&self) -> Vec<Entry> {
        let Ok(read) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut entries: Vec<Entry> = read
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| e.path().is_dir())
            .map(|e| {
                let dir = e.path();
                let bytes = std::fs::read_dir(&dir)
                    .map(|files| {
                        files
                            .flatten()
                            // Markers and reference lists are bookkeeping, not the model.
                            .filter(|f| !f.file_name().to_string_lossy().starts_with('.'))
                            .filter_map(|f| f.metadata().ok())
                            .map(|m| m.len())
                            .sum()
                    })
                    .unwrap_or(0);
                let last_used = std::fs::metadata(dir.join(USED_MARKER))
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                Entry {
                    dir,
                    bytes,
                    last_used,
                }
            })
            .collect();
        entries.sort_by_key(|e| (e.last_used, e.dir.clone()));
        entries
    }

    /// Remembers that model reference `reference` resolved to the cached `file`, so
    /// [`DiskCache::references`] can report it.
    pub fn note_reference(&self, file: &Path, reference: &str) {
        let Some(dir) = file
            .parent()
            .filter(|d| d.parent() == Some(self.root.as_path()))
        else {
            return;
        };
        let refs = dir.join(REFS_FILE);
        let known = std::fs::read_to_string(&refs).unwrap_or_default();
        if known.lines().any(|l| l == reference) || reference.contains('\n') {
            return;
        }
        let mut text = known;
        text.push_str(reference);
        text.push('\n');
        // Written whole and renamed, so a reader never sees half a line.
        let temp = dir.join(format!("{REFS_FILE}.tmp-{}", unique_suffix()));
        if std::fs::write(&temp, text).is_ok() && std::fs::rename(&temp, &refs).is_err() {
            let _ = std::fs::remove_file(&temp);
        }
    }

    /// The model references of every cached file, least recently used first.
    pub fn references(&self) -> Vec<String> {
        self.entries()
            .iter()
            .flat_map(|e| {
                std::fs::read_to_string(e.dir.join(REFS_FILE))
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Total bytes held.
    pub fn used_bytes(&self) -> u64 {
        self.entries().iter().map(|e| e.bytes).sum()
    }

    /// Cached files, least recently used first.
    pub fn files(&self) -> Vec<PathBuf> {
        self.entries()
            .into_iter()
            .flat_map(|e| {
                std::fs::read_dir(&e.dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|f| f.path())
                    .filter(|p| !p.ends_with(USED_MARKER) && !p.ends_with(REFS_FILE))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Removes least recently used entries until the cache fits its cap. The entry just
    /// written is kept even when it alone exceeds the cap: the task asking for it needs it.
    fn evict(&self, keep: &Path) {
        let entries = self.entries();
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        for entry in entries {
            if total <= self.cap_bytes {
                break;
            }
            if entry.dir == keep {
                continue;
            }
            tracing::info!(dir = %entry.dir.display(), bytes = entry.bytes, "evicting cached model");
            if std::fs::remove_dir_all(&entry.dir).is_ok() {
                total = total.saturating_sub(entry.bytes);
            }
        }
    }
}
