//! The workers one coordinator replica has heard from: their pool, labels, how many tasks
//! they hold and when they were last seen. Only metrics and logs read it; leasing never
//! depends on it, because a worker may talk to any replica (each lease names its pool).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::store::Millis;

#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub name: String,
    pub pool: String,
    pub labels: BTreeMap<String, String>,
    pub registered_at: Millis,
    pub last_seen: Millis,
    /// Tasks the worker holds leases on, as far as this replica knows.
    pub holding: u32,
    /// An operator asked it to drain; told in every heartbeat and lease reply.
    pub draining: bool,
    /// Model references it last reported in memory and on disk (heartbeats and leases).
    pub loaded_models: Vec<String>,
    pub cached_models: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkerState {
    /// Rendering at least one task.
    Busy,
    /// Seen recently, holding nothing (usually long-polling for work).
    Idle,
    /// Not heard from for longer than a lease and a long-poll: gone or partitioned.
    Lost,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Busy => "busy",
            WorkerState::Idle => "idle",
            WorkerState::Lost => "lost",
        }
    }
}

/// A lost worker is forgotten after this long, so scaled-down pods do not pile up.
const FORGET_AFTER_MS: Millis = 10 * 60 * 1000;

#[derive(Default)]
pub struct Workers {
    map: Mutex<HashMap<String, WorkerInfo>>,
}

impl Workers {
    pub fn register(
        &self,
        id: &str,
        name: &str,
        pool: &str,
        labels: BTreeMap<String, String>,
        now: Millis,
    ) {
        self.map.lock().unwrap().insert(
            id.to_string(),
            WorkerInfo {
                name: name.to_string(),
                pool: pool.to_string(),
                labels,
                registered_at: now,
                last_seen: now,
                holding: 0,
                draining: false,
                loaded_models: Vec::new(),
                cached_models: Vec::new(),
            },
        );
    }

    /// Notes that the worker is alive. A worker that registered with another replica is
    /// added here when its pool is known (from a lease).
    pub fn seen(&self, id: &str, pool: Option<&str>, now: Millis) {
        let mut map = self.map.lock().unwrap();
        match map.get_mut(id) {
            Some(w) => {
                w.last_seen = now;
                if w.pool.is_empty() {
                    w.pool = pool.unwrap_or_default().to_string();
                }
            }
            None => {
                if let Some(pool) = pool {
                    map.insert(
                        id.to_string(),
                        WorkerInfo {
                            name: id.to_string(),
                            pool: pool.to_string(),
                            labels: BTreeMap::new(),
                            registered_at: now,
                            last_seen: now,
                            holding: 0,
                            draining: false,
                            loaded_models: Vec::new(),
                            cached_models: Vec::new(),
                        },
                    );
                }
            }
        }
    }

    pub fn leased(&self, id: &str, n: u32) {
        if let Some(w) = self.map.lock().unwrap().get_mut(id) {
            w.holding = w.holding.saturating_add(n);
        }
    }

    pub fn released(&self, id: &str) {
        if let Some(w) = self.map.lock().unwrap().get_mut(id) {
            w.holding = w.holding.saturating_sub(1);
        }
    }

    /// A heartbeat names every task the worker still renders: the exact count.
    pub fn holding(&self, id: &str, n: u32) {
        if let Some(w) = self.map.lock().unwrap().get_mut(id) {
            w.holding = n;
        }
    }

    /// Records the models a worker reports holding in memory and on disk.
    pub fn models(&self, id: &str, loaded: &[String], cached: &[String]) {
        if let Some(w) = self.map.lock().unwrap().get_mut(id) {
            w.loaded_models = loaded.to_vec();
            w.cached_models = cached.to_vec();
        }
    }

    /// Marks a worker to drain; a worker this replica has not heard from yet is remembered
    /// for when it shows up (its pool is learnt then).
    pub fn drain(&self, id: &str, now: Millis) {
        let mut map = self.map.lock().unwrap();
        let w = map.entry(id.to_string()).or_insert_with(|| WorkerInfo {
            name: id.to_string(),
            pool: String::new(),
            labels: BTreeMap::new(),
            registered_at: now,
            last_seen: now,
            holding: 0,
            draining: false,
            loaded_models: Vec::new(),
            cached_models: Vec::new(),
        });
        w.draining = true;
    }

    pub fn is_draining(&self, id: &str) -> bool {
        self.map.lock().unwrap().get(id).is_some_and(|w| w.draining)
    }

    pub fn pool_of(&self, id: &str) -> Option<String> {
        self.map.lock().unwrap().get(id).map(|w| w.pool.clone())
    }

    pub fn get(&self, id: &str) -> Option<WorkerInfo> {
        self.map.lock().unwrap().get(id).cloned()
    }

    /// Workers per (pool, state). `lost_after_ms` is how long silence may last before a
    /// worker counts as lost; workers silent for much longer are forgotten.
    pub fn counts(
        &self,
        now: Millis,
        lost_after_ms: Millis,
    ) -> BTreeMap<(String, WorkerState), u64> {
        let mut map = self.map.lock().unwrap();
        map.retain(|_, w| now - w.last_seen <= lost_after_ms + FORGET_AFTER_MS);
        let mut counts = BTreeMap::new();
        for w in map.values() {
            let state = if now - w.last_seen > lost_after_ms {
                WorkerState::Lost
            } else if w.holding > 0 {
                WorkerState::Busy
            } else {
                WorkerState::Idle
            };
            *counts.entry((w.pool.clone(), state)).or_insert(0) += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_leases_and_silence() {
        let w = Workers::default();
        w.register("a", "a", "a100", BTreeMap::new(), 0);
        w.register("b", "b", "a100", BTreeMap::new(), 0);
        w.seen("c", Some("t4"), 0);
        w.seen("unknown", None, 0);
        w.leased("a", 2);
        w.released("a");
        let counts = w.counts(1_000, 60_000);
        assert_eq!(counts[&("a100".into(), WorkerState::Busy)], 1);
        assert_eq!(counts[&("a100".into(), WorkerState::Idle)], 1);
        assert_eq!(counts[&("t4".into(), WorkerState::Idle)], 1);
        assert_eq!(counts.len(), 3);

        w.seen("a", None, 100_000);
        let counts = w.counts(100_000, 60_000);
        assert_eq!(counts[&("a100".into(), WorkerState::Lost)], 1);
        assert_eq!(counts[&("a100".into(), WorkerState::Busy)], 1);
        w.models("b", &["m1".into()], &["m2".into(), "m3".into()]);
        let b = w.get("b").unwrap();
        assert_eq!(b.loaded_models, ["m1"]);
        assert_eq!(b.cached_models, ["m2", "m3"]);
        // Long silence: forgotten.
        assert!(w
            .counts(100_000 + FORGET_AFTER_MS + 60_001, 60_000)
            .is_empty());
    }
}
