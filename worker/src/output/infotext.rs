//! The AUTOMATIC1111 infotext written into every PNG: the text A1111's `create_infotext`
//! (v1.10.1 `modules/processing.py`) produces for the same render, so "PNG Info" and
//! "Send to txt2img" work on sdfarm images.
//!
//! Only what determines the pixels goes in: no job id, worker or time, so identical renders
//! are byte-identical files. The one addition is `Version: sdfarm <version>` where A1111
//! writes its own git tag.

use sdfarm_proto::RenderParams;

use super::hires_info;

/// What A1111 writes for a sampler beyond its name.
pub(crate) struct SamplerInfo {
    pub name: &'static str,
    /// The schedule type "Automatic" resolves to; A1111's k-diffusion sampler records that
    /// label in place of "Automatic" (`sd_samplers_kdiffusion.get_sigmas`).
    pub automatic_schedule: Option<&'static str>,
    /// Samplers whose function takes `eta`: the infotext field and the default below which
    /// nothing is written (`sd_samplers_common.Sampler.initialize`).
    pub eta: Option<(&'static str, f32)>,
}

const ETA: Option<(&str, f32)> = Some(("Eta", 1.0));
const ETA_DDIM: Option<(&str, f32)> = Some(("Eta DDIM", 0.0));

const fn s(
    name: &'static str,
    automatic_schedule: Option<&'static str>,
    eta: Option<(&'static str, f32)>,
) -> SamplerInfo {
    SamplerInfo {
        name,
        automatic_schedule,
        eta,
    }
}

pub(crate) const SAMPLERS: &[SamplerInfo] = &[
    s("DPM++ 2M", Some("Karras"), None),
    s("DPM++ SDE", Some("Karras"), ETA),
    s("DPM++ 2M SDE", Some("Exponential"), ETA),
    s("DPM++ 2M SDE Heun", Some("Exponential"), ETA),
    s("DPM++ 2S a", Some("Karras"), ETA),
    s("DPM++ 3M SDE", Some("Exponential"), ETA),
    s("Euler a", None, ETA),
    s("Euler", None, None),
    s("LMS", None, None),
    s("Heun", None, None),
    s("DPM2", Some("Karras"), None),
    s("DPM2 a", Some("Karras"), ETA),
    s("DPM fast", None, ETA),
    s("DPM adaptive", None, ETA),
    s("Restart", Some("Karras"), None),
    s("DDIM", None, ETA_DDIM),
    s("DDIM CFG++", None, ETA_DDIM),
    s("PLMS", None, None),
    s("UniPC", None, None),
    s("LCM", None, None),
];

pub(crate) fn sampler_info(name: &str) -> Option<&'static SamplerInfo> {
    SAMPLERS.iter().find(|s| s.name == name)
}

/// The eta a sampler uses when none is given: A1111's `eta_ddim` (0) for the DDIM family,
/// `eta_ancestral` (1) for the rest.
pub(crate) fn default_eta(sampler: &str) -> f32 {
    match sampler_info(sampler).and_then(|s| s.eta) {
        Some((_, default)) => default,
        None if matches!(sampler, "PLMS" | "UniPC") => 0.0,
        None => 1.0,
    }
}

/// A1111's infotext for one image: prompt, `Negative prompt:` line when there is one, then
/// the generation parameters in A1111's order with its formatting (`CFG scale: 7.0`).
/// `model_name` is the checkpoint's name without extension, `model_hash` its 10-digit
/// short hash; either is left out when empty.
pub fn infotext(params: &RenderParams, model_name: &str, model_hash: &str) -> String {
    infotext_with_vae(params, model_name, model_hash, "", "")
}

/// [`infotext`] plus A1111's `VAE hash` and `VAE` (the override's 10-digit short hash and file
/// name with extension), each left out when empty, as A1111 does without an override.
pub fn infotext_with_vae(
    params: &RenderParams,
    model_name: &str,
    model_hash: &str,
    vae_name: &str,
    vae_hash: &str,
) -> String {
    infotext_with_networks(params, model_name, model_hash, vae_name, vae_hash, "", "")
}

/// [`infotext_with_vae`] plus A1111's `Lora hashes` and `TI hashes` (`name: hash12, …`),
/// each left out when empty. A1111 adds them to `extra_generation_params` after the hires
/// fields and before the sampler's Eta, so they are written there.
pub fn infotext_with_networks(
    params: &RenderParams,
    model_name: &str,
    model_hash: &str,
    vae_name: &str,
    vae_hash: &str,
    lora_hashes: &str,
    ti_hashes: &str,
) -> String {
    let p = params;
    let sampler = sampler_info(&p.sampler_name);
    let schedule = match sampler.and_then(|s| s.automatic_schedule) {
        Some(label) if p.scheduler == "Automatic" => label,
        _ => p.scheduler.as_str(),
    };
    let varied = p.subseed_strength != 0.0;
    let eta = sampler
        .and_then(|s| s.eta)
        .filter(|(_, default)| p.eta != *default)
        .map(|(field, _)| (field, py_float(p.eta)));
    let version = format!("sdfarm {}", env!("CARGO_PKG_VERSION"));

    let fields: [(&str, Option<String>); 17] = [
        ("Steps", Some(p.steps.to_string())),
        ("Sampler", Some(p.sampler_name.clone())),
        ("Schedule type", Some(schedule.to_string())),
        ("CFG scale", Some(py_float(p.cfg_scale))),
        ("Seed", Some(p.seed.to_string())),
        ("Size", Some(format!("{}x{}", p.width, p.height))),
        (
            "Model hash",
            Some(model_hash.to_string()).filter(|h| !h.is_empty()),
        ),
        (
            "Model",
            Some(model_name.to_string()).filter(|m| !m.is_empty()),
        ),
        (
            "VAE hash",
            Some(vae_hash.to_string()).filter(|h| !h.is_empty()),
        ),
        ("VAE", Some(vae_name.to_string()).filter(|n| !n.is_empty())),
        ("Variation seed", varied.then(|| p.subseed.to_string())),
        (
            "Variation seed strength",
            varied.then(|| py_float(p.subseed_strength)),
        ),
        (
            "Seed resize from",
            (p.seed_resize_from_w > 0 && p.seed_resize_from_h > 0)
                .then(|| format!("{}x{}", p.seed_resize_from_w, p.seed_resize_from_h)),
        ),
        ("Denoising strength", hires_info::denoising_strength(p)),
        (
            "Clip skip",
            (p.clip_skip > 1).then(|| p.clip_skip.to_string()),
        ),
        // A1111 omits its default, GPU noise; sdfarm never uses it, so RNG is always written.
        ("RNG", Some(p.rng.clone()).filter(|r| r != "GPU")),
        ("Version", Some(version)),
    ];
    let mut parts = Vec::new();
    for (key, value) in fields {
        if key == "Version" {
            // `extra_generation_params` sit just before Version: the hires fix's, added when
            // processing starts, the networks' hashes, added before sampling, then the
            // sampler's Eta, added when it runs.
            for (field, value) in hires_info::hires_fields(p, schedule) {
                parts.push(format!("{field}: {}", quote(&value)));
            }
            for (field, value) in [("Lora hashes", lora_hashes), ("TI hashes", ti_hashes)] {
                if !value.is_empty() {
                    parts.push(format!("{field}: {}", quote(value)));
                }
            }
            if let Some((field, value)) = &eta {
                parts.push(format!("{field}: {}", quote(value)));
            }
        }
        if let Some(value) = value {
            // A1111 writes a bare key when key and value are equal, e.g. a flag "Tiling".
            parts.push(if value == key {
                value
            } else {
                format!("{key}: {}", quote(&value))
            });
        }
    }

    let negative = if p.negative_prompt.is_empty() {
        String::new()
    } else {
        format!("\nNegative prompt: {}", p.negative_prompt)
    };
    let text = format!("{}{negative}\n{}", p.prompt, parts.join(", "));
    py_strip(&text).to_string()
}

/// A1111's `quote`: a value with `,`, `:` or a newline is written as a JSON string so the
/// parser's key/value regex can find its end. sdfarm also quotes a value that starts with
/// `"`, which A1111 would unquote (and so alter) when reading it back.
pub fn quote(value: &str) -> String {
    if value.contains([',', '\n', ':']) || value.starts_with('"') {
        serde_json::to_string(value).expect("strings always serialise")
    } else {
        value.to_string()
    }
}

/// Python's `repr(float)` of an f32, which is what A1111 prints for float settings: always a
/// decimal point (`7.0`), the shortest digits that read back, exponent form outside
/// `1e-4 <= |x| < 1e16` (`1e-05`). The f32's own shortest digits are used, so a `7.1` sent
/// through protobuf prints as `7.1`, as it did in the sweep.
pub fn py_float(v: f32) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    let magnitude = v.abs();
    if magnitude != 0.0 && !(1e-4..1e16).contains(&magnitude) {
        let text = format!("{v:e}");
        let (mantissa, exponent) = text.split_once('e').expect("{:e} has an exponent");
        let (sign, digits) = match exponent.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exponent),
        };
        return format!("{mantissa}e{sign}{digits:0>2}");
    }
    let text = v.to_string();
    if text.contains('.') {
        text
    } else {
        format!("{text}.0")
    }
}

/// Python's `str.isspace`, which `strip()` uses: Unicode whitespace plus the ASCII
/// information separators 0x1C-0x1F.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> RenderParams {
        RenderParams {
            prompt: "a photo of a cat".into(),
            seed: 1234,
            steps: 20,
            sampler_name: "Euler".into(),
            scheduler: "Automatic".into(),
            cfg_scale: 7.0,
            width: 512,
            height: 512,
            model: "builtin:tiny-sd".into(),
            rng: "CPU".into(),
            clip_skip: 1,
            eta: 1.0,
            ..Default::default()
        }
    }

    fn version() -> String {
        format!("Version: sdfarm {}", env!("CARGO_PKG_VERSION"))
    }

    #[test]
    fn default_txt2img_line() {
        assert_eq!(
            infotext(&params(), "tiny-sd", "0123456789"),
            format!(
                "a photo of a cat\nSteps: 20, Sampler: Euler, Schedule type: Automatic, \
                 CFG scale: 7.0, Seed: 1234, Size: 512x512, Model hash: 0123456789, \
                 Model: tiny-sd, RNG: CPU, {}",
                version()
            )
        );
    }

    /// The A1111-written cases of `infotext.json`, with sdfarm's Version in place of A1111's.
    #[test]
    fn matches_a1111_writer() {
        let mut p = params();
        p.sampler_name = "DPM++ 2M".into();
        p.rng = "GPU".into();
        let a1111 = "a photo of a cat\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, \
            CFG scale: 7.0, Seed: 1234, Size: 512x512, Model hash: 6ce0161689, \
            Model: v1-5-pruned-emaonly, Version: v1.10.1";
        let ours = infotext(&p, "v1-5-pruned-emaonly", "6ce0161689");
        assert_eq!(ours, a1111.replace("Version: v1.10.1", &version()));

        p.prompt = "p2".into();
        p.seed = 102;
        p.rng = "NV".into();
        let a1111 = "p2\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, \
            Seed: 102, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, \
            RNG: NV, Version: v1.10.1";
        let ours = infotext(&p, "v1-5-pruned-emaonly", "6ce0161689");
        assert_eq!(ours, a1111.replace("Version: v1.10.1", &version()));

        let mut p = params();
        p.sampler_name = "DPM++ SDE".into();
        p.seed = 42;
        p.subseed = 4242;
        p.subseed_strength = 0.35;
        p.seed_resize_from_w = 640;
        p.seed_resize_from_h = 448;
        p.rng = "GPU".into();
        let a1111 = "a photo of a cat\nSteps: 20, Sampler: DPM++ SDE, Schedule type: Karras, \
            CFG scale: 7.0, Seed: 42, Size: 512x512, Model hash: 6ce0161689, \
            Model: v1-5-pruned-emaonly, Variation seed: 4242, Variation seed strength: 0.35, \
            Seed resize from: 640x448, Version: v1.10.1";
        let ours = infotext(&p, "v1-5-pruned-emaonly", "6ce0161689");
        assert_eq!(ours, a1111.replace("Version: v1.10.1", &version()));
    }

    #[test]
    fn negative_prompt_clip_skip_and_eta() {
        let mut p = params();
        p.negative_prompt = "blurry, lowres".into();
        p.clip_skip = 2;
        p.sampler_name = "Euler a".into();
        p.eta = 0.5;
        p.cfg_scale = 7.5;
        let text = infotext(&p, "", "");
        assert_eq!(
            text,
            format!(
                "a photo of a cat\nNegative prompt: blurry, lowres\nSteps: 20, Sampler: Euler a, \
                 Schedule type: Automatic, CFG scale: 7.5, Seed: 1234, Size: 512x512, \
                 Clip skip: 2, RNG: CPU, Eta: 0.5, {}",
                version()
            )
        );
        // Eta at the sampler's default, or for a sampler without eta, is not written.
        p.eta = 1.0;
        assert!(!infotext(&p, "", "").contains("Eta"));
        p.sampler_name = "Euler".into();
        p.eta = 0.3;
        assert!(!infotext(&p, "", "").contains("Eta"));
        p.sampler_name = "DDIM".into();
        assert!(infotext(&p, "", "").contains(", Eta DDIM: 0.3,"));
    }

    #[test]
    fn values_with_separators_are_quoted() {
        let text = infotext(&params(), "my, model: v2", "");
        assert!(text.contains(", Model: \"my, model: v2\","), "{text}");
        assert_eq!(quote("plain"), "plain");
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        assert_eq!(quote("\"x"), "\"\\\"x\"");
        assert_eq!(
            quote("é, ü"),
            "\"é, ü\"",
            "non-ASCII stays as is (ensure_ascii=False)"
        );
    }

    #[test]
    fn floats_print_like_python() {
        assert_eq!(py_float(7.0), "7.0");
        assert_eq!(py_float(7.5), "7.5");
        assert_eq!(py_float(7.1), "7.1");
        assert_eq!(py_float(0.35), "0.35");
        assert_eq!(py_float(0.0), "0.0");
        assert_eq!(py_float(-1.25), "-1.25");
        assert_eq!(py_float(0.0001), "0.0001");
        assert_eq!(py_float(0.00001), "1e-05");
        assert_eq!(py_float(1e16), "1e+16");
        assert_eq!(py_float(1.5e-7), "1.5e-07");
        assert_eq!(py_float(123456.0), "123456.0");
    }

    #[test]
    fn prompt_whitespace_is_stripped_like_python() {
        let mut p = params();
        p.prompt = "\x1c  spaced ".into();
        assert!(infotext(&p, "", "").starts_with("spaced \nSteps: 20"));
    }
}
