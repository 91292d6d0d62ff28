//! Fairness with real processes: a coordinator on Postgres and one worker. A big sweep of
//! one owner is submitted, then a small one of another owner: leases alternate between the
//! owners, so the small sweep finishes while most of the big one is still waiting (in
//! submission order it would wait for the whole big one).

use std::process::Command;
use std::time::Duration;

use sdfarm_e2e::*;

fn sweep(name: &str, images: u32) -> String {
    format!(
        "name = \"{name}\"\nprompt = \"a lighthouse\"\nseed = 7\nsteps = 2\nwidth = 32\n\
         height = 32\nn_iter = {images}\nmodel = \"builtin:tiny-sd\"\n"
    )
}

fn counts(addr: &str, job: &str) -> serde_json::Value {
    let out = sdfarm_ok(&["status", job, "--json", "--coordinator", addr], &[]);
    let first = out.lines().next().expect("status prints the job first");
    serde_json::from_str(first).expect("status --json prints JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_sweep_submitted_later_is_not_starved_by_a_big_one() {
    const BIG: u64 = 24;
    const SMALL: u64 = 2;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = format!("http://127.0.0.1:{port}");
    let out = dir.path().join("out");
    let _coordinator = Proc::spawn(
        "coordinator",
        Command::new(sdfarm_bin())
            .args(["coordinator", "--database-url", &db.url])
            .args(["--listen", &format!("127.0.0.1:{port}"), "--http", ""])
            .args(["--store", &format!("file://{}", out.display())]),
    );
    wait_for_port(port, "coordinator", Duration::from_secs(60));

    let submit = |name: &str, images: u64, owner: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, sweep(name, images as u32)).unwrap();
        sdfarm_ok(
            &["submit", path.to_str().unwrap(), "--coordinator", &addr],
            &[("SDFARM_OWNER", owner.to_string())],
        )
        .trim()
        .to_string()
    };
    // Both queued before any worker runs, so what the worker renders first is decided by
    // the claim alone, never by timing.
    let big = submit("big", BIG, "alice");
    let small = submit("small", SMALL, "bob");
    let _worker = Proc::spawn(
        "worker",
        Command::new(sdfarm_bin())
            .args(["worker", "--coordinator", &addr, "--name", "w"])
            .arg("--cache")
            .arg(dir.path().join("cache")),
    );

    let waited = Command::new(sdfarm_bin())
        .args(["wait", &small, "--coordinator", &addr])
        .status()
        .unwrap();
    assert!(waited.success(), "the small sweep succeeds");
    let big_now = counts(&addr, &big);
    let small_now = counts(&addr, &small);
    assert_eq!(small_now["owner"], "bob");
    assert_eq!(big_now["owner"], "alice");
    assert_eq!(small_now["counts"]["completed"], SMALL);
    // Alternating leases: while the small sweep's images were rendered, the big one got about
    // as many (the worker may hold one more leased ahead).
    let big_done = big_now["counts"]["completed"].as_u64().unwrap()
        + big_now["counts"]["running"].as_u64().unwrap();
    assert!(
        big_done < BIG / 2,
        "the big sweep had {big_done} of {BIG} images rendered or rendering when the small \
         one finished: {big_now}"
    );
    assert_eq!(big_now["state"], "running");

    let waited = Command::new(sdfarm_bin())
        .args(["wait", &big, "--coordinator", &addr])
        .status()
        .unwrap();
    assert!(waited.success(), "the big sweep succeeds too");
    let images = std::fs::read_dir(out.join(&big))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("png".as_ref()))
        .count();
    assert_eq!(images as u64, BIG);
}
