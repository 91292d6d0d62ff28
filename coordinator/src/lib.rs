//! sdfarm's coordinator: parses and expands sweeps, stores jobs and tasks durably, and leases
//! tasks to workers over gRPC.

pub mod expand;
pub mod spec;
pub mod store;
