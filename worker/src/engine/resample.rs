//! Resizing for img2img and the hires fix: A1111's latent upscale modes (torch
//! `interpolate` with and without antialiasing), its Lanczos pixel upscaler, and the pixel
//! conversions around a VAE encode.

use candle_core::{DType, Device, IndexOp, Tensor};
use image::{imageops::FilterType, RgbImage};

use super::EngineError;

/// torch `interpolate` modes A1111 offers for latents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    Bilinear,
    Bicubic,
    Nearest,
    NearestExact,
}

/// One of A1111's `latent_upscale_modes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentMode {
    pub mode: Interpolation,
    pub antialias: bool,
}

/// A hires-fix upscaler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upscaler {
    /// Interpolate the first pass's latents.
    Latent(LatentMode),
    /// Decode, upscale the pixels (A1111's "Lanczos" upscaler, or "None": one Lanczos
    /// resize), encode again.
    Pixels { chained: bool },
}

const fn latent(mode: Interpolation, antialias: bool) -> Upscaler {
    Upscaler::Latent(LatentMode { mode, antialias })
}

/// A1111's names, in its order (`shared.latent_upscale_modes`, then the pixel upscalers
/// sdfarm has).
pub const UPSCALERS: &[(&str, Upscaler)] = &[
    ("Latent", latent(Interpolation::Bilinear, false)),
    (
        "Latent (antialiased)",
        latent(Interpolation::Bilinear, true),
    ),
    ("Latent (bicubic)", latent(Interpolation::Bicubic, false)),
    (
        "Latent (bicubic antialiased)",
        latent(Interpolation::Bicubic, true),
    ),
    ("Latent (nearest)", latent(Interpolation::Nearest, false)),
    (
        "Latent (nearest-exact)",
        latent(Interpolation::NearestExact, false),
    ),
    ("Lanczos", Upscaler::Pixels { chained: true }),
    ("None", Upscaler::Pixels { chained: false }),
];

impl Upscaler {
    /// An A1111 upscaler name; empty means A1111's default, "Latent".
    pub fn from_name(name: &str) -> Result<Self, EngineError> {
        let name = if name.is_empty() { "Latent" } else { name };
        UPSCALERS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, u)| *u)
            .ok_or_else(|| {
                let names: Vec<&str> = UPSCALERS.iter().map(|(n, _)| *n).collect();
                EngineError::param("hr_upscaler", name, names.join(", "))
            })
    }
}

/// Source taps and weights of every output position along one axis.
type Taps = Vec<Vec<(usize, f32)>>;

/// torch's weights for resizing one axis from `input` to `output` samples
/// (`align_corners=False`, size given, so `scale = input / output`).
fn axis_taps(input: usize, output: usize, mode: LatentMode) -> Taps {
    let scale = input as f32 / output as f32;
    let last = input - 1;
    (0..output)
        .map(|i| match (mode.mode, mode.antialias) {
            (Interpolation::Nearest, _) => {
                vec![(((i as f32 * scale).floor() as usize).min(last), 1.0)]
            }
            (Interpolation::NearestExact, _) => {
                vec![((((i as f32 + 0.5) * scale).floor() as usize).min(last), 1.0)]
            }
            (Interpolation::Bilinear, false) => {
                let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(last);
                let lambda = (src - i0 as f32).clamp(0.0, 1.0);
                let i1 = if i0 < last { i0 + 1 } else { i0 };
                vec![(i0, 1.0 - lambda), (i1, lambda)]
            }
            (Interpolation::Bicubic, false) => {
                const A: f32 = -0.75;
                let src = scale * (i as f32 + 0.5) - 0.5;
                let floor = src.floor();
                let t = src - floor;
                let conv1 = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
                let conv2 = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
                let weights = [conv2(t + 1.0), conv1(t), conv1(1.0 - t), conv2(2.0 - t)];
                (0..4)
                    .map(|k| {
                        let at = (floor as i64 - 1 + k as i64).clamp(0, last as i64) as usize;
                        (at, weights[k])
                    })
                    .collect()
            }
            (interp, true) => aa_taps(input, i, scale, interp),
        })
        .collect()
}

/// torch's antialiased kernels (`_upsample_bilinear2d_aa`, `_upsample_bicubic2d_aa`): a
/// triangle or Keys cubic (a = -0.5) stretched by the scale when shrinking, normalised over
/// the taps inside the image.
fn aa_taps(input: usize, i: usize, scale: f32, interp: Interpolation) -> Vec<(usize, f32)> {
    let (interp_size, filter): (f32, fn(f32) -> f32) = match interp {
        Interpolation::Bicubic => (4.0, |x| {
            const A: f32 = -0.5;
            let x = x.abs();
            if x < 1.0 {
                ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
            } else if x < 2.0 {
                (((x - 5.0) * x + 8.0) * x - 4.0) * A
            } else {
                0.0
            }
        }),
        _ => (2.0, |x| {
            let x = x.abs();
            if x < 1.0 {
                1.0 - x
            } else {
                0.0
            }
        }),
    };
    let support = if scale >= 1.0 {
        interp_size * 0.5 * scale
    } else {
        interp_size * 0.5
    };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let center = scale * (i as f32 + 0.5);
    let xmin = ((center - support + 0.5) as i64).max(0) as usize;
    let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
    let mut taps: Vec<(usize, f32)> = (xmin..xmax)
        .map(|j| (j, filter((j as f32 - center + 0.5) * invscale)))
        .collect();
    let total: f32 = taps.iter().map(|(_, w)| w).sum();
    if total != 0.0 {
        taps.iter_mut().for_each(|(_, w)| *w /= total);
    }
    taps
}

/// `torch.nn.functional.interpolate(x, size=(height, width), mode, antialias)` for a
/// `[1, C, H, W]` latent, computed separably on the CPU (latents are small).
pub fn interpolate(
    x: &Tensor,
    height: usize,
    width: usize,
    mode: LatentMode,
) -> Result<Tensor, EngineError> {
    let (batch, channels, in_h, in_w) = x.dims4()?;
    if batch != 1 {
        return Err(EngineError::param("latent batch", batch, "1"));
    }
    let data = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let cols = axis_taps(in_w, width, mode);
    let rows = axis_taps(in_h, height, mode);
    let mut out: Vec<f32> = Vec::with_capacity(channels * height * width);
    let mut tmp = vec![0f32; in_h * width];
    for c in 0..channels {
        let plane = &data[c * in_h * in_w..(c + 1) * in_h * in_w];
        for y in 0..in_h {
            for (xo, taps) in cols.iter().enumerate() {
                tmp[y * width + xo] = taps.iter().map(|&(j, w)| plane[y * in_w + j] * w).sum();
            }
        }
        for taps in &rows {
            for xo in 0..width {
                out.push(taps.iter().map(|&(j, w)| tmp[j * width + xo] * w).sum());
            }
        }
    }
    Ok(Tensor::from_vec(
        out,
        (1, channels, height, width),
        x.device(),
    )?)
}

/// A1111's `resize_image(0, image, width, height, upscaler_name)` for the hires fix. The
/// "Lanczos" upscaler first scales by `max(width / w, height / h)` (truncated to whole
/// pixels), then to that size floored to a multiple of 8, then to the target; each step is
/// a Lanczos resize and is skipped when the size already matches.
pub fn upscale_pixels(image: &RgbImage, width: u32, height: u32, chained: bool) -> RgbImage {
    let resize = |im: &RgbImage, w: u32, h: u32| -> RgbImage {
        if im.width() == w && im.height() == h {
            im.clone()
        } else {
            image::imageops::resize(im, w, h, FilterType::Lanczos3)
        }
    };
    let mut im = image.clone();
    let scale = (width as f64 / im.width() as f64).max(height as f64 / im.height() as f64);
    if chained && scale > 1.0 {
        let dest_w = ((im.width() as f64 * scale) / 8.0).floor() as u32 * 8;
        let dest_h = ((im.height() as f64 * scale) / 8.0).floor() as u32 * 8;
        // A1111's `Upscaler.upscale` loop: at most three passes until the destination is
        // reached; Lanczos reaches it in one.
        for _ in 0..3 {
            if im.width() >= dest_w && im.height() >= dest_h {
                break;
            }
            let before = (im.width(), im.height());
            let w = (im.width() as f64 * scale) as u32;
            let h = (im.height() as f64 * scale) as u32;
            im = resize(&im, w, h);
            if before == (im.width(), im.height()) {
                break;
            }
        }
        im = resize(&im, dest_w, dest_h);
    }
    resize(&im, width, height)
}

/// A decoded `[1, 3, H, W]` image in [-1, 1] as A1111 hands it to an upscaler:
/// `(255 * clamp((x + 1) / 2, 0, 1)).astype(uint8)`, which truncates.
pub fn decoded_to_image(decoded: &Tensor) -> Result<RgbImage, EngineError> {
    let (_, _, height, width) = decoded.dims4()?;
    let hwc = decoded
        .i(0)?
        .permute((1, 2, 0))?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let bytes = hwc
        .into_iter()
        .map(|x| (((x + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8)
        .collect();
    Ok(RgbImage::from_raw(width as u32, height as u32, bytes).expect("3 bytes per pixel"))
}

/// An image as the VAE encoder takes it: `[1, 3, H, W]`, `x / 255 * 2 - 1` in f32.
pub fn image_to_tensor(image: &RgbImage, device: &Device) -> Result<Tensor, EngineError> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let values: Vec<f32> = image
        .as_raw()
        .iter()
        .map(|&v| v as f32 / 255.0 * 2.0 - 1.0)
        .collect();
    let hwc = Tensor::from_vec(values, (h, w, 3), device)?;
    Ok(hwc.permute((2, 0, 1))?.contiguous()?.unsqueeze(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(input: &[f32], out: usize, mode: LatentMode) -> Vec<f32> {
        let x = Tensor::from_slice(input, (1, 1, 1, input.len()), &Device::Cpu).unwrap();
        interpolate(&x, 1, out, mode)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn mode(mode: Interpolation, antialias: bool) -> LatentMode {
        LatentMode { mode, antialias }
    }

    // Expected values from torch.nn.functional.interpolate on [0, 1, 4] -> 6.
    #[test]
    fn matches_torch_interpolate() {
        let x = [0.0, 1.0, 4.0];
        let close = |a: &[f32], b: &[f32]| {
            a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-5) || panic!("{a:?} vs {b:?}")
        };
        close(
            &up(&x, 6, mode(Interpolation::Bilinear, false)),
            &[0.0, 0.25, 0.75, 1.75, 3.25, 4.0],
        );
        close(
            &up(&x, 6, mode(Interpolation::Nearest, false)),
            &[0.0, 0.0, 1.0, 1.0, 4.0, 4.0],
        );
        // Keys cubic with a = -0.75 and clamped taps: overshoot at the border.
        close(
            &up(&x, 6, mode(Interpolation::Bicubic, false))[..2],
            &[-0.10546875, 0.12109375],
        );
        // Upscaling with the antialiased triangle equals plain bilinear.
        close(
            &up(&x, 6, mode(Interpolation::Bilinear, true)),
            &[0.0, 0.25, 0.75, 1.75, 3.25, 4.0],
        );
    }

    #[test]
    fn pixels_truncate_as_a1111_does() {
        // 0.998 -> 254.745 truncates to 254 (diffusers rounds to 255); out of range clamps.
        let x = Tensor::from_slice(&[0.998f32, -1.0, 1.5], (1, 3, 1, 1), &Device::Cpu).unwrap();
        let image = decoded_to_image(&x).unwrap();
        assert_eq!(image.as_raw(), &[254, 0, 255]);
    }

    #[test]
    fn upscaler_names_are_a1111s() {
        assert_eq!(
            Upscaler::from_name("").unwrap(),
            Upscaler::from_name("Latent").unwrap()
        );
        let err = Upscaler::from_name("ESRGAN_4x").unwrap_err().to_string();
        assert!(err.contains("hr_upscaler") && err.contains("Latent (nearest-exact)"));
    }
}
