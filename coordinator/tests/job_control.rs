//! Pause, resume and retry over a real loopback socket with tokens: client and admin tokens
//! may steer jobs, a worker token may not; a paused job is not leased and its watch goes on;
//! the owner of a job is the token's name.

mod common;

use std::time::Duration;

use common::*;
use sdfarm_proto::v1 as pb;
use sdfarm_proto::PROTOCOL_VERSION;
use tonic::Code;

const SWEEP: &str = "model = \"builtin:tiny-sd\"\nprompt = \"p\"\nseed = 5\nn_iter = 2\n";

async fn submit(c: &mut Jobs, owner: &str) -> pb::Job {
    c.submit(pb::SubmitRequest {
        sweep: SWEEP.into(),
        owner: owner.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .job
    .unwrap()
}

async fn lease(w: &mut Workers, worker_id: &str) -> Vec<pb::LeasedTask> {
    w.lease(pb::LeaseRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: worker_id.into(),
        max_tasks: 1,
        wait_ms: 0,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .tasks
}

#[tokio::test]
async fn a_worker_token_cannot_pause_resume_or_retry() {
    let farm = start().await;
    let job = submit(&mut jobs(&farm, Some(CLIENT)).await, "").await.id;
    let mut as_worker = jobs(&farm, Some(WORKER)).await;
    let e = as_worker
        .pause(pb::PauseRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let e = as_worker
        .resume(pb::ResumeRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let e = as_worker
        .retry(pb::RetryRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let unknown = jobs(&farm, Some("not-a-token-of-this-farm"))
        .await
        .pause(pb::PauseRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::Unauthenticated, "{unknown}");

    // None of the refused calls changed the job.
    let j = jobs(&farm, Some(ADMIN))
        .await
        .get_job(pb::GetJobRequest { job_id: job })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.state, pb::JobState::Running as i32);
}

#[tokio::test]
async fn a_paused_job_is_not_leased_and_its_watch_goes_on() {
    let farm = start().await;
    let mut c = jobs(&farm, Some(CLIENT)).await;
    let job = submit(&mut c, "").await.id;
    let mut w = workers(&farm, Some(WORKER)).await;
    let worker_id = w
        .register(pb::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_name: "w".into(),
            max_batch: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    let mut watch = c
        .watch(pb::WatchRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap().job.unwrap();
    assert_eq!(first.state, pb::JobState::Running as i32);

    let paused = c
        .pause(pb::PauseRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(paused.state, pb::JobState::Paused as i32);
    assert!(lease(&mut w, &worker_id).await.is_empty());
    // The watch reports the pause and stays open.
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ev = watch.message().await.unwrap().expect("watch still open");
            if let Some(j) = ev.job {
                if j.state == pb::JobState::Paused as i32 {
                    return j;
                }
            }
        }
    })
    .await
    .expect("the watch reports the pause");
    assert_eq!(seen.counts.unwrap().available, 2);

    // An admin may steer any job too.
    let resumed = jobs(&farm, Some(ADMIN))
        .await
        .resume(pb::ResumeRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(resumed.state, pb::JobState::Running as i32);
    let leased = lease(&mut w, &worker_id).await;
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].job_id, job);

    // The leased task fails for good; retry puts it back with its reason kept.
    w.fail(pb::FailRequest {
        worker_id: worker_id.clone(),
        task_id: leased[0].task_id,
        reason: "prompt syntax: unbalanced (".into(),
        retryable: false,
        reason_code: "render".into(),
    })
    .await
    .unwrap();
    let reply = c
        .retry(pb::RetryRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.retried, 1);
    assert_eq!(reply.job.unwrap().counts.unwrap().discarded, 0);
    let tasks = c
        .list_tasks(pb::ListTasksRequest { job_id: job })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let back = tasks.iter().find(|t| t.id == leased[0].task_id).unwrap();
    assert_eq!(back.state, pb::TaskState::Available as i32);
    assert_eq!(back.errors, ["prompt syntax: unbalanced ("]);
}

#[tokio::test]
async fn the_owner_of_a_job_is_the_token_name() {
    let farm = start().await;
    let j = submit(&mut jobs(&farm, Some(CLIENT)).await, "mallory").await;
    assert_eq!(j.owner, "alice", "a client cannot submit as someone else");
    let j = submit(&mut jobs(&farm, Some(ADMIN)).await, "bob").await;
    assert_eq!(j.owner, "bob", "an admin may submit on behalf of an owner");
    let j = submit(&mut jobs(&farm, Some(ADMIN)).await, "").await;
    assert_eq!(j.owner, "ops");
    let e = jobs(&farm, Some(ADMIN))
        .await
        .submit(pb::SubmitRequest {
            sweep: SWEEP.into(),
            owner: "bob smith".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("\"bob smith\""), "{e}");
}
