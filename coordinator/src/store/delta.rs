//! A task's render parameters as a delta against its job's base parameters.
//!
//! Most of a sweep's row is the same prompt and settings; only the swept fields differ from
//! cell to cell. Postgres stores each job's base parameters once (`jobs.base_params`, compact
//! JSON) and each task's parameters as a JSON object of the fields whose value differs from
//! the base, including fields the task has at their default while the base does not. The
//! full parameters are the base with the delta's keys laid over it (a shallow merge, exact
//! here because every field is a scalar or a list replaced whole; see [`full_params`]); a
//! job with
//! no base stores each task's fields that differ from the defaults, which is the compact
//! JSON every reader already parses with `#[serde(default)]`.
//!
//! The delta is written by walking the derived `Serialize` of `RenderParams` field by field
//! (a small `Serializer` that accepts only a struct), so a million rows cost no JSON maps.

use std::cell::RefCell;
use std::fmt;

use sdfarm_proto::RenderParams;
use serde::ser::{self, Impossible, Serialize, SerializeStruct};
use serde_json::{Map, Value};

thread_local! {
    /// The last base parsed: the rows of one listing or claim share their job's base.
    static LAST_BASE: RefCell<Option<(String, Map<String, Value>)>> = const { RefCell::new(None) };
}

/// A task's full parameters from its stored `params`: a delta laid over the job's `base`,
/// or, for jobs without one, the parameters themselves.
pub(super) fn full_params(base: Option<&str>, params: &str) -> serde_json::Result<RenderParams> {
    let Some(base) = base else {
        return serde_json::from_str(params);
    };
    let Value::Object(delta) = serde_json::from_str::<Value>(params)? else {
        return Err(serde::de::Error::custom(
            "a parameter delta must be a JSON object",
        ));
    };
    let mut full = LAST_BASE.with(|last| -> serde_json::Result<Map<String, Value>> {
        let mut last = last.borrow_mut();
        if let Some((text, map)) = last.as_ref() {
            if text == base {
                return Ok(map.clone());
            }
        }
        let Value::Object(map) = serde_json::from_str::<Value>(base)? else {
            return Err(serde::de::Error::custom(
                "base parameters must be a JSON object",
            ));
        };
        *last = Some((base.to_string(), map.clone()));
        Ok(map)
    })?;
    full.extend(delta);
    serde_json::from_value(Value::Object(full))
}

/// The base a job's task deltas are written against: each field's JSON, in the order the
/// derived `Serialize` visits them.
pub(super) struct ParamsBase {
    fields: Vec<(&'static str, Vec<u8>)>,
}

impl ParamsBase {
    pub(super) fn new(base: &RenderParams) -> ParamsBase {
        let mut walk = FieldWalk {
            base: None,
            scratch: Vec::new(),
            fields: Vec::with_capacity(64),
            index: 0,
            out: None,
            wrote: false,
        };
        base.serialize(&mut walk)
            .expect("RenderParams serialises as a struct of JSON values");
        ParamsBase {
            fields: walk.fields,
        }
    }

    /// The base of a job that has none: every task is stored as its difference from the
    /// defaults.
    pub(super) fn defaults() -> ParamsBase {
        ParamsBase::new(&RenderParams::default())
    }

    /// Appends `params` minus this base as a JSON object to `out`.
    pub(super) fn write_delta(&self, params: &RenderParams, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut walk = FieldWalk {
            base: Some(&self.fields),
            scratch: Vec::with_capacity(64),
            fields: Vec::new(),
            index: 0,
            out: Some(out),
            wrote: false,
        };
        params
            .serialize(&mut walk)
            .expect("RenderParams serialises as a struct of JSON values");
        out.push(b'}');
    }

    /// `params` minus this base as JSON text.
    pub(super) fn delta_json(&self, params: &RenderParams) -> String {
        let mut out = Vec::with_capacity(128);
        self.write_delta(params, &mut out);
        String::from_utf8(out).expect("serde_json writes UTF-8")
    }
}

/// Visits the fields of one `RenderParams`: records them (building a base) or writes those
/// that differ from the base as `"name":value` pairs.
struct FieldWalk<'a> {
    base: Option<&'a [(&'static str, Vec<u8>)]>,
    scratch: Vec<u8>,
    fields: Vec<(&'static str, Vec<u8>)>,
    /// The position of the next field in the walk.
    index: usize,
    out: Option<&'a mut Vec<u8>>,
    /// Whether a pair has been written (the next one needs a comma).
    wrote: bool,
}

#[derive(Debug)]
struct NotAStruct(String);

impl fmt::Display for NotAStruct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotAStruct {}

impl ser::Error for NotAStruct {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        NotAStruct(msg.to_string())
    }
}

impl<'w> SerializeStruct for &mut FieldWalk<'w> {
    type Ok = ();
    type Error = NotAStruct;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), NotAStruct> {
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, value).map_err(ser::Error::custom)?;
        let Some(base) = self.base else {
            self.fields.push((key, self.scratch.clone()));
            return Ok(());
        };
        // Fields are visited in one fixed order, so the base's entry is usually at the same
        // position; the search by name only guards that assumption.
        let index = self.index;
        self.index += 1;
        let same = base
            .get(index)
            .filter(|(k, _)| *k == key)
            .or_else(|| base.iter().find(|(k, _)| *k == key))
            .is_some_and(|(_, v)| *v == self.scratch);
        if !same {
            let out = self.out.as_mut().expect("a delta walk has an output");
            if self.wrote {
                out.push(b',');
            }
            self.wrote = true;
            serde_json::to_writer(&mut **out, key).map_err(ser::Error::custom)?;
            out.push(b':');
            out.extend_from_slice(&self.scratch);
        }
        Ok(())
    }

    fn end(self) -> Result<(), NotAStruct> {
        Ok(())
    }
}

fn not_a_struct<T>() -> Result<T, NotAStruct> {
    Err(NotAStruct("RenderParams must serialise as a struct".into()))
}

/// Every `Serializer` method but `serialize_struct` refuses.
macro_rules! refuse {
    ($($name:ident($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $name(self, $(_: $arg),*) -> Result<$ret, NotAStruct> { not_a_struct() })*
    };
}

impl<'a, 'w> ser::Serializer for &'a mut FieldWalk<'w> {
    type Ok = ();
    type Error = NotAStruct;
    type SerializeSeq = Impossible<(), NotAStruct>;
    type SerializeTuple = Impossible<(), NotAStruct>;
    type SerializeTupleStruct = Impossible<(), NotAStruct>;
    type SerializeTupleVariant = Impossible<(), NotAStruct>;
    type SerializeMap = Impossible<(), NotAStruct>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), NotAStruct>;

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, NotAStruct> {
        Ok(self)
    }

    refuse! {
        serialize_bool(bool) -> ();
        serialize_i8(i8) -> ();
        serialize_i16(i16) -> ();
        serialize_i32(i32) -> ();
        serialize_i64(i64) -> ();
        serialize_u8(u8) -> ();
        serialize_u16(u16) -> ();
        serialize_u32(u32) -> ();
        serialize_u64(u64) -> ();
        serialize_f32(f32) -> ();
        serialize_f64(f64) -> ();
        serialize_char(char) -> ();
        serialize_str(&str) -> ();
        serialize_bytes(&[u8]) -> ();
        serialize_none() -> ();
        serialize_unit() -> ();
        serialize_unit_struct(&'static str) -> ();
        serialize_unit_variant(&'static str, u32, &'static str) -> ();
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize)
            -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct_variant(&'static str, u32, &'static str, usize)
            -> Self::SerializeStructVariant;
    }

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<(), NotAStruct> {
        not_a_struct()
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), NotAStruct> {
        not_a_struct()
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), NotAStruct> {
        not_a_struct()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The reader's merge, with the base stored as the job stores it.
    fn merged(base: &RenderParams, delta: &str) -> RenderParams {
        let stored_base = ParamsBase::defaults().delta_json(base);
        full_params(Some(&stored_base), delta).unwrap()
    }

    #[test]
    fn delta_over_base_reads_back_the_task() {
        let base = RenderParams {
            prompt: "a \"lighthouse\"\\ at dusk\n".into(),
            negative_prompt: "blurry".into(),
            seed: 1,
            steps: 20,
            cfg_scale: 7.5,
            model: "builtin:tiny-sd".into(),
            styles: vec!["s1".into(), "s2".into()],
            ..Default::default()
        };
        let tasks = [
            base.clone(),
            RenderParams {
                seed: 7,
                cfg_scale: 3.0,
                ..base.clone()
            },
            // Fields at their defaults where the base has a value must survive the merge.
            RenderParams {
                cfg_scale: 0.0,
                prompt: String::new(),
                styles: Vec::new(),
                ..base.clone()
            },
            RenderParams {
                enable_hr: true,
                hr_scale: 2.0,
                styles: vec!["other".into()],
                ..base.clone()
            },
        ];
        let deltas = ParamsBase::new(&base);
        for task in &tasks {
            let delta = deltas.delta_json(task);
            assert_eq!(&merged(&base, &delta), task, "delta {delta}");
        }
        assert_eq!(deltas.delta_json(&base), "{}");
        let swept = deltas.delta_json(&tasks[1]);
        assert!(!swept.contains("prompt"), "{swept}");
    }

    #[test]
    fn against_the_defaults_it_is_the_compact_json() {
        let p = RenderParams {
            prompt: "p".into(),
            seed: 5,
            ..Default::default()
        };
        let delta = ParamsBase::defaults().delta_json(&p);
        assert_eq!(
            serde_json::from_str::<Value>(&delta).unwrap(),
            serde_json::from_str::<Value>(&crate::store::copy::compact_params_json(&p)).unwrap()
        );
        assert_eq!(serde_json::from_str::<RenderParams>(&delta).unwrap(), p);
    }
}
