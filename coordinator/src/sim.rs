//! Scheduling simulation: virtual workers and virtual time driving the real coordinator.
//!
//! Jobs are submitted as sweep files through [`Coordinator::submit`], workers lease through
//! [`Coordinator::lease`] (the production lease path: checkpoint affinity, the scheduler's
//! choice of model, the store's claim) and report through [`Coordinator::complete`]; only
//! rendering is simulated. A worker holds up to `models_per_worker` checkpoints (least
//! recently used dropped first) and pays `load_ms` of virtual time whenever a leased task's
//! model is not among them. The coordinator's clock is the simulation's, so every `now` the
//! store sees is virtual; the run is sequential and therefore deterministic.
//!
//! The report compares model loads and makespan with bounds that no schedule can beat
//! (see [`Bounds`]), and lists any violation of the properties a schedule must keep.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sdfarm_proto::PROTOCOL_VERSION;

use crate::clock::Clock;
use crate::metrics::Completion;
use crate::service::{Coordinator, CoordinatorConfig};
use crate::store::{Millis, Store, TaskOutput, DEFAULT_POOL};

/// Virtual time: starts at a fixed epoch and moves only when the simulation moves it.
#[derive(Debug, Default)]
pub struct VirtualClock(AtomicI64);

impl VirtualClock {
    pub fn set(&self, now: Millis) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for VirtualClock {
    fn now_ms(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// Virtual time zero (2026-01-01T00:00:00Z), so stored times look like real ones.
const EPOCH: Millis = 1_767_225_600_000;

/// One job of the workload: `images` images of `model`, each taking `image_ms` to render,
/// submitted at `arrival_ms` after the start.
#[derive(Debug, Clone)]
pub struct SimJob {
    pub arrival_ms: Millis,
    pub model: String,
    pub images: u32,
    pub image_ms: Millis,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub workers: usize,
    /// Virtual time a model load takes.
    pub load_ms: Millis,
    /// Checkpoints one worker keeps in memory.
    pub models_per_worker: usize,
    /// How often an idle worker's long-poll re-checks the store (the coordinator's own
    /// re-check interval; submits wake idle workers at once, as they do for real).
    pub poll_ms: Millis,
    pub jobs: Vec<SimJob>,
}

impl SimConfig {
    /// The benchmark's mixed workload: 64 workers, 8 checkpoints, loads 30 s against
    /// images of 1–2 s, twelve jobs of 300–4,000 images, five at the start and the rest
    /// arriving over the first 150 s, some for checkpoints already being rendered.
    pub fn mixed() -> SimConfig {
        let job = |arrival_s: i64, model: u32, images: u32, image_ms: i64| SimJob {
            arrival_ms: arrival_s * 1000,
            model: format!("ckpt-{model}"),
            images,
            image_ms,
        };
        SimConfig {
            workers: 64,
            load_ms: 30_000,
            models_per_worker: 1,
            poll_ms: 500,
            jobs: vec![
                job(0, 1, 4000, 1000),
                job(0, 2, 2500, 1000),
                job(0, 3, 1500, 1500),
                job(0, 4, 1200, 1000),
                job(20, 1, 800, 1000),
                job(30, 5, 1000, 2000),
                job(45, 6, 600, 1000),
                job(60, 2, 900, 1500),
                job(60, 7, 1500, 1000),
                job(90, 8, 400, 1000),
                job(120, 3, 300, 1000),
                job(150, 6, 700, 1000),
            ],
        }
    }
}

impl SimConfig {
    /// The same jobs, all submitted at the start: nothing arrives later, so a scheduler
    /// can plan the whole run from the first lease (the offline case).
    pub fn mixed_at_once() -> SimConfig {
        let mut config = SimConfig::mixed();
        for job in &mut config.jobs {
            job.arrival_ms = 0;
        }
        config
    }

    /// All jobs at the start and every image taking 1 s: what the scheduler learns of the
    /// image cost from the first completions then holds for every waiting task, so the run
    /// measures its decisions alone, apart from how well it predicts costs.
    pub fn mixed_uniform() -> SimConfig {
        let mut config = SimConfig::mixed_at_once();
        for job in &mut config.jobs {
            job.image_ms = 1000;
        }
        config
    }
}

/// What no schedule of the workload can beat.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Distinct checkpoints with work: each must be loaded at least once.
    pub checkpoints: u64,
    /// The ideal makespan, the largest of: every worker pays one load and then the work is
    /// shared perfectly (`load + total work / workers`); for each arrival time `a`,
    /// `a + work arriving at or after a / workers`; for each job, its arrival plus one image
    /// (plus a load when its checkpoint had no earlier work).
    pub ideal_makespan_ms: Millis,
}

impl Bounds {
    pub fn of(config: &SimConfig) -> Bounds {
        let w = config.workers.max(1) as f64;
        let work = |from: Millis| -> f64 {
            config
                .jobs
                .iter()
                .filter(|j| j.arrival_ms >= from)
                .map(|j| j.images as f64 * j.image_ms as f64)
                .sum()
        };
        let mut ideal = config.load_ms as f64 + work(0) / w;
        for j in &config.jobs {
            ideal = ideal.max(j.arrival_ms as f64 + work(j.arrival_ms) / w);
            let new_model = !config
                .jobs
                .iter()
                .any(|o| o.model == j.model && o.arrival_ms < j.arrival_ms);
            let load = if new_model { config.load_ms } else { 0 };
            ideal = ideal.max((j.arrival_ms + load + j.image_ms) as f64);
        }
        let models: HashSet<&str> = config.jobs.iter().map(|j| j.model.as_str()).collect();
        Bounds {
            checkpoints: models.len() as u64,
            ideal_makespan_ms: ideal.ceil() as Millis,
        }
    }

    /// The fewest loads any schedule finishing within `makespan_ms` needs: a load of
    /// checkpoint `m` made after `m`'s first work arrives (at `a`) leaves at most
    /// `makespan - a - load` to render `m`, so `m` needs at least
    /// `ceil(work of m / (makespan - a - load))` loads. Never below one per checkpoint.
    pub fn loads_within(config: &SimConfig, makespan_ms: Millis) -> u64 {
        let mut per_model: BTreeMap<&str, (Millis, f64)> = BTreeMap::new();
        for j in &config.jobs {
            let e = per_model
                .entry(j.model.as_str())
                .or_insert((j.arrival_ms, 0.0));
            e.0 = e.0.min(j.arrival_ms);
            e.1 += j.images as f64 * j.image_ms as f64;
        }
        per_model
            .values()
            .map(|&(first, work)| {
                let span = (makespan_ms - first - config.load_ms) as f64;
                if span <= 0.0 {
                    u64::MAX / 1024
                } else {
                    ((work / span).ceil() as u64).max(1)
                }
            })
            .sum()
    }
}

#[derive(Debug, Clone)]
pub struct SimReport {
    pub tasks: u64,
    pub completed: u64,
    pub loads: u64,
    /// Loads per checkpoint.
    pub loads_by_model: BTreeMap<String, u64>,
    /// First arrival to last completion.
    pub makespan_ms: Millis,
    pub bounds: Bounds,
    /// `Bounds::loads_within` at this run's makespan: the fewest loads any schedule at
    /// least as fast as this one needs.
    pub loads_bound_at_makespan: u64,
    /// `Bounds::loads_within` at the ideal makespan.
    pub loads_bound_at_ideal: u64,
    /// Summed worker time spent loading, rendering, and neither, over the makespan.
    pub load_ms: Millis,
    pub render_ms: Millis,
    pub idle_ms: Millis,
    pub lease_calls: u64,
    /// Broken scheduling properties, each described; empty for a sound run.
    pub violations: Vec<String>,
}

impl std::fmt::Display for SimReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |ms: Millis| ms as f64 / 1000.0;
        writeln!(
            f,
            "  tasks              : {} completed of {}",
            self.completed, self.tasks
        )?;
        writeln!(
            f,
            "  model loads        : {} (lower bound for a schedule as fast as this one: {}; at the ideal makespan: {}; checkpoints: {})",
            self.loads, self.loads_bound_at_makespan, self.loads_bound_at_ideal, self.bounds.checkpoints
        )?;
        writeln!(
            f,
            "  makespan           : {:.1} s = {:.3} x ideal ({:.1} s)",
            s(self.makespan_ms),
            self.makespan_ms as f64 / self.bounds.ideal_makespan_ms as f64,
            s(self.bounds.ideal_makespan_ms)
        )?;
        let total = (self.load_ms + self.render_ms + self.idle_ms).max(1) as f64;
        writeln!(
            f,
            "  worker time        : rendering {:.1} %, loading {:.1} %, idle {:.1} %",
            100.0 * self.render_ms as f64 / total,
            100.0 * self.load_ms as f64 / total,
            100.0 * self.idle_ms as f64 / total
        )?;
        let per_model: Vec<String> = self
            .loads_by_model
            .iter()
            .map(|(m, n)| format!("{m} {n}"))
            .collect();
        writeln!(f, "  loads per model    : {}", per_model.join(", "))?;
        write!(
            f,
            "  lease calls {}, violations {}",
            self.lease_calls,
            self.violations.len()
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// Job `i` is submitted.
    Arrive(usize),
    /// Worker `w` finished its task (if any) and asks for the next; stale unless `gen`
    /// matches the worker's.
    Ready { worker: usize, gen: u64 },
}

struct Running {
    task_id: i64,
    model: String,
    loaded: bool,
    image_ms: Millis,
}

struct SimWorker {
    id: String,
    /// Most recently used last.
    models: Vec<String>,
    running: Option<Running>,
    /// Waiting for work (between a failed lease and the next wake-up).
    idle: bool,
    gen: u64,
}

fn sweep(name: &str, job: &SimJob) -> String {
    format!(
        "name = \"{name}\"\nmodel = \"{}\"\nprompt = \"a simulated image\"\nseed = 1\nsteps = 20\n\
         [xyz]\nx = {{ type = \"Seed\", values = \"1-{}\" }}\n",
        job.model, job.images
    )
}

/// How the simulated workers get their tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Through `Coordinator::lease`: what production does.
    Coordinator,
    /// The baseline: the store's claim for the held models, else its plain claim (highest
    /// priority, oldest task first), with no choice of which model to load.
    AffinityThenOldest,
}

/// Lease length in the simulation: virtual renders never heartbeat, so no lease may run out.
const LEASE_MS: Millis = 24 * 3600 * 1000;

/// Runs `config`'s workload on `store` (a fresh database: the simulation submits its own
/// jobs and expects no others).
pub async fn run(
    store: Arc<dyn Store>,
    config: &SimConfig,
    policy: Policy,
) -> anyhow::Result<SimReport> {
    let clock = Arc::new(VirtualClock::default());
    clock.set(EPOCH);
    let coordinator = Coordinator::new(
        store.clone(),
        CoordinatorConfig {
            store_url: "file:///nonexistent/sdfarm-sim".into(),
            lease: Duration::from_millis(LEASE_MS as u64),
            max_cells: u64::MAX,
            max_images: u64::MAX,
            ..CoordinatorConfig::default()
        },
        clock.clone(),
    );
    let mut workers: Vec<SimWorker> = Vec::with_capacity(config.workers);
    for i in 0..config.workers {
        let id =
            coordinator.register(PROTOCOL_VERSION, &format!("sim{i:03}"), "", BTreeMap::new())?;
        workers.push(SimWorker {
            id,
            models: Vec::new(),
            running: None,
            idle: false,
            gen: 0,
        });
    }

    let mut events: BinaryHeap<Reverse<(Millis, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<_>, at: Millis, e: Event| {
        seq += 1;
        events.push(Reverse((at, seq, e)));
    };
    for (i, job) in config.jobs.iter().enumerate() {
        push(&mut events, job.arrival_ms, Event::Arrive(i));
    }
    for w in 0..workers.len() {
        push(&mut events, 0, Event::Ready { worker: w, gen: 0 });
    }

    let mut job_cost: HashMap<String, Millis> = HashMap::new();
    let mut job_ids: Vec<String> = Vec::new();
    // Tasks submitted and not yet leased, per model (the simulation's own count, to check
    // the scheduler's decisions against).
    let mut unleased: HashMap<String, u64> = HashMap::new();
    let mut leased: HashSet<i64> = HashSet::new();
    let mut report = SimReport {
        tasks: config.jobs.iter().map(|j| u64::from(j.images)).sum(),
        completed: 0,
        loads: 0,
        loads_by_model: BTreeMap::new(),
        makespan_ms: 0,
        bounds: Bounds::of(config),
        loads_bound_at_makespan: 0,
        loads_bound_at_ideal: 0,
        load_ms: 0,
        render_ms: 0,
        idle_ms: 0,
        lease_calls: 0,
        violations: Vec::new(),
    };
    let mut arrived = 0usize;
    let mut last_done: Millis = 0;

    let trace = std::env::var_os("SDFARM_SIM_TRACE").is_some();
    let mut next_trace: Millis = 0;
    while let Some(Reverse((t, _, event))) = events.pop() {
        clock.set(EPOCH + t);
        if trace && t >= next_trace {
            next_trace = t + 10_000;
            let mut serving: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
            for w in &workers {
                match (&w.running, w.models.first()) {
                    (Some(r), _) => serving.entry(&r.model).or_default().0 += 1,
                    (None, Some(m)) => serving.entry(m).or_default().1 += 1,
                    (None, None) => serving.entry("-").or_default().1 += 1,
                }
            }
            let mut line = format!("{:8.1} s", t as f64 / 1000.0);
            for (m, (busy, idle)) in serving {
                let waits = unleased.get(m).copied().unwrap_or(0);
                line += &format!("  {m}: {busy}+{idle}i/{waits}");
            }
            eprintln!("{line}");
        }
        let worker = match event {
            Event::Arrive(i) => {
                let job = &config.jobs[i];
                let name = format!("sim-job-{i}");
                let record = coordinator
                    .submit(&sweep(&name, job), "toml", &name)
                    .await?;
                job_cost.insert(record.id.clone(), job.image_ms);
                job_ids.push(record.id);
                *unleased.entry(job.model.clone()).or_insert(0) += u64::from(job.images);
                arrived += 1;
                // A submit wakes every long-polling worker.
                for (w, sw) in workers.iter_mut().enumerate() {
                    if sw.idle {
                        sw.gen += 1;
                        push(
                            &mut events,
                            t,
                            Event::Ready {
                                worker: w,
                                gen: sw.gen,
                            },
                        );
                    }
                }
                continue;
            }
            Event::Ready { worker, gen } => {
                if workers[worker].gen != gen {
                    continue;
                }
                worker
            }
        };

        if let Some(done) = workers[worker].running.take() {
            coordinator
                .complete(
                    &workers[worker].id,
                    done.task_id,
                    TaskOutput {
                        sha256: format!("{:064x}", done.task_id),
                        infotext: format!("simulated, Model: {}", done.model),
                        render_ms: (done.image_ms + if done.loaded { config.load_ms } else { 0 })
                            as u64,
                    },
                    Completion {
                        steps: 20,
                        render_ms: (done.image_ms + if done.loaded { config.load_ms } else { 0 })
                            as u64,
                        model: done.model.clone(),
                        model_load_ms: done.loaded.then_some(config.load_ms as u64),
                    },
                )
                .await?;
            report.completed += 1;
            last_done = last_done.max(t);
        }

        report.lease_calls += 1;
        let tasks = match policy {
            Policy::Coordinator => {
                coordinator
                    .lease(
                        PROTOCOL_VERSION,
                        &workers[worker].id,
                        "",
                        &workers[worker].models,
                        1,
                        Duration::ZERO,
                    )
                    .await?
            }
            Policy::AffinityThenOldest => {
                let (id, models) = (&workers[worker].id, &workers[worker].models);
                let now = clock.now_ms();
                let mut tasks = store
                    .claim_for_models(id, DEFAULT_POOL, models, 1, LEASE_MS, now)
                    .await?;
                if tasks.is_empty() {
                    tasks = store.claim(id, DEFAULT_POOL, 1, LEASE_MS, now).await?;
                }
                tasks
            }
        };
        let Some(task) = tasks.into_iter().next() else {
            workers[worker].idle = true;
            let more_to_come = arrived < config.jobs.len();
            let waiting = unleased.values().any(|&n| n > 0);
            if waiting {
                workers[worker].gen += 1;
                let gen = workers[worker].gen;
                push(
                    &mut events,
                    t + config.poll_ms,
                    Event::Ready { worker, gen },
                );
            } else if !more_to_come && report.completed == report.tasks {
                break;
            }
            continue;
        };
        workers[worker].idle = false;
        if !leased.insert(task.id) {
            report
                .violations
                .push(format!("task {} leased twice", task.id));
        }
        let model = task.params.model.clone();
        if let Some(n) = unleased.get_mut(&model) {
            *n = n.saturating_sub(1);
        }
        let loaded = !workers[worker].models.contains(&model);
        if loaded {
            // A worker leaves a model only when someone else holds it or its work is done.
            for held in &workers[worker].models {
                let waits = unleased.get(held).copied().unwrap_or(0) > 0;
                let others = workers
                    .iter()
                    .enumerate()
                    .any(|(o, ow)| o != worker && ow.models.contains(held));
                if waits && !others {
                    report.violations.push(format!(
                        "at {:.1} s worker {} loaded {model} while {held}, which only it holds, had {} tasks waiting",
                        t as f64 / 1000.0,
                        workers[worker].id,
                        unleased[held]
                    ));
                }
            }
            if std::env::var_os("SDFARM_SIM_TRACE").is_some() {
                eprintln!(
                    "{:8.1} s  {} loads {model} (held {:?}; unleased {:?})",
                    t as f64 / 1000.0,
                    workers[worker].id,
                    workers[worker].models,
                    unleased
                );
            }
            report.loads += 1;
            *report.loads_by_model.entry(model.clone()).or_insert(0) += 1;
            report.load_ms += config.load_ms;
        }
        let sw = &mut workers[worker];
        sw.models.retain(|m| m != &model);
        sw.models.push(model.clone());
        if sw.models.len() > config.models_per_worker.max(1) {
            sw.models.remove(0);
        }
        let image_ms = job_cost.get(&task.job_id).copied().ok_or_else(|| {
            anyhow::anyhow!(
                "leased task {} of a job the simulation did not submit",
                task.id
            )
        })?;
        report.render_ms += image_ms;
        let took = image_ms + if loaded { config.load_ms } else { 0 };
        sw.running = Some(Running {
            task_id: task.id,
            model,
            loaded,
            image_ms,
        });
        sw.gen += 1;
        let gen = sw.gen;
        push(&mut events, t + took, Event::Ready { worker, gen });
    }

    for id in &job_ids {
        let job = store.get_job(id).await?;
        if job.counts.completed != job.counts.total {
            report.violations.push(format!(
                "job {id}: {} of {} tasks completed",
                job.counts.completed, job.counts.total
            ));
        }
    }
    if report.completed != report.tasks {
        report.violations.push(format!(
            "{} of {} tasks completed",
            report.completed, report.tasks
        ));
    }
    report.makespan_ms = last_done;
    report.idle_ms =
        (last_done * config.workers as Millis - report.load_ms - report.render_ms).max(0);
    report.loads_bound_at_makespan = Bounds::loads_within(config, last_done);
    report.loads_bound_at_ideal = Bounds::loads_within(config, report.bounds.ideal_makespan_ms);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn small() -> SimConfig {
        let job = |arrival_s: i64, model: &str, images: u32, image_ms: i64| SimJob {
            arrival_ms: arrival_s * 1000,
            model: model.into(),
            images,
            image_ms,
        };
        SimConfig {
            workers: 6,
            load_ms: 30_000,
            models_per_worker: 1,
            poll_ms: 500,
            jobs: vec![
                job(0, "a", 120, 1000),
                job(0, "b", 60, 2000),
                job(10, "c", 40, 1000),
                job(25, "a", 30, 1000),
                job(40, "d", 10, 1000),
            ],
        }
    }

    #[tokio::test]
    async fn a_small_mixed_workload_keeps_the_scheduling_properties() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("sim.db").display());
        let store: Arc<dyn Store> = Arc::new(SqliteStore::connect(&url).await.unwrap());
        let config = small();
        let report = run(store, &config, Policy::Coordinator).await.unwrap();
        // Every task leased once and completed, no model left behind by its only holder.
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
        assert_eq!(report.completed, 260);
        // Each checkpoint was loaded, and no schedule as fast could have loaded less.
        assert_eq!(report.loads_by_model.len(), 4);
        assert!(report.loads >= report.loads_bound_at_makespan);
        assert!(report.makespan_ms >= report.bounds.ideal_makespan_ms);
    }

    #[test]
    fn bounds_follow_their_definitions() {
        let config = small();
        let b = Bounds::of(&config);
        // load + total work / workers = 30 + (120 + 120 + 40 + 30 + 10) / 6.
        let total = 120_000 + 120_000 + 40_000 + 30_000 + 10_000;
        assert_eq!(b.ideal_makespan_ms, 30_000 + total / 6 + 1);
        assert_eq!(b.checkpoints, 4);
        // A very long makespan needs one load per checkpoint.
        assert_eq!(Bounds::loads_within(&config, 10_000_000), 4);
    }
}
