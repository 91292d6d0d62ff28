//! The engine's error type, shared with model resolution.
//!
//! The split that matters to callers is [`EngineError::retryable`]: the coordinator re-queues a
//! task only when another attempt could plausibly succeed. Bad parameters, unknown samplers,
//! missing or corrupt models fail the same way every time, so they are final.

use std::path::PathBuf;

/// Everything that can stop a render or a model resolution.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A render parameter is out of range or malformed.
    #[error("invalid render parameter {field} = {value}: {expected}")]
    InvalidParam {
        field: &'static str,
        value: String,
        expected: String,
    },

    /// A feature that is recognised but not implemented yet (e.g. a schedule type).
    #[error("{what} is not supported yet: {hint}")]
    Unsupported { what: String, hint: String },

    /// The model reference does not name anything usable.
    #[error("model {reference:?} not found: {reason}")]
    ModelNotFound { reference: String, reason: String },

    /// The model files exist but cannot be used (bad JSON, wrong tensor shapes, pickle files...).
    #[error("model at {path}: {reason}")]
    InvalidModel { path: PathBuf, reason: String },

    /// Reading or writing files failed; usually transient (disk full, NFS hiccup).
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A tensor operation failed inside candle.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),

    /// The prompt could not be tokenized.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The `on_step` callback asked to stop.
    #[error("render cancelled")]
    Cancelled,
}

impl EngineError {
    /// Whether running the same task again (possibly on another worker) may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            EngineError::Io { .. } => true,
            // Allocation failures and similar backend trouble are worth another try on a
            // different worker; shape errors would repeat, but candle does not tell them
            // apart reliably, and the task's attempt limit bounds the cost.
            EngineError::Candle(_) => true,
            EngineError::InvalidParam { .. }
            | EngineError::Unsupported { .. }
            | EngineError::ModelNotFound { .. }
            | EngineError::InvalidModel { .. }
            | EngineError::Tokenizer(_)
            | EngineError::Cancelled => false,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid_model(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        EngineError::InvalidModel {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn param(
        field: &'static str,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        EngineError::InvalidParam {
            field,
            value: value.to_string(),
            expected: expected.into(),
        }
    }
}
