//! Expansion of plain sweeps: seeds, batches, laziness and plan lines.

use super::*;
use crate::spec::{parse_sweep, SweepFormat};
use serde_json::{json, Value};

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
        json!({"summary": {
            "cells": 1, "images": 4, "images_per_cell": 4, "checkpoints": ["builtin:tiny-sd"],
            "images_per_checkpoint": {"builtin:tiny-sd": 4}, "checkpoint_switches": 0
        }})
    );
}
