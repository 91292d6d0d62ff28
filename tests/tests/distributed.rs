//! A farm as operators run it: a coordinator on Postgres and two workers as separate
//! processes over TCP, images in an S3-compatible server; then the embedded `sdfarm run`
//! renders the same sweep and must produce the same files byte for byte.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::{path::Path as ObjectPath, ObjectStore};
use sdfarm_e2e::*;

fn sweep_text(model: &str, steps: u32) -> String {
    format!(
        r#"name = "e2e"
prompt = "a photo of a cat, (best quality:1.2)"
negative_prompt = "blurry"
seed = 1234
steps = {steps}
sampler_name = "Euler"
cfg_scale = 7.5
width = 32
height = 32
batch_size = 2
n_iter = 2
model = "{model}"
"#
    )
}

// Fields drop in order: the coordinator stops before its database and S3 server go away.
struct Farm {
    _coordinator: Proc,
    addr: String,
    s3: S3Server,
    _db: TestDb,
    dir: tempfile::TempDir,
}

impl Farm {
    async fn start(lease_seconds: &str) -> Farm {
        let db = TestDb::create().await;
        let s3 = S3Server::start();
        let port = free_port();
        let addr = format!("http://127.0.0.1:{port}");
        let coordinator = Proc::spawn(
            "coordinator",
            Command::new(sdfarm_bin())
                .args(["coordinator", "--database-url", &db.url])
                .args(["--listen", &format!("127.0.0.1:{port}"), "--http", ""])
                .args(["--store", &format!("s3://{}/renders", s3.bucket)])
                .args(["--lease-seconds", lease_seconds, "--rescue-seconds", "0.5"])
                .args(["--retry-base-seconds", "0.2"]),
        );
        wait_for_port(port, "coordinator", Duration::from_secs(60));
        Farm {
            _coordinator: coordinator,
            addr,
            s3,
            _db: db,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn worker(&self, name: &str) -> Proc {
        Proc::spawn(
            name,
            Command::new(sdfarm_bin())
                .args(["worker", "--coordinator", &self.addr, "--name", name])
                .arg("--cache")
                .arg(self.dir.path().join("cache"))
                .envs(self.s3.env()),
        )
    }

    fn submit(&self, sweep: &str) -> String {
        let path = self.dir.path().join("sweep.toml");
        std::fs::write(&path, sweep).unwrap();
        let out = sdfarm_ok(
            &[
                "submit",
                path.to_str().unwrap(),
                "--coordinator",
                &self.addr,
            ],
            &[],
        );
        out.trim().to_string()
    }

    fn status_lines(&self, job: &str) -> Vec<serde_json::Value> {
        sdfarm_ok(&["status", job, "--json", "--coordinator", &self.addr], &[])
            .lines()
            .map(|l| serde_json::from_str(l).expect("status --json prints JSON lines"))
            .collect()
    }

    fn wait(&self, job: &str) -> std::process::ExitStatus {
        Command::new(sdfarm_bin())
            .args(["wait", job, "--coordinator", &self.addr])
            .status()
            .unwrap()
    }

    /// Every image under the job's prefix: file name -> bytes.
    async fn images(&self, job: &str) -> BTreeMap<String, Vec<u8>> {
        let store = self.s3.store();
        let prefix = ObjectPath::from(format!("renders/{job}"));
        let metas: Vec<_> = store.list(Some(&prefix)).try_collect().await.unwrap();
        let mut out = BTreeMap::new();
        for meta in metas
            .into_iter()
            .filter(|m| m.location.as_ref().ends_with(".png"))
        {
            let bytes = store
                .get(&meta.location)
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let name = meta.location.filename().unwrap().to_string();
            out.insert(name, bytes.to_vec());
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn distributed_sweep_lands_in_s3_and_matches_embedded_run() {
    let model = test_model();
    let sweep = sweep_text(&model, 6);
    let farm = Farm::start("30").await;
    let _w1 = farm.worker("w1");
    let _w2 = farm.worker("w2");

    let job = farm.submit(&sweep);
    let status = farm.wait(&job);
    assert!(
        status.success(),
        "sdfarm wait reported {status}: {:?}",
        farm.status_lines(&job)
    );

    let images = farm.images(&job).await;
    let names: Vec<&String> = images.keys().collect();
    assert_eq!(
        names,
        [
            "00000-1234.png",
            "00001-1235.png",
            "00002-1236.png",
            "00003-1237.png"
        ],
        "exactly the sweep's four images, named by index and seed"
    );
    for (i, (name, png)) in images.iter().enumerate() {
        let text = sdfarm_worker::output::read_png_parameters(png)
            .unwrap()
            .unwrap_or_else(|| panic!("{name} has no parameters chunk"));
        let p = sdfarm_worker::output::parse_infotext(&text).to_render_params();
        assert_eq!(p.prompt, "a photo of a cat, (best quality:1.2)", "{name}");
        assert_eq!(p.negative_prompt, "blurry", "{name}");
        assert_eq!(p.seed, 1234 + i as i64, "{name}");
        assert_eq!(p.steps, 6, "{name}");
        assert_eq!(p.sampler_name, "Euler", "{name}");
        assert_eq!(p.cfg_scale, 7.5, "{name}");
        assert_eq!((p.width, p.height), (32, 32), "{name}");
    }
    let status = farm.status_lines(&job);
    assert_eq!(status[0]["state"], "succeeded");
    assert_eq!(status[0]["counts"]["completed"], 4);

    // The embedded farm renders the same sweep to the same bytes.
    let out = tempfile::tempdir().unwrap();
    let sweep_path = farm.dir.path().join("sweep.toml");
    let cache = farm.dir.path().join("cache");
    sdfarm_ok(
        &[
            "run",
            sweep_path.to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
            "--cache",
            cache.to_str().unwrap(),
        ],
        &[],
    );
    let job_dirs: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !p.ends_with(".sdfarm"))
        .collect();
    assert_eq!(job_dirs.len(), 1, "one job folder: {job_dirs:?}");
    for (name, bytes) in &images {
        let local = std::fs::read(job_dirs[0].join(name))
            .unwrap_or_else(|e| panic!("sdfarm run did not write {name}: {e}"));
        assert!(
            local == *bytes,
            "{name} differs between sdfarm run and the distributed farm"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_worker_task_is_released_after_lease_expiry() {
    let model = test_model();
    // Enough steps that the first image is still rendering when its worker is killed.
    let sweep = sweep_text(&model, 40);
    let farm = Farm::start("2").await;
    let mut doomed = farm.worker("doomed");
    let job = farm.submit(&sweep);

    // Wait until the doomed worker holds a task, then kill it without warning.
    let started = std::time::Instant::now();
    let victim = loop {
        let lines = farm.status_lines(&job);
        if let Some(t) = lines[1..].iter().find(|t| t["state"] == "running") {
            break t["task_id"].as_i64().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no task was leased: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    doomed.kill();

    let _rescuer = farm.worker("rescuer");
    let status = farm.wait(&job);
    assert!(
        status.success(),
        "job did not succeed: {:?}",
        farm.status_lines(&job)
    );

    let lines = farm.status_lines(&job);
    let task = lines[1..]
        .iter()
        .find(|t| t["task_id"].as_i64() == Some(victim))
        .unwrap();
    assert_eq!(task["state"], "completed");
    assert!(
        task["attempt"].as_u64().unwrap() >= 2,
        "re-leased after expiry: {task}"
    );
    let errors = task["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("lease expired")),
        "the lost attempt is recorded: {task}"
    );
    let images = farm.images(&job).await;
    assert_eq!(
        images.len(),
        4,
        "exactly the job's images: {:?}",
        images.keys()
    );
}
