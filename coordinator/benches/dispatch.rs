//! Dispatch throughput: tasks/s through the coordinator's gRPC lease + complete with simulated
//! workers on Postgres, next to the raw SQL ceiling for the same claim and complete run
//! directly against the same database in the same process.
//!
//! `cargo bench -p sdfarm-coordinator --bench dispatch [-- TASKS WORKERS BATCH]` (defaults
//! 2000 tasks, 8 workers, batches of 16). Postgres comes from `SDFARM_TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`); a database is created for the run
//! and dropped after it. Commits stay durable (`synchronous_commit` as the server has it).
//!
//! Five figures, each on a fresh job of TASKS tasks:
//! - gRPC, one commit per complete: N workers, each on its own connection, lease one task
//!   and complete it at once, as `sdfarm worker` does (`max_tasks = 1`), with the coordinator
//!   committing every completion on its own;
//! - the same with the coordinator's grouped completions (the default);
//! - the same with `max_tasks = BATCH` (completions are still one call each);
//! - `lease-ahead`, the protocol `sdfarm worker` speaks: each worker keeps up to BATCH tasks
//!   leased ahead (a lease is in flight while the previous tasks are reported), and reports
//!   what finished while its previous report was in flight in one `CompleteMany` call, so
//!   claims come in batches and the coordinator's groups hold several completions per worker;
//! - `raw per-task`: the store's claim statement (LIMIT 1) and a fenced completion in its own
//!   transaction per task, N connections, no gRPC or service code;
//! - `raw batched`: the same claim with LIMIT BATCH and one fenced UPDATE completing the whole
//!   batch in one commit: the ceiling this schema reaches when claims and completions are
//!   grouped.
//!
//! Built by `cargo test` (the target has `test = true`) but only measures when cargo runs it
//! as a benchmark (`--bench` on the command line).

use std::sync::Arc;
use std::time::Instant;

use sdfarm_coordinator::store::{PostgresStore, Store};
use sdfarm_coordinator::{Coordinator, CoordinatorConfig, SystemClock};
use sdfarm_proto::v1::{self as pb, worker_service_client::WorkerServiceClient};
use sdfarm_proto::PROTOCOL_VERSION;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::net::TcpListener;

/// The store's claim (`store/postgres.rs` `CLAIM`), returning only the ids the simulated
/// worker needs; the work Postgres does to find and lock the rows is the same.
const CLAIM: &str = "WITH claimable AS ( \
         SELECT t.id AS claim_id FROM tasks t \
         WHERE t.pool = $5 \
           AND t.state IN ('available', 'retryable') \
           AND t.scheduled_at <= $1 \
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = t.job_id AND j.cancelled) \
         ORDER BY t.priority DESC, t.id \
         LIMIT $2 \
         FOR UPDATE SKIP LOCKED \
     ) \
     UPDATE tasks \
     SET state = 'running', attempt = attempt + 1, lease_owner = $3, lease_expires_at = $4 \
     FROM claimable WHERE tasks.id = claimable.claim_id \
     RETURNING tasks.id";

/// The store's completion, job lock and finish check, fenced on the lease owner, for a set
/// of tasks at once.
const LOCK_JOB: &str = "SELECT id FROM jobs WHERE id = $1 FOR NO KEY UPDATE";
const COMPLETE_MANY: &str = "UPDATE tasks \
     SET state = 'completed', sha256 = $3, infotext = $4, render_ms = $5, finalized_at = $6, \
         lease_owner = NULL, lease_expires_at = NULL \
     WHERE id = ANY($1) AND lease_owner = $2 AND state = 'running'";
const FINISH_JOB_IF_DONE: &str = "UPDATE jobs SET finished_at = $2 \
     WHERE id = $1 AND finished_at IS NULL \
       AND NOT EXISTS (SELECT 1 FROM tasks WHERE job_id = $1 AND finalized_at IS NULL)";

/// The sweep's model; the simulated workers report it loaded, as a worker does once it has
/// rendered one image, so the leases take the scheduler's affinity path (steady state).
const MODEL: &str = "builtin:tiny-sd";

fn sweep(tasks: u32) -> String {
    // A plain batch (no X/Y/Z axes) so the finished job composes no grid.
    format!(
        "name = \"dispatch\"\nmodel = \"builtin:tiny-sd\"\nprompt = \"a lighthouse\"\nseed = 1\nsteps = 1\nn_iter = {tasks}\n"
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

struct Args {
    tasks: u32,
    workers: usize,
    batch: u32,
}

impl Args {
    fn parse() -> Args {
        let numbers: Vec<u64> = std::env::args()
            .skip(1)
            .filter_map(|a| a.parse().ok())
            .collect();
        Args {
            tasks: numbers.first().map_or(2000, |&n| n as u32),
            workers: numbers.get(1).map_or(8, |&n| n as usize),
            batch: numbers.get(2).map_or(16, |&n| n as u32),
        }
    }
}

/// N simulated workers over gRPC; returns tasks/s.
async fn grpc_run(
    coordinator: &Arc<Coordinator>,
    addr: &str,
    args: &Args,
    max_tasks: u32,
) -> anyhow::Result<f64> {
    let job = coordinator
        .submit(&sweep(args.tasks), "toml", "dispatch")
        .await?;
    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..args.workers {
        let addr = addr.to_string();
        handles.push(tokio::spawn(async move {
            let mut client = WorkerServiceClient::connect(addr).await?;
            let worker_id = client
                .register(pb::RegisterRequest {
                    protocol_version: PROTOCOL_VERSION,
                    worker_name: format!("bench{i}"),
                    max_batch: max_tasks,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .worker_id;
            let mut done = 0u64;
            loop {
                let leased = client
                    .lease(pb::LeaseRequest {
                        protocol_version: PROTOCOL_VERSION,
                        worker_id: worker_id.clone(),
                        max_tasks,
                        wait_ms: 0,
                        loaded_models: vec![MODEL.into()],
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .tasks;
                if leased.is_empty() {
                    return anyhow::Ok(done);
                }
                for task in leased {
                    client
                        .complete(pb::CompleteRequest {
                            worker_id: worker_id.clone(),
                            task_id: task.task_id,
                            sha256: "0".repeat(64),
                            infotext: "bench".into(),
                            render_ms: 1,
                            steps: 1,
                            model: "builtin:tiny-sd".into(),
                            ..Default::default()
                        })
                        .await?;
                    done += 1;
                }
            }
        }));
    }
    let mut done = 0;
    for h in handles {
        done += h.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        done == u64::from(args.tasks),
        "completed {done} of {} tasks",
        args.tasks
    );
    let job = coordinator.store().get_job(&job.id).await?;
    anyhow::ensure!(
        job.counts.completed == u64::from(args.tasks),
        "job not complete"
    );
    Ok(f64::from(args.tasks) / seconds)
}

/// N simulated workers speaking the protocol `sdfarm worker` uses: leases of up to `ahead`
/// tasks run while the previous ones are reported, and a report carries everything that
/// finished while the previous report was in flight (one `CompleteMany` call). Rendering
/// takes no time here, so the figure is the dispatch path alone. Returns tasks/s.
async fn lease_ahead_run(
    coordinator: &Arc<Coordinator>,
    addr: &str,
    args: &Args,
    ahead: u32,
) -> anyhow::Result<f64> {
    let job = coordinator
        .submit(&sweep(args.tasks), "toml", "dispatch")
        .await?;
    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..args.workers {
        let addr = addr.to_string();
        handles.push(tokio::spawn(async move {
            let mut client = WorkerServiceClient::connect(addr).await?;
            let worker_id = client
                .register(pb::RegisterRequest {
                    protocol_version: PROTOCOL_VERSION,
                    worker_name: format!("ahead{i}"),
                    max_batch: ahead,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .worker_id;
            // The local queue: one leased batch may wait while the next lease runs.
            let (queued, mut rendered) = tokio::sync::mpsc::channel::<Vec<pb::LeasedTask>>(1);
            let mut leaser = client.clone();
            let lease_id = worker_id.clone();
            let leasing = tokio::spawn(async move {
                loop {
                    let tasks = leaser
                        .lease(pb::LeaseRequest {
                            protocol_version: PROTOCOL_VERSION,
                            worker_id: lease_id.clone(),
                            max_tasks: ahead,
                            wait_ms: 0,
                            loaded_models: vec![MODEL.into()],
                            ..Default::default()
                        })
                        .await?
                        .into_inner()
                        .tasks;
                    if tasks.is_empty() || queued.send(tasks).await.is_err() {
                        return anyhow::Ok(());
                    }
                }
            });
            let mut done = 0u64;
            while let Some(mut finished) = rendered.recv().await {
                while let Ok(more) = rendered.try_recv() {
                    finished.extend(more);
                }
                let completions: Vec<pb::CompleteRequest> = finished
                    .iter()
                    .map(|task| pb::CompleteRequest {
                        worker_id: worker_id.clone(),
                        task_id: task.task_id,
                        sha256: "0".repeat(64),
                        infotext: "bench".into(),
                        render_ms: 1,
                        steps: 1,
                        model: "builtin:tiny-sd".into(),
                        ..Default::default()
                    })
                    .collect();
                let lost = client
                    .complete_many(pb::CompleteManyRequest {
                        worker_id: worker_id.clone(),
                        completions,
                    })
                    .await?
                    .into_inner()
                    .lost_task_ids;
                anyhow::ensure!(lost.is_empty(), "leases lost: {lost:?}");
                done += finished.len() as u64;
            }
            leasing.await??;
            anyhow::Ok(done)
        }));
    }
    let mut done = 0;
    for h in handles {
        done += h.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        done == u64::from(args.tasks),
        "completed {done} of {} tasks",
        args.tasks
    );
    let job = coordinator.store().get_job(&job.id).await?;
    anyhow::ensure!(
        job.counts.completed == u64::from(args.tasks) && job.finished_at.is_some(),
        "job not complete"
    );
    Ok(f64::from(args.tasks) / seconds)
}

/// N connections running claim + complete directly; `batch` tasks per claim and per commit.
async fn raw_run(
    coordinator: &Arc<Coordinator>,
    pool: &PgPool,
    args: &Args,
    batch: u32,
) -> anyhow::Result<f64> {
    let job = coordinator
        .submit(&sweep(args.tasks), "toml", "dispatch")
        .await?;
    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..args.workers {
        let pool = pool.clone();
        let job_id = job.id.clone();
        handles.push(tokio::spawn(async move {
            let worker = format!("raw{i}");
            let mut done = 0u64;
            loop {
                let now = now_ms();
                let ids: Vec<i64> = sqlx::query_scalar(CLAIM)
                    .bind(now)
                    .bind(i64::from(batch))
                    .bind(&worker)
                    .bind(now + 60_000)
                    .bind("default")
                    .fetch_all(&pool)
                    .await?;
                if ids.is_empty() {
                    return anyhow::Ok(done);
                }
                let mut tx = pool.begin().await?;
                sqlx::query(LOCK_JOB)
                    .bind(&job_id)
                    .execute(&mut *tx)
                    .await?;
                let updated = sqlx::query(COMPLETE_MANY)
                    .bind(&ids)
                    .bind(&worker)
                    .bind("0".repeat(64))
                    .bind("bench")
                    .bind(1i64)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                anyhow::ensure!(updated.rows_affected() == ids.len() as u64, "lease lost");
                sqlx::query(FINISH_JOB_IF_DONE)
                    .bind(&job_id)
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                done += ids.len() as u64;
            }
        }));
    }
    let mut done = 0;
    for h in handles {
        done += h.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        done == u64::from(args.tasks),
        "completed {done} of {} tasks",
        args.tasks
    );
    Ok(f64::from(args.tasks) / seconds)
}

/// An in-process coordinator served on a loopback port until the sender is used.
struct Served {
    coordinator: Arc<Coordinator>,
    addr: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), sdfarm_coordinator::ServeError>>,
}

async fn serve(store: Arc<dyn Store>, store_url: &str, grouped: bool) -> anyhow::Result<Served> {
    let config = CoordinatorConfig {
        store_url: store_url.to_string(),
        ..CoordinatorConfig::default()
    };
    let coordinator = Arc::new(
        Coordinator::new(store, config, Arc::new(SystemClock)).with_grouped_completions(grouped),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sdfarm_coordinator::run(
        listener,
        None,
        coordinator.clone(),
        async move {
            let _ = stopped.await;
        },
    ));
    Ok(Served {
        coordinator,
        addr,
        stop,
        server,
    })
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "missed"
    }
}

async fn bench(admin_options: &PgConnectOptions, name: &str, args: &Args) -> anyhow::Result<()> {
    let options = admin_options.clone().database(name);
    let store =
        PostgresStore::connect_with(PgPoolOptions::new().max_connections(16), options.clone())
            .await?;
    let raw_pool = PgPoolOptions::new()
        .max_connections(args.workers as u32)
        .connect_with(options)
        .await?;
    let out = tempfile::tempdir()?;
    let store_url = format!("file://{}", out.path().display());
    let store: Arc<dyn Store> = Arc::new(store);
    let one_by_one = serve(store.clone(), &store_url, false).await?;
    let grouped = serve(store, &store_url, true).await?;

    println!(
        "dispatch: {} tasks per run, {} workers, batch {}, Postgres, durable commits",
        args.tasks, args.workers, args.batch
    );
    let raw_single = raw_run(&grouped.coordinator, &raw_pool, args, 1).await?;
    println!("  raw per-task claim+complete        : {raw_single:8.0} tasks/s");
    let raw_batched = raw_run(&grouped.coordinator, &raw_pool, args, args.batch).await?;
    println!("  raw batched ceiling                : {raw_batched:8.0} tasks/s");
    let report = |label: &str, rate: f64| {
        println!(
            "  {label:<35}: {rate:8.0} tasks/s = {:.2} of raw per-task, {:.2} of raw batched",
            rate / raw_single,
            rate / raw_batched
        )
    };
    let ungrouped = grpc_run(&one_by_one.coordinator, &one_by_one.addr, args, 1).await?;
    report("gRPC max 1, one commit per complete", ungrouped);
    let single = grpc_run(&grouped.coordinator, &grouped.addr, args, 1).await?;
    report("gRPC max 1, grouped completions", single);
    let batched = grpc_run(&grouped.coordinator, &grouped.addr, args, args.batch).await?;
    report(
        &format!("gRPC max {}, grouped completions", args.batch),
        batched,
    );
    let ahead_one = lease_ahead_run(&grouped.coordinator, &grouped.addr, args, 1).await?;
    report("gRPC lease-ahead 1 + CompleteMany", ahead_one);
    let ahead = lease_ahead_run(&grouped.coordinator, &grouped.addr, args, args.batch).await?;
    report(
        &format!("gRPC lease-ahead {} + CompleteMany", args.batch),
        ahead,
    );
    println!(
        "  targets (lease-ahead {}, as sdfarm worker): >= 2000 tasks/s: {}; >= 0.5 of raw batched: {}",
        args.batch,
        verdict(ahead >= 2000.0),
        verdict(ahead / raw_batched >= 0.5)
    );
    for served in [one_by_one, grouped] {
        let _ = served.stop.send(());
        served.server.await??;
    }
    raw_pool.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "dispatch: built; measure with `cargo bench -p sdfarm-coordinator --bench dispatch`"
        );
        return Ok(());
    }
    let args = Args::parse();
    let admin_url = std::env::var("SDFARM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin_options: PgConnectOptions = admin_url.parse()?;
    let mut admin = PgConnection::connect_with(&admin_options).await?;
    let name = format!("sdfarm_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let result = bench(&admin_options, &name, &args).await;
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await?;
    result
}
