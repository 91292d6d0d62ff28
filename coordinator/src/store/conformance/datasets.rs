//! Conformance checks for dataset jobs: cell keys read back, tasks added to an existing job
//! (reopening it), and a cell key held twice refused with nothing stored.

use std::sync::Arc;

use super::fixtures::*;
use crate::dataset::{cell_key, key_hex};
use crate::store::*;

fn keyed_tasks(job_id: &str, indexes: impl IntoIterator<Item = u32>) -> Vec<NewTask> {
    new_tasks(job_id, indexes)
        .into_iter()
        .map(|mut t| {
            t.cell_key = Some(key_hex(&cell_key(&t.params)));
            t
        })
        .collect()
}

pub(super) async fn dataset_cells_read_back_keys_and_next_index(store: Arc<dyn Store>) {
    assert!(store.dataset_cells("job-none").await.unwrap().is_none());
    let job = new_job("job-d", 0, 2);
    let mut tasks = keyed_tasks("job-d", 0..3).into_iter();
    store
        .create_job_streaming(&job, &mut tasks, T0)
        .await
        .unwrap();
    // A plain job next to it: its tasks have no keys and may repeat parameters.
    submit(&*store, "job-plain", 0, 1, 2, T0).await;
    let cells = store.dataset_cells("job-d").await.unwrap().unwrap();
    assert_eq!(cells.next_index, 3);
    let want: std::collections::HashSet<_> = (0..3).map(|i| cell_key(&params(i))).collect();
    assert_eq!(cells.keys, want);
    let plain = store.dataset_cells("job-plain").await.unwrap().unwrap();
    assert!(plain.keys.is_empty());
    assert_eq!(plain.next_index, 2);
}

pub(super) async fn extending_a_job_adds_tasks_and_reopens_it(store: Arc<dyn Store>) {
    let job = new_job("job-x", 0, 2);
    store
        .create_job(&job, &keyed_tasks("job-x", 0..2), T0)
        .await
        .unwrap();
    for t in store.claim("w1", DEFAULT_POOL, 2, LEASE, T0).await.unwrap() {
        store
            .complete(t.id, "w1", &output("x"), T0 + 1)
            .await
            .unwrap();
    }
    let done = store.get_job("job-x").await.unwrap();
    assert_eq!(done.finished_at, Some(T0 + 1));

    let mut bigger = job.clone();
    bigger.sweep = "dataset = \"x\"\n# more cells\n".into();
    let mut more = keyed_tasks("job-x", 2..5).into_iter();
    let added = store
        .extend_job_streaming(&bigger, &mut more, T0 + 2)
        .await
        .unwrap();
    assert_eq!(added, 3);
    let got = store.get_job("job-x").await.unwrap();
    assert_eq!(
        got.finished_at, None,
        "new cells make the job unfinished again"
    );
    assert_eq!(got.sweep, bigger.sweep);
    assert_eq!(
        (got.counts.total, got.counts.completed, got.counts.available),
        (5, 2, 3)
    );
    let listed = store.list_tasks("job-x").await.unwrap();
    let indexes: Vec<u32> = listed.iter().map(|t| t.image_index).collect();
    assert_eq!(indexes, [0, 1, 2, 3, 4]);
    assert_eq!(listed[4].params, params(4));
    assert_eq!(
        store
            .dataset_cells("job-x")
            .await
            .unwrap()
            .unwrap()
            .next_index,
        5
    );

    // A cancelled job takes new cells as a running job again.
    store.cancel_job("job-x", T0 + 3).await.unwrap();
    let mut one = keyed_tasks("job-x", [5]).into_iter();
    store
        .extend_job_streaming(&bigger, &mut one, T0 + 4)
        .await
        .unwrap();
    let got = store.get_job("job-x").await.unwrap();
    assert!(!got.cancelled);
    assert_eq!(got.counts.available, 1);
    let claimed = store
        .claim("w1", DEFAULT_POOL, 5, LEASE, T0 + 5)
        .await
        .unwrap();
    assert_eq!(
        claimed.len(),
        1,
        "the new cell is leased; cancelled ones stay cancelled"
    );
    assert_eq!(claimed[0].image_index, 5);

    // Nothing to add leaves a finished job finished.
    let mut none = std::iter::empty();
    assert_eq!(
        store
            .extend_job_streaming(&bigger, &mut none, T0 + 6)
            .await
            .unwrap(),
        0
    );
}

pub(super) async fn a_cell_key_held_twice_stores_nothing(store: Arc<dyn Store>) {
    let job = new_job("job-k", 0, 2);
    store
        .create_job(&job, &keyed_tasks("job-k", 0..2), T0)
        .await
        .unwrap();
    // Index 9 is new but its parameters are those of cell 1.
    let mut clash = keyed_tasks("job-k", [2, 1]);
    clash[1].image_index = 9;
    clash[1].output_key = "renders/job-k/00009.png".into();
    let mut tasks = clash.into_iter();
    assert!(store
        .extend_job_streaming(&job, &mut tasks, T0 + 1)
        .await
        .is_err());
    let got = store.get_job("job-k").await.unwrap();
    assert_eq!(got.counts.total, 2, "the whole addition was refused");

    let mut missing = keyed_tasks("job-nope", [0]).into_iter();
    let mut nope = job.clone();
    nope.id = "job-nope".into();
    assert!(matches!(
        store.extend_job_streaming(&nope, &mut missing, T0).await,
        Err(StoreError::JobNotFound(_))
    ));

    // The key is unique within a job only: another job may hold the same cell.
    let other = new_job("job-k2", 0, 2);
    store
        .create_job(&other, &keyed_tasks("job-k2", 0..2), T0)
        .await
        .unwrap();
    // And a new job whose stream repeats a key is refused whole, like a repeated index.
    let mut dup = keyed_tasks("job-k3", [0, 1]);
    dup[1].params = dup[0].params.clone();
    dup[1].cell_key = dup[0].cell_key.clone();
    let mut dup = dup.into_iter();
    assert!(store
        .create_job_streaming(&new_job("job-k3", 0, 1), &mut dup, T0)
        .await
        .is_err());
    assert!(matches!(
        store.get_job("job-k3").await,
        Err(StoreError::JobNotFound(_))
    ));
}
