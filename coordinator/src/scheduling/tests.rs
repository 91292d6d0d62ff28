//! The scheduler's decisions on small hand-made pools.

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
            ready_at: 0,
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
fn work_that_nobody_holds_is_loaded_not_waited_for() {
    let s = Scheduler::default();
    // One image each for five checkpoints, none of them held by any worker.
    let models = ["a", "b", "c", "d", "e"];
    let waiting: Vec<(&str, u64)> = models.iter().map(|m| (*m, 1)).collect();
    s.refresh(&counts("p", &waiting), 0);
    costs(&s, 1_000, 30_000);
    match s.plan("p", "w1", &[], 0) {
        Plan::Load(m) => assert!(models.contains(&m.as_str()), "{m}"),
        Plan::Any => {}
        other => panic!("the only worker must take some of the work, not {other:?}"),
    }
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
fn moves_stop_at_a_balance_that_no_later_decision_undoes() {
    let s = Scheduler::default();
    costs(&s, 1_000, 30_000);
    // Ten holders on a with 200 s of work; b (300 s) just arrived with nobody.
    s.refresh(&counts("p", &[("a", 200), ("b", 300)]), 0);
    for i in 0..10 {
        serve(&s, &format!("w{i}"), "a");
    }
    let mut on_b = Vec::new();
    for i in 0..10 {
        let w = format!("w{i}");
        if let Plan::Load(m) = s.plan("p", &w, &["a".into()], 0) {
            assert_eq!(m, "b");
            serve(&s, &w, "b");
            on_b.push(w);
        }
    }
    // b got workers, a kept some, and its last holder never left.
    assert!(!on_b.is_empty() && on_b.len() < 10, "moved: {on_b:?}");
    // At the balance, nobody is told to move either way.
    for i in 0..10 {
        let w = format!("w{i}");
        let held = if on_b.contains(&w) { "b" } else { "a" };
        assert_eq!(
            s.plan("p", &w, &[held.into()], 0),
            Plan::Held,
            "{w} on {held}"
        );
    }
}

#[test]
fn holders_do_not_move_when_less_than_two_loads_of_work_remain() {
    let s = Scheduler::default();
    costs(&s, 1_000, 30_000);
    // b (60 s of images) has nobody, but the farm is ~40 s from done: a mover would
    // spend most of what is left loading.
    s.refresh(&counts("p", &[("a", 200), ("b", 60)]), 0);
    for i in 0..8 {
        serve(&s, &format!("w{i}"), "a");
    }
    assert_eq!(s.plan("p", "w0", &["a".into()], 0), Plan::Held);
    // With more of b waiting, moving pays again.
    s.refresh(&counts("p", &[("a", 200), ("b", 600)]), 0);
    assert_eq!(s.plan("p", "w0", &["a".into()], 0), Plan::Load("b".into()));
}

#[test]
fn a_worker_loads_from_its_disk_cache_when_that_model_is_short_of_workers() {
    let s = Scheduler::default();
    s.refresh(&counts("p", &[("a", 300), ("b", 200)]), 0);
    costs(&s, 1_000, 30_000);
    // Four free workers: both models miss some.
    for w in ["w3", "w4", "w5"] {
        s.idle("p", w, 0);
    }
    assert_eq!(s.plan("p", "w1", &[], 0), Plan::Load("a".into()));
    let cached = ["b".to_string()];
    assert_eq!(
        s.plan_with_cache("p", "w1", &[], &cached, 0),
        Plan::Load("b".into())
    );
    // A cached model that needs nobody is not loaded for the cache's sake.
    s.refresh(&counts("p", &[("a", 300), ("b", 20)]), 0);
    serve(&s, "w2", "b");
    assert_eq!(
        s.plan_with_cache("p", "w1", &[], &cached, 0),
        Plan::Load("a".into())
    );
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
    // 20 s of work for w1: w2 waits, but not past twice those 20 s.
    assert_eq!(s.plan("p", "w2", &[], 0), Plan::Wait);
    assert!(!s.waited_out("p", "w2", 0));
    assert!(!s.waited_out("p", "w2", 39_000));
    assert!(s.waited_out("p", "w2", 40_000));
}
