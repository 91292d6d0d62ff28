//! img2img input images: read from a local path, an object-store URL (`s3://bucket/a.png`,
//! `gs://…`, `file:///dir/a.png`) or a key in the worker's input store (`SDFARM_INPUT_STORE`),
//! decoded from PNG and flattened onto white as A1111 does with `img2img_background_color`'s
//! default.

use std::path::Path;

use image::RgbImage;

use super::EngineError;
use crate::storage::OutputStore;

fn bad(reference: &str, why: impl std::fmt::Display) -> EngineError {
    EngineError::param(
        "init_image",
        format!("{reference:?}"),
        format!(
            "a readable PNG at a local path, an object-store URL (s3://, gs://, az://, file://) \
             or a key in the worker's input store ({why})"
        ),
    )
}

/// Blocks on an object-store read on a thread of its own, so it works both inside and
/// outside a tokio runtime.
fn fetch(store: &OutputStore, key: &str) -> Result<Vec<u8>, String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime.block_on(store.get(key)).map_err(|e| e.to_string())
            })
            .join()
            .unwrap_or_else(|_| Err("the object-store read panicked".into()))
    })
}

/// The bytes `reference` names.
fn read(reference: &str, store: Option<&OutputStore>) -> Result<Vec<u8>, EngineError> {
    if let Some((_, rest)) = reference.split_once("://") {
        let (dir, key) = match rest.rsplit_once('/') {
            Some((_, key)) if !key.is_empty() => {
                (&reference[..reference.len() - key.len() - 1], key)
            }
            _ => return Err(bad(reference, "the URL names no object")),
        };
        let store = OutputStore::open(dir).map_err(|e| bad(reference, e))?;
        return fetch(&store, key).map_err(|e| bad(reference, e));
    }
    let path = Path::new(reference);
    if path.is_file() {
        return std::fs::read(path).map_err(|e| bad(reference, e));
    }
    match store {
        Some(store) => fetch(store, reference).map_err(|e| bad(reference, e)),
        None => Err(bad(
            reference,
            "no such file, and this worker has no input store (SDFARM_INPUT_STORE)",
        )),
    }
}

/// Loads and decodes an init image.
pub fn load(reference: &str, store: Option<&OutputStore>) -> Result<RgbImage, EngineError> {
    let bytes = read(reference, store)?;
    let decoded = image::load_from_memory(&bytes).map_err(|e| bad(reference, e))?;
    let rgba = decoded.to_rgba8();
    let (w, h) = rgba.dimensions();
    let mut rgb = RgbImage::new(w, h);
    for (out, px) in rgb.pixels_mut().zip(rgba.pixels()) {
        let a = px[3] as u32;
        for c in 0..3 {
            out[c] = ((px[c] as u32 * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    Ok(rgb)
}
