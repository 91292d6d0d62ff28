//! Following a job's watch stream, with progress bars when a person is looking.

use std::collections::BTreeMap;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sdfarm_proto::v1 as pb;

use crate::jobs::JobClient;

/// Streams the job's events until it finishes; returns its final state. The stream is
/// re-opened if the connection drops, so a coordinator restart does not end the watch.
pub async fn follow(client: &mut JobClient, job_id: &str, bars: bool) -> anyhow::Result<pb::Job> {
    let bar = if bars {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:32} {pos}/{len} images {msg}",
            )
            .expect("static template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut steps: BTreeMap<i64, (u32, u32)> = BTreeMap::new();
    let mut failures = 0;
    loop {
        let stream = client
            .watch(pb::WatchRequest {
                job_id: job_id.to_string(),
            })
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => {
                anyhow::bail!("{}", status.message())
            }
            Err(status) if failures < 30 => {
                failures += 1;
                tracing::warn!(error = %status, "watch failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Err(status) => return Err(status).context("watching job"),
        };
        loop {
            let event = match stream.message().await {
                Ok(Some(e)) => e,
                Ok(None) => break,
                Err(status) => {
                    tracing::warn!(error = %status, "watch stream broke; reconnecting");
                    break;
                }
            };
            for p in &event.progress {
                steps.insert(p.task_id, (p.step, p.total_steps));
            }
            if let Some(job) = event.job {
                let c = job.counts.clone().unwrap_or_default();
                bar.set_length(c.total);
                bar.set_position(c.completed);
                if c.discarded > 0 {
                    bar.println(format!("{} image(s) failed for good", c.discarded));
                }
                let paused = job.state == pb::JobState::Paused as i32;
                if job.state != pb::JobState::Running as i32 && !paused {
                    bar.finish_and_clear();
                    return Ok(job);
                }
                if paused {
                    bar.set_message("paused (sdfarm resume JOB)");
                }
                if !event.progress.is_empty() {
                    let msg = steps
                        .iter()
                        .rev()
                        .take(2)
                        .map(|(id, (s, t))| format!("task {id}: step {s}/{t}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    bar.set_message(msg);
                }
                bar.tick();
            }
        }
        // The stream ended without a final state (coordinator restarting): ask again.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}
