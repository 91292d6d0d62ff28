//! Single-file and LoRA loads use the worker's device (`SDFARM_DEVICE`) like folder loads:
//! a device name the worker cannot use fails them with the variable's message. One test in
//! its own binary, since it sets a process-wide variable.

use std::path::{Path, PathBuf};

use sdfarm_worker::models::lora::LoraUse;
use sdfarm_worker::models::{ModelResolver, BUILTIN_TINY};

fn single_file() -> Option<PathBuf> {
    let dir = match std::env::var_os("SDFARM_REFERENCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference"),
    };
    let path = dir.join("tiny-sd/tiny-sd-v1.safetensors");
    path.is_file().then_some(path)
}

#[test]
fn single_file_and_lora_loads_follow_sdfarm_device() {
    let dir = tempfile::tempdir().unwrap();
    let resolver = ModelResolver::new(dir.path().join("cache"));
    let tiny = resolver.resolve(BUILTIN_TINY).unwrap();
    let lora = LoraUse {
        path: dir.path().join("unused.safetensors"),
        te_weight: 0.0,
        unet_weight: 0.0,
    };
    let checkpoint = single_file().map(|p| resolver.resolve(p.to_str().unwrap()).unwrap());

    std::env::set_var("SDFARM_DEVICE", "cpu");
    assert!(tiny.load_with_loras(&[]).unwrap().device().is_cpu());
    if let Some(c) = &checkpoint {
        assert!(c.load().unwrap().device().is_cpu());
    } else {
        println!("single file: skipped: ../shared/reference not found");
    }

    std::env::set_var("SDFARM_DEVICE", "tpu");
    let err = tiny
        .load_with_loras(&[lora])
        .err()
        .expect("tpu is no device");
    assert!(err.to_string().contains("SDFARM_DEVICE"), "{err}");
    if let Some(c) = &checkpoint {
        let err = c.load().err().expect("tpu is no device");
        assert!(err.to_string().contains("SDFARM_DEVICE"), "{err}");
    }
    std::env::remove_var("SDFARM_DEVICE");
}
