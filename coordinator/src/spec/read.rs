//! Typed readers for sweep entries: each checks one value and names the key, the value and
//! what would be accepted when it is wrong.

use std::ops::RangeInclusive;

use super::source::{Entry, Raw};
use super::*;

pub(super) fn range_text(r: &RangeInclusive<i64>) -> String {
    format!("integers from {} to {}", r.start(), r.end())
}

pub(super) fn wrong_type(e: &Entry, expected: &str, accepted: String) -> SpecError {
    SpecError::at(
        SpecErrorKind::WrongType,
        e,
        format!("is {}, expected {expected}", e.value.type_name()),
        accepted,
    )
}

pub(super) fn string(e: &Entry, accepted: &str) -> Result<String> {
    match &e.value {
        Raw::Str(s) => Ok(s.clone()),
        _ => Err(wrong_type(e, "a string", accepted.into())),
    }
}

pub(super) fn int_in(e: &Entry, range: RangeInclusive<i64>) -> Result<i64> {
    let accepted = range_text(&range);
    match &e.value {
        Raw::Int(i) if range.contains(i) => Ok(*i),
        Raw::Int(_) => Err(SpecError::at(
            SpecErrorKind::InvalidValue,
            e,
            "is out of range",
            accepted,
        )),
        _ => Err(wrong_type(e, "an integer", accepted)),
    }
}

pub(super) fn float_in(e: &Entry, range: RangeInclusive<f64>, accepted: &str) -> Result<f64> {
    let v = match &e.value {
        Raw::Int(i) => *i as f64,
        Raw::Float(f, _) => *f,
        _ => return Err(wrong_type(e, "a number", accepted.into())),
    };
    if !v.is_finite() {
        return Err(SpecError::at(
            SpecErrorKind::InvalidValue,
            e,
            "is not a finite number",
            accepted,
        ));
    }
    if !range.contains(&v) {
        return Err(SpecError::at(
            SpecErrorKind::InvalidValue,
            e,
            "is out of range",
            accepted,
        ));
    }
    Ok(v)
}

pub(super) fn side(e: &Entry) -> Result<u32> {
    let accepted = format!(
        "multiples of {SIDE_MULTIPLE} from {} to {}",
        SIDE_RANGE.start(),
        SIDE_RANGE.end()
    );
    let Raw::Int(v) = e.value else {
        return Err(wrong_type(e, "an integer", accepted));
    };
    let fits = u32::try_from(v).is_ok_and(|v| SIDE_RANGE.contains(&v));
    if !fits {
        return Err(SpecError::at(
            SpecErrorKind::InvalidValue,
            e,
            "is out of range",
            accepted,
        ));
    }
    if v % i64::from(SIDE_MULTIPLE) != 0 {
        let problem = format!("is not a multiple of {SIDE_MULTIPLE}");
        return Err(SpecError::at(
            SpecErrorKind::InvalidValue,
            e,
            problem,
            accepted,
        ));
    }
    Ok(v as u32)
}

const SEED_ACCEPTED: &str = "-1 for a random seed, or an integer from 0 to 9223372036854775807";

pub(super) fn seed(e: &Entry) -> Result<i64> {
    match e.value {
        Raw::Int(v) if v >= -1 => Ok(v),
        Raw::Int(_) => Err(SpecError::at(
            SpecErrorKind::InvalidValue,
            e,
            "is out of range",
            SEED_ACCEPTED,
        )),
        _ => Err(wrong_type(e, "an integer", SEED_ACCEPTED.into())),
    }
}

pub(super) fn boolean(e: &Entry) -> Result<bool> {
    match e.value {
        Raw::Bool(b) => Ok(b),
        _ => Err(wrong_type(e, "a boolean", "true or false".into())),
    }
}

const SEED_RESIZE_ACCEPTED: &str = "0 or -1 for off (A1111's values), or 8 to 8192 pixels";

/// `seed_resize_from_w` / `_h`: A1111's off values (0 and -1) read as 0; a size must cover at
/// least one latent pixel (8 pixels), since the noise is drawn at that size / 8.
pub(super) fn seed_resize_side(e: &Entry) -> Result<u32> {
    let v = match e.value {
        Raw::Int(v) if (-1..=8192).contains(&v) => v,
        Raw::Int(_) => {
            let problem = "is out of range";
            return Err(SpecError::at(
                SpecErrorKind::InvalidValue,
                e,
                problem,
                SEED_RESIZE_ACCEPTED,
            ));
        }
        _ => return Err(wrong_type(e, "an integer", SEED_RESIZE_ACCEPTED.into())),
    };
    if (1..8).contains(&v) {
        let problem = "is smaller than one latent pixel (8 pixels)";
        return Err(SpecError::at(
            SpecErrorKind::InvalidValue,
            e,
            problem,
            SEED_RESIZE_ACCEPTED,
        ));
    }
    Ok(v.max(0) as u32)
}

/// "Seed resize from" needs both sides: A1111 silently ignores one alone, which is never
/// what was meant.
pub(super) fn seed_resize_pair<'a>(
    p: &RenderParams,
    find: &dyn Fn(&str) -> Option<&'a Entry>,
) -> Result<()> {
    let (w, h) = (p.seed_resize_from_w, p.seed_resize_from_h);
    let (set, unset) = match (w > 0, h > 0) {
        (true, false) => ("seed_resize_from_w", "seed_resize_from_h"),
        (false, true) => ("seed_resize_from_h", "seed_resize_from_w"),
        _ => return Ok(()),
    };
    let e = find(set).expect("a side above 0 was written");
    Err(SpecError::at(
        SpecErrorKind::InvalidValue,
        e,
        format!("is set but {unset} is not: \"Seed resize from\" needs both sides"),
        format!("{unset} as well (8 to 8192 pixels), or neither"),
    ))
}
