//! Group commit for task completions: reports arriving while a commit is in flight are
//! written together in the next one, so a busy farm pays one durable write per group
//! instead of one per image, and an idle one adds no delay (a lone report commits at once).
//! A report may carry several completions (a worker that renders ahead reports what
//! finished while its previous report was in flight); they stay in one group.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::store::{Completed, Store, StoreError};

/// Most completions one commit carries; bounds the statement size and the time the group's
/// job rows stay locked. A single report larger than this still commits as one group.
const MAX_GROUP: usize = 256;

/// Per completion of a report, whether it was recorded (`false`: the worker's lease was
/// lost), or why the report could not be recorded.
type Reply = Result<Vec<bool>, StoreError>;

struct Report {
    done: Vec<Completed>,
    reply: oneshot::Sender<Reply>,
}

pub(crate) struct CompletionGroups {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    grouped: bool,
    /// Started on first use, from inside the runtime that serves the calls.
    queue: OnceLock<mpsc::UnboundedSender<Report>>,
}

impl CompletionGroups {
    /// `grouped = false` writes every completion in its own commit (for comparison runs).
    pub(crate) fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, grouped: bool) -> Self {
        CompletionGroups {
            store,
            clock,
            grouped,
            queue: OnceLock::new(),
        }
    }

    /// Records `done` durably; returns once its commit has happened.
    pub(crate) async fn complete(&self, done: Completed) -> Result<bool, StoreError> {
        Ok(self.complete_many(vec![done]).await?[0])
    }

    /// Records every completion of one report durably, in one commit when grouping is on;
    /// returns, in order, whether each was recorded, once that commit has happened.
    pub(crate) async fn complete_many(&self, done: Vec<Completed>) -> Reply {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        if !self.grouped {
            let mut recorded = Vec::with_capacity(done.len());
            for d in &done {
                recorded.push(complete_one(&*self.store, d, self.clock.now_ms()).await?);
            }
            return Ok(recorded);
        }
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(commit_loop(self.store.clone(), self.clock.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        if queue.send(Report { done, reply }).is_err() {
            return Err(StoreError::Db(sqlx::Error::PoolClosed));
        }
        answer
            .await
            .unwrap_or(Err(StoreError::Db(sqlx::Error::PoolClosed)))
    }
}

async fn complete_one(store: &dyn Store, done: &Completed, now: i64) -> Result<bool, StoreError> {
    match store
        .complete(done.task_id, &done.worker, &done.output, now)
        .await
    {
        Ok(()) => Ok(true),
        Err(StoreError::LeaseLost { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes whatever has queued up (at least one report, at most `MAX_GROUP` completions unless
/// one report is larger), commits it as one group, answers every caller, repeats. Ends when
/// the coordinator is dropped.
async fn commit_loop(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    mut rx: mpsc::UnboundedReceiver<Report>,
) {
    let mut reports: Vec<Report> = Vec::new();
    // A report taken from the queue that did not fit the previous group.
    let mut carried: Option<Report> = None;
    loop {
        let first = match carried.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        let mut size = first.done.len();
        reports.push(first);
        while size < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) if size + r.done.len() > MAX_GROUP => {
                    carried = Some(r);
                    break;
                }
                Ok(r) => {
                    size += r.done.len();
                    reports.push(r);
                }
                Err(_) => break,
            }
        }
        let done: Vec<Completed> = reports
            .iter()
            .flat_map(|r| r.done.iter().cloned())
            .collect();
        match store.complete_many(&done, clock.now_ms()).await {
            Ok(recorded) => {
                let mut recorded = recorded.into_iter();
                for r in reports.drain(..) {
                    let mine: Vec<bool> = recorded.by_ref().take(r.done.len()).collect();
                    let _ = r.reply.send(Ok(mine));
                }
            }
            // Nothing of the group was stored: each completion gets its own attempt, and
            // each report its own answer and error.
            Err(e) => {
                tracing::warn!(error = %e, tasks = done.len(), "completion group failed; completing one by one");
                for r in reports.drain(..) {
                    let mut answer = Ok(Vec::with_capacity(r.done.len()));
                    for d in &r.done {
                        match complete_one(&*store, d, clock.now_ms()).await {
                            Ok(ok) => {
                                if let Ok(v) = &mut answer {
                                    v.push(ok)
                                }
                            }
                            Err(e) => {
                                answer = Err(e);
                                break;
                            }
                        }
                    }
                    let _ = r.reply.send(answer);
                }
            }
        }
    }
}
