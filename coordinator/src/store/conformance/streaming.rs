//! Conformance checks for streaming submission: tasks drawn from an iterator land exactly
//! as `create_job` would store them, an empty stream finishes the job, and a stream that
//! fails part-way stores nothing.

use std::sync::Arc;

use super::fixtures::*;
use crate::store::*;

pub(super) async fn streamed_tasks_read_back_like_created_ones(store: Arc<dyn Store>) {
    let job = new_job("job-s", 1, 2);
    // More than one COPY chunk's worth of rows, with text that needs escaping.
    let mut tasks = new_tasks("job-s", 0..3000).into_iter().map(|mut t| {
        t.params.prompt = format!("a \"tab\"\there\\ {}\nline", t.image_index);
        t.params.styles = vec!["a".into(), "b".into()];
        t.params.s_churn = 0.5;
        t
    });
    let stored = store
        .create_job_streaming(&job, &mut tasks, T0)
        .await
        .unwrap();
    assert_eq!(stored, 3000);
    let got = store.get_job("job-s").await.unwrap();
    assert_eq!((got.counts.total, got.counts.available), (3000, 3000));
    assert_eq!(got.finished_at, None);
    let listed = store.list_tasks("job-s").await.unwrap();
    let want = new_tasks("job-s", [2999]).pop().unwrap();
    let last = listed.last().unwrap();
    assert_eq!(last.image_index, 2999);
    assert_eq!(last.output_key, want.output_key);
    assert_eq!(last.params.prompt, "a \"tab\"\there\\ 2999\nline");
    assert_eq!(last.params.styles, ["a", "b"]);
    assert_eq!(last.params.s_churn, 0.5);
    assert_eq!(last.params.seed, want.params.seed);
    assert_eq!(last.params.sampler_name, want.params.sampler_name);
    assert_eq!(last.max_attempts, 2);
}

pub(super) async fn empty_stream_finishes_the_job(store: Arc<dyn Store>) {
    let job = new_job("job-e", 0, 1);
    let stored = store
        .create_job_streaming(&job, &mut std::iter::empty(), T0)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    assert_eq!(store.get_job("job-e").await.unwrap().finished_at, Some(T0));
}

pub(super) async fn failed_stream_stores_nothing(store: Arc<dyn Store>) {
    let job = new_job("job-f", 0, 1);
    // A duplicate image index breaks the (job, image) uniqueness part-way through.
    let mut tasks = new_tasks("job-f", [0, 1, 2, 1]).into_iter();
    assert!(store
        .create_job_streaming(&job, &mut tasks, T0)
        .await
        .is_err());
    assert!(matches!(
        store.get_job("job-f").await,
        Err(StoreError::JobNotFound(_))
    ));
}
