//! Dynamic prompts and dataset runs through the `sdfarm` binary: `plan --json` shows the
//! resolved prompts and the choices behind them, mistakes are named, and a dataset spec run
//! twice renders only the cells it did not have.

mod common;

use std::path::Path;

use common::{job_dir, sdfarm, write};
use serde_json::Value;

fn wildcard_folder(dir: &Path) {
    std::fs::create_dir_all(dir.join("wild/people")).unwrap();
    write(dir, "wild/color.txt", "# colours\nred\n\nblue\n");
    write(dir, "wild/people/job.txt", "baker\n{old|young} sailor\n");
}

fn plan_lines(sweep: &str) -> Vec<Value> {
    let out = sdfarm(&["plan", sweep, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn plan_json_lists_every_combination_with_its_choices() {
    let dir = tempfile::tempdir().unwrap();
    wildcard_folder(dir.path());
    let sweep = write(
        dir.path(),
        "combo.toml",
        r#"model = "builtin:tiny-sd"
prompt = "a __color__ hat on a __people/job__, {2$$ and $$rain|snow|wind}"
negative_prompt = "{blurry|dark}"
seed = 100
[wildcards]
folder = "wild"
"#,
    );
    let lines = plan_lines(&sweep);
    let (summary, cells) = lines.split_last().unwrap();
    // 2 colours x 3 jobs x 3 weather pairs x 2 negatives.
    assert_eq!(cells.len(), 36);
    assert_eq!(summary["summary"]["cells"], 36);
    let mut prompts = std::collections::BTreeSet::new();
    for (i, cell) in cells.iter().enumerate() {
        let choices: Vec<&str> = cell["prompt_choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let job = choices[1];
        // A job line with a variant records the variant's choice after the line's.
        let (weather, negative) = if job.ends_with("sailor") {
            assert!(job.starts_with(choices[2]), "{choices:?}");
            (choices[3], choices[4])
        } else {
            (choices[2], choices[3])
        };
        assert!(["red", "blue"].contains(&choices[0]), "{choices:?}");
        assert!(weather.contains(" and "), "{choices:?}");
        let want = format!("a {} hat on a {job}, {weather}", choices[0]);
        assert_eq!(cell["prompt"], want.as_str());
        assert_eq!(cell["negative_prompt"], negative);
        assert_eq!(
            cell["prompt_template"],
            "a __color__ hat on a __people/job__, {2$$ and $$rain|snow|wind}"
        );
        assert_eq!(cell["negative_prompt_template"], "{blurry|dark}");
        // Image i of the sweep gets seed + i, as A1111's dynamic-prompts batches do.
        assert_eq!(cell["seeds"][0], 100 + i as i64);
        prompts.insert((want, negative.to_string()));
    }
    assert_eq!(prompts.len(), 36, "every combination once");
}

#[test]
fn random_mode_plans_the_same_choices_every_time() {
    let dir = tempfile::tempdir().unwrap();
    wildcard_folder(dir.path());
    let sweep = write(
        dir.path(),
        "random.json",
        r#"{"model": "builtin:tiny-sd", "prompt": "{0.2::tiny|big} __color__ __people/job__",
            "seed": 7, "wildcards": {"mode": "random", "count": 40, "folder": "wild"}}"#,
    );
    let first = plan_lines(&sweep);
    assert_eq!(first.len(), 41);
    assert_eq!(first, plan_lines(&sweep), "a re-plan draws the same");
    let prompts: Vec<&str> = first[..40]
        .iter()
        .map(|c| c["prompt"].as_str().unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<_> = prompts.iter().collect();
    assert!(distinct.len() > 5, "{prompts:?}");
    let big = prompts.iter().filter(|p| p.starts_with("big ")).count();
    assert!(big > 20, "weight 1 against 0.2: {big} of 40 big");
}

#[test]
fn wildcard_mistakes_are_named() {
    let dir = tempfile::tempdir().unwrap();
    wildcard_folder(dir.path());
    let cases = [
        (
            "prompt = \"a __colour__ hat\"\n[wildcards]\nfolder = \"wild\"\n",
            vec!["__colour__", "colour.txt", "wild"],
        ),
        (
            "prompt = \"a {red|blue hat\"\n[wildcards]\nfolder = \"wild\"\n",
            vec!["`prompt`", "never closed", "character 3"],
        ),
        (
            "prompt = \"a {red|blue} hat\"\n[wildcards]\nmode = \"random\"\ncount = 0\n",
            vec!["wildcards.count", "out of range", "1 to"],
        ),
        (
            "prompt = \"{a|b|c|d|e|f|g|h|i|j} {a|b|c|d|e|f|g|h|i|j} {a|b|c|d|e|f|g|h|i|j} \
             {a|b|c|d|e|f|g|h|i|j} {a|b|c|d|e|f|g|h|i|j} {a|b|c|d|e|f|g|h|i|j} \
             {a|b|c|d|e|f|g|h|i|j}\"\n[wildcards]\n",
            vec!["wildcards.mode", "10000000 prompt combinations", "1000000"],
        ),
    ];
    for (i, (body, wanted)) in cases.iter().enumerate() {
        let sweep = write(
            dir.path(),
            &format!("bad{i}.toml"),
            &format!("model = \"builtin:tiny-sd\"\n{body}"),
        );
        let out = sdfarm(&["plan", &sweep]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{body}");
        for w in wanted {
            assert!(err.contains(w), "{body}: {err:?} lacks {w:?}");
        }
    }
}

fn run(sweep: &str, out: &Path) -> String {
    let o = sdfarm(&["run", sweep, "--out", out.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err
}

fn pngs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png") && !n.starts_with("grid"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_dataset_run_again_renders_only_new_cells() {
    let dir = tempfile::tempdir().unwrap();
    wildcard_folder(dir.path());
    let out = dir.path().join("out");
    let spec = |count: u32| {
        format!(
            r#"dataset = "hats"
model = "builtin:tiny-sd"
prompt = "a __color__ hat on a __people/job__"
steps = 2
width = 32
height = 32
[wildcards]
mode = "random"
count = {count}
folder = "wild"
"#
        )
    };
    let sweep = write(dir.path(), "hats.toml", &spec(3));
    let first = run(&sweep, &out);
    assert!(first.contains("3 new images, 0 already"), "{first}");
    let folder = job_dir(&out);
    let rendered = pngs(&folder);
    assert_eq!(rendered.len(), 3);
    let stamps: Vec<_> = rendered
        .iter()
        .map(|n| {
            std::fs::metadata(folder.join(n))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();

    let again = run(&sweep, &out);
    assert!(again.contains("0 new images, 3 already"), "{again}");
    assert_eq!(pngs(&folder), rendered, "nothing rendered twice");

    write(dir.path(), "hats.toml", &spec(5));
    let more = run(&sweep, &out);
    assert!(more.contains("2 new images, 3 already"), "{more}");
    let now = pngs(&folder);
    assert_eq!(now.len(), 5);
    for (n, stamp) in rendered.iter().zip(&stamps) {
        let m = std::fs::metadata(folder.join(n))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(&m, stamp, "{n} was not rendered again");
    }
    // The new images record the resolved prompt the plan shows for them.
    let plan = plan_lines(&sweep);
    for (i, name) in now.iter().enumerate() {
        assert!(name.starts_with(&format!("{i:05}-")), "{name}");
        let info = sdfarm(&["info", folder.join(name).to_str().unwrap(), "--json"]);
        let info: Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["Prompt"], plan[i]["prompt"], "{name}");
        // The infotext parser keeps numbers as A1111's dict does: text.
        let seed = info["Seed"].to_string();
        assert_eq!(
            seed.trim_matches('"'),
            plan[i]["seed"].to_string(),
            "{name}"
        );
    }
}
