//! The img2img and hires-fix fields of A1111's infotext: `Denoising strength` in its fixed
//! place, and the `Hires …` entries `StableDiffusionProcessingTxt2Img.init` adds to
//! `extra_generation_params`, in the order it adds them.

use sdfarm_proto::RenderParams;

use super::infotext::{py_float, sampler_info};

/// `Denoising strength`, written when a pass denoises an existing image.
pub(crate) fn denoising_strength(p: &RenderParams) -> Option<String> {
    (hires_active(p) || !p.init_image.is_empty()).then(|| py_float(p.denoising_strength))
}

/// Whether a second pass runs: A1111 drops the hires fix when the target size equals the
/// first pass's.
fn hires_active(p: &RenderParams) -> bool {
    matches!(crate::engine::hires_plan(p, 8), Ok(Some(_)))
}

/// The `Hires …` fields, after the first pass wrote `schedule` as its "Schedule type".
pub(crate) fn hires_fields(p: &RenderParams, schedule: &str) -> Vec<(&'static str, String)> {
    let Ok(Some(plan)) = crate::engine::hires_plan(p, 8) else {
        return Vec::new();
    };
    let mut fields = Vec::new();
    let hr_sampler = match p.hr_sampler_name.as_str() {
        "" | "Use same sampler" => p.sampler_name.as_str(),
        name => name,
    };
    if hr_sampler != p.sampler_name {
        fields.push(("Hires sampler", hr_sampler.to_string()));
    }
    if !p.hr_prompt.is_empty() && p.hr_prompt != p.prompt {
        fields.push(("Hires prompt", p.hr_prompt.clone()));
    }
    if !p.hr_negative_prompt.is_empty() && p.hr_negative_prompt != p.negative_prompt {
        fields.push(("Hires negative prompt", p.hr_negative_prompt.clone()));
    }
    // A1111 records the second pass's schedule when it differs from the first pass's and is
    // one with a function of its own (not the sampler's plain "Automatic").
    let hr_schedule = match p.hr_scheduler.as_str() {
        "" | "Use same scheduler" => p.scheduler.as_str(),
        s => s,
    };
    let hr_label = match hr_schedule {
        "Automatic" => sampler_info(hr_sampler).and_then(|s| s.automatic_schedule),
        s => Some(s),
    };
    if let Some(label) = hr_label.filter(|l| *l != schedule) {
        fields.push(("Hires schedule type", label.to_string()));
    }
    let (key, value) = plan.infotext;
    let value = if key == "Hires upscale" {
        py_float(p.hr_scale)
    } else {
        value
    };
    fields.push((key, value));
    if p.hr_second_pass_steps != 0 {
        fields.push(("Hires steps", p.hr_second_pass_steps.to_string()));
    }
    let upscaler = if p.hr_upscaler.is_empty() {
        "Latent"
    } else {
        &p.hr_upscaler
    };
    fields.push(("Hires upscaler", upscaler.to_string()));
    fields
}
