//! Conformance check for the queue counts: after every kind of transition they equal what
//! the tasks themselves say, whatever the backend keeps to answer quickly.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::fixtures::*;
use crate::store::*;

/// The counts as the task records give them: unfinished tasks by pool, model and state,
/// leaving out the waiting tasks of paused jobs.
async fn recounted(store: &dyn Store, jobs: &[&str]) -> Vec<QueueCount> {
    let mut groups: BTreeMap<(String, String, &'static str), (TaskState, u64)> = BTreeMap::new();
    for id in jobs {
        let paused = store.get_job(id).await.unwrap().paused;
        for t in store.list_tasks(id).await.unwrap() {
            let waiting = matches!(t.state, TaskState::Available | TaskState::Retryable);
            if t.state != TaskState::Running && !(waiting && !paused) {
                continue;
            }
            let key = (t.pool.clone(), t.params.model.clone(), t.state.as_str());
            groups.entry(key).or_insert((t.state, 0)).1 += 1;
        }
    }
    groups
        .into_iter()
        .map(|((pool, model, _), (state, count))| QueueCount {
            pool,
            model,
            state,
            count,
        })
        .collect()
}

async fn assert_counts(store: &dyn Store, jobs: &[&str], after: &str) {
    let mut got = store.queue_counts().await.unwrap();
    got.sort_by(|a, b| {
        (&a.pool, &a.model, a.state.as_str()).cmp(&(&b.pool, &b.model, b.state.as_str()))
    });
    assert_eq!(
        got,
        recounted(store, jobs).await,
        "queue counts after {after}"
    );
}

/// `n` tasks from image `from` on, alternating between two models.
fn two_model_tasks(job: &str, from: u32, n: u32) -> Vec<NewTask> {
    let mut tasks = new_tasks(job, from..from + n);
    for t in &mut tasks {
        if t.image_index % 2 == 1 {
            t.params.model = "sdxl".into();
        }
    }
    tasks
}

pub(super) async fn queue_counts_follow_every_transition(store: Arc<dyn Store>) {
    let s = &*store;
    let jobs = ["job-s", "job-c", "job-p"];
    let policy = no_jitter();
    let streamed = new_job("job-s", 0, 2);
    let mut tasks = two_model_tasks("job-s", 0, 8).into_iter();
    s.create_job_streaming(&streamed, &mut tasks, T0)
        .await
        .unwrap();
    let mut other = new_job("job-c", 0, 1);
    other.pool = "t4".into();
    s.create_job(&other, &two_model_tasks("job-c", 0, 4), T0)
        .await
        .unwrap();
    s.create_job(&new_job("job-p", 0, 2), &new_tasks("job-p", 0..3), T0)
        .await
        .unwrap();
    assert_counts(s, &jobs, "submits").await;

    let a = s
        .claim("w-a", DEFAULT_POOL, 6, LEASE, T0 + 1)
        .await
        .unwrap();
    let t = s.claim("w-t", "t4", 4, LEASE, T0 + 1).await.unwrap();
    assert_counts(s, &jobs, "claims").await;
    s.complete(a[0].id, "w-a", &output("one"), T0 + 2)
        .await
        .unwrap();
    let group: Vec<Completed> = a[1..3]
        .iter()
        .map(|task| Completed {
            task_id: task.id,
            worker: "w-a".into(),
            output: output("group"),
        })
        .collect();
    s.complete_many(&group, T0 + 2).await.unwrap();
    assert_counts(s, &jobs, "completions").await;
    s.fail(a[3].id, "w-a", "oom", true, &policy, T0 + 3)
        .await
        .unwrap();
    s.fail(a[4].id, "w-a", "bad prompt", false, &policy, T0 + 3)
        .await
        .unwrap();
    s.release("w-a", &[a[5].id], T0 + 3).await.unwrap();
    // job-c allows one attempt: expiry discards its tasks.
    s.rescue_expired(&policy, T0 + 1 + LEASE + 1).await.unwrap();
    assert_eq!(t.len(), 4);
    assert_counts(s, &jobs, "failures, a release and the rescuer").await;

    s.set_paused("job-s", true, T0 + 4).await.unwrap();
    assert_counts(s, &jobs, "a pause").await;
    let mut more = two_model_tasks("job-s", 8, 3).into_iter();
    s.extend_job_streaming(&streamed, &mut more, T0 + 5)
        .await
        .unwrap();
    assert_counts(s, &jobs, "adding tasks to a paused job").await;
    s.set_paused("job-s", false, T0 + 6).await.unwrap();
    s.retry_job("job-c", T0 + 6).await.unwrap();
    assert_counts(s, &jobs, "a resume and a retry").await;
    s.cancel_job("job-p", T0 + 7).await.unwrap();
    s.cancel_job("job-s", T0 + 7).await.unwrap();
    assert_counts(s, &jobs, "cancels").await;
    s.retry_job("job-s", T0 + 8).await.unwrap();
    assert_counts(s, &jobs, "retrying a cancelled job").await;
}
