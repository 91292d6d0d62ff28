//! A1111's "Seed resize from" (`ImageRNG.first` with `seed_resize_from_w/h`): the seed's
//! noise made at the source size is pasted centred into the image generator's first draw.
//! Checked by hand against the pasting rule `d = (target - source) // 2` for growing,
//! shrinking (cropping) and odd differences, with both noise sources and a variation seed,
//! and through a render.

use sdfarm_proto::RenderParams;
use sdfarm_worker::engine::noise::{initial_noise_resized, paste_span, slerp, NoiseSource};
use sdfarm_worker::engine::{Engine, EngineError};
use sdfarm_worker::models::{ModelResolver, BUILTIN_TINY};

fn fresh(rng: &str, seed: i64, numel: usize) -> Vec<f32> {
    NoiseSource::new(rng, seed).unwrap().randn(numel)
}

#[test]
fn paste_spans_follow_a1111_by_hand() {
    // target 10, source 6: d = 2, target [2, 8) gets source [0, 6).
    assert_eq!(paste_span(10, 6), (2, 0, 6));
    // target 11, source 6: d = 5 // 2 = 2.
    assert_eq!(paste_span(11, 6), (2, 0, 6));
    // target 8, source 11: d = -3 // 2 = -2 (floor), length 11 - 4 = 7: target [0, 7) gets
    // source [2, 9); the last target column keeps the image's own noise.
    assert_eq!(paste_span(8, 11), (0, 2, 7));
    // target 8, source 12: d = -2, length 8: source [2, 10) fills the whole target.
    assert_eq!(paste_span(8, 12), (0, 2, 8));
    assert_eq!(paste_span(8, 8), (0, 0, 8));
}

/// Expected noise, written out from A1111's slicing
/// `x[:, ty:ty+h, tx:tx+w] = noise[:, dy:dy+h, dx:dx+w]` with the spans given by hand.
#[allow(clippy::too_many_arguments)]
fn pasted(
    own: &[f32],
    small: &[f32],
    c: usize,
    (h, w): (usize, usize),
    (sh, sw): (usize, usize),
    (ty, sy, rows): (usize, usize, usize),
    (tx, sx, cols): (usize, usize, usize),
) -> Vec<f32> {
    let mut x = own.to_vec();
    for ci in 0..c {
        for r in 0..rows {
            for col in 0..cols {
                x[(ci * h + ty + r) * w + tx + col] = small[(ci * sh + sy + r) * sw + sx + col];
            }
        }
    }
    x
}

#[test]
fn noise_is_the_source_size_noise_pasted_centred() {
    // (target h, w), (source h, w), row span, column span — spans computed by hand.
    let cases = [
        ((6, 10), (4, 6), (1, 0, 4), (2, 0, 6)),
        ((6, 8), (9, 11), (0, 2, 5), (0, 2, 7)),
        ((5, 8), (4, 12), (0, 0, 4), (0, 2, 8)),
    ];
    for rng in ["CPU", "NV"] {
        for &((h, w), (sh, sw), rows, cols) in &cases {
            let c = 4;
            let seed = 1234;
            let mut source = NoiseSource::new(rng, seed).unwrap();
            let got =
                initial_noise_resized(&mut source, rng, seed, 0, 0.0, [c, h, w], Some([sh, sw]))
                    .unwrap();
            // The image generator's first draw at the full size, the seed's noise at the
            // source size from a fresh generator.
            let own = fresh(rng, seed, c * h * w);
            let small = fresh(rng, seed, c * sh * sw);
            let want = pasted(&own, &small, c, (h, w), (sh, sw), rows, cols);
            assert_eq!(got, want, "{rng} {h}x{w} from {sh}x{sw}");
            // The generator continues after one full-size draw (ancestral noise).
            let mut again = NoiseSource::new(rng, seed).unwrap();
            again.randn(c * h * w);
            assert_eq!(
                source.randn(16),
                again.randn(16),
                "{rng}: generator position"
            );
        }
    }
}

#[test]
fn variation_seed_is_blended_at_the_source_size() {
    let (c, h, w, sh, sw) = (4, 6, 10, 4, 6);
    let (seed, subseed, strength) = (7, 99, 0.3);
    let mut source = NoiseSource::new("CPU", seed).unwrap();
    let got = initial_noise_resized(
        &mut source,
        "CPU",
        seed,
        subseed,
        strength,
        [c, h, w],
        Some([sh, sw]),
    )
    .unwrap();
    let small = slerp(
        strength,
        &fresh("CPU", seed, c * sh * sw),
        &fresh("CPU", subseed, c * sh * sw),
        [c, sh, sw],
    );
    let own = fresh("CPU", seed, c * h * w);
    let want = pasted(&own, &small, c, (h, w), (sh, sw), (1, 0, 4), (2, 0, 6));
    assert_eq!(got, want);
}

#[test]
fn same_size_is_no_resize_and_empty_source_is_refused() {
    let mut a = NoiseSource::new("NV", 5).unwrap();
    let mut b = NoiseSource::new("NV", 5).unwrap();
    let resized = initial_noise_resized(&mut a, "NV", 5, 0, 0.0, [4, 6, 6], Some([6, 6])).unwrap();
    let plain = initial_noise_resized(&mut b, "NV", 5, 0, 0.0, [4, 6, 6], None).unwrap();
    assert_eq!(resized, plain);
    assert_eq!(plain, fresh("NV", 5, 4 * 36));
    let err: EngineError =
        initial_noise_resized(&mut a, "NV", 5, 0, 0.0, [4, 6, 6], Some([0, 6])).unwrap_err();
    assert!(err.to_string().contains("seed_resize_from"), "{err}");
}

#[test]
fn renders_with_seed_resize() {
    let cache = tempfile::tempdir().unwrap();
    let engine = Engine::new(ModelResolver::new(cache.path()));
    let base = RenderParams {
        prompt: "a photo of a cat".into(),
        seed: 9,
        steps: 3,
        sampler_name: "Euler".into(),
        scheduler: "Automatic".into(),
        cfg_scale: 7.0,
        width: 32,
        height: 32,
        model: BUILTIN_TINY.into(),
        rng: "NV".into(),
        ..Default::default()
    };
    let plain = engine.render(&base, &mut |_, _| true).unwrap();
    let same = RenderParams {
        seed_resize_from_w: 32,
        seed_resize_from_h: 32,
        ..base.clone()
    };
    assert_eq!(
        plain.rgb,
        engine.render(&same, &mut |_, _| true).unwrap().rgb
    );
    let one_side = RenderParams {
        seed_resize_from_w: 48,
        ..base.clone()
    };
    assert_eq!(
        plain.rgb,
        engine.render(&one_side, &mut |_, _| true).unwrap().rgb,
        "A1111 resizes only when both sides are set"
    );
    let resized = RenderParams {
        seed_resize_from_w: 48,
        seed_resize_from_h: 16,
        ..base.clone()
    };
    let a = engine.render(&resized, &mut |_, _| true).unwrap();
    assert_ne!(a.rgb, plain.rgb);
    assert_eq!(
        a.rgb,
        engine.render(&resized, &mut |_, _| true).unwrap().rgb
    );
}
