//! Conformance checks for jobs as a whole: storing and reading them back, atomic
//! submission, when a job finishes, and cancellation.

use std::collections::HashSet;
use std::sync::Arc;

use super::fixtures::*;
use crate::store::*;

pub(super) async fn create_get_list_round_trip(store: Arc<dyn Store>) {
    let job = new_job("job-a", 2, 3);
    // Submitted out of order: list_tasks promises image order.
    let tasks = new_tasks("job-a", [2, 0, 1]);
    store.create_job(&job, &tasks, T0).await.unwrap();
    store
        .create_job(&new_job("job-b", 0, 1), &new_tasks("job-b", [0]), T0 + 1)
        .await
        .unwrap();

    let got = store.get_job("job-a").await.unwrap();
    assert_eq!(got.id, "job-a");
    assert_eq!(got.name, job.name);
    assert_eq!(got.sweep, job.sweep);
    assert_eq!(got.output_prefix, job.output_prefix);
    assert_eq!((got.max_attempts, got.priority), (3, 2));
    assert!(!got.cancelled);
    assert_eq!((got.created_at, got.finished_at), (T0, None));
    let expected = TaskCounts {
        total: 3,
        available: 3,
        ..Default::default()
    };
    assert_eq!(got.counts, expected);
    assert_eq!(got.state(), JobState::Running);

    let listed = store.list_tasks("job-a").await.unwrap();
    let indexes: Vec<u32> = listed.iter().map(|t| t.image_index).collect();
    assert_eq!(indexes, [0, 1, 2]);
    for t in &listed {
        assert_eq!(t.job_id, "job-a");
        assert_eq!(
            t.params,
            params(t.image_index),
            "params survive the JSON column"
        );
        assert_eq!(
            t.output_key,
            format!("renders/job-a/{:05}.png", t.image_index)
        );
        assert_eq!(t.state, TaskState::Available);
        assert_eq!((t.attempt, t.max_attempts), (0, 3));
        assert_eq!((t.lease_owner.as_deref(), t.lease_expires_at), (None, None));
        assert_eq!(t.scheduled_at, T0);
        assert_eq!((t.sha256.as_deref(), t.infotext.as_deref()), (None, None));
        assert!(t.errors.is_empty());
        assert_eq!(t.finalized_at, None);
    }
    assert_eq!(ids(&listed).into_iter().collect::<HashSet<_>>().len(), 3);

    let jobs = store.list_jobs(10).await.unwrap();
    let listed_ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(listed_ids, ["job-b", "job-a"], "newest first");
    assert_eq!((jobs[0].counts.total, jobs[1].counts.total), (1, 3));
    let first = store.list_jobs(1).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].id, "job-b");

    // Nothing to render: finished, and successful, the moment it exists.
    store
        .create_job(&new_job("job-empty", 0, 1), &[], T0 + 2)
        .await
        .unwrap();
    let empty = store.get_job("job-empty").await.unwrap();
    assert_eq!(empty.counts.total, 0);
    assert_eq!(empty.state(), JobState::Succeeded);
    assert_eq!(empty.finished_at, Some(T0 + 2));
    assert!(store.list_tasks("job-empty").await.unwrap().is_empty());
}

pub(super) async fn unknown_job_is_not_found(store: Arc<dyn Store>) {
    let not_found = |r: Result<_>| matches!(r, Err(StoreError::JobNotFound(id)) if id == "nope");
    assert!(not_found(store.get_job("nope").await.map(|_| ())));
    assert!(not_found(store.list_tasks("nope").await.map(|_| ())));
    assert!(not_found(store.cancel_job("nope", T0).await.map(|_| ())));
}

pub(super) async fn job_finishes_with_its_last_task(store: Arc<dyn Store>) {
    submit(&*store, "job-s", 0, 3, 2, T0).await;
    let claimed = store.claim("w1", DEFAULT_POOL, 2, LEASE, T0).await.unwrap();

    store
        .complete(claimed[0].id, "w1", &output("a"), T0 + 10)
        .await
        .unwrap();
    let job = store.get_job("job-s").await.unwrap();
    assert_eq!((job.state(), job.finished_at), (JobState::Running, None));
    assert_eq!((job.counts.completed, job.counts.running), (1, 1));

    store
        .complete(claimed[1].id, "w1", &output("b"), T0 + 20)
        .await
        .unwrap();
    let job = store.get_job("job-s").await.unwrap();
    assert_eq!(job.state(), JobState::Succeeded);
    assert_eq!(job.finished_at, Some(T0 + 20));
    let listed = store.list_jobs(10).await.unwrap();
    assert_eq!(listed[0].state(), JobState::Succeeded);
    assert_eq!(listed[0].finished_at, Some(T0 + 20));
}

/// Workers finishing a job's last tasks at the same moment must still leave it finished:
/// each completion sees the others' tasks as unfinished unless they are serialised.
pub(super) async fn concurrent_completions_finish_the_job(store: Arc<dyn Store>) {
    const TASKS: u32 = 24;
    submit(&*store, "job-race", 0, 3, TASKS, T0).await;
    let claimed = store
        .claim("w1", DEFAULT_POOL, TASKS, LEASE, T0)
        .await
        .unwrap();
    let completions: Vec<_> = claimed
        .into_iter()
        .map(|t| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .complete(t.id, "w1", &output("race"), T0 + 100)
                    .await
                    .unwrap();
            })
        })
        .collect();
    for completion in completions {
        completion.await.unwrap();
    }
    let job = store.get_job("job-race").await.unwrap();
    assert_eq!(job.counts.completed, u64::from(TASKS));
    assert_eq!(job.state(), JobState::Succeeded);
    assert_eq!(job.finished_at, Some(T0 + 100));
}

pub(super) async fn cancel_stops_claims_and_cancels_unfinished_tasks(store: Arc<dyn Store>) {
    let tasks = submit(&*store, "job-k", 1, 3, 3, T0).await;
    let other = submit(&*store, "job-other", 0, 3, 1, T0).await;
    let claimed = store.claim("w1", DEFAULT_POOL, 2, LEASE, T0).await.unwrap();
    assert_eq!(ids(&claimed), [tasks[0].id, tasks[1].id]);
    store
        .complete(tasks[0].id, "w1", &output("a"), T0 + 5)
        .await
        .unwrap();

    let job = store.cancel_job("job-k", T0 + 10).await.unwrap();
    assert!(job.cancelled);
    assert_eq!(job.state(), JobState::Cancelled);
    assert_eq!(job.finished_at, Some(T0 + 10));
    assert_eq!((job.counts.completed, job.counts.cancelled), (1, 2));

    let after = store.list_tasks("job-k").await.unwrap();
    assert_eq!(
        after[0].state,
        TaskState::Completed,
        "finished work is kept"
    );
    for t in &after[1..] {
        assert_eq!(t.state, TaskState::Cancelled);
        assert_eq!(t.finalized_at, Some(T0 + 10));
        assert_eq!((t.lease_owner.as_deref(), t.lease_expires_at), (None, None));
    }
    // The worker still rendering the cancelled task learns it lost the lease.
    assert_eq!(
        store
            .heartbeat("w1", &[tasks[1].id], LEASE, T0 + 11)
            .await
            .unwrap(),
        [tasks[1].id]
    );
    assert_lease_lost(
        store
            .complete(tasks[1].id, "w1", &output("b"), T0 + 12)
            .await,
        tasks[1].id,
        "w1",
    );

    let next = store
        .claim("w2", DEFAULT_POOL, 10, LEASE, T0 + 20)
        .await
        .unwrap();
    assert_eq!(
        ids(&next),
        [other[0].id],
        "a cancelled job's tasks are never claimed"
    );

    // Cancelling again, or cancelling a job that already finished, changes nothing.
    let again = store.cancel_job("job-k", T0 + 30).await.unwrap();
    assert_eq!(again.finished_at, Some(T0 + 10));
    store
        .complete(other[0].id, "w2", &output("o"), T0 + 40)
        .await
        .unwrap();
    let done = store.cancel_job("job-other", T0 + 50).await.unwrap();
    assert!(!done.cancelled);
    assert_eq!(done.state(), JobState::Succeeded);
    assert_eq!(done.finished_at, Some(T0 + 40));
}

pub(super) async fn duplicate_image_index_stores_nothing(store: Arc<dyn Store>) {
    let job = new_job("job-d", 3, 2);
    let result = store
        .create_job(&job, &new_tasks("job-d", [0, 1, 1]), T0)
        .await;
    assert!(result.is_err(), "duplicate image index accepted");
    assert!(matches!(
        store.get_job("job-d").await,
        Err(StoreError::JobNotFound(_))
    ));
    assert!(store.list_jobs(10).await.unwrap().is_empty());
    assert!(store
        .claim("w1", DEFAULT_POOL, 10, LEASE, T0)
        .await
        .unwrap()
        .is_empty());

    // Nothing half-written blocks a corrected resubmission under the same id.
    store
        .create_job(&job, &new_tasks("job-d", 0..3), T0 + 1)
        .await
        .unwrap();
    assert_eq!(store.get_job("job-d").await.unwrap().counts.total, 3);
    let duplicate_id = store
        .create_job(&job, &new_tasks("job-d", 10..12), T0 + 2)
        .await;
    assert!(duplicate_id.is_err(), "duplicate job id accepted");
    assert_eq!(store.list_tasks("job-d").await.unwrap().len(), 3);
}
