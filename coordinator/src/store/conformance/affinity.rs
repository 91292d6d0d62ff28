//! Conformance checks for `claim_for_models`: a worker's loaded models win among tasks of
//! the highest waiting priority, never over a higher priority.

use std::sync::Arc;

use super::fixtures::*;
use crate::store::*;

/// A job of `n` tasks all rendering `model`.
async fn submit_model(store: &dyn Store, id: &str, priority: i32, model: &str, n: u32) -> Vec<i64> {
    let tasks: Vec<NewTask> = new_tasks(id, 0..n)
        .into_iter()
        .map(|mut t| {
            t.params.model = model.to_string();
            t
        })
        .collect();
    store
        .create_job(&new_job(id, priority, 3), &tasks, T0)
        .await
        .unwrap();
    store
        .list_tasks(id)
        .await
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect()
}

pub(super) async fn loaded_models_are_claimed_first_within_the_top_priority(store: Arc<dyn Store>) {
    let a = submit_model(&*store, "job-a", 0, "model-a", 2).await;
    let b = submit_model(&*store, "job-b", 0, "model-b", 2).await;
    let b_held = ["model-b".to_string()];
    let now = T0 + 1;

    // Older model-a tasks wait, yet the worker holding model-b gets model-b's.
    let got = store
        .claim_for_models("w-b", DEFAULT_POOL, &b_held, 1, LEASE, now)
        .await
        .unwrap();
    assert_eq!(ids(&got), [b[0]]);
    assert_eq!(got[0].params.model, "model-b");
    assert_eq!(got[0].attempt, 1);

    // Nothing for a model nobody asked for; nothing when no models are held.
    let none = ["model-z".to_string()];
    assert!(store
        .claim_for_models("w-z", DEFAULT_POOL, &none, 5, LEASE, now)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .claim_for_models("w-z", DEFAULT_POOL, &[], 5, LEASE, now)
        .await
        .unwrap()
        .is_empty());

    // A higher priority of another model comes first: affinity yields.
    let urgent = submit_model(&*store, "job-urgent", 9, "model-a", 1).await;
    assert!(store
        .claim_for_models("w-b", DEFAULT_POOL, &b_held, 5, LEASE, now)
        .await
        .unwrap()
        .is_empty());
    let got = store
        .claim("w-b", DEFAULT_POOL, 1, LEASE, now)
        .await
        .unwrap();
    assert_eq!(ids(&got), urgent);

    // Back at equal priority, both models held: oldest first among them.
    let both = ["model-a".to_string(), "model-b".to_string()];
    let got = store
        .claim_for_models("w-ab", DEFAULT_POOL, &both, 10, LEASE, now)
        .await
        .unwrap();
    assert_eq!(ids(&got), [a[0], a[1], b[1]]);
}
