//! Grouped completions: one call, each entry fenced on its own lease, the job finished by
//! the group that completes its last task.

use std::sync::Arc;

use super::fixtures::*;
use crate::store::*;

fn completed(task_id: i64, worker: &str, tag: &str) -> Completed {
    Completed {
        task_id,
        worker: worker.to_string(),
        output: output(tag),
    }
}

pub(super) async fn complete_many_fences_each_entry(store: Arc<dyn Store>) {
    submit(&*store, "job-g", 0, 3, 3, T0).await;
    let t = ids(&store.claim("w1", DEFAULT_POOL, 3, LEASE, T0).await.unwrap());
    assert!(store.complete_many(&[], T0).await.unwrap().is_empty());

    let recorded = store
        .complete_many(
            &[
                completed(t[0], "w1", "a"),
                completed(t[1], "w2", "stolen"),
                completed(t[0], "w1", "again"),
                completed(424_242, "w1", "unknown"),
                completed(t[2], "w1", "c"),
            ],
            T0 + 100,
        )
        .await
        .unwrap();
    assert_eq!(recorded, [true, false, false, false, true]);
    let a = task(&*store, "job-g", t[0]).await;
    assert_eq!(
        (a.state, a.sha256.as_deref(), a.finalized_at),
        (TaskState::Completed, Some("sha256-of-a"), Some(T0 + 100))
    );
    let b = task(&*store, "job-g", t[1]).await;
    assert_eq!(
        (b.state, b.lease_owner.as_deref(), b.sha256),
        (TaskState::Running, Some("w1"), None)
    );
    assert_eq!(store.get_job("job-g").await.unwrap().finished_at, None);

    let recorded = store
        .complete_many(&[completed(t[1], "w1", "b")], T0 + 200)
        .await
        .unwrap();
    assert_eq!(recorded, [true]);
    let job = store.get_job("job-g").await.unwrap();
    assert_eq!(job.counts.completed, 3);
    assert_eq!(job.state(), JobState::Succeeded);
    assert_eq!(job.finished_at, Some(T0 + 200));
}
