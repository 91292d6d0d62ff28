//! Diffusion engine: prompt encoding, torch-compatible noise, samplers and the txt2img pipeline.

mod error;
pub mod torch_rng;

pub use error::EngineError;
