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
