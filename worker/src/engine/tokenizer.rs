//! CLIP prompt tokenization to the fixed 77-token context Stable Diffusion 1.x expects.
//!
//! The project carries the real CLIP BPE tokenizer (`assets/clip-tokenizer.json`, the
//! `tokenizers` serialisation of `CLIPTokenizerFast`), so a model folder without a `tokenizer/`
//! still renders. A folder's own `tokenizer/tokenizer.json` wins when present.
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
        let dir = model_dir.join("tokenizer");
        let json = dir.join("tokenizer.json");
        let mut tokenizer = if json.is_file() {
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
