//! A1111's prompt conditioning: attention fragments tokenized into 75-token chunks (with
//! `BREAK` and comma backtracking), each chunk encoded on its own and weighted with the
//! "Original" emphasis (multiply, then restore the chunk's mean), chunks concatenated along
//! the token axis; and per-step prompt schedules for prompt editing. Textual-inversion
//! embeddings take token slots here too ([`EmbeddingLookup`]).

use super::prompt_parser::{parse_prompt_attention, prompt_schedule};
use super::tokenizer::{PromptTokenizer, END_OF_TEXT};
use super::EngineError;

/// Tokens per chunk between the start and end tokens.
pub const CHUNK_LEN: usize = 75;
/// A1111's `comma_padding_backtrack` default: text after a comma this close to the chunk end
/// moves to the next chunk.
const COMMA_BACKTRACK: usize = 20;
const START_OF_TEXT: u32 = 49406;

/// One 77-token CLIP input and the attention weight of each position.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptChunk {
    pub tokens: Vec<u32>,
    pub multipliers: Vec<f32>,
    /// Embeddings whose vectors replace the token embeddings at their positions.
    pub fixes: Vec<ChunkFix>,
}

/// A textual-inversion embedding placed in a chunk (A1111's `PromptChunkFix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkFix {
    /// Index into [`PromptChunk::tokens`] (the start token is index 0) of its first vector.
    pub offset: usize,
    pub name: String,
    pub vectors: usize,
}

/// An embedding whose name's tokens were found in a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingMatch {
    pub name: String,
    /// Tokens of the prompt the name took.
    pub token_len: usize,
    /// Token slots its vectors take.
    pub vectors: usize,
}

/// Where prompt encoding finds textual-inversion embeddings.
pub trait EmbeddingLookup {
    /// The embedding whose name's tokens start at `tokens[at]`, the longest if several do.
    fn find_at(&self, tokens: &[u32], at: usize) -> Result<Option<EmbeddingMatch>, EngineError>;
    /// The vectors `[n, width]` of a found embedding, for a text encoder `width` wide.
    fn vectors(&self, name: &str, width: usize) -> Result<candle_core::Tensor, EngineError>;
    /// Records the embeddings one text-encoder call used, in first-use order (for the
    /// infotext).
    fn note_call(&self, names: &[String]) -> Result<(), EngineError>;
}

/// No embeddings: every word is text.
pub struct NoEmbeddings;

impl EmbeddingLookup for NoEmbeddings {
    fn find_at(&self, _: &[u32], _: usize) -> Result<Option<EmbeddingMatch>, EngineError> {
        Ok(None)
    }

    fn vectors(&self, name: &str, _: usize) -> Result<candle_core::Tensor, EngineError> {
        Err(EngineError::Unsupported {
            what: format!("embedding {name}"),
            hint: "no embeddings are loaded".into(),
        })
    }

    fn note_call(&self, _: &[String]) -> Result<(), EngineError> {
        Ok(())
    }
}

impl PromptChunk {
    /// Whether every weight is 1, so emphasis leaves the embedding unchanged.
    pub fn unweighted(&self) -> bool {
        self.multipliers.iter().all(|&m| m == 1.0)
    }
}

/// A1111's `tokenize_line`: the chunks of a prompt and its token count (75 per full chunk
/// plus the tokens of the last one).
pub fn tokenize_line(
    tokenizer: &PromptTokenizer,
    line: &str,
) -> Result<(Vec<PromptChunk>, usize), EngineError> {
    tokenize_line_with(tokenizer, line, &NoEmbeddings)
}

/// [`tokenize_line`] with textual-inversion embeddings: a name found by `embeddings` takes
/// as many slots as it has vectors (weighted like the text around it), moving to the next
/// chunk when it does not fit the current one, as A1111 does.
pub fn tokenize_line_with(
    tokenizer: &PromptTokenizer,
    line: &str,
    embeddings: &dyn EmbeddingLookup,
) -> Result<(Vec<PromptChunk>, usize), EngineError> {
    let comma = tokenizer.comma_id();
    let mut chunks = Vec::new();
    let mut tokens: Vec<u32> = Vec::new();
    let mut mults: Vec<f32> = Vec::new();
    let mut fixes: Vec<ChunkFix> = Vec::new();
    let mut token_count = 0;
    let mut last_comma: Option<usize> = None;

    let finish = |tokens: &mut Vec<u32>,
                  mults: &mut Vec<f32>,
                  fixes: &mut Vec<ChunkFix>,
                  chunks: &mut Vec<PromptChunk>,
                  token_count: &mut usize,
                  is_last: bool| {
        *token_count += if is_last { tokens.len() } else { CHUNK_LEN };
        let pad = CHUNK_LEN.saturating_sub(tokens.len());
        let mut t = Vec::with_capacity(CHUNK_LEN + 2);
        t.push(START_OF_TEXT);
        t.append(tokens);
        t.extend(std::iter::repeat_n(END_OF_TEXT, pad + 1));
        let mut m = Vec::with_capacity(CHUNK_LEN + 2);
        m.push(1.0);
        m.append(mults);
        m.extend(std::iter::repeat_n(1.0, pad + 1));
        chunks.push(PromptChunk {
            tokens: t,
            multipliers: m,
            fixes: std::mem::take(fixes),
        });
    };

    for (text, weight) in parse_prompt_attention(line) {
        if text == "BREAK" && weight == -1.0 {
            finish(
                &mut tokens,
                &mut mults,
                &mut fixes,
                &mut chunks,
                &mut token_count,
                false,
            );
            last_comma = None;
            continue;
        }
        let fragment = tokenizer.tokenize_fragment(&text)?;
        let mut position = 0;
        while position < fragment.len() {
            let token = fragment[position];
            if Some(token) == comma {
                last_comma = Some(tokens.len());
            } else if let Some(at) = last_comma {
                if tokens.len() == CHUNK_LEN && tokens.len() - at <= COMMA_BACKTRACK {
                    let moved_tokens = tokens.split_off(at + 1);
                    let moved_mults = mults.split_off(at + 1);
                    // A1111 moves the tokens but leaves the chunk's embedding fixes where they
                    // were (an embedding just before the chunk end keeps its vectors in the
                    // old chunk, over padding); sdfarm does the same so images match.
                    finish(
                        &mut tokens,
                        &mut mults,
                        &mut fixes,
                        &mut chunks,
                        &mut token_count,
                        false,
                    );
                    last_comma = None;
                    tokens = moved_tokens;
                    mults = moved_mults;
                }
            }
            if tokens.len() == CHUNK_LEN {
                finish(
                    &mut tokens,
                    &mut mults,
                    &mut fixes,
                    &mut chunks,
                    &mut token_count,
                    false,
                );
                last_comma = None;
            }
            let Some(found) = embeddings.find_at(&fragment, position)? else {
                tokens.push(token);
                mults.push(weight as f32);
                position += 1;
                continue;
            };
            if tokens.len() + found.vectors > CHUNK_LEN {
                finish(
                    &mut tokens,
                    &mut mults,
                    &mut fixes,
                    &mut chunks,
                    &mut token_count,
                    false,
                );
                last_comma = None;
            }
            fixes.push(ChunkFix {
                // + 1: the start token comes first in the finished chunk.
                offset: tokens.len() + 1,
                name: found.name,
                vectors: found.vectors,
            });
            // A1111 fills an embedding's slots with token 0; its vectors replace them.
            tokens.extend(std::iter::repeat_n(0, found.vectors));
            mults.extend(std::iter::repeat_n(weight as f32, found.vectors));
            position += found.token_len.max(1);
        }
    }
    if !tokens.is_empty() || chunks.is_empty() {
        finish(
            &mut tokens,
            &mut mults,
            &mut fixes,
            &mut chunks,
            &mut token_count,
            true,
        );
    }
    Ok((chunks, token_count))
}

/// A prompt's schedule: `(until_step, prompt text)` pairs as A1111 computes them for a pass of
/// `steps` sampler steps. Second-order samplers count two model calls per step, so A1111
/// schedules them over `2 * steps`; pass that here for them.
pub fn schedule(prompt: &str, steps: usize) -> Vec<(usize, String)> {
    prompt_schedule(prompt, steps, None, false)
}

/// The index into a schedule for model call `call` (0-based), as A1111's
/// `reconstruct_cond_batch`: the first entry whose end step is at or after the call.
pub fn entry_for_call(ends: &[usize], call: usize) -> usize {
    ends.iter().position(|&end| call <= end).unwrap_or(0)
}
