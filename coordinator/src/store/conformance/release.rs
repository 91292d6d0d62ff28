//! Conformance checks for `release`: a draining worker's tasks go back to the queue without
//! using up an attempt, and only the worker holding a task can release it.

use std::sync::Arc;

use super::fixtures::*;
use crate::store::*;

pub(super) async fn release_returns_tasks_without_using_an_attempt(store: Arc<dyn Store>) {
    // One attempt only: a released task that had used it up could never run again.
    submit(&*store, "job-r", 0, 1, 2, T0).await;
    let held = store.claim("w1", DEFAULT_POOL, 2, LEASE, T0).await.unwrap();
    let (a, b) = (held[0].id, held[1].id);

    assert!(
        store
            .release("w2", &[a, b], T0 + 1)
            .await
            .unwrap()
            .is_empty(),
        "another worker cannot release w1's tasks"
    );
    let released = store.release("w1", &[b, a, 999_999], T0 + 5).await.unwrap();
    assert_eq!(released, [a, b]);
    for id in [a, b] {
        let t = task(&*store, "job-r", id).await;
        assert_eq!(t.state, TaskState::Available);
        assert_eq!(t.attempt, 0);
        assert_eq!((t.lease_owner, t.lease_expires_at), (None, None));
        assert!(
            t.errors.is_empty(),
            "a release is not a failure: {:?}",
            t.errors
        );
    }
    assert_lease_lost(
        store.complete(a, "w1", &output("late"), T0 + 6).await,
        a,
        "w1",
    );

    // Claimable at once by anyone, with the attempt still available.
    let again = store
        .claim("w3", DEFAULT_POOL, 2, LEASE, T0 + 5)
        .await
        .unwrap();
    assert_eq!(ids(&again), [a, b]);
    assert!(again.iter().all(|t| t.attempt == 1));
    store.complete(a, "w3", &output("a"), T0 + 7).await.unwrap();
    store.complete(b, "w3", &output("b"), T0 + 8).await.unwrap();
    let job = store.get_job("job-r").await.unwrap();
    assert_eq!(job.counts.completed, 2);
    assert!(job.finished_at.is_some());
}

pub(super) async fn released_retry_stays_retryable_with_its_history(store: Arc<dyn Store>) {
    submit(&*store, "job-rr", 0, 3, 1, T0).await;
    let t = store.claim("w1", DEFAULT_POOL, 1, LEASE, T0).await.unwrap()[0].id;
    store
        .fail(t, "w1", "CUDA out of memory", true, &no_jitter(), T0 + 1)
        .await
        .unwrap();
    let later = T0 + 3_600_000;
    assert_eq!(
        ids(&store
            .claim("w2", DEFAULT_POOL, 1, LEASE, later)
            .await
            .unwrap()),
        [t]
    );
    assert_eq!(store.release("w2", &[t], later + 1).await.unwrap(), [t]);
    let r = task(&*store, "job-rr", t).await;
    assert_eq!(r.state, TaskState::Retryable);
    assert_eq!(r.attempt, 1, "only the failed attempt counts");
    assert_eq!(r.errors, ["CUDA out of memory"]);
    assert!(r.scheduled_at <= later + 1, "claimable at once");
}
