//! PNG files with the infotext in a `parameters` text chunk, where A1111 (through PIL)
//! puts it and where "PNG Info" and other tools look.
//!
//! Encoding is deterministic: fixed compression and filter choices and no time chunk, so the
//! same pixels and text always give the same bytes (and the same SHA-256).

use std::io::Cursor;

use ::png::{BitDepth, ColorType, Compression, Decoder, Encoder, FilterType};

use super::{OutputError, Result};

/// The text chunk keyword A1111 writes and reads.
pub const PARAMETERS_KEY: &str = "parameters";

/// Encodes 8-bit RGB pixels (row-major, no padding) with `parameters` as text. Like PIL's
/// `PngInfo.add_text`, the text goes in `tEXt` when it is all Latin-1 and in an uncompressed
/// `iTXt` (UTF-8) otherwise.
pub fn encode_png(rgb: &[u8], width: u32, height: u32, parameters: &str) -> Result<Vec<u8>> {
    let expected = u64::from(width) * u64::from(height) * 3;
    if width == 0 || height == 0 || rgb.len() as u64 != expected {
        return Err(OutputError::BufferSize {
            width,
            height,
            len: rgb.len(),
            expected,
        });
    }
    let mut out = Vec::with_capacity(rgb.len() / 2 + parameters.len() + 1024);
    {
        let mut encoder = Encoder::new(&mut out, width, height);
        encoder.set_color(ColorType::Rgb);
        encoder.set_depth(BitDepth::Eight);
        encoder.set_compression(Compression::Default);
        encoder.set_filter(FilterType::Paeth);
        if is_latin1(parameters) {
            encoder.add_text_chunk(PARAMETERS_KEY.into(), parameters.into())?;
        } else {
            encoder.add_itxt_chunk(PARAMETERS_KEY.into(), parameters.into())?;
        }
        let mut writer = encoder.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

/// tEXt stores one byte per character; NUL would end the text early, so such text goes to
/// iTXt like anything outside Latin-1.
fn is_latin1(text: &str) -> bool {
    text.chars().all(|c| c != '\0' && u32::from(c) <= 0xFF)
}

/// The `parameters` text of a PNG from sdfarm or A1111, from a tEXt, zTXt or iTXt chunk
/// before or after the image data; `None` when there is none.
pub fn read_png_parameters(png: &[u8]) -> Result<Option<String>> {
    let mut reader = Decoder::new(Cursor::new(png)).read_info()?;
    // Text after IDAT is only seen once the image has been read through.
    let mut pixels = vec![0; reader.output_buffer_size()];
    reader.next_frame(&mut pixels)?;
    reader.finish()?;
    let info = reader.info();
    if let Some(chunk) = info
        .uncompressed_latin1_text
        .iter()
        .find(|c| c.keyword == PARAMETERS_KEY)
    {
        return Ok(Some(chunk.text.clone()));
    }
    if let Some(chunk) = info
        .compressed_latin1_text
        .iter()
        .find(|c| c.keyword == PARAMETERS_KEY)
    {
        return Ok(Some(chunk.get_text()?));
    }
    if let Some(chunk) = info.utf8_text.iter().find(|c| c.keyword == PARAMETERS_KEY) {
        return Ok(Some(chunk.get_text()?));
    }
    Ok(None)
}

/// Decodes an 8-bit RGB or RGBA PNG to RGB pixels (alpha dropped) and its size.
pub fn decode_png_rgb(png: &[u8]) -> Result<(Vec<u8>, u32, u32)> {
    let mut reader = Decoder::new(Cursor::new(png)).read_info()?;
    let mut buf = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf)?;
    buf.truncate(frame.buffer_size());
    let rgb = match (frame.color_type, frame.bit_depth) {
        (ColorType::Rgb, BitDepth::Eight) => buf,
        (ColorType::Rgba, BitDepth::Eight) => buf
            .chunks_exact(4)
            .flat_map(|px| [px[0], px[1], px[2]])
            .collect(),
        (color, depth) => {
            return Err(OutputError::UnsupportedPixels(format!(
                "{color:?} {depth:?}"
            )));
        }
    };
    Ok((rgb, frame.width, frame.height))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gradient with every channel varying, so filtering and compression are exercised.
    fn image(width: u32, height: u32) -> Vec<u8> {
        (0..height)
            .flat_map(|y| (0..width).flat_map(move |x| [x as u8, y as u8, (x * 7 + y * 13) as u8]))
            .collect()
    }

    #[test]
    fn pixels_and_latin1_text_round_trip_in_text_chunk() {
        let rgb = image(37, 21);
        let text = "a café, at night\nNegative prompt: blurry\nSteps: 20, Seed: 1";
        let png = encode_png(&rgb, 37, 21, text).unwrap();
        assert_eq!(read_png_parameters(&png).unwrap().as_deref(), Some(text));
        assert!(png.windows(4).any(|w| w == b"tEXt"));
        assert!(!png.windows(4).any(|w| w == b"iTXt"));
        assert_eq!(decode_png_rgb(&png).unwrap(), (rgb, 37, 21));
    }

    #[test]
    fn non_latin1_text_goes_in_itxt() {
        let rgb = image(8, 8);
        let text = "猫の写真, 🐱\nSteps: 20, Seed: 1";
        let png = encode_png(&rgb, 8, 8, text).unwrap();
        assert!(png.windows(4).any(|w| w == b"iTXt"));
        assert!(!png.windows(4).any(|w| w == b"tEXt"));
        assert_eq!(read_png_parameters(&png).unwrap().as_deref(), Some(text));
    }

    #[test]
    fn encoding_is_deterministic() {
        let rgb = image(64, 48);
        let a = encode_png(&rgb, 64, 48, "p\nSteps: 1").unwrap();
        let b = encode_png(&rgb, 64, 48, "p\nSteps: 1").unwrap();
        assert_eq!(a, b);
        assert_eq!(super::super::sha256_hex(&a), super::super::sha256_hex(&b));
        assert_ne!(a, encode_png(&rgb, 64, 48, "p\nSteps: 2").unwrap());
    }

    #[test]
    fn wrong_buffer_size_is_refused() {
        let err = encode_png(&[0; 10], 2, 2, "").unwrap_err();
        assert!(
            err.to_string()
                .contains("holds 10 bytes, but 2x2 RGB needs 12"),
            "{err}"
        );
        assert!(encode_png(&[], 0, 0, "").is_err());
    }

    #[test]
    fn text_after_image_data_and_ztxt_are_found() {
        let mut out = Vec::new();
        {
            let mut encoder = Encoder::new(&mut out, 2, 1);
            encoder.set_color(ColorType::Rgba);
            encoder.set_depth(BitDepth::Eight);
            let mut writer = encoder.write_header().unwrap();
            writer
                .write_image_data(&[1, 2, 3, 255, 4, 5, 6, 128])
                .unwrap();
            let mut chunk =
                ::png::text_metadata::ZTXtChunk::new(PARAMETERS_KEY, "late, compressed");
            chunk.compress_text().unwrap();
            writer.write_text_chunk(&chunk).unwrap();
            writer.finish().unwrap();
        }
        assert_eq!(
            read_png_parameters(&out).unwrap().as_deref(),
            Some("late, compressed")
        );
        assert_eq!(
            decode_png_rgb(&out).unwrap(),
            (vec![1, 2, 3, 4, 5, 6], 2, 1)
        );
    }

    #[test]
    fn png_without_parameters_reads_none() {
        let mut out = Vec::new();
        {
            let mut encoder = Encoder::new(&mut out, 1, 1);
            encoder.set_color(ColorType::Rgb);
            let mut writer = encoder.write_header().unwrap();
            writer.write_image_data(&[0, 0, 0]).unwrap();
        }
        assert_eq!(read_png_parameters(&out).unwrap(), None);
        assert!(read_png_parameters(b"not a png").is_err());
    }
}
