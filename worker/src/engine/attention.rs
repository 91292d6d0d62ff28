//! The UNet's attention (diffusers `Attention` with `to_q`/`to_k`/`to_v`/`to_out.0`), tiled so
//! that no score tensor grows with the image.
//!
//! candle's `CrossAttention` materialises the whole score tensor `[batch·heads, n, m]`, writes
//! a second one for the softmax and reads it again for the value product. At 1024 tokens with
//! 8 heads and a CFG batch of 2 that is 64 MiB per tensor: too large for the allocator's heap,
//! so every one is freshly mapped (a page fault per 4 KiB), and far outside the caches. With
//! small heads (the tiny model's 4 channels) the two products are nothing but that memory
//! traffic. Here the heads are taken a group at a time (and the query rows a slice at a time
//! when one head alone is larger) so that each score tile holds at most [`TILE`] values
//! (4 MiB): the tile is computed, put through the softmax and multiplied by the values while it
//! is still in cache, and the allocator reuses the same memory for the next one. The scale is
//! applied to the keys, as candle's `CrossAttention` does. Scores up to two tiles' worth
//! (cross-attention over 77 keys at SD 1.5's 32×32 latent) go in one piece.
//!
//! Everything is composed of candle's own (optimised) operations, so the path is the same in
//! every build profile and on every device.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{self as nn, VarBuilder};

/// Multi-head attention over `xs` (self-attention) or a context (cross-attention).
pub struct Attention {
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    /// `context_dim` `None` for self-attention; tensor names as diffusers writes them.
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        dim_head: usize,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        let context_dim = context_dim.unwrap_or(query_dim);
        Ok(Attention {
            to_q: nn::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: nn::linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: nn::linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: nn::linear(inner, query_dim, vb.pp("to_out.0"))?,
            heads,
            scale: 1.0 / (dim_head as f64).sqrt(),
        })
    }

    /// `xs` `[b, n, query_dim]`, `context` `[b, m, context_dim]` → `[b, n, query_dim]`.
    pub fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(xs);
        let q = self.to_q.forward(xs)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        self.to_out
            .forward(&attend(&q, &k, &v, self.heads, self.scale)?)
    }
}

/// Most score values one tile holds (4 MiB of f32).
pub const TILE: usize = 1 << 20;

/// `softmax(q kᵀ · scale) v` per head: `q` `[b, n, heads·d]`, `k` and `v` `[b, m, heads·d]`
/// → `[b, n, heads·d]`, computed in f32 a tile at a time.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, scale: f64) -> Result<Tensor> {
    let (b, n, inner) = q.dims3()?;
    let m = k.dim(1)?;
    let dtype = q.dtype();
    let q = split_heads(q, heads)?.contiguous()?;
    // Keys transposed to `[b·heads, d, m]` in memory (one copy, with the scale), which the
    // matrix product reads faster than a transposed view.
    let k_t = split_heads(k, heads)?
        .contiguous()?
        .t()?
        .affine(scale, 0.)?;
    let v = split_heads(v, heads)?.contiguous()?;
    let groups = b * heads;
    // Splitting has a cost of its own: scores up to two tiles' worth go in one piece.
    let (per_tile, rows) = if groups * n * m <= 2 * TILE {
        (groups, n)
    } else {
        (
            (TILE / (n * m).max(1)).clamp(1, groups),
            (TILE / m.max(1)).clamp(1, n),
        )
    };
    let mut out = Vec::with_capacity(groups.div_ceil(per_tile));
    for g in (0..groups).step_by(per_tile) {
        let g_len = per_tile.min(groups - g);
        let (q, k_t, v) = (
            q.narrow(0, g, g_len)?,
            k_t.narrow(0, g, g_len)?,
            v.narrow(0, g, g_len)?,
        );
        let mut slices = Vec::with_capacity(n.div_ceil(rows));
        for r in (0..n).step_by(rows) {
            let q = q.narrow(1, r, rows.min(n - r))?;
            let scores = q.matmul(&k_t)?;
            slices.push(nn::ops::softmax_last_dim(&scores)?.matmul(&v)?);
        }
        out.push(Tensor::cat(&slices, 1)?);
    }
    Tensor::cat(&out, 0)?
        .reshape((b, heads, n, inner / heads))?
        .transpose(1, 2)?
        .reshape((b, n, inner))?
        .to_dtype(dtype)
}

/// `[b, n, heads·d]` → `[b·heads, n, d]` in f32 (a strided view until the next operation).
fn split_heads(t: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, inner) = t.dims3()?;
    t.to_dtype(DType::F32)?
        .reshape((b, n, heads, inner / heads))?
        .transpose(1, 2)?
        .reshape((b * heads, n, inner / heads))
}

/// The untiled form (whole score tensor, softmax, value product) as candle's
/// `CrossAttention` computes it, kept as the benchmark's and the tests' reference.
pub fn attend_unfused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let (b, n, inner) = q.dims3()?;
    let split = |t: &Tensor| split_heads(t, heads)?.contiguous();
    let scores = split(q)?.matmul(&(split(k)?.t()? * scale)?)?;
    nn::ops::softmax_last_dim(&scores)?
        .matmul(&split(v)?)?
        .reshape((b, heads, n, inner / heads))?
        .transpose(1, 2)?
        .reshape((b, n, inner))?
        .to_dtype(q.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn tiled_matches_untiled() -> Result<()> {
        let dev = Device::Cpu;
        // Several heads per tile with a partial last group (cross-attention over 77 keys), one
        // head per tile, and query rows split within a head (a tile of 1024 rows of 2048 keys).
        for (b, n, m, heads, d) in [
            (2, 37, 77, 3, 5),
            (1, 1100, 1000, 2, 8),
            (1, 2500, 2048, 1, 4),
        ] {
            let q = Tensor::randn(0f32, 1.0, (b, n, heads * d), &dev)?;
            let k = Tensor::randn(0f32, 1.0, (b, m, heads * d), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (b, m, heads * d), &dev)?;
            let scale = 1.0 / (d as f64).sqrt();
            let tiled = attend(&q, &k, &v, heads, scale)?;
            let plain = attend_unfused(&q, &k, &v, heads, scale)?;
            assert_eq!(tiled.dims(), plain.dims());
            let err = (tiled - plain)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert!(
                err < 1e-5,
                "{b}x{n}x{m}, {heads} heads of {d}: tiled differs by {err}"
            );
        }
        Ok(())
    }
}
