//! A1111's NaN check (`devices.test_for_nans`, the NansException): latents after sampling and
//! decoded pixels must be finite. A broken checkpoint or VAE (NaN or infinite weights, or
//! weights that overflow) otherwise yields a black or noise image that looks like a success.
//!
//! A1111 first retries a half-precision VAE decode in float32; sdfarm's networks always run
//! in float32, so there is no lower precision to retry in and the task fails at once, not
//! retryably: the same weights give the same NaNs on every worker.

use std::path::Path;

use candle_core::{DType, Tensor};

use super::EngineError;

/// Which network produced the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Unet,
    Vae,
}

/// Whether every value of `t` is finite. A sum is NaN or infinite when any term is (the
/// values checked here are far from float32's range, so a sum cannot overflow by itself),
/// and it is one reduction on whatever device the tensor lives on.
pub fn all_finite(t: &Tensor) -> Result<bool, EngineError> {
    let sum = t.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    Ok(sum.is_finite())
}

/// Fails with a reason a person can act on when `t` holds NaN or infinite values.
pub fn check(t: &Tensor, stage: Stage, model: &Path) -> Result<(), EngineError> {
    if all_finite(t)? {
        return Ok(());
    }
    let reason = match stage {
        Stage::Unet => {
            "the UNet produced NaN or infinite values (A1111 calls this a NansException). \
             sdfarm already computes in float32, so the checkpoint's weights are most likely \
             broken (NaN/Inf values, a bad merge or an interrupted conversion): check the file \
             and try another checkpoint, or a lower cfg_scale if the values grow without bound"
        }
        Stage::Vae => {
            "the VAE produced NaN or infinite values while decoding (A1111 calls this a \
             NansException). sdfarm already decodes in float32, so the VAE's weights are most \
             likely broken: try sd_vae = \"None\" to use the checkpoint's own VAE, or another \
             VAE file"
        }
    };
    Err(EngineError::invalid_model(model, reason))
}
