//! Group commit for task completions: reports arriving while a commit is in flight are
//! written together in the next one, so a busy farm pays one durable write per group
//! instead of one per image, and an idle one adds no delay (a lone report commits at once).

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::store::{Completed, Store, StoreError};

/// Most completions one commit carries; bounds the statement size and the time the group's
/// job rows stay locked.
const MAX_GROUP: usize = 256;

/// Whether the completion was recorded (`false`: the worker's lease was lost), or why it
/// could not be.
type Reply = Result<bool, StoreError>;

pub(crate) struct CompletionGroups {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    grouped: bool,
    /// Started on first use, from inside the runtime that serves the calls.
    queue: OnceLock<mpsc::UnboundedSender<(Completed, oneshot::Sender<Reply>)>>,
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
    pub(crate) async fn complete(&self, done: Completed) -> Reply {
        if !self.grouped {
            return complete_one(&*self.store, &done, self.clock.now_ms()).await;
        }
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(commit_loop(self.store.clone(), self.clock.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        if queue.send((done, reply)).is_err() {
            return Err(StoreError::Db(sqlx::Error::PoolClosed));
        }
        answer
            .await
            .unwrap_or(Err(StoreError::Db(sqlx::Error::PoolClosed)))
    }
}

async fn complete_one(store: &dyn Store, done: &Completed, now: i64) -> Reply {
    match store
        .complete(done.task_id, &done.worker, &done.output, now)
        .await
    {
        Ok(()) => Ok(true),
        Err(StoreError::LeaseLost { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes whatever has queued up (at least one report), commits it as one group, answers
/// every caller, repeats. Ends when the coordinator is dropped.
async fn commit_loop(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    mut rx: mpsc::UnboundedReceiver<(Completed, oneshot::Sender<Reply>)>,
) {
    let mut batch = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut batch, MAX_GROUP).await > 0 {
        let (done, replies): (Vec<Completed>, Vec<oneshot::Sender<Reply>>) =
            batch.drain(..).unzip();
        match store.complete_many(&done, clock.now_ms()).await {
            Ok(recorded) => {
                for (reply, ok) in replies.into_iter().zip(recorded) {
                    let _ = reply.send(Ok(ok));
                }
            }
            // Nothing of the group was stored: each report gets its own attempt, and so
            // its own answer and error.
            Err(e) => {
                tracing::warn!(error = %e, tasks = done.len(), "completion group failed; completing one by one");
                for (d, reply) in done.iter().zip(replies) {
                    let _ = reply.send(complete_one(&*store, d, clock.now_ms()).await);
                }
            }
        }
    }
}
