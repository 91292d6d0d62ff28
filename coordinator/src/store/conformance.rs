//! One conformance suite for every `Store` backend. Each check is written once against the
//! trait and runs on a fresh SQLite file and on a fresh Postgres database, so the backends
//! cannot drift apart. Time is passed in explicitly, so leases and backoffs are exact.
//!
//! Postgres is required: the suite connects to `SDFARM_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), creates a database per test and drops it
//! afterwards, and fails (never skips) when the server is unreachable.

use std::collections::HashSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use sdfarm_proto::RenderParams;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::*;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const T0: Millis = 1_700_000_000_000;
const LEASE: i64 = 30_000;

/// Runs each check as `store::conformance::sqlite::<check>` and
/// `store::conformance::postgres::<check>`.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::on_sqlite(super::$check).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::on_postgres(super::$check).await;
                }
            )*
        }
    };
}

conformance!(
    create_get_list_round_trip,
    unknown_job_is_not_found,
    claim_orders_by_priority_then_age_and_respects_max,
    concurrent_claimers_lease_each_task_once,
    heartbeat_extends_lease_and_reports_lost,
    complete_is_fenced_on_the_lease,
    retryable_failure_waits_out_its_backoff,
    non_retryable_failure_discards,
    rescuer_retries_then_discards_expired_leases,
    job_finishes_with_its_last_task,
    cancel_stops_claims_and_cancels_unfinished_tasks,
    duplicate_image_index_stores_nothing,
);

async fn on_sqlite<F, Fut>(check: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("sdfarm.db").display());
    let store = open_store(&url)
        .await
        .unwrap_or_else(|e| panic!("opening SQLite store {url}: {e}"));
    check(store).await;
}

async fn on_postgres<F, Fut>(check: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let admin_url = std::env::var("SDFARM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string());
    let admin_options: PgConnectOptions = admin_url
        .parse()
        .unwrap_or_else(|e| panic!("SDFARM_TEST_DATABASE_URL {admin_url:?} is not valid: {e}"));
    let mut admin = PgConnection::connect_with(&admin_options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the store conformance suite needs Postgres; could not connect to {admin_url} \
                 (set SDFARM_TEST_DATABASE_URL): {e}"
            )
        });
    // The name is generated here, never taken from input.
    let name = format!("sdfarm_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("creating test database {name} via {admin_url}: {e}"));

    let result = AssertUnwindSafe(async {
        // Several connections, so concurrent checks really race.
        let pool = PgPoolOptions::new().max_connections(8);
        let store = PostgresStore::connect_with(pool, admin_options.clone().database(&name))
            .await
            .unwrap_or_else(|e| panic!("opening Postgres store in {name}: {e}"));
        let pool = store.pool().clone();
        check(Arc::new(store)).await;
        pool.close().await;
    })
    .catch_unwind()
    .await;

    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("dropping test database {name}: {e}"));
    let _ = admin.close().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

// ------------------------------------------------------------------------- fixtures

/// Deterministic backoff: 1 s after the first failed attempt, 4 s after the second.
fn no_jitter() -> RetryPolicy {
    RetryPolicy {
        base_ms: 1_000,
        exponent: 2,
        max_ms: 60_000,
        jitter: 0.0,
    }
}

fn new_job(id: &str, priority: i32, max_attempts: u32) -> NewJob {
    NewJob {
        id: id.to_string(),
        name: format!("{id} sweep"),
        sweep: "[matrix]\nprompt = \"a lighthouse at dusk|at dawn\"\n".to_string(),
        output_prefix: format!("renders/{id}"),
        max_attempts,
        priority,
    }
}

fn params(i: u32) -> RenderParams {
    RenderParams {
        prompt: format!("a lighthouse, (study {i}:1.2)"),
        negative_prompt: "blurry, \"text\"".to_string(),
        seed: 1_234_567_890_123 + i64::from(i),
        steps: 20,
        sampler_name: "DPM++ 2M".to_string(),
        scheduler: "Karras".to_string(),
        cfg_scale: 7.5,
        width: 512,
        height: 768,
        model: "builtin:tiny-sd".to_string(),
        rng: "NV".to_string(),
        subseed: 42,
        subseed_strength: 0.25,
        batch_index: i,
        clip_skip: 2,
        ..Default::default()
    }
}

fn new_tasks(job_id: &str, indexes: impl IntoIterator<Item = u32>) -> Vec<NewTask> {
    indexes
        .into_iter()
        .map(|i| NewTask {
            image_index: i,
            params: params(i),
            output_key: format!("renders/{job_id}/{i:05}.png"),
        })
        .collect()
}

/// Creates a job of `n` tasks at `now` and returns its tasks in image order.
async fn submit(
    store: &dyn Store,
    id: &str,
    priority: i32,
    max_attempts: u32,
    n: u32,
    now: Millis,
) -> Vec<TaskRecord> {
    let job = new_job(id, priority, max_attempts);
    store
        .create_job(&job, &new_tasks(id, 0..n), now)
        .await
        .unwrap();
    store.list_tasks(id).await.unwrap()
}

fn output(tag: &str) -> TaskOutput {
    TaskOutput {
        sha256: format!("sha256-of-{tag}"),
        infotext: format!("{tag}\nSteps: 20, Sampler: DPM++ 2M, Seed: 1"),
        render_ms: 1_500,
    }
}

async fn task(store: &dyn Store, job_id: &str, task_id: i64) -> TaskRecord {
    store
        .list_tasks(job_id)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.id == task_id)
        .expect("task exists")
}

fn ids(tasks: &[TaskRecord]) -> Vec<i64> {
    tasks.iter().map(|t| t.id).collect()
}

fn assert_lease_lost(result: Result<impl std::fmt::Debug>, task_id: i64, worker: &str) {
    match result {
        Err(StoreError::LeaseLost {
            task_id: id,
            worker: w,
        }) => {
            assert_eq!((id, w.as_str()), (task_id, worker));
        }
        other => panic!("expected LeaseLost for task {task_id}/{worker}, got {other:?}"),
    }
}

// --------------------------------------------------------------------------- checks

async fn create_get_list_round_trip(store: Arc<dyn Store>) {
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

async fn unknown_job_is_not_found(store: Arc<dyn Store>) {
    let not_found = |r: Result<_>| matches!(r, Err(StoreError::JobNotFound(id)) if id == "nope");
    assert!(not_found(store.get_job("nope").await.map(|_| ())));
    assert!(not_found(store.list_tasks("nope").await.map(|_| ())));
    assert!(not_found(store.cancel_job("nope", T0).await.map(|_| ())));
}

async fn claim_orders_by_priority_then_age_and_respects_max(store: Arc<dyn Store>) {
    let low = submit(&*store, "job-low", 0, 3, 3, T0).await;
    let high = submit(&*store, "job-high", 5, 3, 2, T0 + 1).await;
    let now = T0 + 10;

    assert!(store.claim("w0", 0, LEASE, now).await.unwrap().is_empty());
    let first = store.claim("w1", 3, LEASE, now).await.unwrap();
    assert_eq!(ids(&first), [high[0].id, high[1].id, low[0].id]);
    for t in &first {
        assert_eq!(t.state, TaskState::Running);
        assert_eq!(t.attempt, 1);
        assert_eq!(t.lease_owner.as_deref(), Some("w1"));
        assert_eq!(t.lease_expires_at, Some(now + LEASE));
    }
    let rest = store.claim("w2", 10, LEASE, now).await.unwrap();
    assert_eq!(ids(&rest), [low[1].id, low[2].id]);
    assert!(store.claim("w3", 10, LEASE, now).await.unwrap().is_empty());

    let job = store.get_job("job-low").await.unwrap();
    assert_eq!((job.counts.running, job.counts.available), (3, 0));
}

async fn concurrent_claimers_lease_each_task_once(store: Arc<dyn Store>) {
    const TASKS: u32 = 200;
    submit(&*store, "job-c", 0, 1, TASKS, T0).await;

    let claimers: Vec<_> = (0..4)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let worker = format!("w{w}");
                let mut got = Vec::new();
                loop {
                    let batch = store.claim(&worker, 3, LEASE, T0 + 1).await.unwrap();
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

async fn heartbeat_extends_lease_and_reports_lost(store: Arc<dyn Store>) {
    submit(&*store, "job-h", 0, 3, 3, T0).await;
    let mine = store.claim("w1", 2, LEASE, T0).await.unwrap();
    let theirs = store.claim("w2", 1, LEASE, T0).await.unwrap();
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

async fn complete_is_fenced_on_the_lease(store: Arc<dyn Store>) {
    submit(&*store, "job-f", 0, 3, 2, T0).await;
    let t = store.claim("w1", 1, LEASE, T0).await.unwrap().remove(0);

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
        .claim("w1", 1, LEASE, T0 + 1_000)
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

async fn retryable_failure_waits_out_its_backoff(store: Arc<dyn Store>) {
    let policy = no_jitter();
    submit(&*store, "job-r", 0, 3, 1, T0).await;
    let t = store.claim("w1", 1, LEASE, T0).await.unwrap().remove(0);

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
        .claim("w2", 1, LEASE, T0 + 1_099)
        .await
        .unwrap()
        .is_empty());
    let again = store.claim("w2", 1, LEASE, T0 + 1_100).await.unwrap();
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
        .claim("w3", 1, LEASE, T0 + 5_999)
        .await
        .unwrap()
        .is_empty());
    let third = store.claim("w3", 1, LEASE, T0 + 6_000).await.unwrap();
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
        .claim("w4", 1, LEASE, T0 + 10_000_000)
        .await
        .unwrap()
        .is_empty());
}

async fn non_retryable_failure_discards(store: Arc<dyn Store>) {
    submit(&*store, "job-n", 0, 5, 2, T0).await;
    let claimed = store.claim("w1", 2, LEASE, T0).await.unwrap();
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

async fn rescuer_retries_then_discards_expired_leases(store: Arc<dyn Store>) {
    let policy = no_jitter();
    // A healthy worker with a long lease on another job must not be disturbed.
    submit(&*store, "job-ok", 9, 3, 1, T0).await;
    let healthy = store
        .claim("w-ok", 1, 1_000_000, T0)
        .await
        .unwrap()
        .remove(0);
    submit(&*store, "job-x", 0, 2, 1, T0).await;
    let t = store.claim("w1", 1, 1_000, T0).await.unwrap().remove(0);
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

    let second = store.claim("w2", 1, 1_000, T0 + 2_001).await.unwrap();
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

async fn job_finishes_with_its_last_task(store: Arc<dyn Store>) {
    submit(&*store, "job-s", 0, 3, 2, T0).await;
    let claimed = store.claim("w1", 2, LEASE, T0).await.unwrap();

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

async fn cancel_stops_claims_and_cancels_unfinished_tasks(store: Arc<dyn Store>) {
    let tasks = submit(&*store, "job-k", 1, 3, 3, T0).await;
    let other = submit(&*store, "job-other", 0, 3, 1, T0).await;
    let claimed = store.claim("w1", 2, LEASE, T0).await.unwrap();
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

    let next = store.claim("w2", 10, LEASE, T0 + 20).await.unwrap();
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

async fn duplicate_image_index_stores_nothing(store: Arc<dyn Store>) {
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
    assert!(store.claim("w1", 10, LEASE, T0).await.unwrap().is_empty());

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

// ------------------------------------------------------------------ url dispatch

#[tokio::test]
async fn open_store_rejects_unknown_schemes() {
    for url in ["mysql://localhost/sdfarm", "redis://127.0.0.1", "file.db"] {
        match open_store(url).await {
            Err(StoreError::UnsupportedUrl(u)) => assert_eq!(u, url),
            Err(e) => panic!("{url}: expected UnsupportedUrl, got {e}"),
            Ok(_) => panic!("{url}: expected UnsupportedUrl, got a store"),
        }
    }
}

#[tokio::test]
async fn in_memory_sqlite_keeps_its_data_across_calls() {
    let store = open_store("sqlite::memory:").await.unwrap();
    submit(&*store, "job-m", 0, 1, 2, T0).await;
    assert_eq!(store.claim("w1", 5, LEASE, T0).await.unwrap().len(), 2);
    assert_eq!(store.get_job("job-m").await.unwrap().counts.running, 2);
}
