//! Fan-out of job changes, render progress and worker presence to `watch` streams, and, when
//! Redis is configured, to the other coordinator replicas (see `relay`).

use std::sync::{Arc, OnceLock};

use sdfarm_proto::v1::TaskProgress;
use tokio::sync::{broadcast, mpsc};

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A job's task counts may have changed. `None` when the change could touch any job
    /// (the rescuer only knows task ids).
    JobChanged(Option<String>),
    Progress(TaskProgress),
    /// A worker talked to some replica: every replica's view of the farm (metrics, scaling)
    /// counts it, whichever replica it happens to reach.
    Presence(Presence),
    /// An operator asked this worker to drain; whichever replica it talks to tells it.
    Drain(String),
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Presence {
    pub worker: String,
    pub pool: String,
    /// Tasks the worker holds as far as the reporting replica knows; `None` when the report
    /// did not learn it (a long-poll says nothing about tasks held elsewhere).
    pub holding: Option<u32>,
}

/// Lossy by design: a slow watcher misses progress ticks (it re-reads the store), never tasks.
#[derive(Debug, Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    /// Where events for the other replicas go, once a relay is attached. Sending never
    /// waits: when Redis is slow or gone the event is dropped, because the store, not Redis,
    /// says what happened.
    outbound: Arc<OnceLock<mpsc::Sender<Event>>>,
}

impl Default for Events {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(1024);
        Events {
            tx,
            outbound: Arc::default(),
        }
    }
}

impl Events {
    /// Publishes an event that happened on this replica: to local watchers and to the others.
    pub fn publish(&self, event: Event) {
        if let Some(out) = self.outbound.get() {
            let _ = out.try_send(event.clone());
        }
        self.deliver(event);
    }

    /// Delivers an event to this replica's subscribers only (one that came from another
    /// replica must not be sent back out).
    pub fn deliver(&self, event: Event) {
        // No receivers is normal when nobody watches.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// Routes every later `publish` also to `out`. Only the first attachment counts.
    pub(crate) fn attach_outbound(&self, out: mpsc::Sender<Event>) -> bool {
        self.outbound.set(out).is_ok()
    }
}
