//! A farm on a bad day, with real processes: workers stopped with SIGTERM (drain) or killed
//! with SIGKILL again and again, the coordinator killed and restarted mid-sweep, Redis
//! stopped mid-sweep under two coordinator replicas. Every sweep must end with exactly its
//! images: none lost, none extra.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use object_store::{path::Path as ObjectPath, ObjectStore};
use sdfarm_e2e::*;

/// `images` tiny images of `steps` steps each, one task per image.
fn sweep(images: u32, steps: u32) -> String {
    format!(
        "name = \"reliability\"\nprompt = \"a lighthouse\"\nseed = 100\nsteps = {steps}\n\
         sampler_name = \"Euler\"\nwidth = 32\nheight = 32\nbatch_size = {images}\n\
         model = \"builtin:tiny-sd\"\n"
    )
}

// Fields drop in order: processes stop before the database and S3 server go away.
struct Farm {
    coordinators: Vec<(u16, Proc)>,
    s3: S3Server,
    db: TestDb,
    dir: tempfile::TempDir,
    redis_url: Option<String>,
}

impl Farm {
    async fn start(replicas: usize, redis_url: Option<String>) -> Farm {
        let mut farm = Farm {
            coordinators: Vec::new(),
            s3: S3Server::start(),
            db: TestDb::create().await,
            dir: tempfile::tempdir().unwrap(),
            redis_url,
        };
        for _ in 0..replicas {
            let port = free_port();
            let proc = farm.spawn_coordinator(port);
            farm.coordinators.push((port, proc));
        }
        farm
    }

    fn spawn_coordinator(&self, port: u16) -> Proc {
        let mut cmd = Command::new(sdfarm_bin());
        cmd.args(["coordinator", "--database-url", &self.db.url])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--http", ""])
            .args(["--store", &format!("s3://{}/renders", self.s3.bucket)])
            // Short leases so lost work comes back within seconds.
            .args(["--lease-seconds", "1.5", "--rescue-seconds", "0.3"])
            .args(["--retry-base-seconds", "0.1"])
            .stderr(Stdio::null());
        if let Some(url) = &self.redis_url {
            cmd.args(["--redis-url", url]);
        }
        let proc = Proc::spawn("coordinator", &mut cmd);
        wait_for_port(port, "coordinator", Duration::from_secs(60));
        proc
    }

    fn addr(&self, replica: usize) -> String {
        format!("http://127.0.0.1:{}", self.coordinators[replica].0)
    }

    /// Kills replica `i` without warning and starts it again on the same port.
    fn restart_coordinator(&mut self, i: usize) {
        self.coordinators[i].1.kill();
        let port = self.coordinators[i].0;
        self.coordinators[i].1 = self.spawn_coordinator(port);
    }

    fn worker(&self, name: &str, replica: usize, drain_seconds: &str) -> Proc {
        Proc::spawn(
            name,
            Command::new(sdfarm_bin())
                .args([
                    "worker",
                    "--coordinator",
                    &self.addr(replica),
                    "--name",
                    name,
                ])
                .args(["--drain-seconds", drain_seconds])
                .arg("--cache")
                .arg(self.dir.path().join("cache"))
                .envs(self.s3.env())
                .stderr(Stdio::null()),
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
                &self.addr(0),
            ],
            &[],
        );
        out.trim().to_string()
    }

    /// The job line and one line per task, from `sdfarm status --json`.
    fn status(&self, job: &str) -> Vec<serde_json::Value> {
        sdfarm_ok(
            &["status", job, "--json", "--coordinator", &self.addr(0)],
            &[],
        )
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
    }

    fn tasks_in(&self, job: &str, state: &str) -> Vec<serde_json::Value> {
        self.status(job)[1..]
            .iter()
            .filter(|t| t["state"] == state)
            .cloned()
            .collect()
    }

    async fn wait_until(&self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < timeout, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_succeeded(&self, job: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let status = self.status(job);
            match status[0]["state"].as_str() {
                Some("succeeded") => return,
                Some("running") => {}
                other => panic!("job ended {other:?}: {status:?}"),
            }
            assert!(start.elapsed() < timeout, "job unfinished: {status:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Object names under the job's prefix.
    async fn images(&self, job: &str) -> BTreeSet<String> {
        let prefix = ObjectPath::from(format!("renders/{job}"));
        let metas: Vec<_> = self
            .s3
            .store()
            .list(Some(&prefix))
            .try_collect()
            .await
            .unwrap();
        metas
            .into_iter()
            .map(|m| m.location.filename().unwrap().to_string())
            .filter(|name| name.ends_with(".png"))
            .collect()
    }

    /// The sweep ended with exactly its images, every task completed once.
    async fn assert_exactly(&self, job: &str, images: u32) {
        let status = self.status(job);
        assert_eq!(status[0]["counts"]["completed"], images, "{status:?}");
        let want: BTreeSet<String> = (0..images)
            .map(|i| format!("{i:05}-{}.png", 100 + i))
            .collect();
        assert_eq!(self.images(job).await, want);
    }
}

/// SIGTERM, as Kubernetes stops a pod.
fn terminate(p: &mut Proc) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} did not exit after SIGTERM",
            p.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn draining_worker_releases_what_it_cannot_finish_and_exits_zero() {
    let farm = Farm::start(1, None).await;
    // Long renders: the drain deadline passes mid-image.
    let job = farm.submit(&sweep(2, 1000));
    let mut w = farm.worker("drainer", 0, "0.3");
    farm.wait_until("a running task", Duration::from_secs(60), || {
        !farm.tasks_in(&job, "running").is_empty()
    })
    .await;
    let status = terminate(&mut w);
    assert!(status.success(), "drained worker exits 0, got {status}");
    let status = farm.status(&job);
    for t in &status[1..] {
        assert_eq!(t["state"], "available", "released, not left leased: {t}");
        assert_eq!(t["attempt"], 0, "a release uses up no attempt: {t}");
        assert!(t["errors"].as_array().unwrap().is_empty(), "{t}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn draining_worker_finishes_its_task_when_there_is_time() {
    let farm = Farm::start(1, None).await;
    let job = farm.submit(&sweep(3, 30));
    let mut w = farm.worker("finisher", 0, "120");
    farm.wait_until("a running task", Duration::from_secs(60), || {
        !farm.tasks_in(&job, "running").is_empty()
    })
    .await;
    let status = terminate(&mut w);
    assert!(status.success(), "drained worker exits 0, got {status}");
    let status = farm.status(&job);
    let completed = farm.tasks_in(&job, "completed");
    assert!(
        !completed.is_empty(),
        "the task in hand was finished: {status:?}"
    );
    assert!(
        farm.tasks_in(&job, "running").is_empty(),
        "nothing left leased: {status:?}"
    );
    // The rest of the sweep is still there for other workers.
    let _w2 = farm.worker("after", 0, "5");
    farm.wait_succeeded(&job, Duration::from_secs(120)).await;
    farm.assert_exactly(&job, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_survives_workers_killed_again_and_again() {
    const KILLS: u32 = 3;
    let farm = Farm::start(1, None).await;
    // Three kills can land on the same task (a fresh worker often leases the one the last
    // victim lost, once the rescuer returns it); with the default three attempts that task
    // would rightly be discarded. One attempt more than there are kills means no kill
    // pattern may cost an image.
    let job = farm.submit(&format!("{}max_attempts = {}\n", sweep(6, 10), KILLS + 1));
    let _steady = farm.worker("steady", 0, "5");
    for round in 0..KILLS {
        let mut victim = farm.worker(&format!("victim-{round}"), 0, "5");
        let name = victim.name.clone();
        let start = Instant::now();
        // Kill it while it holds a task, or after a few seconds if it never got one.
        while start.elapsed() < Duration::from_secs(8) {
            let held = farm
                .tasks_in(&job, "running")
                .iter()
                .any(|t| t["worker"].as_str().is_some_and(|w| w.starts_with(&name)));
            if held {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        victim.kill();
    }
    farm.wait_succeeded(&job, Duration::from_secs(180)).await;
    farm.assert_exactly(&job, 6).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_survives_a_coordinator_restart() {
    let mut farm = Farm::start(1, None).await;
    let job = farm.submit(&sweep(6, 10));
    let _w1 = farm.worker("w1", 0, "5");
    let _w2 = farm.worker("w2", 0, "5");
    farm.wait_until("a completed task", Duration::from_secs(90), || {
        !farm.tasks_in(&job, "completed").is_empty()
    })
    .await;
    farm.restart_coordinator(0);
    farm.wait_succeeded(&job, Duration::from_secs(180)).await;
    farm.assert_exactly(&job, 6).await;
}

/// A redis-server of this test's own on a free port, so stopping it disturbs nobody.
struct OwnRedis {
    url: String,
    proc: Proc,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = free_port();
        let proc = Proc::spawn(
            "redis-server",
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null()),
        );
        wait_for_port(port, "redis-server", Duration::from_secs(20));
        OwnRedis {
            url: format!("redis://127.0.0.1:{port}"),
            proc,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_coordinators_finish_the_sweep_when_redis_stops_mid_sweep() {
    let mut redis = OwnRedis::start();
    let farm = Farm::start(2, Some(redis.url.clone())).await;
    let job = farm.submit(&sweep(8, 10));
    // Workers split across the replicas: both lease from the same Postgres queue.
    let _a1 = farm.worker("a1", 0, "5");
    let _b1 = farm.worker("b1", 1, "5");
    let _b2 = farm.worker("b2", 1, "5");
    farm.wait_until("a completed task", Duration::from_secs(90), || {
        !farm.tasks_in(&job, "completed").is_empty()
    })
    .await;
    redis.proc.kill();
    farm.wait_succeeded(&job, Duration::from_secs(180)).await;
    farm.assert_exactly(&job, 8).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_job_stops_its_running_render_at_the_next_step() {
    let farm = Farm::start(1, None).await;
    // Minutes of rendering if nothing stopped it.
    let long = farm.submit(&sweep(1, 1000));
    let _w = farm.worker("only", 0, "5");
    farm.wait_until("a running task", Duration::from_secs(60), || {
        !farm.tasks_in(&long, "running").is_empty()
    })
    .await;
    sdfarm_ok(&["cancel", &long, "--coordinator", &farm.addr(0)], &[]);
    // The only worker is free again within a heartbeat or two: a short job gets rendered.
    let short = farm.submit(&sweep(1, 5));
    farm.wait_succeeded(&short, Duration::from_secs(40)).await;
    let status = farm.status(&long);
    assert_eq!(status[0]["state"], "cancelled", "{status:?}");
    assert!(
        farm.images(&long).await.is_empty(),
        "the cancelled render was not uploaded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_drain_reaches_the_worker_through_its_heartbeat() {
    let farm = Farm::start(1, None).await;
    let job = farm.submit(&sweep(2, 1000));
    let mut w = farm.worker("drained-by-ops", 0, "0.3");
    let mut worker_id = String::new();
    farm.wait_until("a running task", Duration::from_secs(60), || {
        let running = farm.tasks_in(&job, "running");
        if let Some(id) = running.first().and_then(|t| t["worker"].as_str()) {
            worker_id = id.to_string();
        }
        !worker_id.is_empty()
    })
    .await;
    sdfarm_ok(&["drain", &worker_id, "--coordinator", &farm.addr(0)], &[]);
    // No signal: the worker learns it from the heartbeat reply and leaves on its own.
    let start = Instant::now();
    let status = loop {
        if let Some(s) = w.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{worker_id} did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "a drained worker exits 0, got {status}");
    for t in &farm.status(&job)[1..] {
        assert_eq!(t["state"], "available", "released, not left leased: {t}");
        assert_eq!(t["attempt"], 0, "{t}");
    }
}
