//! A1111's composable diffusion: a prompt split at `AND` into parts, each with an optional
//! trailing weight (`a red cat :1.2 AND a dog:0.8`), each part conditioned (and
//! prompt-edited) on its own, and the guided prediction
//! `uncond + sum_i (cond_i - uncond) * (w_i * cfg_scale)` over one shared negative prompt.
//!
//! The parts follow `prompt_parser.get_multicond_prompt_list` (v1.10.1): the prompt is split
//! with the regular expression `\bAND\b`, and each part is matched against
//! `^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$`: the text is the shortest prefix
//! after which only an optional `:number` and whitespace follow. So a prompt without `AND`
//! that ends in `:0.5` is one part of weight 0.5, and `(red:1.3):0.5` is `(red:1.3)` at 0.5.
//! Only the positive prompt is composable; A1111 reads `AND` in a negative prompt as text.

use candle_core::Tensor;

use super::EngineError;

/// Python's `\w` for the characters a prompt holds: letters, digits and `_`.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Python's `\s` (Unicode whitespace plus the ASCII separators 0x1C-0x1F).
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// `re.split(r"\bAND\b", prompt)`.
pub fn split_and(prompt: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut search = 0;
    while let Some(found) = prompt[search..].find("AND") {
        let at = search + found;
        let end = at + 3;
        let before_ok = !prompt[..at].chars().next_back().is_some_and(is_word);
        let after_ok = !prompt[end..].chars().next().is_some_and(is_word);
        if before_ok && after_ok {
            parts.push(&prompt[start..at]);
            start = end;
            search = end;
        } else {
            search = at + 1;
        }
    }
    parts.push(&prompt[start..]);
    parts
}

/// Whether `rest` is `\s*:\s*[-+]?(?:\d+\.?|\d*\.\d+)\s*` in full; returns the number's text.
fn weight_suffix(rest: &str) -> Option<&str> {
    let rest = rest.trim_start_matches(is_space).strip_prefix(':')?;
    let number = rest.trim_start_matches(is_space).trim_end_matches(is_space);
    let digits = number.strip_prefix(['-', '+']).unwrap_or(number);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let ok = all_digits(int)
        && match frac {
            // `\d+` or `\d+\.`
            None => !int.is_empty(),
            Some("") => !int.is_empty(),
            // `\d*\.\d+`
            Some(f) => all_digits(f),
        };
    ok.then_some(number)
}

/// One `AND` part: its text (A1111's group 1, leading whitespace kept) and weight.
pub fn part_weight(subprompt: &str) -> (String, f64) {
    // The lazy group: the shortest prefix whose remainder is a weight suffix or whitespace.
    for (i, _) in subprompt
        .char_indices()
        .chain(std::iter::once((subprompt.len(), ' ')))
    {
        let rest = &subprompt[i..];
        if let Some(number) = weight_suffix(rest) {
            let weight = number.parse::<f64>().unwrap_or(1.0);
            return (subprompt[..i].to_string(), weight);
        }
        if rest.chars().all(is_space) {
            return (subprompt[..i].to_string(), 1.0);
        }
    }
    (subprompt.to_string(), 1.0)
}

/// `get_multicond_prompt_list(prompts)`: per prompt, the `(index, weight)` of each part into
/// the list of distinct part texts, which is returned second.
pub fn multicond_prompt_list(prompts: &[&str]) -> (Vec<Vec<(usize, f64)>>, Vec<String>) {
    let mut flat: Vec<String> = Vec::new();
    let indexes = prompts
        .iter()
        .map(|prompt| {
            split_and(prompt)
                .into_iter()
                .map(|sub| {
                    let (text, weight) = part_weight(sub);
                    let index = match flat.iter().position(|t| *t == text) {
                        Some(i) => i,
                        None => {
                            flat.push(text);
                            flat.len() - 1
                        }
                    };
                    (index, weight)
                })
                .collect()
        })
        .collect();
    (indexes, flat)
}

/// The parts of one prompt, in order: `(text, weight)`. A prompt without `AND` or a
/// trailing weight is one part of weight 1 with its text unchanged (but trailing whitespace).
pub fn composable_parts(prompt: &str) -> Vec<(String, f64)> {
    split_and(prompt).into_iter().map(part_weight).collect()
}

/// `reconstruct_multicond_batch`'s padding: conditionings `[1, tokens, dim]` of different
/// lengths are brought to the longest by repeating their last token vector.
pub fn pad_to_longest(conds: &[Tensor]) -> Result<Vec<Tensor>, EngineError> {
    let longest = conds
        .iter()
        .map(|c| c.dim(1))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(0);
    conds
        .iter()
        .map(|c| {
            let len = c.dim(1)?;
            if len == longest {
                return Ok(c.clone());
            }
            let last = c.narrow(1, len - 1, 1)?;
            let repeated = last.repeat((1, longest - len, 1))?;
            Ok(Tensor::cat(&[c, &repeated], 1)?)
        })
        .collect()
}

/// `CFGDenoiser.combine_denoised` for one image: starting from `uncond`, each part adds
/// `(cond_i - uncond) * (weight_i * cfg_scale)`, the factor formed in float64 as Python does.
pub fn combine(
    uncond: &Tensor,
    conds: &[(&Tensor, f64)],
    cfg_scale: f32,
) -> Result<Tensor, EngineError> {
    let mut out = uncond.clone();
    for (cond, weight) in conds {
        let factor = (weight * cfg_scale as f64) as f32;
        out = (out + (*cond - uncond)?.affine(factor as f64, 0.0)?)?;
    }
    Ok(out)
}
