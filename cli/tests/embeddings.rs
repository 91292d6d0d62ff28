//! `sdfarm run` with a textual-inversion embedding and a LoRA made for the built-in tiny
//! model: the embedded worker finds them in its folders (`SDFARM_EMBEDDINGS_DIR`,
//! `SDFARM_LORA_DIR`) and the images' infotexts list them as A1111's "TI hashes" and
//! "Lora hashes".

mod common;

use std::path::Path;
use std::process::Stdio;

use common::{
    coordinator, image_infotexts, run_sweep, safetensors, sdfarm, tiny_embedding, tiny_sweep,
    values, worker_command, Killed,
};
use sha2::{Digest, Sha256};

#[test]
fn embeddings_and_loras_are_used_by_name_and_listed_in_the_infotext() {
    let dir = tempfile::tempdir().unwrap();
    let embeddings = dir.path().join("embeddings");
    let loras = dir.path().join("Lora");
    std::fs::create_dir_all(&embeddings).unwrap();
    std::fs::create_dir_all(&loras).unwrap();
    let embedding = tiny_embedding();
    std::fs::write(embeddings.join("tinystyle.safetensors"), &embedding).unwrap();
    let rank = 4;
    let lora = safetensors(&[
        (
            "lora_unet_down_blocks_0_attentions_0_proj_in.alpha",
            vec![],
            vec![2.0],
        ),
        (
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
            vec![rank, 32, 1, 1],
            values(rank * 32, 1.0),
        ),
        (
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight",
            vec![32, rank, 1, 1],
            values(rank * 32, 2.0),
        ),
    ]);
    std::fs::write(loras.join("tinylora.safetensors"), &lora).unwrap();

    let out = run_sweep(
        dir.path(),
        &tiny_sweep("Prompt S/R", "red, tinystyle, <lora:tinylora:0.8>"),
        &[
            ("SDFARM_EMBEDDINGS_DIR", &embeddings),
            ("SDFARM_LORA_DIR", &loras),
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let infotexts = image_infotexts(&dir.path().join("out"));
    assert_eq!(infotexts.len(), 3);
    let by_prompt = |word: &str| {
        infotexts
            .iter()
            .find(|t| t["Prompt"].as_str().unwrap_or_default().contains(word))
            .unwrap_or_else(|| panic!("no image for {word}: {infotexts:?}"))
    };

    let plain = by_prompt("red");
    assert!(plain.get("TI hashes").is_none() && plain.get("Lora hashes").is_none());
    // A1111: the first 12 hex digits of the embedding file's sha256.
    let sha = hex::encode(Sha256::digest(&embedding));
    assert_eq!(
        by_prompt("tinystyle")["TI hashes"].as_str(),
        Some(format!("tinystyle: {}", &sha[..12]).as_str())
    );
    // A1111 (kohya's addnet hash): the sha256 of the LoRA's data, without the header.
    let header = u64::from_le_bytes(lora[..8].try_into().unwrap()) as usize;
    let addnet = hex::encode(Sha256::digest(&lora[8 + header..]));
    assert_eq!(
        by_prompt("lora")["Lora hashes"].as_str(),
        Some(format!("tinylora: {}", &addnet[..12]).as_str())
    );
}

#[test]
fn worker_embeddings_dir_flag_names_the_folder_embeddings_come_from() {
    let dir = tempfile::tempdir().unwrap();
    // Not <models>/embeddings and not in the environment: only the flag leads to it.
    let embeddings = dir.path().join("my-embeddings");
    std::fs::create_dir_all(&embeddings).unwrap();
    let embedding = tiny_embedding();
    std::fs::write(embeddings.join("tinystyle.safetensors"), &embedding).unwrap();

    let (_coordinator, addr) = coordinator(dir.path());
    let worker = |embeddings_dir: &Path| {
        worker_command(dir.path(), &addr)
            .arg("--embeddings-dir")
            .arg(embeddings_dir)
            .env_remove("SDFARM_EMBEDDINGS_DIR")
            .env_remove("SDFARM_MODELS_DIR")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // A folder that does not exist is named at start-up, not discovered at the first prompt.
    let missing = dir.path().join("nowhere");
    let out = worker(&missing).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--embeddings-dir") && stderr.contains("nowhere"),
        "{stderr}"
    );

    let _worker = Killed(worker(&embeddings));
    let sweep = common::write(
        dir.path(),
        "s.toml",
        &tiny_sweep("Prompt S/R", "red, tinystyle"),
    );
    let out = sdfarm(&["submit", &sweep, "--coordinator", &addr]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let out = sdfarm(&["wait", &job, "--coordinator", &addr]);
    assert!(
        out.status.success(),
        "job {job}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let infotexts = image_infotexts(&dir.path().join("images"));
    assert_eq!(infotexts.len(), 2, "{infotexts:?}");
    let styled = infotexts
        .iter()
        .find(|t| {
            t["Prompt"]
                .as_str()
                .unwrap_or_default()
                .contains("tinystyle")
        })
        .expect("the image whose prompt names the embedding");
    let sha = hex::encode(Sha256::digest(&embedding));
    assert_eq!(
        styled["TI hashes"].as_str(),
        Some(format!("tinystyle: {}", &sha[..12]).as_str()),
        "the worker used the embedding from --embeddings-dir: {styled}"
    );
}
