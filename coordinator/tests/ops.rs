//! The coordinator's operations surface over real sockets: the per-pool scaling signal KEDA
//! polls and the Prometheus `/metrics` page, driven by a fake worker speaking gRPC to an
//! in-process coordinator on SQLite (no rendering needed).

use std::sync::Arc;

use sdfarm_coordinator::store::open_store;
use sdfarm_coordinator::{Coordinator, CoordinatorConfig, SystemClock};
use sdfarm_proto::v1::{
    self as pb, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
};
use sdfarm_proto::PROTOCOL_VERSION;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

struct Farm {
    jobs: JobServiceClient<Channel>,
    workers: WorkerServiceClient<Channel>,
    http: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start() -> Farm {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let store = open_store(&url).await.unwrap();
    let config = CoordinatorConfig::default();
    let coordinator = Arc::new(Coordinator::new(store, config, Arc::new(SystemClock)));
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", grpc.local_addr().unwrap());
    let http_addr = http.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sdfarm_coordinator::run(
        grpc,
        Some(http),
        coordinator,
        async {
            let _ = stopped.await;
        },
    ));
    Farm {
        jobs: JobServiceClient::connect(addr.clone()).await.unwrap(),
        workers: WorkerServiceClient::connect(addr).await.unwrap(),
        http: http_addr,
        _stop: stop,
        _dir: dir,
    }
}

/// One HTTP/1.1 GET; returns the status code and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: sdfarm\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    // axum answers small bodies with Content-Length; chunked only when streaming.
    assert!(
        !head.to_ascii_lowercase().contains("chunked"),
        "unexpected chunked body: {head}"
    );
    (status, body.to_string())
}

async fn scaling(farm: &Farm, pool: &str, query: &str) -> serde_json::Value {
    let (status, body) = get(farm.http, &format!("/scaling/{pool}{query}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn desired(signal: &serde_json::Value) -> u64 {
    signal["desired_workers"].as_u64().unwrap()
}

async fn submit(farm: &mut Farm, sweep: &str) -> pb::Job {
    farm.jobs
        .submit(pb::SubmitRequest {
            sweep: sweep.into(),
            format: "toml".into(),
            name: "ops".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
}

async fn register(farm: &mut Farm, pool: &str) -> String {
    farm.workers
        .register(pb::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_name: format!("fake-{pool}"),
            max_batch: 1,
            pool: pool.into(),
            labels: [("gpu".to_string(), "none".to_string())].into(),
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id
}

async fn lease(farm: &mut Farm, worker: &str, pool: &str, max: u32) -> Vec<pb::LeasedTask> {
    farm.workers
        .lease(pb::LeaseRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_id: worker.into(),
            max_tasks: max,
            wait_ms: 0,
            pool: pool.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .tasks
}

async fn complete(farm: &mut Farm, worker: &str, task: &pb::LeasedTask, load: bool) {
    let params = task.params.clone().unwrap();
    farm.workers
        .complete(pb::CompleteRequest {
            worker_id: worker.into(),
            task_id: task.task_id,
            output_key: task.output_key.clone(),
            sha256: "ab".repeat(32),
            infotext: "p\nSteps: 4".into(),
            render_ms: 250,
            steps: params.steps,
            model_loaded: load,
            model_load_ms: if load { 1_200 } else { 0 },
            model: params.model,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn desired_workers_rise_with_the_queue_and_return_to_zero() {
    let mut farm = start().await;
    let idle = scaling(&farm, "a100", "").await;
    assert_eq!(idle["pool"], "a100");
    assert_eq!((idle["queued"].as_u64(), desired(&idle)), (Some(0), 0));

    // Six images for the a100 pool, two per worker.
    submit(
        &mut farm,
        "model = \"builtin:tiny-sd\"\nprompt = \"p\"\nseed = 1\nsteps = 4\nbatch_size = 3\n\
         n_iter = 2\npool = \"a100\"\n",
    )
    .await;
    let full = scaling(&farm, "a100", "?target=2").await;
    assert_eq!(full["queued"], 6);
    assert_eq!(full["target_per_worker"], 2);
    assert_eq!(desired(&full), 3);
    assert_eq!(desired(&scaling(&farm, "a100", "").await), 6);
    assert_eq!(
        desired(&scaling(&farm, "default", "?target=2").await),
        0,
        "other pools stay asleep"
    );
    let (_, all) = get(farm.http, "/scaling").await;
    let all: serde_json::Value = serde_json::from_str(&all).unwrap();
    assert_eq!(all["pools"][0]["pool"], "a100");
    let (status, _) = get(farm.http, "/scaling/a100?target=0").await;
    assert_eq!(status, 400);
    let (status, _) = get(farm.http, "/scaling/Not_A_Pool").await;
    assert_eq!(status, 404);

    // A worker of another pool gets nothing; the a100 worker drains the queue.
    let other = register(&mut farm, "default").await;
    assert!(lease(&mut farm, &other, "default", 10).await.is_empty());
    let worker = register(&mut farm, "a100").await;
    let mut seen = vec![desired(&full)];
    loop {
        let tasks = lease(&mut farm, &worker, "a100", 2).await;
        if tasks.is_empty() {
            break;
        }
        // Leased tasks still need their worker: running counts toward the signal.
        let during = scaling(&farm, "a100", "?target=2").await;
        assert_eq!(during["running"].as_u64(), Some(tasks.len() as u64));
        seen.push(desired(&during));
        for t in &tasks {
            complete(&mut farm, &worker, t, false).await;
        }
    }
    let done = scaling(&farm, "a100", "?target=2").await;
    seen.push(desired(&done));
    assert_eq!(seen, [3, 3, 2, 1, 0], "desired workers over the sweep");
    assert_eq!(
        (done["queued"].as_u64(), done["running"].as_u64()),
        (Some(0), Some(0))
    );
}

/// The value of the series `name` exactly as written (labels included), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_show_the_queue_fall_and_completions_rise_during_a_sweep() {
    let mut farm = start().await;
    let (status, text) = get(farm.http, "/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("sdfarm_jobs_submitted_total 0"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");

    submit(
        &mut farm,
        "model = \"builtin:tiny-sd\"\nprompt = \"p\"\nseed = 1\nsteps = 4\nbatch_size = 4\n",
    )
    .await;
    let queue = "sdfarm_queue_depth{pool=\"default\",model=\"builtin:tiny-sd\"}";
    let completed = "sdfarm_images_completed_total{pool=\"default\"}";
    let (_, text) = get(farm.http, "/metrics").await;
    assert_eq!(sample(&text, queue), 4.0, "{text}");
    assert_eq!(sample(&text, completed), 0.0);
    assert_eq!(
        sample(&text, "sdfarm_tasks_submitted_total{pool=\"default\"}"),
        4.0
    );
    assert_eq!(
        sample(&text, "sdfarm_pool_desired_workers{pool=\"default\"}"),
        4.0
    );

    let worker = register(&mut farm, "").await;
    let (mut depths, mut completions) = (vec![4.0], vec![0.0]);
    let mut first = true;
    loop {
        let tasks = lease(&mut farm, &worker, "", 1).await;
        let Some(task) = tasks.first() else { break };
        let (_, text) = get(farm.http, "/metrics").await;
        assert_eq!(
            sample(&text, "sdfarm_workers{pool=\"default\",state=\"busy\"}"),
            1.0,
            "{text}"
        );
        assert_eq!(
            sample(&text, "sdfarm_tasks{pool=\"default\",state=\"running\"}"),
            1.0
        );
        if first {
            // One attempt fails and goes back to the queue with its reason.
            farm.workers
                .fail(pb::FailRequest {
                    worker_id: worker.clone(),
                    task_id: task.task_id,
                    reason: "upload to s3://bucket failed: timeout".into(),
                    retryable: true,
                    reason_code: "upload".into(),
                })
                .await
                .unwrap();
            first = false;
            let (_, text) = get(farm.http, "/metrics").await;
            assert_eq!(
                sample(&text, "sdfarm_task_retries_total{reason=\"upload\"}"),
                1.0,
                "{text}"
            );
            continue;
        }
        complete(&mut farm, &worker, task, completions.len() == 1).await;
        let (_, text) = get(farm.http, "/metrics").await;
        depths.push(sample(&text, queue));
        completions.push(sample(&text, completed));
    }
    // The failed task waits out its backoff (1 s by default), then finishes too.
    let retried = loop {
        let tasks = lease(&mut farm, &worker, "", 1).await;
        if let Some(t) = tasks.into_iter().next() {
            break t;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    complete(&mut farm, &worker, &retried, false).await;
    let (_, text) = get(farm.http, "/metrics").await;
    depths.push(sample(&text, queue));
    completions.push(sample(&text, completed));

    // The retried task stays queued (retryable) until its second attempt completes.
    assert_eq!(
        depths,
        [4.0, 3.0, 2.0, 1.0, 0.0],
        "queue depth over the sweep"
    );
    assert_eq!(
        completions,
        [0.0, 1.0, 2.0, 3.0, 4.0],
        "completions over the sweep"
    );
    assert_eq!(sample(&text, "sdfarm_steps_total{pool=\"default\"}"), 16.0);
    assert_eq!(
        sample(
            &text,
            "sdfarm_model_loads_total{pool=\"default\",model=\"builtin:tiny-sd\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "sdfarm_tasks_leased_total{pool=\"default\"}"),
        5.0
    );
    assert_eq!(
        sample(
            &text,
            "sdfarm_lease_latency_seconds_count{pool=\"default\"}"
        ),
        5.0
    );
    assert_eq!(
        sample(&text, "sdfarm_pool_desired_workers{pool=\"default\"}"),
        0.0
    );
    assert!(sample(&text, "sdfarm_images_per_second{pool=\"default\"}") > 0.0);
    assert_eq!(
        sample(&text, "sdfarm_workers{pool=\"default\",state=\"idle\"}"),
        1.0,
        "{text}"
    );
    assert!(
        !text.contains("sdfarm_tasks{"),
        "no unfinished tasks left: {text}"
    );
}

#[tokio::test]
async fn a_sweep_for_an_invalid_pool_is_refused_with_the_rule() {
    let mut farm = start().await;
    let err = farm
        .jobs
        .submit(pb::SubmitRequest {
            sweep: "model = \"builtin:tiny-sd\"\npool = \"A100_80GB\"\n".into(),
            format: "toml".into(),
            name: "bad".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("pool") && err.message().contains("line 2"),
        "{}",
        err.message()
    );
    let err = farm
        .workers
        .register(pb::RegisterRequest {
            protocol_version: PROTOCOL_VERSION,
            worker_name: "w".into(),
            pool: "GPU pool".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}
