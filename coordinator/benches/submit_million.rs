//! Submits a 1,000,000-cell X/Y/Z sweep (100 x 100 x 100) to a fresh Postgres database and
//! prints the time it took and the process's peak memory. The target is at most 10 s and
//! 256 MiB on the project's 2-core machine.
//!
//! `cargo bench -p sdfarm-coordinator --bench submit_million`; Postgres comes from
//! `SDFARM_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`), and a
//! database is created for the run and dropped after it.

use std::sync::Arc;
use std::time::Instant;

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
        anyhow::Ok(())
    }
    .await;

    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await?;
    result
}
