//! Expansion checked against the AUTOMATIC1111 reference cases in
//! `tests/fixtures/a1111/` (produced by running upstream's own code).

use serde_json::Value;

use super::*;
use crate::spec::values::{csv_list, float_values, int_values};
use crate::spec::{parse_sweep, SweepFormat};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/a1111/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect(&path)).unwrap()
}

fn toml(text: &str) -> SweepSpec {
    parse_sweep(text, SweepFormat::Toml).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn xyz_sweep(base: &str, axes: &[(&str, &str, &str)], extra: &str) -> SweepSpec {
    let mut text =
        format!("model = \"builtin:tiny-sd\"\nwidth = 64\nheight = 64\n{base}\n[xyz]\n{extra}\n");
    for (name, ty, values) in axes {
        text += &format!(
            "{name} = {{ type = {}, values = {} }}\n",
            toml_str(ty),
            toml_str(values)
        );
    }
    toml(&text)
}

#[test]
fn value_ranges_match_a1111() {
    for case in fixture("xyz_ranges.json").as_array().unwrap() {
        let input = case["input"].as_str().unwrap();
        let got: Result<Value, String> = match case["axis_type"].as_str().unwrap() {
            "int" => int_values(input).map(|v| serde_json::json!(v)),
            "float" => float_values(input).map(|v| serde_json::json!(v)),
            _ => Ok(serde_json::json!(csv_list(input))),
        };
        match case["error"].as_str() {
            Some(error) => {
                let want = error.split_once(": ").unwrap().1;
                assert_eq!(got.unwrap_err(), want, "{input}");
            }
            None => assert_eq!(got.unwrap(), case["expected"], "{input}"),
        }
    }
}

#[test]
fn prompt_search_and_replace_matches_a1111() {
    let misc = fixture("xyz_misc.json");
    for case in misc["prompt_sr"].as_array().unwrap() {
        let base = format!(
            "prompt = {}\nnegative_prompt = {}",
            toml_str(case["prompt"].as_str().unwrap()),
            toml_str(case["negative_prompt"].as_str().unwrap())
        );
        let values = case["values_text"].as_str().unwrap();
        let text = format!(
            "model = \"builtin:tiny-sd\"\n{base}\n[xyz]\nx = {{ type = \"Prompt S/R\", values = {} }}\n",
            toml_str(values)
        );
        if case["expected"].is_null() {
            let err = parse_sweep(&text, SweepFormat::Toml)
                .unwrap_err()
                .to_string();
            let search = case["values"][0].as_str().unwrap();
            assert!(
                err.contains("did not find") && err.contains(search),
                "{err}"
            );
            assert!(err.contains("Prompt S/R") && err.contains("xyz.x"), "{err}");
            continue;
        }
        let spec = toml(&text);
        let cells = Cells::new(&spec, 1);
        for (i, want) in case["expected"].as_array().unwrap().iter().enumerate() {
            let p = cells.cell(i as u64).params;
            assert_eq!(p.prompt, want["prompt"].as_str().unwrap());
            assert_eq!(p.negative_prompt, want["negative_prompt"].as_str().unwrap());
        }
    }
}

#[test]
fn prompt_order_matches_a1111_including_missing_tokens() {
    let misc = fixture("xyz_misc.json");
    for case in misc["prompt_order"].as_array().unwrap() {
        let base = format!("prompt = {}", toml_str(case["prompt"].as_str().unwrap()));
        let spec = xyz_sweep(
            &base,
            &[("x", "Prompt order", case["values_text"].as_str().unwrap())],
            "",
        );
        let cells = Cells::new(&spec, 1);
        let axis = &spec.xyz.as_ref().unwrap().axes[0];
        let expected = case["expected"].as_array().unwrap();
        assert_eq!(cells.len(), expected.len() as u64);
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(
                cells.cell(i as u64).params.prompt,
                want["prompt"].as_str().unwrap()
            );
            assert_eq!(
                axis.def.label_of(&axis.values[i]),
                want["label"].as_str().unwrap()
            );
        }
    }
}

#[test]
fn labels_match_a1111() {
    let misc = fixture("xyz_misc.json");
    for case in misc["labels"].as_array().unwrap() {
        let spec = xyz_sweep(
            "prompt = \"a cat\"",
            &[(
                "x",
                case["axis"].as_str().unwrap(),
                case["values_text"].as_str().unwrap(),
            )],
            "",
        );
        let axis = &spec.xyz.as_ref().unwrap().axes[0];
        let labels: Vec<String> = axis.values.iter().map(|v| axis.def.label_of(v)).collect();
        assert_eq!(serde_json::json!(labels), case["expected_labels"], "{case}");
    }
}

#[test]
fn vary_seeds_match_a1111() {
    let misc = fixture("xyz_misc.json");
    for case in misc["vary_seeds"].as_array().unwrap() {
        let n = |k: &str| case[k].as_u64().unwrap();
        let flag = |k: &str| case[k].as_bool().unwrap();
        let extra = format!(
            "vary_seeds = {{ x = {}, y = {}, z = {} }}",
            flag("vary_x"),
            flag("vary_y"),
            flag("vary_z")
        );
        let base = format!("seed = {}", case["base_seed"]);
        let spec = xyz_sweep(
            &base,
            &[
                ("x", "Steps", &format!("1-{}", n("nx"))),
                ("y", "CFG Scale", &format!("1-{}", n("ny"))),
                ("z", "Clip skip", &format!("1-{}", n("nz"))),
            ],
            &extra,
        );
        let cells = Cells::new(&spec, case["base_seed"].as_i64().unwrap());
        let want = case["expected_seed_by_ix_iy_iz"].as_object().unwrap();
        assert_eq!(cells.len(), want.len() as u64);
        for pos in 0..cells.len() {
            let cell = cells.cell(pos);
            let [x, y, z] = cell.coords.unwrap();
            let key = format!("{x},{y},{z}");
            assert_eq!(
                cell.params.seed,
                want[&key].as_i64().unwrap(),
                "{key} in {case}"
            );
        }
    }
}

#[test]
fn processing_order_matches_a1111() {
    let misc = fixture("xyz_misc.json");
    for case in misc["processing_order"].as_array().unwrap() {
        let c = case["costs"].as_array().unwrap();
        let costs = [0, 1, 2].map(|i| c[i].as_f64().unwrap() as f32);
        let order = processing_order(costs);
        let name = |i: usize| ["x", "y", "z"][i];
        assert_eq!(name(order[0]), case["first_axis"].as_str().unwrap());
        assert_eq!(name(order[1]), case["second_axis"].as_str().unwrap());
        let sizes = [
            case["nx"].as_u64().unwrap(),
            case["ny"].as_u64().unwrap(),
            case["nz"].as_u64().unwrap(),
        ];
        let seq: Vec<[usize; 3]> = (0..sizes.iter().product())
            .map(|p| coords(order, sizes, p))
            .collect();
        let want: Vec<[usize; 3]> =
            serde_json::from_value(case["expected_cell_sequence_ix_iy_iz"].clone()).unwrap();
        assert_eq!(seq, want, "{}", case["description"]);
    }
}

#[test]
fn checkpoint_axis_is_processed_outermost_and_counted() {
    let spec = xyz_sweep(
        "",
        &[
            ("x", "Steps", "1-2"),
            (
                "y",
                "Checkpoint name",
                "builtin:tiny-sd, /models/a/b.safetensors",
            ),
        ],
        "",
    );
    let cells = Cells::new(&spec, 5);
    let models: Vec<&str> = (0..4).map(|p| cells.model_of(p)).collect();
    assert_eq!(
        models,
        [
            "builtin:tiny-sd",
            "builtin:tiny-sd",
            "/models/a/b.safetensors",
            "/models/a/b.safetensors"
        ]
    );
    let summary = plan_summary(&spec);
    assert_eq!(summary.checkpoint_switches, 1);
    assert_eq!(
        summary.images_per_checkpoint[1],
        ("/models/a/b.safetensors".to_string(), 2)
    );
    let axis = &spec.xyz.as_ref().unwrap().axes[1];
    assert_eq!(axis.def.label_of(&axis.values[1]), "b.safetensors");
}

#[test]
fn prompt_matrix_matches_a1111() {
    for case in fixture("prompt_matrix.json").as_array().unwrap() {
        let text = format!(
            "model = \"builtin:tiny-sd\"\nprompt = {}\nseed = {}\nbatch_size = {}\n[prompt_matrix]\nput_variable_parts_at_start = {}\ndifferent_seeds = {}\nvariations_delimiter = {}\n",
            toml_str(case["input"].as_str().unwrap()),
            case["seed"],
            case["batch_size"],
            case["put_variable_parts_at_start"],
            case["use_different_seed"],
            toml_str(case["joining_char"].as_str().unwrap()),
        );
        let spec = toml(&text);
        let seed = case["seed"].as_i64().unwrap();
        let images: Vec<PlannedImage> = expand(&spec, seed).collect();
        let prompts: Vec<&str> = images.iter().map(|i| i.params.prompt.as_str()).collect();
        assert_eq!(serde_json::json!(prompts), case["expected"]);
        let seeds: Vec<i64> = images.iter().map(|i| i.params.seed).collect();
        assert_eq!(serde_json::json!(seeds), case["expected_seeds"]);
        let lines: Vec<Value> = plan_json_lines(&spec, seed).collect();
        assert_eq!(lines[0]["n_iter"], case["expected_n_iter"]);
    }
}

#[test]
fn prompt_matrix_options_for_unseen_cases() {
    let spec = toml(
        "model = \"builtin:tiny-sd\"\nprompt = \"a\"\nnegative_prompt = \"base| red ,| blue\"\nseed = 7\nbatch_size = 2\n[prompt_matrix]\nprompt_type = \"negative\"\nput_variable_parts_at_start = true\ndifferent_seeds = true\nvariations_delimiter = \"space\"\n",
    );
    let images: Vec<PlannedImage> = expand(&spec, 7).collect();
    let neg: Vec<&str> = images
        .iter()
        .map(|i| i.params.negative_prompt.as_str())
        .collect();
    // " red ," strips to "red ," and then, commas only, to "red ": the space stays, as in A1111.
    assert_eq!(neg, ["base", "red  base", "blue base", "red  blue base"]);
    assert!(images.iter().all(|i| i.params.prompt == "a"));
    let seeds: Vec<i64> = images.iter().map(|i| i.params.seed).collect();
    assert_eq!(seeds, [7, 8, 9, 10]);
    let batch: Vec<u32> = images.iter().map(|i| i.params.batch_index).collect();
    assert_eq!(batch, [0, 1, 0, 1]);
}

#[test]
fn axis_errors_name_the_axis_and_the_value() {
    let cases = [
        (
            "Stepz",
            "1-3",
            "is not an A1111 X/Y/Z axis; did you mean \"Steps\"?",
        ),
        (
            "Steps",
            "1-10 (2)",
            "invalid literal for int() with base 10: '1-10 (2)'",
        ),
        (
            "CFG Scale",
            "1e-3",
            "could not convert string to float: '1e'",
        ),
        ("Size", "512x", "value \"512x\" has no height"),
        (
            "Sampler",
            "Euler, Eular b",
            "value \"Eular b\" is not an A1111 sampler",
        ),
        ("Steps", "0-2", "value 0 is out of range"),
        ("RNG source", "GPU", "value \"GPU\" is not a noise source"),
        ("Image CFG Scale", "1", "applies to img2img only"),
    ];
    for (ty, values, fragment) in cases {
        let text = format!(
            "model = \"builtin:tiny-sd\"\nprompt = \"a cat\"\n[xyz]\ny = {{ type = {}, values = {} }}\n",
            toml_str(ty),
            toml_str(values)
        );
        let err = parse_sweep(&text, SweepFormat::Toml)
            .unwrap_err()
            .to_string();
        assert!(err.contains(fragment), "{ty}={values}: {err}");
        assert!(err.contains("line 4") && err.contains("xyz.y"), "{err}");
    }
}

#[test]
fn million_cell_sweep_stays_lazy() {
    let spec = xyz_sweep(
        "steps = 2",
        &[
            ("x", "Seed", "1-100"),
            ("y", "CFG Scale", "1-100"),
            ("z", "Eta", "0-1 [100]"),
        ],
        "",
    );
    assert_eq!(cell_count(&spec), 1_000_000);
    let last = expand(&spec, 1).nth(999_999).unwrap();
    assert_eq!(
        (last.params.seed, last.params.cfg_scale, last.params.eta),
        (100, 100.0, 1.0)
    );
    assert_eq!(last.cell_index, 999_999);
}
