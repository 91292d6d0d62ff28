//! `sdfarm run` with a textual-inversion embedding and a LoRA made for the built-in tiny
//! model: the embedded worker finds them in its folders (`SDFARM_EMBEDDINGS_DIR`,
//! `SDFARM_LORA_DIR`) and the images' infotexts list them as A1111's "TI hashes" and
//! "Lora hashes".

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

/// A `.safetensors` file of F32 tensors, written by hand: 8-byte header length, JSON
/// header (padded to 8 bytes), data.
fn safetensors(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
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

fn values(n: usize, phase: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (i as f32 * 0.37 + phase).sin() * 0.5)
        .collect()
}

fn infotext(path: &Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sdfarm"))
        .args(["info", path.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn embeddings_and_loras_are_used_by_name_and_listed_in_the_infotext() {
    let dir = tempfile::tempdir().unwrap();
    let embeddings = dir.path().join("embeddings");
    let loras = dir.path().join("Lora");
    std::fs::create_dir_all(&embeddings).unwrap();
    std::fs::create_dir_all(&loras).unwrap();
    let embedding = safetensors(&[("emb_params", vec![2, 32], values(64, 0.0))]);
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

    let sweep = dir.path().join("s.toml");
    std::fs::write(
        &sweep,
        "model = \"builtin:tiny-sd\"\nprompt = \"a red barn\"\nseed = 3\nsteps = 2\n\
         sampler_name = \"Euler\"\nwidth = 32\nheight = 32\n[xyz]\n\
         x = { type = \"Prompt S/R\", values = \"red, tinystyle, <lora:tinylora:0.8>\" }\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_sdfarm"))
        .args(["run", sweep.to_str().unwrap(), "--out"])
        .arg(&out_dir)
        .arg("--cache")
        .arg(dir.path().join("cache"))
        .env("SDFARM_EMBEDDINGS_DIR", &embeddings)
        .env("SDFARM_LORA_DIR", &loras)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let job_dir = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir() && !p.ends_with(".sdfarm"))
        .expect("a job folder");
    let infotexts: Vec<serde_json::Value> = std::fs::read_dir(&job_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.ends_with(".png") && !name.contains("grid")
        })
        .map(|p| infotext(&p))
        .collect();
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
