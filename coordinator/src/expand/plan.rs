//! `sdfarm plan`: the cells as JSON lines in A1111 API field names, and the summary that is
//! printed before anything is stored (count, images per checkpoint, checkpoint switches).

use serde_json::{json, Map, Value};

use super::cells::Cells;
use crate::spec::SweepSpec;

/// What a sweep will cost, counted without building its cells.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanSummary {
    pub cells: u64,
    pub images: u64,
    pub images_per_cell: u32,
    /// Checkpoints in the order they are first used, with their image counts.
    pub images_per_checkpoint: Vec<(String, u64)>,
    /// Times consecutive cells (in processing order) change checkpoint: model loads a
    /// single worker rendering the sweep in order would pay beyond the first.
    pub checkpoint_switches: u64,
}

pub fn plan_summary(spec: &SweepSpec) -> PlanSummary {
    let cells = Cells::new(spec, 0);
    let per_cell = u64::from(cells.images_per_cell());
    let mut per_model: Vec<(String, u64)> = Vec::new();
    let mut switches = 0;
    let mut last: Option<&str> = None;
    for pos in 0..cells.len() {
        let model = cells.model_of(pos);
        if last.is_some_and(|l| l != model) {
            switches += 1;
        }
        last = Some(model);
        match per_model.iter_mut().find(|(m, _)| m == model) {
            Some((_, n)) => *n += per_cell,
            None => per_model.push((model.to_string(), per_cell)),
        }
    }
    PlanSummary {
        cells: cells.len(),
        images: cells.len() * per_cell,
        images_per_cell: cells.images_per_cell(),
        images_per_checkpoint: per_model,
        checkpoint_switches: switches,
    }
}

impl PlanSummary {
    pub fn to_json(&self) -> Value {
        let per: Map<String, Value> = self
            .images_per_checkpoint
            .iter()
            .map(|(m, n)| (m.clone(), json!(n)))
            .collect();
        json!({
            "summary": {
                "cells": self.cells,
                "images": self.images,
                "images_per_cell": self.images_per_cell,
                "checkpoints": self.images_per_checkpoint.iter().map(|(m, _)| m).collect::<Vec<_>>(),
                "images_per_checkpoint": per,
                "checkpoint_switches": self.checkpoint_switches,
            }
        })
    }
}

/// A dry-run plan: one JSON object per cell in processing order, in A1111 API field names
/// plus `cell` (grid index), `x`/`y`/`z` (axis positions) and the `seeds` of its images
/// (and `subseeds` when a variation seed is used), then a final `{"summary": …}`. With
/// `[wildcards]`, `prompt` is the resolved text and `prompt_template`,
/// `negative_prompt_template` and `prompt_choices` (the prompt's, then the negative
/// prompt's) say how it was made.
/// Fields of axes left at their defaults are omitted.
pub fn plan_json_lines(spec: &SweepSpec, seed: i64) -> impl Iterator<Item = Value> + '_ {
    let cells = Cells::new(spec, seed);
    let per_cell = cells.images_per_cell();
    let n_iter = match spec.prompt_matrix {
        Some(_) => cells.len().div_ceil(u64::from(spec.batch_size)),
        None => u64::from(spec.n_iter),
    };
    let lines = (0..cells.len()).map(move |pos| {
        let cell = cells.cell(pos);
        let p = &cell.params;
        let images: Vec<_> = (0..per_cell).map(|k| cells.image(&cell, k)).collect();
        let mut line = json!({
            "cell": cell.index,
            "prompt": p.prompt,
            "negative_prompt": p.negative_prompt,
            "seed": p.seed,
            "subseed": p.subseed,
            "subseed_strength": p.subseed_strength,
            "steps": p.steps,
            "sampler_name": p.sampler_name,
            "scheduler": p.scheduler,
            "cfg_scale": p.cfg_scale,
            "width": p.width,
            "height": p.height,
            "batch_size": spec.batch_size,
            "n_iter": n_iter,
            "model": p.model,
            "rng": p.rng,
            "clip_skip": p.clip_skip,
            "eta": p.eta,
            "seeds": images.iter().map(|i| i.seed).collect::<Vec<_>>(),
        });
        if let Some(w) = &spec.wildcards {
            line["prompt_template"] = json!(w.prompt_template);
            line["negative_prompt_template"] = json!(w.negative_template);
            line["prompt_choices"] = json!(p.prompt_choices);
        }
        if let Some([x, y, z]) = cell.coords {
            line["x"] = json!(x);
            line["y"] = json!(y);
            line["z"] = json!(z);
        }
        if p.seed_resize_from_w > 0 {
            line["seed_resize_from_w"] = json!(p.seed_resize_from_w);
            line["seed_resize_from_h"] = json!(p.seed_resize_from_h);
        }
        if p.subseed_strength != 0.0 {
            line["subseeds"] = json!(images.iter().map(|i| i.subseed).collect::<Vec<_>>());
        }
        let floats = [
            ("s_churn", p.s_churn),
            ("s_tmin", p.s_tmin),
            ("s_tmax", p.s_tmax),
            ("s_noise", p.s_noise),
            ("sigma_min", p.sigma_min),
            ("sigma_max", p.sigma_max),
            ("rho", p.rho),
            ("denoising_strength", p.denoising_strength),
            ("hr_scale", p.hr_scale),
            ("refiner_switch_at", p.refiner_switch_at),
            ("initial_noise_multiplier", p.initial_noise_multiplier),
            ("img2img_extra_noise", p.extra_noise),
        ];
        for (key, v) in floats {
            if v != 0.0 {
                line[key] = json!(v);
            }
        }
        let texts = [
            ("hr_sampler_name", &p.hr_sampler_name),
            ("hr_scheduler", &p.hr_scheduler),
            ("hr_prompt", &p.hr_prompt),
            ("hr_negative_prompt", &p.hr_negative_prompt),
            ("hr_upscaler", &p.hr_upscaler),
            ("init_image", &p.init_image),
            ("sd_vae", &p.vae),
            ("refiner_checkpoint", &p.refiner_checkpoint),
        ];
        for (key, v) in texts {
            if !v.is_empty() {
                line[key] = json!(v);
            }
        }
        if p.enable_hr {
            line["enable_hr"] = json!(true);
        }
        for (key, v) in [
            ("hr_resize_x", p.hr_resize_x),
            ("hr_resize_y", p.hr_resize_y),
        ] {
            if v != 0 {
                line[key] = json!(v);
            }
        }
        if p.hr_second_pass_steps != 0 {
            line["hr_second_pass_steps"] = json!(p.hr_second_pass_steps);
        }
        if p.uni_pc_order != 0 {
            line["uni_pc_order"] = json!(p.uni_pc_order);
        }
        if !p.styles.is_empty() {
            line["styles"] = json!(p.styles);
        }
        line
    });
    lines.chain(std::iter::once_with(move || plan_summary(spec).to_json()))
}
