//! The scaling signal: how many workers each pool wants, from its queue and running tasks.
//!
//! KEDA's `metrics-api` scaler polls `GET /scaling/{pool}` and reads `desired_workers`; with
//! `metricType: AverageValue` and `targetValue: "1"` the HPA then runs exactly that many
//! workers. The same number is exported as `sdfarm_pool_desired_workers{pool}` for KEDA's
//! Prometheus scaler.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::store::{QueueCount, TaskState};

/// One pool's signal, as `/scaling/{pool}` serves it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolSignal {
    pub pool: String,
    /// Tasks waiting for a worker: available, plus retryable ones waiting out a backoff.
    pub queued: u64,
    /// Tasks a worker is rendering now.
    pub running: u64,
    /// Tasks one worker is expected to keep busy with (the per-pool target).
    pub target_per_worker: u32,
    /// `ceil((queued + running) / target_per_worker)`; 0 exactly when the pool has nothing
    /// to do, so it scales to zero.
    pub desired_workers: u64,
}

/// Workers wanted for `queued + running` tasks. Running tasks count too: a pool still
/// rendering must not be scaled down under its workers.
pub fn desired_workers(queued: u64, running: u64, target_per_worker: u32) -> u64 {
    let target = u64::from(target_per_worker.max(1));
    (queued + running).div_ceil(target)
}

/// Signals for every pool that has unfinished tasks, plus the `always` pools (those a
/// caller asks about by name, which must answer even when idle).
pub fn signals<'a>(
    counts: &[QueueCount],
    always: impl IntoIterator<Item = &'a str>,
    target_for: impl Fn(&str) -> u32,
) -> BTreeMap<String, PoolSignal> {
    let mut pools: BTreeMap<String, PoolSignal> = BTreeMap::new();
    for pool in always {
        pools.entry(pool.to_string()).or_default();
    }
    for c in counts {
        let s = pools.entry(c.pool.clone()).or_default();
        match c.state {
            TaskState::Available | TaskState::Retryable => s.queued += c.count,
            TaskState::Running => s.running += c.count,
            _ => {}
        }
    }
    for (pool, s) in pools.iter_mut() {
        s.pool = pool.clone();
        s.target_per_worker = target_for(pool).max(1);
        s.desired_workers = desired_workers(s.queued, s.running, s.target_per_worker);
    }
    pools
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(pool: &str, state: TaskState, count: u64) -> QueueCount {
        QueueCount {
            pool: pool.into(),
            model: "m".into(),
            state,
            count,
        }
    }

    #[test]
    fn desired_rounds_up_and_is_zero_only_when_idle() {
        assert_eq!(desired_workers(0, 0, 4), 0);
        assert_eq!(desired_workers(1, 0, 4), 1);
        assert_eq!(desired_workers(4, 0, 4), 1);
        assert_eq!(desired_workers(4, 1, 4), 2);
        assert_eq!(desired_workers(0, 3, 1), 3);
        assert_eq!(desired_workers(7, 0, 0), 7, "a target of 0 is read as 1");
    }

    #[test]
    fn signals_sum_states_per_pool_and_answer_for_idle_pools() {
        let counts = [
            count("a100", TaskState::Available, 5),
            count("a100", TaskState::Retryable, 1),
            count("a100", TaskState::Running, 2),
            count("t4", TaskState::Running, 1),
        ];
        let s = signals(&counts, ["h100"], |p| if p == "a100" { 3 } else { 1 });
        assert_eq!(s.len(), 3);
        assert_eq!(
            s["a100"],
            PoolSignal {
                pool: "a100".into(),
                queued: 6,
                running: 2,
                target_per_worker: 3,
                desired_workers: 3,
            }
        );
        assert_eq!(s["t4"].desired_workers, 1);
        assert_eq!(s["h100"].desired_workers, 0);
        assert_eq!(s["h100"].pool, "h100");
    }
}
