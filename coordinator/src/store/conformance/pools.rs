//! Conformance checks for worker pools: a claim never crosses pools, and the per-pool queue
//! counts the metrics and the scaling signal read.

use std::sync::Arc;

use super::fixtures::*;
use crate::store::*;

/// Creates a job of `n` tasks in `pool`, rendering `model`.
async fn submit_to_pool(
    store: &dyn Store,
    id: &str,
    pool: &str,
    model: &str,
    n: u32,
    now: Millis,
) -> Vec<TaskRecord> {
    let mut job = new_job(id, 0, 2);
    job.pool = pool.to_string();
    let mut tasks = new_tasks(id, 0..n);
    for t in &mut tasks {
        t.params.model = model.to_string();
    }
    store.create_job(&job, &tasks, now).await.unwrap();
    store.list_tasks(id).await.unwrap()
}

pub(super) async fn claim_leases_only_the_workers_pool(store: Arc<dyn Store>) {
    let a100 = submit_to_pool(&*store, "job-a100", "a100", "sd15", 2, T0).await;
    // Older and of higher priority than nothing else: still invisible to the a100 pool.
    let plain = submit(&*store, "job-plain", 9, 1, 1, T0 - 10).await;
    assert!(a100.iter().all(|t| t.pool == "a100"));
    assert_eq!(plain[0].pool, DEFAULT_POOL);

    let got = store.claim("w-a", "a100", 10, LEASE, T0).await.unwrap();
    assert_eq!(ids(&got), ids(&a100));
    assert!(got.iter().all(|t| t.pool == "a100"));
    assert!(store
        .claim("w-a", "a100", 10, LEASE, T0)
        .await
        .unwrap()
        .is_empty());
    assert!(
        store
            .claim("w-h", "h100", 10, LEASE, T0)
            .await
            .unwrap()
            .is_empty(),
        "a pool with no tasks of its own gets nothing"
    );
    let got = store
        .claim("w-d", DEFAULT_POOL, 10, LEASE, T0)
        .await
        .unwrap();
    assert_eq!(ids(&got), ids(&plain));

    // A retried task stays in its pool.
    let t = &a100[0];
    store
        .fail(t.id, "w-a", "oom", true, &no_jitter(), T0 + 1)
        .await
        .unwrap();
    let later = T0 + 60_000;
    assert!(store
        .claim("w-d", DEFAULT_POOL, 10, LEASE, later)
        .await
        .unwrap()
        .is_empty());
    let again = store.claim("w-a2", "a100", 10, LEASE, later).await.unwrap();
    assert_eq!(ids(&again), [t.id]);
}

pub(super) async fn queue_counts_group_unfinished_tasks(store: Arc<dyn Store>) {
    assert!(store.queue_counts().await.unwrap().is_empty());
    submit_to_pool(&*store, "job-1", "a100", "sd15", 3, T0).await;
    submit_to_pool(&*store, "job-2", "a100", "sdxl", 1, T0).await;
    submit_to_pool(&*store, "job-3", "t4", "sd15", 2, T0).await;

    let running = store.claim("w-a", "a100", 2, LEASE, T0).await.unwrap();
    assert_eq!(running.len(), 2);
    store
        .complete(running[0].id, "w-a", &output("done"), T0 + 1)
        .await
        .unwrap();
    store
        .fail(running[1].id, "w-a", "oom", true, &no_jitter(), T0 + 1)
        .await
        .unwrap();
    let t4 = store.claim("w-t", "t4", 1, LEASE, T0).await.unwrap();
    store.cancel_job("job-3", T0 + 2).await.unwrap();
    assert_eq!(t4.len(), 1);

    let count = |pool: &str, model: &str, state: TaskState, count: u64| QueueCount {
        pool: pool.into(),
        model: model.into(),
        state,
        count,
    };
    let mut got = store.queue_counts().await.unwrap();
    got.sort_by(|a, b| {
        (&a.pool, &a.model, a.state.as_str()).cmp(&(&b.pool, &b.model, b.state.as_str()))
    });
    // Completed and cancelled tasks are not queued; job-3 was cancelled whole.
    assert_eq!(
        got,
        [
            count("a100", "sd15", TaskState::Available, 1),
            count("a100", "sd15", TaskState::Retryable, 1),
            count("a100", "sdxl", TaskState::Available, 1),
        ]
    );
}
