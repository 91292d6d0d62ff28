//! Conformance checks for the task lifecycle: claiming, leases and heartbeats, fenced
//! completion, failures with backoff, and the rescuer.

use std::collections::HashSet;
use std::sync::Arc;

use super::fixtures::*;
use crate::store::*;

pub(super) async fn claim_orders_by_priority_then_age_and_respects_max(store: Arc<dyn Store>) {
    let low = submit(&*store, "job-low", 0, 3, 3, T0).await;
    let high = submit(&*store, "job-high", 5, 3, 2, T0 + 1).await;
    let now = T0 + 10;

    assert!(store
        .claim("w0", DEFAULT_POOL, 0, LEASE, now)
        .await
        .unwrap()
        .is_empty());
    let first = store
        .claim("w1", DEFAULT_POOL, 3, LEASE, now)
        .await
        .unwrap();
    assert_eq!(ids(&first), [high[0].id, high[1].id, low[0].id]);
    for t in &first {
        assert_eq!(t.state, TaskState::Running);
        assert_eq!(t.attempt, 1);
        assert_eq!(t.lease_owner.as_deref(), Some("w1"));
        assert_eq!(t.lease_expires_at, Some(now + LEASE));
    }
    let rest = store
        .claim("w2", DEFAULT_POOL, 10, LEASE, now)
        .await
        .unwrap();
    assert_eq!(ids(&rest), [low[1].id, low[2].id]);
    assert!(store
        .claim("w3", DEFAULT_POOL, 10, LEASE, now)
        .await
        .unwrap()
        .is_empty());

    let job = store.get_job("job-low").await.unwrap();
    assert_eq!((job.counts.running, job.counts.available), (3, 0));
}

pub(super) async fn concurrent_claimers_lease_each_task_once(store: Arc<dyn Store>) {
    const TASKS: u32 = 200;
    submit(&*store, "job-c", 0, 1, TASKS, T0).await;

    let claimers: Vec<_> = (0..4)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let worker = format!("w{w}");
                let mut got = Vec::new();
                loop {
                    let batch = store
                        .claim(&worker, DEFAULT_POOL, 3, LEASE, T0 + 1)
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        break got;
                    }
                    got.extend(batch.into_iter().map(|t| (t.id, worker.clone())));
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let mut claimed = Vec::new();
    for claimer in claimers {
        claimed.extend(claimer.await.unwrap());
    }

    let unique: HashSet<i64> = claimed.iter().map(|(id, _)| *id).collect();
    assert_eq!(claimed.len(), TASKS as usize, "no task handed out twice");
    assert_eq!(unique.len(), TASKS as usize, "every task handed out");
    let stored = store.list_tasks("job-c").await.unwrap();
    for (id, worker) in &claimed {
        let t = stored.iter().find(|t| t.id == *id).unwrap();
        assert_eq!(t.attempt, 1, "task {id} claimed more than once");
        assert_eq!(t.lease_owner.as_deref(), Some(worker.as_str()));
    }
}

pub(super) async fn heartbeat_extends_lease_and_reports_lost(store: Arc<dyn Store>) {
    submit(&*store, "job-h", 0, 3, 3, T0).await;
    let mine = store.claim("w1", DEFAULT_POOL, 2, LEASE, T0).await.unwrap();
    let theirs = store.claim("w2", DEFAULT_POOL, 1, LEASE, T0).await.unwrap();
    let (a, b, c) = (mine[0].id, mine[1].id, theirs[0].id);

    let later = T0 + 20_000;
    let lost = store
        .heartbeat("w1", &[a, b, c, 999_999], LEASE, later)
        .await
        .unwrap();
    assert_eq!(lost, [c, 999_999]);
    for id in [a, b] {
        let t = task(&*store, "job-h", id).await;
        assert_eq!(t.lease_expires_at, Some(later + LEASE));
        assert_eq!(t.state, TaskState::Running);
    }
    let t = task(&*store, "job-h", c).await;
    assert_eq!(
        (t.lease_owner.as_deref(), t.lease_expires_at),
        (Some("w2"), Some(T0 + LEASE)),
        "another worker's lease is left alone"
    );

    // Only the lease that was not extended has expired at its original deadline.
    let report = store
        .rescue_expired(&no_jitter(), T0 + LEASE + 1)
        .await
        .unwrap();
    assert_eq!(report.retried, [c]);
    assert!(report.discarded.is_empty());
    assert_eq!(
        store.heartbeat("w2", &[c], LEASE, later).await.unwrap(),
        [c]
    );
    assert!(store
        .heartbeat("w1", &[], LEASE, later)
        .await
        .unwrap()
        .is_empty());
}

pub(super) async fn complete_is_fenced_on_the_lease(store: Arc<dyn Store>) {
    submit(&*store, "job-f", 0, 3, 2, T0).await;
    let t = store
        .claim("w1", DEFAULT_POOL, 1, LEASE, T0)
        .await
        .unwrap()
        .remove(0);

    assert_lease_lost(
        store.complete(t.id, "w2", &output("x"), T0 + 1).await,
        t.id,
        "w2",
    );
    let unchanged = task(&*store, "job-f", t.id).await;
    assert_eq!(unchanged.state, TaskState::Running);
    assert_eq!(unchanged.lease_owner.as_deref(), Some("w1"));
    assert_eq!(unchanged.sha256, None);

    store
        .complete(t.id, "w1", &output("first"), T0 + 500)
        .await
        .unwrap();
    let done = task(&*store, "job-f", t.id).await;
    assert_eq!(done.state, TaskState::Completed);
    assert_eq!(done.sha256.as_deref(), Some("sha256-of-first"));
    assert_eq!(done.infotext, Some(output("first").infotext));
    assert_eq!(done.finalized_at, Some(T0 + 500));
    assert_eq!((done.lease_owner, done.lease_expires_at), (None, None));

    // Recorded once: a repeated completion is not a second success.
    assert_lease_lost(
        store.complete(t.id, "w1", &output("again"), T0 + 600).await,
        t.id,
        "w1",
    );
    assert_eq!(
        task(&*store, "job-f", t.id).await.sha256.as_deref(),
        Some("sha256-of-first")
    );
    assert_lease_lost(
        store
            .fail(t.id, "w1", "late", true, &no_jitter(), T0 + 600)
            .await,
        t.id,
        "w1",
    );
    assert_lease_lost(
        store.complete(424_242, "w1", &output("x"), T0).await,
        424_242,
        "w1",
    );

    // A worker that was presumed dead and rescued cannot complete afterwards.
    let u = store
        .claim("w1", DEFAULT_POOL, 1, LEASE, T0 + 1_000)
        .await
        .unwrap()
        .remove(0);
    let report = store
        .rescue_expired(&no_jitter(), T0 + 1_000 + LEASE + 1)
        .await
        .unwrap();
    assert_eq!(report.retried, [u.id]);
    assert_lease_lost(
        store
            .complete(u.id, "w1", &output("zombie"), T0 + 1_000 + LEASE + 2)
            .await,
        u.id,
        "w1",
    );
    let rescued = task(&*store, "job-f", u.id).await;
    assert_eq!(rescued.state, TaskState::Retryable);
    assert_eq!((rescued.sha256, rescued.lease_owner), (None, None));
}

pub(super) async fn retryable_failure_waits_out_its_backoff(store: Arc<dyn Store>) {
    let policy = no_jitter();
    submit(&*store, "job-r", 0, 3, 1, T0).await;
    let t = store
        .claim("w1", DEFAULT_POOL, 1, LEASE, T0)
        .await
        .unwrap()
        .remove(0);

    let state = store
        .fail(t.id, "w1", "CUDA out of memory", true, &policy, T0 + 100)
        .await
        .unwrap();
    assert_eq!(state, TaskState::Retryable);
    let r = task(&*store, "job-r", t.id).await;
    assert_eq!(r.state, TaskState::Retryable);
    assert_eq!(r.scheduled_at, T0 + 100 + 1_000);
    assert_eq!((r.lease_owner, r.lease_expires_at), (None, None));
    assert_eq!(r.errors, ["CUDA out of memory"]);
    assert_eq!((r.attempt, r.finalized_at), (1, None));
    let job = store.get_job("job-r").await.unwrap();
    assert_eq!((job.state(), job.finished_at), (JobState::Running, None));

    assert!(store
        .claim("w2", DEFAULT_POOL, 1, LEASE, T0 + 1_099)
        .await
        .unwrap()
        .is_empty());
    let again = store
        .claim("w2", DEFAULT_POOL, 1, LEASE, T0 + 1_100)
        .await
        .unwrap();
    assert_eq!(ids(&again), [t.id]);
    assert_eq!(again[0].attempt, 2);
    assert_lease_lost(
        store
            .fail(t.id, "w1", "stale", true, &policy, T0 + 1_200)
            .await,
        t.id,
        "w1",
    );

    let state = store
        .fail(t.id, "w2", "connection reset", true, &policy, T0 + 2_000)
        .await
        .unwrap();
    assert_eq!(state, TaskState::Retryable);
    assert_eq!(
        task(&*store, "job-r", t.id).await.scheduled_at,
        T0 + 2_000 + 4_000
    );
    assert!(store
        .claim("w3", DEFAULT_POOL, 1, LEASE, T0 + 5_999)
        .await
        .unwrap()
        .is_empty());
    let third = store
        .claim("w3", DEFAULT_POOL, 1, LEASE, T0 + 6_000)
        .await
        .unwrap();
    assert_eq!(third[0].attempt, 3);

    // The third attempt was the last one allowed: retryable or not, it is discarded.
    let state = store
        .fail(t.id, "w3", "CUDA out of memory", true, &policy, T0 + 7_000)
        .await
        .unwrap();
    assert_eq!(state, TaskState::Discarded);
    let d = task(&*store, "job-r", t.id).await;
    assert_eq!(d.state, TaskState::Discarded);
    assert_eq!(d.finalized_at, Some(T0 + 7_000));
    assert_eq!(
        d.errors,
        [
            "CUDA out of memory",
            "connection reset",
            "CUDA out of memory"
        ]
    );
    let job = store.get_job("job-r").await.unwrap();
    assert_eq!(job.state(), JobState::Failed);
    assert_eq!(job.finished_at, Some(T0 + 7_000));
    assert!(store
        .claim("w4", DEFAULT_POOL, 1, LEASE, T0 + 10_000_000)
        .await
        .unwrap()
        .is_empty());
}

pub(super) async fn non_retryable_failure_discards(store: Arc<dyn Store>) {
    submit(&*store, "job-n", 0, 5, 2, T0).await;
    let claimed = store.claim("w1", DEFAULT_POOL, 2, LEASE, T0).await.unwrap();
    let (a, b) = (claimed[0].id, claimed[1].id);

    let reason = "prompt syntax: unbalanced '(' at column 12";
    let state = store
        .fail(a, "w1", reason, false, &no_jitter(), T0 + 10)
        .await
        .unwrap();
    assert_eq!(state, TaskState::Discarded);
    let d = task(&*store, "job-n", a).await;
    assert_eq!((d.state, d.attempt), (TaskState::Discarded, 1));
    assert_eq!(d.errors, [reason]);
    assert_eq!(d.finalized_at, Some(T0 + 10));
    let job = store.get_job("job-n").await.unwrap();
    assert_eq!((job.state(), job.finished_at), (JobState::Running, None));

    store
        .complete(b, "w1", &output("b"), T0 + 20)
        .await
        .unwrap();
    let job = store.get_job("job-n").await.unwrap();
    assert_eq!((job.counts.completed, job.counts.discarded), (1, 1));
    assert_eq!(job.state(), JobState::Failed);
    assert_eq!(job.finished_at, Some(T0 + 20));
}

pub(super) async fn rescuer_retries_then_discards_expired_leases(store: Arc<dyn Store>) {
    let policy = no_jitter();
    // A healthy worker with a long lease on another job must not be disturbed.
    submit(&*store, "job-ok", 9, 3, 1, T0).await;
    let healthy = store
        .claim("w-ok", DEFAULT_POOL, 1, 1_000_000, T0)
        .await
        .unwrap()
        .remove(0);
    submit(&*store, "job-x", 0, 2, 1, T0).await;
    let t = store
        .claim("w1", DEFAULT_POOL, 1, 1_000, T0)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(t.job_id, "job-x");

    for now in [T0 + 999, T0 + 1_000] {
        let report = store.rescue_expired(&policy, now).await.unwrap();
        assert!(report.retried.is_empty() && report.discarded.is_empty());
    }
    let report = store.rescue_expired(&policy, T0 + 1_001).await.unwrap();
    assert_eq!((report.retried, report.discarded), (vec![t.id], vec![]));
    let r = task(&*store, "job-x", t.id).await;
    assert_eq!(r.state, TaskState::Retryable);
    assert_eq!((r.lease_owner, r.lease_expires_at), (None, None));
    assert_eq!(r.scheduled_at, T0 + 1_001 + 1_000);
    assert_eq!(
        r.errors,
        ["lease expired: worker w1 stopped heartbeating (attempt 1)"]
    );

    let second = store
        .claim("w2", DEFAULT_POOL, 1, 1_000, T0 + 2_001)
        .await
        .unwrap();
    assert_eq!((second[0].id, second[0].attempt), (t.id, 2));
    let report = store.rescue_expired(&policy, T0 + 3_002).await.unwrap();
    assert_eq!((report.retried, report.discarded), (vec![], vec![t.id]));
    let d = task(&*store, "job-x", t.id).await;
    assert_eq!(d.state, TaskState::Discarded);
    assert_eq!(d.finalized_at, Some(T0 + 3_002));
    assert_eq!(d.errors.len(), 2, "every attempt's reason is kept");
    assert!(d.errors[0].contains("worker w1") && d.errors[0].contains("attempt 1"));
    assert!(d.errors[1].contains("worker w2") && d.errors[1].contains("attempt 2"));
    let job = store.get_job("job-x").await.unwrap();
    assert_eq!(job.state(), JobState::Failed);
    assert_eq!(job.finished_at, Some(T0 + 3_002));

    let report = store.rescue_expired(&policy, T0 + 3_003).await.unwrap();
    assert!(report.retried.is_empty() && report.discarded.is_empty());
    let h = task(&*store, "job-ok", healthy.id).await;
    assert_eq!(
        (h.state, h.lease_owner.as_deref()),
        (TaskState::Running, Some("w-ok"))
    );
    assert!(h.errors.is_empty());
}
