//! Several workers sharing one model cache: the built-in model is written once and nobody
//! ever sees it half-written or replaced under them.

use sdfarm_worker::models::{ModelResolver, BUILTIN_TINY};

#[test]
fn concurrent_workers_share_the_builtin_model_without_tearing() {
    let cache = tempfile::tempdir().unwrap();
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let dir = cache.path().to_path_buf();
            std::thread::spawn(move || {
                let resolved = ModelResolver::new(dir).resolve(BUILTIN_TINY).unwrap();
                // Read every file right away, as a worker loading the model would, while the
                // other threads may still be finishing their own copies.
                let mut total = 0;
                for _ in 0..5 {
                    for sub in ["unet", "vae", "text_encoder"] {
                        for entry in std::fs::read_dir(resolved.dir.join(sub)).unwrap() {
                            total += std::fs::read(entry.unwrap().path()).unwrap().len();
                        }
                    }
                }
                (resolved.hash, total)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(results.iter().all(|r| r == &results[0]), "{results:?}");
    let leftovers: Vec<_> = std::fs::read_dir(cache.path().join("builtin"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["tiny-sd"], "no temporary folders left behind");
}
