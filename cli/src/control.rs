//! `sdfarm pause`, `resume` and `retry`: steering a submitted job.

use std::process::ExitCode;

use sdfarm_proto::v1 as pb;

use crate::jobs::{connect, rpc_error, state_name, JobArgs};

pub async fn pause(args: JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.coordinator).await?;
    let job = client
        .pause(pb::PauseRequest {
            job_id: args.job.clone(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .job
        .unwrap_or_default();
    println!("job {} {}", job.id, state_name(job.state));
    Ok(ExitCode::SUCCESS)
}

pub async fn resume(args: JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.coordinator).await?;
    let job = client
        .resume(pb::ResumeRequest {
            job_id: args.job.clone(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner()
        .job
        .unwrap_or_default();
    println!("job {} {}", job.id, state_name(job.state));
    Ok(ExitCode::SUCCESS)
}

pub async fn retry(args: JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.coordinator).await?;
    let reply = client
        .retry(pb::RetryRequest {
            job_id: args.job.clone(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let job = reply.job.unwrap_or_default();
    println!(
        "job {} {}: {} image(s) back in the queue",
        job.id,
        state_name(job.state),
        reply.retried
    );
    Ok(ExitCode::SUCCESS)
}
