//! Dataset submissions through the coordinator, on SQLite and on Postgres: the job is found
//! again by name, a re-submission adds only new cells after the existing image indices,
//! puts discarded cells back in the queue and leaves completed ones alone.

use std::sync::Arc;

use sdfarm_coordinator::store::{open_store, PostgresStore, RetryPolicy, Store, TaskOutput};
use sdfarm_coordinator::{dataset, Coordinator, CoordinatorConfig, SystemClock};
use sqlx::{AssertSqlSafe, Connection};

fn spec(count: u32) -> String {
    format!(
        r#"dataset = "hats"
model = "builtin:tiny-sd"
prompt = "a {{red|blue|green}} hat on a __job__"
steps = 2
[wildcards]
mode = "random"
count = {count}
files = {{ job = "baker\nsailor\n{{old|young}} pilot\n" }}
"#
    )
}

async fn resubmission_adds_only_new_cells(store: Arc<dyn Store>) {
    let farm = Coordinator::new(
        store.clone(),
        CoordinatorConfig::default(),
        Arc::new(SystemClock),
    );
    let job = farm.submit(&spec(4), "toml", "hats.toml").await.unwrap();
    assert_eq!(job.id, dataset::job_id("hats"));
    assert_eq!(job.counts.total, 4);
    let first = store.list_tasks(&job.id).await.unwrap();

    // One cell renders, one fails for good.
    // Tasks are scheduled at the coordinator's clock (the system's): claim after that.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 1_000;
    let leased = store.claim("w1", "default", 2, 60_000, now).await.unwrap();
    assert_eq!(leased.len(), 2);
    let out = TaskOutput {
        sha256: "abc".into(),
        infotext: "a hat".into(),
        render_ms: 5,
    };
    store.complete(leased[0].id, "w1", &out, now).await.unwrap();
    store
        .fail(
            leased[1].id,
            "w1",
            "bad",
            false,
            &RetryPolicy::default(),
            now,
        )
        .await
        .unwrap();
    let c = store.get_job(&job.id).await.unwrap().counts;
    assert_eq!((c.completed, c.discarded, c.available), (1, 1, 2));

    // The same spec again: nothing new, the discarded cell back in the queue.
    let again = farm.submit(&spec(4), "toml", "hats.toml").await.unwrap();
    assert_eq!(again.id, job.id);
    let c = again.counts;
    assert_eq!(
        (c.total, c.completed, c.discarded, c.available),
        (4, 1, 0, 3)
    );

    // Two more cells: appended after the existing indices; the first four are untouched.
    let more = farm.submit(&spec(6), "toml", "hats.toml").await.unwrap();
    assert_eq!(more.counts.total, 6);
    let tasks = store.list_tasks(&job.id).await.unwrap();
    let indexes: Vec<u32> = tasks.iter().map(|t| t.image_index).collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4, 5]);
    for (before, after) in first.iter().zip(&tasks) {
        assert_eq!((before.id, &before.params), (after.id, &after.params));
    }
    let done = tasks.iter().find(|t| t.id == leased[0].id).unwrap();
    assert_eq!(
        done.sha256.as_deref(),
        Some("abc"),
        "a rendered cell is not rendered again"
    );
    // The random draws of cells 0..4 are those of the first submission, so cells 4 and 5
    // are the only new ones; each records its template and choices.
    for t in &tasks {
        assert_eq!(
            t.params.prompt_template,
            "a {red|blue|green} hat on a __job__"
        );
        assert!(t.params.prompt.starts_with("a "), "{}", t.params.prompt);
        assert!(
            t.params.prompt_choices.len() >= 2,
            "{:?}",
            t.params.prompt_choices
        );
        assert!(t.params.prompt.contains(&t.params.prompt_choices[1]));
        assert!(t
            .output_key
            .starts_with(&format!("{}/{:05}-", job.id, t.image_index)));
    }

    // A plain sweep is unaffected: a new job each time, repeated cells kept.
    let plain = "model = \"builtin:tiny-sd\"\nprompt = \"p\"\nseed = 1\n";
    let a = farm.submit(plain, "toml", "p").await.unwrap();
    let b = farm.submit(plain, "toml", "p").await.unwrap();
    assert_ne!(a.id, b.id);
}

#[tokio::test]
async fn sqlite_resubmission_adds_only_new_cells() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    resubmission_adds_only_new_cells(open_store(&url).await.unwrap()).await;
}

#[tokio::test]
async fn postgres_resubmission_adds_only_new_cells() {
    let admin_url = std::env::var("SDFARM_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let options: sqlx::postgres::PgConnectOptions = admin_url.parse().unwrap();
    let mut admin = sqlx::PgConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| panic!("this test needs Postgres at {admin_url}: {e}"));
    // Generated here, never taken from input.
    let name = format!("sdfarm_ds_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let store = PostgresStore::connect_with(
        sqlx::postgres::PgPoolOptions::new().max_connections(4),
        options.clone().database(&name),
    )
    .await
    .unwrap();
    let pool = store.pool().clone();
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
        resubmission_adds_only_new_cells(Arc::new(store)),
    ))
    .await;
    pool.close().await;
    sqlx::query(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
        .execute(&mut admin)
        .await
        .unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
