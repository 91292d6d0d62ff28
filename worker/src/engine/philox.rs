//! A1111's "NV" noise source: Philox4x32-10 counters and a float64 Box–Muller.
//!
//! A1111 added it (`modules/rng_philox.py`) so CPU-only machines can reproduce the noise that
//! NVIDIA GPUs make with `torch.randn(device='cuda')`. It is a counter-based generator, so each
//! value depends only on the seed, the call number and the element index:
//!
//! * key = the seed as a u64, split into (low 32 bits, high 32 bits);
//! * the counter for element `i` of call `offset` is `(offset, 0, i, 0)`;
//! * ten Philox rounds with multipliers `0xD2511F53`, `0xCD9E8D57`, the key bumped by the Weyl
//!   constants `0x9E3779B9`, `0xBB67AE85` after each of the first nine;
//! * output words 0 and 1 become `u = r0·2⁻³² + 2⁻³³` and `v = r1·C + C/2` with
//!   `C = f32(2⁻³² · 2π)`, and the value is `f32(sqrt(-2 ln u) · sin v)`, computed in float64
//!   (numpy promotes the `uint32 × float32` products to float64).

const M0: u64 = 0xD251_1F53;
const M1: u64 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// A1111's `rng_philox.Generator`: each `randn` call advances the offset by one.
#[derive(Debug, Clone)]
pub struct PhiloxGenerator {
    seed: u64,
    offset: u32,
}

impl PhiloxGenerator {
    pub fn new(seed: u64) -> Self {
        PhiloxGenerator { seed, offset: 0 }
    }

    /// How many `randn` calls were made so far.
    pub fn offset(&self) -> u32 {
        self.offset
    }

    /// `Generator.randn(shape)` for `numel = prod(shape)` values, in row-major order.
    pub fn randn(&mut self, numel: usize) -> Vec<f32> {
        let offset = self.offset;
        self.offset = self.offset.wrapping_add(1);
        // The f32 constants numpy multiplies by, widened exactly to f64.
        let two_pow32_inv = 2.328_306_4e-10_f32 as f64;
        let two_pow32_inv_2pi = (2.328_306_4e-10_f64 * 6.283_185_5_f64) as f32 as f64;
        (0..numel)
            .map(|i| {
                // The counter's index word is 32 bits, as in A1111.
                let [r0, r1, _, _] = philox4x32_10([offset, 0, i as u32, 0], self.seed);
                let u = r0 as f64 * two_pow32_inv + two_pow32_inv / 2.0;
                let v = r1 as f64 * two_pow32_inv_2pi + two_pow32_inv_2pi / 2.0;
                ((-2.0 * u.ln()).sqrt() * v.sin()) as f32
            })
            .collect()
    }
}

fn round(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let p0 = counter[0] as u64 * M0;
    let p1 = counter[2] as u64 * M1;
    [
        (p1 >> 32) as u32 ^ counter[1] ^ key[0],
        p1 as u32,
        (p0 >> 32) as u32 ^ counter[3] ^ key[1],
        p0 as u32,
    ]
}

/// Philox4x32 with 10 rounds.
fn philox4x32_10(mut counter: [u32; 4], seed: u64) -> [u32; 4] {
    let mut key = [seed as u32, (seed >> 32) as u32];
    for _ in 0..9 {
        counter = round(counter, key);
        key = [key[0].wrapping_add(W0), key[1].wrapping_add(W1)];
    }
    round(counter, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a1111_docstring_example() {
        // rng_philox.py: Generator(0).randn((3, 4)) starts -0.92466259 -0.42534415 -2.6438457.
        let v = PhiloxGenerator::new(0).randn(12);
        assert_eq!(v[0].to_bits(), 0xbf6cb6ad);
        assert_eq!(v[1].to_bits(), 0xbed9c6af);
        assert_eq!(v[2].to_bits(), 0xc02934c5);
    }

    #[test]
    fn offset_advances_per_call() {
        let mut g = PhiloxGenerator::new(42);
        let first = g.randn(8);
        let second = g.randn(8);
        assert_ne!(first, second);
        assert_eq!(g.offset(), 2);
        assert_eq!(PhiloxGenerator::new(42).randn(8), first);
    }
}
