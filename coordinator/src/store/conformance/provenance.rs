//! Checks of the manifest's view of a job: completed tasks with the worker, attempt and
//! times of the completion that was recorded, read in pages.

use std::sync::Arc;

use super::fixtures::{no_jitter, output, submit, LEASE, T0};
use crate::store::*;

/// One task completed on its first attempt, one completed by a second worker after the
/// first lost its lease (whose late report is refused), one still running: the manifest
/// rows say who rendered what, on which attempt, leased and completed when.
pub(super) async fn completed_tasks_record_worker_attempt_and_times(store: Arc<dyn Store>) {
    let tasks = submit(&*store, "job-prov", 0, 3, 3, T0).await;
    let (t0, t1, t2) = (tasks[0].id, tasks[1].id, tasks[2].id);

    let first = store.claim("w1", DEFAULT_POOL, 2, LEASE, T0).await.unwrap();
    assert_eq!(first.len(), 2);
    store
        .complete(t0, "w1", &output("zero"), T0 + 1_000)
        .await
        .unwrap();
    // w1 goes silent on t1: its lease expires and the task is retried by w2.
    let rescued = store
        .rescue_expired(&no_jitter(), T0 + LEASE + 1)
        .await
        .unwrap();
    assert_eq!(rescued.retried, vec![t1]);
    let retry_at = T0 + LEASE + 1 + 1_000;
    let second = store
        .claim("w2", DEFAULT_POOL, 1, LEASE, retry_at)
        .await
        .unwrap();
    assert_eq!(second.iter().map(|t| t.id).collect::<Vec<_>>(), vec![t1]);
    let recorded = store
        .complete_many(
            &[Completed {
                task_id: t1,
                worker: "w2".into(),
                output: output("one"),
            }],
            retry_at + 2_000,
        )
        .await
        .unwrap();
    assert_eq!(recorded, vec![true]);
    assert!(matches!(
        store
            .complete(t1, "w1", &output("late"), retry_at + 3_000)
            .await,
        Err(StoreError::LeaseLost { .. })
    ));
    store
        .claim("w3", DEFAULT_POOL, 1, LEASE, retry_at)
        .await
        .unwrap();

    let rows = store.completed_tasks("job-prov", None, 10).await.unwrap();
    assert_eq!(rows.len(), 2, "only completed tasks are listed: {rows:?}");
    let (a, b) = (&rows[0], &rows[1]);
    assert_eq!((a.task_id, a.image_index), (t0, 0));
    assert_eq!(a.worker.as_deref(), Some("w1"));
    assert_eq!(a.attempt, 1);
    assert_eq!(a.leased_at, Some(T0));
    assert_eq!(a.completed_at, T0 + 1_000);
    assert_eq!(a.render_ms, Some(output("zero").render_ms));
    assert_eq!(a.sha256, output("zero").sha256);
    assert_eq!(a.infotext, output("zero").infotext);
    assert_eq!(a.params, tasks[0].params);
    assert_eq!(a.output_key, tasks[0].output_key);

    assert_eq!((b.task_id, b.image_index), (t1, 1));
    assert_eq!(b.worker.as_deref(), Some("w2"));
    assert_eq!(b.attempt, 2);
    assert_eq!(b.leased_at, Some(retry_at));
    assert_eq!(b.completed_at, retry_at + 2_000);
    assert_eq!(b.sha256, output("one").sha256);
    assert!(rows.iter().all(|r| r.task_id != t2));

    // The task list says the same: who completed each, and who holds the running one.
    let listed = store.list_tasks("job-prov").await.unwrap();
    let by = |id: i64| listed.iter().find(|t| t.id == id).unwrap();
    assert_eq!(by(t0).completed_by.as_deref(), Some("w1"));
    assert_eq!(by(t1).completed_by.as_deref(), Some("w2"));
    assert_eq!(by(t0).lease_owner, None, "a completed task holds no lease");
    assert_eq!(by(t2).lease_owner.as_deref(), Some("w3"));
    assert_eq!(
        by(t2).completed_by,
        None,
        "a running task is not completed by anyone"
    );

    // Pages: after an index, and limited.
    let page = store
        .completed_tasks("job-prov", Some(0), 10)
        .await
        .unwrap();
    assert_eq!(page.iter().map(|r| r.task_id).collect::<Vec<_>>(), vec![t1]);
    let page = store.completed_tasks("job-prov", None, 1).await.unwrap();
    assert_eq!(page.iter().map(|r| r.task_id).collect::<Vec<_>>(), vec![t0]);
    assert!(store
        .completed_tasks("job-prov", Some(1), 10)
        .await
        .unwrap()
        .is_empty());
}
