//! `SpecError`: a mistake in a sweep file, worded for the person who wrote it.

use std::fmt;

use super::source::Entry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecErrorKind {
    /// The text is not valid TOML/JSON, or not a table/object at the top.
    Syntax,
    UnknownKey,
    WrongType,
    InvalidValue,
    MissingKey,
    /// Reserved for a later version, or an A1111 option sdfarm lacks.
    Unsupported,
}

/// A mistake in a sweep file, worded for the person who wrote it. Boxed so the many
/// `Result`s on the parsing path stay one pointer wide; fields are read through `Deref`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct SpecError(Box<SpecErrorDetails>);

#[derive(Debug, Clone, PartialEq)]
pub struct SpecErrorDetails {
    pub kind: SpecErrorKind,
    /// File name shown in the message, when the caller knows it.
    pub file: Option<String>,
    /// 1-based line of the offending key (or of the syntax error).
    pub line: Option<usize>,
    pub key: Option<String>,
    /// The value as written, rendered in TOML/JSON syntax.
    pub value: Option<String>,
    pub problem: String,
    pub accepted: Option<String>,
}

impl std::ops::Deref for SpecError {
    type Target = SpecErrorDetails;

    fn deref(&self) -> &SpecErrorDetails {
        &self.0
    }
}

impl std::ops::DerefMut for SpecError {
    fn deref_mut(&mut self) -> &mut SpecErrorDetails {
        &mut self.0
    }
}

impl SpecError {
    /// Names the file in the message, e.g. `sweep.toml line 4: …`.
    pub fn in_file(mut self, file: impl Into<String>) -> SpecError {
        self.file = Some(file.into());
        self
    }

    pub(super) fn new(kind: SpecErrorKind, problem: impl Into<String>) -> SpecError {
        SpecError(Box::new(SpecErrorDetails {
            kind,
            file: None,
            line: None,
            key: None,
            value: None,
            problem: problem.into(),
            accepted: None,
        }))
    }

    pub(super) fn at(
        kind: SpecErrorKind,
        e: &Entry,
        problem: impl Into<String>,
        accepted: impl Into<String>,
    ) -> SpecError {
        let mut err = SpecError::new(kind, problem);
        err.line = e.line;
        err.key = Some(e.key.clone());
        err.value = Some(e.value.render());
        err.accepted = Some(accepted.into());
        err
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file} line {line}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            (None, Some(line)) => write!(f, "line {line}: ")?,
            (None, None) => {}
        }
        match (&self.key, &self.value) {
            (Some(key), Some(value)) => write!(f, "`{key}` = {value} ")?,
            (Some(key), None) => write!(f, "`{key}` ")?,
            _ => {}
        }
        f.write_str(&self.problem)?;
        if let Some(accepted) = &self.accepted {
            write!(f, " (accepted: {accepted})")?;
        }
        Ok(())
    }
}

pub type Result<T, E = SpecError> = std::result::Result<T, E>;
