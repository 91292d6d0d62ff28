//! `sdfarm run` over a sweep whose checkpoints include a pickle, a truncated file and a header
//! bomb: those images fail with their reasons, without retries, and the same embedded worker
//! renders the good checkpoints' images.

mod common;

use std::path::{Path, PathBuf};

use common::{image_infotexts, run_sweep, tiny_sweep};
use sha2::{Digest, Sha256};

fn reference_single_file() -> Option<PathBuf> {
    let dir = match std::env::var_os("SDFARM_REFERENCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference"),
    };
    let file = dir.join("tiny-sd/tiny-sd-v1.safetensors");
    file.is_file().then_some(file)
}

#[test]
fn bad_checkpoints_fail_with_reasons_and_good_ones_render() {
    let dir = tempfile::tempdir().unwrap();
    let pickle = dir.path().join("old.ckpt");
    std::fs::write(&pickle, b"\x80\x02}q\x00.").unwrap();
    let truncated = dir.path().join("cut.safetensors");
    let mut bytes = 200u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#);
    std::fs::write(&truncated, &bytes).unwrap();
    let bomb = dir.path().join("bomb.safetensors");
    let mut bytes = (u64::MAX - 7).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&bomb, &bytes).unwrap();

    let mut checkpoints = vec![
        pickle.display().to_string(),
        "builtin:tiny-sd".to_string(),
        truncated.display().to_string(),
        bomb.display().to_string(),
    ];
    let single = reference_single_file();
    match &single {
        Some(file) => checkpoints.push(file.display().to_string()),
        None => println!("skipped the single-file cell: ../shared/reference not found"),
    }
    let out = run_sweep(
        dir.path(),
        &tiny_sweep("Checkpoint name", &checkpoints.join(", ")),
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stderr}\n{stdout}");
    assert!(!out.status.success(), "a job with failed images succeeded");
    for (file, reason) in [
        ("old.ckpt", "arbitrary code"),
        ("cut.safetensors", "truncated"),
        ("bomb.safetensors", "header claims"),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("no error line names {file}"));
        assert!(line.contains(reason), "{line}");
        // Failed once, not retried: one reason per image.
        assert_eq!(line.matches(file).count(), 1, "{line}");
    }

    let infotexts = image_infotexts(&dir.path().join("out"));
    let models: std::collections::BTreeSet<String> = infotexts
        .iter()
        .map(|t| {
            format!(
                "{} {}",
                t["Model"].as_str().unwrap(),
                t["Model hash"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        models.len(),
        if single.is_some() { 2 } else { 1 },
        "{models:?}"
    );
    assert!(
        models.iter().any(|m| m.starts_with("tiny-sd ")),
        "{models:?}"
    );
    if let Some(file) = single {
        // A1111's Model hash is the first 10 hex digits of `sha256sum` of the file.
        let sha = hex::encode(Sha256::digest(std::fs::read(file).unwrap()));
        let wanted = format!("tiny-sd-v1 {}", &sha[..10]);
        assert!(models.contains(&wanted), "{models:?} lacks {wanted}");
    }
}
