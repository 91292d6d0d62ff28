//! Submits a 1,000,000-cell X/Y/Z sweep (100 x 100 x 100) to a fresh Postgres database and
//! prints the time it took and the process's peak memory. The target is at most 10 s and
//! 256 MiB on the project's 2-core machine.
//!
//! In the same run, the baseline: the rows the submit stored are exported and loaded again
//! with plain `COPY … FROM STDIN` (a client that only forwards bytes, as `psql \copy`)
//! into copies of the task table: as it is now, as it was before migration 0010 (the
//! reference to the job and full parameters in every row), and without any index. The
//! submit's time is printed as a ratio of those floors, which move with the machine's load
//! as the submit does.
//!
//! `cargo bench -p sdfarm-coordinator --bench submit_million`; Postgres comes from
//! `SDFARM_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`), and a
//! database is created for the run and dropped after it.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use sdfarm_coordinator::store::{PostgresStore, Store};
use sdfarm_coordinator::{Coordinator, CoordinatorConfig, SystemClock};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

const SWEEP: &str = r#"name = "million"
model = "builtin:tiny-sd"
prompt = "a lighthouse at dusk, oil painting"
negative_prompt = "blurry"
seed = 1
steps = 20
[xyz]
x = { type = "Seed", values = "1-100" }
y = { type = "CFG Scale", values = "1-100" }
z = { type = "Steps", values = "1-100" }
"#;

/// Columns of a task as the submit writes them.
const COLUMNS: &str = "job_id, image_index, priority, params, max_attempts, output_key, \
     scheduled_at, pool, owner, cell_key, model";

/// Exports the stored rows to `path` with `COPY … TO STDOUT` of `select`.
async fn export(conn: &mut PgConnection, select: &str, path: &Path) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::create(path).await?;
    let mut rows = conn
        .copy_out_raw(&format!("COPY ({select}) TO STDOUT"))
        .await?;
    while let Some(chunk) = rows.next().await {
        file.write_all(&chunk?).await?;
    }
    file.flush().await?;
    Ok(())
}

/// Loads `path` into `table` with a plain `COPY` in one transaction; seconds taken.
async fn load(conn: &mut PgConnection, table: &str, path: &Path) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    let mut copy = tx
        .copy_in_raw(&format!("COPY {table} ({COLUMNS}) FROM STDIN"))
        .await?;
    copy.read_from(tokio::fs::File::open(path).await?).await?;
    let rows = copy.finish().await?;
    tx.commit().await?;
    anyhow::ensure!(rows == 1_000_000, "loaded {rows} rows into {table}");
    Ok(started.elapsed().as_secs_f64())
}

/// The raw `COPY` floors of the same rows, and the submit's time as a ratio of each.
async fn floors(db: &PgConnectOptions, dir: &Path, submit: f64) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect_with(db).await?;
    let stored = dir.join("stored.tsv");
    let full = dir.join("full.tsv");
    export(
        &mut conn,
        &format!("SELECT {COLUMNS} FROM tasks ORDER BY id"),
        &stored,
    )
    .await?;
    // The full parameters each row carried before 0010 (as jsonb prints them).
    let full_columns = COLUMNS.replace(
        "params,",
        "COALESCE((SELECT (j.base_params::jsonb || t.params::jsonb)::text FROM jobs j \
          WHERE j.id = t.job_id AND j.base_params IS NOT NULL), t.params),",
    );
    export(
        &mut conn,
        &format!("SELECT {full_columns} FROM tasks t ORDER BY id"),
        &full,
    )
    .await?;
    for ddl in [
        "CREATE TABLE floor_now (LIKE tasks INCLUDING ALL)",
        "CREATE TABLE floor_before (LIKE tasks INCLUDING ALL)",
        "ALTER TABLE floor_before ADD FOREIGN KEY (job_id) REFERENCES jobs (id)",
        "CREATE TABLE floor_heap (LIKE tasks INCLUDING DEFAULTS INCLUDING IDENTITY \
         INCLUDING CONSTRAINTS)",
    ] {
        sqlx::query(AssertSqlSafe(ddl)).execute(&mut conn).await?;
    }
    let now = load(&mut conn, "floor_now", &stored).await?;
    let before = load(&mut conn, "floor_before", &full).await?;
    let heap = load(&mut conn, "floor_heap", &stored).await?;
    println!(
        "raw COPY of the same rows: {now:.2} s into the task table as it is, {before:.2} s as \
         it was before migration 0010, {heap:.2} s without indexes"
    );
    println!(
        "submit / raw COPY now = {:.2}, submit / raw COPY before 0010 = {:.2}",
        submit / now,
        submit / before
    );
    Ok(())
}

/// Peak resident set size of this process, from the kernel's high-water mark.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin_url = std::env::var("SDFARM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin_options: PgConnectOptions = admin_url.parse()?;
    let mut admin = PgConnection::connect_with(&admin_options).await?;
    let name = format!("sdfarm_bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;

    let result = async {
        let store = PostgresStore::connect_with(
            PgPoolOptions::new().max_connections(4),
            admin_options.clone().database(&name),
        )
        .await?;
        let out = tempfile::tempdir()?;
        let config = CoordinatorConfig {
            store_url: format!("file://{}", out.path().display()),
            ..CoordinatorConfig::default()
        };
        let store: Arc<dyn Store> = Arc::new(store);
        let coordinator = Coordinator::new(store.clone(), config, Arc::new(SystemClock));
        let baseline = peak_rss_mib();
        let started = Instant::now();
        let job = coordinator.submit(SWEEP, "toml", "million").await?;
        let seconds = started.elapsed().as_secs_f64();
        let peak = peak_rss_mib();
        println!(
            "submit_million: {} tasks in {seconds:.2} s ({:.0} tasks/s), peak RSS {peak:.1} MiB (before submit {baseline:.1} MiB); targets 10 s, 256 MiB",
            job.counts.total,
            job.counts.total as f64 / seconds
        );
        anyhow::ensure!(job.counts.total == 1_000_000, "stored {} tasks", job.counts.total);
        // Every replica asks for the queue counts every couple of seconds on the lease path;
        // with the million tasks waiting they must stay cheap.
        let mut times = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let counts = store.queue_counts().await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            let waiting: u64 = counts.iter().map(|c| c.count).sum();
            anyhow::ensure!(waiting == 1_000_000, "queue counts say {waiting} tasks wait");
        }
        times.sort_by(f64::total_cmp);
        println!(
            "queue_counts with 1000000 waiting: median {:.2} ms, max {:.2} ms over 5 calls",
            times[2], times[4]
        );
        // Reading the job back lays every task's delta over the job's base parameters.
        let started = Instant::now();
        let tasks = store.list_tasks(&job.id).await?;
        let listed = started.elapsed().as_secs_f64();
        let cells: std::collections::HashSet<(i64, u32, u32)> = tasks
            .iter()
            .filter(|t| t.params.prompt == "a lighthouse at dusk, oil painting")
            .map(|t| (t.params.seed, t.params.cfg_scale as u32, t.params.steps))
            .collect();
        anyhow::ensure!(
            cells.len() == 1_000_000,
            "the listing holds {} distinct cells with the sweep's prompt",
            cells.len()
        );
        drop(tasks);
        println!("list_tasks of the million: {listed:.2} s");
        floors(&admin_options.clone().database(&name), out.path(), seconds).await
    }
    .await;

    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await?;
    result
}
