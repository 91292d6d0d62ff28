//! Conformance checks for owners, pause and retry: leases go round robin across owners of
//! the same priority (affinity claims too), a paused job's waiting tasks are not leased, and
//! a retried job gets its failed tasks back with their history.

use std::sync::Arc;

use super::fixtures::*;
use crate::store::*;

/// A job of `n` tasks of `owner`, all rendering `model`; returns the task ids.
async fn submit_owned(
    store: &dyn Store,
    id: &str,
    owner: &str,
    priority: i32,
    model: &str,
    n: u32,
    now: Millis,
) -> Vec<i64> {
    let mut job = new_job(id, priority, 1);
    job.owner = owner.to_string();
    let tasks: Vec<NewTask> = new_tasks(id, 0..n)
        .into_iter()
        .map(|mut t| {
            t.params.model = model.to_string();
            t
        })
        .collect();
    store.create_job(&job, &tasks, now).await.unwrap();
    ids(&store.list_tasks(id).await.unwrap())
}

/// Claims one task at a time until none is left; returns the job of each, in order.
async fn drain_one_by_one(store: &dyn Store, now: Millis) -> Vec<String> {
    let mut jobs = Vec::new();
    loop {
        let got = store.claim("w", DEFAULT_POOL, 1, LEASE, now).await.unwrap();
        match got.as_slice() {
            [] => return jobs,
            [t] => jobs.push(t.job_id.clone()),
            more => panic!("asked for one task, got {}", more.len()),
        }
    }
}

pub(super) async fn leases_alternate_between_owners_of_equal_priority(store: Arc<dyn Store>) {
    // A big sweep first, then a small one of another owner: the small one is not starved.
    submit_owned(&*store, "big", "alice", 0, "m", 6, T0).await;
    submit_owned(&*store, "small", "bob", 0, "m", 2, T0 + 1).await;
    let now = T0 + 10;
    let first = store.claim("w", DEFAULT_POOL, 1, LEASE, now).await.unwrap();
    assert_eq!(first[0].job_id, "big");
    assert_eq!(first[0].image_index, 0);

    // A third owner arrives later. Owners never served come first (by name among
    // themselves), then every lease moves its owner to the back.
    submit_owned(&*store, "late", "carol", 0, "m", 2, T0 + 2).await;
    let order = drain_one_by_one(&*store, now).await;
    assert_eq!(
        order,
        ["small", "late", "big", "small", "late", "big", "big", "big", "big"]
    );

    // Within one owner, priority then age, and a higher priority of anyone comes first.
    submit_owned(&*store, "alice-low", "alice", 0, "m", 2, T0 + 3).await;
    submit_owned(&*store, "alice-high", "alice", 3, "m", 1, T0 + 4).await;
    submit_owned(&*store, "bob-next", "bob", 0, "m", 1, T0 + 5).await;
    let order = drain_one_by_one(&*store, now).await;
    assert_eq!(order[0], "alice-high");
    // Alice was served last, so after her urgent task it is Bob's turn.
    assert_eq!(order[1..], ["bob-next", "alice-low", "alice-low"]);

    // A batch is filled from the chosen owner's queue.
    submit_owned(&*store, "b1", "bob", 0, "m", 3, T0 + 6).await;
    submit_owned(&*store, "a1", "alice", 0, "m", 3, T0 + 7).await;
    let batch = store.claim("w", DEFAULT_POOL, 2, LEASE, now).await.unwrap();
    let next = store.claim("w", DEFAULT_POOL, 2, LEASE, now).await.unwrap();
    let owners: Vec<_> = [&batch, &next]
        .iter()
        .map(|b| b.iter().map(|t| t.job_id.as_str()).collect::<Vec<_>>())
        .collect();
    assert_ne!(
        owners[0][0], owners[1][0],
        "two batches in a row went to one owner"
    );
    assert!(owners.iter().all(|b| b.len() == 2 && b[0] == b[1]));
}

pub(super) async fn affinity_claims_alternate_between_owners(store: Arc<dyn Store>) {
    submit_owned(&*store, "big", "alice", 0, "model-x", 4, T0).await;
    submit_owned(&*store, "small", "bob", 0, "model-x", 2, T0 + 1).await;
    let other = submit_owned(&*store, "other", "carol", 0, "model-y", 1, T0 + 2).await;
    let held = ["model-x".to_string()];
    let now = T0 + 10;
    let mut order = Vec::new();
    loop {
        let got = store
            .claim_for_models("w", DEFAULT_POOL, &held, 1, LEASE, now)
            .await
            .unwrap();
        let Some(t) = got.first() else { break };
        assert_eq!(t.params.model, "model-x");
        order.push(t.job_id.clone());
    }
    // Carol's model-y task never came up for a worker holding model-x only.
    assert_eq!(order, ["big", "small", "big", "small", "big", "big"]);
    let rest = store.claim("w", DEFAULT_POOL, 5, LEASE, now).await.unwrap();
    assert_eq!(ids(&rest), other);
}

pub(super) async fn paused_job_is_not_leased_until_resumed(store: Arc<dyn Store>) {
    let p = submit_owned(&*store, "p", "alice", 0, "m", 4, T0).await;
    let q = submit_owned(&*store, "q", "alice", 0, "m", 2, T0 + 1).await;
    let now = T0 + 10;
    let running = store
        .claim("w1", DEFAULT_POOL, 1, LEASE, now)
        .await
        .unwrap();
    assert_eq!(ids(&running), [p[0]]);

    let job = store.set_paused("p", true, now).await.unwrap();
    assert!(job.paused);
    assert_eq!(job.state(), JobState::Paused);
    assert_eq!(store.get_job("p").await.unwrap().state(), JobState::Paused);
    // Only the other job's tasks are leased, by either claim.
    let held = ["m".to_string()];
    assert!(store
        .claim_for_models("w2", DEFAULT_POOL, &held, 1, LEASE, now)
        .await
        .unwrap()
        .iter()
        .all(|t| t.job_id == "q"));
    let got = store
        .claim("w2", DEFAULT_POOL, 10, LEASE, now)
        .await
        .unwrap();
    assert!(got.iter().all(|t| t.job_id == "q"), "{got:?}");
    assert!(store
        .claim("w3", DEFAULT_POOL, 10, LEASE, now)
        .await
        .unwrap()
        .is_empty());
    // Waiting paused tasks are no work for the scaling signal; the running one still is.
    let counts = store.queue_counts().await.unwrap();
    let available: u64 = counts
        .iter()
        .filter(|c| c.state == TaskState::Available)
        .map(|c| c.count)
        .sum();
    assert_eq!(available, 0, "{counts:?}");

    // The running task finishes; one failing while paused stays held back.
    store
        .complete(p[0], "w1", &output("p0"), now + 1)
        .await
        .unwrap();
    assert_eq!(store.get_job("p").await.unwrap().counts.completed, 1);
    assert_eq!(store.get_job("p").await.unwrap().state(), JobState::Paused);

    // Pausing twice changes nothing; resuming leases the rest, oldest first.
    store.set_paused("p", true, now).await.unwrap();
    let job = store.set_paused("p", false, now + 2).await.unwrap();
    assert_eq!(job.state(), JobState::Running);
    let got = store
        .claim("w1", DEFAULT_POOL, 10, LEASE, now + 2)
        .await
        .unwrap();
    assert_eq!(ids(&got), p[1..]);

    // A finished job stays as it finished; an unknown one is not found.
    for (i, t) in q.iter().enumerate() {
        store
            .complete(*t, "w2", &output(&format!("q{i}")), now + 3)
            .await
            .unwrap();
    }
    let done = store.set_paused("q", true, now + 4).await.unwrap();
    assert_eq!((done.state(), done.paused), (JobState::Succeeded, false));
    assert!(matches!(
        store.set_paused("nope", true, now).await,
        Err(StoreError::JobNotFound(id)) if id == "nope"
    ));
}

pub(super) async fn retry_returns_failed_tasks_with_their_history(store: Arc<dyn Store>) {
    let t = submit_owned(&*store, "r", "alice", 0, "m", 3, T0).await;
    let now = T0 + 10;
    let got = store
        .claim("w1", DEFAULT_POOL, 3, LEASE, now)
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    store
        .complete(t[0], "w1", &output("r0"), now)
        .await
        .unwrap();
    let policy = no_jitter();
    let state = store
        .fail(
            t[1],
            "w1",
            "prompt syntax: unbalanced (",
            false,
            &policy,
            now,
        )
        .await
        .unwrap();
    assert_eq!(state, TaskState::Discarded);
    // max_attempts is 1: the expired lease is discarded by the rescuer.
    let report = store
        .rescue_expired(&policy, now + LEASE + 1)
        .await
        .unwrap();
    assert_eq!(report.discarded, [t[2]]);
    let job = store.get_job("r").await.unwrap();
    assert_eq!(job.state(), JobState::Failed);
    assert!(job.finished_at.is_some());

    let (retried, job) = store.retry_job("r", now + LEASE + 2).await.unwrap();
    assert_eq!(retried, 2);
    assert_eq!((job.state(), job.finished_at), (JobState::Running, None));
    assert_eq!(job.counts.available, 2);
    let back = task(&*store, "r", t[1]).await;
    assert_eq!((back.state, back.attempt), (TaskState::Available, 0));
    assert_eq!(back.errors, ["prompt syntax: unbalanced ("]);
    assert_eq!(back.finalized_at, None);
    assert_eq!(task(&*store, "r", t[2]).await.errors.len(), 1);

    // Fresh attempts: each may run max_attempts times again.
    let later = now + LEASE + 3;
    let again = store
        .claim("w2", DEFAULT_POOL, 5, LEASE, later)
        .await
        .unwrap();
    assert_eq!(ids(&again), [t[1], t[2]]);
    assert!(again.iter().all(|t| t.attempt == 1));
    for id in [t[1], t[2]] {
        store
            .complete(id, "w2", &output("again"), later)
            .await
            .unwrap();
    }
    let job = store.get_job("r").await.unwrap();
    assert_eq!(job.state(), JobState::Succeeded);
    assert_eq!(task(&*store, "r", t[1]).await.errors.len(), 1);

    // Nothing to retry: the job stays as it is.
    let (retried, job) = store.retry_job("r", later).await.unwrap();
    assert_eq!((retried, job.state()), (0, JobState::Succeeded));

    // A cancelled job comes back uncancelled, its cancelled tasks waiting again.
    let c = submit_owned(&*store, "c", "bob", 0, "m", 2, T0).await;
    store.cancel_job("c", later).await.unwrap();
    let (retried, job) = store.retry_job("c", later + 1).await.unwrap();
    assert_eq!(retried, 2);
    assert_eq!((job.state(), job.cancelled), (JobState::Running, false));
    assert_eq!(job.counts.available, 2);
    let got = store
        .claim("w3", DEFAULT_POOL, 5, LEASE, later + 1)
        .await
        .unwrap();
    assert_eq!(ids(&got), c);

    assert!(matches!(
        store.retry_job("nope", later).await,
        Err(StoreError::JobNotFound(_))
    ));
}

pub(super) async fn retried_tasks_of_a_paused_job_stay_held(store: Arc<dyn Store>) {
    let t = submit_owned(&*store, "h", "alice", 0, "m", 1, T0).await;
    let now = T0 + 10;
    store
        .claim("w1", DEFAULT_POOL, 1, LEASE, now)
        .await
        .unwrap();
    store
        .fail(t[0], "w1", "out of memory", false, &no_jitter(), now)
        .await
        .unwrap();
    // Finished (failed): pausing does nothing, so pause after the retry instead.
    let (retried, _) = store.retry_job("h", now + 1).await.unwrap();
    assert_eq!(retried, 1);
    store.set_paused("h", true, now + 1).await.unwrap();
    assert!(store
        .claim("w1", DEFAULT_POOL, 1, LEASE, now + 2)
        .await
        .unwrap()
        .is_empty());
    // Failing again while paused and retrying keeps the task held.
    store.set_paused("h", false, now + 2).await.unwrap();
    store
        .claim("w1", DEFAULT_POOL, 1, LEASE, now + 3)
        .await
        .unwrap();
    store.set_paused("h", true, now + 3).await.unwrap();
    store
        .fail(t[0], "w1", "out of memory", false, &no_jitter(), now + 4)
        .await
        .unwrap();
    let (retried, job) = store.retry_job("h", now + 5).await.unwrap();
    assert_eq!((retried, job.state()), (1, JobState::Paused));
    assert!(store
        .claim("w1", DEFAULT_POOL, 1, LEASE, now + 6)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(task(&*store, "h", t[0]).await.errors.len(), 2);
}
