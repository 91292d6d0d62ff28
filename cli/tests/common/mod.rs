//! Helpers shared by the CLI's integration tests: run the `sdfarm` binary, write a sweep,
//! find the folder a job's images went to.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn sdfarm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sdfarm"))
        .args(args)
        .output()
        .expect("running sdfarm")
}

/// Writes `text` to `dir/name` and returns the path as a string for the command line.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// The one job folder `sdfarm run --out out_dir` wrote (beside its `.sdfarm` state folder).
pub fn job_dir(out_dir: &Path) -> PathBuf {
    std::fs::read_dir(out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir() && !p.ends_with(".sdfarm"))
        .expect("a job folder")
}

/// Runs `sdfarm run` on `sweep` (written to `dir/s.toml`) with its own model cache under
/// `dir`, the output in `dir/out`, and `env` set.
pub fn run_sweep(dir: &Path, sweep: &str, env: &[(&str, &Path)]) -> Output {
    let path = write(dir, "s.toml", sweep);
    Command::new(env!("CARGO_BIN_EXE_sdfarm"))
        .args(["run", &path, "--out"])
        .arg(dir.join("out"))
        .arg("--cache")
        .arg(dir.join("cache"))
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .output()
        .expect("running sdfarm")
}

/// The image's infotext as `sdfarm info --json` reads it back.
pub fn infotext(path: &Path) -> serde_json::Value {
    let out = sdfarm(&["info", path.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The infotexts of the images (not the grids) found anywhere under `dir`.
pub fn image_infotexts(dir: &Path) -> Vec<serde_json::Value> {
    let mut pngs = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                todo.push(path);
            } else if name.ends_with(".png") && !name.contains("grid") {
                pngs.push(path);
            }
        }
    }
    pngs.sort();
    pngs.iter().map(|p| infotext(p)).collect()
}

/// A `.safetensors` file of F32 tensors, written by hand: 8-byte header length, JSON
/// header (padded to 8 bytes), data.
pub fn safetensors(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut json = serde_json::Value::Object(header).to_string();
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.extend_from_slice(&data);
    bytes
}

/// Deterministic tensor values of modest size, different for each `phase`.
pub fn values(n: usize, phase: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (i as f32 * 0.37 + phase).sin() * 0.5)
        .collect()
}

/// A textual-inversion embedding of two vectors for the built-in tiny model (CLIP width 32).
pub fn tiny_embedding() -> Vec<u8> {
    safetensors(&[("emb_params", vec![2, 32], values(64, 0.0))])
}

/// The sweep both CLI model tests render: the built-in tiny model, 32x32, two Euler steps, one
/// image per entry of `[xyz] x` (of type `axis`).
pub fn tiny_sweep(axis: &str, values: &str) -> String {
    format!(
        "model = \"builtin:tiny-sd\"\nprompt = \"a red barn\"\nseed = 3\nsteps = 2\n\
         sampler_name = \"Euler\"\nwidth = 32\nheight = 32\n[xyz]\n\
         x = {{ type = \"{axis}\", values = \"{values}\" }}\n"
    )
}

/// A child process killed when the test ends, however it ends.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sdfarm coordinator` on a free loopback port, with a SQLite store and images in
/// `dir/images`, without tokens; returns it and its address once it listens.
pub fn coordinator(dir: &Path) -> (Killed, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proc = Killed(
        Command::new(env!("CARGO_BIN_EXE_sdfarm"))
            .arg("coordinator")
            .arg("--database-url")
            .arg(format!("sqlite://{}", dir.join("jobs.db").display()))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--http", ""])
            .arg("--store")
            .arg(dir.join("images"))
            .env_remove("SDFARM_TOKENS_FILE")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting sdfarm coordinator"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the coordinator never listened on {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    (proc, format!("http://127.0.0.1:{port}"))
}

/// `sdfarm worker` for the coordinator at `addr`, its model cache in `dir/cache`; the caller
/// adds flags and spawns it.
pub fn worker_command(dir: &Path, addr: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sdfarm"));
    cmd.args(["worker", "--coordinator", addr, "--name", "test-worker"])
        .arg("--cache")
        .arg(dir.join("cache"));
    cmd
}
