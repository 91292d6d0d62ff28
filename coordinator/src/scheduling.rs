//! Which checkpoint a worker renders next. A model load costs more than dozens of images,
//! so the lease path keeps a worker on the models it holds while their work waits, and when
//! a model must be loaded it picks the one whose waiting work is worst served:
//!
//! * A model's *backlog* is how long its current holders need to render its waiting tasks:
//!   `waiting × image cost / holders` (unbounded when nobody holds it).
//! * A worker with no work for its models loads the model with the largest backlog, but only
//!   when that backlog exceeds one load: otherwise the holders finish before a newcomer
//!   could have loaded it, and the worker waits instead (an idle worker is then the first
//!   to take the next job).
//! * A worker whose model still has work switches to the worst-served other model only when
//!   that shortens the longer of the two backlogs, counting its load (so switching back and
//!   forth never pays). A sole holder never leaves its model's waiting work.
//!
//! Waiting counts come from the store (`queue_counts`, re-read every [`REFRESH_MS`] and after
//! each submit) and are lowered here as tasks are claimed; holders are the workers whose last
//! lease on this replica was for the model. Image and load costs are learnt per pool from the
//! workers' completion reports. Every decision only narrows which tasks a claim asks for:
//! the claim itself stays the store's, fenced and priority-ordered, and when the chosen
//! model has nothing claimable at the top priority the plain claim runs.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::metrics::Completion;
use crate::store::{Millis, QueueCount, Result, Store, TaskRecord, TaskState};

/// How often the waiting counts are re-read from the store (coordinator clock).
pub const REFRESH_MS: Millis = 2_000;
/// A worker silent this long no longer counts as holding its model, until a lease tells the
/// scheduler the pool's lease length: a live worker heartbeats every third of a lease, so a
/// holder not heard from for a whole lease has died (its tasks come back through the
/// rescuer) and must not keep idle workers waiting for it.
const HOLDER_TIMEOUT_MS: Millis = 10 * 60 * 1000;
/// Cost guesses before a pool's workers have reported any.
const DEFAULT_IMAGE_MS: f64 = 5_000.0;
const DEFAULT_LOAD_MS: f64 = 60_000.0;
/// Weight of each new report in the running averages.
const EWMA: f64 = 0.1;

/// What the lease path should claim for a worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Tasks of the models it holds.
    Held,
    /// Load this model (the worker holds none with waiting work, or switching pays).
    Load(String),
    /// Nothing worth a load: every waiting model's holders finish sooner than a load takes.
    Wait,
    /// The counts know of no waiting work: the plain claim decides.
    Any,
}

#[derive(Debug, Clone, Copy)]
struct Costs {
    image_ms: f64,
    load_ms: f64,
}

struct Holder {
    model: String,
    seen: Millis,
}

struct PoolState {
    /// Claimable tasks per model.
    waiting: HashMap<String, u64>,
    /// Worker id → the model its last lease was for.
    holders: HashMap<String, Holder>,
    image_ms: Option<f64>,
    load_ms: Option<f64>,
    /// How long a holder counts without a lease or heartbeat (the lease length once known).
    holder_timeout_ms: Millis,
    /// Worker id → when its current run of `Plan::Wait` answers began.
    waiting_since: HashMap<String, Millis>,
}

impl PoolState {
    fn new() -> Self {
        PoolState {
            waiting: HashMap::new(),
            holders: HashMap::new(),
            image_ms: None,
            load_ms: None,
            holder_timeout_ms: HOLDER_TIMEOUT_MS,
            waiting_since: HashMap::new(),
        }
    }

    fn costs(&self) -> Costs {
        Costs {
            image_ms: self.image_ms.unwrap_or(DEFAULT_IMAGE_MS),
            load_ms: self.load_ms.unwrap_or(DEFAULT_LOAD_MS),
        }
    }

    /// Workers other than `me` serving `model`.
    fn holders_of(&self, model: &str, me: &str, now: Millis) -> u64 {
        self.holders
            .iter()
            .filter(|(w, h)| {
                w.as_str() != me && h.model == model && now - h.seen <= self.holder_timeout_ms
            })
            .count() as u64
    }

    fn backlog(&self, model: &str, me: &str, now: Millis, costs: Costs) -> f64 {
        let waiting = self.waiting.get(model).copied().unwrap_or(0);
        if waiting == 0 {
            return 0.0;
        }
        let holders = self.holders_of(model, me, now);
        if holders == 0 {
            f64::INFINITY
        } else {
            waiting as f64 * costs.image_ms / holders as f64
        }
    }

    /// The waiting model outside `held` with the largest backlog (ties: most waiting, then
    /// name, so replicas and runs agree).
    fn neediest(
        &self,
        held: &[String],
        me: &str,
        now: Millis,
        costs: Costs,
    ) -> Option<(f64, &str)> {
        let mut best: Option<(f64, u64, &str)> = None;
        for (model, &waiting) in &self.waiting {
            if waiting == 0 || held.iter().any(|h| h == model) {
                continue;
            }
            let backlog = self.backlog(model, me, now, costs);
            let better = match best {
                None => true,
                Some((b, w, m)) => {
                    (backlog, waiting, std::cmp::Reverse(model.as_str()))
                        > (b, w, std::cmp::Reverse(m))
                }
            };
            if better {
                best = Some((backlog, waiting, model));
            }
        }
        best.map(|(b, _, m)| (b, m))
    }

    fn plan(&self, worker: &str, held: &[String], now: Millis) -> Plan {
        let costs = self.costs();
        // The held model with the most waiting work, if any has some.
        let own = held
            .iter()
            .filter_map(|m| Some((self.waiting.get(m).copied().filter(|&w| w > 0)?, m)))
            .max();
        let other = self.neediest(held, worker, now, costs);
        match (own, other) {
            (Some((own_waiting, own)), Some((_, model))) => {
                // Switch only when it shortens the longer of the two backlogs, counting the
                // load the switch costs: moving back and forth never pays.
                let n_own = own_waiting as f64 * costs.image_ms;
                let h_own = self.holders_of(own, worker, now) as f64;
                let n_new = self.waiting.get(model).copied().unwrap_or(0) as f64 * costs.image_ms;
                let h_new = self.holders_of(model, worker, now) as f64;
                let before = drain(n_own, h_own + 1.0).max(drain(n_new, h_new));
                let after = drain(n_own, h_own).max(drain_joined(n_new, h_new, costs.load_ms));
                if after < before {
                    Plan::Load(model.to_string())
                } else {
                    Plan::Held
                }
            }
            (Some(_), None) => Plan::Held,
            (None, Some((backlog, model))) => {
                if backlog > costs.load_ms {
                    Plan::Load(model.to_string())
                } else {
                    Plan::Wait
                }
            }
            (None, None) => Plan::Any,
        }
    }
}

/// How long `holders` workers take to render `work` ms of images (unbounded with none).
fn drain(work: f64, holders: f64) -> f64 {
    if work <= 0.0 {
        0.0
    } else if holders <= 0.0 {
        f64::INFINITY
    } else {
        work / holders
    }
}

/// `drain` when one more worker joins after loading for `load` ms: it takes a share of what
/// is left once its load is done (nothing, when the holders finish first).
fn drain_joined(work: f64, holders: f64, load: f64) -> f64 {
    let alone = drain(work, holders);
    if alone <= load {
        alone
    } else {
        (work + load) / (holders + 1.0)
    }
}

#[derive(Default)]
struct State {
    pools: HashMap<String, PoolState>,
    /// When the waiting counts were read; `None`: read them before the next decision.
    refreshed_at: Option<Millis>,
}

/// The scheduler's view of one coordinator replica (see the module docs).
#[derive(Default)]
pub struct Scheduler {
    state: Mutex<State>,
}

impl Scheduler {
    /// New work was stored: re-read the waiting counts before the next decision.
    pub fn invalidate(&self) {
        self.state.lock().unwrap().refreshed_at = None;
    }

    fn needs_refresh(&self, now: Millis) -> bool {
        let state = self.state.lock().unwrap();
        state
            .refreshed_at
            .is_none_or(|at| now - at >= REFRESH_MS || now < at)
    }

    /// Replaces every pool's waiting counts with the store's.
    pub fn refresh(&self, counts: &[QueueCount], now: Millis) {
        let mut state = self.state.lock().unwrap();
        for pool in state.pools.values_mut() {
            pool.waiting.clear();
        }
        for c in counts {
            if matches!(c.state, TaskState::Available | TaskState::Retryable) {
                let pool = state
                    .pools
                    .entry(c.pool.clone())
                    .or_insert_with(PoolState::new);
                *pool.waiting.entry(c.model.clone()).or_insert(0) += c.count;
            }
        }
        state.refreshed_at = Some(now);
    }

    /// What `worker` of `pool`, holding `held`, should claim now.
    pub fn plan(&self, pool: &str, worker: &str, held: &[String], now: Millis) -> Plan {
        let state = self.state.lock().unwrap();
        match state.pools.get(pool) {
            Some(p) => p.plan(worker, held, now),
            None => Plan::Any,
        }
    }

    /// Notes a lease: the worker now serves its tasks' model, which waits less.
    pub fn claimed(&self, pool: &str, worker: &str, tasks: &[TaskRecord], now: Millis) {
        let Some(first) = tasks.first() else { return };
        let mut state = self.state.lock().unwrap();
        let p = state
            .pools
            .entry(pool.to_string())
            .or_insert_with(PoolState::new);
        for t in tasks {
            if let Some(w) = p.waiting.get_mut(&t.params.model) {
                *w = w.saturating_sub(1);
            }
        }
        p.holders.insert(
            worker.to_string(),
            Holder {
                model: first.params.model.clone(),
                seen: now,
            },
        );
    }

    /// The worker is alive (a heartbeat): it still holds what it held.
    pub fn touch(&self, worker: &str, now: Millis) {
        for p in self.state.lock().unwrap().pools.values_mut() {
            if let Some(h) = p.holders.get_mut(worker) {
                h.seen = h.seen.max(now);
            }
        }
    }

    /// The worker got nothing: it serves no model until its next lease.
    pub fn idle(&self, pool: &str, worker: &str) {
        if let Some(p) = self.state.lock().unwrap().pools.get_mut(pool) {
            p.holders.remove(worker);
        }
    }

    /// Learns the pool's image and load costs from a completion report.
    pub fn observe(&self, pool: &str, report: &Completion) {
        let mut state = self.state.lock().unwrap();
        let p = state
            .pools
            .entry(pool.to_string())
            .or_insert_with(PoolState::new);
        let load = report.model_load_ms.unwrap_or(0);
        let image = report.render_ms.saturating_sub(load) as f64;
        p.image_ms = Some(p.image_ms.map_or(image, |m| m + EWMA * (image - m)));
        if let Some(load) = report.model_load_ms {
            let load = load as f64;
            p.load_ms = Some(p.load_ms.map_or(load, |m| m + EWMA * (load - m)));
        }
    }

    /// Claims up to `max` tasks for `worker` following the plan (see the module docs).
    #[allow(clippy::too_many_arguments)]
    pub async fn claim(
        &self,
        store: &dyn Store,
        worker: &str,
        pool: &str,
        held: &[String],
        max: u32,
        lease_ms: i64,
        now: Millis,
    ) -> Result<Vec<TaskRecord>> {
        if self.needs_refresh(now) {
            let counts = store.queue_counts().await?;
            self.refresh(&counts, now);
        }
        self.state
            .lock()
            .unwrap()
            .pools
            .entry(pool.to_string())
            .or_insert_with(PoolState::new)
            .holder_timeout_ms = lease_ms.max(1);
        let plan = self.plan(pool, worker, held, now);
        let mut tasks = Vec::new();
        if let Plan::Load(model) = &plan {
            if !held.is_empty() {
                // Switching: only when the worker's own models can spare it.
                tasks = store
                    .claim_for_models(
                        worker,
                        pool,
                        std::slice::from_ref(model),
                        max,
                        lease_ms,
                        now,
                    )
                    .await?;
            }
        }
        if tasks.is_empty() {
            tasks = store
                .claim_for_models(worker, pool, held, max, lease_ms, now)
                .await?;
        }
        if tasks.is_empty() {
            // Nothing for the held models: recompute with none held, as the counts may have
            // said the held models had work they no longer have at this priority.
            match self.plan(pool, worker, &[], now) {
                Plan::Load(model) => {
                    tasks = store
                        .claim_for_models(worker, pool, &[model], max, lease_ms, now)
                        .await?;
                    if tasks.is_empty() {
                        tasks = store.claim(worker, pool, max, lease_ms, now).await?;
                    }
                }
                Plan::Wait => {
                    if self.waited_out(pool, worker, now) {
                        tasks = store.claim(worker, pool, max, lease_ms, now).await?;
                    }
                }
                Plan::Held | Plan::Any => {
                    tasks = store.claim(worker, pool, max, lease_ms, now).await?;
                }
            }
        }
        if tasks.is_empty() {
            self.idle(pool, worker);
        } else {
            self.claimed(pool, worker, &tasks, now);
            if let Some(p) = self.state.lock().unwrap().pools.get_mut(pool) {
                p.waiting_since.remove(worker);
            }
        }
        Ok(tasks)
    }

    /// Waiting is a bet that the holders render the waiting work sooner than a load would:
    /// it is given up once the worker has waited as long as the holders should have needed
    /// (a holder that stopped asking for work, or is slower than its costs say, must not
    /// leave the work waiting while this worker idles).
    fn waited_out(&self, pool: &str, worker: &str, now: Millis) -> bool {
        let mut state = self.state.lock().unwrap();
        let Some(p) = state.pools.get_mut(pool) else {
            return true;
        };
        let costs = p.costs();
        let backlog = p
            .neediest(&[], worker, now, costs)
            .map_or(0.0, |(backlog, _)| backlog);
        let since = *p.waiting_since.entry(worker.to_string()).or_insert(now);
        (now - since) as f64 >= backlog
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pool: &str, waiting: &[(&str, u64)]) -> Vec<QueueCount> {
        waiting
            .iter()
            .map(|(m, n)| QueueCount {
                pool: pool.into(),
                model: (*m).into(),
                state: TaskState::Available,
                count: *n,
            })
            .collect()
    }

    fn costs(s: &Scheduler, image_ms: u64, load_ms: u64) {
        s.observe(
            "p",
            &Completion {
                steps: 20,
                render_ms: image_ms + load_ms,
                model: "x".into(),
                model_load_ms: Some(load_ms),
            },
        );
    }

    fn serve(s: &Scheduler, worker: &str, model: &str) {
        let mut state = s.state.lock().unwrap();
        state.pools.get_mut("p").unwrap().holders.insert(
            worker.into(),
            Holder {
                model: model.into(),
                seen: 0,
            },
        );
    }

    #[test]
    fn fresh_workers_spread_over_models_by_waiting_work() {
        let s = Scheduler::default();
        s.refresh(&counts("p", &[("a", 300), ("b", 100)]), 0);
        costs(&s, 1_000, 30_000);
        assert_eq!(s.plan("p", "w1", &[], 0), Plan::Load("a".into()));
        serve(&s, "w1", "a");
        // a: 300 s for one holder; b: nobody.
        assert_eq!(s.plan("p", "w2", &[], 0), Plan::Load("b".into()));
        serve(&s, "w2", "b");
        // a: 300 s per holder vs b: 100 s.
        assert_eq!(s.plan("p", "w3", &[], 0), Plan::Load("a".into()));
    }

    #[test]
    fn an_idle_worker_waits_when_holders_finish_sooner_than_a_load() {
        let s = Scheduler::default();
        s.refresh(&counts("p", &[("a", 20)]), 0);
        costs(&s, 1_000, 30_000);
        serve(&s, "w1", "a");
        // 20 s of work for its holder: a load (30 s) would not help.
        assert_eq!(s.plan("p", "w2", &["b".into()], 0), Plan::Wait);
        s.refresh(&counts("p", &[("a", 100)]), 0);
        assert_eq!(s.plan("p", "w2", &["b".into()], 0), Plan::Load("a".into()));
    }

    #[test]
    fn holders_switch_only_when_their_model_can_spare_them() {
        let s = Scheduler::default();
        s.refresh(&counts("p", &[("a", 100), ("new", 50)]), 0);
        costs(&s, 1_000, 30_000);
        // Sole holder of a: stays, even though nobody holds "new".
        assert_eq!(s.plan("p", "w1", &["a".into()], 0), Plan::Held);
        serve(&s, "w1", "a");
        serve(&s, "w2", "a");
        // w3 holds a too; a has two other holders: "new" (nobody) is worse served.
        assert_eq!(
            s.plan("p", "w3", &["a".into()], 0),
            Plan::Load("new".into())
        );
        serve(&s, "w3", "new");
        // Now "new" has 50 s for its holder, a 50 s per remaining holder: stay.
        assert_eq!(s.plan("p", "w2", &["a".into()], 0), Plan::Held);
    }

    #[test]
    fn a_holder_silent_for_a_lease_no_longer_keeps_others_waiting() {
        let s = Scheduler::default();
        s.refresh(&counts("p", &[("a", 20)]), 0);
        costs(&s, 1_000, 30_000);
        serve(&s, "w1", "a");
        s.state
            .lock()
            .unwrap()
            .pools
            .get_mut("p")
            .unwrap()
            .holder_timeout_ms = 3_000;
        assert_eq!(s.plan("p", "w2", &[], 2_000), Plan::Wait);
        // A heartbeat keeps w1 holding a.
        s.touch("w1", 2_500);
        assert_eq!(s.plan("p", "w2", &[], 5_000), Plan::Wait);
        // Killed: no heartbeat for a whole lease, so a has no holder and w2 loads it.
        assert_eq!(s.plan("p", "w2", &[], 6_000), Plan::Load("a".into()));
    }

    #[test]
    fn a_waiting_worker_gives_up_once_the_holders_should_have_finished() {
        let s = Scheduler::default();
        s.refresh(&counts("p", &[("a", 20)]), 0);
        costs(&s, 1_000, 30_000);
        serve(&s, "w1", "a");
        // 20 s of work for w1: w2 waits, but not past those 20 s.
        assert_eq!(s.plan("p", "w2", &[], 0), Plan::Wait);
        assert!(!s.waited_out("p", "w2", 0));
        assert!(!s.waited_out("p", "w2", 19_000));
        assert!(s.waited_out("p", "w2", 20_000));
    }
}
