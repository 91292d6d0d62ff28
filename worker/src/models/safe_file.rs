//! Reading untrusted weight files: pickles are refused and a `.safetensors` header is checked
//! completely (size, JSON, dtypes, shapes, offsets) before a single tensor byte is read.
//!
//! Checkpoints come from fine-tune sites and strangers' buckets. A pickle can run code when
//! loaded, a truncated download or a header that lies about offsets must fail with a reason a
//! person can act on, and a header claiming gigabytes of JSON or exabyte tensors must not make
//! the worker allocate them. Every failure here is [`EngineError::InvalidModel`], which is not
//! retryable: the same bytes fail the same way on any worker.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use crate::engine::EngineError;

/// Largest JSON header accepted; the same bound the `safetensors` crate enforces. Real SDXL
/// checkpoints have headers of about 200 kB.
pub const MAX_HEADER_BYTES: u64 = 100 << 20;

/// How to turn a pickle checkpoint into something sdfarm loads.
pub const CONVERT_HINT: &str = "convert it to safetensors where you trust the file, e.g. \
    `python -c \"import torch, safetensors.torch as st; \
    sd = torch.load('model.ckpt', map_location='cpu', weights_only=True); \
    sd = sd.get('state_dict', sd); \
    st.save_file({k: v.contiguous() for k, v in sd.items() if hasattr(v, 'contiguous')}, \
    'model.safetensors')\"`, or A1111's Checkpoint Merger with \"safetensors\" selected";

/// Where and what one tensor is, as declared by the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The stored dtype name (`F16`, `BF16`, `F32`, ...).
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub start: u64,
    pub end: u64,
}

/// A `.safetensors` file whose header has been fully validated against the file's size.
#[derive(Debug)]
pub struct SafeFile {
    path: PathBuf,
    data_start: u64,
    tensors: BTreeMap<String, TensorInfo>,
    metadata: BTreeMap<String, String>,
}

/// Bytes per element of a safetensors dtype, `None` for names the format does not define.
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// The candle dtype weights of this stored dtype load as; integer buffers (e.g. CLIP's
/// `position_ids`) are not weights and have none.
fn weight_dtype(dtype: &str) -> Option<DType> {
    Some(match dtype {
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F32" => DType::F32,
        "F64" => DType::F64,
        _ => return None,
    })
}

/// Refuses pickle checkpoints by extension or by content, whatever the file is called.
pub fn refuse_pickle(path: &Path) -> Result<(), EngineError> {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if matches!(extension.as_str(), "ckpt" | "pt" | "pth" | "bin" | "pkl") {
        return Err(pickle_error(
            path,
            &format!(".{extension} files are pickled PyTorch checkpoints"),
        ));
    }
    let mut magic = [0u8; 4];
    let mut file = File::open(path).map_err(|e| EngineError::io(path, e))?;
    let n = read_up_to(&mut file, &mut magic).map_err(|e| EngineError::io(path, e))?;
    let magic = &magic[..n];
    // Pickle protocols 2-5 start with PROTO (0x80) and the version; torch.save since 1.6
    // writes a zip archive whose data.pkl is a pickle.
    if magic.len() >= 2 && magic[0] == 0x80 && (2..=5).contains(&magic[1]) {
        return Err(pickle_error(
            path,
            "this file is a Python pickle (a PyTorch checkpoint), whatever its name",
        ));
    }
    if magic.starts_with(b"PK\x03\x04") {
        return Err(pickle_error(
            path,
            "this file is a PyTorch zip checkpoint (a pickle inside), whatever its name",
        ));
    }
    Ok(())
}

fn pickle_error(path: &Path, what: &str) -> EngineError {
    EngineError::invalid_model(
        path,
        format!(
            "{what}; unpickling can run arbitrary code, so sdfarm \
             only loads .safetensors files and diffusers folders. To use it, {CONVERT_HINT}"
        ),
    )
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

impl SafeFile {
    /// Opens `path` and validates its header; no tensor data is read.
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        refuse_pickle(path)?;
        let bad = |reason: String| EngineError::invalid_model(path, reason);
        let mut file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| EngineError::io(path, e))?.len();
        if file_len < 8 {
            return Err(bad(format!(
                "truncated: {file_len} bytes, while a .safetensors file starts with an 8-byte \
                 header length"
            )));
        }
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes)
            .map_err(|e| EngineError::io(path, e))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_BYTES {
            return Err(bad(format!(
                "header claims {header_len} bytes of JSON, more than the {MAX_HEADER_BYTES} \
                 accepted; the file is corrupt or not a .safetensors file"
            )));
        }
        if header_len > file_len - 8 {
            return Err(bad(format!(
                "truncated: the header claims {header_len} bytes but only {} follow; \
                 download the file again",
                file_len - 8
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| EngineError::io(path, e))?;
        let data_start = 8 + header_len;
        let data_len = file_len - data_start;
        let (tensors, metadata) = parse_header(&header, data_len).map_err(bad)?;
        Ok(SafeFile {
            path: path.to_path_buf(),
            data_start,
            tensors,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the data section starts: the 8-byte length plus the JSON header.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Tensor names and their declared layout, sorted by name.
    pub fn tensors(&self) -> &BTreeMap<String, TensorInfo> {
        &self.tensors
    }

    /// The free-form `__metadata__` strings.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Reads the named tensors (floating-point weights only), each `(stored name, new name)`,
    /// in file order so the disk is read sequentially.
    pub fn read(
        &self,
        wanted: &[(&str, String)],
        device: &Device,
    ) -> Result<HashMap<String, Tensor>, EngineError> {
        let mut order: Vec<(&TensorInfo, &str, &String)> = wanted
            .iter()
            .map(|(name, target)| {
                self.tensors
                    .get(*name)
                    .map(|info| (info, *name, target))
                    .ok_or_else(|| {
                        EngineError::invalid_model(&self.path, format!("no tensor named {name}"))
                    })
            })
            .collect::<Result<_, _>>()?;
        order.sort_by_key(|(info, _, _)| info.start);
        let mut file = File::open(&self.path).map_err(|e| EngineError::io(&self.path, e))?;
        let mut out = HashMap::with_capacity(order.len());
        let mut buf = Vec::new();
        for (info, name, target) in order {
            let dtype = weight_dtype(&info.dtype).ok_or_else(|| {
                EngineError::invalid_model(
                    &self.path,
                    format!(
                        "tensor {name} is stored as {}; weights must be F16, BF16, F32 or F64",
                        info.dtype
                    ),
                )
            })?;
            buf.resize((info.end - info.start) as usize, 0);
            file.seek(SeekFrom::Start(self.data_start + info.start))
                .and_then(|_| file.read_exact(&mut buf))
                .map_err(|e| {
                    // The header was checked against the file size when opened; a short read
                    // now means the file shrank underneath us.
                    EngineError::invalid_model(
                        &self.path,
                        format!(
                            "reading tensor {name}: {e} (was the file replaced while loading?)"
                        ),
                    )
                })?;
            let tensor = Tensor::from_raw_buffer(&buf, dtype, &info.shape, device)?;
            out.insert(target.clone(), tensor);
        }
        Ok(out)
    }
}

type Header = (BTreeMap<String, TensorInfo>, BTreeMap<String, String>);

/// Validates the header JSON against a data section of `data_len` bytes.
fn parse_header(header: &[u8], data_len: u64) -> Result<Header, String> {
    let json: Value = serde_json::from_slice(header)
        .map_err(|e| format!("the header is not valid JSON ({e}); not a .safetensors file"))?;
    let Value::Object(entries) = json else {
        return Err("the header is not a JSON object; not a .safetensors file".into());
    };
    let mut tensors = BTreeMap::new();
    let mut metadata = BTreeMap::new();
    for (name, entry) in entries {
        if name == "__metadata__" {
            let Value::Object(map) = entry else {
                return Err("__metadata__ must be an object of strings".into());
            };
            for (key, value) in map {
                match value {
                    Value::String(s) => metadata.insert(key, s),
                    other => return Err(format!("__metadata__.{key} is {other}, not a string")),
                };
            }
            continue;
        }
        let info = parse_entry(&name, &entry)?;
        tensors.insert(name, info);
    }
    // The format stores tensors back to back: no overlaps and no holes, ending exactly at the
    // end of the file. Anything else is a lying header or a damaged file.
    let mut spans: Vec<(&String, &TensorInfo)> = tensors.iter().collect();
    spans.sort_by_key(|(_, info)| (info.start, info.end));
    let mut expected = 0u64;
    for (name, info) in &spans {
        if info.end > data_len {
            return Err(format!(
                "truncated or lying header: tensor {name} needs data bytes {}..{} but the file \
                 holds only {data_len}; download the file again",
                info.start, info.end
            ));
        }
        if info.start != expected {
            return Err(format!(
                "the header's offsets are inconsistent: tensor {name} starts at byte {} where \
                 {expected} was expected (tensors overlap or leave gaps)",
                info.start
            ));
        }
        expected = info.end;
    }
    if expected != data_len {
        return Err(format!(
            "the header describes {expected} data bytes but the file holds {data_len}; the \
             file is damaged or has trailing garbage"
        ));
    }
    Ok((tensors, metadata))
}

fn parse_entry(name: &str, entry: &Value) -> Result<TensorInfo, String> {
    let field = |key: &str| {
        entry
            .get(key)
            .ok_or_else(|| format!("tensor {name}: the header entry has no {key}"))
    };
    let dtype = field("dtype")?
        .as_str()
        .ok_or_else(|| format!("tensor {name}: dtype is not a string"))?
        .to_string();
    let size = dtype_size(&dtype).ok_or_else(|| {
        format!("tensor {name}: unknown dtype {dtype:?} (accepted: F16, BF16, F32, F64 and the integer types)")
    })?;
    let as_u64 = |v: &Value, what: &str| {
        v.as_u64()
            .ok_or_else(|| format!("tensor {name}: {what} {v} is not a non-negative integer"))
    };
    let shape = field("shape")?
        .as_array()
        .ok_or_else(|| format!("tensor {name}: shape is not a list"))?
        .iter()
        .map(|d| as_u64(d, "dimension"))
        .collect::<Result<Vec<u64>, _>>()?;
    let offsets = field("data_offsets")?
        .as_array()
        .filter(|a| a.len() == 2)
        .ok_or_else(|| format!("tensor {name}: data_offsets is not a [begin, end] pair"))?;
    let start = as_u64(&offsets[0], "offset")?;
    let end = as_u64(&offsets[1], "offset")?;
    // Checked arithmetic: a header bomb declares shapes whose byte size overflows u64.
    let bytes = shape
        .iter()
        .try_fold(size, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            format!("tensor {name}: shape {shape:?} claims more than 2^64 bytes (header bomb?)")
        })?;
    if end < start || end - start != bytes {
        return Err(format!(
            "tensor {name}: data_offsets [{start}, {end}] do not match {dtype} {shape:?} \
             ({bytes} bytes); the header lies about this tensor"
        ));
    }
    let shape = shape
        .into_iter()
        .map(|d| usize::try_from(d).map_err(|_| format!("tensor {name}: dimension {d} too large")))
        .collect::<Result<_, _>>()?;
    Ok(TensorInfo {
        dtype,
        shape,
        start,
        end,
    })
}
