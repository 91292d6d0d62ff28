//! A worker with `--batch-size 4` renders a sweep of eight compatible cells (different seeds
//! and prompts) in batches of four, and every image is the one `sdfarm run` renders alone:
//! pixels within 1/255 and the same infotext.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::TryStreamExt;
use object_store::{path::Path as ObjectPath, ObjectStore};
use sdfarm_e2e::*;

/// Eight cells: two prompts (Prompt S/R, the X axis, which varies fastest) times four seeds
/// (Y), Euler a, all sharing one pass; consecutive cells alternate prompts, so each batch of
/// four mixes them.
fn sweep_text(model: &str) -> String {
    format!(
        r#"name = "batched"
prompt = "a photo of a cat in the snow"
negative_prompt = "blurry"
seed = 77
steps = 5
sampler_name = "Euler a"
cfg_scale = 6.0
width = 32
height = 32
model = "{model}"

[xyz]
x = {{ type = "Prompt S/R", values = "cat, dog on a boat" }}
y = {{ type = "Seed", values = "77, 78, 79, 80" }}
"#
    )
}

/// Decoded RGB8 pixels of a PNG.
fn pixels(png_bytes: &[u8]) -> Vec<u8> {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

/// The batch sizes the worker's log reports ("batch rendered" with the span's `batch`).
fn logged_batches(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "batch rendered")
        .filter_map(|v| v["span"]["batch"].as_u64())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_renders_compatible_cells_in_batches_identical_to_alone() {
    let model = test_model();
    let db = TestDb::create().await;
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let _coordinator = Proc::spawn(
        "coordinator",
        Command::new(sdfarm_bin())
            .args(["coordinator", "--database-url", &db.url])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--http", ""])
            .args(["--store", &format!("s3://{}/renders", s3.bucket)])
            .envs(s3.env()),
    );
    wait_for_port(port, "coordinator", Duration::from_secs(60));

    let sweep = dir.path().join("sweep.toml");
    std::fs::write(&sweep, sweep_text(&model)).unwrap();
    let job = sdfarm_ok(
        &["submit", sweep.to_str().unwrap(), "--coordinator", &addr],
        &s3.env(),
    )
    .trim()
    .to_string();
    // Submitted before the worker starts, so its first lease sees all eight cells.
    let log_path = dir.path().join("worker.log");
    let cache = dir.path().join("cache");
    let _worker = Proc::spawn(
        "worker",
        Command::new(sdfarm_bin())
            .args(["--log", "sdfarm_worker=debug", "--log-json"])
            .args(["worker", "--coordinator", &addr, "--name", "batcher"])
            .args(["--batch-size", "4"])
            .arg("--cache")
            .arg(&cache)
            .envs(s3.env())
            .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap())),
    );
    let status = Command::new(sdfarm_bin())
        .args(["wait", &job, "--coordinator", &addr])
        .status()
        .unwrap();
    assert!(status.success(), "sdfarm wait reported {status}");

    let log = std::fs::read_to_string(&log_path).unwrap();
    let batches = logged_batches(&log);
    println!("worker batches: {batches:?}");
    assert_eq!(
        batches.iter().sum::<u64>(),
        8,
        "the worker's batches {batches:?} should hold the eight tasks"
    );
    assert!(
        batches.iter().all(|&b| b <= 4) && batches.contains(&4),
        "with --batch-size 4 the worker should render batches of four: {batches:?}"
    );

    // The farm's images.
    let store = s3.store();
    let prefix = ObjectPath::from(format!("renders/{job}"));
    let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
    let mut farm: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for meta in metas {
        let name = meta.location.filename().unwrap().to_string();
        if name.ends_with(".png") && !name.starts_with("grid") {
            let bytes = store.get(&meta.location).await.unwrap().bytes().await;
            farm.insert(name, bytes.unwrap().to_vec());
        }
    }
    assert_eq!(farm.len(), 8, "eight images: {:?}", farm.keys());

    // The embedded farm renders one image at a time.
    let out = tempfile::tempdir().unwrap();
    sdfarm_ok(
        &[
            "run",
            sweep.to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
        ],
        &[],
    );
    let job_dir = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir() && !p.ends_with(".sdfarm"))
        .expect("sdfarm run wrote a job folder");

    let mut prompts = Vec::new();
    for (name, png) in &farm {
        let alone = std::fs::read(job_dir.join(name))
            .unwrap_or_else(|e| panic!("sdfarm run did not write {name}: {e}"));
        let text = sdfarm_worker::output::read_png_parameters(png)
            .unwrap()
            .unwrap_or_else(|| panic!("{name} has no parameters chunk"));
        let alone_text = sdfarm_worker::output::read_png_parameters(&alone)
            .unwrap()
            .unwrap();
        assert_eq!(text, alone_text, "{name}: infotext batched vs alone");
        prompts.push(
            sdfarm_worker::output::parse_infotext(&text)
                .to_render_params()
                .prompt,
        );
        let (a, b) = (pixels(png), pixels(&alone));
        assert_eq!(a.len(), b.len(), "{name}: image size");
        let worst = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        println!("{name}: largest pixel difference {worst}/255");
        assert!(
            worst <= 1,
            "{name}: batched pixels differ from the image rendered alone by up to {worst}/255"
        );
    }
    // In image order the prompts alternate, so the four tasks a lease takes in order (and
    // the batches above) hold both prompts.
    for (i, pair) in prompts.windows(2).enumerate() {
        assert_ne!(pair[0], pair[1], "images {i} and {} share a prompt", i + 1);
    }
}
