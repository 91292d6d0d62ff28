//! The coordinator's error type and its one mapping onto gRPC status codes.

use crate::spec::SpecError;
use crate::store::StoreError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("worker speaks protocol version {got}, this coordinator speaks {want}: upgrade the older side")]
    ProtocolMismatch { got: u32, want: u32 },
    #[error("unknown worker id {0:?}: register first")]
    UnknownWorker(String),
    #[error("sweep expands to {count} images, more than this coordinator's limit of {limit} (--max-images)")]
    TooManyImages { count: u64, limit: u64 },
    #[error("sweep expands to {count} cells, more than this coordinator's limit of {limit} (--max-cells)")]
    TooManyCells { count: u64, limit: u64 },
    #[error("grids: {0}")]
    Grid(#[from] crate::grid::GridError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    PermissionDenied(String),
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> tonic::Status {
        use tonic::Code;
        let code = match &err {
            Error::Spec(_)
            | Error::TooManyImages { .. }
            | Error::TooManyCells { .. }
            | Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::ProtocolMismatch { .. } => Code::FailedPrecondition,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Grid(_) => Code::Unavailable,
            Error::UnknownWorker(_) => Code::Unauthenticated,
            Error::Store(StoreError::JobNotFound(_)) => Code::NotFound,
            // The worker lost its lease: its result is not accepted, and it must not retry.
            Error::Store(StoreError::LeaseLost { .. }) => Code::Aborted,
            Error::Store(StoreError::UnsupportedUrl(_)) => Code::InvalidArgument,
            Error::Store(StoreError::Corrupt { .. }) => Code::DataLoss,
            Error::Store(StoreError::Db(_) | StoreError::Migrate(_)) => Code::Unavailable,
        };
        tonic::Status::new(code, err.to_string())
    }
}
