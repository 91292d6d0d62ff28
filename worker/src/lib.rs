//! sdfarm's GPU worker: leases tasks from the coordinator, renders them with candle and puts
//! the PNGs into object storage.

pub mod client;
pub mod engine;
pub mod models;
pub mod output;
pub mod render;
pub mod storage;

pub use client::{run, run_with_renderer, WorkerConfig, WorkerError};
