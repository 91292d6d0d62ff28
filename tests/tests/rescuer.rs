//! The rescuer among replicas: stuck rows fabricated in Postgres (running, lease long
//! expired, worker gone) are rescued by one pass of the leading replica; the other replica
//! stands by while the leader lives and takes over when it is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sdfarm_coordinator::store::{open_store, TaskState, DEFAULT_POOL};
use sdfarm_coordinator::{Clock, Coordinator, CoordinatorConfig, SystemClock};
use sdfarm_e2e::TestDb;

async fn replica(db: &TestDb) -> Arc<Coordinator> {
    let store = open_store(&db.url).await.unwrap();
    Arc::new(Coordinator::new(
        store,
        CoordinatorConfig::default(),
        Arc::new(SystemClock),
    ))
}

fn sweep(images: u32, max_attempts: u32) -> String {
    format!(
        "model = \"builtin:tiny-sd\"\nprompt = \"p\"\nseed = 1\nbatch_size = {images}\n\
         max_attempts = {max_attempts}\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn one_leader_rescues_fabricated_stuck_rows_and_the_other_takes_over() {
    let db = TestDb::create().await;
    let a = replica(&db).await;
    let b = replica(&db).await;
    let last_try = a.submit(&sweep(2, 1), "toml", "last-try").await.unwrap();
    let retry = a.submit(&sweep(3, 3), "toml", "retry").await.unwrap();

    // Stuck rows: leased by a worker that never came back, the lease long past.
    let stuck = a
        .store()
        .claim(
            "vanished-worker",
            DEFAULT_POOL,
            5,
            1_000,
            SystemClock.now_ms(),
        )
        .await
        .unwrap();
    assert_eq!(stuck.len(), 5);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    let long_ago = SystemClock.now_ms() - 3_600_000;
    sqlx::query("UPDATE tasks SET lease_expires_at = $1 WHERE state = 'running'")
        .bind(long_ago)
        .execute(&mut conn)
        .await
        .unwrap();

    let report = a
        .rescue_once()
        .await
        .unwrap()
        .expect("the first replica to ask leads the rescuer");
    assert_eq!(report.discarded.len(), 2, "{report:?}");
    assert_eq!(report.retried.len(), 3, "{report:?}");
    assert!(
        b.rescue_once().await.unwrap().is_none(),
        "a second replica stands by while the leader lives"
    );

    for t in a.store().list_tasks(&last_try.id).await.unwrap() {
        assert_eq!(t.state, TaskState::Discarded);
        assert_eq!(t.errors.len(), 1);
        assert!(t.errors[0].contains("vanished-worker"), "{:?}", t.errors);
    }
    let job = a.store().get_job(&last_try.id).await.unwrap();
    assert!(
        job.finished_at.is_some(),
        "all its tasks discarded: the job is over"
    );
    for t in a.store().list_tasks(&retry.id).await.unwrap() {
        assert_eq!(t.state, TaskState::Retryable);
        assert!(t.lease_owner.is_none());
        assert!(t.errors[0].starts_with("lease expired"), "{:?}", t.errors);
    }

    // The leader goes away; its session and lock with it. The standby takes over.
    drop(a);
    let start = Instant::now();
    loop {
        if b.rescue_once().await.unwrap().is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the standby replica never took over the rescuer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
