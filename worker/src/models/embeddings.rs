//! Textual-inversion embeddings as A1111 uses them: a file `EasyNegative.safetensors` in the
//! embeddings folder makes the word `EasyNegative` in a prompt stand for the file's vectors.
//!
//! A1111 matches embeddings on token ids, not on text: each embedding's name is tokenized and
//! a prompt fragment whose tokens continue with that sequence uses the embedding there (the
//! longest name wins). The CLIP tokenizer lowercases, so `easynegative` matches too. Each
//! vector takes one token slot of the 75-token chunk; a multi-vector embedding that does not
//! fit the rest of a chunk starts the next one. The vectors replace the token embeddings
//! before the position embeddings are added.
//!
//! Only `.safetensors` files load. Pickled `.pt`/`.bin` embeddings are listed (so the name is
//! recognised) and refused when a prompt uses them, with the conversion hint. Accepted
//! layouts: one float tensor (`emb_params`, `string_to_param.*`, a diffusers concept's
//! `<token>`), shaped `[vectors, width]` or `[width]`; or SDXL's `clip_l` + `clip_g` pair.
//! Vectors are read lazily, only for the names a prompt uses, and kept while the file is
//! unchanged.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use candle_core::{DType, Device, Tensor};

use super::safe_file::{self, SafeFile};
use crate::engine::conditioning::{EmbeddingLookup, EmbeddingMatch, CHUNK_LEN};
use crate::engine::tokenizer::PromptTokenizer;
use crate::engine::EngineError;

/// The vectors of one embedding, per text encoder.
#[derive(Debug, Clone)]
pub enum Vectors {
    /// `[vectors, width]` for a model with one text encoder.
    Single(Tensor),
    /// SDXL: one set per text encoder, with the same number of vectors.
    Sdxl { clip_l: Tensor, clip_g: Tensor },
}

impl Vectors {
    /// How many token slots the embedding takes.
    pub fn count(&self) -> usize {
        match self {
            Vectors::Single(t) => t.dim(0).unwrap_or(0),
            Vectors::Sdxl { clip_l, .. } => clip_l.dim(0).unwrap_or(0),
        }
    }
}

/// One embedding file, loaded.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// The file stem, the word used in prompts.
    pub name: String,
    pub path: PathBuf,
    pub vectors: Vectors,
}

/// The vector layout of an embedding file, read from its header only.
fn layout(file: &SafeFile) -> Result<(Vec<String>, usize), EngineError> {
    let bad = |reason: String| EngineError::invalid_model(file.path(), reason);
    let floats: Vec<(&String, &safe_file::TensorInfo)> = file
        .tensors()
        .iter()
        .filter(|(_, info)| info.dtype.starts_with(['F', 'B']) && info.dtype != "BOOL")
        .collect();
    let names: Vec<String> = floats.iter().map(|(n, _)| n.to_string()).collect();
    let shape_of = |name: &str| -> Result<usize, EngineError> {
        let info = &file.tensors()[name];
        match info.shape.as_slice() {
            [_] => Ok(1),
            [n, _] if *n > 0 => Ok(*n),
            other => Err(bad(format!(
                "tensor {name} has shape {other:?}; embedding vectors are [vectors, width] \
                 or [width]"
            ))),
        }
    };
    let chosen: Vec<String> =
        if names.iter().any(|n| n == "clip_l") && names.iter().any(|n| n == "clip_g") {
            vec!["clip_l".into(), "clip_g".into()]
        } else if names.len() == 1 {
            names.clone()
        } else if let Some(param) = names.iter().find(|n| n.starts_with("string_to_param")) {
            vec![param.clone()]
        } else {
            return Err(bad(format!(
                "{} float tensors ({}); a textual-inversion embedding holds one (emb_params, \
             string_to_param.*) or SDXL's clip_l and clip_g",
                names.len(),
                names.join(", ")
            )));
        };
    let counts = chosen
        .iter()
        .map(|n| shape_of(n))
        .collect::<Result<Vec<_>, _>>()?;
    if counts.windows(2).any(|w| w[0] != w[1]) {
        return Err(bad(format!(
            "clip_l and clip_g hold different numbers of vectors ({} and {})",
            counts[0], counts[1]
        )));
    }
    let count = counts[0];
    if count > CHUNK_LEN {
        return Err(bad(format!(
            "{count} vectors; an embedding must fit one 75-token chunk"
        )));
    }
    Ok((chosen, count))
}

/// Reads an embedding file (safetensors only) onto `device` as float32.
pub fn load(path: &Path, name: &str, device: &Device) -> Result<Embedding, EngineError> {
    safe_file::refuse_pickle(path)?;
    let file = SafeFile::open(path)?;
    let (tensors, _) = layout(&file)?;
    let wanted: Vec<(&str, String)> = tensors.iter().map(|n| (n.as_str(), n.clone())).collect();
    let mut read = file.read(&wanted, device)?;
    let mut take = |key: &str| -> Result<Tensor, EngineError> {
        let t = read
            .remove(key)
            .expect("read what was asked")
            .to_dtype(DType::F32)?;
        Ok(if t.rank() == 1 { t.unsqueeze(0)? } else { t })
    };
    let vectors = if tensors.len() == 2 {
        Vectors::Sdxl {
            clip_l: take("clip_l")?,
            clip_g: take("clip_g")?,
        }
    } else {
        Vectors::Single(take(&tensors[0])?)
    };
    Ok(Embedding {
        name: name.to_string(),
        path: path.to_path_buf(),
        vectors,
    })
}

/// Embeddings loaded from disk, kept while their file's size and modification time stay the
/// same.
#[derive(Default)]
pub struct EmbeddingCache {
    loaded: Mutex<HashMap<PathBuf, (u64, Option<SystemTime>, Arc<Embedding>)>>,
}

impl EmbeddingCache {
    fn get(&self, path: &Path, name: &str, device: &Device) -> Result<Arc<Embedding>, EngineError> {
        let meta = std::fs::metadata(path).map_err(|e| EngineError::io(path, e))?;
        let stamp = (meta.len(), meta.modified().ok());
        if let Some((len, modified, e)) = self.loaded.lock().expect("embedding cache").get(path) {
            if (*len, *modified) == stamp && e.vectors_on(device) {
                return Ok(e.clone());
            }
        }
        let embedding = Arc::new(load(path, name, device)?);
        let mut loaded = self.loaded.lock().expect("embedding cache");
        // Embeddings are a few kilobytes each; a bound only guards against a folder of
        // thousands used one after another.
        if loaded.len() >= 256 {
            loaded.clear();
        }
        loaded.insert(path.to_path_buf(), (stamp.0, stamp.1, embedding.clone()));
        Ok(embedding)
    }
}

impl Embedding {
    fn vectors_on(&self, device: &Device) -> bool {
        let t = match &self.vectors {
            Vectors::Single(t) => t,
            Vectors::Sdxl { clip_l, .. } => clip_l,
        };
        t.device().same_device(device)
    }
}

/// One embedding file found in the folder.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    path: PathBuf,
}

/// What the infotext says about one used embedding: A1111's `name: hash12`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedEmbedding {
    pub name: String,
    pub path: PathBuf,
}

/// The embeddings of a folder as a prompt encoder sees them: names indexed by their token
/// ids for one tokenizer, vectors loaded on first use, and the record of which were used.
pub struct EmbeddingSet<'a> {
    entries: Vec<Entry>,
    /// First token id → (name token ids, entry index), longest names first.
    by_first_token: HashMap<u32, Vec<(Vec<u32>, usize)>>,
    cache: &'a EmbeddingCache,
    device: Device,
    /// A1111's "TI hashes" as accumulated over encoder calls: the embeddings each call used,
    /// newest call first (see [`EmbeddingSet::note_call`]).
    used_calls: Mutex<Vec<Vec<UsedEmbedding>>>,
}

impl<'a> EmbeddingSet<'a> {
    /// No embeddings: every word is text.
    pub fn empty(cache: &'a EmbeddingCache) -> Self {
        EmbeddingSet {
            entries: Vec::new(),
            by_first_token: HashMap::new(),
            cache,
            device: Device::Cpu,
            used_calls: Mutex::new(Vec::new()),
        }
    }

    /// Indexes the embedding files under `dir` (subfolders included) for `tokenizer`. Two
    /// files with the same stem: the first by relative path wins. A missing folder has none.
    pub fn scan(
        dir: Option<&Path>,
        tokenizer: &PromptTokenizer,
        cache: &'a EmbeddingCache,
        device: &Device,
    ) -> Result<Self, EngineError> {
        let mut set = Self::empty(cache);
        set.device = device.clone();
        let Some(dir) = dir else {
            return Ok(set);
        };
        let mut seen = BTreeMap::new();
        for candidate in super::reference::list_models(dir) {
            if !candidate.path.is_file() {
                continue;
            }
            let Some(stem) = candidate.path.file_stem() else {
                continue;
            };
            let name = stem.to_string_lossy().into_owned();
            let safetensors = |p: &Path| {
                p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
            };
            // A converted copy beside the pickle it came from is the one to use.
            let replace = seen
                .get(&name)
                .is_none_or(|e: &Entry| !safetensors(&e.path) && safetensors(&candidate.path));
            if replace {
                seen.insert(
                    name.clone(),
                    Entry {
                        name,
                        path: candidate.path.clone(),
                    },
                );
            }
        }
        for entry in seen.into_values() {
            let ids = tokenizer.tokenize_fragment(&entry.name)?;
            let Some(&first) = ids.first() else {
                continue;
            };
            let index = set.entries.len();
            set.entries.push(entry);
            let list = set.by_first_token.entry(first).or_default();
            list.push((ids, index));
            list.sort_by_key(|(ids, _)| std::cmp::Reverse(ids.len()));
        }
        Ok(set)
    }

    /// Names of the indexed embeddings.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|e| e.name.as_str()).collect()
    }

    fn entry_named(&self, name: &str) -> Result<&Entry, EngineError> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| EngineError::ModelNotFound {
                reference: name.to_string(),
                reason: "no such embedding".into(),
            })
    }

    fn embedding(&self, name: &str) -> Result<Arc<Embedding>, EngineError> {
        let entry = self.entry_named(name)?;
        self.cache.get(&entry.path, &entry.name, &self.device)
    }

    /// Records one text-encoder call (A1111 encodes a prompt's whole schedule in one call)
    /// that used these embeddings, in first-use order.
    pub fn note_call(&self, names: &[String]) -> Result<(), EngineError> {
        let mut used = Vec::new();
        for name in names {
            if used.iter().any(|u: &UsedEmbedding| &u.name == name) {
                continue;
            }
            let entry = self.entry_named(name)?;
            used.push(UsedEmbedding {
                name: entry.name.clone(),
                path: entry.path.clone(),
            });
        }
        if !used.is_empty() {
            self.used_calls.lock().expect("used embeddings").push(used);
        }
        Ok(())
    }

    /// The embeddings used, in the order A1111's "TI hashes" lists them: each encoder call
    /// puts its embeddings before those of earlier calls, and an embedding used in two calls
    /// is listed twice, as A1111 does.
    pub fn used(&self) -> Vec<UsedEmbedding> {
        let calls = self.used_calls.lock().expect("used embeddings");
        calls.iter().rev().flatten().cloned().collect()
    }
}

impl EmbeddingLookup for EmbeddingSet<'_> {
    fn find_at(&self, tokens: &[u32], at: usize) -> Result<Option<EmbeddingMatch>, EngineError> {
        let Some(candidates) = self.by_first_token.get(&tokens[at]) else {
            return Ok(None);
        };
        for (ids, index) in candidates {
            if tokens[at..].starts_with(ids) {
                let entry = &self.entries[*index];
                let embedding = self.cache.get(&entry.path, &entry.name, &self.device)?;
                return Ok(Some(EmbeddingMatch {
                    name: entry.name.clone(),
                    token_len: ids.len(),
                    vectors: embedding.vectors.count(),
                }));
            }
        }
        Ok(None)
    }

    fn vectors(&self, name: &str, width: usize) -> Result<Tensor, EngineError> {
        let embedding = self.embedding(name)?;
        match &embedding.vectors {
            Vectors::Single(t) if t.dim(1)? == width => Ok(t.clone()),
            Vectors::Single(t) => Err(EngineError::invalid_model(
                &embedding.path,
                format!(
                    "embedding {name} has {}-wide vectors, made for another model family; \
                     this model's text encoder is {width} wide",
                    t.dim(1)?
                ),
            )),
            // An SDXL model asks once per encoder, each with its own width.
            Vectors::Sdxl { clip_l, .. } if clip_l.dim(1)? == width => Ok(clip_l.clone()),
            Vectors::Sdxl { clip_g, .. } if clip_g.dim(1)? == width => Ok(clip_g.clone()),
            Vectors::Sdxl { clip_l, clip_g } => Err(EngineError::invalid_model(
                &embedding.path,
                format!(
                    "embedding {name} is an SDXL embedding (clip_l {} wide + clip_g {} wide); \
                     this model's text encoder is {width} wide",
                    clip_l.dim(1)?,
                    clip_g.dim(1)?
                ),
            )),
        }
    }

    fn note_call(&self, names: &[String]) -> Result<(), EngineError> {
        EmbeddingSet::note_call(self, names)
    }
}
