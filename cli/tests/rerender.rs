//! `sdfarm rerender IMAGE.png --coordinator URL` against real coordinator and worker
//! processes: images rendered by `sdfarm run` are rendered again by the farm's worker from
//! their infotexts alone, byte for byte.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{coordinator, run_sweep, sdfarm, worker_command, Killed};

/// Every PNG under `dir`, sorted by path.
fn pngs(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "png") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn rerender_on_a_coordinator_reproduces_images_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    // An ancestral sampler (its step noise comes from each image's generator) and a batch of
    // two (the second image's seed is the first's + 1).
    let out = run_sweep(
        dir.path(),
        "model = \"builtin:tiny-sd\"\nprompt = \"a (lighthouse:1.2) at dusk\"\n\
         negative_prompt = \"fog\"\nseed = 21\nsteps = 3\nsampler_name = \"Euler a\"\n\
         width = 32\nheight = 32\nbatch_size = 2\n",
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let originals: Vec<PathBuf> = pngs(&dir.path().join("out"))
        .into_iter()
        .filter(|p| !p.file_name().unwrap().to_string_lossy().contains("grid"))
        .collect();
    assert_eq!(originals.len(), 2, "{originals:?}");

    let farm_dir = dir.path().join("farm");
    std::fs::create_dir_all(&farm_dir).unwrap();
    let (_coordinator, addr) = coordinator(&farm_dir);
    let _worker = Killed(
        worker_command(&farm_dir, &addr)
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    for original in &originals {
        let again = sdfarm(&[
            "rerender",
            original.to_str().unwrap(),
            "--coordinator",
            &addr,
        ]);
        let said = String::from_utf8_lossy(&again.stdout);
        assert!(
            again.status.success() && said.starts_with("identical"),
            "{}: {said}\n{}",
            original.display(),
            String::from_utf8_lossy(&again.stderr)
        );
    }
    // The farm's worker rendered them: its store holds the same bytes.
    let original_bytes: Vec<Vec<u8>> = originals
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let rendered = pngs(&farm_dir.join("images"));
    assert_eq!(rendered.len(), 2, "{rendered:?}");
    for path in &rendered {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            original_bytes.contains(&bytes),
            "{} is not one of the originals",
            path.display()
        );
    }
}
