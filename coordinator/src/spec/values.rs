//! X/Y/Z axis value text as AUTOMATIC1111 reads it: Python's `csv` module (with
//! `skipinitialspace`), the `1-5`, `1-10 (+2)` and `1-10 [5]` range forms, and the Python
//! and numpy number semantics behind them, quirks included (see `tests/fixtures/a1111`).

use std::sync::LazyLock;

use regex::Regex;

/// `xyz_grid.py`'s range patterns, anchored because A1111 uses `fullmatch`. The float ones
/// keep upstream's unescaped `.`, which matches any character: `1e-3` is read as the range
/// `1e`..`3` and then fails, exactly as in A1111.
static RE_RANGE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*$").unwrap()
});
static RE_RANGE_FLOAT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*$",
    )
    .unwrap()
});
static RE_RANGE_COUNT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*])?\s*$").unwrap()
});
static RE_RANGE_COUNT_FLOAT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\[(\d+(?:.\d*)?)\s*])?\s*$",
    )
    .unwrap()
});

/// Largest list one range may produce; a typo such as `1-100000000` is refused instead of
/// filling memory.
pub const MAX_RANGE_LEN: usize = 1_000_000;

/// `csv_string_to_list_strip`: every field of every CSV row, each stripped. Quoted fields may
/// hold commas; characters after a closing quote are kept (Python's non-strict reader).
pub fn csv_list(text: &str) -> Vec<String> {
    #[derive(PartialEq)]
    enum S {
        StartField,
        InField,
        InQuoted,
        QuoteInQuoted,
    }
    let mut out = Vec::new();
    let mut field = String::new();
    let mut state = S::StartField;
    // A row with no characters (an empty line) yields no fields at all.
    let mut row_has_content = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let newline = c == '\n' || c == '\r';
        match state {
            S::StartField => {
                if c == '"' {
                    state = S::InQuoted;
                    row_has_content = true;
                } else if c == ' ' {
                    row_has_content = true;
                } else if c == ',' {
                    out.push(std::mem::take(&mut field));
                    row_has_content = true;
                } else if newline {
                    if row_has_content {
                        out.push(std::mem::take(&mut field));
                    }
                    row_has_content = false;
                    if c == '\r' && chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                } else {
                    field.push(c);
                    state = S::InField;
                    row_has_content = true;
                }
            }
            S::InField => {
                if c == ',' {
                    out.push(std::mem::take(&mut field));
                    state = S::StartField;
                } else if newline {
                    out.push(std::mem::take(&mut field));
                    state = S::StartField;
                    row_has_content = false;
                    if c == '\r' && chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                } else {
                    field.push(c);
                }
            }
            S::InQuoted => {
                if c == '"' {
                    state = S::QuoteInQuoted;
                } else {
                    field.push(c);
                }
            }
            S::QuoteInQuoted => {
                if c == '"' {
                    field.push('"');
                    state = S::InQuoted;
                } else if c == ',' {
                    out.push(std::mem::take(&mut field));
                    state = S::StartField;
                } else if newline {
                    out.push(std::mem::take(&mut field));
                    state = S::StartField;
                    row_has_content = false;
                } else {
                    field.push(c);
                    state = S::InField;
                }
            }
        }
    }
    if state != S::StartField || row_has_content {
        out.push(field);
    }
    out.into_iter().map(|f| f.trim().to_string()).collect()
}

/// Python's `int(text)`: surrounding whitespace, one sign, digits with single underscores
/// between them.
pub fn py_int(text: &str) -> Option<i64> {
    let t = text.trim();
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let clean = without_underscores(digits)?;
    if clean.is_empty() || !clean.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: i64 = clean.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// Python's `float(text)` for the forms people write: decimals, exponents, `inf`, `nan`.
pub fn py_float(text: &str) -> Option<f64> {
    let t = text.trim();
    let clean = without_underscores(t)?;
    if clean.is_empty() || clean.contains(char::is_whitespace) {
        return None;
    }
    clean.parse().ok()
}

/// Python allows `_` only between two digits.
fn without_underscores(s: &str) -> Option<String> {
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'_' {
            let ok =
                i > 0 && i + 1 < b.len() && b[i - 1].is_ascii_digit() && b[i + 1].is_ascii_digit();
            if !ok {
                return None;
            }
        }
    }
    Some(s.replace('_', ""))
}

/// The message Python gives for a failed `int()`.
fn int_error(text: &str) -> String {
    format!("invalid literal for int() with base 10: '{text}'")
}

fn float_error(text: &str) -> String {
    format!("could not convert string to float: '{text}'")
}

fn parse_int(text: &str) -> Result<i64, String> {
    py_int(text).ok_or_else(|| int_error(text))
}

fn parse_float(text: &str) -> Result<f64, String> {
    py_float(text).ok_or_else(|| float_error(text))
}

fn check_len(len: usize, item: &str) -> Result<(), String> {
    if len > MAX_RANGE_LEN {
        return Err(format!(
            "'{item}' expands to {len} values, more than {MAX_RANGE_LEN}"
        ));
    }
    Ok(())
}

/// `np.linspace(start, stop, num).tolist()`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            v[num - 1] = stop;
            v
        }
    }
}

/// `np.arange(start, stop, step).tolist()` for floats: numpy fills `start + i * delta` with
/// `delta = (start + step) - start`, which is why float ranges may overshoot their end.
pub fn arange(start: f64, stop: f64, step: f64, item: &str) -> Result<Vec<f64>, String> {
    if step == 0.0 {
        return Err(format!("'{item}' has a step of zero"));
    }
    let len = ((stop - start) / step).ceil();
    if len.is_nan() {
        return Err(format!("'{item}' has no computable length"));
    }
    if len <= 0.0 {
        return Ok(Vec::new());
    }
    if len > MAX_RANGE_LEN as f64 {
        check_len(usize::MAX, item)?;
    }
    let len = len as usize;
    let delta = (start + step) - start;
    Ok((0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect())
}

/// An int axis: ranges expand in place, other items must be Python integers. Errors quote
/// the item the way Python's `int()` does.
pub fn int_values(text: &str) -> Result<Vec<i64>, String> {
    let mut out = Vec::new();
    for item in csv_list(text) {
        if let Some(m) = RE_RANGE.captures(&item) {
            let start = parse_int(&m[1])?;
            let end = parse_int(&m[2])?.saturating_add(1);
            let step = m.get(3).map(|s| parse_int(s.as_str())).transpose()?;
            let step = step.unwrap_or(1);
            if step == 0 {
                return Err("range() arg 3 must not be zero".into());
            }
            // Python's range(start, end, step).
            let len = if (step > 0 && start < end) || (step < 0 && start > end) {
                let span = (i128::from(end) - i128::from(start)).unsigned_abs();
                span.div_ceil(i128::from(step).unsigned_abs()) as usize
            } else {
                0
            };
            check_len(len, &item)?;
            out.extend((0..len as i64).map(|i| start + i * step));
        } else if let Some(m) = RE_RANGE_COUNT.captures(&item) {
            let start = parse_int(&m[1])?;
            let end = parse_int(&m[2])?;
            let num = m.get(3).map(|s| parse_int(s.as_str())).transpose()?;
            let num = usize::try_from(num.unwrap_or(1)).unwrap_or(0);
            check_len(num, &item)?;
            // int() truncates toward zero, as Rust's `as` does.
            out.extend(
                linspace(start as f64, end as f64, num)
                    .into_iter()
                    .map(|v| v as i64),
            );
        } else {
            out.push(parse_int(&item)?);
        }
    }
    Ok(out)
}

/// A float axis, with numpy's `arange` for `a-b (+step)` and `linspace` for `a-b [count]`.
pub fn float_values(text: &str) -> Result<Vec<f64>, String> {
    let mut out = Vec::new();
    for item in csv_list(text) {
        if let Some(m) = RE_RANGE_FLOAT.captures(&item) {
            let start = parse_float(&m[1])?;
            let end = parse_float(&m[2])?;
            let step = m.get(3).map(|s| parse_float(s.as_str())).transpose()?;
            let step = step.unwrap_or(1.0);
            out.extend(arange(start, end + step, step, &item)?);
        } else if let Some(m) = RE_RANGE_COUNT_FLOAT.captures(&item) {
            let start = parse_float(&m[1])?;
            let end = parse_float(&m[2])?;
            let num = m.get(3).map(|s| parse_int(s.as_str())).transpose()?;
            let num = usize::try_from(num.unwrap_or(1)).unwrap_or(0);
            check_len(num, &item)?;
            out.extend(linspace(start, end, num));
        } else {
            out.push(parse_float(&item)?);
        }
    }
    Ok(out)
}

/// Python's `round(x, 8)`, which A1111 applies to float labels.
pub fn round8(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.8}").parse().unwrap_or(x)
}

/// Python's `repr(float)`: the shortest text that reads back, `.0` on whole numbers and
/// exponent notation below 1e-4 or from 1e16.
pub fn py_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("exponent is an integer");
    if (-4..16).contains(&exp) {
        let plain = format!("{x}");
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// A1111's label text for a float value: `round(x, 8)` printed by Python.
pub fn float_label(x: f64) -> String {
    py_repr(round8(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting_and_spaces() {
        assert_eq!(csv_list("a, b ,c"), ["a", "b", "c"]);
        assert_eq!(csv_list("\"a, b\", c"), ["a, b", "c"]);
        assert_eq!(
            csv_list("cat, \"dog,wolf\" , bird"),
            ["cat", "dog,wolf", "bird"]
        );
        assert_eq!(csv_list("a,,b,"), ["a", "", "b", ""]);
        assert_eq!(csv_list("say \"\"hi\"\""), ["say \"\"hi\"\""]);
        assert_eq!(csv_list("\"say \"\"hi\"\"\""), ["say \"hi\""]);
        assert_eq!(csv_list("a\nb, c\n\nd"), ["a", "b", "c", "d"]);
        assert!(csv_list("").is_empty());
    }

    #[test]
    fn python_numbers() {
        assert_eq!(py_int(" +3 "), Some(3));
        assert_eq!(py_int("1_000"), Some(1000));
        assert_eq!(py_int("- 5"), None);
        assert_eq!(py_int("1.5"), None);
        assert_eq!(py_int("_1"), None);
        assert_eq!(py_float("1e-3"), Some(0.001));
        assert_eq!(py_float("1e"), None);
        assert_eq!(py_float("- 1"), None);
    }

    #[test]
    fn python_float_repr() {
        for (x, want) in [
            (7.0, "7.0"),
            (0.1, "0.1"),
            (1.0 / 3.0, "0.3333333333333333"),
            (1e-5, "1e-05"),
            (1.5e16, "1.5e+16"),
            (123456.0, "123456.0"),
            (-2.5, "-2.5"),
        ] {
            assert_eq!(py_repr(x), want, "{x}");
        }
        assert_eq!(float_label(0.30000000000000004), "0.3");
        assert_eq!(float_label(2.0 / 3.0), "0.66666667");
    }

    #[test]
    fn float_range_overshoots_like_numpy() {
        assert_eq!(
            float_values("0.1-0.3 (+0.1)").unwrap(),
            [0.1, 0.2, 0.30000000000000004, 0.4]
        );
    }

    #[test]
    fn huge_ranges_are_refused() {
        assert!(int_values("1-100000000")
            .unwrap_err()
            .contains("1-100000000"));
    }
}
