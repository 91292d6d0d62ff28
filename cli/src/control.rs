//! `sdfarm cancel`, `pause`, `resume` and `retry`: steering a submitted job.

use std::process::ExitCode;

use sdfarm_proto::v1 as pb;

use crate::jobs::{connect, rpc_error, state_name, JobArgs};

/// Prints the job's state after a steering call: what each of these commands answers.
fn report(job: Option<pb::Job>) -> anyhow::Result<ExitCode> {
    let job = job.unwrap_or_default();
    println!("job {} {}", job.id, state_name(job.state));
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(args: JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.coordinator).await?;
    let reply = client
        .cancel(pb::CancelRequest { job_id: args.job })
        .await
        .map_err(rpc_error)?;
    report(reply.into_inner().job)
}

pub async fn pause(args: JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.coordinator).await?;
    let reply = client
        .pause(pb::PauseRequest { job_id: args.job })
        .await
        .map_err(rpc_error)?;
    report(reply.into_inner().job)
}

pub async fn resume(args: JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.coordinator).await?;
    let reply = client
        .resume(pb::ResumeRequest { job_id: args.job })
        .await
        .map_err(rpc_error)?;
    report(reply.into_inner().job)
}

pub async fn retry(args: JobArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.coordinator).await?;
    let reply = client
        .retry(pb::RetryRequest { job_id: args.job })
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
