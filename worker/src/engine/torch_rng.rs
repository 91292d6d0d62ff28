//! Bit-exact port of PyTorch's CPU `torch.randn` for float32.
//!
//! A1111 makes its initial noise (and ancestral-step noise) with
//! `torch.randn(shape, generator=torch.Generator('cpu').manual_seed(seed))`, so matching a seed
//! means matching this generator to the last bit:
//!
//! * The engine is ATen's `mt19937`, seeded with the low 32 bits of the seed. Its first draw
//!   regenerates the state (the `left = 1` bookkeeping of `MT19937RNGEngine.h`).
//! * For 16 or more elements ATen's `normal_fill` first fills the whole buffer with 24-bit float
//!   uniforms, then applies Box–Muller in blocks of 16, pairing element `j` with `j + 8`. When the
//!   length is not a multiple of 16, the last 16 elements are drawn again and recomputed, which
//!   overwrites part of the previous block.
//! * x86-64 builds run that Box–Muller through `normal_fill_16_AVX2`, whose `log` and `sincos`
//!   are the Cephes-style float polynomials of `avx_mathfun.h`, compiled with FMA contraction.
//!   Using libm, or plain multiply-then-add, changes the last bit of roughly a third of the values,
//!   so the polynomials below are evaluated in the same order with `f32::mul_add` exactly where
//!   the compiled kernel fuses.
//! * Below 16 elements ATen takes a serial path: `at::normal_distribution<double>` per element,
//!   with 53-bit uniforms and the generator's cached second Box–Muller value.

use std::f64::consts::PI;

const MT_N: usize = 624;
const MT_M: usize = 397;

/// ATen's `at::mt19937` (32-bit Mersenne Twister with its own seeding bookkeeping).
#[derive(Clone)]
struct Mt19937 {
    state: Box<[u32; MT_N]>,
    left: u32,
    next: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = Box::new([0u32; MT_N]);
        state[0] = seed;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(j as u32);
        }
        Mt19937 {
            state,
            left: 1,
            next: 0,
        }
    }

    fn twist(u: u32, v: u32) -> u32 {
        let mixed = (u & 0x8000_0000) | (v & 0x7fff_ffff);
        (mixed >> 1) ^ if v & 1 != 0 { 0x9908_b0df } else { 0 }
    }

    fn regenerate(&mut self) {
        let s = &mut self.state;
        for i in 0..MT_N - MT_M {
            s[i] = s[i + MT_M] ^ Self::twist(s[i], s[i + 1]);
        }
        for i in MT_N - MT_M..MT_N - 1 {
            s[i] = s[i + MT_M - MT_N] ^ Self::twist(s[i], s[i + 1]);
        }
        s[MT_N - 1] = s[MT_M - 1] ^ Self::twist(s[MT_N - 1], s[0]);
        self.left = MT_N as u32;
        self.next = 0;
    }

    fn next_u32(&mut self) -> u32 {
        self.left -= 1;
        if self.left == 0 {
            self.regenerate();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// A `torch.Generator('cpu')` after `manual_seed(seed)`.
///
/// State carries over between calls exactly as it does in torch, including the cached second
/// Box–Muller value of the small-tensor path.
#[derive(Clone)]
pub struct TorchGenerator {
    mt: Mt19937,
    next_double_normal: Option<f64>,
}

impl TorchGenerator {
    /// Equivalent of `torch.Generator('cpu').manual_seed(seed)`. Negative seeds as passed to
    /// torch (`manual_seed(-1)`) are their two's complement, so `seed as u64` is right; only the
    /// low 32 bits affect the values.
    pub fn new(seed: u64) -> Self {
        TorchGenerator {
            mt: Mt19937::new(seed as u32),
            next_double_normal: None,
        }
    }

    /// `CPUGeneratorImpl::random()`.
    pub fn random_u32(&mut self) -> u32 {
        self.mt.next_u32()
    }

    /// `CPUGeneratorImpl::random64()`: the first draw is the high word.
    pub fn random_u64(&mut self) -> u64 {
        let hi = self.mt.next_u32() as u64;
        let lo = self.mt.next_u32() as u64;
        (hi << 32) | lo
    }

    /// `uniform_real_distribution<float>(0, 1)`: 24 random bits, exact in f32.
    fn uniform_f32(&mut self) -> f32 {
        (self.random_u32() & ((1 << 24) - 1)) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// `uniform_real_distribution<double>(0, 1)`: 53 random bits from `random64()`.
    fn uniform_f64(&mut self) -> f64 {
        (self.random_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `at::normal_distribution<double>(0, 1)`, which caches the sine half of each pair.
    fn normal_f64(&mut self) -> f64 {
        if let Some(cached) = self.next_double_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// `torch.randn(shape, generator=self, dtype=torch.float32)` for a contiguous tensor of
    /// `numel` elements, in row-major order.
    pub fn randn(&mut self, numel: usize) -> Vec<f32> {
        if numel < 16 {
            return (0..numel).map(|_| self.normal_f64() as f32).collect();
        }
        let mut data: Vec<f32> = (0..numel).map(|_| self.uniform_f32()).collect();
        for block in data.chunks_exact_mut(16) {
            normal_fill_16(block);
        }
        if numel % 16 != 0 {
            let tail = &mut data[numel - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            normal_fill_16(tail);
        }
        data
    }
}

/// Box–Muller over one block of 16 uniforms, as `normal_fill_16_AVX2` does it (mean 0, std 1).
fn normal_fill_16(block: &mut [f32]) {
    // `_mm256_set1_ps(2.0f * c10::pi<double>)`: the product is formed in double, then rounded.
    let two_pi = (2.0 * PI) as f32;
    for j in 0..8 {
        let u1 = 1.0f32 - block[j];
        let u2 = block[j + 8];
        let radius = (-2.0f32 * log_ps(u1)).sqrt();
        let (sin, cos) = sincos_ps(two_pi * u2);
        // The kernel ends with fmadd(n, std, mean); with std 1 and mean 0 that is exact.
        block[j] = radius * cos;
        block[j + 8] = radius * sin;
    }
}

// Cephes constants exactly as avx_mathfun.h spells them. C initialises its float arrays from
// these double literals, so they are rounded from f64, not parsed as f32.
const SQRT_HALF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
const LOG_P: [f32; 9] = [
    7.0376836292E-2_f64 as f32,
    -1.1514610310E-1_f64 as f32,
    1.1676998740E-1_f64 as f32,
    -1.2420140846E-1_f64 as f32,
    1.4249322787E-1_f64 as f32,
    -1.6668057665E-1_f64 as f32,
    2.0000714765E-1_f64 as f32,
    -2.4999993993E-1_f64 as f32,
    3.3333331174E-1_f64 as f32,
];
const LOG_Q1: f32 = -2.12194440e-4_f64 as f32;
const LOG_Q2: f32 = 0.693359375_f64 as f32;
const FOUR_OVER_PI: f32 = 1.27323954473516_f64 as f32;
#[allow(clippy::excessive_precision)]
const MINUS_DP: [f32; 3] = [
    -0.78515625_f64 as f32,
    -2.4187564849853515625e-4_f64 as f32,
    -3.77489497744594108e-8_f64 as f32,
];
const SIN_P: [f32; 3] = [
    -1.9515295891E-4_f64 as f32,
    8.3321608736E-3_f64 as f32,
    -1.6666654611E-1_f64 as f32,
];
const COS_P: [f32; 3] = [
    2.443315711809948E-005_f64 as f32,
    -1.388731625493765E-003_f64 as f32,
    4.166664568298827E-002_f64 as f32,
];

/// One lane of `log256_ps`. Inputs here are in (0, 1], so the NaN/denormal paths never matter
/// for the values but are kept for completeness.
fn log_ps(input: f32) -> f32 {
    if input <= 0.0 {
        return f32::NAN;
    }
    let clamped = input.max(f32::MIN_POSITIVE);
    let bits = clamped.to_bits();
    let mut e = ((bits >> 23) as i32 - 0x7f) as f32 + 1.0;
    // Mantissa with exponent forced to 2^-1: x in [0.5, 1).
    let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let below_sqrt_half = x < SQRT_HALF;
    let tmp = if below_sqrt_half { x } else { 0.0 };
    x -= 1.0;
    if below_sqrt_half {
        e -= 1.0;
    }
    x += tmp;

    let z = x * x;
    let mut y = LOG_P[0];
    for &c in &LOG_P[1..] {
        y = y.mul_add(x, c);
    }
    y *= x;
    // add(mul(y, z), mul(e, q1)) is contracted on its first product.
    y = y.mul_add(z, e * LOG_Q1);
    // sub(y, mul(z, 0.5)) becomes a negated fused multiply-add.
    y = (-z).mul_add(0.5, y);
    x += y;
    e.mul_add(LOG_Q2, x)
}

/// One lane of `sincos256_ps`; returns `(sin, cos)`.
fn sincos_ps(input: f32) -> (f32, f32) {
    let sign_in = input.to_bits() & 0x8000_0000;
    let mut x = input.abs();

    // cvttps truncates toward zero; j = (j + 1) & !1 picks the even octant.
    let mut j = (x * FOUR_OVER_PI) as i32;
    j = (j + 1) & !1;
    let y = j as f32;

    let swap_sign_sin = ((j & 4) as u32) << 29;
    let use_sin_poly_for_sin = (j & 2) == 0;
    let sign_cos = ((!(j - 2) & 4) as u32) << 29;
    let sign_sin = sign_in ^ swap_sign_sin;

    // Extended-precision range reduction x - y*pi/4 in three parts.
    for dp in MINUS_DP {
        x = y.mul_add(dp, x);
    }

    let z = x * x;
    let mut cos_poly = COS_P[0].mul_add(z, COS_P[1]);
    cos_poly = cos_poly.mul_add(z, COS_P[2]);
    cos_poly *= z;
    cos_poly = cos_poly.mul_add(z, -(z * 0.5));
    cos_poly += 1.0;

    let mut sin_poly = SIN_P[0].mul_add(z, SIN_P[1]);
    sin_poly = sin_poly.mul_add(z, SIN_P[2]);
    sin_poly *= z;
    sin_poly = sin_poly.mul_add(x, x);

    let (s, c) = if use_sin_poly_for_sin {
        (sin_poly, cos_poly)
    } else {
        (cos_poly, sin_poly)
    };
    (
        f32::from_bits(s.to_bits() ^ sign_sin),
        f32::from_bits(c.to_bits() ^ sign_cos),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_values_match_torch_seed_0() {
        // torch.randn(8, generator=torch.Generator().manual_seed(0)) uses the serial path;
        // torch.randn(16, ...) the blocked one. Both start from the same uniforms but differ.
        let v = TorchGenerator::new(0).randn(16384);
        assert_eq!(v[0], -1.125_839_8);
        assert_eq!(v[1], -1.152_360_2);
    }

    #[test]
    fn only_low_32_bits_of_seed_matter() {
        let a = TorchGenerator::new(5).randn(32);
        let b = TorchGenerator::new((1u64 << 32) + 5).randn(32);
        assert_eq!(a, b);
        let c = TorchGenerator::new(u32::MAX as u64).randn(20);
        let d = TorchGenerator::new(-1i64 as u64).randn(20);
        assert_eq!(c, d);
    }
}
