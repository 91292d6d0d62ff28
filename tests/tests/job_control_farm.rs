//! Pause, resume and retry through the `sdfarm` CLI, with every process speaking TLS: the
//! coordinator serves a certificate made for the test, the worker and the CLI trust its CA,
//! and a plaintext client gets nothing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sdfarm_e2e::*;

/// Writes a CA and a certificate it signed for `localhost`; returns (CA, cert, key) paths.
fn write_certificates(dir: &Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths: Vec<String> = [
        ("ca.pem", ca_cert.pem()),
        ("cert.pem", cert.pem()),
        ("key.pem", key.serialize_pem()),
    ]
    .into_iter()
    .map(|(name, pem)| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    })
    .collect();
    (paths[0].clone(), paths[1].clone(), paths[2].clone())
}

struct Farm {
    addr: String,
    ca: String,
    dir: tempfile::TempDir,
}

impl Farm {
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SDFARM_COORDINATOR", self.addr.clone()),
            ("SDFARM_TLS_CA", self.ca.clone()),
        ]
    }

    fn sdfarm(&self, args: &[&str]) -> String {
        sdfarm_ok(args, &self.env())
    }

    fn submit(&self, name: &str, sweep: &str) -> String {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, sweep).unwrap();
        self.sdfarm(&["submit", path.to_str().unwrap()])
            .trim()
            .to_string()
    }

    /// `status --json`: the job, then its tasks.
    fn status(&self, job: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
        let lines: Vec<serde_json::Value> = self
            .sdfarm(&["status", job, "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines[0].clone(), lines[1..].to_vec())
    }

    fn wait(&self, job: &str) -> Option<i32> {
        Command::new(sdfarm_bin())
            .args(["wait", job])
            .envs(self.env())
            .status()
            .unwrap()
            .code()
    }
}

fn sweep(model: &str, images: u32) -> String {
    format!(
        "prompt = \"a kite\"\nseed = 3\nsteps = 2\nwidth = 32\nheight = 32\nn_iter = {images}\n\
         max_attempts = 1\nmodel = \"{model}\"\n"
    )
}

#[test]
fn pause_resume_and_retry_steer_jobs_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = write_certificates(dir.path());
    let port = free_port();
    let out = dir.path().join("out");
    let db = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let _coordinator = Proc::spawn(
        "coordinator",
        Command::new(sdfarm_bin())
            .args(["coordinator", "--database-url", &db])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--http", ""])
            .args(["--store", &format!("file://{}", out.display())])
            .args(["--tls-cert", &cert, "--tls-key", &key]),
    );
    wait_for_port(port, "coordinator", Duration::from_secs(60));
    let farm = Farm {
        addr: format!("https://localhost:{port}"),
        ca,
        dir,
    };

    // Plaintext, or TLS without the farm's CA, gets no answer.
    for addr in [format!("http://127.0.0.1:{port}"), farm.addr.clone()] {
        let refused = Command::new(sdfarm_bin())
            .args(["ls", "--coordinator", &addr])
            .output()
            .unwrap();
        assert!(!refused.status.success(), "{addr} answered without the CA");
    }
    assert_eq!(farm.sdfarm(&["ls"]), "", "the farm's CA gets an answer");

    // P is paused before any worker runs; Q, submitted after it, renders first.
    let p = farm.submit("p", &sweep("builtin:tiny-sd", 3));
    let paused = farm.sdfarm(&["pause", &p]);
    assert_eq!(paused.trim(), format!("job {p} paused"));
    let q = farm.submit("q", &sweep("builtin:tiny-sd", 2));
    assert_eq!(farm.status(&p).0["state"], "paused");

    let _worker = Proc::spawn(
        "worker",
        Command::new(sdfarm_bin())
            .args(["worker", "--name", "w", "--cache"])
            .arg(farm.dir.path().join("cache"))
            .envs(farm.env()),
    );
    assert_eq!(farm.wait(&q), Some(0), "Q succeeds while P is paused");
    let (job, _) = farm.status(&p);
    assert_eq!(job["state"], "paused");
    assert_eq!(
        (
            job["counts"]["completed"].as_u64(),
            job["counts"]["running"].as_u64()
        ),
        (Some(0), Some(0)),
        "nothing of the paused job was leased: {job}"
    );

    let resumed = farm.sdfarm(&["resume", &p]);
    assert_eq!(resumed.trim(), format!("job {p} running"));
    assert_eq!(farm.wait(&p), Some(0));
    assert_eq!(png_count(&out.join(&p)), 3);

    // A job whose model is missing fails for good; once the model exists, retry renders it
    // and the first attempt's reason is kept.
    let model = farm.dir.path().join("later-model");
    let f = farm.submit("f", &sweep(&model.display().to_string(), 1));
    assert_eq!(farm.wait(&f), Some(1), "the job fails without its model");
    let (job, tasks) = farm.status(&f);
    assert_eq!(job["counts"]["discarded"], 1);
    let first_reason = tasks[0]["errors"][0].as_str().unwrap().to_string();
    farm.sdfarm(&["tiny-model", "--out", model.to_str().unwrap()]);
    let retried = farm.sdfarm(&["retry", &f]);
    assert!(
        retried.contains("1 image(s) back in the queue"),
        "{retried}"
    );
    assert_eq!(farm.wait(&f), Some(0), "the retried job succeeds");
    let (job, tasks) = farm.status(&f);
    assert_eq!(job["state"], "succeeded");
    assert_eq!(tasks[0]["state"], "completed");
    assert_eq!(tasks[0]["errors"], serde_json::json!([first_reason]));
    assert_eq!(png_count(&out.join(&f)), 1);
}

/// Images in a job's folder (its manifest lies beside them).
fn png_count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("png".as_ref()))
        .count()
}
