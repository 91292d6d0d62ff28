//! The `[xyz]` and `[prompt_matrix]` tables: A1111's X/Y/Z plot and Prompt matrix script
//! options, checked against the base parameters they will be applied to.

use sdfarm_proto::RenderParams;

use super::axes::{axis_names, find_axis, AxisDef, AxisValue, Field};
use super::source::{Entry, Raw};
use super::{Result, SpecError, SpecErrorKind};

/// A1111's "Grid margins (px)" slider: 0 to 500.
pub const MARGIN_RANGE: std::ops::RangeInclusive<i64> = 0..=500;

/// One axis as written and as parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub def: &'static AxisDef,
    /// The value text as written; it goes into the grid infotext ("X Values").
    pub text: String,
    pub values: Vec<AxisValue>,
}

impl Axis {
    pub fn nothing() -> Axis {
        Axis {
            def: find_axis("Nothing").expect("Nothing is an axis"),
            text: String::new(),
            values: vec![AxisValue::Int(0)],
        }
    }

    pub fn is_nothing(&self) -> bool {
        self.def.field == Field::Nothing
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// The X/Y/Z plot options (`[xyz]`), named as in A1111's UI.
#[derive(Debug, Clone, PartialEq)]
pub struct XyzSpec {
    /// X, Y, Z.
    pub axes: [Axis; 3],
    /// "Vary seeds for X/Y/Z": each cell's seed is offset by its position along those axes.
    pub vary_seeds: [bool; 3],
    /// "Keep -1 for seeds": random seeds are drawn per cell instead of once per sweep.
    pub keep_random_seeds: bool,
    pub include_sub_images: bool,
    pub include_sub_grids: bool,
    pub draw_legend: bool,
    pub margin_size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptType {
    Positive,
    Negative,
}

/// The Prompt matrix options (`[prompt_matrix]`).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptMatrixSpec {
    pub put_variable_parts_at_start: bool,
    pub different_seeds: bool,
    pub prompt_type: PromptType,
    /// ", " for "comma", " " for "space".
    pub delimiter: &'static str,
    pub margin_size: u32,
}

fn table<'a>(e: &'a Entry, accepted: &str) -> Result<&'a [Entry]> {
    match &e.value {
        Raw::Table(entries) => Ok(entries),
        _ => Err(super::wrong_type(e, "a table", accepted.into())),
    }
}

fn boolean(e: &Entry) -> Result<bool> {
    match e.value {
        Raw::Bool(b) => Ok(b),
        _ => Err(super::wrong_type(e, "a boolean", "true or false".into())),
    }
}

fn unknown(e: &Entry, table: &str, keys: &[&str]) -> SpecError {
    SpecError::at(
        SpecErrorKind::UnknownKey,
        e,
        format!("is not a key of [{table}]"),
        keys.join(", "),
    )
}

fn named(mut err: SpecError, prefix: &str) -> SpecError {
    if let Some(k) = &err.key {
        err.key = Some(format!("{prefix}.{k}"));
    }
    err
}

const XYZ_KEYS: &[&str] = &[
    "x",
    "y",
    "z",
    "vary_seeds",
    "keep_random_seeds",
    "include_sub_images",
    "include_sub_grids",
    "draw_legend",
    "margin_size",
];

pub(super) fn xyz(e: &Entry, base: &RenderParams) -> Result<XyzSpec> {
    let mut spec = XyzSpec {
        axes: [Axis::nothing(), Axis::nothing(), Axis::nothing()],
        vary_seeds: [false; 3],
        keep_random_seeds: false,
        include_sub_images: false,
        include_sub_grids: false,
        draw_legend: true,
        margin_size: 0,
    };
    let entries = table(
        e,
        "a table such as { x = { type = \"Steps\", values = \"10-30 (+10)\" } }",
    )?;
    for item in entries.iter().filter(|i| !matches!(i.value, Raw::Null)) {
        let r = match item.key.as_str() {
            k @ ("x" | "y" | "z") => {
                let i = usize::from(k.as_bytes()[0] - b'x');
                axis(item, k, base).map(|a| spec.axes[i] = a)
            }
            "vary_seeds" => vary_seeds(item).map(|v| spec.vary_seeds = v),
            "keep_random_seeds" => boolean(item).map(|b| spec.keep_random_seeds = b),
            "include_sub_images" => boolean(item).map(|b| spec.include_sub_images = b),
            "include_sub_grids" => boolean(item).map(|b| spec.include_sub_grids = b),
            "draw_legend" => boolean(item).map(|b| spec.draw_legend = b),
            "margin_size" => super::int_in(item, MARGIN_RANGE).map(|m| spec.margin_size = m as u32),
            _ => Err(unknown(item, "xyz", XYZ_KEYS)),
        };
        r.map_err(|err| named(err, "xyz"))?;
    }
    Ok(spec)
}

fn vary_seeds(e: &Entry) -> Result<[bool; 3]> {
    let mut out = [false; 3];
    for item in table(e, "{ x = bool, y = bool, z = bool }")? {
        let i = match item.key.as_str() {
            "x" => 0,
            "y" => 1,
            "z" => 2,
            _ => {
                return Err(named(
                    unknown(item, "xyz.vary_seeds", &["x", "y", "z"]),
                    "vary_seeds",
                ))
            }
        };
        out[i] = boolean(item).map_err(|err| named(err, "vary_seeds"))?;
    }
    Ok(out)
}

/// `x = { type = "Steps", values = "10-30 (+10)" }`.
fn axis(e: &Entry, name: &str, base: &RenderParams) -> Result<Axis> {
    let accepted = "{ type = \"<A1111 axis name>\", values = \"<A1111 value text>\" }";
    let entries = table(e, accepted)?;
    let (mut type_entry, mut values_entry) = (None, None);
    for item in entries {
        match item.key.as_str() {
            "type" => type_entry = Some(item),
            "values" => values_entry = Some(item),
            _ => return Err(named(unknown(item, name, &["type", "values"]), name)),
        }
    }
    let Some(type_entry) = type_entry else {
        let mut err = SpecError::at(SpecErrorKind::MissingKey, e, "has no `type`", axis_names());
        err.key = Some(format!("{name}.type"));
        return Err(err);
    };
    let type_name = super::string(type_entry, "an A1111 axis name").map_err(|e| named(e, name))?;
    let def = find_axis(&type_name).map_err(|problem| {
        named(
            SpecError::at(
                SpecErrorKind::InvalidValue,
                type_entry,
                problem,
                axis_names(),
            ),
            name,
        )
    })?;
    let text = match values_entry {
        Some(v) => super::string(v, "A1111 value text, e.g. \"1-5\" or \"a, b\"")
            .map_err(|e| named(e, name))?,
        None if def.field == Field::Nothing => String::new(),
        None => {
            let mut err = SpecError::at(
                SpecErrorKind::MissingKey,
                e,
                format!("(axis \"{}\") has no `values`", def.label),
                "A1111 value text, e.g. \"1-5\" or \"a, b\"",
            );
            err.key = Some(format!("{name}.values"));
            return Err(err);
        }
    };
    let at = values_entry.unwrap_or(type_entry);
    let values = def.parse_values(&text).map_err(|problem| {
        named(
            SpecError::at(
                SpecErrorKind::InvalidValue,
                at,
                format!("(axis \"{}\"): {problem}", def.label),
                accepted_values(def),
            ),
            name,
        )
    })?;
    if def.field == Field::PromptSr {
        if let Some(AxisValue::Str(search)) = values.first() {
            if !base.prompt.contains(search.as_str())
                && !base.negative_prompt.contains(search.as_str())
            {
                return Err(named(
                    SpecError::at(
                        SpecErrorKind::InvalidValue,
                        at,
                        format!(
                            "(axis \"Prompt S/R\"): did not find {search:?} (the first value, which is the text replaced) in the prompt or the negative prompt"
                        ),
                        "a first value that occurs in `prompt` or `negative_prompt`",
                    ),
                    name,
                ));
            }
        }
    }
    Ok(Axis { def, text, values })
}

fn accepted_values(def: &AxisDef) -> String {
    use super::axes::ValueType;
    match def.value_type {
        ValueType::Int => {
            "comma-separated integers and ranges: 1, 2, 5-8, 1-10 (+2), 10-1 (-3), 1-10 [5]".into()
        }
        ValueType::Float => {
            "comma-separated numbers and ranges: 7, 7.5, 1-2 (+0.5), 1-2 [5]".into()
        }
        _ => "comma-separated text; quote a value that holds a comma: \"a, b\", c".into(),
    }
}

const MATRIX_KEYS: &[&str] = &[
    "put_variable_parts_at_start",
    "different_seeds",
    "prompt_type",
    "variations_delimiter",
    "margin_size",
];

/// At most 20 variable parts: 2^20 prompts, about a million cells.
pub const MAX_MATRIX_PARTS: usize = 20;

pub(super) fn prompt_matrix(e: &Entry, base: &RenderParams) -> Result<PromptMatrixSpec> {
    let mut spec = PromptMatrixSpec {
        put_variable_parts_at_start: false,
        different_seeds: false,
        prompt_type: PromptType::Positive,
        delimiter: ", ",
        margin_size: 0,
    };
    for item in table(e, "a table such as { different_seeds = true }")?
        .iter()
        .filter(|i| !matches!(i.value, Raw::Null))
    {
        let r = match item.key.as_str() {
            "put_variable_parts_at_start" => {
                boolean(item).map(|b| spec.put_variable_parts_at_start = b)
            }
            "different_seeds" => boolean(item).map(|b| spec.different_seeds = b),
            "prompt_type" => match super::string(item, "\"positive\" or \"negative\"")?.as_str() {
                "positive" => Ok(spec.prompt_type = PromptType::Positive),
                "negative" => Ok(spec.prompt_type = PromptType::Negative),
                _ => Err(SpecError::at(
                    SpecErrorKind::InvalidValue,
                    item,
                    "is not a prompt type",
                    "\"positive\" or \"negative\"",
                )),
            },
            "variations_delimiter" => match super::string(item, "\"comma\" or \"space\"")?.as_str()
            {
                "comma" => Ok(spec.delimiter = ", "),
                "space" => Ok(spec.delimiter = " "),
                _ => Err(SpecError::at(
                    SpecErrorKind::InvalidValue,
                    item,
                    "is not a delimiter",
                    "\"comma\" or \"space\"",
                )),
            },
            "margin_size" => super::int_in(item, MARGIN_RANGE).map(|m| spec.margin_size = m as u32),
            _ => Err(unknown(item, "prompt_matrix", MATRIX_KEYS)),
        };
        r.map_err(|err| named(err, "prompt_matrix"))?;
    }
    let (key, prompt) = match spec.prompt_type {
        PromptType::Positive => ("prompt", &base.prompt),
        PromptType::Negative => ("negative_prompt", &base.negative_prompt),
    };
    let variable = prompt.matches('|').count();
    if variable > MAX_MATRIX_PARTS {
        return Err(SpecError::at(
            SpecErrorKind::InvalidValue,
            e,
            format!("varies `{key}` in {variable} parts, which makes 2^{variable} prompts"),
            format!("at most {MAX_MATRIX_PARTS} `|`-separated variable parts"),
        ));
    }
    Ok(spec)
}
