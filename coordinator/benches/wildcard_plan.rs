//! Plans 10,000-cell wildcard dataset specs (random and combinatorial mode) the way
//! `sdfarm plan --json` does: parse, expand every cell, serialise every line. Prints the
//! seconds of each step; the target is under one second for the whole plan.
//!
//! `cargo bench -p sdfarm-coordinator --bench wildcard_plan`

use std::time::Instant;

use sdfarm_coordinator::expand;
use sdfarm_coordinator::spec::{parse_sweep, SweepFormat};

/// Wildcard files of a realistic size: a few hundred lines each, some with variants.
fn files() -> String {
    let subjects: Vec<String> = (0..300)
        .map(|i| format!("subject number {i} {{standing|sitting|walking}}"))
        .collect();
    let styles: Vec<String> = (0..200).map(|i| format!("style {i}")).collect();
    let places: Vec<String> = (0..150).map(|i| format!("place {i}, __light__")).collect();
    let light = "golden hour\nblue hour\novercast\n{harsh|soft} noon light\n";
    format!(
        "[wildcards.files]\nsubject = '''\n{}\n'''\nstyle = '''\n{}\n'''\n\
         \"scenes/place\" = '''\n{}\n'''\nlight = '''\n{light}'''\n",
        subjects.join("\n"),
        styles.join("\n"),
        places.join("\n")
    )
}

fn plan(text: &str) -> (f64, f64, usize, u64) {
    let t0 = Instant::now();
    let spec = parse_sweep(text, SweepFormat::Toml)
        .expect("valid sweep")
        .resolved();
    let parsed = t0.elapsed().as_secs_f64();
    let seed = spec.base.seed;
    let mut bytes = 0usize;
    let mut digest = 0u64;
    for line in expand::plan_json_lines(&spec, seed) {
        let s = line.to_string();
        bytes += s.len();
        digest = digest.rotate_left(5) ^ s.len() as u64 ^ u64::from(s.as_bytes()[s.len() / 2]);
    }
    (parsed, t0.elapsed().as_secs_f64(), bytes, digest)
}

fn main() {
    let random = format!(
        "model = \"builtin:tiny-sd\"\nseed = 5\n\
         prompt = \"a photo of __subject__ in __scenes/place__, __style__, \
         {{2$$ and $$red|green|blue|white}}, {{0.2::rare|common}} detail\"\n\
         negative_prompt = \"{{blurry|low quality|jpeg artifacts}}\"\n\
         [wildcards]\nmode = \"random\"\ncount = 10000\n{}",
        files()
    );
    // 10 x 10 x 10 x 10 combinations.
    let opts = "{a|b|c|d|e|f|g|h|i|j}";
    let combinatorial = format!(
        "model = \"builtin:tiny-sd\"\nseed = 5\nprompt = \"{opts} {opts}, {opts} {opts}\"\n\
         [wildcards]\nmode = \"combinatorial\"\n"
    );
    for (name, text) in [("random", &random), ("combinatorial", &combinatorial)] {
        let (parsed, total, bytes, digest) = plan(text);
        let (_, again, _, digest2) = plan(text);
        assert_eq!(digest, digest2, "the same spec plans the same lines");
        println!(
            "wildcard plan, {name} mode, 10,000 cells: parse {:.4} s, whole plan {:.3} s \
             (second run {:.3} s), {:.1} MB of JSON lines",
            parsed,
            total,
            again,
            bytes as f64 / 1e6
        );
    }
}
