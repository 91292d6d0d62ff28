//! Fixtures for the conformance checks: jobs, tasks and outputs with realistic values, and
//! small helpers for reading a task back.

use sdfarm_proto::RenderParams;

use crate::store::*;

pub(super) const T0: Millis = 1_700_000_000_000;
pub(super) const LEASE: i64 = 30_000;

/// Deterministic backoff: 1 s after the first failed attempt, 4 s after the second.
pub(super) fn no_jitter() -> RetryPolicy {
    RetryPolicy {
        base_ms: 1_000,
        exponent: 2,
        max_ms: 60_000,
        jitter: 0.0,
    }
}

pub(super) fn new_job(id: &str, priority: i32, max_attempts: u32) -> NewJob {
    NewJob {
        id: id.to_string(),
        name: format!("{id} sweep"),
        sweep: "[matrix]\nprompt = \"a lighthouse at dusk|at dawn\"\n".to_string(),
        output_prefix: format!("renders/{id}"),
        max_attempts,
        priority,
        pool: DEFAULT_POOL.to_string(),
        owner: ANONYMOUS_OWNER.to_string(),
    }
}

pub(super) fn params(i: u32) -> RenderParams {
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

pub(super) fn new_tasks(job_id: &str, indexes: impl IntoIterator<Item = u32>) -> Vec<NewTask> {
    indexes
        .into_iter()
        .map(|i| NewTask {
            image_index: i,
            params: params(i),
            output_key: format!("renders/{job_id}/{i:05}.png"),
            cell_key: None,
        })
        .collect()
}

/// Creates a job of `n` tasks at `now` and returns its tasks in image order.
pub(super) async fn submit(
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

pub(super) fn output(tag: &str) -> TaskOutput {
    TaskOutput {
        sha256: format!("sha256-of-{tag}"),
        infotext: format!("{tag}\nSteps: 20, Sampler: DPM++ 2M, Seed: 1"),
        render_ms: 1_500,
    }
}

pub(super) async fn task(store: &dyn Store, job_id: &str, task_id: i64) -> TaskRecord {
    store
        .list_tasks(job_id)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.id == task_id)
        .expect("task exists")
}

pub(super) fn ids(tasks: &[TaskRecord]) -> Vec<i64> {
    tasks.iter().map(|t| t.id).collect()
}

pub(super) fn assert_lease_lost(result: Result<impl std::fmt::Debug>, task_id: i64, worker: &str) {
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
