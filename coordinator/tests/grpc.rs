//! The coordinator's gRPC surface over a real loopback socket, on the embedded SQLite store:
//! what a worker or client sees when it gets things right and when it gets them wrong.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sdfarm_coordinator::store::open_store;
use sdfarm_coordinator::{Coordinator, CoordinatorConfig, SystemClock};
use sdfarm_proto::v1::{
    self as pb, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
};
use sdfarm_proto::PROTOCOL_VERSION;
use tonic::transport::Channel;

struct Harness {
    jobs: JobServiceClient<Channel>,
    workers: WorkerServiceClient<Channel>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start(config: CoordinatorConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let store = open_store(&url).await.unwrap();
    let coordinator = Arc::new(Coordinator::new(store, config, Arc::new(SystemClock)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sdfarm_coordinator::run(
        listener,
        None,
        coordinator,
        async {
            let _ = stopped.await;
        },
    ));
    Harness {
        jobs: JobServiceClient::connect(addr.clone()).await.unwrap(),
        workers: WorkerServiceClient::connect(addr).await.unwrap(),
        _stop: stop,
        _dir: dir,
    }
}

const SWEEP: &str = "model = \"builtin:tiny-sd\"\nprompt = \"p\"\nseed = 5\nbatch_size = 3\n";

async fn register(h: &mut Harness, name: &str) -> String {
    h.workers
        .register(pb::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_name: name.into(),
            max_batch: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id
}

async fn lease(h: &mut Harness, worker: &str, wait_ms: u32) -> Vec<pb::LeasedTask> {
    h.workers
        .lease(pb::LeaseRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: worker.into(),
            max_tasks: 10,
            wait_ms,
            loaded_models: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks
}

async fn submit(h: &mut Harness, sweep: &str) -> Result<pb::Job, tonic::Status> {
    h.jobs
        .submit(pb::SubmitRequest {
            sweep: sweep.into(),
            format: "toml".into(),
            name: "t".into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().job.unwrap())
}

#[tokio::test]
async fn a_worker_of_another_protocol_version_is_refused() {
    let mut h = start(CoordinatorConfig::default()).await;
    let err = h
        .workers
        .register(pb::RegisterRequest {
            protocol_version: PROTOCOL_VERSION + 1,
            worker_name: "old".into(),
            max_batch: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("protocol version"),
        "{}",
        err.message()
    );

    let id = register(&mut h, "w").await;
    let err = h
        .workers
        .heartbeat(pb::HeartbeatRequest {
            protocol_version: 0,
            worker_id: id,
            task_ids: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn a_bad_sweep_is_invalid_argument_and_stores_nothing() {
    let mut h = start(CoordinatorConfig::default()).await;
    let err = submit(&mut h, "model = \"m\"\nsteps = 0\n")
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("steps") && err.message().contains("line 2"),
        "{}",
        err.message()
    );
    let jobs = h
        .jobs
        .list_jobs(pb::ListJobsRequest { limit: 10 })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(jobs.is_empty());

    let err = h
        .jobs
        .get_job(pb::GetJobRequest {
            job_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn too_large_a_sweep_is_refused_with_its_count() {
    let mut h = start(CoordinatorConfig {
        max_images: 2,
        ..CoordinatorConfig::default()
    })
    .await;
    let err = submit(&mut h, SWEEP).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains('3') && err.message().contains("limit of 2"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_waiting_lease_returns_work_submitted_meanwhile() {
    let mut h = start(CoordinatorConfig::default()).await;
    let worker = register(&mut h, "w").await;
    let mut workers = h.workers.clone();
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let tasks = workers
            .lease(pb::LeaseRequest {
                protocol_version: PROTOCOL_VERSION,
                worker_id: worker,
                max_tasks: 10,
                wait_ms: 20_000,
                loaded_models: vec![],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .tasks;
        (tasks, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let job = submit(&mut h, SWEEP).await.unwrap();
    let (tasks, waited) = waiting.await.unwrap();
    assert_eq!(tasks.len(), 3, "all three images leased in one call");
    assert!(
        waited < Duration::from_secs(10),
        "the long-poll returned soon after the submit, after {waited:?}"
    );
    let seeds: Vec<i64> = tasks
        .iter()
        .map(|t| t.params.as_ref().unwrap().seed)
        .collect();
    assert_eq!(seeds, [5, 6, 7]);
    assert!(tasks
        .iter()
        .all(|t| t.job_id == job.id && t.output_key.starts_with(&job.id)));
}

#[tokio::test]
async fn completion_from_a_worker_without_the_lease_is_aborted() {
    let mut h = start(CoordinatorConfig::default()).await;
    let owner = register(&mut h, "owner").await;
    let intruder = register(&mut h, "intruder").await;
    let job = submit(&mut h, SWEEP).await.unwrap();
    let tasks = lease(&mut h, &owner, 1000).await;
    let complete = |worker: &str, task: &pb::LeasedTask| pb::CompleteRequest {
        worker_id: worker.into(),
        task_id: task.task_id,
        output_key: task.output_key.clone(),
        sha256: "00".repeat(32),
        infotext: "p\nSteps: 20".into(),
        render_ms: 1,
        ..Default::default()
    };
    let err = h
        .workers
        .complete(complete(&intruder, &tasks[0]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted);

    for t in &tasks {
        h.workers.complete(complete(&owner, t)).await.unwrap();
    }
    let job = h
        .jobs
        .get_job(pb::GetJobRequest { job_id: job.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    assert_eq!(job.counts.unwrap().completed, 3);
}

#[tokio::test]
async fn cancel_drops_waiting_work_and_tells_the_worker_through_its_heartbeat() {
    let mut h = start(CoordinatorConfig::default()).await;
    let worker = register(&mut h, "w").await;
    let job = submit(&mut h, SWEEP).await.unwrap();
    let mut leased = h
        .workers
        .lease(pb::LeaseRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: worker.clone(),
            max_tasks: 1,
            wait_ms: 1000,
            loaded_models: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let task = leased.pop().unwrap();
    let cancelled = h
        .jobs
        .cancel(pb::CancelRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(cancelled.state, pb::JobState::Cancelled as i32);

    let hb = h
        .workers
        .heartbeat(pb::HeartbeatRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: worker.clone(),
            task_ids: vec![task.task_id],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hb.lost_task_ids, [task.task_id]);
    assert!(
        lease(&mut h, &worker, 200).await.is_empty(),
        "a cancelled job's tasks are not leased"
    );
}

#[tokio::test]
async fn watch_streams_counts_until_the_job_finishes() {
    let mut h = start(CoordinatorConfig::default()).await;
    let worker = register(&mut h, "w").await;
    let job = submit(&mut h, SWEEP).await.unwrap();
    let mut stream = h
        .jobs
        .watch(pb::WatchRequest {
            job_id: job.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap().job.unwrap();
    assert_eq!(first.counts.unwrap().total, 3);

    let tasks = lease(&mut h, &worker, 1000).await;
    h.workers
        .progress(pb::ProgressRequest {
            worker_id: worker.clone(),
            progress: vec![pb::TaskProgress {
                task_id: tasks[0].task_id,
                step: 4,
                total_steps: 20,
                worker: worker.clone(),
                job_id: job.id.clone(),
            }],
        })
        .await
        .unwrap();
    for t in &tasks {
        h.workers
            .complete(pb::CompleteRequest {
                worker_id: worker.clone(),
                task_id: t.task_id,
                output_key: t.output_key.clone(),
                sha256: "ab".repeat(32),
                infotext: "p".into(),
                render_ms: 1,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut saw_progress = false;
    let mut last = None;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("watch went quiet before the job finished")
        .unwrap()
    {
        saw_progress |= event.progress.iter().any(|p| p.step == 4);
        last = event.job;
    }
    let last = last.expect("a final job event");
    assert_eq!(last.state, pb::JobState::Succeeded as i32);
    assert!(
        saw_progress,
        "progress reported by the worker reached the watcher"
    );
}

#[tokio::test]
async fn list_tasks_shows_who_completed_a_task_and_who_holds_a_running_one() {
    let mut h = start(CoordinatorConfig::default()).await;
    let first = register(&mut h, "first").await;
    let second = register(&mut h, "second").await;
    let job = submit(&mut h, SWEEP).await.unwrap();
    let lease_one = |worker: &str| pb::LeaseRequest {
        protocol_version: PROTOCOL_VERSION,
        worker_id: worker.into(),
        max_tasks: 1,
        wait_ms: 1000,
        ..Default::default()
    };
    let done = h
        .workers
        .lease(lease_one(&first))
        .await
        .unwrap()
        .into_inner()
        .tasks;
    h.workers
        .complete(pb::CompleteRequest {
            worker_id: first.clone(),
            task_id: done[0].task_id,
            output_key: done[0].output_key.clone(),
            sha256: "cd".repeat(32),
            infotext: "p".into(),
            render_ms: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let running = h
        .workers
        .lease(lease_one(&second))
        .await
        .unwrap()
        .into_inner()
        .tasks;

    let tasks = h
        .jobs
        .list_tasks(pb::ListTasksRequest { job_id: job.id })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let find = |id: i64| tasks.iter().find(|t| t.id == id).unwrap();
    let completed = find(done[0].task_id);
    assert_eq!(completed.state, pb::TaskState::Completed as i32);
    assert_eq!(
        completed.worker, first,
        "a completed task names the worker that rendered it"
    );
    let leased = find(running[0].task_id);
    assert_eq!(leased.state, pb::TaskState::Running as i32);
    assert_eq!(
        leased.worker, second,
        "a running task names its lease holder"
    );
    let waiting: Vec<&pb::Task> = tasks
        .iter()
        .filter(|t| t.id != done[0].task_id && t.id != running[0].task_id)
        .collect();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].worker, "", "a waiting task has no worker");
}
