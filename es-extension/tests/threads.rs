//! The core's thread count is fixed at start and does not grow under a flood (docs/DESIGN.md 7:
//! "Threads fixed regardless of load"), neither under a flood of events nor under a flood of
//! control connections. Its own test binary, so no other test's threads are counted in
//! /proc/self/task.

mod common;

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use es_extension::test_backend::events;

fn task_count() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/task").ok()?.count())
}

#[test]
fn thread_count_is_fixed_under_a_flood() {
    if task_count().is_none() {
        println!("SKIP: /proc/self/task is not available on this platform");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let helper = FakeHelper::start(
        &dir.path().join("h.sock"),
        Behaviour::Answer {
            sha256: ALLOWED,
            delay: Duration::from_millis(1),
        },
    );
    let before_core = task_count().unwrap();
    let mut cfg = test_config(Some(&helper.path));
    cfg.queue_capacity = 64;
    let control = dir.path().join("control.sock");
    cfg.control_socket = Some(control.clone());
    let rig_handlers = cfg.control_handlers;
    let rig = start(cfg);
    wait_connected(&rig.core, true);
    // The sampler runs before the baseline, so it is part of it.
    let (max, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let sampler = {
        let (max, stop) = (Arc::clone(&max), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                max.fetch_max(task_count().unwrap(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    let baseline = task_count().unwrap();
    // 2 workers, helper reader, watchdog, kernel maintenance, forced remounts, events-log
    // writer, the transitive recorder and its saver, the control accept thread and its
    // `control_handlers` handlers (2 by default: 12 in all); plus the fake helper's
    // per-connection reader and writer, plus the sampler.
    let core_threads = 2 + 7 + 1 + rig_handlers;
    assert_eq!(core_threads, 12, "the default core thread set");
    assert_eq!(
        baseline,
        before_core + core_threads + 2 + 1,
        "threads at start"
    );
    max.store(0, Ordering::Relaxed);
    const N: u64 = 50_000;
    // Silent control clients, held open through the flood: far more than the handlers and
    // the backlog take, so most are refused; none may cost a thread.
    let mut silent = Vec::new();
    for i in 0..N {
        if i % 500 == 0 {
            silent.push(UnixStream::connect(&control).expect("connect to the control socket"));
        }
        let ev = if i % 2 == 0 {
            events::exec(
                3_000_000 + (i % 1000) as u32,
                "/usr/local/bin/tool",
                100 + i,
            )
        } else {
            events::open(3_000_001, "/usr/bin/cat", "/srv/f", 10_000_000 + i)
        };
        let (_, d) = rig.backend.delivery(ev, Duration::from_secs(2));
        rig.core.deliver(d);
    }
    assert_eq!(
        rig.backend.wait_for(N as usize, Duration::from_secs(30)),
        N as usize
    );
    stop.store(true, Ordering::Release);
    sampler.join().unwrap();
    drop(silent);
    assert!(
        counter(&rig.core, "analysed") > 0,
        "the slow path was exercised"
    );
    assert!(
        counter(&rig.core, "queue_full") > 0,
        "the queue was full at times"
    );
    assert!(
        counter(&rig.core, "control_refused_busy") > 0,
        "the control server was full at times"
    );
    assert_eq!(
        max.load(Ordering::Relaxed),
        baseline,
        "threads grew under load"
    );
    assert_clean(&rig.backend);
}
