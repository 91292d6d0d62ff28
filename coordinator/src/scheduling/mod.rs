//! Which checkpoint a worker renders next. A model load costs more than dozens of images,
//! so the lease path keeps a worker on the models it holds while their work waits, and moves
//! workers between models only as far as finishing the farm's waiting work soonest needs:
//!
//! * The scheduler computes a *target*: the shortest time in which all waiting work can
//!   finish if free workers (idle, or holding models with nothing left) and the holders a
//!   model can spare move to the models short of workers, each mover paying a load. At the
//!   target, each model *misses* or *spares* some fraction of a worker: its waiting work
//!   (waiting tasks × its image cost) against what its holders render by then (a holder
//!   still loading renders less; a newcomer pays a whole load).
//! * A free worker loads the model missing the most, when it misses at least half a worker
//!   and its holders would not finish sooner than a load takes; otherwise it waits (and is
//!   the first to take the next job). It stops waiting after twice the longest backlog it
//!   was waiting for, should the holders stop asking for work.
//! * A holder whose model still has work moves only when its model spares, and another
//!   misses, at least three quarters of a worker and the free workers cannot cover what is
//!   missing: the margins keep one move from being undone by the next, and a sole holder
//!   never leaves its model's waiting work.
//!
//! Waiting counts come from the store (`queue_counts`, re-read every [`REFRESH_MS`] and after
//! each submit) and are lowered here as tasks are claimed; holders are the workers whose last
//! lease on this replica was for the model. Image costs are learnt per model (and per pool
//! as the default) and load costs per pool, from the workers' completion reports. Every
//! decision only narrows which tasks a claim asks for: the claim itself stays the store's,
//! fenced and priority-ordered, and when the chosen model has nothing claimable at the top
//! priority the plain claim runs.

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
/// A holder moves only when its model spares, and another misses, this much of a worker
/// at the farm's target finish: a move shifts one worker, so a margin above one half
/// keeps the next decision from undoing it.
const SWITCH_MARGIN: f64 = 0.75;
/// A free worker joins a model that misses at least this much of a worker.
const JOIN_MARGIN: f64 = 0.5;
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
    /// When its load of `model` is done (the lease that switched it, plus a load).
    ready_at: Millis,
}

struct PoolState {
    /// Claimable tasks per model.
    waiting: HashMap<String, u64>,
    /// Worker id → the model its last lease was for.
    holders: HashMap<String, Holder>,
    image_ms: Option<f64>,
    /// Image cost per model, where its workers have reported one.
    model_image_ms: HashMap<String, f64>,
    load_ms: Option<f64>,
    /// How long a holder counts without a lease or heartbeat (the lease length once known).
    holder_timeout_ms: Millis,
    /// Workers whose last lease found nothing for them → when.
    idle: HashMap<String, Millis>,
    /// Worker id → when its current run of `Plan::Wait` answers should end: twice the
    /// longest backlog when it began.
    waiting_since: HashMap<String, Millis>,
}

impl PoolState {
    fn new() -> Self {
        PoolState {
            waiting: HashMap::new(),
            holders: HashMap::new(),
            image_ms: None,
            model_image_ms: HashMap::new(),
            load_ms: None,
            holder_timeout_ms: HOLDER_TIMEOUT_MS,
            idle: HashMap::new(),
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

    /// How long one image of `model` takes (learnt per model, else the pool's figure).
    fn image_ms(&self, model: &str, costs: Costs) -> f64 {
        self.model_image_ms
            .get(model)
            .copied()
            .unwrap_or(costs.image_ms)
    }

    /// Rendering time of `model`'s waiting tasks.
    fn work(&self, model: &str, costs: Costs) -> f64 {
        self.waiting.get(model).copied().unwrap_or(0) as f64 * self.image_ms(model, costs)
    }

    /// How long `model`'s holders other than `me`, plus `extra` workers, need for its
    /// waiting work (unbounded when nobody would hold it).
    fn finish(&self, model: &str, me: &str, now: Millis, costs: Costs, extra: f64) -> f64 {
        drain(
            self.work(model, costs),
            self.holders_of(model, me, now) as f64 + extra,
        )
    }

    fn backlog(&self, model: &str, me: &str, now: Millis, costs: Costs) -> f64 {
        self.finish(model, me, now, costs, 0.0)
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

    fn plan(&self, worker: &str, held: &[String], cached: &[String], now: Millis) -> Plan {
        let costs = self.costs();
        // The held model with the most waiting work, if any has some.
        let own = held
            .iter()
            .filter_map(|m| Some((self.waiting.get(m).copied().filter(|&w| w > 0)?, m)))
            .max()
            .map(|(_, m)| m.as_str());
        if self.waiting.values().all(|&w| w == 0) {
            return Plan::Any;
        }
        let Some(t) = self.target(worker, own, now, costs) else {
            // More models wait than workers can serve: holders stay, others take the
            // neediest model.
            return match (own, self.neediest(held, worker, now, costs)) {
                (Some(_), _) => Plan::Held,
                (None, Some((_, model))) => Plan::Load(model.to_string()),
                (None, None) => Plan::Any,
            };
        };
        let mut needs = self.balance(t, worker, own, now, costs);
        // A model whose holders finish before a load would is never worth loading.
        needs.retain(|(m, need)| {
            *need <= 0.0
                || self.backlog(m, worker, now, costs) > costs.load_ms + self.image_ms(m, costs)
        });
        match own {
            Some(own) => {
                // Move only when the worker's model can well spare it, another model
                // well misses a worker, and the free workers cannot cover what is missing.
                // The margins keep a move from being undone by the next one. Near the end
                // (less than two loads to go) a mover would load longer than it renders.
                if t < 2.0 * costs.load_ms {
                    return Plan::Held;
                }
                let spare = needs
                    .iter()
                    .any(|(m, need)| *m == own && *need <= -SWITCH_MARGIN);
                let missing_total: f64 = needs.iter().map(|(_, n)| n.max(0.0)).sum();
                match Self::most_missing(&needs, &self.waiting, SWITCH_MARGIN, cached) {
                    Some(model) if spare && missing_total > self.free_workers(worker, now) => {
                        Plan::Load(model)
                    }
                    _ => Plan::Held,
                }
            }
            None => match Self::most_missing(&needs, &self.waiting, JOIN_MARGIN, cached) {
                Some(model) => Plan::Load(model),
                // Waiting bets on holders; work that no worker holds is never rendered by
                // waiting (a sweep of many checkpoints with an image or two each).
                None => match self.neediest(held, worker, now, costs) {
                    Some((backlog, model)) if backlog.is_infinite() => {
                        Plan::Load(model.to_string())
                    }
                    _ => Plan::Wait,
                },
            },
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
        self.plan_with_cache(pool, worker, held, &[], now)
    }

    /// `plan` for a worker that also has `cached` models on its disk: when it must load,
    /// a model from its cache is preferred among those short of workers.
    pub fn plan_with_cache(
        &self,
        pool: &str,
        worker: &str,
        held: &[String],
        cached: &[String],
        now: Millis,
    ) -> Plan {
        let state = self.state.lock().unwrap();
        match state.pools.get(pool) {
            Some(p) => p.plan(worker, held, cached, now),
            None => Plan::Any,
        }
    }

    /// Notes a lease: the worker now serves its tasks' model (loading it first unless it is
    /// among `held`), which waits less.
    pub fn claimed(
        &self,
        pool: &str,
        worker: &str,
        held: &[String],
        tasks: &[TaskRecord],
        now: Millis,
    ) {
        let Some(first) = tasks.first() else { return };
        let mut state = self.state.lock().unwrap();
        let p = state
            .pools
            .entry(pool.to_string())
            .or_insert_with(PoolState::new);
        let model = &first.params.model;
        let ready_at = if held.contains(model) {
            p.holders
                .get(worker)
                .filter(|h| &h.model == model)
                .map_or(now, |h| h.ready_at)
        } else {
            now + p.costs().load_ms as Millis
        };
        for t in tasks {
            if let Some(w) = p.waiting.get_mut(&t.params.model) {
                *w = w.saturating_sub(1);
            }
        }
        p.idle.remove(worker);
        p.holders.insert(
            worker.to_string(),
            Holder {
                model: model.clone(),
                seen: now,
                ready_at,
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
    pub fn idle(&self, pool: &str, worker: &str, now: Millis) {
        let mut state = self.state.lock().unwrap();
        let p = state
            .pools
            .entry(pool.to_string())
            .or_insert_with(PoolState::new);
        p.holders.remove(worker);
        p.idle.insert(worker.to_string(), now);
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
        let per_model = p
            .model_image_ms
            .entry(report.model.clone())
            .or_insert(image);
        *per_model += EWMA * (image - *per_model);
        if let Some(load) = report.model_load_ms {
            let load = load as f64;
            p.load_ms = Some(p.load_ms.map_or(load, |m| m + EWMA * (load - m)));
        }
    }

    /// Claims up to `max` tasks for `worker`, which holds `held` in memory and `cached` on
    /// disk, following the plan (see the module docs).
    #[allow(clippy::too_many_arguments)]
    pub async fn claim(
        &self,
        store: &dyn Store,
        worker: &str,
        pool: &str,
        held: &[String],
        cached: &[String],
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
        let plan = self.plan_with_cache(pool, worker, held, cached, now);
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
            match self.plan_with_cache(pool, worker, &[], cached, now) {
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
            self.idle(pool, worker, now);
        } else {
            self.claimed(pool, worker, held, &tasks, now);
            if let Some(p) = self.state.lock().unwrap().pools.get_mut(pool) {
                p.waiting_since.remove(worker);
            }
        }
        Ok(tasks)
    }

    /// Waiting is a bet that the holders render the waiting work sooner than a load would:
    /// it is given up once the worker has waited twice as long as the holders should have
    /// needed when it began (a holder that stopped asking for work, or is much slower than
    /// its costs say, must not leave the work waiting while this worker idles; a holder
    /// merely finishing its last images must not make it load a model for nothing).
    fn waited_out(&self, pool: &str, worker: &str, now: Millis) -> bool {
        let mut state = self.state.lock().unwrap();
        let Some(p) = state.pools.get_mut(pool) else {
            return true;
        };
        let costs = p.costs();
        let backlog = p
            .neediest(&[], worker, now, costs)
            .map_or(0.0, |(backlog, _)| backlog);
        let until = *p
            .waiting_since
            .entry(worker.to_string())
            .or_insert(now + (2.0 * backlog).min(1e12) as Millis);
        now >= until
    }
}

mod target;
#[cfg(test)]
mod tests;
