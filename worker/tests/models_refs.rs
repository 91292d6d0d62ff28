//! Model references: parsing, A1111-style names in a model folder, downloads from a local
//! object store (verified, deduplicated, LRU-evicted under a byte cap), and the hub's error
//! when it cannot be reached. No network is used.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::tensor::{Dtype, TensorView};
use sdfarm_worker::engine::EngineError;
use sdfarm_worker::models::reference::{parse, ModelRef};
use sdfarm_worker::models::{write_tiny_model, ModelFormat, ModelResolver};
use sha2::{Digest, Sha256};

/// A file the resolver accepts as an SD 1.x checkpoint (one tensor per network; it is never
/// loaded here). `fill` makes each file's bytes, and so its hash, distinct.
fn fake_checkpoint(path: &Path, fill: f32) -> String {
    let values: Vec<u8> = (0..256)
        .flat_map(|i| (fill + i as f32).to_le_bytes())
        .collect();
    let views = [
        "model.diffusion_model.out.2.bias",
        "first_stage_model.decoder.conv_in.bias",
        "cond_stage_model.transformer.text_model.final_layer_norm.bias",
    ]
    .map(|name| {
        (
            name.to_string(),
            TensorView::new(Dtype::F32, vec![256], &values).unwrap(),
        )
    });
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, &bytes).unwrap();
    hex::encode(Sha256::digest(&bytes))
}

#[test]
fn references_parse() {
    let hub = |repo: &str, revision: Option<&str>, file: Option<&str>| ModelRef::Hub {
        repo: repo.into(),
        revision: revision.map(Into::into),
        file: file.map(Into::into),
    };
    assert_eq!(
        parse("hf:runwayml/stable-diffusion-v1-5").unwrap(),
        hub("runwayml/stable-diffusion-v1-5", None, None)
    );
    assert_eq!(
        parse("hf:org/repo@v2.0/sub/model.safetensors").unwrap(),
        hub("org/repo", Some("v2.0"), Some("sub/model.safetensors"))
    );
    assert_eq!(
        parse("hf:org/repo/model.safetensors").unwrap(),
        hub("org/repo", None, Some("model.safetensors"))
    );
    for bad in [
        "hf:repo-without-org",
        "hf:org/repo/../x",
        "hf:org/re po",
        "hf:/x",
    ] {
        let err = parse(bad).unwrap_err();
        assert!(!err.retryable() && err.to_string().contains("hf:"), "{err}");
    }
    let pin = "ab".repeat(32);
    assert_eq!(
        parse(&format!("https://h.example/m.safetensors#sha256:{pin}")).unwrap(),
        ModelRef::Url {
            url: "https://h.example/m.safetensors".into(),
            sha256: Some(pin.clone())
        }
    );
    assert_eq!(
        parse("s3://bucket/models/m.safetensors").unwrap(),
        ModelRef::Url {
            url: "s3://bucket/models/m.safetensors".into(),
            sha256: None
        }
    );
    let unpinned = parse("https://h.example/m.safetensors").unwrap_err();
    assert!(unpinned.to_string().contains("#sha256:"), "{unpinned}");
    assert!(parse("https://h.example/m#sha256:abc").is_err());
    assert!(parse("ftp://h.example/m.safetensors").is_err());
    assert_eq!(
        parse("sub/model.safetensors [6ce0161689]").unwrap(),
        ModelRef::Name {
            name: "sub/model.safetensors".into(),
            hash: Some("6ce0161689".into())
        }
    );
    assert_eq!(
        parse("/abs/model.safetensors").unwrap(),
        ModelRef::Path(PathBuf::from("/abs/model.safetensors"))
    );
}

#[test]
fn names_resolve_in_the_model_folder_as_a1111_finds_them() {
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    let foo = fake_checkpoint(&models.join("sub/foo.safetensors"), 1.0);
    let foobar = fake_checkpoint(&models.join("foobar.safetensors"), 2.0);
    write_tiny_model(&models.join("tiny-folder")).unwrap();
    std::fs::write(models.join("old.ckpt"), b"\x80\x02.").unwrap();
    let resolver = ModelResolver::new(root.path().join("cache")).with_models_dir(&models);

    let found = |name: &str| resolver.resolve(name).unwrap();
    for name in [
        "sub/foo.safetensors",
        "sub/foo",
        "foo",
        &format!("foo.safetensors [{}]", &foo[..10]),
        &foo[..10],
    ] {
        let r = found(name);
        assert_eq!(
            (r.name.as_str(), &r.hash[..]),
            ("foo", &foo[..10]),
            "{name}"
        );
        assert_eq!(r.format, ModelFormat::SingleFile);
    }
    assert_eq!(found("foobar").hash, foobar[..10]);
    // The shortest title containing the text wins.
    assert_eq!(found("oo").name, "foobar");
    let folder = found("tiny-folder");
    assert_eq!(
        (folder.name.as_str(), folder.format),
        ("tiny-folder", ModelFormat::Diffusers)
    );

    let stale = resolver.resolve("foo [0123456789]").unwrap_err();
    assert!(stale.to_string().contains("not 0123456789"), "{stale}");
    let pickle = resolver.resolve("old").unwrap_err();
    assert!(pickle.to_string().contains("arbitrary code"), "{pickle}");
    let missing = resolver.resolve("nothing-like-it").unwrap_err();
    assert!(matches!(missing, EngineError::ModelNotFound { .. }));
    assert!(
        missing.to_string().contains("sub/foo.safetensors"),
        "lists what is available: {missing}"
    );
}

/// A "bucket" on the local file system, reached through object_store's `file://` URLs.
fn bucket_with(names: &[&str]) -> (tempfile::TempDir, Vec<(String, String)>) {
    let bucket = tempfile::tempdir().unwrap();
    let refs = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let path = bucket.path().join(name);
            let sha = fake_checkpoint(&path, i as f32 * 1000.0);
            (format!("file://{}", path.display()), sha)
        })
        .collect();
    (bucket, refs)
}

#[test]
fn concurrent_requests_download_once() {
    let (_bucket, refs) = bucket_with(&["a.safetensors"]);
    let (url, sha) = refs[0].clone();
    let cache = tempfile::tempdir().unwrap();
    let resolver = Arc::new(ModelResolver::new(cache.path()));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (resolver, url) = (resolver.clone(), url.clone());
            std::thread::spawn(move || resolver.resolve(&url).unwrap())
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(resolver.downloads().downloads(), 1);
    assert!(results.iter().all(|r| r == &results[0]));
    assert_eq!(results[0].name, "a");
    assert_eq!(results[0].hash, sha[..10]);
    assert!(results[0].dir.starts_with(cache.path()));
    let leftovers: Vec<_> = std::fs::read_dir(resolver.downloads().root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
}

#[test]
fn a_cap_of_two_models_evicts_the_least_recently_used() {
    let (_bucket, refs) = bucket_with(&["a.safetensors", "b.safetensors", "c.safetensors"]);
    let size = std::fs::metadata(refs[0].0.strip_prefix("file://").unwrap())
        .unwrap()
        .len();
    let cache = tempfile::tempdir().unwrap();
    let resolver = ModelResolver::new(cache.path()).with_cache_cap(2 * size + 100);
    let names = |resolver: &ModelResolver| -> Vec<String> {
        resolver
            .downloads()
            .files()
            .iter()
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    let use_model = |i: usize| {
        let r = resolver.resolve(&refs[i].0).unwrap();
        assert_eq!(r.hash, refs[i].1[..10]);
        // Distinct last-use times even on coarse file-system clocks.
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    use_model(0);
    use_model(1);
    use_model(0); // a is now more recent than b
    assert_eq!(resolver.downloads().downloads(), 2);
    use_model(2);
    assert_eq!(names(&resolver), ["a", "c"], "b was least recently used");
    assert!(resolver.downloads().used_bytes() <= 2 * size + 100);
    use_model(1);
    assert_eq!(names(&resolver), ["c", "b"], "a went next");
    assert_eq!(resolver.downloads().downloads(), 4);
}

#[test]
fn pinned_downloads_are_verified() {
    let (_bucket, refs) = bucket_with(&["m.safetensors"]);
    let (url, sha) = refs[0].clone();
    let cache = tempfile::tempdir().unwrap();
    let resolver = ModelResolver::new(cache.path());
    let wrong = format!("{url}#sha256:{}", "0".repeat(64));
    let err = resolver.resolve(&wrong).unwrap_err();
    assert!(!err.retryable(), "{err}");
    assert!(err.to_string().contains(&sha), "{err}");
    assert!(
        resolver.downloads().files().is_empty(),
        "a bad download was kept"
    );
    let ok = resolver.resolve(&format!("{url}#sha256:{sha}")).unwrap();
    assert_eq!(ok.hash, sha[..10]);

    let missing = resolver
        .resolve(&format!(
            "{}/nope.safetensors",
            url.rsplit_once('/').unwrap().0
        ))
        .unwrap_err();
    assert!(
        matches!(missing, EngineError::ModelNotFound { .. }),
        "{missing:?}"
    );
}

#[test]
fn the_hub_unreachable_is_a_retryable_error_naming_the_repo() {
    // A closed local port stands in for the hub; nothing leaves the machine.
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    let cache = tempfile::tempdir().unwrap();
    let resolver = ModelResolver::new(cache.path());
    for reference in [
        "hf:org/repo@main/model.safetensors",
        "hf:org/diffusers-repo",
    ] {
        let err = resolver.resolve(reference).unwrap_err();
        let message = err.to_string();
        println!("{message}");
        assert!(err.retryable(), "{message}");
        assert!(message.contains("hf:org/"), "{message}");
        assert!(message.contains("Hugging Face Hub"), "{message}");
    }
}
