//! Pause, resume and retry over a real loopback socket with tokens: client and admin tokens
//! may steer jobs, a worker token may not; a paused job is not leased and its watch goes on;
//! the owner of a job is the token's name, and only its owner (or an admin) may steer it.

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

/// Pause, resume, retry and cancel of `job` as `c`, each call's result in that order.
async fn steer(c: &mut Jobs, job: &str) -> Vec<(&'static str, Result<(), tonic::Status>)> {
    let job_id = job.to_string();
    vec![
        (
            "pause",
            c.pause(pb::PauseRequest {
                job_id: job_id.clone(),
            })
            .await
            .map(drop),
        ),
        (
            "resume",
            c.resume(pb::ResumeRequest {
                job_id: job_id.clone(),
            })
            .await
            .map(drop),
        ),
        (
            "retry",
            c.retry(pb::RetryRequest {
                job_id: job_id.clone(),
            })
            .await
            .map(drop),
        ),
        (
            "cancel",
            c.cancel(pb::CancelRequest { job_id }).await.map(drop),
        ),
    ]
}

#[tokio::test]
async fn only_the_owner_or_an_admin_may_steer_a_job() {
    let farm = start().await;
    let mut alice = jobs(&farm, Some(CLIENT)).await;
    let job = submit(&mut alice, "").await.id;

    let mut bob = jobs(&farm, Some(OTHER_CLIENT)).await;
    for (action, result) in steer(&mut bob, &job).await {
        let e = result.expect_err(action);
        assert_eq!(e.code(), Code::PermissionDenied, "{action}: {e}");
        for part in [action, job.as_str(), "\"alice\"", "\"bob\""] {
            assert!(
                e.message().contains(part),
                "{action}: {e} should name {part}"
            );
        }
    }
    // None of bob's calls changed the job, and he may still read it.
    let j = bob
        .get_job(pb::GetJobRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.state, pb::JobState::Running as i32);

    // The owner steers her own job.
    let paused = alice
        .pause(pb::PauseRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(paused.state, pb::JobState::Paused as i32);
    // An admin steers anyone's: each call succeeds and the job ends cancelled.
    let mut admin = jobs(&farm, Some(ADMIN)).await;
    for (action, result) in steer(&mut admin, &job).await {
        result.unwrap_or_else(|e| panic!("admin {action}: {e}"));
    }
    let j = alice
        .get_job(pb::GetJobRequest { job_id: job })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.state, pb::JobState::Cancelled as i32);

    // Bob's own job is his to steer.
    let his = submit(&mut bob, "").await.id;
    for (action, result) in steer(&mut bob, &his).await {
        result.unwrap_or_else(|e| panic!("bob {action} of his own job: {e}"));
    }
}
