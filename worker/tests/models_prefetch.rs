//! What a worker holds and fetching ahead: downloaded models and the built-in model are
//! reported by their references, and a prefetch brings a model onto disk once, merged with a
//! task that resolves the same reference meanwhile. No network: the "bucket" is a local
//! folder reached through `file://` URLs.

use std::path::Path;
use std::sync::Arc;

use safetensors::tensor::{Dtype, TensorView};
use sdfarm_worker::engine::Engine;
use sdfarm_worker::models::{ModelResolver, BUILTIN_TINY};

/// A file the resolver accepts as an SD 1.x checkpoint (it is never loaded here).
fn fake_checkpoint(path: &Path) {
    let values: Vec<u8> = (0..4096).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let views = [
        "model.diffusion_model.out.2.bias",
        "first_stage_model.decoder.conv_in.bias",
        "cond_stage_model.transformer.text_model.final_layer_norm.bias",
    ]
    .map(|name| {
        (
            name.to_string(),
            TensorView::new(Dtype::F32, vec![4096], &values).unwrap(),
        )
    });
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn downloads_and_the_builtin_model_are_reported_by_reference() {
    let bucket = tempfile::tempdir().unwrap();
    fake_checkpoint(&bucket.path().join("m.safetensors"));
    let url = format!("file://{}", bucket.path().join("m.safetensors").display());
    let cache = tempfile::tempdir().unwrap();
    let resolver = ModelResolver::new(cache.path());
    assert!(resolver.cached_models().is_empty());

    resolver.prefetch(&url);
    assert_eq!(resolver.downloads().downloads(), 1);
    assert_eq!(resolver.cached_models(), [url.clone()]);
    // The task that needs it finds it on disk.
    resolver.resolve(&url).unwrap();
    assert_eq!(resolver.downloads().downloads(), 1);

    resolver.resolve(BUILTIN_TINY).unwrap();
    assert_eq!(resolver.cached_models(), [BUILTIN_TINY.to_string(), url]);
}

#[test]
fn a_background_prefetch_and_a_task_download_the_file_once() {
    let bucket = tempfile::tempdir().unwrap();
    fake_checkpoint(&bucket.path().join("next.safetensors"));
    let url = format!(
        "file://{}",
        bucket.path().join("next.safetensors").display()
    );
    let cache = tempfile::tempdir().unwrap();
    let engine = Arc::new(Engine::new(ModelResolver::new(cache.path())));

    // Prefetches for the same reference, then the task itself resolving it.
    for _ in 0..4 {
        engine.prefetch(&url);
    }
    let resolved = engine.resolver().resolve(&url).unwrap();
    assert_eq!(resolved.name, "next");
    assert_eq!(engine.resolver().downloads().downloads(), 1);
    assert_eq!(engine.resolver().cached_models(), [url]);
    assert_eq!(engine.resolver().downloads().downloads(), 1);
}
