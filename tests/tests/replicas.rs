//! Two coordinator replicas on one Postgres: a worker reports progress to one, a client
//! watches the other. With Redis the watcher sees the progress; with Redis unreachable both
//! replicas go on serving from the store.

use std::sync::Arc;
use std::time::Duration;

use sdfarm_coordinator::relay::RedisConfig;
use sdfarm_coordinator::store::open_store;
use sdfarm_coordinator::{Coordinator, CoordinatorConfig, SystemClock};
use sdfarm_e2e::{free_port, TestDb};
use sdfarm_proto::v1::{
    self as pb, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
};
use sdfarm_proto::PROTOCOL_VERSION;

const SWEEP: &str = "model = \"builtin:tiny-sd\"\nprompt = \"p\"\nseed = 5\nbatch_size = 2\n";

/// The shared Redis of every machine (SDFARM_TEST_REDIS_URL overrides).
fn redis_url() -> String {
    std::env::var("SDFARM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A replica served on a loopback port until the returned sender is dropped.
async fn replica(
    db: &TestDb,
    redis: Option<&RedisConfig>,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let store = open_store(&db.url).await.unwrap();
    let config = CoordinatorConfig {
        lease: Duration::from_secs(5),
        ..CoordinatorConfig::default()
    };
    let coordinator = Arc::new(Coordinator::new(store, config, Arc::new(SystemClock)));
    if let Some(redis) = redis {
        coordinator.connect_redis(redis).unwrap();
    }
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
    (addr, stop)
}

async fn submit(addr: &str) -> String {
    let mut jobs = JobServiceClient::connect(addr.to_string()).await.unwrap();
    jobs.submit(pb::SubmitRequest {
        sweep: SWEEP.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .job
    .unwrap()
    .id
}

async fn lease_one(
    workers: &mut WorkerServiceClient<tonic::transport::Channel>,
) -> (String, pb::LeasedTask) {
    let worker_id = workers
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
    let tasks = workers
        .lease(pb::LeaseRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: worker_id.clone(),
            max_tasks: 1,
            wait_ms: 2_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), 1, "the other replica's job is leasable here");
    (worker_id, tasks.into_iter().next().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_on_one_replica_sees_progress_reported_to_another() {
    let db = TestDb::create().await;
    let redis = RedisConfig {
        url: redis_url(),
        // A channel of this test's own, so parallel tests do not hear each other.
        channel: format!("sdfarm-test:{}", uuid::Uuid::new_v4().simple()),
    };
    let (a, _stop_a) = replica(&db, Some(&redis)).await;
    let (b, _stop_b) = replica(&db, Some(&redis)).await;
    let job = submit(&a).await;

    let mut watch = JobServiceClient::connect(a.clone())
        .await
        .unwrap()
        .watch(pb::WatchRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut workers = WorkerServiceClient::connect(b.clone()).await.unwrap();
    let (worker_id, task) = lease_one(&mut workers).await;

    // The subscriber may still be connecting: report until the watcher hears it.
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        let mut step = 0;
        loop {
            step += 1;
            workers
                .progress(pb::ProgressRequest {
                    worker_id: worker_id.clone(),
                    progress: vec![pb::TaskProgress {
                        task_id: task.task_id,
                        step,
                        total_steps: 1000,
                        worker: worker_id.clone(),
                        job_id: job.clone(),
                    }],
                })
                .await
                .unwrap();
            let next = tokio::time::timeout(Duration::from_millis(300), watch.message()).await;
            if let Ok(msg) = next {
                let event = msg.unwrap().expect("watch stream open while the job runs");
                if let Some(p) = event.progress.first() {
                    return p.clone();
                }
            }
        }
    })
    .await
    .expect("progress reported to replica B reaches a watch on replica A");
    assert_eq!(seen.task_id, task.task_id);
    assert_eq!(seen.worker, worker_id);
    assert_eq!(seen.job_id, job);
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_serve_from_the_store_when_redis_is_unreachable() {
    let db = TestDb::create().await;
    // Nothing listens there: the relay keeps retrying in the background.
    let redis = RedisConfig {
        url: format!("redis://127.0.0.1:{}", free_port()),
        channel: "sdfarm-test:unreachable".into(),
    };
    let (a, _stop_a) = replica(&db, Some(&redis)).await;
    let (b, _stop_b) = replica(&db, Some(&redis)).await;
    let job = submit(&a).await;

    let mut workers = WorkerServiceClient::connect(b.clone()).await.unwrap();
    for _ in 0..2 {
        let (worker_id, task) = lease_one(&mut workers).await;
        workers
            .complete(pb::CompleteRequest {
                worker_id,
                task_id: task.task_id,
                output_key: task.output_key,
                sha256: "00".into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // Replica A learns the outcome from the store, not from Redis.
    let mut watch = JobServiceClient::connect(a)
        .await
        .unwrap()
        .watch(pb::WatchRequest { job_id: job })
        .await
        .unwrap()
        .into_inner();
    let done = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = watch.message().await.unwrap() {
            let j = event.job.unwrap();
            if j.state == pb::JobState::Succeeded as i32 {
                return j;
            }
        }
        panic!("watch ended before the job succeeded");
    })
    .await
    .expect("the job succeeds on the watching replica");
    assert_eq!(done.counts.unwrap().completed, 2);
}
