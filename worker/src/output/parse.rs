//! Reading infotext back: a port of AUTOMATIC1111's `parse_generation_parameters`
//! (v1.10.1 `modules/infotext_utils.py`) with its default settings, so an sdfarm or A1111
//! PNG parses to the same fields A1111's "PNG Info" tab shows.
//!
//! Deliberate differences, each where A1111 would raise or depends on user state:
//! user prompt styles are not extracted (A1111 with no styles defined behaves the same);
//! a malformed number in `First pass size` or an emphasis weight is skipped rather than
//! aborting the whole parse; `\d` in `Size` means ASCII digits only.

use sdfarm_proto::RenderParams;
use serde_json::{Map, Value};

use super::infotext::{default_eta, is_py_space, py_strip};
use super::version::{version, Version};

/// A parsed value: a string as written, or a number/flag that a default filled in.
#[derive(Debug, Clone, PartialEq)]
pub enum InfoValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl InfoValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            InfoValue::Str(s) => Some(s),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            InfoValue::Str(s) => Value::from(s.as_str()),
            InfoValue::Int(i) => Value::from(*i),
            InfoValue::Bool(b) => Value::from(*b),
        }
    }

    /// The value as Python's `int()` would read it.
    fn as_int(&self) -> Option<i64> {
        match self {
            InfoValue::Str(s) => py_strip(s).parse().ok(),
            InfoValue::Int(i) => Some(*i),
            InfoValue::Bool(b) => Some(i64::from(*b)),
        }
    }
}

/// The fields of an infotext, in the order A1111's dict would hold them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedInfotext {
    entries: Vec<(String, InfoValue)>,
}

impl ParsedInfotext {
    pub fn get(&self, key: &str) -> Option<&InfoValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(InfoValue::as_str)
    }

    pub fn entries(&self) -> &[(String, InfoValue)] {
        &self.entries
    }

    pub fn prompt(&self) -> &str {
        self.get_str("Prompt").unwrap_or_default()
    }

    pub fn negative_prompt(&self) -> &str {
        self.get_str("Negative prompt").unwrap_or_default()
    }

    /// The same dict A1111 returns, as a JSON object.
    pub fn to_json(&self) -> Value {
        let map: Map<String, Value> = self
            .entries
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect();
        Value::Object(map)
    }

    /// The render parameters the infotext describes. A field that is missing or does not
    /// parse keeps the sweep default (20 steps, Euler, CFG 7, 512x512, seed -1); `model` is
    /// the checkpoint *name* written in the text, and `batch_index` is not recorded, so 0.
    /// A variation seed that is not in use reads back as subseed 0, as sdfarm plans it.
    pub fn to_render_params(&self) -> RenderParams {
        let int = |key: &str| self.get(key).and_then(InfoValue::as_int);
        let float = |key: &str| {
            self.get_str(key)
                .and_then(|s| py_strip(s).parse::<f32>().ok())
                .filter(|f| f.is_finite())
        };
        let text = |key: &str, default: &str| self.get_str(key).unwrap_or(default).to_string();
        let sampler_name = text("Sampler", "Euler");
        let eta = float("Eta")
            .or(float("Eta DDIM"))
            .unwrap_or_else(|| default_eta(&sampler_name));
        let subseed_strength = float("Variation seed strength").unwrap_or(0.0);
        let uint = |key: &str| int(key).and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
        // A1111's "Use same …" placeholders mean the first pass's value: sdfarm's empty.
        let same = |key: &str, placeholder: &str| {
            self.get_str(key)
                .filter(|v| *v != placeholder)
                .unwrap_or_default()
                .to_string()
        };
        let (hr_resize_x, hr_resize_y) = (uint("Hires resize-1"), uint("Hires resize-2"));
        let hr_scale = float("Hires upscale");
        let enable_hr = hr_scale.is_some() || hr_resize_x != 0 || hr_resize_y != 0;
        RenderParams {
            prompt: self.prompt().to_string(),
            negative_prompt: self.negative_prompt().to_string(),
            seed: int("Seed").unwrap_or(-1),
            steps: int("Steps")
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(20),
            scheduler: text("Schedule type", "Automatic"),
            cfg_scale: float("CFG scale").unwrap_or(7.0),
            width: int("Size-1")
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(512),
            height: int("Size-2")
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(512),
            model: text("Model", ""),
            rng: text("RNG", "GPU"),
            subseed: if subseed_strength == 0.0 {
                0
            } else {
                int("Variation seed").unwrap_or(-1)
            },
            subseed_strength,
            batch_index: 0,
            clip_skip: int("Clip skip")
                .and_then(|v| u32::try_from(v).ok())
                .unwrap_or(1),
            eta,
            sampler_name,
            denoising_strength: float("Denoising strength").unwrap_or(0.0),
            enable_hr,
            hr_scale: if enable_hr {
                hr_scale.unwrap_or(2.0)
            } else {
                0.0
            },
            hr_resize_x,
            hr_resize_y,
            hr_second_pass_steps: uint("Hires steps"),
            hr_upscaler: if enable_hr {
                text("Hires upscaler", "Latent")
            } else {
                String::new()
            },
            hr_sampler_name: same("Hires sampler", "Use same sampler"),
            hr_scheduler: same("Hires schedule type", "Use same scheduler"),
            hr_prompt: text("Hires prompt", ""),
            hr_negative_prompt: text("Hires negative prompt", ""),
            seed_resize_from_w: uint("Seed resize from-1"),
            seed_resize_from_h: uint("Seed resize from-2"),
            ..Default::default()
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Python dict assignment: an existing key keeps its place.
    fn set(&mut self, key: &str, value: InfoValue) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }

    fn set_default(&mut self, key: &str, value: InfoValue) {
        if !self.contains(key) {
            self.entries.push((key.to_string(), value));
        }
    }
}

fn s(text: &str) -> InfoValue {
    InfoValue::Str(text.to_string())
}

/// Parses infotext the way A1111's "PNG Info" / paste does. Never fails: text that is not
/// infotext becomes a prompt, as it does upstream.
pub fn parse_infotext(text: &str) -> ParsedInfotext {
    let mut lines: Vec<&str> = py_strip(text).split('\n').collect();
    let mut lastline = lines.pop().unwrap_or_default();
    // A last line with fewer than three parameters is more likely part of the prompt.
    if find_params(lastline).len() < 3 {
        lines.push(lastline);
        lastline = "";
    }

    let (mut prompt, mut negative) = (String::new(), String::new());
    let mut done_with_prompt = false;
    for line in lines {
        let mut line = py_strip(line);
        if let Some(rest) = line.strip_prefix("Negative prompt:") {
            done_with_prompt = true;
            line = py_strip(rest);
        }
        let target = if done_with_prompt {
            &mut negative
        } else {
            &mut prompt
        };
        if !target.is_empty() {
            target.push('\n');
        }
        target.push_str(line);
    }

    let mut res = ParsedInfotext::default();
    for (key, value) in find_params(lastline) {
        // Upstream indexes v[0] inside a try: an empty value raises and the key is dropped.
        if value.is_empty() {
            continue;
        }
        let value = if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
            serde_json::from_str::<String>(value).unwrap_or_else(|_| value.to_string())
        } else {
            value.to_string()
        };
        match image_size(&value) {
            Some((w, h)) => {
                res.set(&format!("{key}-1"), s(w));
                res.set(&format!("{key}-2"), s(h));
            }
            None => res.set(key, InfoValue::Str(value)),
        }
    }

    // Hires prompts equal to the main prompt are stored as "" (same as "use the prompt").
    let has_hr = res.contains("Hires prompt") || res.contains("Hires negative prompt");
    let hr_styles_era =
        version(res.get_str("Version")).is_none_or(|v| v > Version::v180_hr_styles());
    if has_hr && hr_styles_era {
        let hr = res.get_str("Hires prompt").unwrap_or(&prompt).to_string();
        let hr_neg = res
            .get_str("Hires negative prompt")
            .unwrap_or(&negative)
            .to_string();
        res.set("Hires prompt", s(if hr == prompt { "" } else { &hr }));
        res.set(
            "Hires negative prompt",
            s(if hr_neg == negative { "" } else { &hr_neg }),
        );
    }

    res.set("Prompt", InfoValue::Str(prompt.clone()));
    res.set("Negative prompt", InfoValue::Str(negative.clone()));
    res.set_default("Clip skip", s("1"));
    if let Some(hypernet) = res.get_str("Hypernet").map(str::to_string) {
        let strength = res
            .get_str("Hypernet strength")
            .unwrap_or("1.0")
            .to_string();
        res.set(
            "Prompt",
            InfoValue::Str(format!("{prompt}<hypernet:{hypernet}:{strength}>")),
        );
    }
    if !res.contains("Hires resize-1") {
        res.set("Hires resize-1", InfoValue::Int(0));
        res.set("Hires resize-2", InfoValue::Int(0));
    }
    res.set_default("Hires sampler", s("Use same sampler"));
    res.set_default("Hires schedule type", s("Use same scheduler"));
    res.set_default("Hires checkpoint", s("Use same checkpoint"));
    res.set_default("Hires prompt", s(""));
    res.set_default("Hires negative prompt", s(""));
    res.set_default("Mask mode", s("Inpaint masked"));
    res.set_default("Masked content", s("original"));
    res.set_default("Inpaint area", s("Whole picture"));
    res.set_default("Masked area padding", InfoValue::Int(32));
    restore_old_hires_fix_params(&mut res);
    // No RNG field means A1111's default noise source, the GPU.
    res.set_default("RNG", s("GPU"));
    res.set_default("Schedule type", s("Automatic"));
    res.set_default("Schedule max sigma", InfoValue::Int(0));
    res.set_default("Schedule min sigma", InfoValue::Int(0));
    res.set_default("Schedule rho", InfoValue::Int(0));
    res.set_default("VAE Encoder", s("Full"));
    res.set_default("VAE Decoder", s("Full"));
    res.set_default("FP8 weight", s("Disable"));
    if res.get_str("FP8 weight") != Some("Disable") {
        res.set_default("Cache FP16 weight for LoRA", InfoValue::Bool(false));
    }
    if !res.contains("Emphasis") && (uses_emphasis(&prompt) || uses_emphasis(&negative)) {
        res.set("Emphasis", s("Original"));
    }
    res.set_default("Refiner switch by sampling steps", InfoValue::Bool(false));
    backcompat(&mut res);
    res
}

/// `re_param.findall`: `\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)`, scanned
/// from each position in turn as Python's `findall` does.
fn find_params(line: &str) -> Vec<(&str, &str)> {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let is_key = |c: char| is_word(c) || matches!(c, ' ' | '-' | '/');
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let byte = |i: usize| chars.get(i).map_or(line.len(), |c| c.0);
    let (mut out, mut pos) = (Vec::new(), 0);
    'scan: while pos < chars.len() {
        let mut i = pos;
        while i < chars.len() && is_py_space(chars[i].1) {
            i += 1;
        }
        let key_start = i;
        if i >= chars.len() || !is_word(chars[i].1) {
            pos += 1;
            continue;
        }
        i += 1;
        while i < chars.len() && is_key(chars[i].1) {
            i += 1;
        }
        if i - key_start < 2 || i >= chars.len() || chars[i].1 != ':' {
            pos += 1;
            continue 'scan;
        }
        let key = &line[byte(key_start)..byte(i)];
        i += 1;
        while i < chars.len() && is_py_space(chars[i].1) {
            i += 1;
        }
        let value_start = i;
        if let Some(end) = quoted_end(&chars, i) {
            if end == chars.len() || chars[end].1 == ',' {
                out.push((key, &line[byte(value_start)..byte(end)]));
                pos = if end == chars.len() { end } else { end + 1 };
                continue;
            }
        }
        while i < chars.len() && chars[i].1 != ',' {
            i += 1;
        }
        out.push((key, &line[byte(value_start)..byte(i)]));
        pos = if i == chars.len() { i } else { i + 1 };
    }
    out
}

/// End (exclusive) of `"(?:\\.|[^\\"])+"` starting at `i`, if it matches there.
fn quoted_end(chars: &[(usize, char)], mut i: usize) -> Option<usize> {
    if chars.get(i)?.1 != '"' {
        return None;
    }
    i += 1;
    let start = i;
    loop {
        match chars.get(i)?.1 {
            '"' if i > start => return Some(i + 1),
            '"' => return None,
            '\\' => {
                // `.` matches anything but a newline.
                if chars.get(i + 1)?.1 == '\n' {
                    return None;
                }
                i += 2;
            }
            _ => i += 1,
        }
    }
}

/// `re_imagesize`: `^(\d+)x(\d+)$` (where `$` also matches before a final newline).
fn image_size(v: &str) -> Option<(&str, &str)> {
    let v = v.strip_suffix('\n').unwrap_or(v);
    let (w, h) = v.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(w) && digits(h)).then_some((w, h))
}

/// Infotexts from before hires fix took a target size state the first pass size instead.
fn restore_old_hires_fix_params(res: &mut ParsedInfotext) {
    let (Some(fw), Some(fh)) = (res.get("First pass size-1"), res.get("First pass size-2")) else {
        return;
    };
    let (Some(mut fw), Some(mut fh)) = (fw.as_int(), fh.as_int()) else {
        return;
    };
    let size = |key: &str| res.get(key).map_or(Some(512), InfoValue::as_int);
    let (Some(width), Some(height)) = (size("Size-1"), size("Size-2")) else {
        return;
    };
    if fw == 0 || fh == 0 {
        if width * height == 0 {
            return;
        }
        // `processing.old_hires_fix_first_pass_dimensions`: about 512x512 worth of pixels.
        let scale = ((512.0 * 512.0) / (width * height) as f64).sqrt();
        fw = ((scale * width as f64 / 64.0).ceil() * 64.0) as i64;
        fh = ((scale * height as f64 / 64.0).ceil() * 64.0) as i64;
    }
    res.set("Size-1", InfoValue::Int(fw));
    res.set("Size-2", InfoValue::Int(fh));
    res.set("Hires resize-1", InfoValue::Int(width));
    res.set("Hires resize-2", InfoValue::Int(height));
}

/// Whether `prompt_parser.parse_prompt_attention` gives any text a weight other than 1,
/// which is when A1111 records the emphasis mode. Only weights matter here, so text runs
/// (and BREAK, which never changes a weight) are kept as bare weights.
fn uses_emphasis(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    let mut weights: Vec<f64> = Vec::new();
    let (mut round, mut square): (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
    let multiply = |weights: &mut Vec<f64>, from: usize, by: f64| {
        weights[from..].iter_mut().for_each(|w| *w *= by);
    };
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                // An escaped bracket or backslash, or a lone backslash: plain text.
                let escaped = matches!(chars.get(i + 1), Some('(' | ')' | '[' | ']' | '\\'));
                i += if escaped { 2 } else { 1 };
                weights.push(1.0);
                continue;
            }
            '(' => round.push(weights.len()),
            '[' => square.push(weights.len()),
            ':' => {
                // `:\s*([+-]?[.\d]+)\s*\)` closes a round bracket with an explicit weight.
                if let (Some((weight, end)), Some(&start)) =
                    (explicit_weight(&chars, i), round.last())
                {
                    round.pop();
                    multiply(&mut weights, start, weight);
                    i = end;
                    continue;
                }
                weights.push(1.0);
            }
            ')' if !round.is_empty() => {
                let start = round.pop().expect("checked non-empty");
                multiply(&mut weights, start, 1.1);
            }
            ']' if !square.is_empty() => {
                let start = square.pop().expect("checked non-empty");
                multiply(&mut weights, start, 1.0 / 1.1);
            }
            ')' | ']' => weights.push(1.0),
            _ => {
                while i + 1 < chars.len()
                    && !matches!(chars[i + 1], '\\' | '(' | ')' | '[' | ']' | ':')
                {
                    i += 1;
                }
                weights.push(1.0);
            }
        }
        i += 1;
    }
    for start in round {
        multiply(&mut weights, start, 1.1);
    }
    for start in square {
        multiply(&mut weights, start, 1.0 / 1.1);
    }
    weights.iter().any(|&w| w != 1.0)
}

/// Matches `:\s*([+-]?[.\d]+)\s*\)` at `i`: the weight and the index after `)`.
fn explicit_weight(chars: &[char], mut i: usize) -> Option<(f64, usize)> {
    i += 1;
    while chars.get(i).is_some_and(|c| is_py_space(*c)) {
        i += 1;
    }
    let start = i;
    if matches!(chars.get(i), Some('+' | '-')) {
        i += 1;
    }
    let digits_start = i;
    while chars
        .get(i)
        .is_some_and(|c| *c == '.' || c.is_ascii_digit())
    {
        i += 1;
    }
    if i == digits_start {
        return None;
    }
    let number: String = chars[start..i].iter().collect();
    while chars.get(i).is_some_and(|c| is_py_space(*c)) {
        i += 1;
    }
    if chars.get(i) != Some(&')') {
        return None;
    }
    Some((number.parse().ok()?, i + 1))
}

/// `infotext_versions.backcompat`: options that reproduce older A1111 behaviour, switched
/// on by the Version the image was made with.
fn backcompat(res: &mut ParsedInfotext) {
    let Some(ver) = version(res.get_str("Version")) else {
        return;
    };
    let old = ver < Version::v160();
    if old && res.prompt().contains('[') {
        res.set("Old prompt editing timelines", InfoValue::Bool(true));
    }
    if old && matches!(res.get_str("Sampler"), Some("DDIM" | "PLMS")) {
        res.set("Pad conds v0", InfoValue::Bool(true));
    }
    if ver < Version::v170_tsnr() {
        res.set("Downcast alphas_cumprod", InfoValue::Bool(true));
    }
    if ver < Version::v180() && res.get_str("Refiner").is_some_and(|r| !r.is_empty()) {
        res.set("Refiner switch by sampling steps", InfoValue::Bool(true));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_regex_quirks() {
        assert_eq!(
            find_params("Steps: 20, Seed: 5"),
            [("Steps", "20"), ("Seed", "5")]
        );
        assert_eq!(
            find_params("a: 1"),
            Vec::<(&str, &str)>::new(),
            "keys need two characters"
        );
        assert_eq!(
            find_params("Note: \"a, b\", Xy: 1"),
            [("Note", "\"a, b\""), ("Xy", "1")]
        );
        assert_eq!(
            find_params("Qu: \"a\" b, Xy: 1, Z: 2"),
            [("Qu", "\"a\" b"), ("Xy", "1")],
            "a quote not followed by a comma falls back to the unquoted form"
        );
        assert_eq!(find_params("Em: , Fg: 2"), [("Em", ""), ("Fg", "2")]);
        assert_eq!(find_params("a cat, Steps: 20"), [("Steps", "20")]);
        assert_eq!(
            find_params("Größe: 5, Ключ: значение"),
            [("Größe", "5"), ("Ключ", "значение")]
        );
    }

    #[test]
    fn emphasis_detection_follows_the_attention_parser() {
        for (prompt, expected) in [
            ("a cat", false),
            ("a (cat)", true),
            ("a [cat]", true),
            ("a (cat:1.0)", false),
            ("a (cat:1.2)", true),
            ("a ([cat])", false),
            ("a \\(cat\\)", false),
            ("a (cat", true),
            ("a cat)", false),
            ("ratio 16:9", false),
            ("a (BREAK) b", true),
            ("()", false),
        ] {
            assert_eq!(uses_emphasis(prompt), expected, "{prompt}");
        }
    }

    #[test]
    fn old_first_pass_size_zero_is_computed() {
        let p =
            parse_infotext("p\nSteps: 10, Sampler: Euler, Size: 1024x1024, First pass size: 0x0");
        assert_eq!(p.get("Size-1"), Some(&InfoValue::Int(512)));
        assert_eq!(p.get("Hires resize-1"), Some(&InfoValue::Int(1024)));
    }

    #[test]
    fn hires_prompt_equal_to_prompt_is_blank() {
        let p = parse_infotext("cat\nSteps: 10, Sampler: Euler, Hires prompt: cat, Seed: 1");
        assert_eq!(p.get_str("Hires prompt"), Some(""));
        let p = parse_infotext("cat\nSteps: 10, Sampler: Euler, Hires prompt: dog, Seed: 1");
        assert_eq!(p.get_str("Hires prompt"), Some("dog"));
    }
}
