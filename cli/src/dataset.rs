//! Dataset commands: `sdfarm manifest` (write and print a job's manifest) and `sdfarm export`
//! (the job's images as a Hugging Face imagefolder, WebDataset shards or JSON lines).
//!
//! Export streams: the manifest is read line by line and each image is copied chunk by chunk
//! as the object store delivers it, so a dataset of any size passes through bounded memory.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::ObjectStore;
use sdfarm_coordinator::manifest::{upload, ManifestRow, JSONL_OBJECT};
use sdfarm_proto::v1 as pb;
use sdfarm_worker::storage::OutputStore;
use serde_json::{Map, Value};

use crate::{jobs, CoordinatorAddr};

#[derive(clap::Args, Debug)]
pub struct ManifestArgs {
    /// Job id.
    pub job: String,
    #[command(flatten)]
    pub coordinator: CoordinatorAddr,
    /// Print the manifest's JSON lines after writing it (read from the object store).
    #[arg(long, env = "SDFARM_PRINT")]
    pub print: bool,
    /// Object store to read it from when printing (default: the coordinator's).
    #[arg(long, env = "SDFARM_STORE")]
    pub store: Option<String>,
}

/// Asks the coordinator to write the job's manifest again from its store, and says where it is.
pub async fn manifest(args: ManifestArgs) -> anyhow::Result<ExitCode> {
    let mut client = jobs::connect(&args.coordinator).await?;
    let reply = client
        .write_manifest(pb::WriteManifestRequest {
            job_id: args.job.clone(),
            only_if_missing: false,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .with_context(|| format!("writing the manifest of job {}", args.job))?
        .into_inner();
    if args.print {
        let url = args.store.as_deref().unwrap_or(&reply.store_url);
        let store = OutputStore::open(url)?.object_store();
        let mut lines = Lines::open(&*store, &reply.jsonl_key).await?;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        while let Some(line) = lines.next().await? {
            writeln!(out, "{line}")?;
        }
    } else {
        println!(
            "manifest of job {}: {} rows in {}/{} and {}",
            args.job,
            reply.rows,
            reply.store_url.trim_end_matches('/'),
            reply.jsonl_key,
            reply.parquet_key
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// Hugging Face imagefolder: the PNGs and `metadata.jsonl` (`file_name`, caption `text`,
    /// the render parameters).
    Imagefolder,
    /// WebDataset: `.tar` shards of `{key}.png`, `{key}.json`, `{key}.txt`.
    Webdataset,
    /// One JSON line per image: the manifest row, its caption and the image's URL.
    Jsonl,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Job id.
    pub job: String,
    #[arg(long, value_enum, env = "SDFARM_EXPORT_FORMAT")]
    pub format: ExportFormat,
    /// A local folder, or an object-store URL (`s3://bucket/prefix`, `file:///dir`).
    #[arg(long, env = "SDFARM_EXPORT_OUT")]
    pub out: String,
    /// WebDataset: images per shard.
    #[arg(long, default_value_t = 1000, env = "SDFARM_SHARD_SIZE")]
    pub shard_size: u32,
    /// Name of the shards (`{prefix}-000000.tar`) and of the jsonl file; default: the job id.
    #[arg(long, env = "SDFARM_EXPORT_PREFIX")]
    pub prefix: Option<String>,
    /// Object store holding the job's images (`sdfarm run --out DIR` wrote them to DIR).
    /// When its manifest is there, no coordinator is needed; default: the coordinator's store.
    #[arg(long, env = "SDFARM_STORE")]
    pub store: Option<String>,
    #[command(flatten)]
    pub coordinator: CoordinatorAddr,
}

pub async fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    if args.shard_size == 0 {
        anyhow::bail!("--shard-size 0: a shard holds at least 1 image");
    }
    let (source, source_url, manifest_key) = locate(&args).await?;
    let out = Output::open(&args.out)?;
    let prefix = args.prefix.clone().unwrap_or_else(|| args.job.clone());
    let mut lines = Lines::open(&*source, &manifest_key).await?;
    let mut exporter = match args.format {
        ExportFormat::Imagefolder => Exporter::ImageFolder {
            metadata: out.staging()?,
        },
        ExportFormat::Webdataset => Exporter::WebDataset {
            shard: None,
            shards: 0,
            in_shard: 0,
        },
        ExportFormat::Jsonl => Exporter::Jsonl {
            file: out.staging()?,
        },
    };
    let mut images = 0u64;
    while let Some(line) = lines.next().await? {
        let row: ManifestRow = serde_json::from_str(&line)
            .with_context(|| format!("{manifest_key} line {}: not a manifest row", images + 1))?;
        match &mut exporter {
            Exporter::ImageFolder { metadata } => {
                let file_name = file_name(&row.key);
                out.copy_image(&*source, &row.key, &file_name).await?;
                let meta = imagefolder_row(&row, &file_name);
                writeln!(metadata.as_file_mut(), "{meta}")?;
            }
            Exporter::WebDataset {
                shard,
                shards,
                in_shard,
            } => {
                if shard.is_none() {
                    *shard = Some(tar::Builder::new(out.staging()?));
                }
                let builder = shard.as_mut().expect("opened above");
                append_sample(builder, &*source, &row).await?;
                *in_shard += 1;
                if *in_shard == args.shard_size {
                    let done = shard.take().expect("opened above");
                    out.commit(&shard_name(&prefix, *shards), done.into_inner()?)
                        .await?;
                    *shards += 1;
                    *in_shard = 0;
                }
            }
            Exporter::Jsonl { file } => {
                let mut value = serde_json::to_value(&row)?;
                value["text"] = Value::String(row.prompt.clone());
                value["url"] =
                    Value::String(format!("{}/{}", source_url.trim_end_matches('/'), row.key));
                writeln!(file.as_file_mut(), "{value}")?;
            }
        }
        images += 1;
    }
    let written = match exporter {
        Exporter::ImageFolder { metadata } => {
            out.commit("metadata.jsonl", metadata).await?;
            "metadata.jsonl".to_string()
        }
        Exporter::WebDataset {
            shard,
            mut shards,
            in_shard: _,
        } => {
            if let Some(last) = shard {
                out.commit(&shard_name(&prefix, shards), last.into_inner()?)
                    .await?;
                shards += 1;
            }
            format!("{shards} shards")
        }
        Exporter::Jsonl { file } => {
            let name = format!("{prefix}.jsonl");
            out.commit(&name, file).await?;
            name
        }
    };
    println!(
        "exported {images} images of job {} to {} ({written})",
        args.job, args.out
    );
    Ok(ExitCode::SUCCESS)
}

enum Exporter {
    ImageFolder {
        metadata: tempfile::NamedTempFile,
    },
    WebDataset {
        shard: Option<tar::Builder<tempfile::NamedTempFile>>,
        shards: u32,
        in_shard: u32,
    },
    Jsonl {
        file: tempfile::NamedTempFile,
    },
}

/// The store holding the job's images and its manifest's key: the manifest found at
/// `--store` as is, otherwise the coordinator writes it if it is missing and names its store.
async fn locate(args: &ExportArgs) -> anyhow::Result<(Arc<dyn ObjectStore>, String, String)> {
    let job = &args.job;
    if let Some(url) = &args.store {
        let store = OutputStore::open(url)?.object_store();
        let key = format!("{job}/{JSONL_OBJECT}");
        if store.head(&ObjectPath::from(key.as_str())).await.is_ok() {
            return Ok((store, url.clone(), key));
        }
    }
    let mut client = jobs::connect(&args.coordinator).await.with_context(|| {
        format!("job {job} has no manifest in --store, so the coordinator must write it")
    })?;
    let reply = client
        .write_manifest(pb::WriteManifestRequest {
            job_id: job.clone(),
            only_if_missing: true,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))
        .with_context(|| format!("finding the manifest of job {job}"))?
        .into_inner();
    let url = args.store.clone().unwrap_or(reply.store_url);
    let store = OutputStore::open(&url)?.object_store();
    Ok((store, url, reply.jsonl_key))
}

/// Where an export goes: a local folder, or an object store.
enum Output {
    Dir(PathBuf),
    Store(OutputStore),
}

impl Output {
    fn open(out: &str) -> anyhow::Result<Output> {
        if out.contains("://") && !out.starts_with("file://") {
            let store = OutputStore::open(out).with_context(|| format!("--out {out}"))?;
            return Ok(Output::Store(store));
        }
        let dir = PathBuf::from(out.strip_prefix("file://").unwrap_or(out));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Output::Dir(dir))
    }

    /// A file to write a whole output object into before `commit` puts it in place: in the
    /// target folder itself (so committing is a rename), or in the system's temporary folder.
    fn staging(&self) -> anyhow::Result<tempfile::NamedTempFile> {
        Ok(match self {
            Output::Dir(dir) => tempfile::Builder::new()
                .prefix(".export-")
                .tempfile_in(dir)?,
            Output::Store(_) => tempfile::NamedTempFile::new()?,
        })
    }

    async fn commit(&self, name: &str, mut file: tempfile::NamedTempFile) -> anyhow::Result<()> {
        file.as_file_mut().flush()?;
        match self {
            Output::Dir(dir) => {
                file.persist(dir.join(name))
                    .with_context(|| format!("writing {}", dir.join(name).display()))?;
            }
            Output::Store(store) => {
                let handle = file.reopen()?;
                upload(&*store.object_store(), name, handle)
                    .await
                    .with_context(|| format!("uploading {name} to {}", store.url()))?;
            }
        }
        Ok(())
    }

    /// Copies one image as it arrives: to a file chunk by chunk, or to the store as one object.
    async fn copy_image(
        &self,
        source: &dyn ObjectStore,
        key: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        let mut chunks = image_stream(source, key).await?.1;
        match self {
            Output::Dir(_) => {
                let mut file = self.staging()?;
                while let Some(chunk) = chunks.next().await {
                    file.write_all(&chunk.with_context(|| format!("reading {key}"))?)?;
                }
                self.commit(name, file).await?;
            }
            Output::Store(store) => {
                let mut bytes = Vec::new();
                while let Some(chunk) = chunks.next().await {
                    bytes.extend_from_slice(&chunk.with_context(|| format!("reading {key}"))?);
                }
                store
                    .put(name, bytes)
                    .await
                    .with_context(|| format!("writing {name} to {}", store.url()))?;
            }
        }
        Ok(())
    }
}

/// The image's size and its bytes as a stream.
async fn image_stream(
    source: &dyn ObjectStore,
    key: &str,
) -> anyhow::Result<(u64, BoxStream<'static, object_store::Result<bytes::Bytes>>)> {
    let got = source
        .get(&ObjectPath::from(key))
        .await
        .with_context(|| format!("reading image {key}"))?;
    Ok((got.meta.size, got.into_stream()))
}

/// One WebDataset sample: the PNG streamed into its tar entry, then its JSON and caption.
async fn append_sample(
    builder: &mut tar::Builder<tempfile::NamedTempFile>,
    source: &dyn ObjectStore,
    row: &ManifestRow,
) -> anyhow::Result<()> {
    let key = sample_key(&row.key);
    let mtime = (row.completed_at_ms / 1000).max(0) as u64;
    let (size, mut chunks) = image_stream(source, &row.key).await?;
    let mut header = entry_header(size, mtime);
    {
        let mut entry = builder.append_writer(&mut header, format!("{key}.png"))?;
        while let Some(chunk) = chunks.next().await {
            entry.write_all(&chunk.with_context(|| format!("reading {}", row.key))?)?;
        }
        entry.finish()?;
    }
    let json = serde_json::to_vec(row)?;
    let mut header = entry_header(json.len() as u64, mtime);
    builder.append_data(&mut header, format!("{key}.json"), json.as_slice())?;
    let caption = row.prompt.as_bytes();
    let mut header = entry_header(caption.len() as u64, mtime);
    builder.append_data(&mut header, format!("{key}.txt"), caption)?;
    Ok(())
}

fn entry_header(size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(mtime);
    header.set_entry_type(tar::EntryType::Regular);
    header
}

fn shard_name(prefix: &str, n: u32) -> String {
    format!("{prefix}-{n:06}.tar")
}

/// The image's file name: the last part of its key (`<job>/<index>-<seed>.png`).
fn file_name(key: &str) -> String {
    key.rsplit('/').next().unwrap_or(key).to_string()
}

/// WebDataset's sample key: the file name without its extension. WebDataset splits a name
/// at its first dot, so the key itself has none.
fn sample_key(key: &str) -> String {
    let name = file_name(key);
    name.split('.').next().unwrap_or(&name).to_string()
}

/// A `metadata.jsonl` line: `file_name`, the caption `text`, every render parameter, then the
/// manifest's fields (the image's real size wins over the requested one).
fn imagefolder_row(row: &ManifestRow, file_name: &str) -> Value {
    let mut out = Map::new();
    out.insert("file_name".into(), Value::String(file_name.to_string()));
    out.insert("text".into(), Value::String(row.prompt.clone()));
    if let Ok(Value::Object(params)) = serde_json::to_value(&row.params) {
        out.extend(params);
    }
    if let Ok(Value::Object(fields)) = serde_json::to_value(row) {
        out.extend(fields.into_iter().filter(|(k, _)| k != "params"));
    }
    Value::Object(out)
}

/// Lines of an object, read as its chunks arrive.
struct Lines {
    chunks: BoxStream<'static, object_store::Result<bytes::Bytes>>,
    pending: Vec<u8>,
    done: bool,
    key: String,
}

impl Lines {
    async fn open(store: &dyn ObjectStore, key: &str) -> anyhow::Result<Lines> {
        let got = store
            .get(&ObjectPath::from(key))
            .await
            .with_context(|| format!("reading {key}"))?;
        Ok(Lines {
            chunks: got.into_stream(),
            pending: Vec::new(),
            done: false,
            key: key.to_string(),
        })
    }

    /// The next non-empty line, without its newline.
    async fn next(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let rest = self.pending.split_off(end + 1);
                let mut line = std::mem::replace(&mut self.pending, rest);
                line.pop();
                if line.is_empty() {
                    continue;
                }
                return Ok(Some(
                    String::from_utf8(line)
                        .with_context(|| format!("{}: a line is not UTF-8", self.key))?,
                ));
            }
            if self.done {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                let line = std::mem::take(&mut self.pending);
                return Ok(Some(
                    String::from_utf8(line)
                        .with_context(|| format!("{}: a line is not UTF-8", self.key))?,
                ));
            }
            match self.chunks.next().await {
                Some(chunk) => self
                    .pending
                    .extend_from_slice(&chunk.with_context(|| format!("reading {}", self.key))?),
                None => self.done = true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_object_key() {
        assert_eq!(file_name("job-1/12-345.png"), "12-345.png");
        assert_eq!(sample_key("job-1/12-345.png"), "12-345");
        assert_eq!(shard_name("cats", 3), "cats-000003.tar");
    }
}
