//! Dataset outputs of an embedded run, read back as their users read them: the manifest
//! against the PNGs it lists, the imagefolder export through Hugging Face `datasets` (and the
//! Parquet manifest through pyarrow) in a Python subprocess, WebDataset shards through a
//! plain tar reader, and `sdfarm rerender` reproducing an image byte for byte.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use sha2::Digest;

/// Eight 32x32 images of two steps: two prompts (a Prompt S/R axis) of two batches of two.
const SWEEP: &str = "name = \"dataset\"\nprompt = \"a red barn\"\nnegative_prompt = \"fog\"\n\
    seed = 7\nsteps = 2\nsampler_name = \"Euler\"\nwidth = 32\nheight = 32\nbatch_size = 2\n\
    n_iter = 2\nmodel = \"builtin:tiny-sd\"\n\n[xyz]\nx = { type = \"Prompt S/R\", values = \"red, blue\" }\n";
const IMAGES: usize = 8;

/// Renders the sweep with `sdfarm run` into a fresh folder; returns it and the job id.
fn render(dir: &Path) -> (PathBuf, String) {
    let sweep = write(dir, "dataset.toml", SWEEP);
    let out = dir.join("out");
    let run = sdfarm(&["run", &sweep, "--out", out.to_str().unwrap()]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let job = job_dir(&out)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    (out, job)
}

fn manifest_rows(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    let reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    (reader.info().width, reader.info().height)
}

#[test]
fn manifest_lists_every_image_once_with_its_real_hash_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let (out, job) = render(dir.path());
    let job_dir = out.join(&job);
    let pngs: Vec<String> = std::fs::read_dir(&job_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".png") && !n.starts_with("grid-"))
        .collect();
    assert_eq!(pngs.len(), IMAGES, "{pngs:?}");
    assert!(job_dir.join("manifest.parquet").is_file());

    let rows = manifest_rows(&job_dir.join("manifest.jsonl"));
    assert_eq!(rows.len(), IMAGES, "one row per image");
    let mut indexes = Vec::new();
    for row in &rows {
        let key = row["key"].as_str().unwrap();
        let bytes = std::fs::read(out.join(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
        let sha = hex::encode(sha2::Sha256::digest(&bytes));
        assert_eq!(row["sha256"], sha, "{key}: sha256 of the stored file");
        assert_eq!(
            png_size(&bytes),
            (
                row["width"].as_u64().unwrap() as u32,
                row["height"].as_u64().unwrap() as u32
            ),
            "{key}: size read back"
        );
        // The infotext in the file is the one the manifest carries, and so are its fields.
        let info_out = sdfarm(&["info", out.join(key).to_str().unwrap(), "--json"]);
        let info: serde_json::Value = serde_json::from_slice(&info_out.stdout).unwrap();
        assert_eq!(row["model_hash"], info["Model hash"], "{key}");
        assert_eq!(
            row["seed"].to_string(),
            info["Seed"].as_str().unwrap(),
            "{key}"
        );
        assert_eq!(row["prompt"], info["Prompt"], "{key}");
        assert_eq!(row["params"]["seed"], row["seed"]);
        assert_eq!(row["params"]["steps"], 2);
        assert!(
            row["worker"].as_str().unwrap().starts_with("local"),
            "{row}"
        );
        assert_eq!(row["attempt"], 1);
        let (leased, completed) = (
            row["leased_at_ms"].as_i64().unwrap(),
            row["completed_at_ms"].as_i64().unwrap(),
        );
        assert!(leased <= completed, "{row}");
        assert!(row["render_ms"].as_u64().is_some(), "{row}");
        indexes.push(row["image_index"].as_u64().unwrap());
    }
    assert_eq!(indexes, (0..IMAGES as u64).collect::<Vec<_>>());
    let prompts: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r["prompt"].as_str().unwrap()).collect();
    assert_eq!(
        prompts.into_iter().collect::<Vec<_>>(),
        ["a blue barn", "a red barn"]
    );
}

/// The Python interpreter with `datasets` (and so pyarrow) importable, if there is one.
fn python_with_datasets() -> Option<String> {
    let python = std::env::var("SDFARM_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import datasets, pyarrow.parquet, PIL"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

#[test]
fn imagefolder_export_loads_with_hugging_face_datasets() {
    let Some(python) = python_with_datasets() else {
        eprintln!(
            "skipped: python3 with the `datasets` package not found \
             (tests/run.sh installs it; or pip install datasets pillow)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (out, job) = render(dir.path());
    let export = dir.path().join("hf");
    let run = sdfarm(&[
        "export",
        &job,
        "--format",
        "imagefolder",
        "--out",
        export.to_str().unwrap(),
        "--store",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let manifest = out.join(&job).join("manifest.parquet");
    let script = r#"
import json, sys
import datasets, pyarrow.parquet as pq
ds = datasets.load_dataset("imagefolder", data_dir=sys.argv[1], split="train")
rows = [{"text": r["text"], "size": list(r["image"].size), "seed": r["seed"],
         "sha256": r["sha256"], "file_name_free": "file_name" not in r} for r in ds]
table = pq.read_table(sys.argv[2])
print(json.dumps({"rows": rows, "columns": ds.column_names,
                  "parquet_rows": table.num_rows,
                  "parquet_sha256": sorted(table.column("sha256").to_pylist()),
                  "parquet_choices": table.column("prompt_choices").to_pylist()}))
"#;
    let ran = Command::new(&python)
        .args(["-c", script])
        .arg(&export)
        .arg(&manifest)
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HOME", dir.path().join("hf-home"))
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "datasets could not load the export:\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&ran.stdout).unwrap();
    let manifest = manifest_rows(&out.join(&job).join("manifest.jsonl"));
    let by_sha: BTreeMap<&str, &serde_json::Value> = manifest
        .iter()
        .map(|r| (r["sha256"].as_str().unwrap(), r))
        .collect();
    let rows = got["rows"].as_array().unwrap();
    assert_eq!(rows.len(), IMAGES);
    for row in rows {
        let m = by_sha[row["sha256"].as_str().unwrap()];
        assert_eq!(row["text"], m["prompt"], "the caption is the prompt");
        assert_eq!(row["seed"], m["seed"]);
        assert_eq!(row["size"], serde_json::json!([32, 32]));
        assert_eq!(row["file_name_free"], true, "file_name became the image");
    }
    let columns: Vec<&str> = got["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for column in [
        "image",
        "text",
        "seed",
        "steps",
        "sampler_name",
        "model_hash",
    ] {
        assert!(columns.contains(&column), "{column} in {columns:?}");
    }
    assert_eq!(got["parquet_rows"], IMAGES);
    let mut shas: Vec<&str> = by_sha.keys().copied().collect();
    shas.sort();
    assert_eq!(got["parquet_sha256"], serde_json::json!(shas));
    assert_eq!(
        got["parquet_choices"],
        serde_json::json!(vec![Vec::<String>::new(); IMAGES])
    );
}

#[test]
fn webdataset_shards_hold_each_sample_as_png_json_and_txt() {
    let dir = tempfile::tempdir().unwrap();
    let (out, job) = render(dir.path());
    let export = dir.path().join("wds");
    let run = sdfarm(&[
        "export",
        &job,
        "--format",
        "webdataset",
        "--out",
        export.to_str().unwrap(),
        "--store",
        out.to_str().unwrap(),
        "--shard-size",
        "3",
        "--prefix",
        "barns",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut shards: Vec<String> = std::fs::read_dir(&export)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    shards.sort();
    assert_eq!(
        shards,
        ["barns-000000.tar", "barns-000001.tar", "barns-000002.tar"]
    );

    let manifest = manifest_rows(&out.join(&job).join("manifest.jsonl"));
    let mut samples = 0;
    for (n, shard) in shards.iter().enumerate() {
        let mut archive = tar::Archive::new(std::fs::File::open(export.join(shard)).unwrap());
        let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            entries.push((name, bytes));
        }
        let expected = if n < 2 { 3 } else { 2 };
        assert_eq!(
            entries.len(),
            expected * 3,
            "{shard}: png, json, txt per sample"
        );
        for sample in entries.chunks(3) {
            let row = &manifest[samples];
            let key = Path::new(row["key"].as_str().unwrap())
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let names: Vec<&str> = sample.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(
                names,
                [
                    format!("{key}.png"),
                    format!("{key}.json"),
                    format!("{key}.txt")
                ]
            );
            let png = &sample[0].1;
            assert_eq!(
                png,
                &std::fs::read(out.join(row["key"].as_str().unwrap())).unwrap()
            );
            let json: serde_json::Value = serde_json::from_slice(&sample[1].1).unwrap();
            assert_eq!(&json, row);
            assert_eq!(sample[2].1, row["prompt"].as_str().unwrap().as_bytes());
            samples += 1;
        }
    }
    assert_eq!(samples, IMAGES);

    // The jsonl export: one line per image with its caption and where the image is.
    let jsonl = dir.path().join("jsonl");
    let run = sdfarm(&[
        "export",
        &job,
        "--format",
        "jsonl",
        "--out",
        jsonl.to_str().unwrap(),
        "--store",
        out.to_str().unwrap(),
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines = manifest_rows(&jsonl.join(format!("{job}.jsonl")));
    assert_eq!(lines.len(), IMAGES);
    for (line, row) in lines.iter().zip(&manifest) {
        assert_eq!(line["text"], row["prompt"]);
        assert_eq!(line["sha256"], row["sha256"]);
        let url = line["url"].as_str().unwrap();
        assert!(url.ends_with(row["key"].as_str().unwrap()), "{url}");
    }
}

#[test]
fn export_names_a_bad_shard_size_and_a_missing_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("wds");
    let zero = sdfarm(&[
        "export",
        "some-job",
        "--format",
        "webdataset",
        "--out",
        out.to_str().unwrap(),
        "--shard-size",
        "0",
    ]);
    assert!(!zero.status.success());
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--shard-size 0"));
    // No manifest in the store and no coordinator to write one.
    let missing = sdfarm(&[
        "export",
        "no-such-job",
        "--format",
        "jsonl",
        "--out",
        out.to_str().unwrap(),
        "--store",
        dir.path().to_str().unwrap(),
        "--coordinator",
        "http://127.0.0.1:9",
    ]);
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("no-such-job has no manifest"), "{err}");
}

#[test]
fn rerender_reproduces_an_image_byte_for_byte_and_names_a_difference() {
    let dir = tempfile::tempdir().unwrap();
    let (out, job) = render(dir.path());
    let rows = manifest_rows(&out.join(&job).join("manifest.jsonl"));
    let image = out.join(rows[5]["key"].as_str().unwrap());
    let again = sdfarm(&["rerender", image.to_str().unwrap()]);
    assert!(
        again.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("identical"));

    // The same parameters under another image's pixels: same size, different pixels.
    let other = std::fs::read(out.join(rows[0]["key"].as_str().unwrap())).unwrap();
    let forged = dir.path().join("forged.png");
    let text = rows[5]["infotext"].as_str().unwrap();
    let reader = png::Decoder::new(std::io::Cursor::new(&other));
    let mut reader = reader.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    reader.next_frame(&mut pixels).unwrap();
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, 32, 32);
        enc.set_color(png::ColorType::Rgb);
        enc.add_text_chunk("parameters".into(), text.into())
            .unwrap();
        enc.write_header()
            .unwrap()
            .write_image_data(&pixels)
            .unwrap();
    }
    std::fs::write(&forged, &bytes).unwrap();
    let differs = sdfarm(&["rerender", forged.to_str().unwrap()]);
    assert_eq!(differs.status.code(), Some(1));
    let said = String::from_utf8_lossy(&differs.stdout);
    assert!(said.starts_with("different: pixels:"), "{said}");
}
