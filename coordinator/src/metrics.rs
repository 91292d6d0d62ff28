//! Prometheus metrics (`sdfarm_*`), served as OpenMetrics text on `/metrics`.
//!
//! Two kinds: counters and histograms this replica updates as things happen (submissions,
//! leases, completions, failures by `reason`, model loads), and gauges read from the store at
//! scrape time (tasks by state and pool, queue depth by pool and model, desired workers), so
//! every replica reports the same queue. Worker gauges describe the workers talking to this
//! replica; sum them across replicas.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::scaling::PoolSignal;
use crate::store::{QueueCount, TaskState};
use crate::workers::WorkerState;

/// The content type `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Window over which images/s and steps/s are averaged.
const RATE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Pool {
    pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolState {
    pool: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolModel {
    pool: String,
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Seconds, 10 ms to ~80 min: a lease wait or a render on a slow GPU.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.5, 15))
}

/// What a worker reports with a finished image, for the throughput metrics.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    pub steps: u32,
    pub render_ms: u64,
    pub model: String,
    /// Set when the render had to load its model first.
    pub model_load_ms: Option<u64>,
}

pub struct Metrics {
    registry: Registry,
    tasks: Family<PoolState, Gauge>,
    queue_depth: Family<PoolModel, Gauge>,
    desired_workers: Family<Pool, Gauge>,
    workers: Family<PoolState, Gauge>,
    images_per_second: Family<Pool, Gauge<f64, AtomicU64>>,
    steps_per_second: Family<Pool, Gauge<f64, AtomicU64>>,
    jobs_submitted: Counter,
    tasks_submitted: Family<Pool, Counter>,
    tasks_leased: Family<Pool, Counter>,
    images_completed: Family<Pool, Counter>,
    steps: Family<Pool, Counter>,
    retries: Family<Reason, Counter>,
    discards: Family<Reason, Counter>,
    leases_expired: Counter,
    model_loads: Family<PoolModel, Counter>,
    model_load_seconds: Histograms<PoolModel>,
    render_seconds: Histograms<Pool>,
    lease_latency: Histograms<Pool>,
    /// Recent completions `(when, pool, steps)` for the rate gauges.
    recent: Mutex<VecDeque<(Instant, String, u32)>>,
    started: Instant,
    /// Serialises scrapes: each clears and refills the store gauges before encoding.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("sdfarm");
        let m = Metrics {
            tasks: Family::default(),
            queue_depth: Family::default(),
            desired_workers: Family::default(),
            workers: Family::default(),
            images_per_second: Family::default(),
            steps_per_second: Family::default(),
            jobs_submitted: Counter::default(),
            tasks_submitted: Family::default(),
            tasks_leased: Family::default(),
            images_completed: Family::default(),
            steps: Family::default(),
            retries: Family::default(),
            discards: Family::default(),
            leases_expired: Counter::default(),
            model_loads: Family::default(),
            model_load_seconds: Family::new_with_constructor(seconds_histogram),
            render_seconds: Family::new_with_constructor(seconds_histogram),
            lease_latency: Family::new_with_constructor(seconds_histogram),
            recent: Mutex::new(VecDeque::new()),
            started: Instant::now(),
            scrape: Mutex::new(()),
            registry: Registry::default(),
        };
        r.register(
            "tasks",
            "Unfinished tasks by pool and state (available, running, retryable), from the store",
            m.tasks.clone(),
        );
        r.register(
            "queue_depth",
            "Tasks waiting for a worker (available or retryable) by pool and model, from the store",
            m.queue_depth.clone(),
        );
        r.register(
            "pool_desired_workers",
            "Workers each pool wants: ceil((queued + running) / target per worker)",
            m.desired_workers.clone(),
        );
        r.register(
            "workers",
            "Workers known to this replica by pool and state (busy, idle, lost)",
            m.workers.clone(),
        );
        r.register(
            "images_per_second",
            "Images completed per second over the last minute, by pool",
            m.images_per_second.clone(),
        );
        r.register(
            "steps_per_second",
            "Sampler steps completed per second over the last minute, by pool",
            m.steps_per_second.clone(),
        );
        r.register("jobs_submitted", "Jobs submitted", m.jobs_submitted.clone());
        r.register(
            "tasks_submitted",
            "Tasks (images) submitted, by pool",
            m.tasks_submitted.clone(),
        );
        r.register(
            "tasks_leased",
            "Task leases handed to workers, by pool",
            m.tasks_leased.clone(),
        );
        r.register(
            "images_completed",
            "Images completed (task completions), by the completing worker's pool",
            m.images_completed.clone(),
        );
        r.register(
            "steps",
            "Sampler steps of completed images, by pool",
            m.steps.clone(),
        );
        r.register(
            "task_retries",
            "Failed attempts sent back to the queue, by reason",
            m.retries.clone(),
        );
        r.register(
            "task_discards",
            "Tasks discarded (not retryable, or out of attempts), by reason",
            m.discards.clone(),
        );
        r.register(
            "leases_expired",
            "Leases the rescuer found expired (worker stopped heartbeating)",
            m.leases_expired.clone(),
        );
        r.register(
            "model_loads",
            "Model loads workers reported, by pool and model",
            m.model_loads.clone(),
        );
        r.register(
            "model_load_seconds",
            "Time workers spent loading a model, by pool and model",
            m.model_load_seconds.clone(),
        );
        r.register(
            "render_seconds",
            "Time from lease to finished upload per image, by pool",
            m.render_seconds.clone(),
        );
        r.register(
            "lease_latency_seconds",
            "Time a task waited between becoming claimable and being leased, by pool",
            m.lease_latency.clone(),
        );
        Metrics { registry: r, ..m }
    }

    pub fn submitted(&self, pool: &str, tasks: usize) {
        self.jobs_submitted.inc();
        self.tasks_submitted
            .get_or_create(&pool_label(pool))
            .inc_by(tasks as u64);
    }

    /// A task leased after waiting `waited_ms` since it became claimable.
    pub fn leased(&self, pool: &str, waited_ms: i64) {
        let label = pool_label(pool);
        self.tasks_leased.get_or_create(&label).inc();
        self.lease_latency
            .get_or_create(&label)
            .observe(waited_ms.max(0) as f64 / 1000.0);
    }

    pub fn completed(&self, pool: &str, c: &Completion) {
        let label = pool_label(pool);
        self.images_completed.get_or_create(&label).inc();
        self.steps.get_or_create(&label).inc_by(u64::from(c.steps));
        self.render_seconds
            .get_or_create(&label)
            .observe(c.render_ms as f64 / 1000.0);
        if let Some(load_ms) = c.model_load_ms {
            let key = PoolModel {
                pool: pool.to_string(),
                model: c.model.clone(),
            };
            self.model_loads.get_or_create(&key).inc();
            self.model_load_seconds
                .get_or_create(&key)
                .observe(load_ms as f64 / 1000.0);
        }
        let mut recent = self.recent.lock().unwrap();
        recent.push_back((Instant::now(), pool.to_string(), c.steps));
        prune(&mut recent);
    }

    /// A failed attempt and what became of the task (`Retryable` or `Discarded`).
    pub fn failed(&self, reason: &str, state: TaskState) {
        let label = Reason {
            reason: reason_label(reason),
        };
        match state {
            TaskState::Retryable => self.retries.get_or_create(&label).inc(),
            _ => self.discards.get_or_create(&label).inc(),
        };
    }

    pub fn rescued(&self, retried: usize, discarded: usize) {
        self.leases_expired.inc_by((retried + discarded) as u64);
        let label = Reason {
            reason: "lease_expired".into(),
        };
        if retried > 0 {
            self.retries.get_or_create(&label).inc_by(retried as u64);
        }
        if discarded > 0 {
            self.discards.get_or_create(&label).inc_by(discarded as u64);
        }
    }

    /// Refreshes the store-derived gauges and encodes everything.
    pub fn render(
        &self,
        queue: &[QueueCount],
        signals: &BTreeMap<String, PoolSignal>,
        workers: &BTreeMap<(String, WorkerState), u64>,
    ) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap();
        self.tasks.clear();
        self.queue_depth.clear();
        self.desired_workers.clear();
        self.workers.clear();
        self.images_per_second.clear();
        self.steps_per_second.clear();
        for c in queue {
            let state = PoolState {
                pool: c.pool.clone(),
                state: c.state.as_str().to_string(),
            };
            self.tasks.get_or_create(&state).inc_by(c.count as i64);
            if matches!(c.state, TaskState::Available | TaskState::Retryable) {
                let key = PoolModel {
                    pool: c.pool.clone(),
                    model: c.model.clone(),
                };
                self.queue_depth.get_or_create(&key).inc_by(c.count as i64);
            }
        }
        for (pool, s) in signals {
            self.desired_workers
                .get_or_create(&pool_label(pool))
                .set(s.desired_workers as i64);
        }
        for ((pool, state), n) in workers {
            let key = PoolState {
                pool: pool.clone(),
                state: state.as_str().to_string(),
            };
            self.workers.get_or_create(&key).set(*n as i64);
        }
        self.refresh_rates();
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    fn refresh_rates(&self) {
        let mut recent = self.recent.lock().unwrap();
        prune(&mut recent);
        // Until a full window has passed, average over the time since start.
        let window = self
            .started
            .elapsed()
            .clamp(Duration::from_secs(1), RATE_WINDOW);
        let mut per_pool: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for (_, pool, steps) in recent.iter() {
            let e = per_pool.entry(pool.as_str()).or_default();
            e.0 += 1;
            e.1 += u64::from(*steps);
        }
        for (pool, (images, steps)) in per_pool {
            let label = pool_label(pool);
            let secs = window.as_secs_f64();
            self.images_per_second
                .get_or_create(&label)
                .set(images as f64 / secs);
            self.steps_per_second
                .get_or_create(&label)
                .set(steps as f64 / secs);
        }
    }
}

fn prune(recent: &mut VecDeque<(Instant, String, u32)>) {
    while let Some((at, _, _)) = recent.front() {
        if at.elapsed() > RATE_WINDOW {
            recent.pop_front();
        } else {
            break;
        }
    }
}

fn pool_label(pool: &str) -> Pool {
    Pool {
        pool: pool.to_string(),
    }
}

/// Failure reasons become label values, so only short lowercase codes pass; anything else
/// (free text from an old worker) is "other", keeping the series count bounded.
pub fn reason_label(code: &str) -> String {
    let ok = !code.is_empty()
        && code.len() <= 32
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        code.to_string()
    } else if code.is_empty() {
        "unspecified".to_string()
    } else {
        "other".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_label_values() {
        assert_eq!(reason_label("upload"), "upload");
        assert_eq!(reason_label("lease_expired"), "lease_expired");
        assert_eq!(reason_label(""), "unspecified");
        assert_eq!(reason_label("CUDA out of memory at step 3"), "other");
    }

    #[test]
    fn exposition_names_and_labels() {
        let m = Metrics::new();
        m.submitted("a100", 3);
        m.leased("a100", 1500);
        m.completed(
            "a100",
            &Completion {
                steps: 20,
                render_ms: 2_000,
                model: "sd15".into(),
                model_load_ms: Some(4_000),
            },
        );
        m.failed("upload", TaskState::Retryable);
        m.failed("render", TaskState::Discarded);
        m.rescued(1, 0);
        let queue = [QueueCount {
            pool: "a100".into(),
            model: "sd15".into(),
            state: TaskState::Available,
            count: 2,
        }];
        let signals = crate::scaling::signals(&queue, [], |_| 1);
        let mut workers = BTreeMap::new();
        workers.insert(("a100".to_string(), WorkerState::Idle), 1);
        let text = m.render(&queue, &signals, &workers);
        for line in [
            "sdfarm_tasks{pool=\"a100\",state=\"available\"} 2",
            "sdfarm_queue_depth{pool=\"a100\",model=\"sd15\"} 2",
            "sdfarm_pool_desired_workers{pool=\"a100\"} 2",
            "sdfarm_workers{pool=\"a100\",state=\"idle\"} 1",
            "sdfarm_jobs_submitted_total 1",
            "sdfarm_tasks_submitted_total{pool=\"a100\"} 3",
            "sdfarm_images_completed_total{pool=\"a100\"} 1",
            "sdfarm_steps_total{pool=\"a100\"} 20",
            "sdfarm_task_retries_total{reason=\"upload\"} 1",
            "sdfarm_task_retries_total{reason=\"lease_expired\"} 1",
            "sdfarm_task_discards_total{reason=\"render\"} 1",
            "sdfarm_leases_expired_total 1",
            "sdfarm_model_loads_total{pool=\"a100\",model=\"sd15\"} 1",
            "sdfarm_model_load_seconds_count{pool=\"a100\",model=\"sd15\"} 1",
            "sdfarm_lease_latency_seconds_sum{pool=\"a100\"} 1.5",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("sdfarm_images_per_second{pool=\"a100\"}"));
        assert!(text.ends_with("# EOF\n"));

        // Gauges from the store follow the store: an empty queue drops the series.
        let text = m.render(&[], &BTreeMap::new(), &BTreeMap::new());
        assert!(!text.contains("sdfarm_queue_depth{"), "{text}");
        assert!(text.contains("sdfarm_images_completed_total{pool=\"a100\"} 1"));
    }
}
