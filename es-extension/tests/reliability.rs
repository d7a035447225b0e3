//! Reliability of the core against a misbehaving helper and floods: every event gets exactly
//! one answer, none after its deadline (docs/DESIGN.md 7, "Reliability"). Each test checks every
//! event it sent through the test backend's recorder.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use es_extension::test_backend::{Sent, events};
use model::{Event, Verdict};

const PID_BASE: u32 = 3_000_000;

fn exec(i: u64) -> Event {
    events::exec(
        PID_BASE + (i % 100_000) as u32,
        "/usr/local/bin/tool",
        1_000_000 + i,
    )
}

fn open(i: u64) -> Event {
    events::open(
        PID_BASE + 7,
        "/usr/bin/cat",
        "/srv/data/file",
        5_000_000 + i,
    )
}

/// Deliver `n` execs (and an open after every third) with `budget` each.
fn deliver_mix(rig: &Rig, from: u64, n: u64, budget: Duration) -> (Vec<Sent>, Vec<Sent>) {
    let (mut execs, mut opens) = (Vec::new(), Vec::new());
    for i in from..from + n {
        let (s, d) = rig.backend.delivery(exec(i), budget);
        rig.core.deliver(d);
        execs.push(s);
        if i % 3 == 0 {
            let (s, d) = rig.backend.delivery(open(i), budget);
            rig.core.deliver(d);
            // Decided on the delivery thread: answered before deliver() returned.
            assert_eq!(
                rig.backend.answer_count(s.id),
                1,
                "open {i} not answered inline"
            );
            opens.push(s);
        }
    }
    (execs, opens)
}

fn verdicts(rig: &Rig, sent: &[Sent]) -> Vec<(Verdict, bool)> {
    sent.iter()
        .map(|s| {
            let a = rig
                .backend
                .answer_for(s.id)
                .unwrap_or_else(|| panic!("event {} unanswered", s.id));
            (a.answer.verdict, a.answer.cache)
        })
        .collect()
}

fn all_sent(execs: &[Sent], opens: &[Sent]) -> usize {
    execs.len() + opens.len()
}

#[test]
fn helper_stalled_forever_gets_watchdog_fallbacks() {
    let dir = tempfile::tempdir().unwrap();
    let helper = FakeHelper::start(&dir.path().join("h.sock"), Behaviour::Stall);
    let rig = start(test_config(Some(&helper.path)));
    wait_connected(&rig.core, true);
    let (execs, opens) = deliver_mix(&rig, 0, 300, Duration::from_millis(600));
    let n = all_sent(&execs, &opens);
    assert_eq!(rig.backend.wait_for(n, Duration::from_secs(10)), n);
    settle(&rig.core, n as u64);
    assert_clean(&rig.backend);
    for (i, v) in verdicts(&rig, &execs).into_iter().enumerate() {
        assert_eq!(
            v,
            (Verdict::Deny, false),
            "exec {i}: fallback deny, never cached"
        );
    }
    for v in verdicts(&rig, &opens) {
        assert_eq!(v.0, Verdict::Allow);
    }
    let stats = rig.core.stats();
    let fallbacks: Vec<_> = stats
        .counters
        .iter()
        .filter(|(n, v)| n.starts_with("fallbacks.") && *v > 0)
        .collect();
    assert_eq!(
        counter(&rig.core, "fallbacks.deadline"),
        300,
        "{fallbacks:?}"
    );
    assert_eq!(counter(&rig.core, "deadline_misses"), 0);
    assert_eq!(
        helper.requests.load(std::sync::atomic::Ordering::Relaxed),
        300
    );
}

#[test]
fn helper_killed_mid_request_then_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.sock");
    let never = Behaviour::Answer {
        sha256: ALLOWED,
        delay: Duration::from_secs(60),
    };
    let helper = FakeHelper::start(&path, never);
    let rig = start(test_config(Some(&path)));
    wait_connected(&rig.core, true);
    let (execs, opens) = deliver_mix(&rig, 0, 100, Duration::from_secs(5));
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while helper.requests.load(std::sync::atomic::Ordering::Relaxed) < 100 {
        assert!(
            std::time::Instant::now() < end,
            "requests never reached the helper"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    helper.kill();
    let n = all_sent(&execs, &opens);
    assert_eq!(rig.backend.wait_for(n, Duration::from_secs(10)), n);
    settle(&rig.core, n as u64);
    assert_clean(&rig.backend);
    for (i, (s, v)) in execs.iter().zip(verdicts(&rig, &execs)).enumerate() {
        assert_eq!(v, (Verdict::Deny, false), "exec {i}");
        // Failed with the connection, long before the watchdog's 4.5 s.
        let at = rig.backend.answer_for(s.id).unwrap().at;
        assert!(
            s.deadline - at > Duration::from_secs(2),
            "exec {i} waited for the watchdog"
        );
    }
    assert_eq!(counter(&rig.core, "fallbacks.helper_unavailable"), 100);
    wait_connected(&rig.core, false);

    // The helper comes back: the core reconnects by itself and decides through it again.
    let helper = FakeHelper::start(
        &path,
        Behaviour::Answer {
            sha256: ALLOWED,
            delay: Duration::ZERO,
        },
    );
    wait_connected(&rig.core, true);
    let (execs2, opens2) = deliver_mix(&rig, 1000, 30, Duration::from_secs(5));
    let n2 = n + all_sent(&execs2, &opens2);
    assert_eq!(rig.backend.wait_for(n2, Duration::from_secs(10)), n2);
    assert_clean(&rig.backend);
    for v in verdicts(&rig, &execs2) {
        assert_eq!(v, (Verdict::Allow, true), "decided by the allow-tool rule");
    }
    drop(helper);
}

#[test]
fn helper_dying_after_some_requests() {
    let dir = tempfile::tempdir().unwrap();
    let helper = FakeHelper::start(&dir.path().join("h.sock"), Behaviour::DieAfter { after: 5 });
    let rig = start(test_config(Some(&helper.path)));
    wait_connected(&rig.core, true);
    let (execs, opens) = deliver_mix(&rig, 0, 60, Duration::from_millis(800));
    let n = all_sent(&execs, &opens);
    assert_eq!(rig.backend.wait_for(n, Duration::from_secs(10)), n);
    settle(&rig.core, n as u64);
    assert_clean(&rig.backend);
    for v in verdicts(&rig, &execs) {
        assert_eq!(v, (Verdict::Deny, false));
    }
    assert!(counter(&rig.core, "helper_disconnects") >= 1);
}

#[test]
fn slow_helper_answers_late_fill_the_cache_but_do_not_answer_twice() {
    let dir = tempfile::tempdir().unwrap();
    let helper = FakeHelper::start(
        &dir.path().join("h.sock"),
        Behaviour::Answer {
            sha256: ALLOWED,
            delay: Duration::from_millis(400),
        },
    );
    let rig = start(test_config(Some(&helper.path)));
    wait_connected(&rig.core, true);
    // 300 ms budget: the watchdog answers at 200 ms, the helper at 400 ms.
    let sent: Vec<Sent> = (0..50)
        .map(|i| {
            let (s, d) = rig.backend.delivery(exec(i), Duration::from_millis(300));
            rig.core.deliver(d);
            s
        })
        .collect();
    assert_eq!(rig.backend.wait_for(50, Duration::from_secs(5)), 50);
    settle(&rig.core, 50);
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while counter(&rig.core, "late_helper_answers") < 50 {
        assert!(
            std::time::Instant::now() < end,
            "late answers never arrived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for v in verdicts(&rig, &sent) {
        assert_eq!(v, (Verdict::Deny, false), "watchdog fallback");
    }
    assert_eq!(counter(&rig.core, "fallbacks.deadline"), 50);
    assert_eq!(
        counter(&rig.core, "duplicate_answers"),
        50,
        "each late answer counted once"
    );

    // The same binaries again: the late answers are in the verdict cache now.
    let again: Vec<Sent> = (0..50)
        .map(|i| {
            let (s, d) = rig.backend.delivery(exec(i), Duration::from_millis(300));
            rig.core.deliver(d);
            assert_eq!(
                rig.backend.answer_count(s.id),
                1,
                "cache hit answered inline"
            );
            s
        })
        .collect();
    for v in verdicts(&rig, &again) {
        assert_eq!(v, (Verdict::Allow, true));
    }
    assert_eq!(counter(&rig.core, "cache_hits"), 50);
    assert_clean(&rig.backend);
}

#[test]
fn helper_answering_garbage_gets_fallbacks() {
    for behaviour in [Behaviour::Garbage, Behaviour::WrongAnswer] {
        let dir = tempfile::tempdir().unwrap();
        let helper = FakeHelper::start(&dir.path().join("h.sock"), behaviour);
        let rig = start(test_config(Some(&helper.path)));
        // A garbage helper is connected only until its first answer (the core's probe ping
        // may come first), so sampling `helper_connected` can miss it: wait for the
        // connection to have happened, which is what the counter records.
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while counter(&rig.core, "helper_connects") == 0 {
            assert!(
                std::time::Instant::now() < end,
                "{behaviour:?}: never connected"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let (execs, opens) = deliver_mix(&rig, 0, 40, Duration::from_millis(800));
        let n = all_sent(&execs, &opens);
        assert_eq!(
            rig.backend.wait_for(n, Duration::from_secs(10)),
            n,
            "{behaviour:?}"
        );
        settle(&rig.core, n as u64);
        assert_clean(&rig.backend);
        for v in verdicts(&rig, &execs) {
            assert_eq!(v, (Verdict::Deny, false), "{behaviour:?}");
        }
        match behaviour {
            Behaviour::Garbage => assert!(counter(&rig.core, "helper_protocol_errors") >= 1),
            _ => assert_eq!(counter(&rig.core, "fallbacks.helper_error"), 40),
        }
    }
}

#[test]
fn helper_absent_at_start_then_appearing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.sock");
    let rig = start(test_config(Some(&path)));
    assert!(!rig.core.helper_connected());
    // No helper: answered on the delivery thread, at once, with the helper-unavailable fallback.
    let (execs, opens) = deliver_mix(&rig, 0, 20, Duration::from_secs(2));
    for s in &execs {
        assert_eq!(rig.backend.answer_count(s.id), 1, "answered inline");
    }
    for v in verdicts(&rig, &execs) {
        assert_eq!(v, (Verdict::Deny, false));
    }
    assert_eq!(counter(&rig.core, "fallbacks.helper_unavailable"), 20);

    let _helper = FakeHelper::start(
        &path,
        Behaviour::Answer {
            sha256: BLOCKED,
            delay: Duration::ZERO,
        },
    );
    wait_connected(&rig.core, true);
    let (execs2, opens2) = deliver_mix(&rig, 100, 20, Duration::from_secs(2));
    let n = all_sent(&execs, &opens) + all_sent(&execs2, &opens2);
    assert_eq!(rig.backend.wait_for(n, Duration::from_secs(10)), n);
    settle(&rig.core, n as u64);
    assert_clean(&rig.backend);
    for v in verdicts(&rig, &execs2) {
        // Denied by the block rule (cached in-process only: denies are never kernel-cached).
        assert_eq!(v, (Verdict::Deny, false));
    }
    wait_counter(&rig.core, "helper_decided", 20);
}

#[test]
fn burst_of_100k_with_full_queue_and_policy_swaps() {
    let dir = tempfile::tempdir().unwrap();
    let helper = FakeHelper::start(
        &dir.path().join("h.sock"),
        Behaviour::Answer {
            sha256: ALLOWED,
            delay: Duration::from_millis(1),
        },
    );
    let mut cfg = test_config(Some(&helper.path));
    cfg.queue_capacity = 32;
    let rig = Arc::new(start(cfg));
    wait_connected(&rig.core, true);
    const N: u64 = 100_000;
    let swapper = {
        let rig = Arc::clone(&rig);
        std::thread::spawn(move || {
            let mut versions = Vec::new();
            for mode in ["monitor", "enforce", "monitor", "enforce"] {
                std::thread::sleep(Duration::from_millis(40));
                versions.push(
                    rig.core
                        .load_policy("swap.toml", &test_policy_toml(mode))
                        .expect("valid policy"),
                );
            }
            versions
        })
    };
    let mut sent = Vec::with_capacity(N as usize);
    for i in 0..N {
        // A quarter opens (fast path), the rest execs of 5,000 distinct binaries.
        let ev = if i % 4 == 0 { open(i) } else { exec(i % 5_000) };
        let (s, d) = rig.backend.delivery(ev, Duration::from_secs(2));
        rig.core.deliver(d);
        sent.push(s);
    }
    assert_eq!(swapper.join().unwrap(), vec![2, 3, 4, 5]);
    assert_eq!(
        rig.backend.wait_for(N as usize, Duration::from_secs(30)),
        N as usize
    );
    settle(&rig.core, N);
    assert_clean(&rig.backend);
    assert_eq!(rig.backend.answers().len(), N as usize);
    assert!(
        counter(&rig.core, "queue_full") > 0,
        "the queue was never full"
    );
    assert_eq!(counter(&rig.core, "deadline_misses"), 0);
    assert_eq!(counter(&rig.core, "events"), N);
    assert_eq!(rig.core.policy().version, 5);
    // One kernel cache clear per load, plus at most one per caching answer that raced a swap
    // (those ask the retry thread for another clear, coalesced and after a short backoff).
    let clears = rig
        .control
        .calls()
        .iter()
        .filter(|c| *c == "clear_cache")
        .count() as u64;
    let reclears = counter(&rig.core, "stale_cache_reclears");
    assert!(
        (4..=4 + reclears).contains(&clears),
        "{clears} clears, {reclears} re-clears"
    );
}

#[test]
fn shutdown_answers_every_pending_event() {
    let dir = tempfile::tempdir().unwrap();
    let helper = FakeHelper::start(&dir.path().join("h.sock"), Behaviour::Stall);
    let rig = start(test_config(Some(&helper.path)));
    wait_connected(&rig.core, true);
    let (execs, opens) = deliver_mix(&rig, 0, 200, Duration::from_secs(30));
    let n = all_sent(&execs, &opens);
    assert!(rig.backend.answers().len() < n, "nothing was pending");
    rig.core.shutdown();
    // No waiting: everything is answered by the time shutdown returns.
    assert_eq!(rig.backend.answers().len(), n);
    assert_clean(&rig.backend);
    for v in verdicts(&rig, &execs) {
        assert_eq!(v, (Verdict::Deny, false));
    }
    assert_eq!(counter(&rig.core, "fallbacks.shutdown"), 200);
    // After shutdown, new events get the fallback at once.
    let (s, d) = rig.backend.delivery(exec(9_999), Duration::from_secs(1));
    rig.core.deliver(d);
    assert_eq!(rig.backend.answer_count(s.id), 1);
    assert_eq!(counter(&rig.core, "fallbacks.shutdown"), 201);
    rig.core.shutdown();
    assert_clean(&rig.backend);
}

#[test]
fn fast_path_keeps_answering_while_every_worker_is_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let helper = FakeHelper::start(&dir.path().join("h.sock"), Behaviour::StallNoRead);
    let mut cfg = test_config(Some(&helper.path));
    // Workers block in sendmsg on the full socket for as long as the test runs.
    cfg.helper_write_timeout = Duration::from_secs(60);
    cfg.queue_capacity = 16;
    let rig = start(cfg);
    wait_connected(&rig.core, true);
    // Big enough requests to fill the socket buffer quickly.
    let long = format!("/opt/{}/tool", "x".repeat(3000));
    // Fill until the queue stays full: only then are both workers blocked in sendmsg (a queue
    // that is full for an instant may still drain into the socket buffer).
    let mut i = 0u64;
    loop {
        let ev = events::exec(PID_BASE + 1, &long, 9_000_000 + i);
        let (_, d) = rig.backend.delivery(ev, Duration::from_secs(20));
        rig.core.deliver(d);
        i += 1;
        assert!(
            i < 100_000,
            "the queue never stayed full: workers are not stuck"
        );
        if rig.core.queue_depth() == 16 {
            std::thread::sleep(Duration::from_millis(50));
            if rig.core.queue_depth() == 16 {
                break;
            }
        }
    }
    assert_eq!(rig.core.queue_depth(), 16, "workers stuck, queue full");
    for j in 0..20_000 {
        let (s, d) = rig.backend.delivery(open(j), Duration::from_secs(20));
        rig.core.deliver(d);
        assert_eq!(
            rig.backend.answer_count(s.id),
            1,
            "open {j} not answered inline"
        );
        assert_eq!(
            rig.backend.answer_for(s.id).map(|a| a.answer.verdict),
            Some(Verdict::Allow)
        );
    }
    assert_eq!(
        rig.core.queue_depth(),
        16,
        "the workers stayed stuck throughout: {:?}",
        rig.core
            .stats()
            .counters
            .iter()
            .filter(|c| c.1 > 0)
            .collect::<Vec<_>>()
    );
    rig.core.shutdown();
    assert_clean(&rig.backend);
}

#[test]
fn subject_fd_rides_along_to_the_helper() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let helper = FakeHelper::start(
        &dir.path().join("h.sock"),
        Behaviour::Answer {
            sha256: ALLOWED,
            delay: Duration::ZERO,
        },
    );
    let rig = start(test_config(Some(&helper.path)));
    wait_connected(&rig.core, true);
    for i in 0..5 {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"subject").unwrap();
        let (_, mut d) = rig.backend.delivery(exec(i), Duration::from_secs(2));
        d.file = Some(std::os::fd::OwnedFd::from(f).into());
        rig.core.deliver(d);
    }
    assert_eq!(rig.backend.wait_for(5, Duration::from_secs(5)), 5);
    assert_clean(&rig.backend);
    assert_eq!(
        helper
            .fds_received
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
}
