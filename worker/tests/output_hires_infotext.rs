//! Hires-fix and img2img fields in the infotext: A1111's names, order and omissions, and
//! the parameters they read back to.

use sdfarm_proto::RenderParams;
use sdfarm_worker::output::{infotext, parse_infotext};

fn hires() -> RenderParams {
    RenderParams {
        prompt: "a red barn".into(),
        negative_prompt: "fog".into(),
        seed: 5,
        steps: 12,
        sampler_name: "Euler a".into(),
        scheduler: "Automatic".into(),
        cfg_scale: 7.0,
        width: 512,
        height: 512,
        rng: "CPU".into(),
        clip_skip: 1,
        eta: 1.0,
        enable_hr: true,
        hr_scale: 1.5,
        hr_second_pass_steps: 8,
        hr_upscaler: "Latent (bicubic antialiased)".into(),
        hr_sampler_name: "DPM++ 2M".into(),
        hr_prompt: "a red barn, detailed".into(),
        denoising_strength: 0.55,
        ..Default::default()
    }
}

#[test]
fn hires_fields_follow_a1111s_order() {
    let text = infotext(&hires(), "tiny-sd", "");
    let last = text.lines().last().unwrap();
    assert!(
        last.contains(
            "Seed: 5, Size: 512x512, Model: tiny-sd, Denoising strength: 0.55, RNG: CPU, \
             Hires sampler: DPM++ 2M, Hires prompt: \"a red barn, detailed\", \
             Hires schedule type: Karras, Hires upscale: 1.5, Hires steps: 8, \
             Hires upscaler: Latent (bicubic antialiased), Version: sdfarm"
        ),
        "{last}"
    );
}

#[test]
fn hires_fields_read_back() {
    let p = hires();
    let back = parse_infotext(&infotext(&p, "tiny-sd", "")).to_render_params();
    assert!(back.enable_hr);
    assert_eq!(back.hr_scale, p.hr_scale);
    assert_eq!((back.hr_resize_x, back.hr_resize_y), (0, 0));
    assert_eq!(back.hr_second_pass_steps, p.hr_second_pass_steps);
    assert_eq!(back.hr_upscaler, p.hr_upscaler);
    assert_eq!(back.hr_sampler_name, p.hr_sampler_name);
    assert_eq!(back.hr_scheduler, "Karras");
    assert_eq!(back.hr_prompt, p.hr_prompt);
    assert_eq!(back.hr_negative_prompt, "");
    assert_eq!(back.denoising_strength, p.denoising_strength);

    let resized = RenderParams {
        hr_scale: 2.0,
        hr_resize_x: 768,
        hr_resize_y: 640,
        hr_sampler_name: String::new(),
        hr_prompt: String::new(),
        ..hires()
    };
    let text = infotext(&resized, "", "");
    assert!(text.contains("Hires resize: 768x640"), "{text}");
    assert!(!text.contains("Hires sampler") && !text.contains("Hires upscale:"));
    let back = parse_infotext(&text).to_render_params();
    assert!(back.enable_hr);
    assert_eq!((back.hr_resize_x, back.hr_resize_y), (768, 640));
    assert_eq!(back.hr_sampler_name, "");
}

#[test]
fn no_second_pass_writes_no_hires_fields() {
    // A1111 drops the hires fix when the target size is the first pass's.
    let same_size = RenderParams {
        hr_scale: 1.0,
        ..hires()
    };
    let text = infotext(&same_size, "", "");
    assert!(
        !text.contains("Hires") && !text.contains("Denoising"),
        "{text}"
    );
    assert!(!parse_infotext(&text).to_render_params().enable_hr);
}

#[test]
fn img2img_writes_denoising_strength() {
    let p = RenderParams {
        enable_hr: false,
        init_image: "s3://bucket/in.png".into(),
        denoising_strength: 0.75,
        ..hires()
    };
    let text = infotext(&p, "", "");
    assert!(
        text.contains("Denoising strength: 0.75, RNG: CPU"),
        "{text}"
    );
    assert!(!text.contains("Hires"));
    let back = parse_infotext(&text).to_render_params();
    assert_eq!(back.denoising_strength, 0.75);
    assert!(!back.enable_hr);
}
