//! The balanced target: how soon all waiting work can finish if free workers and the
//! holders a model can spare move to the models short of workers, and what each model
//! misses or spares at that target (see the parent module's docs).

use std::collections::HashMap;

use super::{Costs, PoolState};
use crate::store::Millis;

impl PoolState {
    /// Live holders of `model` other than `me`, as their times until ready.
    fn holder_delays<'a>(
        &'a self,
        model: &'a str,
        me: &'a str,
        now: Millis,
    ) -> impl Iterator<Item = f64> + 'a {
        self.holders
            .iter()
            .filter(move |(w, h)| {
                w.as_str() != me && h.model == model && now - h.seen <= self.holder_timeout_ms
            })
            .map(move |(_, h)| (h.ready_at - now).max(0) as f64)
    }

    /// Workers free to take new work: live holders of models with nothing waiting, and
    /// `me` when it asks without work for its own models.
    pub(super) fn free_workers(&self, me: &str, now: Millis) -> f64 {
        let done = self
            .holders
            .iter()
            .filter(|(w, h)| {
                w.as_str() != me
                    && now - h.seen <= self.holder_timeout_ms
                    && self.waiting.get(&h.model).copied().unwrap_or(0) == 0
            })
            .count();
        let idle = self
            .idle
            .iter()
            .filter(|(w, &seen)| w.as_str() != me && now - seen <= self.holder_timeout_ms)
            .count();
        (done + idle) as f64
    }

    /// For a target of finishing all waiting work within `t` ms, each waiting model's
    /// workers missing (positive) or to spare (negative), as fractions of a worker, with
    /// `me` counted as holding `mine` (if any) or free. A holder's load still under way
    /// shortens what it can render in `t`; a worker joining pays a whole load.
    pub(super) fn balance(
        &self,
        t: f64,
        me: &str,
        mine: Option<&str>,
        now: Millis,
        costs: Costs,
    ) -> Vec<(&str, f64)> {
        let mut out = Vec::new();
        for (model, &waiting) in &self.waiting {
            if waiting == 0 {
                continue;
            }
            let work = waiting as f64 * self.image_ms(model, costs);
            let mut capacity = 0.0;
            let mut holders = 0.0;
            for delay in self.holder_delays(model, me, now) {
                capacity += (t - delay).max(0.0);
                holders += 1.0;
            }
            if mine == Some(model.as_str()) {
                capacity += t;
                holders += 1.0;
            }
            let need = if capacity >= work {
                // Holders beyond what the work needs in `t` (never the last one).
                -(capacity - work).min((holders - 1.0) * t).max(0.0) / t
            } else if t <= costs.load_ms {
                f64::INFINITY
            } else {
                (work - capacity) / (t - costs.load_ms)
            };
            out.push((model.as_str(), need));
        }
        out
    }

    /// The shortest time in which the waiting work can finish if the free workers and the
    /// holders to spare move to the models short of workers (each mover paying a load).
    pub(super) fn target(
        &self,
        me: &str,
        mine: Option<&str>,
        now: Millis,
        costs: Costs,
    ) -> Option<f64> {
        let free = self.free_workers(me, now) + if mine.is_none() { 1.0 } else { 0.0 };
        let feasible = |t: f64| {
            let (mut missing, mut spare) = (0.0, 0.0);
            for (_, need) in self.balance(t, me, mine, now, costs) {
                if need > 0.0 {
                    missing += need;
                } else {
                    spare -= need;
                }
            }
            missing <= free + spare
        };
        let total: f64 = self
            .waiting
            .iter()
            .map(|(m, &w)| w as f64 * self.image_ms(m, costs))
            .sum();
        let mut hi = costs.load_ms + total + 1.0;
        if !feasible(hi) {
            return None;
        }
        let mut lo = 0.0;
        while hi - lo > 100.0 {
            let mid = (lo + hi) / 2.0;
            if feasible(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi)
    }

    /// The model most short of workers at the target, if it misses at least `min` of a
    /// worker (ties: most waiting, then name).
    /// Models in `cached` (on the worker's disk, so cheaper to load) come first.
    pub(super) fn most_missing(
        needs: &[(&str, f64)],
        waiting: &HashMap<String, u64>,
        min: f64,
        cached: &[String],
    ) -> Option<String> {
        let in_cache = |m: &str| cached.iter().any(|c| c == m);
        needs
            .iter()
            .filter(|(_, need)| *need >= min)
            .filter(|(m, _)| in_cache(m) || !needs.iter().any(|(c, n)| *n >= min && in_cache(c)))
            .max_by(|a, b| {
                a.1.total_cmp(&b.1)
                    .then(waiting[a.0].cmp(&waiting[b.0]))
                    .then(b.0.cmp(a.0))
            })
            .map(|(m, _)| m.to_string())
    }
}
