//! Hires-fix and img2img arithmetic as A1111 1.10 does it (`processing.py`,
//! `sd_samplers_common.setup_img2img_steps`): the upscale target and latent crop of the second
//! pass, and which part of the sigma schedule a partial denoise runs.

use super::EngineError;

/// Sizes of a hires-fix second pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HiresPlan {
    /// `(hr_upscale_to_x, hr_upscale_to_y)`: the size the first pass is upscaled to.
    pub upscale_to: (u32, u32),
    /// `(truncate_x, truncate_y)` in latent pixels, cropped to reach an exact "Hires resize".
    pub truncate: (u32, u32),
    /// Latent `(width, height)` right after upscaling.
    pub latent_before_crop: (u32, u32),
    /// Latent crop `[row_start, row_end, col_start, col_end]`.
    pub crop_rows_cols: [u32; 4],
    /// Latent and pixel `(width, height)` of the second pass.
    pub final_latent: (u32, u32),
    pub final_pixels: (u32, u32),
    /// The infotext field A1111 adds: `("Hires upscale", "2")` or `("Hires resize", "WxH")`.
    pub infotext: (&'static str, String),
}

impl HiresPlan {
    /// `opt_f` is the VAE's downscale factor (8 for SD). `hr_resize_*` of 0 means "not set";
    /// with both 0, `hr_scale` applies.
    pub fn new(
        width: u32,
        height: u32,
        hr_scale: f32,
        hr_resize_x: u32,
        hr_resize_y: u32,
        opt_f: u32,
    ) -> Result<Self, EngineError> {
        if width == 0 || height == 0 || opt_f == 0 {
            return Err(EngineError::param("width", width, "a positive size"));
        }
        let (w, h) = (width as u64, height as u64);
        let (to_x, to_y): (u64, u64);
        let mut trunc = (0u64, 0u64);
        let infotext;
        if hr_resize_x == 0 && hr_resize_y == 0 {
            if !(hr_scale.is_finite() && hr_scale > 0.0) {
                return Err(EngineError::param(
                    "hr_scale",
                    hr_scale,
                    "a positive number",
                ));
            }
            // A1111 multiplies in float64 (Python floats) and truncates.
            to_x = (w as f64 * hr_scale as f64) as u64;
            to_y = (h as f64 * hr_scale as f64) as u64;
            infotext = ("Hires upscale", format_float(hr_scale));
        } else {
            let (rx, ry) = (hr_resize_x as u64, hr_resize_y as u64);
            infotext = ("Hires resize", format!("{hr_resize_x}x{hr_resize_y}"));
            if ry == 0 {
                (to_x, to_y) = (rx, rx * h / w);
            } else if rx == 0 {
                (to_x, to_y) = (ry * w / h, ry);
            } else {
                let src_ratio = w as f64 / h as f64;
                let dst_ratio = rx as f64 / ry as f64;
                if src_ratio < dst_ratio {
                    (to_x, to_y) = (rx, rx * h / w);
                } else {
                    (to_x, to_y) = (ry * w / h, ry);
                }
                trunc = ((to_x - rx) / opt_f as u64, (to_y - ry) / opt_f as u64);
            }
        }
        let f = opt_f as u64;
        let (lw, lh) = (to_x / f, to_y / f);
        let rows = [trunc.1 / 2, lh - (trunc.1 + 1) / 2];
        let cols = [trunc.0 / 2, lw - (trunc.0 + 1) / 2];
        let final_latent = (cols[1] - cols[0], rows[1] - rows[0]);
        Ok(HiresPlan {
            upscale_to: (to_x as u32, to_y as u32),
            truncate: (trunc.0 as u32, trunc.1 as u32),
            latent_before_crop: (lw as u32, lh as u32),
            crop_rows_cols: [
                rows[0] as u32,
                rows[1] as u32,
                cols[0] as u32,
                cols[1] as u32,
            ],
            final_latent: (final_latent.0 as u32, final_latent.1 as u32),
            final_pixels: ((final_latent.0 * f) as u32, (final_latent.1 * f) as u32),
            infotext,
        })
    }
}

/// Python's `str(float)` for the values people type (2.0 → "2.0", 1.33 → "1.33").
fn format_float(v: f32) -> String {
    let s = format!("{}", v as f64 as f32);
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

/// `setup_img2img_steps`: `(schedule_len, t_enc)`. With an explicit step count (the hires
/// pass, or A1111's `img2img_fix_steps`) the schedule is stretched so that exactly
/// `requested` steps run; otherwise `strength * steps` of the `steps`-long schedule run.
pub fn img2img_steps(requested: usize, strength: f32, fixed: bool) -> (usize, usize) {
    let capped = strength.min(0.999) as f64;
    if fixed {
        let steps = if strength > 0.0 {
            (requested as f64 / capped) as usize
        } else {
            0
        };
        (steps, requested.saturating_sub(1))
    } else {
        (requested, (capped * requested as f64) as usize)
    }
}

/// Index of the first sigma a partial denoise uses: `sigmas[steps - t_enc - 1:]`.
pub fn first_sigma_index(schedule_len: usize, t_enc: usize) -> usize {
    schedule_len.saturating_sub(t_enc + 1)
}
