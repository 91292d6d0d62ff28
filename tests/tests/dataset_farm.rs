//! A dataset run on a farm of real processes (Postgres, moto S3, coordinator and workers as
//! separate processes) through a worker killed mid-render and a coordinator killed and started
//! again: the manifest the coordinator writes has exactly one row per image, each matching the
//! PNG in the bucket, and the exports read it from there.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::{path::Path as ObjectPath, ObjectStore};
use sdfarm_e2e::*;
use sha2::Digest;

const IMAGES: u64 = 6;

fn sweep() -> String {
    format!(
        "name = \"dataset\"\nprompt = \"a lighthouse\"\nseed = 100\nsteps = 10\n\
         sampler_name = \"Euler\"\nwidth = 32\nheight = 32\nbatch_size = {IMAGES}\n\
         model = \"builtin:tiny-sd\"\n"
    )
}

// Fields drop in order: processes stop before the database and S3 server go away.
struct Farm {
    coordinator: Proc,
    port: u16,
    s3: S3Server,
    db: TestDb,
    dir: tempfile::TempDir,
}

impl Farm {
    async fn start() -> Farm {
        let s3 = S3Server::start();
        let db = TestDb::create().await;
        let port = free_port();
        let coordinator = spawn_coordinator(&db, &s3, port);
        Farm {
            coordinator,
            port,
            s3,
            db,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn restart_coordinator(&mut self) {
        self.coordinator.kill();
        self.coordinator = spawn_coordinator(&self.db, &self.s3, self.port);
    }

    fn worker(&self, name: &str) -> Proc {
        Proc::spawn(
            name,
            Command::new(sdfarm_bin())
                .args(["worker", "--coordinator", &self.addr(), "--name", name])
                // A cache of its own: a worker killed while it writes a model must not leave
                // a half-written one to the others.
                .arg("--cache")
                .arg(self.dir.path().join(format!("cache-{name}")))
                .envs(self.s3.env())
                .stderr(Stdio::null()),
        )
    }

    fn sdfarm(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = args.to_vec();
        let addr = self.addr();
        all.extend(["--coordinator", &addr]);
        sdfarm_ok(&all, &self.s3.env())
    }

    fn status(&self, job: &str) -> Vec<serde_json::Value> {
        self.sdfarm(&["status", job, "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    async fn wait_until(&self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get(&self, key: &str) -> Vec<u8> {
        self.s3
            .store()
            .get(&ObjectPath::from(key))
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"))
            .bytes()
            .await
            .unwrap()
            .to_vec()
    }
}

fn spawn_coordinator(db: &TestDb, s3: &S3Server, port: u16) -> Proc {
    let proc = Proc::spawn(
        "coordinator",
        Command::new(sdfarm_bin())
            .args(["coordinator", "--database-url", &db.url])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--http", ""])
            .args(["--store", &format!("s3://{}/renders", s3.bucket)])
            // Short leases so the killed worker's task comes back within seconds.
            .args(["--lease-seconds", "1.5", "--rescue-seconds", "0.3"])
            .args(["--retry-base-seconds", "0.1"])
            .envs(s3.env())
            .stderr(Stdio::null()),
    );
    wait_for_port(port, "coordinator", Duration::from_secs(60));
    proc
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_has_one_row_per_image_after_a_lost_worker_and_a_coordinator_restart() {
    let mut farm = Farm::start().await;
    let path = farm.dir.path().join("dataset.toml");
    std::fs::write(&path, sweep()).unwrap();
    let job = farm
        .sdfarm(&["submit", path.to_str().unwrap()])
        .trim()
        .to_string();

    // A worker killed while it renders (when it gets a task before the steady one takes
    // them all): its task comes back and is rendered again.
    let _steady = farm.worker("steady");
    let mut victim = farm.worker("victim");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        let held = farm.status(&job)[1..].iter().any(|t| {
            t["state"] == "running"
                && t["worker"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("victim"))
        });
        if held {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    victim.kill();
    farm.wait_until("a completed task", Duration::from_secs(90), || {
        farm.status(&job)[1..]
            .iter()
            .any(|t| t["state"] == "completed")
    })
    .await;
    farm.restart_coordinator();
    farm.wait_until("the job to succeed", Duration::from_secs(180), || {
        farm.status(&job)[0]["state"] == "succeeded"
    })
    .await;

    // The restarted coordinator writes the manifest once the last image is in.
    let parquet = ObjectPath::from(format!("renders/{job}/manifest.parquet"));
    let store = farm.s3.store();
    let start = Instant::now();
    while store.head(&parquet).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no manifest written"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = String::from_utf8(farm.get(&format!("renders/{job}/manifest.jsonl")).await).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        rows.len() as u64,
        IMAGES,
        "exactly one row per image: {text}"
    );
    let indexes: BTreeSet<u64> = rows
        .iter()
        .map(|r| r["image_index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, (0..IMAGES).collect());
    for row in &rows {
        // Keys are relative to the coordinator's store URL (s3://bucket/renders).
        let key = row["key"].as_str().unwrap();
        let png = farm.get(&format!("renders/{key}")).await;
        assert_eq!(
            row["sha256"],
            hex::encode(sha2::Sha256::digest(&png)),
            "{key}"
        );
        let reader = png::Decoder::new(std::io::Cursor::new(&png))
            .read_info()
            .unwrap();
        assert_eq!(
            (row["width"].as_u64(), row["height"].as_u64()),
            (Some(32), Some(32))
        );
        assert_eq!((reader.info().width, reader.info().height), (32, 32));
    }
    let retried: Vec<&serde_json::Value> = rows
        .iter()
        .filter(|r| r["attempt"].as_u64().unwrap() >= 2)
        .collect();
    for row in retried {
        assert!(
            row["worker"].as_str().unwrap().starts_with("steady"),
            "{text}"
        );
    }
    assert!(rows
        .iter()
        .all(|r| r["worker"].as_str().is_some_and(|w| !w.is_empty())));

    // `sdfarm manifest` writes it again from the store: the same rows.
    let said = farm.sdfarm(&["manifest", &job]);
    assert!(said.contains(&format!("{IMAGES} rows")), "{said}");
    let printed = farm.sdfarm(&["manifest", &job, "--print"]);
    assert_eq!(printed, text);

    // Exports read the bucket through the coordinator's store URL.
    let wds = farm.dir.path().join("wds");
    farm.sdfarm(&[
        "export",
        &job,
        "--format",
        "webdataset",
        "--out",
        wds.to_str().unwrap(),
        "--shard-size",
        "4",
    ]);
    let mut keys = Vec::new();
    for shard in ["00000", "00001"] {
        let file = std::fs::File::open(wds.join(format!("{job}-0{shard}.tar"))).unwrap();
        for entry in tar::Archive::new(file).entries().unwrap() {
            keys.push(
                entry
                    .unwrap()
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    let want: Vec<String> = (0..IMAGES)
        .flat_map(|i| {
            let key = format!("{i:05}-{}", 100 + i);
            [
                format!("{key}.png"),
                format!("{key}.json"),
                format!("{key}.txt"),
            ]
        })
        .collect();
    assert_eq!(keys, want);

    farm.sdfarm(&[
        "export",
        &job,
        "--format",
        "imagefolder",
        "--out",
        &format!("s3://{}/exports/hf", farm.s3.bucket),
    ]);
    let exported: BTreeSet<String> = store
        .list(Some(&ObjectPath::from("exports/hf")))
        .map_ok(|m| m.location.filename().unwrap().to_string())
        .try_collect()
        .await
        .unwrap();
    let mut want: BTreeSet<String> = (0..IMAGES)
        .map(|i| format!("{i:05}-{}.png", 100 + i))
        .collect();
    want.insert("metadata.jsonl".into());
    assert_eq!(exported, want);
    let metadata = String::from_utf8(farm.get("exports/hf/metadata.jsonl").await).unwrap();
    for line in metadata.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(row["text"], "a lighthouse");
        assert!(want.contains(row["file_name"].as_str().unwrap()), "{row}");
    }
}
