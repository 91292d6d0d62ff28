//! Bearer tokens over a real loopback socket: each role reaches its own service and is
//! refused the other's; calls without a token or with an unknown one are refused.

mod common;

use common::*;
use sdfarm_proto::v1 as pb;
use sdfarm_proto::PROTOCOL_VERSION;
use tonic::Code;

const SWEEP: &str = "model = \"builtin:tiny-sd\"\nprompt = \"p\"\nseed = 5\n";

async fn submit(c: &mut Jobs) -> Result<String, tonic::Status> {
    c.submit(pb::SubmitRequest {
        sweep: SWEEP.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().job.unwrap().id)
}

async fn register(c: &mut Workers) -> Result<String, tonic::Status> {
    c.register(pb::RegisterRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_name: "w".into(),
        max_batch: 1,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().worker_id)
}

async fn lease(c: &mut Workers, worker_id: &str) -> Result<usize, tonic::Status> {
    c.lease(pb::LeaseRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: worker_id.into(),
        max_tasks: 1,
        wait_ms: 0,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().tasks.len())
}

#[tokio::test]
async fn a_client_token_manages_jobs_but_cannot_lease() {
    let farm = start().await;
    let mut c = jobs(&farm, Some(CLIENT)).await;
    let job = submit(&mut c).await.unwrap();
    c.get_job(pb::GetJobRequest {
        job_id: job.clone(),
    })
    .await
    .unwrap();
    c.list_jobs(pb::ListJobsRequest::default()).await.unwrap();

    let mut as_worker = workers(&farm, Some(CLIENT)).await;
    let e = register(&mut as_worker).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let e = lease(&mut as_worker, "someone").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("client token"), "{e}");

    c.cancel(pb::CancelRequest { job_id: job }).await.unwrap();
}

#[tokio::test]
async fn a_worker_token_leases_but_cannot_submit_or_cancel() {
    let farm = start().await;
    let job = submit(&mut jobs(&farm, Some(ADMIN)).await).await.unwrap();

    let mut w = workers(&farm, Some(WORKER)).await;
    let id = register(&mut w).await.unwrap();
    assert_eq!(lease(&mut w, &id).await.unwrap(), 1);
    // Draining workers is an operator's call, even on the worker service.
    let e = w
        .drain(pb::DrainRequest {
            worker_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");

    let mut as_client = jobs(&farm, Some(WORKER)).await;
    let e = submit(&mut as_client).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let e = as_client
        .cancel(pb::CancelRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    // The refused cancel changed nothing.
    let j = jobs(&farm, Some(CLIENT))
        .await
        .get_job(pb::GetJobRequest { job_id: job })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(j.state, pb::JobState::Running as i32);
}

#[tokio::test]
async fn an_admin_token_reaches_both_services() {
    let farm = start().await;
    let mut c = jobs(&farm, Some(ADMIN)).await;
    let job = submit(&mut c).await.unwrap();
    let mut w = workers(&farm, Some(ADMIN)).await;
    let id = register(&mut w).await.unwrap();
    assert_eq!(lease(&mut w, &id).await.unwrap(), 1);
    w.drain(pb::DrainRequest {
        worker_id: id.clone(),
    })
    .await
    .unwrap();
    let reply = w
        .heartbeat(pb::HeartbeatRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: id,
            task_ids: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        reply.drain,
        "the drained worker is told in its heartbeat reply"
    );
    c.cancel(pb::CancelRequest { job_id: job }).await.unwrap();
}

#[tokio::test]
async fn missing_or_unknown_tokens_are_unauthenticated() {
    let farm = start().await;
    for token in [None, Some("not-a-token-of-this-farm")] {
        let e = submit(&mut jobs(&farm, token).await).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{token:?}: {e}");
        let mut w = workers(&farm, token).await;
        let e = register(&mut w).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{token:?}: {e}");
        let e = lease(&mut w, "w-1").await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{token:?}: {e}");
    }
    let e = submit(&mut jobs(&farm, None).await).await.unwrap_err();
    assert!(
        e.message().contains("SDFARM_TOKEN"),
        "says how to pass one: {e}"
    );
    // Nothing was submitted by the refused calls.
    let listed = jobs(&farm, Some(ADMIN))
        .await
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty());
}
