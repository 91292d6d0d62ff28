//! Reading a sweep's text: TOML or JSON reduced to top-level entries that remember the line
//! they were written on, so every later error can point at it.

use super::{Result, SpecError, SpecErrorKind};

/// One top-level key with its value, reduced to the shapes a sweep key can take.
pub(super) struct Entry {
    pub key: String,
    pub value: Raw,
    pub offset: usize,
    pub line: Option<usize>,
}

pub(super) enum Raw {
    Str(String),
    Int(i64),
    /// The source text is kept so messages echo what was written (`7.50`, not `7.5`).
    Float(f64, String),
    Bool(bool),
    /// JSON `null`: the key is treated as absent.
    Null,
    /// A nested table (`[xyz]`, `x = { … }`) or JSON object, its entries in written order.
    Table(Vec<Entry>),
    /// Anything else (tables, arrays, datetimes, out-of-range integers): type name and a
    /// short rendering.
    Other(&'static str, String),
}

impl Raw {
    pub fn render(&self) -> String {
        match self {
            Raw::Str(s) => {
                let shown: String = s.chars().take(60).collect();
                let quoted = serde_json::to_string(&shown).expect("strings serialise");
                if shown.len() < s.len() {
                    format!("{}…\"", &quoted[..quoted.len() - 1])
                } else {
                    quoted
                }
            }
            Raw::Int(i) => i.to_string(),
            Raw::Float(_, text) => text.clone(),
            Raw::Bool(b) => b.to_string(),
            Raw::Table(_) => "{…}".into(),
            Raw::Null => "null".into(),
            Raw::Other(_, shown) => shown.clone(),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Raw::Str(_) => "a string",
            Raw::Int(_) => "an integer",
            Raw::Float(..) => "a float",
            Raw::Bool(_) => "a boolean",
            Raw::Table(_) => "a table",
            Raw::Null => "null",
            Raw::Other(name, _) => name,
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

pub(super) fn toml_entries(text: &str) -> Result<Vec<Entry>> {
    use toml::de::DeTable;
    let table = DeTable::parse(text).map_err(|e| {
        let mut err = SpecError::new(
            SpecErrorKind::Syntax,
            format!("is not valid TOML: {}", e.message().trim_end()),
        );
        err.line = e.span().map(|s| line_of(text, s.start));
        err
    })?;
    Ok(toml_table(text, table.get_ref()))
}

fn toml_table(text: &str, table: &toml::de::DeTable) -> Vec<Entry> {
    use toml::de::DeValue;
    let mut entries = Vec::new();
    for (key, value) in table.iter() {
        let raw = match value.get_ref() {
            DeValue::String(s) => Raw::Str(s.to_string()),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Raw::Int(n),
                Err(_) => Raw::Other("an integer too large", i.to_string()),
            },
            DeValue::Float(f) => {
                let v: f64 = f.as_str().parse().unwrap_or(f64::NAN);
                Raw::Float(v, f.as_str().to_string())
            }
            DeValue::Boolean(b) => Raw::Bool(*b),
            DeValue::Datetime(d) => Raw::Other("a datetime", d.to_string()),
            DeValue::Array(_) => Raw::Other("an array", "[…]".into()),
            DeValue::Table(t) => {
                let mut inner = toml_table(text, t);
                inner.sort_by_key(|e| e.offset);
                Raw::Table(inner)
            }
        };
        let offset = key.span().start;
        entries.push(Entry {
            key: key.get_ref().to_string(),
            value: raw,
            offset,
            line: Some(line_of(text, offset)),
        });
    }
    entries
}

pub(super) fn json_entries(text: &str) -> Result<Vec<Entry>> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        let mut err = SpecError::new(SpecErrorKind::Syntax, format!("is not valid JSON: {e}"));
        err.line = Some(e.line()).filter(|&l| l > 0);
        err
    })?;
    let serde_json::Value::Object(map) = value else {
        return Err(SpecError::new(
            SpecErrorKind::Syntax,
            "is not a JSON object (a sweep is an object of A1111 txt2img fields)",
        ));
    };
    let offsets = json_key_offsets(text);
    let mut entries = Vec::new();
    for (key, value) in map {
        let offset = offsets
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, o)| *o);
        let line = offset.map(|o| line_of(text, o));
        entries.push(Entry {
            line,
            offset: offset.unwrap_or(usize::MAX),
            value: json_raw(&value, line),
            key,
        });
    }
    Ok(entries)
}

/// Positions are only tracked for top-level keys; nested entries report their parent's line.
fn json_raw(value: &serde_json::Value, line: Option<usize>) -> Raw {
    use serde_json::Value as J;
    match value {
        // A1111 API payloads spell "use the default" as null.
        J::Null => Raw::Null,
        J::String(s) => Raw::Str(s.clone()),
        J::Number(n) => match n.as_i64() {
            Some(i) => Raw::Int(i),
            None if n.is_u64() => Raw::Other("an integer too large", n.to_string()),
            None => Raw::Float(n.as_f64().unwrap_or(f64::NAN), n.to_string()),
        },
        J::Bool(b) => Raw::Bool(*b),
        J::Array(_) => Raw::Other("an array", "[…]".into()),
        J::Object(map) => Raw::Table(
            map.iter()
                .enumerate()
                .map(|(i, (k, v))| Entry {
                    key: k.clone(),
                    value: json_raw(v, line),
                    offset: i,
                    line,
                })
                .collect(),
        ),
    }
}

/// Byte offsets of the top-level object's keys. serde_json keeps no positions, so the
/// (already validated) text is scanned once for strings in key position at depth 1.
fn json_key_offsets(text: &str) -> Vec<(String, usize)> {
    let bytes = text.as_bytes();
    let (mut depth, mut expect_key, mut i) = (0usize, false, 0usize);
    let mut out = Vec::new();
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if depth == 1 && expect_key {
                    if let Ok(key) =
                        serde_json::from_str::<String>(&text[start..=i.min(text.len() - 1)])
                    {
                        out.push((key, start));
                    }
                    expect_key = false;
                }
            }
            b'{' | b'[' => {
                depth += 1;
                expect_key = depth == 1 && bytes[i] == b'{';
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expect_key = true,
            _ => {}
        }
        i += 1;
    }
    out
}
