//! The core's side of kernel control: a failed cache clear after a policy load is retried off
//! the caller's thread with backoff and a bounded number of attempts; backend counters show up
//! in the stats as `backend.<name>`; backends learn of policy changes; the Unix transport
//! reports the helper's pid from the kernel's peer credentials.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn clears(rig: &Rig) -> usize {
    rig.control
        .calls()
        .iter()
        .filter(|c| *c == "clear_cache")
        .count()
}

fn wait_clears(rig: &Rig, n: usize) {
    let end = Instant::now() + Duration::from_secs(10);
    while clears(rig) < n {
        assert!(Instant::now() < end, "only {} cache clears", clears(rig));
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn fast_retry() -> es_extension::core::CoreConfig {
    es_extension::core::CoreConfig {
        kernel_retry_backoff: Duration::from_millis(10),
        kernel_retry_attempts: 4,
        ..test_config(None)
    }
}

fn load(rig: &Rig) -> u64 {
    rig.core
        .load_policy("reload.toml", &test_policy_toml("enforce"))
        .expect("valid policy")
}

/// A policy load returns before any retry of its failed clear: with the first retry a minute
/// away, the load has made exactly one call when it returns (it would have made two, a minute
/// later, if it waited for the retry).
#[test]
fn policy_load_never_waits_for_cache_clear_retries() {
    let rig = start(es_extension::core::CoreConfig {
        kernel_retry_backoff: Duration::from_secs(60),
        ..fast_retry()
    });
    rig.control.fail_next_clears(1);
    load(&rig);
    assert_eq!(clears(&rig), 1, "the load made its own call and no retry");
    assert_eq!(counter(&rig.core, "cache_clear_retries"), 0);
}

#[test]
fn failed_cache_clear_is_retried_with_a_bound() {
    // (clears that fail, calls expected, failures, retries, abandoned)
    let cases: &[(u64, usize, u64, u64, u64)] = &[
        (0, 1, 0, 0, 0),
        (1, 2, 1, 1, 0),
        (3, 4, 3, 3, 0),
        // Attempts exhausted: one first call plus four retries, then it escalates (the next
        // attempt is 8 s later, after this test has looked).
        (100, 5, 5, 4, 1),
    ];
    for &(fail, calls, failures, retries, abandoned) in cases {
        let rig = start(fast_retry());
        rig.control.fail_next_clears(fail);
        load(&rig);
        wait_clears(&rig, calls);
        if abandoned > 0 {
            wait_counter(&rig.core, "cache_clear_abandoned", abandoned);
        } else {
            wait_counter(&rig.core, "cache_clear_retries", retries);
        }
        // No further attempts after success, or before the escalated retry.
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(clears(&rig), calls, "fail={fail}");
        assert_eq!(
            counter(&rig.core, "cache_clear_failures"),
            failures,
            "fail={fail}"
        );
        assert_eq!(
            counter(&rig.core, "cache_clear_retries"),
            retries,
            "fail={fail}"
        );
        assert_eq!(
            counter(&rig.core, "cache_clear_abandoned"),
            abandoned,
            "fail={fail}"
        );
        assert_eq!(
            counter(&rig.core, "kernel_control_errors"),
            u64::from(fail > 0),
            "fail={fail}: only the load's own call counts as a control error"
        );
        // The backend's own counter, merged under `backend.`.
        assert_eq!(
            counter(&rig.core, "backend.clear_cache_failed"),
            failures,
            "fail={fail}"
        );
    }
}

#[test]
fn policy_changes_reach_backends() {
    let rig = start(test_config(None));
    let changes = rig.core.policy_changes();
    assert_eq!(rig.core.policy_version(), 1);
    assert!(changes.try_recv().is_err(), "no change yet");
    assert_eq!(load(&rig), 2);
    assert_eq!(changes.recv_timeout(Duration::from_secs(1)), Ok(2));
    // A reader that falls behind holds one notice, then reads the newest version.
    assert_eq!(load(&rig), 3);
    assert_eq!(load(&rig), 4);
    assert_eq!(changes.try_recv(), Ok(3));
    assert!(changes.try_recv().is_err());
    assert_eq!(rig.core.policy_version(), 4);
    // A bad policy is no change.
    assert!(
        rig.core
            .load_policy("bad.toml", "version = 1\nmode = 7\n")
            .is_err()
    );
    assert!(changes.try_recv().is_err());
    // A dropped receiver is forgotten, and others still hear.
    let other = rig.core.policy_changes();
    drop(changes);
    assert_eq!(load(&rig), 5);
    assert_eq!(other.try_recv(), Ok(5));
}

#[test]
fn unix_transport_reports_the_helpers_pid_from_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.sock");
    let rig = start(test_config(Some(&path)));
    assert_eq!(rig.core.helper_pid(), None);
    let helper = FakeHelper::start(
        &path,
        Behaviour::Answer {
            sha256: ALLOWED,
            delay: Duration::ZERO,
        },
    );
    wait_connected(&rig.core, true);
    // The fake helper runs in this process: SO_PEERCRED names us.
    assert_eq!(rig.core.helper_pid(), Some(std::process::id()));
    helper.kill();
    wait_connected(&rig.core, false);
    assert_eq!(rig.core.helper_pid(), None);
}
