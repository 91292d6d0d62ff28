//! PNG encoding with AUTOMATIC1111 infotext, and reading it back.
//!
//! `infotext` writes the parameters text as A1111 does, `parse` reads it (from either tool)
//! and `png` stores it in a `parameters` text chunk the way PIL does for A1111.

mod hires_info;
mod infotext;
mod parse;
mod png;
mod version;

use sha2::{Digest, Sha256};

pub use self::infotext::{infotext, infotext_with_networks, infotext_with_vae, py_float, quote};
pub use self::parse::{parse_infotext, InfoValue, ParsedInfotext};
pub use self::png::{decode_png_rgb, encode_png, read_png_parameters, PARAMETERS_KEY};

pub type Result<T, E = OutputError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("image buffer holds {len} bytes, but {width}x{height} RGB needs {expected}")]
    BufferSize {
        width: u32,
        height: u32,
        len: usize,
        expected: u64,
    },
    #[error("PNG encoding failed: {0}")]
    Encode(#[from] ::png::EncodingError),
    #[error("not a readable PNG: {0}")]
    Decode(#[from] ::png::DecodingError),
    #[error("PNG is {0:?}, expected 8-bit RGB or RGBA")]
    UnsupportedPixels(String),
}

/// Lower-case hex SHA-256, the checksum reported with every uploaded image.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            super::sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
