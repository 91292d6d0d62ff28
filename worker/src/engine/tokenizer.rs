//! CLIP prompt tokenization to the fixed 77-token context Stable Diffusion 1.x expects.
//!
//! The project carries the real CLIP BPE tokenizer (`assets/clip-tokenizer.json`, the
//! `tokenizers` serialisation of `CLIPTokenizerFast`), so a model folder without a `tokenizer/`
//! still renders. A folder's own `tokenizer/tokenizer.json` wins when present; a folder with
//! only the slow tokenizer's `vocab.json` + `merges.txt` (SDXL's) gets CLIP's normalizer,
//! pre-tokenizer and start/end post-processor around its own vocabulary and merges.
//!
//! The fast tokenizer adds `<|startoftext|>`/`<|endoftext|>` through its post-processor but does
//! not pad, so padding and truncation happen here, the way `CLIPTokenizer(padding="max_length",
//! max_length=77, truncation=True)` does it: the end token survives truncation.

use std::path::Path;

use tokenizers::Tokenizer;

use super::EngineError;

/// The CLIP tokenizer shipped with the worker.
static BUILTIN_TOKENIZER_JSON: &[u8] = include_bytes!("../../assets/clip-tokenizer.json");

/// CLIP's context length.
pub const CONTEXT_LEN: usize = 77;
/// `<|endoftext|>`, which SD 1.x also uses for padding.
pub const END_OF_TEXT: u32 = 49407;

/// A CLIP tokenizer plus the padding rule of the model it belongs to.
pub struct PromptTokenizer {
    inner: Tokenizer,
    pad_id: u32,
}

impl PromptTokenizer {
    /// The tokenizer embedded in the worker binary.
    pub fn builtin() -> Result<Self, EngineError> {
        let inner = Tokenizer::from_bytes(BUILTIN_TOKENIZER_JSON)
            .map_err(|e| EngineError::Tokenizer(format!("embedded CLIP tokenizer: {e}")))?;
        Ok(PromptTokenizer {
            inner,
            pad_id: END_OF_TEXT,
        })
    }

    /// `<model>/tokenizer/tokenizer.json` if it exists, otherwise the embedded one.
    ///
    /// The pad token comes from `tokenizer/tokenizer_config.json` when it names one: SD 2.x
    /// tokenizers pad with `!` (id 0) rather than `<|endoftext|>`.
    pub fn for_model(model_dir: &Path) -> Result<Self, EngineError> {
        Self::from_dir(&model_dir.join("tokenizer"))
    }

    /// The tokenizer of one tokenizer folder (`tokenizer/`, `tokenizer_2/`): its
    /// `tokenizer.json`, else its `vocab.json` + `merges.txt`, else the embedded one; the pad
    /// token from its `tokenizer_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, EngineError> {
        let dir = dir.to_path_buf();
        let json = dir.join("tokenizer.json");
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let mut tokenizer = if !json.is_file() && vocab.is_file() && merges.is_file() {
            PromptTokenizer {
                inner: from_vocab_and_merges(&vocab, &merges)?,
                pad_id: END_OF_TEXT,
            }
        } else if json.is_file() {
            let inner = Tokenizer::from_file(&json).map_err(|e| {
                EngineError::invalid_model(&json, format!("cannot load tokenizer.json: {e}"))
            })?;
            PromptTokenizer {
                inner,
                pad_id: END_OF_TEXT,
            }
        } else {
            Self::builtin()?
        };
        if let Some(pad) = configured_pad_token(&dir.join("tokenizer_config.json"))? {
            tokenizer.pad_id = tokenizer.inner.token_to_id(&pad).ok_or_else(|| {
                EngineError::invalid_model(
                    &dir,
                    format!(
                        "pad_token {pad:?} from tokenizer_config.json is not in the vocabulary"
                    ),
                )
            })?;
        }
        Ok(tokenizer)
    }

    /// The same tokenizer filling the context with `pad_id` after the end token (SD 2.x and
    /// SDXL's OpenCLIP encoders pad with 0).
    pub fn with_pad_id(mut self, pad_id: u32) -> Self {
        self.pad_id = pad_id;
        self
    }

    /// The id used to fill the context after the end token.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Token ids without padding, including the start and end tokens, truncated to 77 with the
    /// end token kept last.
    pub fn encode_unpadded(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| EngineError::Tokenizer(format!("cannot tokenize prompt {text:?}: {e}")))?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.len() > CONTEXT_LEN {
            ids.truncate(CONTEXT_LEN - 1);
            ids.push(END_OF_TEXT);
        }
        Ok(ids)
    }

    /// Token ids of a prompt fragment without start/end tokens and without truncation, as
    /// A1111 tokenizes each attention fragment.
    pub fn tokenize_fragment(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(format!("cannot tokenize prompt {text:?}: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The id of `,` as a word (A1111 moves text after a nearby comma into the next chunk).
    pub fn comma_id(&self) -> Option<u32> {
        self.inner.token_to_id(",</w>")
    }

    /// Exactly 77 ids: start token, prompt tokens, end token, padding.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let mut ids = self.encode_unpadded(text)?;
        ids.resize(CONTEXT_LEN, self.pad_id);
        Ok(ids)
    }
}

/// A CLIP tokenizer with the embedded one's normalizer, pre-tokenizer and post-processor
/// around the BPE vocabulary and merges of a slow `CLIPTokenizer` folder.
fn from_vocab_and_merges(vocab: &Path, merges: &Path) -> Result<Tokenizer, EngineError> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| EngineError::io(path, e));
    let vocab_json: serde_json::Value = serde_json::from_slice(&read(vocab)?)
        .map_err(|e| EngineError::invalid_model(vocab, format!("not valid JSON: {e}")))?;
    let Some(map) = vocab_json.as_object() else {
        return Err(EngineError::invalid_model(
            vocab,
            "expected a token → id object",
        ));
    };
    let merges_text = String::from_utf8(read(merges)?)
        .map_err(|_| EngineError::invalid_model(merges, "not UTF-8 text"))?;
    let mut pairs = Vec::new();
    for (i, line) in merges_text.lines().enumerate() {
        if (i == 0 && line.starts_with("#version")) || line.is_empty() {
            continue;
        }
        let Some((a, b)) = line.split_once(' ') else {
            return Err(EngineError::invalid_model(
                merges,
                format!("line {} is not a pair of symbols: {line:?}", i + 1),
            ));
        };
        pairs.push(serde_json::json!([a, b]));
    }
    let id = |token: &str| {
        map.get(token).and_then(|v| v.as_u64()).ok_or_else(|| {
            EngineError::invalid_model(vocab, format!("the vocabulary has no {token:?}"))
        })
    };
    let (start, end) = (id("<|startoftext|>")?, id("<|endoftext|>")?);
    let mut json: serde_json::Value = serde_json::from_slice(BUILTIN_TOKENIZER_JSON)
        .map_err(|e| EngineError::Tokenizer(format!("embedded CLIP tokenizer: {e}")))?;
    json["model"]["vocab"] = vocab_json.clone();
    json["model"]["merges"] = serde_json::Value::Array(pairs);
    json["post_processor"]["cls"] = serde_json::json!(["<|startoftext|>", start]);
    json["post_processor"]["sep"] = serde_json::json!(["<|endoftext|>", end]);
    if let Some(added) = json["added_tokens"].as_array_mut() {
        for token in added {
            let content = token["content"].as_str().unwrap_or_default().to_string();
            token["id"] = serde_json::json!(id(&content)?);
        }
    }
    let bytes = serde_json::to_vec(&json)
        .map_err(|e| EngineError::Tokenizer(format!("building a tokenizer: {e}")))?;
    Tokenizer::from_bytes(bytes).map_err(|e| {
        EngineError::invalid_model(
            vocab,
            format!("cannot build a tokenizer from vocab.json and merges.txt: {e}"),
        )
    })
}

/// Reads `pad_token` from a transformers `tokenizer_config.json`, which stores it either as a
/// string or as an `AddedToken` object with a `content` field.
fn configured_pad_token(path: &Path) -> Result<Option<String>, EngineError> {
    let raw = match std::fs::read(path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EngineError::io(path, e)),
    };
    let config: serde_json::Value = serde_json::from_slice(&raw)
        .map_err(|e| EngineError::invalid_model(path, format!("not valid JSON: {e}")))?;
    Ok(match &config["pad_token"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_with_end_of_text() {
        let tok = PromptTokenizer::builtin().unwrap();
        let ids = tok.encode("a photo of a cat").unwrap();
        assert_eq!(&ids[..7], &[49406, 320, 1125, 539, 320, 2368, 49407]);
        assert_eq!(ids.len(), 77);
        assert!(ids[7..].iter().all(|&id| id == END_OF_TEXT));
        assert_eq!(&tok.encode("").unwrap()[..3], &[49406, 49407, 49407]);
    }

    #[test]
    fn truncation_keeps_the_end_token() {
        let tok = PromptTokenizer::builtin().unwrap();
        let long = "cat ".repeat(200);
        let ids = tok.encode(&long).unwrap();
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[0], 49406);
        assert_eq!(ids[76], END_OF_TEXT);
        assert_eq!(ids[75], ids[1]);
    }
}
