//! The thin tonic layer: converts between wire types and the coordinator's domain, maps
//! errors through `From<Error> for Status`. No behaviour lives here.

use std::sync::Arc;
use std::time::Duration;

use sdfarm_proto::v1::{
    self as pb, job_service_server::JobService, worker_service_server::WorkerService,
};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::events::Event;
use crate::metrics::Completion;
use crate::service::Coordinator;
use crate::store::{JobRecord, JobState, TaskOutput, TaskRecord, TaskState};

/// gRPC metadata key a worker sets to the job its report is about (see the worker's client).
const JOB_ID_HEADER: &str = "x-sdfarm-job-id";

/// The span a worker's report about one task runs in: the same `job_id` and `task_id` fields
/// as the worker's own task span, so logs of both sides join on them.
fn task_span<T>(name: &'static str, req: &Request<T>, task_id: i64, worker: &str) -> tracing::Span {
    let job_id = req
        .metadata()
        .get(JOB_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    tracing::info_span!("worker_report", rpc = name, task_id, %job_id, worker)
}

#[derive(Clone)]
pub struct GrpcApi {
    inner: Arc<Coordinator>,
}

impl GrpcApi {
    pub fn new(inner: Arc<Coordinator>) -> Self {
        GrpcApi { inner }
    }
}

pub fn job_to_proto(job: &JobRecord) -> pb::Job {
    let c = &job.counts;
    pb::Job {
        id: job.id.clone(),
        name: job.name.clone(),
        state: job_state_to_proto(job.state()) as i32,
        counts: Some(pb::TaskCounts {
            total: c.total,
            available: c.available,
            running: c.running,
            retryable: c.retryable,
            completed: c.completed,
            cancelled: c.cancelled,
            discarded: c.discarded,
        }),
        created_at_ms: job.created_at,
        finished_at_ms: job.finished_at.unwrap_or(0),
        output_prefix: job.output_prefix.clone(),
        owner: job.owner.clone(),
    }
}

fn job_state_to_proto(state: JobState) -> pb::JobState {
    match state {
        JobState::Running => pb::JobState::Running,
        JobState::Paused => pb::JobState::Paused,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

pub fn task_state_to_proto(state: TaskState) -> pb::TaskState {
    match state {
        TaskState::Available => pb::TaskState::Available,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Retryable => pb::TaskState::Retryable,
        TaskState::Completed => pb::TaskState::Completed,
        TaskState::Cancelled => pb::TaskState::Cancelled,
        TaskState::Discarded => pb::TaskState::Discarded,
    }
}

fn task_to_proto(t: TaskRecord) -> pb::Task {
    pb::Task {
        id: t.id,
        job_id: t.job_id,
        image_index: t.image_index,
        params: Some(t.params),
        state: task_state_to_proto(t.state) as i32,
        attempt: t.attempt,
        output_key: t.output_key,
        sha256: t.sha256.unwrap_or_default(),
        infotext: t.infotext.unwrap_or_default(),
        errors: t.errors,
        // The worker column: who completed a completed task, who holds a running one.
        worker: match t.state {
            TaskState::Completed => t.completed_by,
            _ => t.lease_owner,
        }
        .unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl JobService for GrpcApi {
    async fn submit(
        &self,
        req: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let caller = req.extensions().get::<crate::auth::Caller>().cloned();
        let r = req.into_inner();
        let owner = crate::auth::job_owner(caller.as_ref(), &r.owner);
        let job = self
            .inner
            .submit_as(&r.sweep, &r.format, &r.name, &owner)
            .await?;
        Ok(Response::new(pb::SubmitResponse {
            job: Some(job_to_proto(&job)),
        }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let job = self
            .inner
            .store()
            .get_job(&req.into_inner().job_id)
            .await
            .map_err(crate::Error::from)?;
        Ok(Response::new(job_to_proto(&job)))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let limit = match req.into_inner().limit {
            0 => 100,
            n => n,
        };
        let jobs = self
            .inner
            .store()
            .list_jobs(limit)
            .await
            .map_err(crate::Error::from)?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: jobs.iter().map(job_to_proto).collect(),
        }))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let job_id = req.into_inner().job_id;
        // Distinguish "no such job" from "job without tasks".
        self.inner
            .store()
            .get_job(&job_id)
            .await
            .map_err(crate::Error::from)?;
        let tasks = self
            .inner
            .store()
            .list_tasks(&job_id)
            .await
            .map_err(crate::Error::from)?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks.into_iter().map(task_to_proto).collect(),
        }))
    }

    type WatchStream = ReceiverStream<Result<pb::JobEvent, Status>>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let job_id = req.into_inner().job_id;
        let store = self.inner.store().clone();
        // Subscribe before the first read so no change between the two is missed.
        let mut events = self.inner.events().subscribe();
        let first = store.get_job(&job_id).await.map_err(crate::Error::from)?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut job = first;
            let mut last_sent: Option<pb::Job> = None;
            // Re-read the store now and then: completions may arrive through another replica.
            let mut poll = tokio::time::interval(Duration::from_secs(1));
            loop {
                let snapshot = job_to_proto(&job);
                if last_sent.as_ref() != Some(&snapshot) {
                    // A paused job is still going: the watch follows it until it finishes.
                    let done = !matches!(job.state(), JobState::Running | JobState::Paused);
                    let event = pb::JobEvent {
                        job: Some(snapshot.clone()),
                        progress: Vec::new(),
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                    last_sent = Some(snapshot);
                    if done {
                        return;
                    }
                }
                let refresh = tokio::select! {
                    _ = poll.tick() => true,
                    ev = events.recv() => match ev {
                        Ok(Event::JobChanged(Some(id))) => id == job_id,
                        Ok(Event::JobChanged(None)) => true,
                        Ok(Event::Progress(p)) => {
                            if p.job_id == job_id {
                                let event = pb::JobEvent { job: last_sent.clone(), progress: vec![p] };
                                if tx.send(Ok(event)).await.is_err() {
                                    return;
                                }
                            }
                            false
                        }
                        Ok(Event::Presence(_) | Event::Drain(_)) => false,
                        Err(broadcast::error::RecvError::Lagged(_)) => true,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = tx.closed() => return,
                };
                if refresh {
                    match store.get_job(&job_id).await {
                        Ok(j) => job = j,
                        Err(err) => {
                            let _ = tx.send(Err(crate::Error::from(err).into())).await;
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let job = {
            let caller = req.extensions().get::<crate::auth::Caller>().cloned();
            let job_id = req.into_inner().job_id;
            self.inner
                .check_owner(&job_id, caller.as_ref(), "cancel")
                .await?;
            self.inner.cancel(&job_id).await?
        };
        Ok(Response::new(pb::CancelResponse {
            job: Some(job_to_proto(&job)),
        }))
    }

    async fn pause(
        &self,
        req: Request<pb::PauseRequest>,
    ) -> Result<Response<pb::PauseResponse>, Status> {
        let job = {
            let caller = req.extensions().get::<crate::auth::Caller>().cloned();
            let job_id = req.into_inner().job_id;
            self.inner
                .check_owner(&job_id, caller.as_ref(), "pause")
                .await?;
            self.inner.pause(&job_id).await?
        };
        Ok(Response::new(pb::PauseResponse {
            job: Some(job_to_proto(&job)),
        }))
    }

    async fn resume(
        &self,
        req: Request<pb::ResumeRequest>,
    ) -> Result<Response<pb::ResumeResponse>, Status> {
        let job = {
            let caller = req.extensions().get::<crate::auth::Caller>().cloned();
            let job_id = req.into_inner().job_id;
            self.inner
                .check_owner(&job_id, caller.as_ref(), "resume")
                .await?;
            self.inner.resume(&job_id).await?
        };
        Ok(Response::new(pb::ResumeResponse {
            job: Some(job_to_proto(&job)),
        }))
    }

    async fn retry(
        &self,
        req: Request<pb::RetryRequest>,
    ) -> Result<Response<pb::RetryResponse>, Status> {
        let (retried, job) = {
            let caller = req.extensions().get::<crate::auth::Caller>().cloned();
            let job_id = req.into_inner().job_id;
            self.inner
                .check_owner(&job_id, caller.as_ref(), "retry")
                .await?;
            self.inner.retry(&job_id).await?
        };
        Ok(Response::new(pb::RetryResponse {
            job: Some(job_to_proto(&job)),
            retried,
        }))
    }

    async fn write_manifest(
        &self,
        req: Request<pb::WriteManifestRequest>,
    ) -> Result<Response<pb::WriteManifestResponse>, Status> {
        let r = req.into_inner();
        let reply = self
            .inner
            .manifest_request(&r.job_id, r.only_if_missing)
            .await?;
        Ok(Response::new(reply))
    }
}

#[tonic::async_trait]
impl WorkerService for GrpcApi {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = req.into_inner();
        let labels = r.labels.into_iter().collect();
        let worker_id = self
            .inner
            .register(r.protocol_version, &r.worker_name, &r.pool, labels)?;
        Ok(Response::new(pb::RegisterResponse {
            worker_id,
            lease_ms: self.inner.config.lease.as_millis() as u32,
            store_url: self.inner.config.store_url.clone(),
        }))
    }

    async fn lease(
        &self,
        req: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        let r = req.into_inner();
        self.inner
            .worker_models(&r.worker_id, &r.loaded_models, &r.cached_models);
        let tasks = self
            .inner
            .lease(
                r.protocol_version,
                &r.worker_id,
                &r.pool,
                &r.loaded_models,
                r.max_tasks,
                Duration::from_millis(r.wait_ms as u64),
            )
            .await?;
        let tasks = tasks
            .into_iter()
            .map(|t| pb::LeasedTask {
                task_id: t.id,
                job_id: t.job_id,
                image_index: t.image_index,
                attempt: t.attempt,
                params: Some(t.params),
                output_key: t.output_key,
                lease_expires_at_ms: t.lease_expires_at.unwrap_or(0),
            })
            .collect();
        Ok(Response::new(pb::LeaseResponse {
            tasks,
            drain: self.inner.is_draining(&r.worker_id),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let (lost_task_ids, lease_expires_at_ms) = self
            .inner
            .heartbeat(r.protocol_version, &r.worker_id, &r.task_ids)
            .await?;
        self.inner
            .worker_models(&r.worker_id, &r.loaded_models, &r.cached_models);
        Ok(Response::new(pb::HeartbeatResponse {
            lost_task_ids,
            lease_expires_at_ms,
            drain: self.inner.is_draining(&r.worker_id),
        }))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        // The service admits workers too; draining others is an operator's call.
        if let Some(caller) = req.extensions().get::<crate::auth::Caller>() {
            if caller.role != crate::auth::Role::Admin {
                return Err(Status::permission_denied(format!(
                    "a {} token cannot drain workers; it needs an admin token",
                    caller.role.as_str()
                )));
            }
        }
        let r = req.into_inner();
        self.inner.drain_worker(&r.worker_id)?;
        Ok(Response::new(pb::DrainResponse {}))
    }

    async fn progress(
        &self,
        req: Request<pb::ProgressRequest>,
    ) -> Result<Response<pb::ProgressResponse>, Status> {
        self.inner.progress(req.into_inner().progress);
        Ok(Response::new(pb::ProgressResponse {}))
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let span = task_span(
            "complete",
            &req,
            req.get_ref().task_id,
            &req.get_ref().worker_id,
        );
        let r = req.into_inner();
        let report = Completion {
            steps: r.steps,
            render_ms: r.render_ms,
            model: r.model,
            model_load_ms: r.model_loaded.then_some(r.model_load_ms),
        };
        self.inner
            .complete(
                &r.worker_id,
                r.task_id,
                TaskOutput {
                    sha256: r.sha256,
                    infotext: r.infotext,
                    render_ms: r.render_ms,
                },
                report,
            )
            .instrument(span)
            .await?;
        Ok(Response::new(pb::CompleteResponse {}))
    }

    async fn complete_many(
        &self,
        req: Request<pb::CompleteManyRequest>,
    ) -> Result<Response<pb::CompleteManyResponse>, Status> {
        let r = req.into_inner();
        let span = tracing::info_span!(
            "worker_report",
            rpc = "complete_many",
            tasks = r.completions.len(),
            worker = %r.worker_id
        );
        let done = r
            .completions
            .into_iter()
            .map(|c| {
                let report = Completion {
                    steps: c.steps,
                    render_ms: c.render_ms,
                    model: c.model,
                    model_load_ms: c.model_loaded.then_some(c.model_load_ms),
                };
                let output = TaskOutput {
                    sha256: c.sha256,
                    infotext: c.infotext,
                    render_ms: c.render_ms,
                };
                (c.task_id, output, report)
            })
            .collect();
        let lost_task_ids = self
            .inner
            .complete_many(&r.worker_id, done)
            .instrument(span)
            .await?;
        Ok(Response::new(pb::CompleteManyResponse { lost_task_ids }))
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let r = req.into_inner();
        let released_task_ids = self
            .inner
            .release(&r.worker_id, &r.task_ids, &r.reason)
            .await?;
        Ok(Response::new(pb::ReleaseResponse { released_task_ids }))
    }

    async fn fail(
        &self,
        req: Request<pb::FailRequest>,
    ) -> Result<Response<pb::FailResponse>, Status> {
        let span = task_span(
            "fail",
            &req,
            req.get_ref().task_id,
            &req.get_ref().worker_id,
        );
        let r = req.into_inner();
        let state = self
            .inner
            .fail(
                &r.worker_id,
                r.task_id,
                &r.reason,
                &r.reason_code,
                r.retryable,
            )
            .instrument(span)
            .await?;
        Ok(Response::new(pb::FailResponse {
            state: task_state_to_proto(state) as i32,
        }))
    }
}
