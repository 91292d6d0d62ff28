//! Tokens with real processes: a coordinator with a tokens file, a worker and the CLI passing
//! theirs through SDFARM_TOKEN; the wrong token keeps a worker out and a client's submit fails.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sdfarm_e2e::*;

const CLIENT: &str = "client-token-for-the-e2e-test";
const WORKER: &str = "worker-token-for-the-e2e-test";

#[test]
fn a_farm_with_tokens_renders_for_the_right_roles_only() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("client {CLIENT} e2e\nworker {WORKER} gpu\n"),
    )
    .unwrap();
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let db = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let out = format!("file://{}", dir.path().join("out").display());
    let _coordinator = Proc::spawn(
        "coordinator",
        Command::new(sdfarm_bin())
            .args(["coordinator", "--database-url", &db, "--store", &out])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--http", ""])
            .arg("--tokens-file")
            .arg(&tokens)
            .stderr(Stdio::null()),
    );
    wait_for_port(port, "coordinator", Duration::from_secs(60));

    // A worker holding a client token is refused and exits with an error.
    let mut wrong = Proc::spawn(
        "wrong-worker",
        Command::new(sdfarm_bin())
            .args(["worker", "--coordinator", &addr, "--cache"])
            .arg(dir.path().join("cache"))
            .env("SDFARM_TOKEN", CLIENT)
            .stderr(Stdio::null()),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(s) = wrong.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "refused worker kept running"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());

    let sweep = dir.path().join("sweep.toml");
    std::fs::write(
        &sweep,
        "prompt = \"a kite\"\nseed = 3\nsteps = 3\nwidth = 32\nheight = 32\nmodel = \"builtin:tiny-sd\"\n",
    )
    .unwrap();
    let submit = |token: &str| {
        Command::new(sdfarm_bin())
            .args(["submit", sweep.to_str().unwrap(), "--coordinator", &addr])
            .env("SDFARM_TOKEN", token)
            .output()
            .unwrap()
    };
    let refused = submit(WORKER);
    assert!(!refused.status.success(), "a worker token cannot submit");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("worker token"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let _worker = Proc::spawn(
        "worker",
        Command::new(sdfarm_bin())
            .args(["worker", "--coordinator", &addr, "--cache"])
            .arg(dir.path().join("cache"))
            .env("SDFARM_TOKEN", WORKER)
            .stderr(Stdio::null()),
    );
    let accepted = submit(CLIENT);
    assert!(accepted.status.success());
    let job = String::from_utf8(accepted.stdout)
        .unwrap()
        .trim()
        .to_string();
    let wait = Command::new(sdfarm_bin())
        .args(["wait", &job, "--coordinator", &addr, "--token", CLIENT])
        .status()
        .unwrap();
    assert!(wait.success(), "the job renders with the right tokens");
    let images: Vec<_> = std::fs::read_dir(dir.path().join("out").join(&job))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("png".as_ref()))
        .collect();
    assert_eq!(images.len(), 1);
}
