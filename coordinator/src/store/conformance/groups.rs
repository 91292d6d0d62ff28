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

/// Groups racing over the tasks of two jobs, several tasks each, some ending a job: whichever
/// group commits a job's last task finishes it, and one group can finish both jobs at once.
pub(super) async fn concurrent_groups_finish_every_job(store: Arc<dyn Store>) {
    const TASKS: u32 = 12;
    submit(&*store, "job-g1", 0, 3, TASKS, T0).await;
    submit(&*store, "job-g2", 0, 3, TASKS, T0).await;
    let claimed = ids(&store
        .claim("w1", DEFAULT_POOL, 2 * TASKS, LEASE, T0)
        .await
        .unwrap());
    // Groups of three that mix the two jobs (ids interleave job-g1's and job-g2's tasks).
    let mut order = claimed.clone();
    order.sort_by_key(|id| (id % 3, *id));
    let groups: Vec<_> = order
        .chunks(3)
        .map(|chunk| {
            let store = Arc::clone(&store);
            let group: Vec<Completed> = chunk.iter().map(|&id| completed(id, "w1", "g")).collect();
            tokio::spawn(async move { store.complete_many(&group, T0 + 100).await.unwrap() })
        })
        .collect();
    for g in groups {
        assert_eq!(g.await.unwrap(), [true, true, true]);
    }
    for job in ["job-g1", "job-g2"] {
        let job = store.get_job(job).await.unwrap();
        assert_eq!(job.counts.completed, u64::from(TASKS));
        assert_eq!(
            (job.state(), job.finished_at),
            (JobState::Succeeded, Some(T0 + 100))
        );
    }

    // One group completing every task of a fresh job finishes it; a lost entry for the last
    // unfinished task of another leaves that one running.
    submit(&*store, "job-g3", 0, 3, 2, T0).await;
    submit(&*store, "job-g4", 0, 3, 1, T0).await;
    let t = ids(&store.claim("w1", DEFAULT_POOL, 3, LEASE, T0).await.unwrap());
    let recorded = store
        .complete_many(
            &[
                completed(t[0], "w1", "a"),
                completed(t[1], "w1", "b"),
                completed(t[2], "w9", "stolen"),
            ],
            T0 + 200,
        )
        .await
        .unwrap();
    assert_eq!(recorded, [true, true, false]);
    let g3 = store.get_job("job-g3").await.unwrap();
    assert_eq!(
        (g3.state(), g3.finished_at),
        (JobState::Succeeded, Some(T0 + 200))
    );
    let g4 = store.get_job("job-g4").await.unwrap();
    assert_eq!((g4.state(), g4.finished_at), (JobState::Running, None));
}
