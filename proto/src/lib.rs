//! sdfarm's wire protocol: generated gRPC types for `sdfarm.v1`, plus the protocol version
//! both sides check when a worker registers and heartbeats, the bearer-token helper
//! clients attach to their calls, and the TLS-aware endpoint they connect with.

/// Bumped when a change to `sdfarm.v1` needs coordinator and worker to agree.
/// A worker with another version is refused with `FAILED_PRECONDITION`.
pub const PROTOCOL_VERSION: u32 = 1;

pub mod v1 {
    tonic::include_proto!("sdfarm.v1");
}

pub mod auth;
pub mod tls;

pub use v1::RenderParams;
