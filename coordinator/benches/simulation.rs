//! The scheduling simulation (`sdfarm_coordinator::sim`) on Postgres: 64 virtual workers,
//! 8 checkpoints, model loads of 30 s against images of 1–2 s, twelve jobs arriving over the
//! first 150 s of virtual time. Prints model loads against their lower bound and the
//! makespan against the ideal, for the coordinator's lease path and, in the same run and on
//! the same workload, for the baseline claim (held models first, else the oldest task).
//!
//! `cargo bench -p sdfarm-coordinator --bench simulation [-- coordinator|baseline]`; Postgres comes from
//! `SDFARM_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`). Each
//! policy runs on its own fresh database, dropped afterwards. Commits are not made durable
//! (`synchronous_commit = off` on those databases): the simulation measures decisions in
//! virtual time, not the database's speed.

use std::sync::Arc;
use std::time::Instant;

use sdfarm_coordinator::sim::{self, Policy, SimConfig, SimReport};
use sdfarm_coordinator::store::{PostgresStore, SqliteStore, Store};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

async fn on_fresh_database(
    admin_options: &PgConnectOptions,
    config: &SimConfig,
    policy: Policy,
) -> anyhow::Result<SimReport> {
    let mut admin = PgConnection::connect_with(admin_options).await?;
    let name = format!("sdfarm_sim_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    sqlx::query(AssertSqlSafe(format!(
        "ALTER DATABASE {name} SET synchronous_commit = off"
    )))
    .execute(&mut admin)
    .await?;
    let result = async {
        let store = PostgresStore::connect_with(
            PgPoolOptions::new().max_connections(4),
            admin_options.clone().database(&name),
        )
        .await?;
        let store: Arc<dyn Store> = Arc::new(store);
        let report = sim::run(store.clone(), config, policy).await;
        drop(store);
        report
    }
    .await;
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await?;
    result
}

/// The same run on a fresh SQLite file: the decisions are the store's and the scheduler's,
/// in virtual time, so the figures match Postgres's; only the wall time differs.
async fn on_fresh_sqlite(config: &SimConfig, policy: Policy) -> anyhow::Result<SimReport> {
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("sim.db").display());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url).await?);
    sim::run(store, config, policy).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo test` builds and runs bench targets with `--bench`-less arguments; only measure
    // when cargo runs it as a benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let admin_url = std::env::var("SDFARM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let admin_options: PgConnectOptions = admin_url.parse()?;
    // `at-once` submits every job at the start instead of over the first 150 s.
    // `uniform` does that with every image taking 1 s.
    let config = if std::env::args().any(|a| a == "at-once") {
        SimConfig::mixed_at_once()
    } else if std::env::args().any(|a| a == "uniform") {
        SimConfig::mixed_uniform()
    } else {
        SimConfig::mixed()
    };
    // `SDFARM_SIM_STORE=sqlite` runs on a SQLite file instead (quicker to iterate on).
    let sqlite = std::env::var("SDFARM_SIM_STORE").is_ok_and(|s| s == "sqlite");
    let tasks: u64 = config.jobs.iter().map(|j| u64::from(j.images)).sum();
    println!(
        "simulation: {} workers, {} jobs, {tasks} tasks, load {:.0} s, {}, virtual time",
        config.workers,
        config.jobs.len(),
        config.load_ms as f64 / 1000.0,
        if sqlite { "SQLite" } else { "Postgres" }
    );
    // `-- coordinator` or `-- baseline` runs only that one.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a == "coordinator" || a == "baseline")
        .collect();
    for (name, label, policy) in [
        ("coordinator", "coordinator lease path", Policy::Coordinator),
        (
            "baseline",
            "baseline: held models, else oldest",
            Policy::AffinityThenOldest,
        ),
    ] {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let started = Instant::now();
        let report = if sqlite {
            on_fresh_sqlite(&config, policy).await?
        } else {
            on_fresh_database(&admin_options, &config, policy).await?
        };
        println!(
            "{label} ({:.1} s wall):\n{report}",
            started.elapsed().as_secs_f64()
        );
        for v in report.violations.iter().take(10) {
            println!("    violation: {v}");
        }
    }
    Ok(())
}
