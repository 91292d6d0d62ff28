//! k-diffusion's `BrownianTreeNoiseSampler`, the noise source AUTOMATIC1111 gives its SDE
//! samplers (DPM++ SDE, DPM++ 2M SDE (Heun), DPM++ 3M SDE): one `torchsde.BrownianTree` per
//! image, seeded with the image's seed, over `[sigma_min, sigma_max]` of the sampler's sigmas.
//!
//! Reproduced bit for bit from torchsde 0.2.6 (`BrownianTree` = `BrownianInterval` with
//! `halfway_tree=True`, `tol=1e-6`, `pool_size=24`, `levy_area_approximation='none'`):
//! - every tree node's seeds come from numpy's `SeedSequence(entropy=seed,
//!   spawn_key=(key, depth), pool_size=24).generate_state(4)` ([`SeedSequence`]);
//! - each node's normal draws are `torch.randn(shape, generator=manual_seed(seed))`
//!   ([`TorchGenerator`]);
//! - a child's increment is the Brownian-bridge sample from its parent's, in float32 with the
//!   float64 coefficients rounded to float32 as torch does for `tensor * python_float`;
//! - times are quantised with Python's `round(t, 6)` and queries clamped to the (quantised)
//!   ends of the tree.
//!
//! The one step not reproduced to the bit is torch-CPU's float32 `sqrt` of the 0-dim step
//! `|sigma_next - sigma|`, which is not always correctly rounded: sdfarm uses the correctly
//! rounded one (as CUDA's `sqrtf` is), so a draw can differ by one ulp of that divisor (at
//! most ~5e-7 on unit-variance noise).
//!
//! Values do not depend on the order of queries (the tree is the dyadic one), so a cache of
//! recent increments only saves work; it never changes a value.

use std::collections::{HashMap, VecDeque};

use super::torch_rng::TorchGenerator;

/// numpy's `SeedSequence` constants (`numpy/random/bit_generator.pyx`).
const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;

/// torchsde `BrownianTree` defaults.
const POOL_SIZE: usize = 24;
const TOL_DIGITS: usize = 6;
/// Increments kept for reuse per tree (torchsde keeps 45 in an LRU cache).
const CACHE_SIZE: usize = 64;
/// A query deeper than this means the search is not converging; Python would recurse too.
const MAX_DEPTH: usize = 400;

/// numpy's `_int_to_uint32_array`: little-endian 32-bit words, `[0]` for zero.
fn int_words(mut n: u128, out: &mut Vec<u32>) {
    if n == 0 {
        out.push(0);
    }
    while n > 0 {
        out.push(n as u32);
        n >>= 32;
    }
}

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut value = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    value = value.wrapping_mul(*hash_const);
    value ^ (value >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let r = MIX_MULT_L
        .wrapping_mul(x)
        .wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    r ^ (r >> XSHIFT)
}

/// `numpy.random.SeedSequence(entropy, spawn_key=spawn_key, pool_size=pool_size)` for an
/// integer entropy and integer spawn key.
pub struct SeedSequence {
    pool: Vec<u32>,
}

impl SeedSequence {
    pub fn new(entropy: u128, spawn_key: &[u128], pool_size: usize) -> Self {
        let mut assembled = Vec::new();
        int_words(entropy, &mut assembled);
        let mut spawn = Vec::new();
        for &k in spawn_key {
            int_words(k, &mut spawn);
        }
        // numpy >= 1.19 pads the run entropy to the pool size when there is a spawn key.
        if !spawn.is_empty() && assembled.len() < pool_size {
            assembled.resize(pool_size, 0);
        }
        assembled.extend(spawn);

        let mut pool = vec![0u32; pool_size];
        let mut hash_const = INIT_A;
        for (i, word) in pool.iter_mut().enumerate() {
            *word = hashmix(assembled.get(i).copied().unwrap_or(0), &mut hash_const);
        }
        for i_src in 0..pool_size {
            for i_dst in 0..pool_size {
                if i_src != i_dst {
                    let h = hashmix(pool[i_src], &mut hash_const);
                    pool[i_dst] = mix(pool[i_dst], h);
                }
            }
        }
        for &word in assembled.iter().skip(pool_size) {
            for dst in pool.iter_mut() {
                let h = hashmix(word, &mut hash_const);
                *dst = mix(*dst, h);
            }
        }
        SeedSequence { pool }
    }

    /// `generate_state(n_words)` with the default `uint32` words.
    pub fn generate_state(&self, n_words: usize) -> Vec<u32> {
        let mut hash_const = INIT_B;
        (0..n_words)
            .map(|i| {
                let mut v = self.pool[i % self.pool.len()] ^ hash_const;
                hash_const = hash_const.wrapping_mul(MULT_B);
                v = v.wrapping_mul(hash_const);
                v ^ (v >> XSHIFT)
            })
            .collect()
    }
}

/// Python's `round(x, ndigits)` for floats: the nearest double to the correctly rounded
/// decimal (ties to even on the exact binary value), which Rust's exact formatting gives.
pub fn python_round(x: f64, ndigits: usize) -> f64 {
    let s = format!("{:.*}", ndigits, x);
    s.parse().unwrap_or(x)
}

fn round_t(x: f64) -> f64 {
    python_round(x, TOL_DIGITS)
}

struct Split {
    midway: f64,
    w_seed: u32,
    left: usize,
    right: usize,
}

struct Node {
    start: f64,
    end: f64,
    parent: usize,
    is_left: bool,
    spawn_key: u128,
    depth: u128,
    split: Option<Split>,
}

/// `torchsde.BrownianTree(t0, w0=zeros(numel), t1, entropy=seed)` (float32, no Lévy area).
pub struct BrownianTree {
    numel: usize,
    entropy: u128,
    nodes: Vec<Node>,
    root_w: Vec<f32>,
    cache: HashMap<usize, Vec<f32>>,
    cache_order: VecDeque<usize>,
}

impl BrownianTree {
    /// `t0 < t1` as torchsde requires (k-diffusion sorts them first).
    pub fn new(t0: f64, t1: f64, numel: usize, entropy: u128) -> Self {
        let state = SeedSequence::new(entropy, &[], POOL_SIZE).generate_state(3);
        let scale = (t1 - t0).sqrt() as f32;
        let root_w = TorchGenerator::new(state[0] as u64)
            .randn(numel)
            .into_iter()
            .map(|v| v * scale)
            .collect();
        let root = Node {
            start: round_t(t0),
            end: round_t(t1),
            parent: usize::MAX,
            is_left: false,
            spawn_key: 0,
            depth: 0,
            split: None,
        };
        BrownianTree {
            numel,
            entropy,
            nodes: vec![root],
            root_w,
            cache: HashMap::new(),
            cache_order: VecDeque::new(),
        }
    }

    /// The increment `W(tb) - W(ta)` (`tree(ta, tb)`), `ta <= tb`, clamped to the tree's ends
    /// as torchsde clamps (with a warning) out-of-range queries.
    pub fn increment(&mut self, ta: f64, tb: f64) -> Vec<f32> {
        let (start, end) = (self.nodes[0].start, self.nodes[0].end);
        let ta = ta.clamp(start.min(end), end);
        let tb = tb.clamp(start.min(end), end);
        if ta >= tb {
            return vec![0.0; self.numel];
        }
        let (ta, tb) = (round_t(ta), round_t(tb));
        if ta == tb {
            return vec![0.0; self.numel];
        }
        let mut intervals = Vec::new();
        self.locate(0, ta, tb, &mut intervals, 0);
        let mut iter = intervals.into_iter();
        let mut w = match iter.next() {
            Some(first) => self.node_w(first),
            None => return vec![0.0; self.numel],
        };
        for node in iter {
            let wi = self.node_w(node);
            for (a, b) in w.iter_mut().zip(wi) {
                *a += b;
            }
        }
        w
    }

    /// `_loc_inner` from the root: the nodes of the dyadic tree that exactly cover `[ta, tb]`,
    /// left to right, splitting nodes at their (rounded) halfway points as needed.
    fn locate(&mut self, node: usize, ta: f64, tb: f64, out: &mut Vec<usize>, depth: usize) {
        let (start, end) = (self.nodes[node].start, self.nodes[node].end);
        if (ta == start && tb == end) || depth > MAX_DEPTH {
            out.push(node);
            return;
        }
        let (midway, left, right) = self.split(node);
        if tb <= midway {
            self.locate(left, ta, tb, out, depth + 1);
        } else if ta >= midway {
            self.locate(right, ta, tb, out, depth + 1);
        } else {
            self.locate(left, ta, midway, out, depth + 1);
            self.locate(right, midway, tb, out, depth + 1);
        }
    }

    /// `_split_exact` at the halfway point (once per node).
    fn split(&mut self, node: usize) -> (f64, usize, usize) {
        if let Some(s) = &self.nodes[node].split {
            return (s.midway, s.left, s.right);
        }
        let n = &self.nodes[node];
        let midway = round_t(0.5 * (n.end + n.start));
        let (start, end) = (n.start, n.end);
        let (key, depth) = if node == 0 {
            (0, 0)
        } else {
            let p = &self.nodes[n.parent];
            (2 * p.spawn_key + u128::from(!n.is_left), p.depth + 1)
        };
        let seeds = SeedSequence::new(self.entropy, &[key, depth], POOL_SIZE).generate_state(4);
        let (left, right) = (self.nodes.len(), self.nodes.len() + 1);
        for (s, e, is_left) in [(start, midway, true), (midway, end, false)] {
            self.nodes.push(Node {
                start: round_t(s),
                end: round_t(e),
                parent: node,
                is_left,
                spawn_key: 0,
                depth: 0,
                split: None,
            });
        }
        let n = &mut self.nodes[node];
        n.spawn_key = key;
        n.depth = depth;
        n.split = Some(Split {
            midway,
            w_seed: seeds[0],
            left,
            right,
        });
        (midway, left, right)
    }

    /// A node's increment: the root's own, else the Brownian-bridge draw from its parent's.
    fn node_w(&mut self, node: usize) -> Vec<f32> {
        if node == 0 {
            return self.root_w.clone();
        }
        if let Some(w) = self.cache.get(&node) {
            return w.clone();
        }
        let parent_idx = self.nodes[node].parent;
        let parent_w = self.node_w(parent_idx);
        let p = &self.nodes[parent_idx];
        let s = p.split.as_ref().expect("a child's parent is split");
        let h_reciprocal = 1.0 / (p.end - p.start);
        let left_diff = s.midway - p.start;
        let right_diff = p.end - s.midway;
        let var = left_diff * right_diff * h_reciprocal;
        let (c_left, c_h, c_std) = (left_diff as f32, h_reciprocal as f32, var.sqrt() as f32);
        let noise = TorchGenerator::new(s.w_seed as u64).randn(self.numel);
        let is_left = self.nodes[node].is_left;
        let w: Vec<f32> = parent_w
            .iter()
            .zip(noise)
            .map(|(&w, z)| {
                let left_w = w * c_left * c_h + z * c_std;
                if is_left {
                    left_w
                } else {
                    w - left_w
                }
            })
            .collect();
        if self.cache_order.len() >= CACHE_SIZE {
            if let Some(old) = self.cache_order.pop_front() {
                self.cache.remove(&old);
            }
        }
        self.cache.insert(node, w.clone());
        self.cache_order.push_back(node);
        w
    }
}

/// `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed)` for one image of `numel`
/// float32 values: `noise(sigma, sigma_next)` is `tree(sigma, sigma_next) / sqrt(|sigma_next -
/// sigma|)`, signed by the direction of the query.
pub struct BrownianTreeNoiseSampler {
    tree: BrownianTree,
    sign: f32,
}

impl BrownianTreeNoiseSampler {
    /// `seed` is the image's seed (A1111's `p.all_seeds` entry), non-negative as numpy's
    /// `SeedSequence` requires.
    pub fn new(numel: usize, sigma_min: f32, sigma_max: f32, seed: u64) -> Self {
        let (t0, t1, sign) = sort(sigma_min, sigma_max);
        BrownianTreeNoiseSampler {
            tree: BrownianTree::new(t0 as f64, t1 as f64, numel, seed as u128),
            sign,
        }
    }

    /// A1111's bounds: `sigmas[sigmas > 0].min()` and `sigmas.max()`.
    pub fn for_sigmas(numel: usize, sigmas: &[f32], seed: u64) -> Self {
        let min = sigmas
            .iter()
            .copied()
            .filter(|&s| s > 0.0)
            .fold(f32::INFINITY, f32::min);
        let max = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        Self::new(numel, min, max, seed)
    }

    pub fn noise(&mut self, sigma: f32, sigma_next: f32) -> Vec<f32> {
        let (a, b, sign) = sort(sigma, sigma_next);
        let sign = self.sign * sign;
        let denom = (sigma_next - sigma).abs().sqrt();
        self.tree
            .increment(a as f64, b as f64)
            .into_iter()
            .map(|w| (w * sign) / denom)
            .collect()
    }
}

fn sort(a: f32, b: f32) -> (f32, f32, f32) {
    if a < b {
        (a, b, 1.0)
    } else {
        (b, a, -1.0)
    }
}
