//! In-process fan-out of job changes and render progress to `watch` streams.

use sdfarm_proto::v1::TaskProgress;
use tokio::sync::broadcast;

#[derive(Debug, Clone)]
pub enum Event {
    /// A job's task counts may have changed. `None` when the change could touch any job
    /// (the rescuer only knows task ids).
    JobChanged(Option<String>),
    Progress(TaskProgress),
}

/// Lossy by design: a slow watcher misses progress ticks (it re-reads the store), never tasks.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Events { tx }
    }
}

impl Events {
    pub fn publish(&self, event: Event) {
        // No receivers is normal when nobody watches.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
