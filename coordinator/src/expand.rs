//! `SweepSpec` expanded into the ordered list of images to render; pure, no I/O.
//!
//! Seeds follow AUTOMATIC1111's `process_images_inner`: a run is `n_iter` batches of
//! `batch_size` images, image `i` of the whole run gets `seed + i`, and `batch_index` is its
//! place inside its batch. With a variation seed (`subseed_strength > 0`) A1111 keeps the
//! seed fixed and steps the subseed instead; that is reproduced here.
//! A *cell* is one set of parameters. Until X/Y/Z plots arrive a sweep has exactly one.

use rand::Rng;
use sdfarm_proto::RenderParams;
use serde_json::{json, Value};

use crate::spec::SweepSpec;

/// A1111's `get_fixed_seed` draws `random.randrange(4294967294)`: `0 <= seed < 2^32 - 2`.
pub const RANDOM_SEED_BOUND: i64 = 4_294_967_294;

/// One image of a sweep, with everything a worker needs to render it.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedImage {
    /// Position in the whole sweep; also orders output keys.
    pub image_index: u32,
    pub cell_index: u32,
    /// `seed` (and `subseed` when it is in use) are concrete, never -1.
    pub params: RenderParams,
}

/// -1 becomes a random seed in A1111's range; any other seed is kept.
pub fn resolve_seed(seed: i64) -> i64 {
    if seed == -1 {
        rand::rng().random_range(0..RANDOM_SEED_BOUND)
    } else {
        seed
    }
}

/// Number of cells (parameter sets) in the sweep.
pub fn cell_count(_spec: &SweepSpec) -> u64 {
    1
}

pub fn image_count(spec: &SweepSpec) -> u64 {
    cell_count(spec) * u64::from(spec.batch_size) * u64::from(spec.n_iter)
}

/// Seed and subseed of image `i` of a cell, as A1111 assigns them.
fn seeds_of(spec: &SweepSpec, seed: i64, subseed: i64, i: u32) -> (i64, i64) {
    let i = i64::from(i);
    if spec.base.subseed_strength == 0.0 {
        (seed + i, subseed)
    } else {
        (seed, subseed + i)
    }
}

/// The subseed the plan uses. With strength 0 it is never read, so it is pinned to 0 rather
/// than left random: identical renders then carry identical parameters.
fn plan_subseed(spec: &SweepSpec) -> i64 {
    if spec.base.subseed_strength == 0.0 {
        0
    } else {
        // Callers store `SweepSpec::resolved()`, so -1 only reaches here from a caller that
        // skipped it; it is then drawn once for this whole plan.
        resolve_seed(spec.base.subseed)
    }
}

/// Every image of the sweep, in render order, produced lazily: a sweep of a million images
/// is never held in memory. `seed` must already be resolved (see [`resolve_seed`]).
pub fn expand(spec: &SweepSpec, seed: i64) -> Expansion<'_> {
    debug_assert!(seed >= 0, "expand needs a resolved seed, got {seed}");
    Expansion {
        spec,
        seed,
        subseed: plan_subseed(spec),
        next: 0,
        end: spec.batch_size * spec.n_iter,
    }
}

/// The iterator [`expand`] returns; it knows its length and can jump ahead, so paging
/// through a large sweep costs nothing for the skipped images.
#[derive(Debug, Clone)]
pub struct Expansion<'a> {
    spec: &'a SweepSpec,
    seed: i64,
    subseed: i64,
    next: u32,
    end: u32,
}

impl Iterator for Expansion<'_> {
    type Item = PlannedImage;

    fn next(&mut self) -> Option<PlannedImage> {
        if self.next >= self.end {
            return None;
        }
        let i = self.next;
        self.next += 1;
        let (seed, subseed) = seeds_of(self.spec, self.seed, self.subseed, i);
        Some(PlannedImage {
            image_index: i,
            cell_index: 0,
            params: RenderParams {
                seed,
                subseed,
                batch_index: i % self.spec.batch_size,
                ..self.spec.base.clone()
            },
        })
    }

    fn nth(&mut self, n: usize) -> Option<PlannedImage> {
        let skip = u32::try_from(n).unwrap_or(u32::MAX);
        self.next = self.next.saturating_add(skip).min(self.end);
        self.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.end - self.next) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Expansion<'_> {}

/// Object key of an image: stable for a given sweep and seed, so a retried task overwrites
/// its own earlier upload instead of adding a second file.
pub fn output_key(prefix: &str, image_index: u32, seed: i64) -> String {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        format!("{image_index:05}-{seed}.png")
    } else {
        format!("{prefix}/{image_index:05}-{seed}.png")
    }
}

/// A dry-run plan: one JSON object per cell in A1111 API field names, plus `cell` and the
/// `seeds` of all its images (and `subseeds` when a variation seed is used), then a final
/// `{"summary": {"cells", "images", "checkpoints"}}`.
pub fn plan_json_lines(spec: &SweepSpec, seed: i64) -> impl Iterator<Item = Value> + '_ {
    let subseed = plan_subseed(spec);
    let per_cell = spec.batch_size * spec.n_iter;
    let cells = (0..cell_count(spec) as u32).map(move |cell| {
        let p = &spec.base;
        let seeds: Vec<(i64, i64)> = (0..per_cell)
            .map(|i| seeds_of(spec, seed, subseed, i))
            .collect();
        let mut line = json!({
            "cell": cell,
            "prompt": p.prompt,
            "negative_prompt": p.negative_prompt,
            "seed": seed,
            "subseed": subseed,
            "subseed_strength": p.subseed_strength,
            "steps": p.steps,
            "sampler_name": p.sampler_name,
            "scheduler": p.scheduler,
            "cfg_scale": p.cfg_scale,
            "width": p.width,
            "height": p.height,
            "batch_size": spec.batch_size,
            "n_iter": spec.n_iter,
            "model": p.model,
            "rng": p.rng,
            "clip_skip": p.clip_skip,
            "eta": p.eta,
            "seeds": seeds.iter().map(|s| s.0).collect::<Vec<_>>(),
        });
        if p.subseed_strength != 0.0 {
            line["subseeds"] = json!(seeds.iter().map(|s| s.1).collect::<Vec<_>>());
        }
        line
    });
    let summary = json!({
        "summary": {
            "cells": cell_count(spec),
            "images": image_count(spec),
            "checkpoints": [spec.base.model],
        }
    });
    cells.chain(std::iter::once(summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse_sweep, SweepFormat};

    fn spec(extra: &str) -> SweepSpec {
        parse_sweep(
            &format!("model = \"builtin:tiny-sd\"\n{extra}"),
            SweepFormat::Toml,
        )
        .unwrap()
    }

    #[test]
    fn seeds_step_across_batches_like_a1111() {
        let s = spec("batch_size = 3\nn_iter = 2\nseed = 1000");
        let images: Vec<_> = expand(&s, 1000).collect();
        assert_eq!(images.len() as u64, image_count(&s));
        let seeds: Vec<i64> = images.iter().map(|p| p.params.seed).collect();
        assert_eq!(seeds, [1000, 1001, 1002, 1003, 1004, 1005]);
        let batch: Vec<u32> = images.iter().map(|p| p.params.batch_index).collect();
        assert_eq!(batch, [0, 1, 2, 0, 1, 2]);
        let index: Vec<u32> = images.iter().map(|p| p.image_index).collect();
        assert_eq!(index, [0, 1, 2, 3, 4, 5]);
        assert!(images
            .iter()
            .all(|p| p.cell_index == 0 && p.params.subseed == 0));
    }

    #[test]
    fn variation_seed_steps_subseed_and_holds_seed() {
        let s = spec("batch_size = 2\nn_iter = 2\nsubseed = 50\nsubseed_strength = 0.35");
        let got: Vec<(i64, i64)> = expand(&s, 7)
            .map(|p| (p.params.seed, p.params.subseed))
            .collect();
        assert_eq!(got, [(7, 50), (7, 51), (7, 52), (7, 53)]);
    }

    #[test]
    fn expansion_is_lazy() {
        let s = spec("batch_size = 64\nn_iter = 1000000");
        assert_eq!(image_count(&s), 64_000_000);
        let last = expand(&s, 1).nth(64_000_000 - 1).unwrap();
        assert_eq!(last.params.seed, 64_000_000);
        assert_eq!(last.params.batch_index, 63);
    }

    #[test]
    fn random_seed_is_in_a1111_range_and_fixed_seeds_pass_through() {
        for _ in 0..10_000 {
            let s = resolve_seed(-1);
            assert!((0..RANDOM_SEED_BOUND).contains(&s), "{s}");
        }
        let draws: std::collections::HashSet<i64> = (0..100).map(|_| resolve_seed(-1)).collect();
        assert!(draws.len() > 90, "draws should differ");
        assert_eq!(resolve_seed(0), 0);
        assert_eq!(resolve_seed(123), 123);
    }

    #[test]
    fn resolved_spec_has_no_random_seeds() {
        let s = spec("subseed_strength = 0.5").resolved();
        assert!(s.base.seed >= 0 && s.base.subseed >= 0);
        let a: Vec<_> = expand(&s, s.base.seed).collect();
        let b: Vec<_> = expand(&s, s.base.seed).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn output_keys_are_deterministic_and_ordered() {
        assert_eq!(output_key("jobs/abc", 7, 1234), "jobs/abc/00007-1234.png");
        assert_eq!(output_key("jobs/abc/", 7, 1234), "jobs/abc/00007-1234.png");
        assert_eq!(output_key("", 0, 1), "00000-1.png");
        assert!(output_key("p", 2, 9) < output_key("p", 10, 1));
    }

    #[test]
    fn plan_lists_cells_then_summary() {
        let s = spec("prompt = \"a cat\"\nbatch_size = 2\nn_iter = 2\ncfg_scale = 7.5");
        let lines: Vec<Value> = plan_json_lines(&s, 100).collect();
        assert_eq!(lines.len(), 2);
        let cell = &lines[0];
        assert_eq!(cell["cell"], 0);
        assert_eq!(cell["prompt"], "a cat");
        assert_eq!(cell["seed"], 100);
        assert_eq!(cell["seeds"], json!([100, 101, 102, 103]));
        assert_eq!(cell["cfg_scale"], 7.5);
        assert_eq!(cell["sampler_name"], "Euler");
        assert_eq!(cell["scheduler"], "Automatic");
        assert_eq!(cell["n_iter"], 2);
        assert!(cell.get("subseeds").is_none());
        assert_eq!(
            lines[1],
            json!({"summary": {"cells": 1, "images": 4, "checkpoints": ["builtin:tiny-sd"]}})
        );
    }
}
