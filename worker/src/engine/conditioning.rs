//! A1111's prompt conditioning: attention fragments tokenized into 75-token chunks (with
//! `BREAK` and comma backtracking), each chunk encoded on its own and weighted with the
//! "Original" emphasis (multiply, then restore the chunk's mean), chunks concatenated along
//! the token axis; and per-step prompt schedules for prompt editing.

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
    let comma = tokenizer.comma_id();
    let mut chunks = Vec::new();
    let mut tokens: Vec<u32> = Vec::new();
    let mut mults: Vec<f32> = Vec::new();
    let mut token_count = 0;
    let mut last_comma: Option<usize> = None;

    let finish = |tokens: &mut Vec<u32>,
                  mults: &mut Vec<f32>,
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
        });
    };

    for (text, weight) in parse_prompt_attention(line) {
        if text == "BREAK" && weight == -1.0 {
            finish(
                &mut tokens,
                &mut mults,
                &mut chunks,
                &mut token_count,
                false,
            );
            last_comma = None;
            continue;
        }
        for token in tokenizer.tokenize_fragment(&text)? {
            if Some(token) == comma {
                last_comma = Some(tokens.len());
            } else if let Some(at) = last_comma {
                if tokens.len() == CHUNK_LEN && tokens.len() - at <= COMMA_BACKTRACK {
                    let moved_tokens = tokens.split_off(at + 1);
                    let moved_mults = mults.split_off(at + 1);
                    finish(
                        &mut tokens,
                        &mut mults,
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
                    &mut chunks,
                    &mut token_count,
                    false,
                );
                last_comma = None;
            }
            tokens.push(token);
            mults.push(weight as f32);
        }
    }
    if !tokens.is_empty() || chunks.is_empty() {
        finish(&mut tokens, &mut mults, &mut chunks, &mut token_count, true);
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
