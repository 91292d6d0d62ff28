//! The UniPC pass of [`Pipeline`]: A1111's `CompVisSampler` around `sd_samplers_timesteps_impl.unipc`
//! — the guided noise prediction at fractional model timesteps, v-prediction turned into
//! noise, txt2img from the unscaled noise and img2img from A1111's DDIM-style noised init.

use candle_core::Tensor;

use super::super::sampler::{self, StepFn};
use super::super::unipc::{self, VpSchedule};
use super::super::EngineError;
use super::{Pipeline, Prediction, SampleSettings};

impl Pipeline {
    /// Runs UniPC as A1111 does. txt2img: as many solver steps as A1111's timestep list
    /// `range(0, N, N // steps)` has, from `t = 1` with the noise as it is. img2img
    /// (`partial = (init, t_enc)`): the init is noised to `timesteps[t_enc]`
    /// (`init * sqrt(a) + noise * sqrt(1 - a)`), then `t_enc` steps run from
    /// `t = timesteps[t_enc - 1] / N + 1/N`, as A1111's `is_img2img` start (which it notes
    /// "is likely off by a bit") gives it.
    pub(super) fn run_unipc(
        &self,
        settings: &SampleSettings,
        noise: &Tensor,
        partial: Option<(&Tensor, usize)>,
        guided_eps: &dyn Fn(&Tensor, f64) -> Result<Tensor, EngineError>,
        on_step: &mut StepFn<'_>,
    ) -> Result<Tensor, EngineError> {
        let n = self.schedule.len();
        let timesteps = sampler::a1111_ddim_timesteps(n, settings.steps);
        let ac = self.schedule.alphas_cumprod();
        let (x, steps, t_start) = match partial {
            None => (noise.clone(), timesteps.len(), None),
            Some((init, t_enc)) => {
                let t_enc = t_enc.min(timesteps.len() - 1);
                let a = ac[timesteps[t_enc]];
                let x = (init.affine(a.sqrt() as f64, 0.0)?
                    + noise.affine((1.0 - a).sqrt() as f64, 0.0)?)?;
                if t_enc == 0 {
                    // Nothing to denoise (A1111 fails on the empty timestep list here).
                    return Ok(x);
                }
                let start = timesteps[t_enc - 1] as f32 / n as f32 + 1.0 / n as f32;
                (x, t_enc, Some(start))
            }
        };
        let ns = VpSchedule::from_schedule(&self.schedule);
        let mut eps_model = |x: &Tensor, t_model: f32| -> Result<Tensor, EngineError> {
            let out = guided_eps(x, t_model as f64)?;
            match self.prediction {
                Prediction::Epsilon => Ok(out),
                // A1111's CompVisTimestepsVDenoiser: eps = sqrt(a) * v + sqrt(1 - a) * x,
                // with `a` at the timestep truncated to an integer.
                Prediction::V => {
                    let a = ac[(t_model.max(0.0) as usize).min(n - 1)];
                    Ok((out.affine(a.sqrt() as f64, 0.0)?
                        + x.affine((1.0 - a).sqrt() as f64, 0.0)?)?)
                }
            }
        };
        unipc::sample_unipc(
            &mut eps_model,
            x,
            &ns,
            steps,
            t_start,
            &settings.unipc,
            on_step,
        )
    }
}
