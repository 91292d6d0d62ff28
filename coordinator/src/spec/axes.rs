//! AUTOMATIC1111's X/Y/Z plot axes that apply to txt2img (v1.10.1 `scripts/xyz_grid.py`):
//! their names, value types, costs, label formats, and how a value changes a cell's
//! parameters. Values are parsed and checked here, so a bad one is refused before anything
//! is stored, with a message naming the axis and the value.

use sdfarm_proto::RenderParams;

use super::values::{csv_list, float_label, float_values, int_values};
use super::{samplers, BUILTIN_MODELS, CLIP_SKIP_RANGE, SIDE_MULTIPLE, SIDE_RANGE, STEPS_RANGE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    Int,
    Float,
    Str,
    /// "Prompt order": every permutation of the listed tokens.
    Permutations,
}

/// How A1111 writes a value in the grid legend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `format_value_add_label`: "{axis}: {value}".
    WithLabel,
    /// `format_value`: the value alone.
    Raw,
    /// `format_remove_path`: the file name without its folders.
    Basename,
    /// `format_value_join_list`: tokens joined with ", ".
    JoinList,
    Nothing,
}

/// The parameter an axis sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Nothing,
    Seed,
    Subseed,
    SubseedStrength,
    Steps,
    HiresSteps,
    CfgScale,
    PromptSr,
    PromptOrder,
    Sampler,
    HiresSampler,
    Scheduler,
    Checkpoint,
    SigmaChurn,
    SigmaMin,
    SigmaMax,
    SigmaNoise,
    ScheduleMinSigma,
    ScheduleMaxSigma,
    ScheduleRho,
    Eta,
    ClipSkip,
    Denoising,
    InitialNoise,
    ExtraNoise,
    HiresUpscaler,
    Vae,
    Styles,
    Size,
    RngSource,
    Refiner,
    RefinerSwitch,
    UniPcOrder,
}

/// Axis definitions are statics: two are the same axis when they have the same name.
#[derive(Debug)]
pub struct AxisDef {
    pub label: &'static str,
    pub value_type: ValueType,
    /// A1111's cost: the costliest axis is processed outermost so that expensive switches
    /// (checkpoints, VAEs) happen as rarely as possible.
    pub cost: f32,
    format: Format,
    pub field: Field,
}

const fn axis(label: &'static str, value_type: ValueType, field: Field) -> AxisDef {
    AxisDef {
        label,
        value_type,
        cost: 0.0,
        format: Format::WithLabel,
        field,
    }
}

const fn with(mut a: AxisDef, format: Format, cost: f32) -> AxisDef {
    a.format = format;
    a.cost = cost;
    a
}

use Field as F;
use ValueType::{Float, Int, Permutations, Str};

/// In A1111's menu order (txt2img entries only).
pub static AXES: &[AxisDef] = &[
    with(axis("Nothing", Str, F::Nothing), Format::Nothing, 0.0),
    axis("Seed", Int, F::Seed),
    axis("Var. seed", Int, F::Subseed),
    axis("Var. strength", Float, F::SubseedStrength),
    axis("Steps", Int, F::Steps),
    axis("Hires steps", Int, F::HiresSteps),
    axis("CFG Scale", Float, F::CfgScale),
    with(axis("Prompt S/R", Str, F::PromptSr), Format::Raw, 0.0),
    with(
        axis("Prompt order", Permutations, F::PromptOrder),
        Format::JoinList,
        0.0,
    ),
    with(axis("Sampler", Str, F::Sampler), Format::Raw, 0.0),
    axis("Hires sampler", Str, F::HiresSampler),
    with(
        axis("Checkpoint name", Str, F::Checkpoint),
        Format::Basename,
        1.0,
    ),
    axis("Sigma Churn", Float, F::SigmaChurn),
    axis("Sigma min", Float, F::SigmaMin),
    axis("Sigma max", Float, F::SigmaMax),
    axis("Sigma noise", Float, F::SigmaNoise),
    axis("Schedule type", Str, F::Scheduler),
    axis("Schedule min sigma", Float, F::ScheduleMinSigma),
    axis("Schedule max sigma", Float, F::ScheduleMaxSigma),
    axis("Schedule rho", Float, F::ScheduleRho),
    axis("Eta", Float, F::Eta),
    axis("Clip skip", Int, F::ClipSkip),
    axis("Denoising", Float, F::Denoising),
    axis("Initial noise multiplier", Float, F::InitialNoise),
    axis("Extra noise", Float, F::ExtraNoise),
    axis("Hires upscaler", Str, F::HiresUpscaler),
    with(axis("VAE", Str, F::Vae), Format::WithLabel, 0.7),
    axis("Styles", Str, F::Styles),
    with(
        axis("UniPC Order", Int, F::UniPcOrder),
        Format::WithLabel,
        0.5,
    ),
    with(
        axis("Refiner checkpoint", Str, F::Refiner),
        Format::Basename,
        1.0,
    ),
    axis("Refiner switch at", Float, F::RefinerSwitch),
    axis("RNG source", Str, F::RngSource),
    axis("Size", Str, F::Size),
];

/// A1111 axes that exist but do not apply to a txt2img render farm, with the reason.
const NOT_SUPPORTED: &[(&str, &str)] = &[
    ("Image CFG Scale", "applies to img2img only"),
    ("Cond. Image Mask Weight", "applies to img2img only"),
    ("Face restore", "face restoration is not part of sdfarm"),
    (
        "Negative Guidance minimum sigma",
        "is not supported by sdfarm yet",
    ),
    ("Token merging ratio", "is not supported by sdfarm yet"),
    (
        "Token merging ratio high-res",
        "is not supported by sdfarm yet",
    ),
    (
        "Always discard next-to-last sigma",
        "is not supported by sdfarm yet",
    ),
    ("SGM noise multiplier", "is not supported by sdfarm yet"),
    ("FP8 mode", "is not supported by sdfarm yet"),
    ("Beta schedule alpha", "is not supported by sdfarm yet"),
    ("Beta schedule beta", "is not supported by sdfarm yet"),
    ("Skip Early CFG", "is not supported by sdfarm yet"),
];

/// Finds an axis by its A1111 name (case-insensitive), or says why it cannot be used.
pub fn find_axis(name: &str) -> Result<&'static AxisDef, String> {
    if let Some(a) = AXES
        .iter()
        .find(|a| a.label.eq_ignore_ascii_case(name.trim()))
    {
        return Ok(a);
    }
    if let Some((n, why)) = NOT_SUPPORTED
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
    {
        return Err(format!("is the A1111 axis \"{n}\", which {why}"));
    }
    let hint = super::nearest(name, AXES.iter().map(|a| a.label))
        .map(|n| format!("; did you mean \"{n}\"?"))
        .unwrap_or_default();
    Err(format!("is not an A1111 X/Y/Z axis{hint}"))
}

pub fn axis_names() -> String {
    AXES.iter()
        .map(|a| format!("\"{}\"", a.label))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One value of an axis, typed as A1111 types it.
#[derive(Debug, Clone, PartialEq)]
pub enum AxisValue {
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<String>),
}

impl AxisValue {
    /// How A1111 prints the value (`str(x)` in Python).
    pub fn py_str(&self) -> String {
        match self {
            AxisValue::Int(i) => i.to_string(),
            AxisValue::Float(f) => super::values::py_repr(*f),
            AxisValue::Str(s) => s.clone(),
            AxisValue::List(l) => format!("{l:?}"),
        }
    }
}

impl PartialEq for AxisDef {
    fn eq(&self, other: &AxisDef) -> bool {
        self.label == other.label
    }
}

impl AxisDef {
    /// The legend text for one value.
    pub fn label_of(&self, v: &AxisValue) -> String {
        let shown = match v {
            AxisValue::Float(f) => float_label(*f),
            other => other.py_str(),
        };
        match self.format {
            Format::Nothing => String::new(),
            Format::WithLabel => format!("{}: {shown}", self.label),
            Format::Raw => shown,
            Format::Basename => shown.rsplit('/').next().unwrap_or_default().to_string(),
            Format::JoinList => match v {
                AxisValue::List(l) => l.join(", "),
                other => other.py_str(),
            },
        }
    }

    /// Parses the axis's value text into its values; the error is the reason, for the caller
    /// to prefix with the axis and the text.
    pub fn parse_values(&self, text: &str) -> Result<Vec<AxisValue>, String> {
        if self.field == F::Nothing {
            return Ok(vec![AxisValue::Int(0)]);
        }
        let values: Vec<AxisValue> = match self.value_type {
            Int => int_values(text)?.into_iter().map(AxisValue::Int).collect(),
            Float => float_values(text)?
                .into_iter()
                .map(AxisValue::Float)
                .collect(),
            Str => csv_list(text).into_iter().map(AxisValue::Str).collect(),
            Permutations => {
                let tokens = csv_list(text);
                let count = (1..=tokens.len() as u64).try_fold(1u64, |a, b| a.checked_mul(b));
                match count {
                    Some(n) if n <= super::values::MAX_RANGE_LEN as u64 => {}
                    _ => {
                        return Err(format!(
                            "{} tokens make too many orders (at most 9 tokens)",
                            tokens.len()
                        ))
                    }
                }
                permutations(&tokens)
                    .into_iter()
                    .map(AxisValue::List)
                    .collect()
            }
        };
        if values.is_empty() {
            return Err("gives no values".into());
        }
        for v in &values {
            self.check(v)?;
        }
        Ok(values)
    }

    /// Refuses values sdfarm cannot render, naming the value.
    fn check(&self, v: &AxisValue) -> Result<(), String> {
        let bad = |what: &str| Err(format!("value {} {what}", quote_value(v)));
        match (self.field, v) {
            (F::Seed | F::Subseed, AxisValue::Int(i)) if *i < -1 => {
                bad("is not a seed (accepted: -1 for random, or 0 and up)")
            }
            (F::Steps, AxisValue::Int(i)) if !STEPS_RANGE.contains(i) => bad(&format!(
                "is out of range (accepted: {} to {})",
                STEPS_RANGE.start(),
                STEPS_RANGE.end()
            )),
            (F::HiresSteps | F::UniPcOrder, AxisValue::Int(i)) if !(0..=1000).contains(i) => {
                bad("is out of range (accepted: 0 to 1000)")
            }
            (F::ClipSkip, AxisValue::Int(i)) if !CLIP_SKIP_RANGE.contains(i) => {
                bad("is out of range (accepted: 1 to 12)")
            }
            (_, AxisValue::Float(f)) if !f.is_finite() => bad("is not a finite number"),
            (F::SubseedStrength | F::Denoising | F::RefinerSwitch, AxisValue::Float(f))
                if !(0.0..=1.0).contains(f) =>
            {
                bad("is out of range (accepted: 0 to 1)")
            }
            (F::Eta, AxisValue::Float(f)) if *f < 0.0 => bad("is negative (accepted: 0 and up)"),
            (F::Sampler | F::HiresSampler, AxisValue::Str(s)) => {
                samplers::canonical(s, "Automatic")
                    .map(|_| ())
                    .or_else(|_| {
                        let names: Vec<_> = samplers::sampler_names().collect();
                        let hint = super::nearest(s, names.iter().copied())
                            .map(|n| format!("; did you mean \"{n}\"?"))
                            .unwrap_or_default();
                        bad(&format!("is not an A1111 sampler{hint}"))
                    })
            }
            (F::Scheduler, AxisValue::Str(s)) => {
                scheduler_label(s).map(|_| ()).ok_or(()).or_else(|_| {
                    bad(&format!(
                        "is not an A1111 schedule type (accepted: {})",
                        samplers::scheduler_labels().collect::<Vec<_>>().join(", ")
                    ))
                })
            }
            (F::Checkpoint, AxisValue::Str(s)) => {
                if s.is_empty() {
                    bad("is empty (accepted: a model path or \"builtin:tiny-sd\")")
                } else if s.starts_with("builtin:") && !BUILTIN_MODELS.contains(&s.as_str()) {
                    bad("is not a built-in model (accepted: \"builtin:tiny-sd\")")
                } else {
                    Ok(())
                }
            }
            (F::RngSource, AxisValue::Str(s)) => match rng_source(s) {
                Some(_) => Ok(()),
                None => bad("is not a noise source sdfarm can reproduce (accepted: CPU, NV)"),
            },
            (F::Size, AxisValue::Str(s)) => parse_size(s).map(|_| ()).or_else(|e| bad(&e)),
            _ => Ok(()),
        }
    }

    /// Applies one value to a cell's parameters, as A1111's `apply` functions do; axes are
    /// applied in X, Y, Z order, so later axes see earlier ones' changes.
    pub fn apply(&self, p: &mut RenderParams, v: &AxisValue, values: &[AxisValue]) {
        let int = || match v {
            AxisValue::Int(i) => *i,
            _ => 0,
        };
        let float = || match v {
            AxisValue::Float(f) => *f as f32,
            _ => 0.0,
        };
        let text = || match v {
            AxisValue::Str(s) => s.clone(),
            _ => String::new(),
        };
        match self.field {
            F::Nothing => {}
            F::Seed => p.seed = int(),
            F::Subseed => p.subseed = int(),
            F::SubseedStrength => p.subseed_strength = float(),
            F::Steps => p.steps = int() as u32,
            F::HiresSteps => p.hr_second_pass_steps = int() as u32,
            F::CfgScale => p.cfg_scale = float(),
            F::PromptSr => {
                let search = match values.first() {
                    Some(AxisValue::Str(s)) => s.as_str(),
                    _ => return,
                };
                let replace = text();
                p.prompt = p.prompt.replace(search, &replace);
                p.negative_prompt = p.negative_prompt.replace(search, &replace);
            }
            F::PromptOrder => {
                if let AxisValue::List(order) = v {
                    p.prompt = apply_order(&p.prompt, order);
                }
            }
            F::Sampler => {
                let (sampler, scheduler) = samplers::canonical(&text(), &p.scheduler)
                    .expect("checked when the sweep was parsed");
                p.sampler_name = sampler.into();
                p.scheduler = scheduler.into();
            }
            F::HiresSampler => {
                let (sampler, _) = samplers::canonical(&text(), "Automatic")
                    .expect("checked when the sweep was parsed");
                p.hr_sampler_name = sampler.into();
            }
            F::Scheduler => {
                p.scheduler = scheduler_label(&text())
                    .expect("checked when the sweep was parsed")
                    .into()
            }
            F::Checkpoint => p.model = text(),
            F::SigmaChurn => p.s_churn = float(),
            F::SigmaMin => p.s_tmin = float(),
            F::SigmaMax => p.s_tmax = float(),
            F::SigmaNoise => p.s_noise = float(),
            F::ScheduleMinSigma => p.sigma_min = float(),
            F::ScheduleMaxSigma => p.sigma_max = float(),
            F::ScheduleRho => p.rho = float(),
            F::Eta => p.eta = float(),
            F::ClipSkip => p.clip_skip = int() as u32,
            F::Denoising => p.denoising_strength = float(),
            F::InitialNoise => p.initial_noise_multiplier = float(),
            F::ExtraNoise => p.extra_noise = float(),
            F::HiresUpscaler => p.hr_upscaler = text(),
            F::Vae => p.vae = text(),
            // A1111 extends the style list with the value split at commas, unstripped.
            F::Styles => p.styles.extend(text().split(',').map(str::to_string)),
            F::Size => {
                let (w, h) = parse_size(&text()).expect("checked when the sweep was parsed");
                p.width = w;
                p.height = h;
            }
            F::RngSource => p.rng = rng_source(&text()).expect("checked").into(),
            F::Refiner => {
                let t = text();
                p.refiner_checkpoint = if matches!(t.as_str(), "None" | "none") {
                    String::new()
                } else {
                    t
                };
            }
            F::RefinerSwitch => p.refiner_switch_at = float(),
            // `min(x, p.steps - 1)` with the steps the cell has when this axis is applied.
            F::UniPcOrder => {
                p.uni_pc_order = (int() as u32).min(p.steps.saturating_sub(1));
            }
        }
    }
}

fn quote_value(v: &AxisValue) -> String {
    match v {
        AxisValue::Str(s) => format!("{s:?}"),
        other => other.py_str(),
    }
}

fn scheduler_label(s: &str) -> Option<&'static str> {
    samplers::canonical("Euler", s).ok().map(|(_, label)| label)
}

fn rng_source(s: &str) -> Option<&'static str> {
    match s.to_ascii_uppercase().as_str() {
        "CPU" => Some("CPU"),
        "NV" => Some("NV"),
        _ => None,
    }
}

/// "WxH" as A1111's `apply_size` reads it (`partition('x')`, each side `int()`), with
/// sdfarm's side limits on top. A1111 only prints a warning for a bad size; a farm refuses it.
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s.split_once('x').unwrap_or((s, ""));
    let side = |t: &str, which: &str| -> Result<u32, String> {
        let v = super::values::py_int(t)
            .ok_or_else(|| format!("has no {which} (accepted: WIDTHxHEIGHT, e.g. 512x768)"))?;
        let fits = u32::try_from(v).is_ok_and(|v| SIDE_RANGE.contains(&v));
        if !fits || v % i64::from(SIDE_MULTIPLE) != 0 {
            return Err(format!(
                "has {which} {v} (accepted: multiples of {SIDE_MULTIPLE} from {} to {})",
                SIDE_RANGE.start(),
                SIDE_RANGE.end()
            ));
        }
        Ok(v as u32)
    };
    Ok((side(w, "width")?, side(h, "height")?))
}

/// `itertools.permutations` order: lexicographic in the tokens' positions.
fn permutations(tokens: &[String]) -> Vec<Vec<String>> {
    let n = tokens.len();
    let mut idx: Vec<usize> = (0..n).collect();
    let mut out = vec![idx.iter().map(|&i| tokens[i].clone()).collect()];
    loop {
        let Some(i) = (1..n).rev().find(|&i| idx[i - 1] < idx[i]) else {
            return out;
        };
        let j = (i..n).rev().find(|&j| idx[j] > idx[i - 1]).expect("exists");
        idx.swap(i - 1, j);
        idx[i..].reverse();
        out.push(idx.iter().map(|&i| tokens[i].clone()).collect());
    }
}

/// Python slice `s[start:end]` on characters, with negative indices counted from the end.
fn py_slice(s: &[char], start: i64, end: Option<i64>) -> String {
    let len = s.len() as i64;
    let fix = |i: i64| if i < 0 { (i + len).max(0) } else { i.min(len) };
    let (a, b) = (fix(start), fix(end.unwrap_or(len)));
    if a >= b {
        String::new()
    } else {
        s[a as usize..b as usize].iter().collect()
    }
}

/// Python `str.find` in characters; -1 when absent.
fn py_find(hay: &[char], needle: &[char]) -> i64 {
    if needle.is_empty() {
        return 0;
    }
    hay.windows(needle.len())
        .position(|w| w == needle)
        .map_or(-1, |p| p as i64)
}

/// A1111's `apply_order`: the tokens' first occurrences, in prompt order, are refilled with
/// the tokens in the order given. A token missing from the prompt is not an error upstream
/// (`find` returns -1 and slicing wraps around); that output is reproduced as is.
pub fn apply_order(prompt: &str, order: &[String]) -> String {
    let chars: Vec<char> = prompt.chars().collect();
    let mut located: Vec<(i64, Vec<char>)> = order
        .iter()
        .map(|t| {
            let t: Vec<char> = t.chars().collect();
            (py_find(&chars, &t), t)
        })
        .collect();
    located.sort_by_key(|(pos, _)| *pos);
    let mut rest = chars;
    let mut parts = Vec::new();
    for (_, token) in &located {
        let n = py_find(&rest, token);
        parts.push(py_slice(&rest, 0, Some(n)));
        rest = py_slice(&rest, n + token.len() as i64, None)
            .chars()
            .collect();
    }
    let mut out = String::new();
    for (part, token) in parts.iter().zip(order) {
        out.push_str(part);
        out.push_str(token);
    }
    out.extend(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_follow_itertools() {
        let t: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let p: Vec<String> = permutations(&t).iter().map(|v| v.concat()).collect();
        assert_eq!(p, ["abc", "acb", "bac", "bca", "cab", "cba"]);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512x768"), Ok((512, 768)));
        assert_eq!(parse_size(" 64 x 32 "), Ok((64, 32)));
        assert!(parse_size("512x").unwrap_err().contains("height"));
        assert!(parse_size("513x512").unwrap_err().contains("513"));
    }

    #[test]
    fn unknown_and_img2img_axes() {
        assert!(find_axis("Stpes").unwrap_err().contains("\"Steps\""));
        assert!(find_axis("Image CFG Scale")
            .unwrap_err()
            .contains("img2img"));
        assert_eq!(find_axis("cfg scale").unwrap().label, "CFG Scale");
    }
}
