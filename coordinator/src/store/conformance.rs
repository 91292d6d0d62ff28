//! One conformance suite for every `Store` backend. Each check is written once against the
//! trait and runs on a fresh SQLite file and on a fresh Postgres database, so the backends
//! cannot drift apart. Time is passed in explicitly, so leases and backoffs are exact.
//!
//! Postgres is required: the suite connects to `SDFARM_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), creates a database per test and drops it
//! afterwards, and fails (never skips) when the server is unreachable.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use super::*;

mod affinity;
mod counts;
mod datasets;
mod fairness;
mod fixtures;
mod groups;
mod jobs;
mod leases;
mod pools;
mod provenance;
mod release;
mod streaming;

use affinity::*;
use counts::*;
use datasets::*;
use fairness::*;
use fixtures::{submit, LEASE, T0};
use groups::*;
use jobs::*;
use leases::*;
use pools::*;
use provenance::*;
use release::*;
use streaming::*;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Runs each check as `store::conformance::sqlite::<check>` and
/// `store::conformance::postgres::<check>`.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::on_sqlite(super::$check).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    super::on_postgres(super::$check).await;
                }
            )*
        }
    };
}

conformance!(
    create_get_list_round_trip,
    unknown_job_is_not_found,
    claim_orders_by_priority_then_age_and_respects_max,
    concurrent_claimers_lease_each_task_once,
    heartbeat_extends_lease_and_reports_lost,
    complete_is_fenced_on_the_lease,
    complete_many_fences_each_entry,
    concurrent_groups_finish_every_job,
    retryable_failure_waits_out_its_backoff,
    non_retryable_failure_discards,
    rescuer_retries_then_discards_expired_leases,
    job_finishes_with_its_last_task,
    concurrent_completions_finish_the_job,
    cancel_stops_claims_and_cancels_unfinished_tasks,
    duplicate_image_index_stores_nothing,
    claim_leases_only_the_workers_pool,
    queue_counts_group_unfinished_tasks,
    queue_counts_follow_every_transition,
    streamed_tasks_read_back_like_created_ones,
    empty_stream_finishes_the_job,
    failed_stream_stores_nothing,
    release_returns_tasks_without_using_an_attempt,
    released_retry_stays_retryable_with_its_history,
    loaded_models_are_claimed_first_within_the_top_priority,
    leases_alternate_between_owners_of_equal_priority,
    affinity_claims_alternate_between_owners,
    paused_job_is_not_leased_until_resumed,
    retry_returns_failed_tasks_with_their_history,
    retried_tasks_of_a_paused_job_stay_held,
    completed_tasks_record_worker_attempt_and_times,
    dataset_cells_read_back_keys_and_next_index,
    extending_a_job_adds_tasks_and_reopens_it,
    a_cell_key_held_twice_stores_nothing,
);

async fn on_sqlite<F, Fut>(check: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    // A folder that does not exist yet: opening the store creates it.
    let path = dir.path().join("state").join("sdfarm.db");
    let url = format!("sqlite://{}", path.display());
    let store = open_store(&url)
        .await
        .unwrap_or_else(|e| panic!("opening SQLite store {url}: {e}"));
    check(store).await;
}

async fn on_postgres<F, Fut>(check: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let admin_url = std::env::var("SDFARM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_string());
    let admin_options: PgConnectOptions = admin_url
        .parse()
        .unwrap_or_else(|e| panic!("SDFARM_TEST_DATABASE_URL {admin_url:?} is not valid: {e}"));
    let mut admin = PgConnection::connect_with(&admin_options)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the store conformance suite needs Postgres; could not connect to {admin_url} \
                 (set SDFARM_TEST_DATABASE_URL): {e}"
            )
        });
    // The name is generated here, never taken from input.
    let name = format!("sdfarm_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("creating test database {name} via {admin_url}: {e}"));

    let result = AssertUnwindSafe(async {
        // Several connections, so concurrent checks really race.
        let pool = PgPoolOptions::new().max_connections(8);
        let store = PostgresStore::connect_with(pool, admin_options.clone().database(&name))
            .await
            .unwrap_or_else(|e| panic!("opening Postgres store in {name}: {e}"));
        let pool = store.pool().clone();
        check(Arc::new(store)).await;
        pool.close().await;
    })
    .catch_unwind()
    .await;

    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("dropping test database {name}: {e}"));
    let _ = admin.close().await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

// ------------------------------------------------------------------ url dispatch

#[tokio::test]
async fn open_store_rejects_unknown_schemes() {
    for url in ["mysql://localhost/sdfarm", "redis://127.0.0.1", "file.db"] {
        match open_store(url).await {
            Err(StoreError::UnsupportedUrl(u)) => assert_eq!(u, url),
            Err(e) => panic!("{url}: expected UnsupportedUrl, got {e}"),
            Ok(_) => panic!("{url}: expected UnsupportedUrl, got a store"),
        }
    }
}

#[tokio::test]
async fn in_memory_sqlite_keeps_its_data_across_calls() {
    let store = open_store("sqlite::memory:").await.unwrap();
    submit(&*store, "job-m", 0, 1, 2, T0).await;
    assert_eq!(
        store
            .claim("w1", DEFAULT_POOL, 5, LEASE, T0)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(store.get_job("job-m").await.unwrap().counts.running, 2);
}
