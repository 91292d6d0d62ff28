//! Diffusion engine: prompt encoding, torch-compatible noise, samplers and the txt2img pipeline.
