//! Templates with wildcards inlined and combinations counted, so any combination can be
//! resolved from its index alone and a random one drawn from a seeded generator.
//!
//! Combinatorial order is sd-dynamic-prompts': the last variant of a prompt changes
//! fastest, a variant's options come in written order (each with all its own combinations),
//! and a multi-pick lists its picks as `itertools.combinations` does, smallest count first.
//! Weights only matter in random mode.
//!
//! Random draws use ChaCha8 (`rand_chacha`, whose output stream is fixed by its
//! specification and value-stable across releases) seeded with SHA-256 of the job seed and
//! the cell index, and only its raw `next_u64` words: the mapping from words to choices is
//! written here, so it cannot change under a dependency update.

use std::sync::Arc;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use super::{Library, Part, Template};

/// A template ready to resolve.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    seq: Arc<Seq>,
}

#[derive(Debug, PartialEq)]
struct Seq {
    parts: Vec<CPart>,
    /// Combinations, saturating at `u64::MAX`.
    count: u64,
}

#[derive(Debug, PartialEq)]
enum CPart {
    Text(String),
    Choice(Arc<Choice>),
}

#[derive(Debug, PartialEq)]
struct Choice {
    options: Vec<(f64, Arc<Seq>)>,
    min: usize,
    max: usize,
    joiner: String,
    /// `ways[s][k]`: combinations of `k` picks among options `s..` (each option counted
    /// with its own combinations), for `k <= max`.
    ways: Vec<Vec<u64>>,
    count: u64,
}

/// A resolved template: the text and the choice made at each variant and wildcard, in the
/// order they appear (an outer variant before the ones nested in what it chose).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resolved {
    pub text: String,
    pub choices: Vec<String>,
}

impl Compiled {
    /// `library` must hold every wildcard the template refers to (see [`Library::gather`]).
    pub fn new(template: &Template, library: &Library) -> Compiled {
        let mut cache = std::collections::BTreeMap::new();
        Compiled {
            seq: compile_seq(template, library, &mut cache),
        }
    }

    /// Number of distinct combinations (saturating at `u64::MAX`).
    pub fn count(&self) -> u64 {
        self.seq.count
    }

    /// Combination `index` (`index < count()`) in combinatorial order.
    pub fn nth(&self, index: u64) -> Resolved {
        let mut out = Resolved::default();
        nth_seq(&self.seq, index, &mut out);
        out
    }

    /// A random combination drawn from `rng`.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> Resolved {
        let mut out = Resolved::default();
        sample_seq(&self.seq, rng, &mut out);
        out
    }
}

/// The generator of random-mode cell `cell` of a job with seed `seed`: the same pair always
/// gives the same draws.
pub fn cell_rng(seed: i64, cell: u64) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"sdfarm dynamic prompts v1");
    h.update(seed.to_le_bytes());
    h.update(cell.to_le_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

fn compile_seq(
    t: &Template,
    lib: &Library,
    cache: &mut std::collections::BTreeMap<String, Arc<Choice>>,
) -> Arc<Seq> {
    let mut parts = Vec::with_capacity(t.parts.len());
    let mut count = 1u64;
    for part in &t.parts {
        match part {
            Part::Text(s) => parts.push(CPart::Text(s.clone())),
            Part::Variant(v) => {
                let options = v
                    .options
                    .iter()
                    .map(|o| (o.weight, compile_seq(&o.body, lib, cache)))
                    .collect();
                let c = choice(options, v.min, v.max, v.joiner.clone());
                count = count.saturating_mul(c.count);
                parts.push(CPart::Choice(Arc::new(c)));
            }
            Part::Wildcard(name) => {
                let c = match cache.get(name) {
                    Some(c) => c.clone(),
                    None => {
                        let lines = lib
                            .files
                            .get(name)
                            .expect("the library holds every referenced wildcard");
                        let options = lines
                            .iter()
                            .map(|l| (1.0, compile_seq(l, lib, cache)))
                            .collect();
                        let c = Arc::new(choice(options, 1, 1, String::new()));
                        cache.insert(name.clone(), c.clone());
                        c
                    }
                };
                count = count.saturating_mul(c.count);
                parts.push(CPart::Choice(c));
            }
        }
    }
    Arc::new(Seq { parts, count })
}

fn choice(options: Vec<(f64, Arc<Seq>)>, min: usize, max: usize, joiner: String) -> Choice {
    let n = options.len();
    // ways[s][k] = sum over the first pick j >= s of count(j) * ways[j + 1][k - 1].
    let mut ways = vec![vec![0u64; max + 1]; n + 1];
    for row in &mut ways {
        row[0] = 1;
    }
    for s in (0..n).rev() {
        for k in 1..=max {
            let take = options[s].1.count.saturating_mul(ways[s + 1][k - 1]);
            ways[s][k] = take.saturating_add(ways[s + 1][k]);
        }
    }
    let count = (min..=max).fold(0u64, |acc, k| acc.saturating_add(ways[0][k]));
    Choice {
        options,
        min,
        max,
        joiner,
        ways,
        count,
    }
}

fn nth_seq(seq: &Seq, mut index: u64, out: &mut Resolved) {
    // The last part changes fastest: peel digits from the right, then resolve left to right
    // so choices are recorded in reading order.
    let mut digits = vec![0u64; seq.parts.len()];
    for (d, part) in digits.iter_mut().zip(&seq.parts).rev() {
        if let CPart::Choice(c) = part {
            *d = index % c.count;
            index /= c.count;
        }
    }
    for (part, d) in seq.parts.iter().zip(digits) {
        match part {
            CPart::Text(s) => out.text.push_str(s),
            CPart::Choice(c) => nth_choice(c, d, out),
        }
    }
}

/// Records the choice's resolved text in its slot before the choices nested in it.
fn record(out: &mut Resolved, resolve: impl FnOnce(&mut Resolved)) {
    let slot = out.choices.len();
    out.choices.push(String::new());
    let start = out.text.len();
    resolve(out);
    out.choices[slot] = out.text[start..].to_string();
}

fn nth_choice(c: &Choice, mut index: u64, out: &mut Resolved) {
    record(out, |out| {
        let mut k = c.min;
        while k < c.max && index >= c.ways[0][k] {
            index -= c.ways[0][k];
            k += 1;
        }
        // Walk the picks in combinations order: the first pick is the lowest option whose
        // block of combinations holds the index.
        let mut start = 0;
        let mut first = true;
        while k > 0 {
            let mut j = start;
            loop {
                let rest = c.ways[j + 1][k - 1];
                let block = c.options[j].1.count.saturating_mul(rest);
                if index < block {
                    if !first {
                        out.text.push_str(&c.joiner);
                    }
                    first = false;
                    nth_seq(&c.options[j].1, index / rest, out);
                    index %= rest;
                    break;
                }
                index -= block;
                j += 1;
            }
            start = j + 1;
            k -= 1;
        }
    });
}

/// A uniform draw below `n` (`n > 0`): the high word of a 64x64-bit product, as Lemire's
/// method without rejection; the bias is below 2^-40 for any count a sweep can have.
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    ((u128::from(rng.next_u64()) * u128::from(n)) >> 64) as u64
}

/// A uniform draw in [0, 1) with 53 bits.
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn sample_seq(seq: &Seq, rng: &mut ChaCha8Rng, out: &mut Resolved) {
    for part in &seq.parts {
        match part {
            CPart::Text(s) => out.text.push_str(s),
            CPart::Choice(c) => record(out, |out| sample_choice(c, rng, out)),
        }
    }
}

fn sample_choice(c: &Choice, rng: &mut ChaCha8Rng, out: &mut Resolved) {
    let k = c.min + below(rng, (c.max - c.min + 1) as u64) as usize;
    let mut left: Vec<usize> = (0..c.options.len()).collect();
    for n in 0..k {
        let total: f64 = left.iter().map(|&j| c.options[j].0.max(0.0)).sum();
        let pick = if total > 0.0 {
            let mut r = unit(rng) * total;
            let mut at = left.len() - 1;
            for (i, &j) in left.iter().enumerate() {
                let w = c.options[j].0.max(0.0);
                if r < w {
                    at = i;
                    break;
                }
                r -= w;
            }
            at
        } else {
            below(rng, left.len() as u64) as usize
        };
        let j = left.remove(pick);
        if n > 0 {
            out.text.push_str(&c.joiner);
        }
        sample_seq(&c.options[j].1, rng, out);
    }
}
